"""Host isolation with nftables, in irkit's own table, reversible exactly.

``host.isolate`` loads one table, ``inet irkit_isolation``, whose base chains
(input, output, forward; policy drop) let through only loopback and traffic with
the responder's controller address, the inventory's ``msp.responder.allow_from``
and the playbook's ``allow`` list, in any connection state. There is no blanket
``ct state established`` rule: an intruder's session that is open when the table
loads is dropped like any other (security review §6), and then ended on the host:
its sockets are destroyed (``ss -K``) and its conntrack entries deleted
(``conntrack -D``), see :mod:`ir_toolkit.facts.flows`. Only ICMP errors related
to a tracked flow pass besides (path-MTU discovery for the responders' sessions).
Other tables are not touched: a drop verdict in any base chain is final in
nftables, so the table isolates whatever else is loaded, and removing it
restores the rest as it was.

Safety: before loading the table irkit refuses if the address it connects from
is not in the allowed set; it snapshots the ruleset (``nft -s list ruleset``) to
``/var/lib/irkit/isolation/before.nft`` on the host; it arms a watchdog on the
host that deletes the table after ``watchdog_seconds`` unless irkit disarms it;
and it disarms it only after a *fresh* login from the controller has worked. If
that login fails, the table is deleted at once over the established session.

``host.release`` deletes the table and checks that the ruleset is then
byte-for-byte the pre-isolation snapshot.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any

from pydantic import field_validator

from ir_toolkit.actions.base import DESTROYS_NETWORK, Action, ActionContext, ActionFailed, Outcome, Params, register
from ir_toolkit.actions.support import record, responder_access, responder_access_works
from ir_toolkit.actions.sshd import client_address
from ir_toolkit.facts import flows, nft
from ir_toolkit.facts import sshd as sshd_facts
from ir_toolkit.facts.nft import NftTable

TABLE = "irkit_isolation"
FAMILY = "inet"
STATE_DIR = "/var/lib/irkit/isolation"
SNAPSHOT = f"{STATE_DIR}/before.nft"
WATCHDOG_MARK = "irkit-isolation-watchdog"
SPEC_VERSION = 2


def _networks(values: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    nets = []
    for value in values:
        nets.append(ipaddress.ip_network(str(value), strict=False))
    return sorted(set(nets), key=lambda n: (n.version, n.network_address, n.prefixlen))


def _fmt(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    full = 32 if net.version == 4 else 128
    return str(net.network_address) if net.prefixlen == full else str(net)


def ruleset(allowed: list[ipaddress.IPv4Network | ipaddress.IPv6Network], case_id: str) -> tuple[str, str]:
    """The nft script that (re)creates the isolation table atomically, and its spec hash."""
    v4 = [_fmt(n) for n in allowed if n.version == 4]
    v6 = [_fmt(n) for n in allowed if n.version == 6]
    spec = hashlib.sha256(f"v{SPEC_VERSION}|{','.join(v4)}|{','.join(v6)}".encode()).hexdigest()[:16]

    def chain(name: str, hook: str, direction: str | None, iface: str | None) -> str:
        lines = [f"  chain {name} {{", f"    type filter hook {hook} priority 0; policy drop;"]
        if iface:
            lines.append(f'    {iface} "lo" accept')
        if direction:
            if v4:
                lines.append(f"    ip {direction} {{ {', '.join(v4)} }} accept")
            if v6:
                lines.append(f"    ip6 {direction} {{ {', '.join(v6)} }} accept")
        if hook == "input":
            # ICMP errors (e.g. "fragmentation needed") about a flow that is still tracked: after the
            # cut only the allowed peers' flows are, so this keeps path-MTU discovery working for them
            lines.append("    ct state related meta l4proto { icmp, ipv6-icmp } accept")
        lines.append("  }")
        return "\n".join(lines)

    body = "\n".join([
        f"table {FAMILY} {TABLE}",
        f"delete table {FAMILY} {TABLE}",
        f"table {FAMILY} {TABLE} {{",
        f'  comment "irkit isolation spec={spec} case={case_id}"',
        chain("input", "input", "saddr", "iif"),
        chain("output", "output", "daddr", "oif"),
        chain("forward", "forward", None, None),
        "}",
        "",
    ])
    return body, spec


class IsolateParams(Params):
    #: further addresses/networks that keep access (e.g. a backup server, the SIEM)
    allow: list[str] = []
    #: keep the inventory's ``msp.responder.allow_from`` networks reachable
    include_allow_from: bool = True
    #: the host deletes the table by itself after this many seconds unless irkit proves access and disarms it
    watchdog_seconds: int = 120
    #: end the live flows (sockets, conntrack entries) of every peer that is not allowed
    cut_flows: bool = True

    @field_validator("allow")
    @classmethod
    def _nets(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(str(item), strict=False)
            except ValueError:
                raise ValueError(f"invalid address or network {item!r}") from None
        return value

    @field_validator("watchdog_seconds")
    @classmethod
    def _watchdog(cls, value: int) -> int:
        if not 10 <= value <= 3600:
            raise ValueError("watchdog_seconds must be between 10 and 3600")
        return value


def allowed_networks(ctx: ActionContext, params: IsolateParams) -> list[Any]:
    responder = ctx.inventory.msp.responder
    values = [responder.controller_address, *params.allow]
    if params.include_allow_from:
        values += list(responder.allow_from)
    return _networks(values)


def _table(ctx: ActionContext) -> NftTable:
    """The isolation table as the host lists it (``present`` False when it is not loaded)."""
    return ctx.fact(nft.table(FAMILY, TABLE))


# ---------------------------------------------------------------------------- decisions (pure)

def isolation_decision(current: NftTable, spec: str) -> str:
    """What ``host.isolate`` does given the table's state: ``keep`` (already this allow-list),
    ``update`` (irkit's table with another allow-list, or a table irkit did not write under its
    name) or ``create``."""
    if not current.present:
        return "create"
    return "keep" if current.spec == spec and not isolation_problems(current, spec) else "update"


def isolation_problems(current: NftTable, spec: str) -> list[str]:
    """Why the loaded table is not the wanted isolation (empty: it is)."""
    if not current.present:
        return ["isolation table is not loaded"]
    hooks = {"input": "input", "output": "output", "forward": "forward"}
    if current.spec != spec or any(
            (current.chains.get(c) is None or current.chains[c].hook != h or current.policy(c) != "drop")
            for c, h in hooks.items()):
        return ["isolation table differs from the wanted one"]
    return []


def _need_nft(ctx: ActionContext) -> None:
    if not ctx.fact(nft.installed()):
        raise ActionFailed("nft (nftables) is not installed on the host")


def _check_controller_allowed(ctx: ActionContext, allowed: list[Any]) -> str:
    seen = client_address(ctx)
    try:
        addr = ipaddress.ip_address(seen)
    except ValueError:
        raise ActionFailed(f"cannot tell the controller's address from SSH_CONNECTION ({seen!r})") from None
    if not any(addr in net for net in allowed):
        raise ActionFailed(f"the controller reaches this host from {seen}, which is not the controller_address, "
                           "allow_from or allow list: refusing to isolate (the responders would be cut off)")
    return seen


def _watchdog_start(seconds: int) -> str:
    """Starts the host's own release after ``seconds`` in the background (a detached shell, marked)."""
    return (f"setsid sh -c 'sleep {int(seconds)}; nft delete table {FAMILY} {TABLE} 2>/dev/null' {WATCHDOG_MARK} "
            "</dev/null >/dev/null 2>&1 &")


def _watchdog_command(seconds: int) -> str:
    """Starts the host's own release after ``seconds`` and prints its pid."""
    return _watchdog_start(seconds) + " echo \"watchdog:$!\""


def _watchdog_pid(ok: bool, lines: list[str]) -> int:
    pid = lines[0][len("watchdog:"):] if ok and len(lines) == 1 and lines[0].startswith("watchdog:") else ""
    if not pid.isascii() or not pid.isdigit() or len(pid) > 9:
        raise ActionFailed("could not start the isolation watchdog on the host")
    return int(pid)


#: exit statuses of the load command (:meth:`IsolateHost._load`)
_SNAPSHOT_FAILED, _WATCHDOG_FAILED, _NFT_REFUSED = 97, 98, 96


def load_command(snapshot: bool, seconds: int) -> str:
    """ONE command that takes the ruleset snapshot to return to on release (only when irkit's table is not
    loaded; exit 97 when it cannot, before anything else), prints its hash, arms the watchdog (exit 98, the
    table not loaded, when it is not running) and only then loads the table from stdin (``nft -f -``; exit
    96 when nft refuses it, the watchdog armed). Its stdout is exactly two lines, ``sha256:...`` and
    ``watchdog:PID`` (nft's stdout goes to /dev/null; its stderr is kept for the message)."""
    snap = (f"{{ if [ -d {STATE_DIR} ]; then chmod 700 {STATE_DIR}; else mkdir -p -m 700 {STATE_DIR}; fi && "
            f"nft -s list ruleset > {SNAPSHOT}.tmp </dev/null && mv -f {SNAPSHOT}.tmp {SNAPSHOT}; }} "
            f"|| exit {_SNAPSHOT_FAILED}; ") if snapshot else ""
    return (f"{snap}printf 'sha256:%s\\n' \"$(sha256sum < {SNAPSHOT} 2>/dev/null)\"; "
            f"{_watchdog_start(seconds)} w=$!; echo \"watchdog:$w\"; kill -0 \"$w\" 2>/dev/null || "
            f"exit {_WATCHDOG_FAILED}; nft -f - >/dev/null || exit {_NFT_REFUSED}")


def disarm_command(pid: int) -> str:
    """Disarms the watchdog ``pid`` (only if that process is still irkit's marked watchdog); prints nothing.
    The watchdog is `sh -c 'sleep N; nft delete ...' irkit-isolation-watchdog`: its shell is killed FIRST
    (killing its sleep first would run the delete at once), then its sleep, by pid. One process spawned
    (``cat``: the command line holds NULs, which the shell drops); the children are read by ``read``."""
    pid = int(pid)
    return (f"case $(cat /proc/{pid}/cmdline 2>/dev/null) in *{WATCHDOG_MARK}*) kids=; "
            f"read -r kids 2>/dev/null < /proc/{pid}/task/{pid}/children; kill -KILL {pid} 2>/dev/null; "
            f"for c in $kids; do kill $c 2>/dev/null; done;; esac; true")


def flow_facts(ctx: ActionContext) -> flows.FlowFacts:
    """The host's addresses, connected sockets and conntrack table (see :mod:`ir_toolkit.facts.flows`)."""
    return ctx.fact(flows.flow_facts())


def cut_live_flows(ctx: ActionContext, allowed: list[Any], *, also: tuple[Any, ...] = ()) -> dict[str, Any]:
    """End every flow whose peer is not allowed (after the table is loaded); what was cut, for the record.

    The flows are read (or taken from the step's answers when the command before read them back); the cut
    and the re-read of the flows (and of the facts ``also`` names) go in ONE command (``run_then_read``)."""
    facts = flow_facts(ctx)
    plan = flows.cut_plan(facts, allowed)
    if not plan.empty:
        ctx.run_then_read(flows.cut_script(plan, facts), [flows.flow_facts(), *also])
    after = flows.cut_plan(flow_facts(ctx), allowed)
    return {
        "peers": [str(a) for a in plan.peers],
        "sockets": len(plan.sockets),
        "conntrack_entries": len(plan.tracked),
        "sockets_left": [f"{s.proto} {s.local}:{s.local_port} {s.peer}:{s.peer_port}" for s in after.sockets][:20],
        "notes": list(plan.notes),
    }


@register
class IsolateHost(Action):
    """Cut a host off the network except for the responder's controller (nftables, own table)."""

    name = "host.isolate"
    Params = IsolateParams
    description = "isolate the host with nftables (own table); controller and allow-list keep access"
    destructive = True
    destroys = DESTROYS_NETWORK
    reuses_facts = True

    def plan_facts(self, ctx: ActionContext, params: IsolateParams) -> list[Any]:
        return [nft.installed(), sshd_facts.client_address(), nft.table(FAMILY, TABLE)]

    def plan(self, ctx: ActionContext, params: IsolateParams) -> Outcome:
        _need_nft(ctx)
        allowed = allowed_networks(ctx, params)
        _check_controller_allowed(ctx, allowed)
        _, spec = ruleset(allowed, ctx.case_id)
        decision = isolation_decision(_table(ctx), spec)
        if decision == "keep":
            return Outcome(False, "already isolated with this allow-list")
        verb = "would update the isolation of" if decision == "update" else "would isolate"
        return Outcome(True, f"{verb} the host; allowed: {', '.join(_fmt(n) for n in allowed)}")

    def apply(self, ctx: ActionContext, params: IsolateParams) -> Outcome:
        ctx.prefetch(self.plan_facts(ctx, params))  # the independent facts below, in one command
        _need_nft(ctx)
        allowed = allowed_networks(ctx, params)
        seen = _check_controller_allowed(ctx, allowed)
        script, spec = ruleset(allowed, ctx.case_id)
        current = _table(ctx)
        decision = isolation_decision(current, spec)
        if decision == "keep":
            cut = cut_live_flows(ctx, allowed) if params.cut_flows else None
            if cut is not None and cut["peers"]:
                record(ctx, "host.flows_cut", cut)
                return Outcome(True, f"already isolated; ended flows of {len(cut['peers'])} peer(s)",
                               {"spec": spec, "flows_cut": cut})
            return Outcome(False, "already isolated with this allow-list", {"spec": spec})
        before, watchdog = self._load(ctx, script, not current.present, params.watchdog_seconds)
        # never lose responder access: a fresh login from the controller must still work
        if not responder_access_works(ctx):
            ctx.run(f"nft delete table {FAMILY} {TABLE}")
            self._disarm(ctx, watchdog)
            record(ctx, "host.isolation_rolled_back", {"reason": "fresh responder login failed"}, outcome="failed")
            raise ActionFailed("after isolating, a fresh login from the controller failed; isolation removed")
        # disarmed only now; the same command reads back the table and the live flows (framed)
        readback: list[Any] = [flows.flow_facts()] if params.cut_flows else []
        readback.append(nft.table(FAMILY, TABLE))
        ctx.run_then_read(disarm_command(watchdog), readback)
        details: dict[str, Any] = {"spec": spec, "allowed": [_fmt(n) for n in allowed], "controller_seen_as": seen,
                                   "ruleset_before_sha256": before}
        # the table already drops every packet of a non-allowed peer; now end those flows on the host
        if params.cut_flows:
            details["flows_cut"] = cut_live_flows(ctx, allowed, also=(nft.table(FAMILY, TABLE),))
        record(ctx, "host.isolated", details)
        cut = details.get("flows_cut") or {}
        ended = f"; ended flows of {len(cut['peers'])} peer(s)" if cut.get("peers") else ""
        # the end state read back in this step (what verify checks): the table as wanted (read after the last
        # command), no live flow of a peer that is not allowed (re-read after the cut), a fresh login from
        # the controller (above)
        proven = (not isolation_problems(_table(ctx), spec)
                  and not (params.cut_flows and cut.get("sockets_left")))
        return Outcome(True, f"isolated; allowed: {', '.join(details['allowed'])}{ended}", details, verified=proven)

    def _load(self, ctx: ActionContext, script: str, snapshot: bool, seconds: int) -> tuple[str, int]:
        """The snapshot, the watchdog armed and the table loaded, in ONE command (:func:`load_command`);
        returns (the snapshot's hash, the watchdog's pid). Raises, with nothing left behind, when any part
        fails: no snapshot - nothing done; no watchdog - table not loaded; nft refused it - watchdog disarmed."""
        result = ctx.run(load_command(snapshot, seconds), stdin=script.encode())
        err = result.stderr.decode("utf-8", "replace").strip().splitlines()
        if result.exit_status == _SNAPSHOT_FAILED:
            raise ActionFailed("cannot snapshot the nftables ruleset before isolating"
                               + (f": {err[-1][:200]}" if err else ""))
        lines = result.text.splitlines()
        digest = lines[0][len("sha256:"):].split(" ")[0].strip() if lines and lines[0].startswith("sha256:") else ""
        try:
            watchdog = _watchdog_pid(result.exit_status != _WATCHDOG_FAILED, lines[1:])
        except ActionFailed:
            if result.ok:  # loaded, but the host's answer names no watchdog irkit could disarm: take it off
                ctx.run(f"nft delete table {FAMILY} {TABLE}")
            raise
        if not result.ok:
            self._disarm(ctx, watchdog)
            raise ActionFailed("nft refused the isolation ruleset" + (f": {err[-1][:200]}" if err else ""))
        return digest, watchdog

    def _arm_watchdog(self, ctx: ActionContext, seconds: int) -> int:
        result = ctx.run(_watchdog_command(seconds))
        return _watchdog_pid(result.ok, result.text.splitlines())

    def _disarm(self, ctx: ActionContext, pid: int) -> None:
        ctx.run(disarm_command(pid))

    def verify(self, ctx: ActionContext, params: IsolateParams) -> Outcome:
        allowed = allowed_networks(ctx, params)
        _, spec = ruleset(allowed, ctx.case_id)
        current = _table(ctx)
        problems = isolation_problems(current, spec)
        if params.cut_flows and current.present:
            facts = flow_facts(ctx)
            left = flows.cut_plan(facts, allowed)
            if left.sockets:
                problems.append("live connections to peers that are not allowed: "
                                + ", ".join(sorted({str(s.peer) for s in left.sockets})[:5]))
        access = responder_access(ctx, reuse=True)
        if not access.ok:
            problems.append("fresh login from the controller FAILED")
        if problems:
            return Outcome(False, "; ".join(problems), ok=False)
        return Outcome(False, "isolated (policy drop, no live flow of a peer that is not allowed); "
                              "fresh login from the controller works" + access.note())


class ReleaseParams(Params):
    pass


@register
class ReleaseHost(Action):
    """Undo ``host.isolate``: delete irkit's table and check the ruleset is as it was before."""

    name = "host.release"
    Params = ReleaseParams
    description = "undo host.isolate, restoring exactly the previous nftables ruleset"

    def plan(self, ctx: ActionContext, params: ReleaseParams) -> Outcome:
        _need_nft(ctx)
        if not _table(ctx).present:
            return Outcome(False, "not isolated")
        return Outcome(True, "would remove the isolation table")

    def apply(self, ctx: ActionContext, params: ReleaseParams) -> Outcome:
        _need_nft(ctx)
        changed = False
        if _table(ctx).present:
            ctx.run(f"nft delete table {FAMILY} {TABLE}", check=True)
            changed = True
        snap = ctx.run(f"cat {SNAPSHOT} 2>/dev/null || echo __irkit_no_snapshot__")
        if snap.text.strip() == "__irkit_no_snapshot__":
            if changed:
                record(ctx, "host.released", {"snapshot": None})
            return Outcome(changed, "isolation removed" if changed else "not isolated")
        now = ctx.run("nft -s list ruleset", check=True).stdout
        digest = hashlib.sha256(snap.stdout).hexdigest()
        if now != snap.stdout:
            record(ctx, "host.released", {"ruleset_before_sha256": digest, "restored_exactly": False},
                    outcome="failed")
            raise ActionFailed("isolation removed, but the ruleset differs from the pre-isolation snapshot "
                               f"({SNAPSHOT}): something else changed nftables meanwhile")
        ctx.run(f"mv -f {SNAPSHOT} {SNAPSHOT}.released", check=True)
        record(ctx, "host.released", {"ruleset_before_sha256": digest, "restored_exactly": True})
        return Outcome(True, "isolation removed; ruleset is exactly the pre-isolation one",
                       {"ruleset_before_sha256": digest})

    def verify(self, ctx: ActionContext, params: ReleaseParams) -> Outcome:
        problems = []
        if _table(ctx).present:
            problems.append("isolation table still loaded")
        if ctx.run(f"test -e {SNAPSHOT}").ok:
            problems.append("the pre-isolation ruleset was not restored exactly")
        if not responder_access_works(ctx):
            problems.append("fresh login from the controller FAILED")
        if problems:
            return Outcome(False, "; ".join(problems), ok=False)
        return Outcome(False, "not isolated; ruleset as before isolation")
