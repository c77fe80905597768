"""Moving bytes off a host over the one open SSH connection, streamed, never staged on disk.

* :func:`tar_fetch` - the default: one exec channel runs ``tar`` over a
  NUL-separated list on stdin; the POSIX tar stream is parsed as it arrives
  and each member handed to a sink (which writes it into the bundle). One
  round trip for any number of files; measured faster than SFTP, see
  ``bench/bench_triage_transfer.py`` and docs/triage.md.
* :func:`sftp_fetch` - paramiko SFTP with prefetch, kept for the benchmark.
* :func:`tee_fetch` - one file, read once on the host and hashed from the very
  bytes sent (``tee`` into ``sha256sum``): the retry path for files that
  changed between hashing and copying.
* :func:`run_capped` - a command whose output is kept up to a cap (the rest
  is counted, not silently dropped).

All functions take the connection object of :mod:`ir_toolkit.transports.ssh`
(anything with ``.client``, a connected ``paramiko.SSHClient``).
"""

from __future__ import annotations

import hashlib
import io
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

import paramiko

from ir_toolkit.triage import remote, tarstream

READ_SIZE = 1 << 20
# A bulk-transfer channel: large packets cut paramiko's per-packet Python work; the window stays
# moderate because paramiko's receive buffer memmoves what is left after every read.
WINDOW = 8 << 20
MAX_PACKET = 256 << 10


class Connection(Protocol):
    client: paramiko.SSHClient


class TransferError(Exception):
    """The stream broke (connection lost, idle timeout, corrupt tar): the host's collection fails."""


# sink(path, size, stream, tarinfo_or_None) must read exactly ``size`` bytes from ``stream``.
Sink = Callable[[str, int, IO[bytes], "tarfile.TarInfo | None"], None]


class ChannelReader(io.RawIOBase):
    """A paramiko channel's stdout as a raw binary stream."""

    def __init__(self, chan: paramiko.Channel) -> None:
        self.chan = chan

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.chan.recv(len(buffer))
        n = len(data)
        buffer[:n] = data
        return n


@dataclass
class StreamOutcome:
    exit_status: int
    stderr: bytes
    received: set[str] = field(default_factory=set)


# paramiko rekeys after 512 MiB; a channel CLOSE that arrives while that rekey is in
# flight deadlocks paramiko's transport thread for 30 s and then kills the connection
# (paramiko/paramiko#822, open since 2016; reproduced here with 5 x 128 MiB streams).
# Evidence transfers move gigabytes and close a channel per command, so the client-side
# rekey threshold is raised to 16 GiB - far below the AES-CTR / ChaCha20 limits (RFC 4344
# advises rekeying AES after 2^32 blocks = 64 GiB). OpenSSH servers rekey on their own
# schedule (aes128-ctr: after 2^32 blocks), which this does not change.
REKEY_LIMIT = 1 << 34


def avoid_rekey_deadlock(conn: Connection) -> None:
    transport = conn.client.get_transport()
    packetizer = getattr(transport, "packetizer", None)
    if packetizer is not None and getattr(packetizer, "REKEY_BYTES", 0) < REKEY_LIMIT:
        packetizer.REKEY_BYTES = REKEY_LIMIT
        packetizer.REKEY_PACKETS = REKEY_LIMIT


class _Exec:
    """An exec channel with stdin fed and stderr drained by helper threads (no window deadlock)."""

    def __init__(self, conn: Connection, command: str, stdin: bytes | None, idle_timeout: float) -> None:
        transport = conn.client.get_transport()
        if transport is None or not transport.is_active():
            raise TransferError("connection is closed")
        avoid_rekey_deadlock(conn)
        try:
            self.chan = transport.open_session(window_size=WINDOW, max_packet_size=MAX_PACKET, timeout=idle_timeout)
            self.chan.settimeout(idle_timeout)
            self.chan.exec_command(command)
        except (paramiko.SSHException, OSError) as exc:
            raise TransferError(f"cannot start remote command: {exc}") from None
        self.idle_timeout = idle_timeout
        self._stderr = bytearray()
        self._errors: list[BaseException] = []
        self._threads = [threading.Thread(target=self._drain_stderr, daemon=True)]
        self._threads.append(threading.Thread(target=self._feed, args=(stdin or b"",), daemon=True))
        for thread in self._threads:
            thread.start()

    def _feed(self, data: bytes) -> None:
        try:
            view = memoryview(data)
            while view:
                sent = self.chan.send(view[:READ_SIZE])
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
                self._stderr += data
        except (TimeoutError, OSError, paramiko.SSHException) as exc:
            self._errors.append(exc)

    def stdout(self) -> io.BufferedReader:
        return io.BufferedReader(ChannelReader(self.chan), READ_SIZE)

    def finish(self) -> StreamOutcome:
        for thread in self._threads:
            thread.join(self.idle_timeout)
        deadline = time.monotonic() + self.idle_timeout
        while not self.chan.exit_status_ready():
            if time.monotonic() > deadline:
                self.chan.close()
                raise TransferError(f"no exit status within {self.idle_timeout:g}s")
            self.chan.status_event.wait(0.5)
        status = self.chan.recv_exit_status()
        self.chan.close()
        return StreamOutcome(status, bytes(self._stderr))

    def close(self) -> None:
        self.chan.close()


def tar_fetch(conn: Connection, paths: list[str], sink: Sink, *, idle_timeout: float = 120.0) -> StreamOutcome:
    """Stream ``paths`` (absolute) as one tar archive; call ``sink`` per regular-file member."""
    listing = b"".join(remote.encode_path(p.lstrip("/")) + b"\0" for p in paths)
    job = _Exec(conn, remote.TAR_COMMAND, listing, idle_timeout)
    received: set[str] = set()
    stdout = job.stdout()
    try:
        for member, stream in tarstream.iter_members(stdout):
            if not member.isreg():
                continue
            path = "/" + member.name.lstrip("/")
            sink(path, member.size, stream, member)
            received.add(path)
        # Read whatever follows the end-of-archive blocks so the channel can close.
        while stdout.read(READ_SIZE):
            pass
    except TimeoutError:
        job.close()
        raise TransferError(f"tar stream stalled for {idle_timeout:g}s") from None
    except tarstream.TarFormatError as exc:
        job.close()
        raise TransferError(f"corrupt tar stream from host: {exc}") from None
    except (OSError, EOFError, paramiko.SSHException) as exc:
        job.close()
        raise TransferError(f"tar stream broke: {exc}") from None
    outcome = job.finish()
    outcome.received = received
    return outcome


def sftp_fetch(conn: Connection, paths: list[str], sink: Sink) -> StreamOutcome:
    """Fetch ``paths`` one by one over SFTP with read-ahead (paramiko ``prefetch``)."""
    errors: list[str] = []
    received: set[str] = set()
    avoid_rekey_deadlock(conn)
    sftp = conn.client.open_sftp()
    try:
        for path in paths:
            try:
                with sftp.open(path, "rb") as fh:
                    size = fh.stat().st_size or 0
                    fh.prefetch(size)
                    sink(path, size, fh, None)
                    received.add(path)
            except OSError as exc:
                errors.append(f"sftp: {path}: {exc.strerror or exc}")
    finally:
        sftp.close()
    return StreamOutcome(0 if not errors else 1, "\n".join(errors).encode(), received)


@dataclass
class TeeResult:
    host_sha256: str | None
    size: int
    exit_status: int
    stderr: str


def tee_fetch(conn: Connection, path: str, sink: Sink, *, idle_timeout: float = 120.0) -> TeeResult:
    """Copy one file, hashed on the host from exactly the bytes sent (one read of the file)."""
    script = (
        's=$(stat -c %s -- "$1") || exit 3; printf "%s\\n" "$s"; '
        'head -c "$s" -- "$1" | tee /dev/fd/3 | sha256sum >&2'
    )
    command = f"{remote.ENV_PREFIX} sh -c {shlex.quote(script)} sh {shlex.quote(path)} 3>&1"
    job = _Exec(conn, command, None, idle_timeout)
    size = 0
    try:
        out = job.stdout()
        line = out.readline()
        if line.strip().isdigit():
            size = int(line)
            reader = _PaddedReader(out, size)
            sink(path, size, reader, None)
        while out.read(READ_SIZE):
            pass
    except TimeoutError:
        job.close()
        raise TransferError(f"copy of {path} stalled for {idle_timeout:g}s") from None
    except (OSError, EOFError, paramiko.SSHException) as exc:
        job.close()
        raise TransferError(f"copy of {path} broke: {exc}") from None
    outcome = job.finish()
    text = outcome.stderr.decode("utf-8", "replace")
    digest = None
    for line_text in text.splitlines():
        parts = line_text.split()
        if len(parts) == 2 and parts[1] == "-" and len(parts[0]) == 64:
            digest = parts[0]
    other = "\n".join(ln for ln in text.splitlines() if not ln.endswith("  -"))
    return TeeResult(digest, size, outcome.exit_status, other)


class _PaddedReader(io.RawIOBase):
    """Read exactly ``size`` bytes; a short source is padded with zeros (and will fail its hash)."""

    def __init__(self, source: IO[bytes], size: int) -> None:
        self.source = source
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.left <= 0:
            return 0
        want = min(len(buffer), self.left)
        data = self.source.read(want)
        if not data:
            data = b"\0" * want
        n = len(data)
        buffer[:n] = data
        self.left -= n
        return n


@dataclass
class CappedResult:
    exit_status: int
    stdout: bytes
    stderr: bytes
    total_bytes: int
    truncated: bool
    duration: float


def run_capped(conn: Connection, command: str, *, cap: int, timeout: float) -> CappedResult:
    """Run ``command``; keep at most ``cap`` bytes of stdout, count the rest."""
    start = time.monotonic()
    job = _Exec(conn, command, None, timeout)
    kept = bytearray()
    total = 0
    try:
        out = job.stdout()
        deadline = start + timeout
        while True:
            if time.monotonic() > deadline:
                job.close()
                raise TransferError(f"command timed out after {timeout:g}s")
            data = out.read1(READ_SIZE)
            if not data:
                break
            total += len(data)
            room = cap - len(kept)
            if room > 0:
                kept += data[:room]
    except TimeoutError:
        job.close()
        raise TransferError(f"command produced no output for {timeout:g}s") from None
    except (OSError, EOFError, paramiko.SSHException) as exc:
        job.close()
        raise TransferError(f"connection lost during command: {exc}") from None
    outcome = job.finish()
    return CappedResult(outcome.exit_status, bytes(kept), outcome.stderr, total, total > cap,
                        time.monotonic() - start)


class HashingReader(io.RawIOBase):
    """Pass-through reader that SHA-256s and counts what is read."""

    def __init__(self, source: IO[bytes]) -> None:
        self.source = source
        self.sha = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        data = self.source.read(size)
        if data:
            self.sha.update(data)
            self.count += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def hexdigest(self) -> str:
        return self.sha.hexdigest()
