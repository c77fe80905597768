"""The one actor identity (ground floor): who runs irkit, as ``<os user>@<controller host>``.

It goes into every audit record's ``actor``, custody records and run summaries.
"""

from __future__ import annotations

import getpass
import os
import socket


def system_actor() -> str:
    """``<os user>@<controller host>``; the numeric uid when the user has no passwd entry (a container)."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in a container
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"
