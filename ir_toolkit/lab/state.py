"""The lab's record of what it made: ``state.json`` plus a machine-wide registry entry.

The rule that makes ``lab down`` reliable after a crash: the *intent* to create
a resource (bridge, network namespace, veth, host process) is written and
fsynced here **before** the resource is created. ``down`` (and the next ``up``)
remove exactly what is recorded, by its recorded id, never by a name pattern.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ir_toolkit.fsutil import write_atomic
from ir_toolkit.errors import EnvironmentProblem, InputError
from ir_toolkit.lab.layout import REGISTRY_DIR

STATE_VERSION = 1


@dataclass
class HostState:
    """One lab host: its names, its address, and the processes that run it."""

    name: str
    tenant: str
    slot: int
    address: str
    port: int
    netns: str
    veth: str
    breached: bool = True
    #: the host firewall (``ir_toolkit.lab.host.HOST_FIREWALL``) is loaded at boot
    firewall: bool = True
    status: str = "intent"  # intent -> running (-> stopped)
    spawn_pid: int | None = None  # the unshare process in the controller's PID namespace
    spawn_start: int | None = None
    init_pid: int | None = None  # the host's PID 1, as seen by the controller
    init_start: int | None = None
    os: str = "linux"  # windows: the "init" is the host's WinRS endpoint (ir_toolkit/lab/winrs)

    def config(self) -> tuple[Any, ...]:
        """What, if changed, requires the host to be rebuilt."""
        return (self.tenant, self.slot, self.address, self.port, self.netns, self.veth, self.firewall, self.os)


@dataclass
class LabState:
    msp: str
    lab_id: str
    inventory: str
    network: str
    controller_address: str
    bridge: str
    responder_user: str = "root"
    bridge_status: str = "absent"  # absent | intent | up
    breach_epoch: int = 0
    windows: dict[str, Any] | None = None  # what the Windows hosts are seeded with (lab.plan.WindowsPlan)
    version: int = STATE_VERSION
    hosts: dict[str, HostState] = field(default_factory=dict)

    def to_json(self) -> str:
        data = asdict(self)
        data["hosts"] = [asdict(h) for h in self.hosts.values()]
        return json.dumps(data, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LabState:
        data = json.loads(text)
        hosts = {h["name"]: HostState(**h) for h in data.pop("hosts", [])}
        return cls(**data, hosts=hosts)

    def save(self, path: Path) -> None:
        """Atomic, durable replace: the state file is never half-written."""
        _write_durable(path, self.to_json() + "\n")


def _write_durable(path: Path, text: str) -> None:
    write_atomic(path, text.encode(), mode=0o600)


def load_state(path: Path) -> LabState | None:
    """The recorded state, or None when there is none."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        state = LabState.from_json(text)
    except (ValueError, TypeError, KeyError) as exc:
        raise InputError(f"{path}: unreadable lab state ({exc}); remove the lab by hand") from None
    if state.version != STATE_VERSION:
        raise InputError(f"{path}: lab state version {state.version} is not supported")
    return state


@contextmanager
def locked(path: Path, what: str, *, wait: bool = False) -> Iterator[None]:
    """An exclusive flock on ``path`` (dies with its process). A second holder is refused, or
    waits when ``wait`` (reimages of several hosts of one lab queue up)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"another irkit lab command is running on {what}; wait for it to finish") from None
        yield
    finally:
        os.close(fd)


@contextmanager
def machine_lock() -> Iterator[None]:
    """Serialise address checks and bridge creation between labs on this machine (blocking)."""
    try:
        REGISTRY_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(REGISTRY_DIR.parent / "labs.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise EnvironmentProblem(f"cannot create {REGISTRY_DIR}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def register(state: LabState, lab_root: Path) -> None:
    """Record a lab in the machine-wide registry (so conflicts can name the other lab)."""
    REGISTRY_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    entry = {"msp": state.msp, "lab_dir": str(lab_root), "network": state.network,
             "bridge": state.bridge, "lab_id": state.lab_id}
    _write_durable(REGISTRY_DIR / f"{state.lab_id}.json", json.dumps(entry, sort_keys=True) + "\n")


def unregister(lid: str) -> None:
    try:
        (REGISTRY_DIR / f"{lid}.json").unlink()
    except FileNotFoundError:
        pass


def registered() -> list[dict[str, Any]]:
    """Every lab registered on this machine."""
    out = []
    try:
        entries = sorted(REGISTRY_DIR.glob("*.json"))
    except OSError:
        return out
    for entry in entries:
        try:
            out.append(json.loads(entry.read_text()))
        except (OSError, ValueError):
            continue
    return out
