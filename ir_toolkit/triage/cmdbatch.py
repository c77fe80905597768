"""Several ``command`` artifacts in ONE exec channel, framed so no output can pose as another's.

Each command artifact alone costs the host a fork of its sshd session and a login shell, and the
controller a channel with its round trips and helper threads; a triage profile runs ~40 of them, the
volatile snapshot 11. :func:`batch_command` joins consecutive plain command artifacts into one POSIX
shell script; :class:`BatchReader` splits the stream that comes back, artifact by artifact, as it
arrives (nothing waits for the whole batch).

Framing (hostile output in mind). Per artifact, in order, the script runs the artifact's command under
``timeout`` (its own time limit, enforced on the host) with stdin ``/dev/null``; the command's stdout goes
through ``gzip -1`` straight to the channel, its stderr into a shell variable. Then the script prints a
trailer ``#<boundary> <index> <exit status> <stderr length>``, newline, the stderr bytes, newline. A last
line ``#<boundary> end <count>`` closes the batch. A gzip member ends itself (its deflate stream's last
block, then its CRC-32 and length), so the controller knows where each output ends without any length
the command could influence: whatever bytes a command prints (an intruder's process title, a file it
reads) are only data inside its own compressed member; the stderr is counted by the shell. Only the
host's root could forge a frame, and it could as well lie in the output itself.

:class:`BatchReader` accepts the stream only while it is exactly the frames asked for, in order: a member
that is not gzip or does not check (CRC, length), a wrong trailer (boundary, index, status, length), a
stream that ends early or bytes after the end line raise :class:`BatchBroken` naming the artifact it broke
at; the outputs already complete before it stand, and the collector runs that artifact and the ones after
it alone, as before. An output longer than the artifact's cap keeps its first ``cap`` bytes (the rest is
counted, as for a command run alone); a decompressed output or a stderr beyond the hard limits below breaks
the batch.

What a batch changes for the evidence: the output is stored as the command printed it (decompressed here,
hashed as stored, as a command run alone); the manifest entry says it came ``gzip`` in a batch and carries
the SHA-256 of the compressed member as received (``sha256_stream``). A command that outlives its time
limit is ended on the host (``timeout``: TERM, then KILL 5 s later) and its output so far is kept, with
exit status 124 or 137 (a command run alone loses its output when the channel is closed).

Layer: ``triage/`` (standard library only).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import shlex
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, Protocol

#: at most this many artifacts in one batch
MAX_BATCH = 32
#: tools a batch needs on the host (without them each command runs alone)
TOOLS = ("gzip", "timeout")
#: a stderr longer than this (announced) breaks the batch; a command run alone keeps its head and tail
MAX_STDERR = 8 << 20
#: decompressed bytes counted past an artifact's cap before the batch is declared broken (a gzip bomb)
MAX_OVER_CAP = 256 << 20
#: seconds the host waits after TERM before it KILLs a command over its time limit
KILL_AFTER = 5
_BOUNDARY = re.compile(r"[0-9a-f]{32}")
_READ = 1 << 16
_OUT_BLOCK = 1 << 20

# The script (POSIX sh). fd 4 is the channel; per artifact: the command's stdout -> gzip -> fd 4, its stderr
# and then its exit status ("x<status>", so trailing newlines survive) into irkit_r; gzip has exited before
# the trailer is printed (the command substitution waits for the whole pipeline).
_PRELUDE = r"""exec 4>&1
irkit_c() {
  irkit_r=$( { { timeout -k @KILL@ "$2" sh -c "$3" </dev/null 2>&1 >&3 3>&- 4>&- 5>&-; printf 'x%s' "$?"; } 3>&1 1>&5 | gzip -1 -c >&4 3>&- 5>&-; } 5>&1 )
  irkit_s=${irkit_r##*x}; irkit_e=${irkit_r%x*}
  printf '#%s %s %s %s\n%s\n' "$B" "$1" "$irkit_s" "${#irkit_e}" "$irkit_e"
}
""".replace("@KILL@", str(KILL_AFTER))


class _Batchable(Protocol):
    name: str
    command: str | None
    timeout: int


class BatchBroken(Exception):
    """The batch's stream stopped being exactly what was asked for, at artifact ``index``."""

    def __init__(self, index: int, reason: str, *, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.index, self.reason, self.timed_out = index, reason, timed_out


@dataclass
class FrameResult:
    """One artifact's output as the batch delivered it."""

    index: int
    exit_status: int
    stderr: bytes
    kept: int            # decompressed bytes written to the sink (at most the cap)
    total: int           # decompressed bytes the command printed
    truncated: bool
    member_sha256: str   # SHA-256 of the gzip member as received
    member_size: int


def new_boundary() -> str:
    return secrets.token_hex(16)


def batch_command(artifacts: Sequence[_Batchable], boundary: str, env_prefix: str) -> tuple[str, bytes]:
    """(remote command line, its stdin): the shell reads the script that runs ``artifacts``' commands in order,
    each framed (module docstring), from stdin - so the script is in no process's command line (the process
    artifacts would otherwise list it for every subshell of the batch)."""
    if not _BOUNDARY.fullmatch(boundary):
        raise ValueError("boundary must be 32 lower-case hex digits")
    if not artifacts or len(artifacts) > MAX_BATCH:
        raise ValueError(f"a batch holds 1 to {MAX_BATCH} artifacts")
    lines = []
    for i, artifact in enumerate(artifacts):
        if not artifact.command:
            raise ValueError(f"{artifact.name}: not a command artifact")
        lines.append(f"irkit_c {i} {int(artifact.timeout)} {shlex.quote(artifact.command)}\n")
    script = f"B={boundary}\n{_PRELUDE}{''.join(lines)}printf '#%s end %s\\n' \"$B\" {len(artifacts)}\n"
    return f"{env_prefix} sh -s", script.encode()


class BatchReader:
    """Splits a batch's stdout (a file-like with ``read1`` or ``read``) into its artifacts' outputs.

    Call :meth:`frame` once per artifact, in order, with the sink for that artifact's output and its cap;
    then :meth:`end`. Raises :class:`BatchBroken` on any irregularity (see the module docstring).
    Transport errors (timeouts, a lost connection) from the stream pass through unchanged.
    """

    def __init__(self, stream: IO[bytes], count: int, boundary: str) -> None:
        if not _BOUNDARY.fullmatch(boundary):
            raise ValueError("boundary must be 32 lower-case hex digits")
        self._stream = stream
        self._read = getattr(stream, "read1", None) or stream.read
        self.count = count
        self._head = f"#{boundary} ".encode()
        self._pending = b""
        self._next = 0
        self._sha: Any = None

    def _more(self) -> bytes:
        data = self._read(_READ)
        return bytes(data) if data else b""

    def _line(self, index: int, what: str) -> bytes:
        """The next line (without its newline), at most 200 bytes."""
        while b"\n" not in self._pending[:201]:
            if len(self._pending) > 200:
                raise BatchBroken(index, f"{what}: no line end within 200 bytes (forged or garbled output)")
            data = self._more()
            if not data:
                raise BatchBroken(index, f"{what}: the stream ended (truncated)")
            self._pending += data
        end = self._pending.index(b"\n")
        line, self._pending = self._pending[:end], self._pending[end + 1:]
        return line

    def _exact(self, n: int, index: int, what: str) -> bytes:
        while len(self._pending) < n:
            data = self._more()
            if not data:
                raise BatchBroken(index, f"{what}: the stream ended (truncated)")
            self._pending += data
        out, self._pending = self._pending[:n], self._pending[n:]
        return out

    def frame(self, sink: IO[bytes], cap: int) -> FrameResult:
        index = self._next
        if index >= self.count:
            raise ValueError("no frame left")
        kept, total, size = self._member(index, sink, cap)
        sha, self._sha = self._sha, None
        fields = self._line(index, "trailer")
        if not fields.startswith(self._head):
            raise BatchBroken(index, "no trailer after the output (forged or garbled output)")
        parts = fields[len(self._head):].split(b" ")
        if len(parts) != 3 or parts[0] != str(index).encode():
            raise BatchBroken(index, "malformed trailer")
        status, length = parts[1], parts[2]
        if not (status.isdigit() and len(status) <= 3 and int(status) <= 255):
            raise BatchBroken(index, "trailer: bad exit status")
        if not (length.isdigit() and len(length) <= 12) or int(length) > MAX_STDERR:
            raise BatchBroken(index, "trailer: bad or oversized stderr length")
        stderr = self._exact(int(length) + 1, index, "stderr")
        if stderr[-1:] != b"\n":
            raise BatchBroken(index, "stderr: not the length announced")
        self._next += 1
        assert sha is not None
        return FrameResult(index, int(status), stderr[:-1], kept, total, total > cap, sha.hexdigest(), size)

    def _member(self, index: int, sink: IO[bytes], cap: int) -> tuple[int, int, int]:
        """Decompress one gzip member into ``sink`` (at most ``cap`` bytes kept). (kept, total, member size)."""
        inflater = zlib.decompressobj(wbits=31)
        self._sha = hashlib.sha256()
        kept = total = size = 0
        data = self._pending
        self._pending = b""
        while True:
            if not data:
                data = self._more()
                if not data:
                    raise BatchBroken(index, "the stream ended inside an output (truncated)")
            buf = data
            while buf:
                try:
                    out = inflater.decompress(buf, _OUT_BLOCK)
                except zlib.error as exc:
                    raise BatchBroken(index, f"the output is not a valid gzip member ({exc})") from None
                if out:
                    total += len(out)
                    room = cap - kept
                    if room > 0:
                        piece = out[:room]
                        sink.write(piece)
                        kept += len(piece)
                    if total > cap + MAX_OVER_CAP:
                        raise BatchBroken(index, f"output over {cap + MAX_OVER_CAP} bytes decompressed")
                if inflater.eof:
                    break
                buf = inflater.unconsumed_tail
            if inflater.eof:
                rest = inflater.unused_data
                used = data[:len(data) - len(rest)] if rest else data
                self._sha.update(used)
                size += len(used)
                self._pending = rest
                return kept, total, size
            self._sha.update(data)
            size += len(data)
            data = b""

    def end(self) -> None:
        """The closing line, then nothing."""
        line = self._line(self.count, "end line")
        if line != self._head + f"end {self.count}".encode():
            raise BatchBroken(self.count, "the closing line is missing or wrong")
        if self._pending or self._more():
            raise BatchBroken(self.count, "bytes after the closing line")


def frames(stream: IO[bytes], sinks: Sequence[tuple[IO[bytes], int]], boundary: str) -> Iterator[FrameResult]:
    """Every frame of a batch (for tests and tools): ``sinks`` is (sink, cap) per artifact; then the end line."""
    reader = BatchReader(stream, len(sinks), boundary)
    for sink, cap in sinks:
        yield reader.frame(sink, cap)
    reader.end()
