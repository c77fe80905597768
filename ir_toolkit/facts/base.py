"""A fact is a read-only question to a host: one command, and a pure parser of what the host printed.

pyinfra's discipline, plus irkit's own: every byte a host returns is hostile. A parser
never trusts sizes, names or structure; when the output is not what the command prints
on an honest host (too big, a line too long, control characters in a name, fields
missing, a number that is not one, a second copy of something that exists once) it
raises :class:`FactError` with one clear line — it fails closed, it never guesses.

A :class:`Query` carries the command (and its stdin), the fact's name and the parser; it
does not run anything. :func:`gather` runs it over anything with a ``run`` method (an
action's context, a connection) and parses the result. Because parsers are pure, each
is tested from recorded output (``tests/fixtures/facts/``), no host needed; the actions
then make their decisions as pure functions of facts and parameters.

Layer: beside ``transports/`` — imported by ``actions/``; imports only the ground floor.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")

#: the most output any fact accepts (a host that sends more is lying or attacking)
MAX_OUTPUT = 32 * 1024 * 1024
#: the longest line a fact accepts by default
MAX_LINE = 64 * 1024
#: the most lines a fact accepts by default
MAX_LINES = 200_000


class FactError(Exception):
    """The host's answer cannot be trusted (malformed, oversized, contradictory): fail closed."""

    def __init__(self, fact: str, message: str) -> None:
        super().__init__(f"{fact}: {message}")
        self.fact = fact


@dataclass(frozen=True)
class Output:
    """What a command returned (exit status, raw stdout and stderr)."""

    exit_status: int
    stdout: bytes = b""
    stderr: bytes = b""

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    def last_error(self) -> str:
        lines = self.stderr.decode("utf-8", "replace").strip().splitlines()
        return printable(lines[-1][:200]) if lines else f"exit {self.exit_status}"


class _Result(Protocol):
    exit_status: int
    stdout: bytes
    stderr: bytes


class Runner(Protocol):
    """Anything that runs a shell command on the host (an ActionContext, a Connection)."""

    def run(self, command: str, *, stdin: bytes | None = None, timeout: float | None = None) -> Any: ...


@dataclass(frozen=True)
class Query(Generic[T]):
    """One fact to read: ``command`` (with ``stdin``) and the pure ``parser`` of its output."""

    fact: str
    command: str
    parser: Callable[[Output], T]
    stdin: bytes | None = None

    def parse(self, output: Output) -> T:
        if len(output.stdout) > MAX_OUTPUT:
            raise FactError(self.fact, f"the host sent {len(output.stdout)} bytes (limit {MAX_OUTPUT})")
        return self.parser(output)


def gather(runner: Runner, query: Query[T], *, timeout: float | None = None) -> T:
    """Run ``query`` on the host and parse what it printed (raises :class:`FactError` on a lie)."""
    result: _Result = runner.run(query.command, stdin=query.stdin, timeout=timeout)
    return query.parse(Output(result.exit_status, result.stdout, result.stderr))


# ---------------------------------------------------------------------------- helpers for parsers

_CONTROL = {c for c in range(32)} - {9} | {127}
#: one C-level scan instead of a Python loop per character (`sshd -T`, authorized_keys: ~19,000 chars a host)
_CONTROL_RE = re.compile("[" + "".join(f"\\x{c:02x}" for c in sorted(_CONTROL)) + "]")


def printable(text: str) -> str:
    """``text`` with control characters shown escaped (for messages about hostile output)."""
    return "".join(ch if ord(ch) not in _CONTROL else f"\\x{ord(ch):02x}" for ch in text)


def lines_of(fact: str, text: str, *, max_lines: int = MAX_LINES, max_line: int = MAX_LINE) -> list[str]:
    """The lines of ``text`` (``\\n`` separated), refusing too many or too long ones."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) > max_lines:
        raise FactError(fact, f"{len(lines)} lines (limit {max_lines})")
    for n, line in enumerate(lines, 1):
        if len(line) > max_line:
            raise FactError(fact, f"line {n} is {len(line)} characters long (limit {max_line})")
    return lines


def no_control(fact: str, what: str, value: str) -> str:
    """``value`` unless it holds a control character (escape sequences, NUL, CR): then fail closed."""
    if _CONTROL_RE.search(value) is not None:
        raise FactError(fact, f"{what} {printable(value[:80])!r} holds control characters")
    return value


def integer(fact: str, what: str, value: str, *, low: int = 0, high: int = 2**32) -> int:
    """A decimal integer in ``[low, high]`` (no sign, no spaces), or fail closed."""
    if not value.isascii() or not value.isdigit() or len(value) > 12:
        raise FactError(fact, f"{what} {printable(value[:40])!r} is not a number")
    number = int(value)
    if not low <= number <= high:
        raise FactError(fact, f"{what} {number} is out of range")
    return number


def to_json(value: Any) -> Any:
    """A fact's value as plain JSON (dataclasses as dicts, sets sorted, tuples as lists) for fixtures."""
    import dataclasses
    import enum
    import ipaddress

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple) and hasattr(value, "_asdict"):
        return to_json(value._asdict())
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted((to_json(v) for v in value), key=str)
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address, ipaddress.IPv4Network,
                          ipaddress.IPv6Network)):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value
