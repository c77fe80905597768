"""Test doubles for the engine's seams: a scripted :class:`FakeConnection`, a pool of them, an in-memory journal.

They implement the real interfaces (``transports.base.Connection``, the pool's
``connection/drop/close/keys``, ``audit.journal.Journal``) so the engine runs unchanged
and unprivileged. What they cannot prove: anything about SSH itself (host keys,
handshakes, paramiko's threads) or real hosts' commands - the lab tests do that.
"""

from __future__ import annotations

import errno
import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ir_toolkit.transports.base import (
    TIMED_OUT,
    UNREACHABLE,
    CommandResult,
    Endpoint,
    StreamResult,
    TransportError,
)
from ir_toolkit.transports.pool import ConnectionPool

#: script(conn, command, stdin) -> CommandResult | (exit, stdout) ; may raise TransportError or sleep
Script = Callable[["FakeConnection", str, bytes | None], Any]


def ok_script(conn: FakeConnection, command: str, stdin: bytes | None) -> CommandResult:
    return CommandResult(0, b"", b"")


class FakeConnection:
    """A scripted connection to one host: every command goes to ``script``; calls are recorded."""

    kind: ClassVar[str] = "ssh"

    def __init__(self, host_name: str, script: Script = ok_script) -> None:
        self.endpoint = Endpoint("198.18.0.99", 22, "root", {"SHA256:fake"}, host_name)
        self.host_key_fingerprint = "SHA256:fake"
        self.script = script
        self.commands: list[str] = []
        self.files: dict[str, bytes] = {}
        self._closed = threading.Event()

    def run(self, command: str, *, stdin: bytes | None = None, timeout: float | None = None,
            deadline: float | None = None) -> CommandResult:
        if self._closed.is_set():
            raise TransportError(UNREACHABLE, f"{self.endpoint.name}: connection is closed")
        limit = 60.0 if timeout is None else timeout
        if deadline is not None:
            limit = min(limit, deadline - time.monotonic())
        self.commands.append(command)
        self._limit = limit
        result = self.script(self, command, stdin)
        if isinstance(result, tuple):
            result = CommandResult(result[0], result[1] if len(result) > 1 else b"", b"")
        return result

    def hang(self) -> None:
        """What a hung host does: nothing, until the command's limit (or a close) - then TIMED_OUT."""
        if self._closed.wait(max(0.0, self._limit)):
            raise TransportError(UNREACHABLE, f"{self.endpoint.name}: connection closed")
        raise TransportError(TIMED_OUT, f"{self.endpoint.name}: command timed out after {self._limit:g}s")

    def work(self, seconds: float) -> None:
        """A command that takes ``seconds``: honours the command's limit like a real transport."""
        if self._closed.wait(max(0.0, min(seconds, self._limit))):
            raise TransportError(UNREACHABLE, f"{self.endpoint.name}: connection closed")
        if self._limit < seconds:
            raise TransportError(TIMED_OUT, f"{self.endpoint.name}: command timed out after {self._limit:g}s")

    def wedge(self, seconds: float) -> None:
        """A call that ignores every limit and even a close (a wedged library call) for ``seconds``."""
        time.sleep(seconds)

    def exec_stream(self, command: str, *, stdin: bytes | None = None, idle_timeout: float,
                    deadline: float | None = None) -> Any:
        result = self.run(command, stdin=stdin, timeout=idle_timeout, deadline=deadline)
        return _Stream(result)

    def put(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        self.files[path] = data

    def get(self, path: str, *, max_bytes: int) -> bytes:
        data = self.files[path]
        if len(data) > max_bytes:
            raise TransportError("protocol", f"{path} is larger than {max_bytes} bytes")
        return data

    @property
    def alive(self) -> bool:
        return not self._closed.is_set()

    def close(self) -> None:
        self._closed.set()


@dataclass
class _Stream:
    result: CommandResult

    @property
    def stdout(self) -> io.BytesIO:
        return io.BytesIO(self.result.stdout)

    def finish(self) -> StreamResult:
        return StreamResult(self.result.exit_status, self.result.stderr)

    def close(self) -> None:
        return None


class FakePool(ConnectionPool):
    """A pool whose connections are :class:`FakeConnection` (one per host, reopened after a drop)."""

    def __init__(self, inventory: Any, case_id: str | None, script: Script = ok_script, *,
                 unreachable: set[str] | None = None) -> None:
        super().__init__(inventory, case_id)
        self.script = script
        self.unreachable = unreachable or set()
        self.opened: list[FakeConnection] = []
        self._fake: dict[str, FakeConnection] = {}

    def connection(self, host: Any, deadline: float, *, kind: str | None = None) -> Any:
        if host.name in self.unreachable:
            raise TransportError(UNREACHABLE, f"cannot connect to {host.name}")
        conn = self._fake.get(host.name)
        if conn is None or not conn.alive:
            conn = FakeConnection(host.name, self.script)
            self._fake[host.name] = conn
            self.opened.append(conn)
        return conn

    def drop(self, host: Any) -> None:
        conn = self._fake.pop(host.name, None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for conn in list(self._fake.values()):
            conn.close()
        self._fake.clear()

    def keys(self) -> list[Any]:
        return []


@dataclass
class MemoryJournal:
    """The audit log's writing interface, in memory; ``fail_after`` simulates a full disk."""

    records: list[dict[str, Any]] = field(default_factory=list)
    fail_after: int | None = None
    checkpoints: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def append_durable(self, *, action: str, actor: str, tenant: str | None = None, host: str | None = None,
                       params: dict[str, Any] | None = None, outcome: str = "ok") -> int:
        with self.lock:
            if self.fail_after is not None and len(self.records) >= self.fail_after:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.records.append({"seq": len(self.records), "action": action, "actor": actor, "tenant": tenant,
                                 "host": host, "params": params or {}, "outcome": outcome})
            return len(self.records) - 1

    def checkpoint(self) -> str:
        self.checkpoints += 1
        return "checkpoint"

    def of(self, action: str, host: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.records if r["action"] == action and (host is None or r["host"] == host)]
