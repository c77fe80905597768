"""The one transport interface: what the engine, the pool and the actions may ask of a host connection.

Every transport (``ssh`` today; ``winrm`` and ``ldap`` in their own modules) implements
:class:`Connection`, and registers a factory with the pool
(:func:`ir_toolkit.transports.pool.register_transport`), so nothing above ``transports/``
names a concrete connection class. Imports here: the standard library only.

The contract (read it before writing a transport)
-------------------------------------------------

``kind`` (class attribute, ``str``)
    The transport's name: ``"ssh"``, ``"winrm"``, ``"ldap"``. Actions declare the kinds
    they support (``Action.connection_kinds``); the pool picks the factory by
    ``host.transport`` (or an explicit kind).

``endpoint`` (:class:`Endpoint`) and ``host_key_fingerprint`` (``str``)
    Who the peer is: address, port, the user irkit is logged in as, the host's inventory
    name, and the fingerprint of the identity the server proved *before any credential
    was sent* (SSH: ``SHA256:...`` of the host key; TLS transports: ``SHA256:...`` of the
    certificate's DER). A transport must refuse to authenticate to a peer whose identity
    is not in ``endpoint.pinned`` (raise ``TransportError(HOST_KEY_CHANGED | HOST_KEY_UNKNOWN)``).

``run(command, *, stdin=None, timeout=None, deadline=None) -> CommandResult``
    Run one command to completion. Secrets go in ``stdin``, never in ``command``. The
    command ends at ``min(now + timeout, deadline)`` (``deadline`` is a
    ``time.monotonic()`` value; ``timeout=None`` means the transport's default command
    limit): past it the transport raises ``TransportError(TIMED_OUT)``. For WinRM,
    ``command`` is a PowerShell script (``stdin`` is fed to it); for LDAP, ``run`` may
    raise ``TransportError(PROTOCOL, "not supported")`` - LDAP actions use the
    transport's own typed methods and declare ``connection_kinds = ("ldap",)``.

``exec_stream(command, *, stdin=None, idle_timeout, deadline=None) -> ExecStream``
    Start a command whose stdout is consumed as a stream (evidence transfers). The
    returned :class:`ExecStream` has ``stdout`` (a buffered binary reader; a read that
    waits longer than ``idle_timeout`` raises ``TimeoutError``, a broken connection
    ``OSError``/``EOFError``), ``finish() -> StreamResult`` (waits for the exit status,
    at most ``idle_timeout``) and ``close()``. ``stdin`` is fed and stderr drained by
    the transport so neither can deadlock the stream. Raises ``TransportError`` if the
    command cannot be started.

``put(path, data, *, mode=0o600)`` / ``get(path, *, max_bytes) -> bytes``
    Write / read one small remote file (at most ``max_bytes``: a hostile host may
    offer gigabytes; more raises ``TransportError(PROTOCOL)``). Large data goes through
    ``exec_stream``.

``alive`` (property) and ``close()``
    ``alive`` is False once the connection dropped (the pool then reopens it);
    ``close()`` is idempotent and may be called from another thread (the wave watchdog
    closes the connection of a host that overran its budget, which must make any
    blocked ``run``/``exec_stream`` read fail promptly).

Errors: every failure to reach or talk to the host is a :class:`TransportError` with a
``kind`` from the constants below; ``TransportError.transient`` says whether a retry
may help. Nothing else (no paramiko/requests/ldap3 exceptions) may escape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import IO, ClassVar, Protocol, runtime_checkable

# Failure kinds the engine maps to step statuses.
UNREACHABLE = "unreachable"
TIMED_OUT = "timed_out"
AUTH_FAILED = "auth_failed"
HOST_KEY_CHANGED = "host_key_changed"
HOST_KEY_UNKNOWN = "host_key_unknown"
TRANSIENT = "transient"
PROTOCOL = "protocol"


class TransportError(Exception):
    """A failure to reach or talk to a host; ``kind`` is one of the constants above."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    @property
    def transient(self) -> bool:
        return self.kind in (TRANSIENT, UNREACHABLE)


@dataclass(frozen=True)
class Timeouts:
    connect: float = 10.0
    banner: float = 10.0
    auth: float = 15.0
    command: float = 60.0


@dataclass
class CommandResult:
    exit_status: int
    stdout: bytes
    stderr: bytes
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")


@dataclass
class Endpoint:
    """Where and as whom to connect; ``pinned`` holds the acceptable server identity fingerprints."""

    address: str
    port: int
    user: str
    pinned: set[str] = field(default_factory=set)
    name: str = ""


@dataclass
class StreamResult:
    exit_status: int
    stderr: bytes


class ExecStream(Protocol):
    """A running command whose stdout is read as a stream (see the module docstring)."""

    @property
    def stdout(self) -> IO[bytes]: ...

    def finish(self) -> StreamResult: ...

    def close(self) -> None: ...


@runtime_checkable
class Connection(Protocol):
    """One authenticated connection to one host (see the module docstring for the contract)."""

    kind: ClassVar[str]
    endpoint: Endpoint
    host_key_fingerprint: str

    def run(self, command: str, *, stdin: bytes | None = None, timeout: float | None = None,
            deadline: float | None = None) -> CommandResult: ...

    def exec_stream(self, command: str, *, stdin: bytes | None = None, idle_timeout: float,
                    deadline: float | None = None) -> ExecStream: ...

    def put(self, path: str, data: bytes, *, mode: int = 0o600) -> None: ...

    def get(self, path: str, *, max_bytes: int) -> bytes: ...

    @property
    def alive(self) -> bool: ...

    def close(self) -> None: ...
