"""Live network flows on a Linux host, and which of them isolation must cut (security review §6).

Loading a drop-policy table stops new traffic, but an intruder's reverse shell, C2
beacon or exfiltration stream that is open when the table loads is a *tracked*
flow: a host firewall that uses ``ct state`` (ufw, firewalld, docker: nearly every
real server) has already marked it ``established``. So isolation also ends the
flows themselves: every connected socket and every conntrack entry whose peer is
not on the allow-list is destroyed (``ss -K``, ``conntrack -D``), and the
responder's own session, whose peer is allowed, survives.

This module is a fact (one command, :data:`FACT_COMMAND`, and a pure parser,
:func:`parse_facts`) plus a pure decision, :func:`cut_plan` (facts + allowed
networks -> the peers to cut), and the script that carries it out,
:func:`cut_script`. Everything a host prints is hostile: addresses are accepted
only when :mod:`ipaddress` parses them, and anything else is ignored.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Union

from ir_toolkit.facts.base import Query

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

#: prints the host's own addresses, its connected TCP/UDP sockets and its conntrack table
FACT_COMMAND = (
    "echo '#addr'; ip -o addr show 2>/dev/null; "
    "echo '#ss'; if command -v ss >/dev/null 2>&1; then ss -H -n -t -u state connected 2>/dev/null; "
    "else echo '#no-ss'; fi; "
    "echo '#ct'; if command -v conntrack >/dev/null 2>&1; then conntrack -L 2>/dev/null; "
    "else echo '#no-conntrack'; fi; echo '#end'"
)
#: sockets in these states are not live (``ss -K`` cannot and need not destroy them)
_DEAD_STATES = {"TIME-WAIT", "CLOSED", "UNCONN", "LISTEN"}
_MAX_LINES = 200_000


@dataclass(frozen=True)
class Socket:
    proto: str
    state: str
    local: IPAddress
    local_port: int
    peer: IPAddress
    peer_port: int


@dataclass(frozen=True)
class Tracked:
    """One conntrack entry (its original direction)."""

    proto: str
    src: IPAddress
    dst: IPAddress


@dataclass(frozen=True)
class FlowFacts:
    local: frozenset[IPAddress] = frozenset()
    sockets: tuple[Socket, ...] = ()
    tracked: tuple[Tracked, ...] = ()
    has_ss: bool = True
    has_conntrack: bool = True
    #: the output ended where it should (a truncated listing is not trusted as "nothing left")
    complete: bool = False


@dataclass(frozen=True)
class CutPlan:
    """The peers whose flows isolation ends, and what on the host points at them."""

    peers: tuple[IPAddress, ...] = ()
    sockets: tuple[Socket, ...] = ()
    tracked: tuple[Tracked, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def empty(self) -> bool:
        return not self.peers


def _addr(text: str) -> IPAddress | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:
        text = text[1:text.index("]")]
    text = text.split("%", 1)[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _endpoint(text: str) -> tuple[IPAddress, int] | None:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        return None
    addr = _addr(host)
    return (addr, int(port)) if addr is not None else None


def parse_facts(text: str) -> FlowFacts:
    """Parse :data:`FACT_COMMAND` output (pure; unknown or malformed lines are ignored)."""
    local: set[IPAddress] = set()
    sockets: list[Socket] = []
    tracked: list[Tracked] = []
    has_ss = has_conntrack = True
    section = ""
    complete = False
    for n, line in enumerate(text.splitlines()):
        if n > _MAX_LINES:
            break
        if line.startswith("#"):
            tag = line.strip()
            if tag in ("#addr", "#ss", "#ct"):
                section = tag
            elif tag == "#no-ss":
                has_ss = False
            elif tag == "#no-conntrack":
                has_conntrack = False
            elif tag == "#end":
                complete = True
                break
            continue
        fields = line.split()
        if section == "#addr":
            # "2: eth0    inet 198.19.1.10/22 brd ... scope global eth0"
            for i, word in enumerate(fields[:-1]):
                if word in ("inet", "inet6"):
                    addr = _addr(fields[i + 1].split("/", 1)[0])
                    if addr is not None:
                        local.add(addr)
        elif section == "#ss":
            # "tcp ESTAB 0 0 198.19.1.10:22 198.19.0.1:50022" (netid, state, recv-q, send-q, local, peer)
            if len(fields) < 6 or fields[0] not in ("tcp", "udp"):
                continue
            here, there = _endpoint(fields[4]), _endpoint(fields[5])
            if here is None or there is None:
                continue
            sockets.append(Socket(fields[0], fields[1].upper(), here[0], here[1], there[0], there[1]))
        elif section == "#ct":
            # "tcp 6 431999 ESTABLISHED src=A dst=B sport=.. dport=.. src=B dst=A ... [ASSURED] ..."
            if not fields:
                continue
            src = dst = None
            for word in fields:
                if word.startswith("src=") and src is None:
                    src = _addr(word[4:])
                elif word.startswith("dst=") and dst is None:
                    dst = _addr(word[4:])
                if src is not None and dst is not None:
                    break
            if src is not None and dst is not None:
                tracked.append(Tracked(fields[0], src, dst))
    return FlowFacts(frozenset(local), tuple(sockets), tuple(tracked), has_ss, has_conntrack, complete)


def _allowed(addr: IPAddress, allowed: Iterable[IPNetwork]) -> bool:
    return addr.is_loopback or any(addr.version == net.version and addr in net for net in allowed)


def cut_plan(facts: FlowFacts, allowed: Iterable[IPNetwork]) -> CutPlan:
    """Which peers' flows to end: every peer of a live socket or a tracked flow that is not allowed.

    A flow's peer is its end that is not one of the host's own addresses; a tracked flow with two
    foreign ends is forwarded traffic, which isolation does not forward any more (both are cut).
    Loopback is always kept, and so is every allowed peer (the responders' own sessions)."""
    allowed = list(allowed)
    local = set(facts.local)
    peers: set[IPAddress] = set()
    sockets = []
    for sock in facts.sockets:
        if sock.state in _DEAD_STATES or sock.peer in local or _allowed(sock.peer, allowed):
            continue
        sockets.append(sock)
        peers.add(sock.peer)
    tracked = []
    for entry in facts.tracked:
        ends = {entry.src, entry.dst} - local
        foreign = [a for a in ends if not _allowed(a, allowed)]
        if not ends or (len(ends) == 1 and not foreign):
            continue
        if len(ends) == 2 and not foreign:
            continue
        tracked.append(entry)
        peers.update(foreign)
    notes = []
    if not facts.has_ss:
        notes.append("ss (iproute2) is not installed: live sockets could not be listed or ended")
    if not facts.has_conntrack:
        notes.append("conntrack (conntrack-tools) is not installed: tracked flows are left to expire "
                     "(their packets are dropped by the isolation table)")
    order = sorted(peers, key=lambda a: (a.version, int(a)))
    return CutPlan(tuple(order), tuple(sockets), tuple(tracked), tuple(notes))


def _ss_addr(addr: IPAddress) -> str:
    return f"[{addr}]" if addr.version == 6 else str(addr)


def cut_script(plan: CutPlan, facts: FlowFacts) -> str:
    """Shell that ends every flow of ``plan`` (to run after the isolation table is loaded, so that
    no new flow to those peers can start meanwhile). Addresses come from :mod:`ipaddress` only."""
    lines = []
    for peer in plan.peers:
        if facts.has_ss:
            lines.append(f"ss -K -H -n -t -u state connected dst {_ss_addr(peer)} >/dev/null 2>&1")
        if facts.has_conntrack:
            lines.append(f"conntrack -D -s {peer} >/dev/null 2>&1; conntrack -D -d {peer} >/dev/null 2>&1")
    lines.append("true")
    return "\n".join(lines) + "\n"


def flow_facts() -> Query[FlowFacts]:
    """The host's own addresses, connected sockets and conntrack table."""
    return Query("flows.facts", FACT_COMMAND, lambda out: parse_facts(out.text))
