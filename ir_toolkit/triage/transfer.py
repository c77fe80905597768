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
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, IO, Any

if TYPE_CHECKING:
    import tarfile

import paramiko

from ir_toolkit.transports.base import Connection, TransportError
from ir_toolkit.triage import remote, tarstream

READ_SIZE = 1 << 20


class TransferError(Exception):
    """The stream broke (connection lost, timeout, corrupt tar, a refused member).

    ``received`` holds the paths that were completely received before the break;
    ``culprit`` the path being transferred when it broke (if known).
    """

    def __init__(self, message: str, *, received: set[str] | None = None, culprit: str | None = None) -> None:
        super().__init__(message)
        self.received = set(received or ())
        self.culprit = culprit


class DeadlineExceeded(TransferError):
    """The step's absolute deadline passed during a transfer (the host is then ``timed_out``)."""


class MemberRefused(Exception):
    """Raised by a sink: the host sent a member it must not (``abort``: stop the whole stream)."""

    def __init__(self, reason: str, *, abort: bool = False) -> None:
        super().__init__(reason)
        self.abort = abort


# sink(path, size, stream, tarinfo_or_None) reads at most ``size`` bytes from ``stream``.
Sink = Callable[[str, int, IO[bytes], "tarfile.TarInfo | None"], None]

#: stderr of a remote command kept in memory: the first STDERR_HEAD bytes and the last STDERR_TAIL.
STDERR_HEAD = 1 << 20
STDERR_TAIL = 64 << 10


class Clock:
    """An idle timeout under an absolute deadline (``time.monotonic()`` based; None: no deadline)."""

    def __init__(self, idle: float, deadline: float | None = None) -> None:
        self.idle = idle
        self.deadline = deadline

    def left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def timeout(self) -> float:
        """The timeout for the next blocking read; raises :class:`DeadlineExceeded` once it passed."""
        left = self.left()
        if left <= 0:
            raise DeadlineExceeded("the step's deadline passed during the transfer")
        return max(0.01, min(self.idle, left))


class BoundedBuffer:
    """Keeps the first ``head`` and the last ``tail`` bytes of a stream and counts the rest."""

    def __init__(self, head: int = STDERR_HEAD, tail: int = STDERR_TAIL) -> None:
        self.head_limit, self.tail_limit = head, tail
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.head_limit - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > self.tail_limit:
                del self.tail[:len(self.tail) - self.tail_limit]

    @property
    def omitted(self) -> int:
        return self.total - len(self.head) - len(self.tail)

    def value(self) -> bytes:
        if not self.omitted:
            return bytes(self.head + self.tail)
        return bytes(self.head) + f"\n[irkit: {self.omitted} bytes omitted]\n".encode() + bytes(self.tail)


class _DeadlineReader(io.RawIOBase):
    """The transport's stdout stream under an absolute deadline: a host that trickles just inside the idle
    timeout still ends when the step's deadline passes (the transport also bounds each wait by it)."""

    def __init__(self, source: IO[bytes], clock: Clock) -> None:
        self.source = source
        self.clock = clock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self.clock.timeout()
        try:
            # read1: what has arrived (one read of the transport), never "wait until the buffer is full"
            read1 = getattr(self.source, "read1", None)
            data = read1(len(buffer)) if read1 is not None else self.source.read(len(buffer))
        except TimeoutError:
            if self.clock.left() <= 0:
                raise DeadlineExceeded("the step's deadline passed during the transfer") from None
            raise
        if data and self.clock.left() <= 0:
            raise DeadlineExceeded("the step's deadline passed during the transfer")
        n = len(data)
        buffer[:n] = data
        return n


@dataclass
class StreamOutcome:
    exit_status: int
    stderr: bytes
    received: set[str] = field(default_factory=set)


class _Exec:
    """The transport's streaming exec (``Connection.exec_stream``) under a :class:`Clock`, failures as
    :class:`TransferError` (:class:`DeadlineExceeded` once the deadline passed)."""

    def __init__(self, conn: Connection, command: str, stdin: bytes | None, clock: Clock) -> None:
        self.clock = clock
        try:
            self._job = conn.exec_stream(command, stdin=stdin, idle_timeout=clock.timeout(), deadline=clock.deadline)
        except TransportError as exc:
            if clock.left() <= 0:
                raise DeadlineExceeded(f"the step's deadline passed: {exc}") from None
            raise TransferError(f"cannot start remote command: {exc}") from None
        self._stdout = io.BufferedReader(_DeadlineReader(self._job.stdout, clock), READ_SIZE)

    def stdout(self) -> io.BufferedReader:
        return self._stdout

    def finish(self) -> StreamOutcome:
        try:
            result = self._job.finish()
        except TransportError as exc:
            if self.clock.left() <= 0:
                raise DeadlineExceeded(f"the step's deadline passed: {exc}") from None
            raise TransferError(str(exc)) from None
        stderr = result.stderr
        if len(stderr) > STDERR_HEAD + STDERR_TAIL:  # a transport that does not bound it itself
            buf = BoundedBuffer()
            buf.add(stderr)
            stderr = buf.value()
        return StreamOutcome(result.exit_status, stderr)

    def close(self) -> None:
        self._job.close()


def member_path(name: str) -> str:
    """The absolute source path of a tar member name (tar strips the leading ``/``)."""
    return name if name.startswith("/") else "/" + name


def tar_fetch(conn: Connection, paths: list[str], sink: Sink, *, idle_timeout: float = 120.0,
              deadline: float | None = None) -> StreamOutcome:
    """Stream ``paths`` (absolute) as one tar archive; call ``sink`` per regular-file member.

    The sink decides whether a member is acceptable (requested, not a duplicate, within its size
    limit); it raises :class:`MemberRefused` otherwise. A refused member's data is skipped (the
    sink only refuses without ``abort`` when that is cheap); ``abort`` stops the stream.
    """
    clock = Clock(idle_timeout, deadline)
    listing = b"".join(remote.encode_path(p.lstrip("/")) + b"\0" for p in paths)
    job = _Exec(conn, remote.TAR_COMMAND, listing, clock)
    received: set[str] = set()
    stdout = job.stdout()
    current: str | None = None
    try:
        for member, stream in tarstream.iter_members(stdout):
            if not member.isreg():
                continue
            current = member_path(member.name)
            try:
                sink(current, member.size, stream, member)
            except MemberRefused as exc:
                if exc.abort:
                    job.close()
                    raise TransferError(f"stream stopped at {current!r}: {exc}", received=received,
                                        culprit=current) from None
                current = None
                continue
            received.add(current)
            current = None
        # Read whatever follows the end-of-archive blocks so the channel can close.
        while stdout.read(READ_SIZE):
            pass
    except DeadlineExceeded as exc:
        job.close()
        raise DeadlineExceeded(str(exc), received=received, culprit=current) from None
    except TimeoutError:
        job.close()
        raise TransferError(f"tar stream stalled for {idle_timeout:g}s", received=received,
                            culprit=current) from None
    except tarstream.TarFormatError as exc:
        job.close()
        raise TransferError(f"corrupt tar stream from host: {exc}", received=received, culprit=current) from None
    except (OSError, EOFError, paramiko.SSHException) as exc:
        job.close()
        raise TransferError(f"tar stream broke: {exc}", received=received, culprit=current) from None
    try:
        outcome = job.finish()
    except TransferError as exc:
        exc.received = received
        raise
    outcome.received = received
    return outcome


class LimitedReader(io.RawIOBase):
    """At most ``limit`` bytes of ``source`` (never more, never padded)."""

    def __init__(self, source: IO[bytes], limit: int) -> None:
        self.source = source
        self.left = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.left <= 0:
            return 0
        data = self.source.read(min(len(buffer), self.left))
        n = len(data)
        buffer[:n] = data
        self.left -= n
        return n


def sftp_fetch(conn: Connection, paths: list[str], sink: Sink, *, limits: dict[str, int] | None = None,
               deadline: float | None = None) -> StreamOutcome:
    """Fetch ``paths`` one by one over SFTP with bounded read-ahead.

    ``limits`` (path -> bytes) caps what is read of each file: a host whose ``st_size`` is larger
    than the size its listing claimed gets that file refused, not read.
    """
    errors: list[str] = []
    received: set[str] = set()
    sftp = conn.client.open_sftp()  # type: ignore[attr-defined]  # SSH only (kept for the benchmark)
    clock = Clock(120.0, deadline)
    try:
        for path in paths:
            clock.timeout()
            limit = (limits or {}).get(path)
            try:
                sftp.get_channel().settimeout(clock.timeout())
                with sftp.open(path, "rb") as fh:
                    size = fh.stat().st_size or 0
                    if size < 0 or (limit is not None and size > limit):
                        raise MemberRefused(f"SFTP size {size} differs from the listed size (limit {limit})")
                    fh.prefetch(size, max_concurrent_requests=16)
                    sink(path, size, LimitedReader(fh, size), None)
                    received.add(path)
            except MemberRefused as exc:
                errors.append(f"sftp: {path}: {exc}")
            except OSError as exc:
                errors.append(f"sftp: {path}: {exc.strerror or exc}")
    except (TimeoutError, paramiko.SSHException, EOFError) as exc:
        if clock.left() <= 0:
            raise DeadlineExceeded(str(exc) or "the step's deadline passed", received=received) from None
        raise TransferError(f"SFTP broke: {exc}", received=received) from None
    finally:
        sftp.close()
    return StreamOutcome(0 if not errors else 1, "\n".join(errors).encode(), received)


@dataclass
class TeeResult:
    host_sha256: str | None
    size: int
    exit_status: int
    stderr: str


_SHA_LINE = re.compile(r"([0-9a-f]{64})  -")


def tee_fetch(conn: Connection, path: str, spool: IO[bytes], *, limit: int, idle_timeout: float = 120.0,
              deadline: float | None = None) -> TeeResult:
    """Copy at most ``limit`` bytes of one file into ``spool``, hashed on the host from exactly the bytes
    sent (one read of the file).

    The controller decides the length (``limit``: the size the listing reported, within the cap);
    whatever the host sends beyond it is not kept, and a short stream is never padded.
    """
    script = 'head -c "$2" -- "$1" | tee /dev/fd/3 | sha256sum >&2'
    command = (f"{remote.ENV_PREFIX} sh -c {shlex.quote(script)} sh {shlex.quote(path)} {int(limit)} 3>&1")
    clock = Clock(idle_timeout, deadline)
    job = _Exec(conn, command, None, clock)
    size = 0
    extra = 0
    try:
        out = job.stdout()
        while True:
            data = out.read1(READ_SIZE)
            if not data:
                break
            keep = data[:max(0, limit - size)]
            if keep:
                spool.write(keep)
                size += len(keep)
            extra += len(data) - len(keep)
            if extra > READ_SIZE:
                job.close()
                raise TransferError(f"copy of {path}: host sent more than the {limit} bytes asked for")
    except DeadlineExceeded:
        job.close()
        raise
    except TimeoutError:
        job.close()
        raise TransferError(f"copy of {path} stalled for {idle_timeout:g}s") from None
    except (OSError, EOFError, paramiko.SSHException) as exc:
        job.close()
        raise TransferError(f"copy of {path} broke: {exc}") from None
    outcome = job.finish()
    text = outcome.stderr.decode("utf-8", "replace")
    digest = None
    other = []
    for line_text in text.splitlines():
        match = _SHA_LINE.fullmatch(line_text.strip())
        if match:
            digest = match.group(1)
        else:
            other.append(line_text)
    if extra:
        other.append(f"irkit: host sent {extra} bytes more than the {limit} asked for (not kept)")
    return TeeResult(digest, size, outcome.exit_status, "\n".join(other))


@dataclass
class CappedResult:
    exit_status: int
    stdout: bytes
    stderr: bytes
    total_bytes: int
    truncated: bool
    duration: float
    kept: int = 0


class OpenExec:
    """A remote command's stdout as a stream under an idle timeout and the step's deadline; failures as
    :class:`TransferError` (:class:`DeadlineExceeded` once the deadline passed)."""

    def __init__(self, job: _Exec) -> None:
        self._job = job
        self._stdout = _Failures(job.stdout(), job)

    def stdout(self) -> IO[bytes]:
        return self._stdout

    def finish(self) -> StreamOutcome:
        return self._job.finish()

    def close(self) -> None:
        self._job.close()


class _Failures(io.RawIOBase):
    """Reads of an exec's stdout with the transport's failures turned into :class:`TransferError`."""

    def __init__(self, source: io.BufferedReader, job: _Exec) -> None:
        self.source, self.job = source, job

    def readable(self) -> bool:
        return True

    def read1(self, size: int = -1) -> bytes:
        try:
            return self.source.read1(size)
        except DeadlineExceeded:
            self.job.close()
            raise
        except TimeoutError:
            self.job.close()
            raise TransferError(f"the command produced no output for {self.job.clock.idle:g}s") from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self.job.close()
            raise TransferError(f"connection lost during command: {exc}") from None

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        return self.read1(size)


def open_exec(conn: Connection, command: str, *, stdin: bytes | None = None, idle_timeout: float,
              deadline: float | None = None) -> OpenExec:
    """Start ``command`` (``stdin`` fed to it); read its stdout from :meth:`OpenExec.stdout`."""
    return OpenExec(_Exec(conn, command, stdin, Clock(idle_timeout, deadline)))


def run_capped(conn: Connection, command: str, *, cap: int, timeout: float, deadline: float | None = None,
               spool: IO[bytes] | None = None) -> CappedResult:
    """Run ``command``; keep at most ``cap`` bytes of stdout, count the rest.

    With ``spool`` the kept bytes go there (``stdout`` is then empty) instead of into memory.
    ``timeout`` bounds the whole command; ``deadline`` (absolute) the step.
    """
    start = time.monotonic()
    end = start + timeout if deadline is None else min(deadline, start + timeout)
    clock = Clock(timeout, end)
    job = _Exec(conn, command, None, clock)
    kept = bytearray()
    count = 0
    total = 0
    try:
        out = job.stdout()
        while True:
            data = out.read1(READ_SIZE)
            if not data:
                break
            total += len(data)
            room = cap - count
            if room > 0:
                piece = data[:room]
                if spool is not None:
                    spool.write(piece)
                else:
                    kept += piece
                count += len(piece)
    except DeadlineExceeded:
        job.close()
        if deadline is not None and time.monotonic() >= deadline:
            raise
        raise TransferError(f"command timed out after {timeout:g}s") from None
    except TimeoutError:
        job.close()
        raise TransferError(f"command produced no output for {timeout:g}s") from None
    except (OSError, EOFError, paramiko.SSHException) as exc:
        job.close()
        raise TransferError(f"connection lost during command: {exc}") from None
    try:
        outcome = job.finish()
    except DeadlineExceeded:
        if deadline is not None and time.monotonic() >= deadline:
            raise
        raise TransferError(f"command timed out after {timeout:g}s") from None
    return CappedResult(outcome.exit_status, bytes(kept), outcome.stderr, total, total > cap,
                        time.monotonic() - start, count)


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
