"""SSH transport over paramiko: one connection per host, reused by every step.

* Strict host keys: the server's key is checked against the pinned
  fingerprints *before* any credential is sent; no key is ever auto-accepted.
* Hard deadlines on TCP connect, banner, auth and every command, so a hung
  host (sshd stopped, a black-holed address) ends as ``timed_out``.
* TCP_NODELAY (paramiko leaves Nagle on), no agent, no key search.
* Secrets go over stdin of the remote command, never into its argv.
"""

from __future__ import annotations

import select
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from ir_toolkit.transports.hostkeys import fingerprint

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
    """Where and as whom to connect; ``pinned`` holds the acceptable host key fingerprints."""

    address: str
    port: int
    user: str
    pinned: set[str] = field(default_factory=set)
    name: str = ""


class _QuietTransport(paramiko.Transport):
    """A transport whose reader thread wakes once a second instead of ten times when idle.

    paramiko polls its socket every 0.1 s to notice a close; with hundreds of open
    connections those wake-ups (each taking the GIL) cost more controller CPU than the
    commands themselves. Closing still ends the thread at once (the socket is closed).
    """

    _active_check_timeout = 1.0


class _PinnedPolicy(paramiko.MissingHostKeyPolicy):
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.seen: str | None = None

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        fp = fingerprint(key.asbytes())
        self.seen = fp
        if not self.endpoint.pinned:
            raise TransportError(
                HOST_KEY_UNKNOWN,
                f"no pinned host key for {self.endpoint.address}:{self.endpoint.port} (server offers {fp}); "
                "pin it in the inventory or known_hosts",
            )
        if fp not in self.endpoint.pinned:
            raise TransportError(
                HOST_KEY_CHANGED,
                f"host key changed — possible interception: {self.endpoint.address}:{self.endpoint.port} "
                f"offers {fp}, pinned {', '.join(sorted(self.endpoint.pinned))}",
            )


def load_private_key(path: Path) -> paramiko.PKey:
    """Load an unencrypted OpenSSH/PEM private key (Ed25519, ECDSA or RSA)."""
    try:
        return paramiko.PKey.from_path(str(path))
    except FileNotFoundError:
        raise TransportError(AUTH_FAILED, f"responder key {path} does not exist") from None
    except (paramiko.SSHException, ValueError) as exc:
        raise TransportError(AUTH_FAILED, f"cannot load responder key {path}: {exc}") from None


def _open_socket(endpoint: Endpoint, timeout: float) -> socket.socket:
    try:
        sock = socket.create_connection((endpoint.address, endpoint.port), timeout=timeout)
    except (TimeoutError, socket.timeout):
        raise TransportError(TIMED_OUT, f"connect to {endpoint.address}:{endpoint.port} timed out after {timeout:g}s") from None
    except OSError as exc:
        raise TransportError(UNREACHABLE, f"cannot connect to {endpoint.address}:{endpoint.port}: {exc.strerror or exc}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class SshConnection:
    """One authenticated SSH connection to one host."""

    def __init__(self, endpoint: Endpoint, client: paramiko.SSHClient, timeouts: Timeouts) -> None:
        self.endpoint = endpoint
        self.client = client
        self.timeouts = timeouts
        self.host_key_fingerprint = fingerprint(client.get_transport().get_remote_server_key().asbytes())  # type: ignore[union-attr]

    @classmethod
    def open(
        cls,
        endpoint: Endpoint,
        *,
        pkey: paramiko.PKey | None = None,
        password: str | None = None,
        timeouts: Timeouts = Timeouts(),
        deadline: float | None = None,
    ) -> SshConnection:
        """Connect, check the host key against the pins, authenticate; all within ``deadline``."""

        def budget(limit: float) -> float:
            if deadline is None:
                return limit
            left = deadline - time.monotonic()
            if left <= 0:
                raise TransportError(TIMED_OUT, f"{endpoint.address}: host deadline reached before connecting")
            return min(limit, left)

        started = time.monotonic()
        sock = _open_socket(endpoint, budget(timeouts.connect))
        banner_budget = budget(timeouts.banner)
        client = paramiko.SSHClient()
        policy = _PinnedPolicy(endpoint)
        client.set_missing_host_key_policy(policy)
        try:
            client.connect(
                endpoint.address, port=endpoint.port, username=endpoint.user, pkey=pkey, password=password,
                sock=sock, timeout=budget(timeouts.connect), banner_timeout=banner_budget,
                auth_timeout=budget(timeouts.auth), allow_agent=False, look_for_keys=False,
                transport_factory=_QuietTransport,
            )
        except TransportError:
            client.close()
            sock.close()
            raise
        except paramiko.AuthenticationException as exc:
            client.close()
            raise TransportError(AUTH_FAILED, f"{endpoint.address}: authentication as {endpoint.user} failed ({exc})") from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            client.close()
            sock.close()
            text = str(exc) or type(exc).__name__
            if "banner" in text.lower() or isinstance(exc, (EOFError, ConnectionResetError)):
                # A daemon that never answered within the banner budget is hung (timed out); an early
                # drop (sshd MaxStartups, a reset) is transient and worth a retry.
                waited = time.monotonic() - started
                if waited >= banner_budget * 0.9:
                    raise TransportError(TIMED_OUT, f"{endpoint.address}: no SSH banner within {banner_budget:g}s (host hung?)") from None
                raise TransportError(TRANSIENT, f"{endpoint.address}: {text}") from None
            if isinstance(exc, (TimeoutError, socket.timeout)):
                raise TransportError(TIMED_OUT, f"{endpoint.address}: timed out during SSH handshake") from None
            raise TransportError(PROTOCOL, f"{endpoint.address}: SSH error: {text}") from None
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(15)
        return cls(endpoint, client, timeouts)

    def run(self, command: str, *, stdin: bytes | None = None, timeout: float | None = None) -> CommandResult:
        """Run ``command``; feed ``stdin`` (secrets go here, never in ``command``)."""
        limit = self.timeouts.command if timeout is None else timeout
        start = time.monotonic()
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise TransportError(UNREACHABLE, f"{self.endpoint.address}: connection is closed")
        try:
            chan = transport.open_session(timeout=limit)
        except (paramiko.SSHException, OSError) as exc:
            raise TransportError(TRANSIENT, f"{self.endpoint.address}: cannot open channel: {exc}") from None
        try:
            chan.settimeout(limit)
            chan.exec_command(command)
            if stdin:
                chan.sendall(stdin)
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            deadline = start + limit
            ready_fd = chan.fileno()  # readable when stdout or stderr data (or EOF) arrives
            while True:
                while chan.recv_ready():
                    out += chan.recv(65536)
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TransportError(TIMED_OUT, f"{self.endpoint.address}: command timed out after {limit:g}s")
                if chan.eof_received:
                    if chan.exit_status_ready() or chan.closed:
                        break
                    chan.status_event.wait(min(left, 1.0))
                    continue
                select.select([ready_fd], [], [], min(left, 1.0))
            while chan.recv_ready():
                out += chan.recv(65536)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
            if not chan.exit_status_ready():
                raise TransportError(UNREACHABLE, f"{self.endpoint.address}: channel closed without an exit status")
            return CommandResult(chan.recv_exit_status(), bytes(out), bytes(err), time.monotonic() - start)
        except (socket.timeout, TimeoutError):
            raise TransportError(TIMED_OUT, f"{self.endpoint.address}: command timed out after {limit:g}s") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise TransportError(UNREACHABLE, f"{self.endpoint.address}: connection lost: {exc}") from None
        finally:
            chan.close()

    @property
    def alive(self) -> bool:
        transport = self.client.get_transport()
        return bool(transport and transport.is_active())

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> SshConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def probe_login(
    endpoint: Endpoint,
    *,
    pkey: paramiko.PKey | None = None,
    password: str | None = None,
    timeouts: Timeouts = Timeouts(connect=5, banner=5, auth=10),
) -> bool:
    """True if a fresh login with exactly this credential succeeds (used to prove a credential dead or alive).

    Raises :class:`TransportError` for anything other than an authentication verdict
    (unreachable host, host key mismatch), so a network failure is never mistaken
    for "the old credential no longer works".
    """
    try:
        conn = SshConnection.open(endpoint, pkey=pkey, password=password, timeouts=timeouts)
    except TransportError as exc:
        if exc.kind == AUTH_FAILED:
            return False
        raise
    conn.close()
    return True
