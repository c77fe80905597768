"""nftables: irkit's isolation table as the host lists it (``nft list table inet irkit_isolation``).

The parser reads the table's own comment (``irkit isolation spec=HASH case=ID``) and each base
chain's hook and policy. It does not search the text for substrings: a rule comment that says
``spec=...`` or a ``policy drop`` inside a rule cannot make a foreign or weakened table look like
irkit's. A listing of another table, two table headers, two table comments, a chain listed twice
or a line too long is a lie and fails closed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ir_toolkit.facts.base import FactError, Output, Query, lines_of, printable

_COMMENT = re.compile(r'comment "irkit isolation spec=([0-9a-f]{16}) case=([^"\s]{1,200})"')
_CHAIN = re.compile(r"chain ([A-Za-z0-9_-]{1,64}) \{")
_HOOK = re.compile(r"type (\w+) hook (\w+) priority ([\w+-]+); policy (\w+);")


@dataclass(frozen=True)
class Chain:
    name: str
    hook: str | None = None
    policy: str | None = None
    rules: int = 0


@dataclass(frozen=True)
class NftTable:
    """One table as listed: absent, or its irkit comment fields and base chains."""

    family: str
    name: str
    present: bool
    spec: str | None = None
    case: str | None = None
    chains: dict[str, Chain] = field(default_factory=dict)

    def policy(self, chain: str) -> str | None:
        found = self.chains.get(chain)
        return found.policy if found else None


def parse_table(family: str, name: str, out: Output) -> NftTable:
    """Parse ``nft list table FAMILY NAME`` (exit != 0: the table does not exist)."""
    fact = "nft.table"
    if not out.ok:
        return NftTable(family, name, False)
    header = f"table {family} {name} {{"
    seen_header = False
    spec = case = None
    chains: dict[str, Chain] = {}
    current: Chain | None = None
    depth = 0
    for n, raw in enumerate(lines_of(fact, out.text, max_lines=100_000, max_line=16 * 1024), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("table "):
            if line != header or seen_header:
                raise FactError(fact, f"line {n}: unexpected table header {printable(line[:80])!r}")
            seen_header, depth = True, 1
            continue
        if not seen_header:
            raise FactError(fact, f"line {n}: {printable(line[:80])!r} before the table header")
        if depth == 1 and line.startswith("comment "):
            match = _COMMENT.fullmatch(line)
            if spec is not None:
                raise FactError(fact, f"line {n}: a second table comment")
            if match is None:
                spec, case = "", None  # a comment that is not irkit's: a table irkit did not write
                continue
            spec, case = match.group(1), match.group(2)
            continue
        if depth == 1 and line.startswith("chain "):
            match = _CHAIN.fullmatch(line)
            if match is None:
                raise FactError(fact, f"line {n}: unreadable chain header {printable(line[:80])!r}")
            if match.group(1) in chains:
                raise FactError(fact, f"line {n}: chain {match.group(1)} listed twice")
            current = Chain(match.group(1))
            depth = 2
            continue
        if line == "}":
            if depth == 2 and current is not None:
                chains[current.name] = current
                current = None
            depth -= 1
            if depth < 0:
                raise FactError(fact, f"line {n}: unbalanced braces")
            continue
        if depth == 2 and current is not None:
            match = _HOOK.fullmatch(line)
            if match is not None:
                if current.hook is not None:
                    raise FactError(fact, f"line {n}: chain {current.name} has two hook lines")
                current = Chain(current.name, match.group(2), match.group(4), current.rules)
            else:
                current = Chain(current.name, current.hook, current.policy, current.rules + 1)
            continue
    if not seen_header:
        raise FactError(fact, "the listing holds no table header")
    if depth != 0 or current is not None:
        raise FactError(fact, "the listing ends inside the table (truncated?)")
    return NftTable(family, name, True, spec or None, case, chains)


def table(family: str, name: str) -> Query[NftTable]:
    """irkit's table ``family name`` as the host's nftables lists it."""
    if not re.fullmatch(r"[a-z0-9]{1,8}", family) or not re.fullmatch(r"[A-Za-z0-9_]{1,64}", name):
        raise ValueError("nft family/table names are fixed identifiers")
    return Query("nft.table", f"nft list table {family} {name} 2>/dev/null",
                 lambda out: parse_table(family, name, out))


def installed() -> Query[bool]:
    """Is ``nft`` (nftables) on the host's PATH?"""
    return Query("nft.installed", "command -v nft >/dev/null", lambda out: out.ok)
