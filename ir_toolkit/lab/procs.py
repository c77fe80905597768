"""Processes by id: start times, liveness, children, network namespaces, listening ports.

A pid alone is not an identity (pids are reused), so the lab records the pair
(pid, start time in clock ticks since boot) and checks both before it signals
or enters a process.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm may contain spaces and parentheses: fields start after the last ')'.
    return text[text.rfind(")") + 2:].split()


def start_time(pid: int) -> int | None:
    """Start time (field 22 of /proc/PID/stat), or None when there is no such process."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def is_zombie(pid: int) -> bool:
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] in ("Z", "X")


def alive(pid: int | None, started: int | None) -> bool:
    """True when ``pid`` runs and is the same process (same start time) as recorded."""
    if not pid:
        return False
    now = start_time(pid)
    return now is not None and (started is None or now == started) and not is_zombie(pid)


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [int(p) for p in text.split()]


def netns_members(inodes: set[int]) -> dict[int, list[int]]:
    """For network namespace inodes, the pids of every process inside (one /proc scan)."""
    found: dict[int, list[int]] = {ino: [] for ino in inodes}
    if not inodes:
        return found
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ino = os.stat(f"/proc/{entry.name}/ns/net").st_ino
        except (FileNotFoundError, ProcessLookupError, PermissionError, NotADirectoryError):
            continue
        if ino in found:
            found[ino].append(int(entry.name))
    return found


def reap(pids: Iterable[int]) -> None:
    """Collect exited children of this process (no zombies left behind by an in-process run)."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except (ChildProcessError, OSError):
            pass


def kill_and_wait(pids: Iterable[int], timeout: float = 10.0) -> list[int]:
    """SIGKILL ``pids``; wait until they are gone. Returns the pids still alive at the deadline."""
    pending = set(pids)
    for pid in pending:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + timeout
    while pending:
        reap(pending)
        pending = {p for p in pending if start_time(p) is not None and not is_zombie(p)}
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return sorted(pending)


def no_inherit() -> None:
    """Mark every descriptor above stderr close-on-exec before starting a long-lived lab process.

    ``posix_spawn`` passes every inheritable descriptor on: a lab started under
    ``flock LOCK -c 'irkit lab up ...'`` would otherwise keep the lock (and any other file the
    controller had open) in every host and DC for as long as the lab runs.
    """
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass

