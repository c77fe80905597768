"""SSH transport over paramiko: one connection per host, reused by every step.

* Strict host keys: the server's key is checked against the pinned
  fingerprints *before* any credential is sent; no key is ever auto-accepted.
* Hard deadlines on TCP connect, banner, auth and every command, so a hung
  host (sshd stopped, a black-holed address) ends as ``timed_out``.
* TCP_NODELAY (paramiko leaves Nagle on), no agent, no key search.
* Secrets go over stdin of the remote command, never into its argv.
"""

from __future__ import annotations

import io
import select
import socket
import threading
import time
from pathlib import Path
from typing import IO, Any, ClassVar

import paramiko

from ir_toolkit.transports.base import (
    AUTH_FAILED,
    HOST_KEY_CHANGED,
    HOST_KEY_UNKNOWN,
    PROTOCOL,
    TIMED_OUT,
    TRANSIENT,
    UNREACHABLE,
    CommandResult,
    Endpoint,
    StreamResult,
    Timeouts,
    TransportError,
)
from ir_toolkit.transports.hostkeys import fingerprint

__all__ = [
    "AUTH_FAILED", "HOST_KEY_CHANGED", "HOST_KEY_UNKNOWN", "PROTOCOL", "TIMED_OUT", "TRANSIENT", "UNREACHABLE",
    "CommandResult", "Endpoint", "SshConnection", "SshExecStream", "Timeouts", "TransportError",
    "load_private_key", "probe_login",
]

# A bulk-transfer channel: large packets cut paramiko's per-packet Python work; the window stays
# moderate because paramiko's receive buffer memmoves what is left after every read.
STREAM_WINDOW = 8 << 20
STREAM_MAX_PACKET = 256 << 10
STREAM_READ_SIZE = 1 << 20
#: stdout a command may return to ``SshConnection.run`` (listings stay far below; more is refused)
MAX_OUTPUT = 64 << 20
#: stderr kept of one command (its first and last halves; the rest is counted)
MAX_STDERR = 1 << 20

# paramiko rekeys after 512 MiB; a channel CLOSE that arrives while that rekey is in
# flight deadlocks paramiko's transport thread for 30 s and then kills the connection
# (paramiko/paramiko#822, open since 2016; reproduced here with 5 x 128 MiB streams).
# Evidence transfers move gigabytes and close a channel per command, so the client-side
# rekey threshold is raised to 16 GiB - far below the AES-CTR / ChaCha20 limits (RFC 4344
# advises rekeying AES after 2^32 blocks = 64 GiB). OpenSSH servers rekey on their own
# schedule (aes128-ctr: after 2^32 blocks), which this does not change.
REKEY_LIMIT = 1 << 34
#: seconds of silence before a keepalive (and the idle reader thread's wake-up period)
KEEPALIVE = 15


def avoid_rekey_deadlock(transport: paramiko.Transport | None) -> None:
    packetizer = getattr(transport, "packetizer", None)
    if packetizer is not None and getattr(packetizer, "REKEY_BYTES", 0) < REKEY_LIMIT:
        packetizer.REKEY_BYTES = REKEY_LIMIT
        packetizer.REKEY_PACKETS = REKEY_LIMIT


class _QuietTransport(paramiko.Transport):
    """A transport whose reader thread wakes every :data:`KEEPALIVE` seconds when idle, not ten times a second.

    paramiko polls its socket every 0.1 s to notice a close (and to send keepalives). irkit keeps each
    host's connection open for the whole run while the fleet moves through its phases, so the idle
    wake-ups (each taking the GIL) grew with hosts x run time: at 1 s, 100 idle connections cost the
    controller 21 ms of CPU per second (measured), ~0.9 s per host over a 1,000-host run. Now the
    reader wakes only when the keepalive is due. ``close`` shuts the socket down first, so a reader
    blocked in ``recv`` returns at once and the TCP connection ends now, not at the next wake-up.
    """

    _active_check_timeout = float(KEEPALIVE)

    def close(self) -> None:
        sock = getattr(self, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # not connected, or already closed
        super().close()
    # AES-GCM first (an AEAD: no separate HMAC, whose check paramiko makes byte by byte in Python for every
    # packet): an 8 MB evidence stream costs ~12 ms of controller CPU instead of ~20 with aes128-ctr +
    # hmac-sha2-256 (measured against the lab's OpenSSH 9.2). The other ciphers stay, after it.
    _preferred_ciphers = tuple(c for c in paramiko.Transport._preferred_ciphers if "gcm" in c) + tuple(
        c for c in paramiko.Transport._preferred_ciphers if "gcm" not in c)


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


#: decrypted keys by (path, digest of the file's bytes, digest of the passphrase): an encrypted
#: OpenSSH key costs ~0.1-0.2 s of CPU to open (bcrypt KDF), and a containment run proves
#: access with the case key on every host several times. A changed file or passphrase misses.
_KEY_CACHE: dict[tuple[str, bytes, bytes], paramiko.PKey] = {}
_KEY_CACHE_LOCK = threading.Lock()
_KEY_CACHE_MAX = 256


def load_private_key(path: Path, passphrase: str | None = None) -> paramiko.PKey:
    """Load an OpenSSH/PEM private key (Ed25519, ECDSA or RSA), encrypted with ``passphrase`` or not.

    The file is read on every call; a key whose bytes and passphrase match an earlier load is
    not decrypted again (the bcrypt KDF is the dominant cost of a fresh-login proof).
    """
    import hashlib

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise TransportError(AUTH_FAILED, f"responder key {path} does not exist") from None
    except OSError as exc:
        raise TransportError(AUTH_FAILED, f"cannot read responder key {path}: {exc.strerror or exc}") from None
    cache_key = (str(path), hashlib.sha256(data).digest(),
                 hashlib.sha256(b"\0" + passphrase.encode()).digest() if passphrase else b"")
    with _KEY_CACHE_LOCK:
        cached = _KEY_CACHE.get(cache_key)
    if cached is not None:
        return cached
    try:
        pkey = _pkey_from_bytes(data, passphrase)
    except ValueError as exc:
        if passphrase and "checksum" in str(exc):
            raise TransportError(AUTH_FAILED, f"cannot load responder key {path}: wrong passphrase "
                                              "(or a damaged key file)") from None
        raise TransportError(AUTH_FAILED, f"cannot load responder key {path}: {exc}") from None
    except (paramiko.SSHException, TypeError) as exc:  # TypeError: encrypted, no passphrase
        raise TransportError(AUTH_FAILED, f"cannot load responder key {path}: {exc}") from None
    with _KEY_CACHE_LOCK:
        if len(_KEY_CACHE) >= _KEY_CACHE_MAX:
            _KEY_CACHE.clear()
        _KEY_CACHE[cache_key] = pkey
    return pkey


def _pkey_from_bytes(data: bytes, passphrase: str | None) -> paramiko.PKey:
    """A paramiko key from a key file's bytes, decrypted once (paramiko's ``from_path`` runs the
    KDF twice: once in ``cryptography`` to find the type, once in its own loader)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    password = passphrase.encode() if passphrase else None
    loaded: Any
    if b"BEGIN OPENSSH PRIVATE KEY" in data[:100]:
        loaded = serialization.load_ssh_private_key(data, password=password)  # wrong passphrase: ValueError
    else:
        loaded = serialization.load_pem_private_key(data, password=password)
    classes: list[tuple[type, type[paramiko.PKey]]] = [
        (ed25519.Ed25519PrivateKey, paramiko.Ed25519Key), (rsa.RSAPrivateKey, paramiko.RSAKey),
        (ec.EllipticCurvePrivateKey, paramiko.ECDSAKey)]
    for kind, key_class in classes:
        if isinstance(loaded, kind):
            plain = loaded.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                         serialization.NoEncryption()).decode()
            return key_class.from_private_key(io.StringIO(plain))
    raise ValueError(f"unsupported key type {type(loaded).__name__}")


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
    """One authenticated SSH connection to one host (implements :class:`transports.base.Connection`)."""

    kind: ClassVar[str] = "ssh"

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
            if text == "No existing session":
                # paramiko's word for a transport that died between the key exchange and authentication
                # (the daemon closed it: LoginGraceTime or MaxStartups on a loaded host): a lost
                # connection, worth a retry - never an answer to "is this credential refused?"
                raise TransportError(TRANSIENT, f"{endpoint.address}: connection lost during SSH login ({text})") from None
            raise TransportError(PROTOCOL, f"{endpoint.address}: SSH error: {text}") from None
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(KEEPALIVE)
            avoid_rekey_deadlock(transport)
        return cls(endpoint, client, timeouts)

    def run(self, command: str, *, stdin: bytes | None = None, timeout: float | None = None,
            deadline: float | None = None, max_output: int | None = None) -> CommandResult:
        """Run ``command``; feed ``stdin`` (secrets go here, never in ``command``).

        stdin is fed from a helper thread while the output is read, so a command that writes much
        before it has read all its input cannot deadlock on the channel windows. At most
        ``max_output`` (default :data:`MAX_OUTPUT`) bytes of stdout are kept: more is an error, a
        host cannot make the controller buffer without bound; stderr keeps its first and last
        :data:`MAX_STDERR` / 2 bytes.
        """
        limit = self.timeouts.command if timeout is None else timeout
        if deadline is not None:
            limit = min(limit, deadline - time.monotonic())
            if limit <= 0:
                raise TransportError(TIMED_OUT, f"{self.endpoint.address}: deadline reached before the command")
        max_out = MAX_OUTPUT if max_output is None else max_output
        start = time.monotonic()
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise TransportError(UNREACHABLE, f"{self.endpoint.address}: connection is closed")
        try:
            chan = transport.open_session(timeout=limit)
        except (paramiko.SSHException, OSError) as exc:
            raise TransportError(TRANSIENT, f"{self.endpoint.address}: cannot open channel: {exc}") from None
        feeder: threading.Thread | None = None
        try:
            chan.settimeout(limit)
            chan.exec_command(_command_bytes(command))
            if stdin:
                def feed() -> None:
                    try:
                        chan.sendall(stdin)
                        chan.shutdown_write()
                    except (OSError, EOFError, paramiko.SSHException):
                        pass  # the channel broke: the reader below sees it

                feeder = threading.Thread(target=feed, name="irkit-ssh-stdin", daemon=True)
                feeder.start()
            else:
                chan.shutdown_write()
            out = bytearray()
            err = _HeadTail(MAX_STDERR)

            def drain() -> None:
                while chan.recv_ready():
                    out.extend(chan.recv(65536))
                    if len(out) > max_out:
                        raise TransportError(PROTOCOL, f"{self.endpoint.address}: command output over "
                                                       f"{max_out} bytes (not kept)")
                while chan.recv_stderr_ready():
                    err.add(chan.recv_stderr(65536))

            end = start + limit
            # readable when stdout or stderr data (or EOF) arrives; poll, not select: a controller with
            # hundreds of connections has descriptors above FD_SETSIZE (1024), which select() refuses
            poller = select.poll()
            poller.register(chan.fileno(), select.POLLIN)
            while True:
                drain()
                left = end - time.monotonic()
                if left <= 0:
                    raise TransportError(TIMED_OUT, f"{self.endpoint.address}: command timed out after {limit:g}s")
                if chan.eof_received:
                    if chan.exit_status_ready() or chan.closed:
                        break
                    chan.status_event.wait(min(left, 1.0))
                    continue
                poller.poll(min(left, 1.0) * 1000)
            drain()
            if not chan.exit_status_ready():
                raise TransportError(UNREACHABLE, f"{self.endpoint.address}: channel closed without an exit status")
            return CommandResult(chan.recv_exit_status(), bytes(out), err.value(), time.monotonic() - start)
        except (socket.timeout, TimeoutError):
            raise TransportError(TIMED_OUT, f"{self.endpoint.address}: command timed out after {limit:g}s") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise TransportError(UNREACHABLE, f"{self.endpoint.address}: connection lost: {exc}") from None
        finally:
            chan.close()
            if feeder is not None:
                feeder.join(1.0)

    def exec_stream(self, command: str, *, stdin: bytes | None = None, idle_timeout: float,
                    deadline: float | None = None) -> SshExecStream:
        """Start ``command`` with its stdout as a stream (stdin fed, stderr drained by helper threads)."""
        if deadline is not None:
            idle_timeout = max(0.001, min(idle_timeout, deadline - time.monotonic()))
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise TransportError(UNREACHABLE, f"{self.endpoint.address}: connection is closed")
        avoid_rekey_deadlock(transport)
        try:
            chan = transport.open_session(window_size=STREAM_WINDOW, max_packet_size=STREAM_MAX_PACKET,
                                          timeout=idle_timeout)
            chan.settimeout(idle_timeout)
            chan.exec_command(_command_bytes(command))
        except (paramiko.SSHException, OSError) as exc:
            raise TransportError(TRANSIENT, f"{self.endpoint.address}: cannot start remote command: {exc}") from None
        return SshExecStream(chan, stdin, idle_timeout, deadline)

    def put(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        """Write ``data`` to ``path`` (created with ``mode``, replaced atomically on the host)."""
        quoted = _sh_quote(path)
        tmp = _sh_quote(path + ".irkit-tmp")
        result = self.run(f"umask 077 && cat > {tmp} && chmod {mode:o} {tmp} && mv -f {tmp} {quoted}", stdin=data)
        if not result.ok:
            err = result.stderr.decode("utf-8", "replace").strip()[:200]
            raise TransportError(PROTOCOL, f"{self.endpoint.address}: cannot write {path}: {err}")

    def get(self, path: str, *, max_bytes: int) -> bytes:
        """Read ``path`` (at most ``max_bytes``: more is refused, never buffered)."""
        result = self.run(f"head -c {int(max_bytes) + 1} -- {_sh_quote(path)}")
        if not result.ok:
            err = result.stderr.decode("utf-8", "replace").strip()[:200]
            raise TransportError(PROTOCOL, f"{self.endpoint.address}: cannot read {path}: {err}")
        if len(result.stdout) > max_bytes:
            raise TransportError(PROTOCOL, f"{self.endpoint.address}: {path} is larger than {max_bytes} bytes")
        return result.stdout

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


def _command_bytes(command: str) -> bytes:
    """The command line as sent: host paths that are not UTF-8 were decoded with ``surrogateescape``
    and go back as their original bytes (a strict encode would crash on them)."""
    return command.encode("utf-8", "surrogateescape")


def _sh_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


class _HeadTail:
    """The first and last ``limit / 2`` bytes of a stream (stderr of a host command); the rest is counted."""

    def __init__(self, limit: int) -> None:
        self.half = max(1, limit // 2)
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.half - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > self.half:
                del self.tail[:len(self.tail) - self.half]

    def value(self) -> bytes:
        omitted = self.total - len(self.head) - len(self.tail)
        if omitted <= 0:
            return bytes(self.head + self.tail)
        return bytes(self.head) + f"\n[irkit: {omitted} bytes omitted]\n".encode() + bytes(self.tail)


class _ChannelReader(io.RawIOBase):
    """A paramiko channel's stdout as a raw binary stream (paramiko errors surface as ``OSError``).

    Each wait is bounded by the idle timeout and by the absolute ``deadline``: a host that trickles
    bytes just inside the idle timeout still ends there (``TimeoutError``).
    """

    def __init__(self, chan: paramiko.Channel, idle_timeout: float | None = None,
                 deadline: float | None = None) -> None:
        self.chan = chan
        self.idle_timeout = idle_timeout
        self.deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("deadline reached")
            self.chan.settimeout(max(0.01, min(self.idle_timeout or left, left)))
        try:
            data = self.chan.recv(len(buffer))
        except paramiko.SSHException as exc:
            raise ConnectionError(str(exc)) from None
        n = len(data)
        buffer[:n] = data
        return n


class SshExecStream:
    """An exec channel with stdin fed and stderr drained by helper threads (no window deadlock)."""

    def __init__(self, chan: paramiko.Channel, stdin: bytes | None, idle_timeout: float,
                 deadline: float | None = None) -> None:
        self.chan = chan
        self.idle_timeout = idle_timeout
        self.deadline = deadline
        self._stderr = _HeadTail(MAX_STDERR)
        self._errors: list[BaseException] = []
        self._stdout: IO[bytes] = io.BufferedReader(_ChannelReader(chan, idle_timeout, deadline), STREAM_READ_SIZE)
        self._threads = [threading.Thread(target=self._drain_stderr, daemon=True),
                         threading.Thread(target=self._feed, args=(stdin or b"",), daemon=True)]
        for thread in self._threads:
            thread.start()

    def _feed(self, data: bytes) -> None:
        try:
            view = memoryview(data)
            while view:
                sent = self.chan.send(view[:STREAM_READ_SIZE])
                view = view[sent:]
            self.chan.shutdown_write()
        except (TimeoutError, OSError, paramiko.SSHException) as exc:
            self._errors.append(exc)

    def _drain_stderr(self) -> None:
        try:
            while True:
                data = self.chan.recv_stderr(65536)
                if not data:
                    break
                self._stderr.add(data)
        except (TimeoutError, OSError, paramiko.SSHException) as exc:
            self._errors.append(exc)

    @property
    def stdout(self) -> IO[bytes]:
        return self._stdout

    def finish(self) -> StreamResult:
        """Wait (at most ``idle_timeout``) for the exit status; raises ``TransportError(TIMED_OUT)``."""
        wait = self.idle_timeout
        if self.deadline is not None:
            wait = max(0.0, min(wait, self.deadline - time.monotonic()))
        for thread in self._threads:
            thread.join(wait)
        deadline = time.monotonic() + wait
        while not self.chan.exit_status_ready():
            if time.monotonic() > deadline:
                self.chan.close()
                raise TransportError(TIMED_OUT, f"no exit status within {self.idle_timeout:g}s")
            self.chan.status_event.wait(0.5)
        status = self.chan.recv_exit_status()
        self.chan.close()
        return StreamResult(status, self._stderr.value())

    def close(self) -> None:
        self.chan.close()


def probe_login(
    endpoint: Endpoint,
    *,
    pkey: paramiko.PKey | None = None,
    password: str | None = None,
    timeouts: Timeouts = Timeouts(connect=5, banner=5, auth=10),
    deadline: float | None = None,
) -> bool:
    """True if a fresh login with exactly this credential succeeds (used to prove a credential dead or alive).

    Raises :class:`TransportError` for anything other than an authentication verdict
    (unreachable host, host key mismatch), so a network failure is never mistaken
    for "the old credential no longer works".
    """
    try:
        conn = SshConnection.open(endpoint, pkey=pkey, password=password, timeouts=timeouts, deadline=deadline)
    except TransportError as exc:
        if exc.kind == AUTH_FAILED:
            return False
        raise
    conn.close()
    return True
