"""Several read-only facts in ONE remote command (one SSH exec channel), framed so no answer can pose as another.

Planning reads a dozen small facts per host; each in its own exec channel costs the host a fork of
its sshd session and a login shell, the controller a channel and its round trips. :func:`batch`
joins independent queries into one POSIX shell script; :func:`parse_batch` splits what came back
into one :class:`~ir_toolkit.facts.base.Output` per query, which the query's own parser then reads
as if the query had run alone (parsers stay pure and fail closed as before).

Framing (hostile output in mind): each query runs in its own subshell (stdin /dev/null), its stdout
captured whole; then the script prints a header ``#<boundary> <index> <exit status> <length>`` and
exactly ``<length>`` bytes of output and a newline; a last line ``#<boundary> end <count>`` closes
the batch. The boundary is random per call (:func:`secrets.token_hex`), but nothing depends on it
staying secret: the LENGTH says where an answer ends, so output that copies a header or the
boundary (an intruder's file, a process title, read from ``ps`` while we run) is just bytes inside
its own answer. Only the host's root could print a forged frame - and it could as well lie in the
fact itself, which the parsers already assume.

:func:`parse_batch` accepts the output only when it is exactly the frames asked for, in order,
complete, each within the size limit, with an exit status 0-255; anything else (missing, extra or
reordered frames, a wrong boundary or length, a truncated stream, bytes after the end) raises
:class:`~ir_toolkit.facts.base.FactError` for the whole batch, and the caller reads the facts one
command each, as before.

What a batch does not carry: stdin (queries that read it run alone), stderr (it only ever goes into
failure messages: :class:`FactMemo` asks a query alone again when its batched answer is refused by
its parser, so the message is the one it always was), and NUL bytes (a shell variable cannot hold
them): only facts whose honest answers are text are prefetched.

Layer: ``facts/`` (imports only its base and the standard library).
"""

from __future__ import annotations

import re
import secrets
import shlex
from collections.abc import Sequence
from typing import Any, TypeVar

from ir_toolkit.facts.base import MAX_OUTPUT, FactError, Output, Query, Runner, printable

T = TypeVar("T")
FACT = "facts.batch"
#: at most this many queries in one batch
MAX_QUERIES = 64
_BOUNDARY = re.compile(r"[0-9a-f]{32}")

# Per query: its stdout captured by a command substitution (a trailing `x<status>` keeps its last newlines
# and carries the exit status), then printed after a header with its length in bytes (LC_ALL=C: the
# shell counts bytes). stderr is not kept (see FactMemo); the query's subshell reads /dev/null.
_PRELUDE = r"""LC_ALL=C; export LC_ALL
irkit_q() {
  irkit_v=$( ( eval "$2" ) </dev/null 2>/dev/null; printf 'x%s' "$?" )
  irkit_s=${irkit_v##*x}; irkit_v=${irkit_v%x*}
  printf '#%s %s %s %s\n%s\n' "$B" "$1" "$irkit_s" "${#irkit_v}" "$irkit_v"
}
"""


def batchable(query: Query[Any]) -> bool:
    """A query may join a batch: it reads no stdin."""
    return query.stdin is None


def batch_script(queries: Sequence[Query[Any]], boundary: str) -> str:
    """The one shell script that runs ``queries`` in order, each framed (see the module docstring)."""
    if not _BOUNDARY.fullmatch(boundary):
        raise ValueError("boundary must be 32 lower-case hex digits")
    if not queries or len(queries) > MAX_QUERIES:
        raise ValueError(f"a batch holds 1 to {MAX_QUERIES} queries")
    for query in queries:
        if not batchable(query):
            raise ValueError(f"{query.fact}: a query that reads stdin cannot join a batch")
    body = "".join(f"irkit_q {i} {shlex.quote(q.command)}\n" for i, q in enumerate(queries))
    script = f"B={boundary}\n{_PRELUDE}{body}printf '#%s end %s\\n' \"$B\" {len(queries)}\n"
    # /bin/sh, not the login shell: a POSIX shell that forks cheaply (dash's fork costs a third of bash's);
    # exec keeps the pid, so facts that walk up from $$ (the sshd serving us) still find it
    return "exec /bin/sh -c " + shlex.quote(script)


def parse_batch(out: Output, count: int, boundary: str) -> list[Output]:
    """Split a batch's output into ``count`` answers (pure; the whole batch fails closed on any irregularity)."""
    if not out.ok:
        raise FactError(FACT, f"the batch exited {out.exit_status}: {out.last_error()}")
    data = out.stdout
    head = f"#{boundary} ".encode()
    answers: list[Output] = []
    pos = 0

    def line() -> bytes:
        nonlocal pos
        end = data.find(b"\n", pos, pos + 200)
        if end < 0:
            raise FactError(FACT, f"frame {len(answers)}: no header line (truncated or forged output)")
        text, pos = data[pos:end], end + 1
        if not text.startswith(head):
            raise FactError(FACT, f"frame {len(answers)}: expected a header, got "
                                  f"{printable(text[:60].decode('latin-1'))!r}")
        return text[len(head):]

    for i in range(count):
        fields = line().split(b" ")
        if len(fields) != 3 or fields[0] != str(i).encode():
            raise FactError(FACT, f"frame {i}: malformed header {printable(b' '.join(fields)[:60].decode('latin-1'))!r}")
        status, size = fields[1], fields[2]
        if not (status.isdigit() and len(status) <= 3 and int(status) <= 255):
            raise FactError(FACT, f"frame {i}: exit status {printable(status[:20].decode('latin-1'))!r}")
        if not (size.isdigit() and len(size) <= 12):
            raise FactError(FACT, f"frame {i}: length {printable(size[:20].decode('latin-1'))!r}")
        length = int(size)
        if length > MAX_OUTPUT:
            raise FactError(FACT, f"frame {i}: {length} bytes (limit {MAX_OUTPUT})")
        if pos + length + 1 > len(data) or data[pos + length:pos + length + 1] != b"\n":
            raise FactError(FACT, f"frame {i}: the output does not hold the {length} bytes announced (truncated)")
        answers.append(Output(int(status), data[pos:pos + length]))
        pos += length + 1
    if line() != f"end {count}".encode():
        raise FactError(FACT, "the closing frame is missing or wrong")
    if pos != len(data):
        raise FactError(FACT, f"{len(data) - pos} byte(s) after the closing frame")
    return answers


def batch(queries: Sequence[Query[Any]], boundary: str | None = None) -> Query[list[Output]]:
    """One query that runs ``queries`` in one command; its value is their raw outputs, in order."""
    tag = boundary or secrets.token_hex(16)
    n = len(queries)
    return Query(FACT, batch_script(queries, tag), lambda out: parse_batch(out, n, tag))


class FactMemo:
    """What one host answered while it was being planned, by command: a fact asked again (another step's
    plan, the verify phase) is not asked again, and :meth:`prefetch` asks many in one command.

    Only for planning (nothing changes on the host meanwhile). Every answer is parsed anew by the
    asking query's own parser; a batched answer that parser refuses is asked again alone (with its
    stderr, for the message), and that answer decides - as it would have without the batch.
    """

    def __init__(self) -> None:
        #: (command, stdin) -> (answer, came in a batch)
        self._answers: dict[tuple[str, bytes | None], tuple[Output, bool]] = {}
        #: commands run on the host for these facts (a batch counts once)
        self.commands = 0
        #: why the last batch was refused (then its facts were asked one by one)
        self.batch_refused: str | None = None

    def clear(self) -> None:
        """Forget every answer (something may have changed on the host)."""
        self._answers.clear()

    @staticmethod
    def _key(query: Query[Any]) -> tuple[str, bytes | None]:
        return (query.command, query.stdin)

    def prefetch(self, runner: Runner, queries: Sequence[Query[Any]], *, timeout: float | None = None) -> int:
        """Ask the host the not-yet-answered, batchable ``queries`` in one command; returns how many were
        answered. A refused batch (see :func:`parse_batch`) answers none: they are then asked one by one."""
        todo: dict[tuple[str, bytes | None], Query[Any]] = {}
        for query in queries:
            key = self._key(query)
            if batchable(query) and key not in self._answers:
                todo.setdefault(key, query)
        wanted = list(todo.values())[:MAX_QUERIES]
        if len(wanted) < 2:
            return 0
        one = batch(wanted)
        result = runner.run(one.command, stdin=None, timeout=timeout)
        self.commands += 1
        try:
            answers = one.parse(Output(result.exit_status, result.stdout, result.stderr))
        except FactError as exc:
            self.batch_refused = str(exc)
            return 0
        for query, answer in zip(wanted, answers):
            self._answers[self._key(query)] = (answer, True)
        return len(wanted)

    def remember(self, queries: Sequence[Query[Any]], answers: Sequence[Output]) -> None:
        """Keep ``answers`` (from a framed batch, e.g. a change and its read-back in one command) as the
        answers of ``queries``; like prefetched ones, an answer its parser refuses is asked again alone."""
        for query, answer in zip(queries, answers):
            if batchable(query):
                self._answers[self._key(query)] = (answer, True)

    def _ask(self, runner: Runner, query: Query[Any], timeout: float | None) -> Output:
        result = runner.run(query.command, stdin=query.stdin, timeout=timeout)
        self.commands += 1
        answer = Output(result.exit_status, result.stdout, result.stderr)
        self._answers[self._key(query)] = (answer, False)
        return answer

    def fact(self, runner: Runner, query: Query[T], *, timeout: float | None = None) -> T:
        """``query``'s value from the host's remembered answer, or asked now (and remembered)."""
        known = self._answers.get(self._key(query))
        if known is None:
            return query.parse(self._ask(runner, query, timeout))
        answer, batched = known
        try:
            return query.parse(answer)
        except FactError:
            if not batched:
                raise
        return query.parse(self._ask(runner, query, timeout))
