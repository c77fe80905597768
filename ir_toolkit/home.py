"""The run-state home: one directory that holds every case (incident) by id.

Layout (``$IRKIT_HOME``, default ``./irkit-cases``)::

    keys/                    responder keys made by ``irkit keys init``
    lab/<msp>/               lab state (host keys, MSP test keys, pids)
    cases/<case-id>/
        audit/               signed, append-only audit log and checkpoints
        journal/             plans and engine journal (resume)
        evidence/            triage bundles
        escrow/              encrypted secrets
        logs/                one JSON-lines log file per run
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ir_toolkit.errors import InputError

HOME_ENV = "IRKIT_HOME"
DEFAULT_HOME = "irkit-cases"
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def irkit_home() -> Path:
    """The state directory: ``$IRKIT_HOME`` or ``./irkit-cases``, as an absolute path."""
    return Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser().absolute()


def validate_case_id(case_id: str) -> str:
    """Return ``case_id`` if it is a safe directory name, else raise :class:`InputError`."""
    if not _CASE_ID.match(case_id) or case_id in {".", ".."}:
        raise InputError(
            f"invalid case id {case_id!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return case_id


def case_dir(case_id: str, *, create: bool = False) -> Path:
    """The directory of one case; created (mode 0700) when ``create``."""
    path = irkit_home() / "cases" / validate_case_id(case_id)
    if create:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def keys_dir(*, create: bool = False) -> Path:
    path = irkit_home() / "keys"
    if create:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def lab_dir(msp: str, *, create: bool = False) -> Path:
    path = irkit_home() / "lab" / msp
    if create:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path
