"""The ``irkit`` console script: a light first step so that Ctrl-C is clean even while importing.

Importing the CLI (cryptography, paramiko, pydantic, rich) takes a moment; a
Ctrl-C in that window would otherwise print a traceback. Until the CLI's own
error boundary is in place, SIGINT ends the process quietly with exit 130.
"""

from __future__ import annotations

import os
import signal
import sys


def _interrupted_while_starting(_signum: int, _frame: object) -> None:
    sys.stderr.write("irkit: error: interrupted\n")
    os._exit(130)  # nothing has been written yet: no state to save


def run() -> None:
    signal.signal(signal.SIGINT, _interrupted_while_starting)
    from ir_toolkit.cli.main import main

    signal.signal(signal.SIGINT, signal.default_int_handler)
    main()
