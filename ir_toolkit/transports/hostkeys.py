"""Pinned host keys: strict checking, never trust on first use by accident.

A host's acceptable keys are the fingerprints pinned in the inventory
(``host_keys:``) plus the keys for its address in the MSP's ``known_hosts``
file and in the case's own ``known_hosts`` (written only by explicit, audited
commands such as a reimage of that very host).

The case's pins *override*: when the case's ``known_hosts`` names a host, only
those keys are accepted for it (not the MSP's ``known_hosts``, not the
inventory's ``host_keys``). A reimaged host's old key is thereby refused for the
rest of the case (see docs/reimage.md, "Host keys after a reimage").
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import threading
from pathlib import Path

import paramiko

from ir_toolkit.cases import CaseLayout
from ir_toolkit.fsutil import write_atomic


def fingerprint(key_blob: bytes) -> str:
    """OpenSSH SHA256 fingerprint of a public key blob: ``SHA256:<base64 without padding>``."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key_blob).digest()).decode().rstrip("=")


def known_hosts_pattern(address: str, port: int) -> str:
    """The known_hosts name of ``address:port`` (``[address]:port`` unless port 22)."""
    return address if port == 22 else f"[{address}]:{port}"


def _host_patterns(address: str, port: int) -> set[str]:
    return {known_hosts_pattern(address, port)}


def read_known_hosts(path: Path) -> dict[str, set[str]]:
    """Map ``host`` / ``[host]:port`` -> fingerprints from an OpenSSH known_hosts file.

    Hashed entries (``|1|...``) and markers other than plain keys are skipped;
    ``@revoked`` entries are returned under the key ``"@revoked"``.
    """
    result: dict[str, set[str]] = {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        return result
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        marker = None
        if parts[0].startswith("@"):
            marker, parts = parts[0], parts[1:]
        if len(parts) < 3:
            continue
        try:
            blob = base64.b64decode(parts[2], validate=True)
        except ValueError:
            continue
        fp = fingerprint(blob)
        names = ["@revoked"] if marker == "@revoked" else parts[0].split(",")
        if marker not in (None, "@revoked"):
            continue
        for name in names:
            result.setdefault(name, set()).add(fp)
    return result


class KnownHosts:
    """All pinned host keys for a run: inventory pins plus known_hosts files.

    ``override`` files (the case's ``known_hosts``) replace every other pin for
    the hosts they name.
    """

    def __init__(self, files: list[Path] | None = None, *, override: list[Path] | None = None) -> None:
        self._entries: dict[str, set[str]] = {}
        self._override: dict[str, set[str]] = {}
        self._revoked: set[str] = set()
        for path in files or []:
            self._load(path, self._entries)
        for path in override or []:
            self._load(path, self._override)

    def _load(self, path: Path, into: dict[str, set[str]]) -> None:
        for name, fps in read_known_hosts(path).items():
            if name == "@revoked":
                self._revoked |= fps
            else:
                into.setdefault(name, set()).update(fps)

    def expected(self, address: str, port: int, pinned: list[str] | tuple[str, ...] = ()) -> set[str]:
        """Fingerprints acceptable for ``address:port`` (empty set: the host is not pinned)."""
        names = _host_patterns(address, port)
        if any(name in self._override for name in names):
            found = set().union(*(self._override.get(name, set()) for name in names))
            return found - self._revoked
        found = set(pinned)
        for name in names:
            found |= self._entries.get(name, set())
        return found - self._revoked

    def pin_override(self, address: str, port: int, fp: str) -> None:
        """Make ``fp`` the only acceptable key for ``address:port`` (what a new case pin does)."""
        for name in _host_patterns(address, port):
            self._override[name] = {fp}

    def add(self, address: str, port: int, fp: str) -> None:
        for name in _host_patterns(address, port):
            self._entries.setdefault(name, set()).add(fp)

    def replace(self, address: str, port: int, fp: str) -> None:
        for name in _host_patterns(address, port):
            self._entries[name] = {fp}


# ---------------------------------------------------------------------------- case pins

_pin_lock = threading.Lock()


def write_case_pin(case_id: str, address: str, port: int, key: paramiko.PKey) -> Path:
    """Make ``key`` the case's only pin for ``address:port`` (atomic replace; thread and process safe)."""
    path = CaseLayout.of(case_id).known_hosts
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pattern = known_hosts_pattern(address, port)
    with _pin_lock:
        fd = os.open(path.parent / ".known_hosts.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                lines = path.read_text().splitlines()
            except FileNotFoundError:
                lines = [f"# irkit case {case_id}: host keys accepted after irkit reimaged the host "
                         "(they override every other pin of that host; see the audit log)"]
            kept = [line for line in lines
                    if not line.strip() or line.lstrip().startswith("#") or pattern not in line.split()[0].split(",")]
            kept.append(f"{pattern} {key.get_name()} {key.get_base64()}")
            write_atomic(path, ("\n".join(kept) + "\n").encode(), mode=0o600)
        finally:
            os.close(fd)
    return path


def case_pins(case_id: str, address: str, port: int) -> set[str]:
    """Fingerprints the case's known_hosts pins for ``address:port`` (empty: no case pin)."""
    return read_known_hosts(CaseLayout.of(case_id).known_hosts).get(known_hosts_pattern(address, port), set())
