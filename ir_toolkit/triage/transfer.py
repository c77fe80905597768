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

All functions take a :class:`ir_toolkit.transports.base.Connection` and stream through
its ``exec_stream`` (``sftp_fetch`` alone needs an SSH connection).
"""

from __future__ import annotations

import hashlib
import io
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

import paramiko

from ir_toolkit.transports.base import Connection, TransportError
from ir_toolkit.triage import remote, tarstream

READ_SIZE = 1 << 20


class TransferError(Exception):
    """The stream broke (connection lost, idle timeout, corrupt tar): the host's collection fails."""


# sink(path, size, stream, tarinfo_or_None) must read exactly ``size`` bytes from ``stream``.
Sink = Callable[[str, int, IO[bytes], "tarfile.TarInfo | None"], None]


@dataclass
class StreamOutcome:
    exit_status: int
    stderr: bytes
    received: set[str] = field(default_factory=set)


class _Exec:
    """The transport's streaming exec (``Connection.exec_stream``), with failures as :class:`TransferError`."""

    def __init__(self, conn: Connection, command: str, stdin: bytes | None, idle_timeout: float) -> None:
        self.idle_timeout = idle_timeout
        try:
            self._job = conn.exec_stream(command, stdin=stdin, idle_timeout=idle_timeout)
        except TransportError as exc:
            raise TransferError(f"cannot start remote command: {exc}") from None

    def stdout(self) -> IO[bytes]:
        return self._job.stdout

    def finish(self) -> StreamOutcome:
        try:
            result = self._job.finish()
        except TransportError as exc:
            raise TransferError(str(exc)) from None
        return StreamOutcome(result.exit_status, result.stderr)

    def close(self) -> None:
        self._job.close()


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
    sftp = conn.client.open_sftp()  # type: ignore[attr-defined]  # SSH only (kept for the benchmark)
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
