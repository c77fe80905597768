"""Several ``command`` artifacts in ONE exec channel, framed so no output can pose as another's.

Each command artifact alone costs the host a fork of its sshd session and a login shell, and the
controller a channel with its round trips and helper threads; a triage profile runs ~40 of them, the
volatile snapshot 11. :func:`batch_command` joins consecutive plain command artifacts into one POSIX
shell script; :class:`BatchReader` splits the stream that comes back, artifact by artifact, as it
arrives (nothing waits for the whole batch).

Framing (hostile output in mind). The controller draws a random 128-bit boundary per batch. It is in the
script only, which the shell reads from stdin (``sh -s``): it is in no process's command line or
environment (it is a shell variable, not exported; the trailers are printed by the shell's builtin
``printf`` - a shell without one refuses to run the batch), and every command runs with stdin
``/dev/null``, so none can read the script. Per artifact, in order, the script runs the artifact's command
(``sh -c``, its stdout straight to the channel, its stderr into a shell variable), then prints a newline
and the trailer ``#<boundary> <index> <exit status> <stderr length>``, newline, the stderr bytes, newline.
A last line ``#<boundary> end <count>`` (after a newline) closes the batch. An output ends where the next
``\n#<boundary> `` begins: whatever bytes a command prints (an intruder's process title, a file it reads,
a copy of an old trailer) are only data of its own output unless they hold the boundary, which nobody on
the host but root could have read - and root could as well lie in the output itself. The stderr is
counted by the shell.

:class:`BatchReader` accepts the stream only while it is exactly the frames asked for, in order: a wrong
trailer (boundary, index, status, length), a stream that ends early or bytes after the end line raise
:class:`BatchBroken` naming the artifact it broke at; the outputs already complete before it stand, and the
collector runs that artifact and the ones after it alone, as before. An output longer than the artifact's
cap keeps its first ``cap`` bytes (the rest is counted, as for a command run alone); an output more than
:data:`MAX_OVER_CAP` past its cap, or a stderr beyond :data:`MAX_STDERR`, breaks the batch.

Time limits: the controller ends a command that outlives its artifact's limit (the collector's
:class:`FrameWatch` closes the channel, as a command run alone is ended); that artifact has failed as it
would have alone, and the ones after it run alone. No ``timeout`` or ``gzip`` process is spawned per
command: a batched command costs the host one subshell and its own ``sh -c`` (~1 ms; it was ~3.5 ms with
``timeout`` and a ``gzip`` member per output, and ~3 ms alone in a channel of its own).

What a batch changes for the evidence: the output is stored as the command printed it, hashed as stored,
as a command run alone; the manifest entry says it came in a batch (``transit``).

Layer: ``triage/`` (standard library only).
"""

from __future__ import annotations

import re
import secrets
import shlex
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, Protocol

#: at most this many artifacts in one batch
MAX_BATCH = 32
#: a stderr longer than this (announced) breaks the batch; a command run alone keeps its head and tail
MAX_STDERR = 8 << 20
#: output bytes counted past an artifact's cap before the batch is declared broken
MAX_OVER_CAP = 256 << 20
#: the script's exit status when the shell has no builtin printf (the boundary would be in a command line)
NO_BUILTIN_PRINTF = 97
_BOUNDARY = re.compile(r"[0-9a-f]{32}")
_READ = 1 << 16
_OUT_BLOCK = 1 << 20

# The script (POSIX sh). fd 4 is the channel; per artifact: the command's stdout -> fd 4 (irkit_z: through
# gzip -1 first), its stderr and then its exit status ("x<status>", so trailing newlines survive) into irkit_r
# (the command substitution waits for the command, and for gzip). The boundary is printed only by the builtin printf (checked first: `command -v` names a
# builtin by its bare name).
_PRELUDE = r"""[ "$(command -v printf)" = printf ] || exit @NOPRINTF@
exec 4>&1
irkit_t() {
  irkit_s=${irkit_r##*x}; irkit_e=${irkit_r%x*}
  printf '\n#%s %s %s %s\n%s\n' "$B" "$1" "$irkit_s" "${#irkit_e}" "$irkit_e"
}
irkit_c() {
  irkit_r=$( { sh -c "$2" </dev/null 2>&1 >&4 4>&-; printf 'x%s' "$?"; } )
  irkit_t "$1"
}
irkit_z() {
  irkit_r=$( { { sh -c "$2" </dev/null 2>&1 >&3 3>&- 4>&- 5>&-; printf 'x%s' "$?"; } 3>&1 1>&5 | gzip -1 -c >&4 3>&- 5>&-; } 5>&1 )
  irkit_t "$1"
}
""".replace("@NOPRINTF@", str(NO_BUILTIN_PRINTF))


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
    kept: int            # output bytes written to the sink (at most the cap)
    total: int           # output bytes the command printed
    truncated: bool


def new_boundary() -> str:
    return secrets.token_hex(16)


def batch_command(artifacts: Sequence[_Batchable], boundary: str, env_prefix: str,
                  compressed: Sequence[bool] = ()) -> tuple[str, bytes]:
    """(remote command line, its stdin): the shell reads the script that runs ``artifacts``' commands in order,
    each framed (module docstring), from stdin - so neither the script nor the boundary is in any process's
    command line (the process artifacts would otherwise list the script for every subshell of the batch).
    ``compressed[i]``: artifact ``i``'s output comes as one gzip member (the host needs ``gzip``)."""
    if not _BOUNDARY.fullmatch(boundary):
        raise ValueError("boundary must be 32 lower-case hex digits")
    if not artifacts or len(artifacts) > MAX_BATCH:
        raise ValueError(f"a batch holds 1 to {MAX_BATCH} artifacts")
    lines = []
    for i, artifact in enumerate(artifacts):
        if not artifact.command:
            raise ValueError(f"{artifact.name}: not a command artifact")
        fn = "irkit_z" if i < len(compressed) and compressed[i] else "irkit_c"
        lines.append(f"{fn} {i} {shlex.quote(artifact.command)}\n")
    script = f"B={boundary}\n{_PRELUDE}{''.join(lines)}printf '\\n#%s end %s\\n' \"$B\" {len(artifacts)}\n"
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
        self._mark = f"\n#{boundary} ".encode()
        self._pending = b""
        self._next = 0
        #: bytes read from the stream so far
        self.received = 0

    def _more(self) -> bytes:
        data = self._read(_READ)
        if not data:
            return b""
        self.received += len(data)
        return bytes(data)

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

    def frame(self, sink: IO[bytes], cap: int, *, compressed: bool = False) -> FrameResult:
        """The next artifact's output into ``sink`` (``compressed``: it comes as one gzip member, stored
        decompressed)."""
        index = self._next
        if index >= self.count:
            raise ValueError("no frame left")
        kept, total = self._output(index, sink, cap, compressed)
        parts = self._line(index, "trailer").split(b" ")
        if len(parts) != 3 or parts[0] != str(index).encode():
            raise BatchBroken(index, "malformed trailer (or frames out of order)")
        status, length = parts[1], parts[2]
        if not (status.isdigit() and len(status) <= 3 and int(status) <= 255):
            raise BatchBroken(index, "trailer: bad exit status")
        if not (length.isdigit() and len(length) <= 12) or int(length) > MAX_STDERR:
            raise BatchBroken(index, "trailer: bad or oversized stderr length")
        stderr = self._exact(int(length) + 1, index, "stderr")
        if stderr[-1:] != b"\n":
            raise BatchBroken(index, "stderr: not the length announced")
        self._next += 1
        return FrameResult(index, int(status), stderr[:-1], kept, total, total > cap)

    def _output(self, index: int, sink: IO[bytes], cap: int, compressed: bool) -> tuple[int, int]:
        """Copy one output (up to the next boundary mark) into ``sink``, at most ``cap`` bytes kept; consumes the
        mark. (kept, total)."""
        mark, hold = self._mark, len(self._mark) - 1
        counter = [0, 0]  # kept, total
        inflater = zlib.decompressobj(wbits=31) if compressed else None
        buf = self._pending
        self._pending = b""
        while True:
            at = buf.find(mark)
            if at >= 0:
                data, self._pending = buf[:at], buf[at + len(mark):]
            elif len(buf) > hold:  # everything but a tail that could be the start of the mark
                data, buf = buf[:-hold], buf[-hold:]
            else:
                data = b""
            if data:
                if inflater is None:
                    self._emit(index, data, sink, cap, counter)
                else:
                    self._inflate(index, inflater, data, sink, cap, counter)
            if at >= 0:
                if inflater is not None and not inflater.eof:
                    raise BatchBroken(index, "the output is not one complete gzip member")
                return counter[0], counter[1]
            more = self._more()
            if not more:
                raise BatchBroken(index, "the stream ended inside an output (truncated)")
            buf += more

    @staticmethod
    def _emit(index: int, data: bytes, sink: IO[bytes], cap: int, counter: list[int]) -> None:
        counter[1] += len(data)
        room = cap - counter[0]
        if room > 0:
            piece = data[:room]
            sink.write(piece)
            counter[0] += len(piece)
        if counter[1] > cap + MAX_OVER_CAP:
            raise BatchBroken(index, f"output over {cap + MAX_OVER_CAP} bytes")

    def _inflate(self, index: int, inflater: Any, data: bytes, sink: IO[bytes], cap: int,
                 counter: list[int]) -> None:
        while data:
            if inflater.eof:
                raise BatchBroken(index, "bytes after the output's gzip member")
            try:
                out = inflater.decompress(data, _OUT_BLOCK)
            except zlib.error as exc:
                raise BatchBroken(index, f"the output is not a valid gzip member ({exc})") from None
            if out:
                self._emit(index, out, sink, cap, counter)
            data = inflater.unconsumed_tail
        if inflater.eof and inflater.unused_data:
            raise BatchBroken(index, "bytes after the output's gzip member")

    def end(self) -> None:
        """The closing line, then nothing."""
        want = self._mark + f"end {self.count}\n".encode()
        while len(self._pending) < len(want):
            data = self._more()
            if not data:
                break
            self._pending += data
        if self._pending[:len(want)] != want:
            raise BatchBroken(self.count, "the closing line is missing or wrong")
        if self._pending[len(want):] or self._more():
            raise BatchBroken(self.count, "bytes after the closing line")


class FrameWatch:
    """Ends a batch whose current command outlives its time limit: :meth:`arm` before each frame (its limit
    in seconds), :meth:`stop` at the end; on expiry ``on_expire()`` runs once (the collector closes the
    channel, so the read in progress ends) and :attr:`expired` holds the index of the frame it ended."""

    def __init__(self, on_expire: Callable[[], None]) -> None:
        self._on_expire = on_expire
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._index = -1
        self._stopped = False
        self.expired: int | None = None
        self._thread = threading.Thread(target=self._run, name="irkit-batch-watch", daemon=True)
        self._thread.start()

    def arm(self, index: int, seconds: float) -> None:
        with self._cond:
            self._index, self._deadline = index, time.monotonic() + seconds
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(5)

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                if self._deadline is None:
                    self._cond.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                self.expired = self._index
                break
        if self.expired is not None:
            self._on_expire()


def frames(stream: IO[bytes], sinks: Sequence[tuple[IO[bytes], int]], boundary: str) -> Iterator[FrameResult]:
    """Every frame of a batch (for tests and tools): ``sinks`` is (sink, cap) per artifact; then the end line."""
    reader = BatchReader(stream, len(sinks), boundary)
    for sink, cap in sinks:
        yield reader.frame(sink, cap)
    reader.end()
