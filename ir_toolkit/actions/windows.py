"""Windows variants of the containment actions, over WinRM (same step names as the Linux ones).

``responder.ensure_access``
    A fresh WinRM login as the responder account (NTLM, certificate validated) runs ``whoami``
    before anything else on the host proceeds.

``accounts.rotate``
    The shared local administrator gets a unique random password: escrowed (encrypted,
    fsynced) **before** ``Set-LocalUser`` applies it, the password reaching PowerShell on stdin
    (``[Console]::In.ReadLine()``), never in the script; the account's sessions are logged off;
    a *fresh* WinRM login proves the new password, and the previous escrowed password (and the
    leaked one, ``old_password``) must be refused. Mode ``lock`` disables the account. A run
    killed mid-way is reconciled on resume by testing which escrowed password the host accepts.

``accounts.deprivilege`` (Windows only)
    The MSP's accounts (inventory ``action: deprivilege``) out of Administrators, Remote
    Desktop Users and Remote Management Users; their sessions logged off, their processes ended.

``host.isolate`` / ``host.release``
    A dedicated Windows Defender Firewall rule group (``irkit-isolation``): one inbound and one
    outbound *block* rule whose remote addresses are everything except the controller and the
    allow-list (block rules win over any allow rule, so no existing rule can re-open the host).
    A fresh login from the controller is proven afterwards (else the group is removed at once);
    release removes exactly that group.

The PowerShell here is the fixed set of shapes the lab's endpoint understands (docs/windows.md);
parsers are pure functions of the output.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

from pydantic import Field

from ir_toolkit.actions.base import DESTROYS_CREDENTIALS, DESTROYS_NETWORK, Action, ActionContext, ActionFailed, Outcome, Params, register
from ir_toolkit.actions.accounts import RotateAccounts, RotateParams, escrow_recipients, generate_password
from ir_toolkit.actions.responder import EnsureAccessParams
from ir_toolkit.actions.support import record
from ir_toolkit.actions.isolation import IsolateParams, ReleaseParams, allowed_networks
from ir_toolkit.actions.triage import CollectTriage
from ir_toolkit.facts import windows as wfacts
from ir_toolkit.facts.base import FactError
from ir_toolkit.facts.windows import STOP
from ir_toolkit.secrets import escrow as esc
from ir_toolkit.secrets.references import parse_ref, resolve
from ir_toolkit.transports.base import AUTH_FAILED, Timeouts, TransportError
from ir_toolkit.transports.retry import RetryPolicy, transient
from ir_toolkit.transports.winrm import WinrmConnection, ps_quote

PRIVILEGED_GROUPS = ("Administrators", "Remote Desktop Users", "Remote Management Users")
ISOLATION_GROUP = "irkit-isolation"
_PROBE = Timeouts(connect=5, auth=10, command=20)


# =========================================================================== shapes and parsers


def _json_list(text: str) -> list[dict[str, Any]]:
    """ConvertTo-Json output as a list of objects (fails the host on anything else)."""
    try:
        return wfacts.json_list(text)
    except FactError as exc:
        raise ActionFailed(str(exc)) from None


def local_users(ctx: ActionContext) -> dict[str, dict[str, Any]]:
    return ctx.fact(wfacts.local_users())


def group_members(ctx: ActionContext, group: str) -> list[str]:
    """Short names (``HOST\\name`` → ``name``) of a local group's members."""
    return ctx.fact(wfacts.group_members(group))


def sessions_of(ctx: ActionContext, user: str) -> list[int]:
    return [sid for name, sid in ctx.fact(wfacts.sessions()) if name.lower() == user.lower()]


def processes_of(ctx: ActionContext, user: str) -> list[int]:
    return [pid for pid, owner in ctx.fact(wfacts.processes()) if owner.lower() == user.lower()]


def _run(ctx: ActionContext, line: str, *, stdin: bytes | None = None) -> str:
    result = ctx.run(STOP + line, stdin=stdin)
    if not result.ok:
        err = result.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ActionFailed(f"`{line.split()[0]}` failed on the host" + (f": {err[0][:240]}" if err else ""))
    return result.text


def end_sessions(ctx: ActionContext, user: str) -> tuple[list[int], list[int]]:
    """Log off every session of ``user`` and stop its remaining processes; (sessions, pids)."""
    ended = sessions_of(ctx, user)
    for sid in ended:
        _run(ctx, f"logoff {sid}")
    pids = processes_of(ctx, user)
    for pid in pids:
        _run(ctx, f"Stop-Process -Id {pid} -Force")
    if sessions_of(ctx, user) or processes_of(ctx, user):
        raise ActionFailed(f"sessions or processes of {user} keep coming back")
    return ended, pids


# =========================================================================== logins


def _endpoint(ctx: ActionContext, user: str) -> Any:
    return dataclasses.replace(ctx.conn.endpoint, user=user)


def fresh_login(ctx: ActionContext, user: str, password: str) -> bool:
    """A brand-new WinRM connection with exactly this password authenticates and runs whoami.

    Anything but an authentication verdict (unreachable, refused certificate) raises, so a
    network failure is never taken for "the old password no longer works".
    """
    endpoint = _endpoint(ctx, user)
    deadline = ctx.deadline

    def attempt() -> bool:
        try:
            conn = WinrmConnection.open(endpoint, password=password, timeouts=_PROBE, deadline=deadline.at)
        except TransportError as exc:
            if exc.kind == AUTH_FAILED:
                return False
            raise
        try:
            who = conn.run_cmd("whoami", timeout=max(1.0, min(15.0, deadline.remaining())), deadline=deadline.at)
            return who.ok and who.text.strip().lower().endswith("\\" + user.lower())
        finally:
            conn.close()

    # the one retry policy (transient failures only), every attempt and pause within the step's deadline
    return bool(RetryPolicy(2, base=0.15, jitter=False).call(attempt, deadline, retry_if=transient,
                                                             what=f"{endpoint.name or endpoint.address}: login"))


def _responder(ctx: ActionContext, params: EnsureAccessParams) -> tuple[str, str]:
    from ir_toolkit.transports.winrm import responder_password

    access = ctx.inventory.msp.responder.windows
    if access is None:
        raise ActionFailed("no msp.responder.windows in the inventory")
    return params.user or ctx.host.user or access.user, responder_password(access)


@register
class WindowsEnsureAccess(Action):
    """Prove a fresh WinRM login as the responder before anything else on the host."""

    name = "responder.ensure_access"
    Params = EnsureAccessParams
    description = "prove a fresh login as the responder (SSH key on Linux, WinRM on Windows)"
    os = ("windows",)
    connection_kinds = ("winrm",)

    def plan(self, ctx: ActionContext, params: EnsureAccessParams) -> Outcome:
        return Outcome(False, "would prove a fresh WinRM login as the responder")

    def apply(self, ctx: ActionContext, params: EnsureAccessParams) -> Outcome:
        out = self.verify(ctx, params)
        if not out.ok:
            raise ActionFailed(out.summary + "; nothing else will be changed on this host")
        return dataclasses.replace(out, verified=True)

    def verify(self, ctx: ActionContext, params: EnsureAccessParams) -> Outcome:
        user, password = _responder(ctx, params)
        ok = fresh_login(ctx, user, password)
        return Outcome(False, f"fresh WinRM login as {user} {'proven' if ok else 'FAILED'}",
                       {"certificate": ctx.conn.host_key_fingerprint}, ok=ok)


# =========================================================================== accounts.rotate


@register
class WindowsRotateAccounts(RotateAccounts):
    """Rotate the shared local administrator to a unique escrowed password (or disable it)."""

    os = ("windows",)
    connection_kinds = ("winrm",)

    def _accounts(self, ctx: ActionContext, params: RotateParams) -> list[tuple[str, str]]:
        return [(u, m) for u, m in super()._accounts(ctx, params) if m in ("rotate", "lock")]

    def _still_current(self, ctx: ActionContext, entry: esc.EscrowEntry, user: str) -> bool:
        return fresh_login(ctx, user, entry.decrypt(ctx.keys.escrow_private_key()))

    def plan(self, ctx: ActionContext, params: RotateParams) -> Outcome:
        notes, changed = [], False
        users = local_users(ctx)
        store = self._escrow(ctx)
        for user, mode in self._accounts(ctx, params):
            info = users.get(user.lower())
            if info is None:
                notes.append(f"{user}: no such account")
                continue
            if mode == "lock":
                changed |= bool(info.get("Enabled"))
                notes.append(f"{user}: {'would disable' if info.get('Enabled') else 'already disabled'}")
                continue
            if store.unsettled(ctx.host.tenant, ctx.host.name, user):
                notes.append(f"{user}: would reconcile unfinished escrow entries")
                changed = True
            needed, why = self._needed(ctx, params, store, user, check_login=False)
            notes.append(f"{user}: {'would rotate: ' if needed else ''}{why}")
            changed |= needed
        return Outcome(changed, "; ".join(notes) or "no shared Windows accounts")

    def apply(self, ctx: ActionContext, params: RotateParams) -> Outcome:
        notes, changed, details = [], False, {}
        users = local_users(ctx)
        for user, mode in self._accounts(ctx, params):
            if user.lower() not in users:
                notes.append(f"{user}: no such account")
                continue
            if mode == "lock":
                did, note, info = self._disable(ctx, params, user, bool(users[user.lower()].get("Enabled")))
            else:
                did, note, info = self._rotate_windows(ctx, params, user)
            changed |= did
            notes.append(f"{user}: {note}")
            details[user] = info
        return Outcome(changed, "; ".join(notes) or "no shared Windows accounts", details)

    def _reconcile_windows(self, ctx: ActionContext, store: esc.Escrow, user: str) -> str | None:
        unsettled = store.unsettled(ctx.host.tenant, ctx.host.name, user)
        if not unsettled:
            return None
        key = ctx.keys.escrow_private_key()
        current = None
        for entry in unsettled:  # newest first
            if current is not None:
                store.set_state(entry, esc.ROLLED_BACK, note=f"reconciled: superseded by {current}")
            elif fresh_login(ctx, user, entry.decrypt(key)):
                store.set_state(entry, esc.VERIFIED, note="reconciled: the host accepts this password (WinRM login)")
                current = entry.id
            else:
                store.set_state(entry, esc.ROLLED_BACK, note="reconciled: never applied (the host rejects it)")
        record(ctx, "credential.reconciled", {"account": user, "entries": [e.id for e in unsettled],
                                               "current": current})
        return current

    def _rotate_windows(self, ctx: ActionContext, params: RotateParams, user: str) -> tuple[bool, str, dict]:
        store = self._escrow(ctx)
        tenant, host = ctx.host.tenant, ctx.host.name
        reconciled = self._reconcile_windows(ctx, store, user)
        info: dict[str, Any] = {"reconciled": reconciled} if reconciled else {}
        needed, why = self._needed(ctx, params, store, user, check_login=True)
        if not needed:
            return False, why, info
        old_entry = store.current(tenant, host, user)
        password = generate_password(self._length(ctx, params))
        # 1. escrow first: encrypted and fsynced before the host ever sees the password
        entry = store.put(msp=ctx.inventory.msp.name, tenant=tenant, host=host, account=user, secret=password,
                          recipients=escrow_recipients(ctx.keys, params.extra_recipients), data_alg=params.data_alg)
        record(ctx, "credential.escrowed", {"account": user, "entry": entry.id, "state": esc.PENDING})
        # 2. apply: the password on stdin, read by PowerShell into a variable (never in the script)
        script = (STOP + "$p = [Console]::In.ReadLine()\n"
                  f"Set-LocalUser -Name {ps_quote(user)} -Password (ConvertTo-SecureString -String $p "
                  "-AsPlainText -Force)")
        result = ctx.run(script, stdin=(password + "\n").encode())  # TransportError: stays pending (resume)
        if not result.ok:
            if not fresh_login(ctx, user, password):
                store.set_state(entry, esc.ROLLED_BACK, note=f"Set-LocalUser failed (exit {result.exit_status})")
                err = result.stderr.decode("utf-8", "replace").strip().splitlines()
                raise ActionFailed(f"Set-LocalUser failed for {user}" + (f": {err[0][:200]}" if err else ""))
        store.set_state(entry, esc.APPLIED)
        # 3. its sessions logged off, its processes ended
        sessions, pids = end_sessions(ctx, user) if params.end_sessions else ([], [])
        if sessions or pids:
            record(ctx, "sessions.ended", {"account": user, "sessions": sessions, "pids": pids})
        # 4. prove it: a fresh login with the new password; the old ones refused
        if not fresh_login(ctx, user, password):
            record(ctx, "credential.applied", {"account": user, "entry": entry.id, "state": esc.APPLIED,
                                                "verified": False}, outcome="failed")
            raise ActionFailed(f"new password for {user} is set and escrowed (entry {entry.id}) but a fresh "
                               "WinRM login with it failed")
        problems = self._old_work(ctx, params, user, old_entry)
        if problems:
            raise ActionFailed(f"{user}: " + "; ".join(problems))
        store.set_state(entry, esc.VERIFIED, note="fresh WinRM login with the new password; old password refused")
        record(ctx, "credential.rotated", {"account": user, "entry": entry.id, "state": esc.VERIFIED,
                                            "sessions_ended": len(sessions), "transport": "winrm"})
        info.update({"entry": entry.id, "sessions_ended": len(sessions)})
        return True, f"rotated (escrow entry {entry.id}, {len(sessions)} session(s) logged off)", info

    def _old_work(self, ctx: ActionContext, params: RotateParams, user: str,
                  old_entry: esc.EscrowEntry | None) -> list[str]:
        problems = []
        if params.old_password and fresh_login(ctx, user, resolve(parse_ref(params.old_password))):
            problems.append("the old shared password STILL logs in")
        if old_entry is not None and fresh_login(ctx, user, old_entry.decrypt(ctx.keys.escrow_private_key())):
            problems.append(f"the previous escrowed password (entry {old_entry.id}) STILL logs in")
        return problems

    def _disable(self, ctx: ActionContext, params: RotateParams, user: str, enabled: bool) -> tuple[bool, str, dict]:
        changed = False
        if enabled:
            _run(ctx, f"Disable-LocalUser -Name {ps_quote(user)}")
            record(ctx, "account.locked", {"account": user, "disabled": True})
            changed = True
        sessions, pids = end_sessions(ctx, user) if params.end_sessions else ([], [])
        if sessions or pids:
            record(ctx, "sessions.ended", {"account": user, "sessions": sessions, "pids": pids})
            changed = True
        return changed, ("disabled" if enabled else "already disabled"), {"sessions_ended": len(sessions)}

    def verify(self, ctx: ActionContext, params: RotateParams) -> Outcome:
        problems, notes = [], []
        users = local_users(ctx)
        store = self._escrow(ctx)
        for user, mode in self._accounts(ctx, params):
            info = users.get(user.lower())
            if info is None:
                continue
            if params.old_password and fresh_login(ctx, user, resolve(parse_ref(params.old_password))):
                problems.append(f"{user}: the old shared password STILL logs in")
            if mode == "lock":
                if info.get("Enabled"):
                    problems.append(f"{user}: not disabled")
                else:
                    notes.append(f"{user}: disabled")
                continue
            entry = store.current(ctx.host.tenant, ctx.host.name, user) or esc.last_verified(
                ctx.inventory.msp.name, ctx.host.tenant, ctx.host.name, user)
            if entry is None:
                problems.append(f"{user}: no verified escrowed password")
            elif not fresh_login(ctx, user, entry.decrypt(ctx.keys.escrow_private_key())):
                problems.append(f"{user}: the escrowed password (entry {entry.id}) does NOT log in")
            else:
                notes.append(f"{user}: escrowed password (entry {entry.id}) logs in over WinRM")
        if problems:
            return Outcome(False, "; ".join(problems), ok=False)
        return Outcome(False, "; ".join(notes) or "no shared Windows accounts")


# =========================================================================== accounts.deprivilege


class DeprivilegeParams(Params):
    #: accounts (default: the inventory's ``action: deprivilege`` Windows accounts)
    accounts: list[str] = []
    groups: list[str] = Field(default_factory=lambda: list(PRIVILEGED_GROUPS))
    end_sessions: bool = True


@register
class DeprivilegeAccounts(Action):
    """Take the MSP's accounts out of the privileged local groups and log their sessions off."""

    name = "accounts.deprivilege"
    Params = DeprivilegeParams
    description = "MSP accounts out of Administrators / Remote Desktop Users; sessions logged off"
    destructive = True
    destroys = DESTROYS_CREDENTIALS
    os = ("windows",)
    connection_kinds = ("winrm",)

    def _accounts(self, ctx: ActionContext, params: DeprivilegeParams) -> list[str]:
        names = list(params.accounts) or [a.user for a in ctx.inventory.msp.shared_credentials.accounts
                                          if a.os == "windows" and a.action == "deprivilege"]
        responder = ctx.conn.endpoint.user.split("\\")[-1].lower()
        for n in names:
            if n.lower() == responder:
                raise ActionFailed(f"refusing to deprivilege {n!r}: it is the account irkit logs in as")
        return names

    def _state(self, ctx: ActionContext, params: DeprivilegeParams) -> dict[str, list[str]]:
        """account -> privileged groups it is in."""
        members = {g: group_members(ctx, g) for g in params.groups}
        return wfacts.privileged_memberships(members, self._accounts(ctx, params))

    def plan(self, ctx: ActionContext, params: DeprivilegeParams) -> Outcome:
        state = self._state(ctx, params)
        notes = [f"{a}: would leave {', '.join(gs)}" if gs else f"{a}: in no privileged group"
                 for a, gs in state.items()]
        return Outcome(any(state.values()), "; ".join(notes) or "no MSP accounts named")

    def apply(self, ctx: ActionContext, params: DeprivilegeParams) -> Outcome:
        notes, changed, details = [], False, {}
        for account, groups in self._state(ctx, params).items():
            for group in groups:
                _run(ctx, f"Remove-LocalGroupMember -Group {ps_quote(group)} -Member {ps_quote(account)}")
                record(ctx, "group.member_removed", {"account": account, "group": group})
                changed = True
            sessions, pids = end_sessions(ctx, account) if params.end_sessions else ([], [])
            if sessions or pids:
                record(ctx, "sessions.ended", {"account": account, "sessions": sessions, "pids": pids})
                changed = True
            details[account] = {"groups_left": groups, "sessions_ended": sessions, "processes_ended": pids}
            notes.append(f"{account}: left {', '.join(groups) or 'no group'}; {len(sessions)} session(s) logged "
                         f"off, {len(pids)} process(es) ended")
        return Outcome(changed, "; ".join(notes) or "no MSP accounts named", details)

    def verify(self, ctx: ActionContext, params: DeprivilegeParams) -> Outcome:
        problems = []
        for account, groups in self._state(ctx, params).items():
            if groups:
                problems.append(f"{account} still in {', '.join(groups)}")
            if params.end_sessions and sessions_of(ctx, account):
                problems.append(f"{account} still has sessions")
        if problems:
            return Outcome(False, "; ".join(problems), ok=False)
        return Outcome(False, "MSP accounts in no privileged group, no sessions")


# =========================================================================== host.isolate / host.release


def blocked_ranges(allowed: list[Any]) -> list[str]:
    """Everything but ``allowed``, as Windows Firewall RemoteAddress ranges (``a-b``), IPv4 and IPv6."""
    out = []
    for version, full in ((4, ipaddress.ip_network("0.0.0.0/0")), (6, ipaddress.ip_network("::/0"))):
        nets = sorted((n for n in allowed if n.version == version), key=lambda n: int(n.network_address))
        start = int(full.network_address)
        top = int(full.broadcast_address)
        for n in nets:
            lo, hi = int(n.network_address), int(n.broadcast_address)
            if lo > start:
                out.append(f"{ipaddress.ip_address(start) if version == 4 else ipaddress.IPv6Address(start)}-"
                           f"{ipaddress.ip_address(lo - 1) if version == 4 else ipaddress.IPv6Address(lo - 1)}")
            start = max(start, hi + 1)
        if start <= top:
            a = ipaddress.IPv4Address(start) if version == 4 else ipaddress.IPv6Address(start)
            b = ipaddress.IPv4Address(top) if version == 4 else ipaddress.IPv6Address(top)
            out.append(f"{a}-{b}")
    return out


def _rules(ctx: ActionContext) -> list[dict[str, Any]]:
    out = _run(ctx, f"@(Get-NetFirewallRule -Group {ps_quote(ISOLATION_GROUP)} -ErrorAction SilentlyContinue | "
                    "ForEach-Object { [pscustomobject]@{Name=$_.Name;DisplayName=$_.DisplayName;"
                    "Direction=[string]$_.Direction;Action=[string]$_.Action;Enabled=[string]$_.Enabled;"
                    "RemoteAddress=@(($_ | Get-NetFirewallAddressFilter).RemoteAddress)} }) | ConvertTo-Json -Compress")
    return _json_list(out)


def _expected(ctx: ActionContext, params: IsolateParams) -> dict[str, list[str]]:
    ranges = blocked_ranges(allowed_networks(ctx, params))
    return {"Inbound": ranges, "Outbound": ranges}


def _matches(rules: list[dict[str, Any]], expected: dict[str, list[str]]) -> bool:
    seen = {str(r.get("Direction")): sorted(str(a) for a in (r.get("RemoteAddress") or [])) for r in rules
            if str(r.get("Action")) == "Block" and str(r.get("Enabled")) == "True"}
    return len(rules) == 2 and all(seen.get(d) == sorted(v) for d, v in expected.items())


@register
class WindowsIsolateHost(Action):
    """Isolate with a dedicated Windows Defender Firewall rule group; controller and allow-list keep access."""

    name = "host.isolate"
    Params = IsolateParams
    description = "isolate the host (nftables on Linux, a Windows Firewall rule group on Windows)"
    destructive = True
    destroys = DESTROYS_NETWORK
    os = ("windows",)
    connection_kinds = ("winrm",)

    def plan(self, ctx: ActionContext, params: IsolateParams) -> Outcome:
        expected = _expected(ctx, params)
        rules = _rules(ctx)
        if rules and _matches(rules, expected):
            return Outcome(False, "already isolated with this allow-list")
        allowed = ", ".join(str(n) for n in allowed_networks(ctx, params))
        return Outcome(True, f"{'would re-isolate' if rules else 'would isolate'} the host; allowed: {allowed}")

    def apply(self, ctx: ActionContext, params: IsolateParams) -> Outcome:
        expected = _expected(ctx, params)
        allowed = [str(n) for n in allowed_networks(ctx, params)]
        rules = _rules(ctx)
        if rules and _matches(rules, expected):
            return Outcome(False, "already isolated with this allow-list", {"allowed": allowed})
        if rules:
            _run(ctx, f"Remove-NetFirewallRule -Group {ps_quote(ISOLATION_GROUP)}")
        for direction in ("Inbound", "Outbound"):
            addrs = "@(" + ",".join(ps_quote(a) for a in expected[direction]) + ")"
            _run(ctx, f"New-NetFirewallRule -Name {ps_quote(f'irkit-isolation-{direction.lower()}')} "
                      f"-DisplayName {ps_quote(f'irkit isolation ({direction.lower()}, case {ctx.case_id})')} "
                      f"-Group {ps_quote(ISOLATION_GROUP)} -Direction {direction} -Action Block -Profile Any "
                      f"-RemoteAddress {addrs} | Out-Null")
        # never lose responder access: a fresh login from the controller, or the rules go at once
        user, password = _responder(ctx, EnsureAccessParams())
        try:
            ok = fresh_login(ctx, user, password)
        except TransportError:
            ok = False
        if not ok:
            ctx.run(f"Remove-NetFirewallRule -Group {ps_quote(ISOLATION_GROUP)}")
            record(ctx, "isolation.rolled_back", {"reason": "fresh login after isolation failed"}, outcome="failed")
            raise ActionFailed("after isolation a fresh WinRM login from the controller failed; rules removed")
        details = {"group": ISOLATION_GROUP, "allowed": allowed, "blocked_ranges": expected["Inbound"]}
        record(ctx, "host.isolated", {"group": ISOLATION_GROUP, "allowed": allowed, "transport": "winrm"})
        return Outcome(True, f"isolated; allowed: {', '.join(allowed)}", details)

    def verify(self, ctx: ActionContext, params: IsolateParams) -> Outcome:
        if not _matches(_rules(ctx), _expected(ctx, params)):
            return Outcome(False, f"the {ISOLATION_GROUP} rule group is missing or differs", ok=False)
        user, password = _responder(ctx, EnsureAccessParams())
        if not fresh_login(ctx, user, password):
            return Outcome(False, "isolated, but a fresh login from the controller FAILED", ok=False)
        return Outcome(False, "isolated (rule group in place); the controller still logs in")


@register
class WindowsReleaseHost(Action):
    """Remove exactly irkit's isolation rule group."""

    name = "host.release"
    Params = ReleaseParams
    description = "remove irkit's isolation (nftables table / Windows Firewall rule group)"
    destructive = False
    os = ("windows",)
    connection_kinds = ("winrm",)

    def plan(self, ctx: ActionContext, params: ReleaseParams) -> Outcome:
        return Outcome(bool(_rules(ctx)), "would remove the isolation rule group" if _rules(ctx) else "not isolated")

    def apply(self, ctx: ActionContext, params: ReleaseParams) -> Outcome:
        if not _rules(ctx):
            return Outcome(False, "not isolated")
        _run(ctx, f"Remove-NetFirewallRule -Group {ps_quote(ISOLATION_GROUP)}")
        record(ctx, "host.released", {"group": ISOLATION_GROUP, "transport": "winrm"})
        return Outcome(True, f"removed the {ISOLATION_GROUP} rule group")

    def verify(self, ctx: ActionContext, params: ReleaseParams) -> Outcome:
        left = _rules(ctx)
        return Outcome(False, "no isolation rules left" if not left else f"{len(left)} isolation rule(s) left",
                       ok=not left)


# =========================================================================== triage.collect


@register
class WindowsCollectTriage(CollectTriage):
    """Triage over WinRM: volatile data via PowerShell, event logs (wevtutil epl) and hives (reg save)
    fetched in chunks with SHA-256 on the host and on receipt (ir_toolkit/triage/windows.py)."""

    os = ("windows",)
    connection_kinds = ("winrm",)
