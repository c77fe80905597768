"""The playbooks shipped with irkit (package data), and how a ``--playbook`` argument finds one.

A ``--playbook`` value that names an existing file is used as given (overriding the
shipped one). Otherwise ``msp-breach-containment``, ``msp-breach-containment.yml`` and
``playbooks/msp-breach-containment.yml`` (the spelling in the docs) all name the
shipped playbook, so an installed irkit runs ``contain`` from any directory.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ir_toolkit.errors import InputError

CONTAINMENT = "msp-breach-containment.yml"
REIMAGE = "reimage.yml"


def _directory() -> Path:
    return Path(str(resources.files("ir_toolkit.playbooks")))


def shipped_names() -> list[str]:
    return sorted(p.name for p in _directory().glob("*.yml"))


def shipped_playbook(name: str) -> Path:
    """The shipped playbook ``name`` (``x`` or ``x.yml``); unknown names are input errors."""
    file = name if name.endswith((".yml", ".yaml")) else f"{name}.yml"
    path = _directory() / file
    if not path.is_file():
        raise InputError(f"no shipped playbook {name!r} (shipped: {', '.join(shipped_names())})")
    return path


def resolve_playbook(spec: str | Path | None, default: str) -> Path:
    """A playbook file by path if it exists, else the shipped one it names, else ``default`` (shipped)."""
    if spec is None:
        return shipped_playbook(default)
    path = Path(spec).expanduser()
    if path.exists():
        return path
    parts = Path(spec).parts
    if len(parts) == 1 or (len(parts) == 2 and parts[0] == "playbooks"):
        try:
            return shipped_playbook(parts[-1])
        except InputError:
            pass
    return path  # the loader reports a missing file with its path (exit 2)
