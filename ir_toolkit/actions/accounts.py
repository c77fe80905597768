"""``accounts.rotate``: shared local accounts to unique escrowed passwords, or locked and expired.

Per host, a unique random password is escrowed (encrypted, fsynced) *before* ``chpasswd``
applies it over stdin; the account's sessions and processes are ended by pid; a fresh
login proves the new password works and the old one fails. Mode ``lock`` locks and
expires the account instead. A run killed at any moment is reconciled on resume by
testing which escrowed password the host accepts (CyberArk's reconcile).

The Windows variant (same step name, over WinRM) is in :mod:`ir_toolkit.actions.windows`;
password generation and escrow recipients here are shared with it and with the directory.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets as _secrets
import shlex
import string
from typing import Any, Literal

from pydantic import Field, field_validator

from ir_toolkit.actions.base import DESTROYS_CREDENTIALS, Action, ActionContext, ActionFailed, Outcome, Params, register
from ir_toolkit.actions.support import endpoint_as, passwd_entry, record
from ir_toolkit.facts import accounts as facts
from ir_toolkit.facts.accounts import AccountState
from ir_toolkit.redaction import register_secret
from ir_toolkit.secrets import escrow as esc
from ir_toolkit.secrets.references import expand_path, is_reference, parse_ref, resolve
from ir_toolkit.transports.base import TransportError
from ir_toolkit.transports.probes import login_with_password

PASSWORD_SYMBOLS = "-_.,;+=@%^*()[]{}~!?"


def generate_password(length: int) -> str:
    """A random password with lower, upper, digit and symbol characters (no ':' or whitespace)."""
    alphabet = string.ascii_letters + string.digits + PASSWORD_SYMBOLS
    while True:
        value = "".join(_secrets.choice(alphabet) for _ in range(length))
        if (any(c.islower() for c in value) and any(c.isupper() for c in value)
                and any(c.isdigit() for c in value) and any(c in PASSWORD_SYMBOLS for c in value)):
            register_secret(value)
            return value


def escrow_recipients(keys: Any, extra: list[str]) -> list[Any]:
    """The run's escrow recipients (``keys``: the context's KeyProvider, which adds the controller's
    key on an agent) plus the step's ``extra_recipients``; each key once."""
    return esc.unique_recipients([*keys.escrow_recipients(), *(esc.load_public_key(expand_path(p)) for p in extra)])


class RotateParams(Params):
    #: accounts to act on (default: the inventory's shared accounts for the host's OS)
    accounts: list[str] = []
    #: rotate to a unique escrowed password, or lock + expire; ``inventory`` takes each account's ``action``
    mode: Literal["inventory", "rotate", "lock"] = "inventory"
    #: rotate only when the newest escrowed password (in any case) is older than this many days
    due_after_days: int | None = Field(default=None, ge=1, le=3650)
    #: rotate unless the newest verified escrowed password (any case) was set at or after this time
    #: (``irkit rotate`` sets it to the run's start, so a resumed run never rotates twice)
    unless_rotated_since: dt.datetime | None = None
    #: reference (env:NAME / file:PATH) to the leaked shared password: verify proves it no longer logs in
    old_password: str | None = None
    #: further escrow recipients (PEM/OpenSSH public key files) besides the responder's escrow key
    extra_recipients: list[str] = []
    data_alg: Literal["AES-256-GCM", "ChaCha20-Poly1305"] = "AES-256-GCM"
    #: end the account's sessions and processes (by pid) after the change
    end_sessions: bool = True
    #: password length (default: the inventory's policy)
    length: int | None = Field(default=None, ge=16, le=128)

    @field_validator("old_password")
    @classmethod
    def _ref(cls, value: str | None) -> str | None:
        if value is not None and not is_reference(value):
            raise ValueError("old_password is a reference (env:NAME or file:PATH), never the password itself")
        return value


@dataclasses.dataclass(frozen=True)
class AccountDecision:
    """What ``accounts.rotate`` does to one account, from its state alone (pure).

    ``action``: ``absent`` (no such account: nothing), ``lock`` (lock and expire it), ``locked``
    (already locked and expired), ``rotate`` (a new escrowed password, if the escrow rules say it
    is needed: that part depends on the escrow, not on the host)."""

    user: str
    action: Literal["absent", "lock", "locked", "rotate"]

    @property
    def commands(self) -> list[str]:
        """The commands that carry it out (a rotation's password goes on stdin: ``user:PASSWORD``)."""
        if self.action == "lock":
            return [f"usermod -L -e 1 {shlex.quote(self.user)}"]
        return ["chpasswd"] if self.action == "rotate" else []


def account_decision(state: AccountState, mode: str) -> AccountDecision:
    """Pure: the decision for one account given its host state and the (resolved) mode."""
    if not state.exists:
        return AccountDecision(state.user, "absent")
    if mode == "lock":
        return AccountDecision(state.user, "locked" if state.locked and state.expired else "lock")
    return AccountDecision(state.user, "rotate")


def account_state(ctx: ActionContext, user: str) -> AccountState:
    return ctx.fact(facts.account_state(user))


def password_is_set(ctx: ActionContext, user: str, password: str) -> bool | None:
    """Does the host's shadow hash match ``password``? (password on stdin; None if it cannot tell)."""
    return ctx.fact(facts.password_matches(user, password))


def session_pids(ctx: ActionContext, user: str) -> list[int]:
    """Processes of the account: owned by it, its sshd session processes, and all their descendants."""
    ctx.prefetch([facts.processes(user), facts.passwd_entry(user)])  # one command for both
    rows = ctx.fact(facts.processes(user))
    entry = passwd_entry(ctx, user)
    if entry is None:
        return []
    return facts.account_pids(rows, user, entry.uid)


def end_sessions(ctx: ActionContext, user: str) -> list[int]:
    """Kill the account's processes by pid (repeat until none are left); returns the pids ended."""
    ended: list[int] = []
    for _ in range(5):
        pids = session_pids(ctx, user)
        if not pids:
            return ended
        ctx.run("kill -KILL " + " ".join(str(p) for p in pids) + " 2>/dev/null; true")
        ended.extend(p for p in pids if p not in ended)
        ctx.deadline.sleep(0.1)
    left = session_pids(ctx, user)
    if left:
        raise ActionFailed(f"processes of {user} keep coming back: {left[:10]}")
    return ended


@register
class RotateAccounts(Action):
    """Rotate shared local accounts to unique escrowed passwords, or lock and expire them."""

    name = "accounts.rotate"
    Params = RotateParams
    description = "rotate (escrowed, verified) or lock shared local accounts; end their sessions"
    destructive = True
    destroys = DESTROYS_CREDENTIALS
    reuses_facts = True

    # ---------------------------------------------------------------- selection
    def _accounts(self, ctx: ActionContext, params: RotateParams) -> list[tuple[str, str]]:
        shared = {a.user: a for a in ctx.inventory.msp.shared_credentials.accounts
                  if (a.os or ctx.host.os) == ctx.host.os}
        names = list(params.accounts) or list(shared)
        out = []
        for user in names:
            if user == ctx.conn.endpoint.user:
                raise ActionFailed(f"refusing to change {user!r}: it is the account irkit itself logs in as")
            mode = params.mode
            if mode == "inventory":
                mode = shared[user].action if user in shared else "rotate"
            out.append((user, mode))
        return out

    def _length(self, ctx: ActionContext, params: RotateParams) -> int:
        return params.length or ctx.inventory.msp.policy.password_length

    def _escrow(self, ctx: ActionContext) -> esc.Escrow:
        return esc.Escrow(ctx.case_id)

    def _due(self, ctx: ActionContext, params: RotateParams, user: str) -> tuple[bool, str]:
        """Whether a rotation is needed by the time rule (``due_after_days``), and why."""
        assert params.due_after_days is not None
        last = esc.last_verified(ctx.inventory.msp.name, ctx.host.tenant, ctx.host.name, user)
        if last is None:
            return True, "no escrowed password on record"
        when = last.state_time(esc.VERIFIED) or last.created
        age = (esc.utcnow() - when).total_seconds() / 86400
        if age >= params.due_after_days:
            return True, f"password is {age:.0f} days old (policy {params.due_after_days})"
        return False, f"not due: set {age:.1f} days ago (policy {params.due_after_days})"

    def _needed(self, ctx: ActionContext, params: RotateParams, store: esc.Escrow, user: str, *,
                check_login: bool) -> tuple[bool, str]:
        """Does this account need a new password now? (due rule, run-start rule, or once per case)"""
        if params.due_after_days is not None:
            return self._due(ctx, params, user)
        if params.unless_rotated_since is not None:
            since = params.unless_rotated_since
            if since.tzinfo is None:
                since = since.replace(tzinfo=dt.timezone.utc)
            last = esc.last_verified(ctx.inventory.msp.name, ctx.host.tenant, ctx.host.name, user)
            when = (last.state_time(esc.VERIFIED) or last.created) if last else None
            if last is not None and when is not None and when >= since:
                return False, f"already rotated by this run (escrow entry {last.id}, case {last.case})"
            return True, "to a unique escrowed password"
        current = store.current(ctx.host.tenant, ctx.host.name, user)
        if current is None:
            return True, "to a unique escrowed password"
        if check_login and not self._still_current(ctx, current, user):
            return True, f"escrow entry {current.id} no longer logs in (changed outside irkit?)"
        return False, f"already rotated in this case (escrow entry {current.id})"

    # ---------------------------------------------------------------- plan
    def plan_facts(self, ctx: ActionContext, params: RotateParams) -> list[Any]:
        return [facts.account_state(user) for user, _ in self._accounts(ctx, params)]

    def plan(self, ctx: ActionContext, params: RotateParams) -> Outcome:
        notes, changed = [], False
        store = self._escrow(ctx)
        for user, mode in self._accounts(ctx, params):
            decision = account_decision(account_state(ctx, user), mode)
            if decision.action == "absent":
                notes.append(f"{user}: no such account")
                continue
            if decision.action in ("lock", "locked"):
                if decision.action == "locked":
                    notes.append(f"{user}: already locked and expired")
                else:
                    notes.append(f"{user}: would lock and expire")
                    changed = True
                continue
            unsettled = store.unsettled(ctx.host.tenant, ctx.host.name, user)
            if unsettled:
                notes.append(f"{user}: would reconcile {len(unsettled)} unfinished escrow entr(y/ies)")
                changed = True
            needed, why = self._needed(ctx, params, store, user, check_login=False)
            notes.append(f"{user}: {'would rotate: ' if needed else ''}{why}")
            changed |= needed
        return Outcome(changed, "; ".join(notes) or "no shared accounts for this host")

    # ---------------------------------------------------------------- apply
    def apply(self, ctx: ActionContext, params: RotateParams) -> Outcome:
        notes, changed, details = [], False, {}
        accounts = self._accounts(ctx, params)
        ctx.prefetch([facts.account_state(user) for user, _ in accounts])  # one command for all accounts
        #: every account's end state proven here, after its change (what verify would prove again)
        proven = True
        for user, mode in accounts:
            state = account_state(ctx, user)
            decision = account_decision(state, mode)
            if decision.action == "absent":
                notes.append(f"{user}: no such account")
                continue
            if decision.action in ("lock", "locked"):
                did, note, info = self._lock(ctx, params, state, decision)
                proven = False  # verify reads the lock back
            else:
                did, note, info = self._rotate(ctx, params, state)
                # rotated now: the new password logged in, the leaked and the previous ones were refused,
                # all after the change (_rotate); not rotated: verify proves the escrowed password logs in
                proven &= did
            changed |= did
            notes.append(f"{user}: {note}")
            details[user] = info
        # Rotated (and proven) accounts need no second round of the same fresh logins (verify would make
        # exactly them again, right after): the engine skips verify then.
        return Outcome(changed, "; ".join(notes) or "no shared accounts for this host", details,
                       verified=proven and changed)

    def _reconcile(self, ctx: ActionContext, store: esc.Escrow, user: str) -> str | None:
        """Settle entries a killed run left pending/applied: which password does the host accept?"""
        unsettled = store.unsettled(ctx.host.tenant, ctx.host.name, user)
        if not unsettled:
            return None
        # A password change started by a controller that died may still be finishing on the host:
        # let it finish first, or the test below could see the old password and the change land after.
        settled = ctx.run("for i in $(seq 100); do ps -C chpasswd,usermod,passwd >/dev/null 2>&1 || exit 0; "
                          "sleep 0.1; done; exit 1")
        if not settled.ok:
            raise ActionFailed(f"a password change for {user} is still running on the host; try again")
        key = ctx.keys.escrow_private_key()
        endpoint = endpoint_as(ctx, user)
        current_found = None
        for entry in unsettled:  # newest first
            if current_found is not None:
                store.set_state(entry, esc.ROLLED_BACK, note=f"reconciled: superseded by {current_found}")
                continue
            password = entry.decrypt(key)
            works = login_with_password(endpoint, password, ctx.deadline) or bool(password_is_set(ctx, user, password))
            if works:
                store.set_state(entry, esc.VERIFIED, note="reconciled: the host accepts this password")
                current_found = entry.id
            else:
                store.set_state(entry, esc.ROLLED_BACK, note="reconciled: never applied (the host rejects it)")
        record(ctx, "credential.reconciled", {"account": user, "entries": [e.id for e in unsettled],
                                               "current": current_found})
        return current_found

    def _still_current(self, ctx: ActionContext, entry: esc.EscrowEntry, user: str) -> bool:
        password = entry.decrypt(ctx.keys.escrow_private_key())
        return bool(password_is_set(ctx, user, password)) or login_with_password(endpoint_as(ctx, user), password, ctx.deadline)

    def _rotate(self, ctx: ActionContext, params: RotateParams, state: AccountState) -> tuple[bool, str, dict]:
        user = state.user
        store = self._escrow(ctx)
        tenant, host = ctx.host.tenant, ctx.host.name
        reconciled = self._reconcile(ctx, store, user)
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
        # 2. apply over stdin (never argv)
        try:
            result = ctx.run("chpasswd", stdin=f"{user}:{password}\n".encode())
        except TransportError:
            raise  # unknown whether it applied: the entry stays pending; a resumed run reconciles it
        if not result.ok:
            if not password_is_set(ctx, user, password):
                store.set_state(entry, esc.ROLLED_BACK, note=f"chpasswd failed (exit {result.exit_status})")
                err = result.stderr.decode("utf-8", "replace").strip().splitlines()
                raise ActionFailed(f"chpasswd failed for {user}" + (f": {err[-1][:200]}" if err else ""))
        store.set_state(entry, esc.APPLIED)
        # 3. end the account's sessions and processes
        ended = end_sessions(ctx, user) if params.end_sessions else []
        if ended:
            record(ctx, "sessions.ended", {"account": user, "pids": ended})
        # 4. prove it: the new password logs in, the old ones do not
        if not login_with_password(endpoint_as(ctx, user), password, ctx.deadline):
            record(ctx, "credential.applied", {"account": user, "entry": entry.id, "state": esc.APPLIED,
                                                "verified": False}, outcome="failed")
            raise ActionFailed(f"new password for {user} is set and escrowed (entry {entry.id}) but a fresh "
                               "login with it failed")
        problems = self._old_still_work(ctx, params, user, old_entry)
        if problems:
            raise ActionFailed(f"{user}: " + "; ".join(problems))
        if account_state(ctx, user).hash_digest == state.hash_digest:
            raise ActionFailed(f"{user}: the password hash did not change")
        store.set_state(entry, esc.VERIFIED, note="fresh login with the new password; old password refused")
        record(ctx, "credential.rotated", {"account": user, "entry": entry.id, "state": esc.VERIFIED,
                                            "sessions_ended": len(ended)})
        info.update({"entry": entry.id, "sessions_ended": len(ended)})
        return True, f"rotated (escrow entry {entry.id}, {len(ended)} process(es) ended)", info

    def _old_still_work(self, ctx: ActionContext, params: RotateParams, user: str,
                        old_entry: esc.EscrowEntry | None) -> list[str]:
        problems = []
        endpoint = endpoint_as(ctx, user)
        if params.old_password:
            if login_with_password(endpoint, resolve(parse_ref(params.old_password)), ctx.deadline):
                problems.append("the old shared password STILL logs in")
        if old_entry is not None:
            if login_with_password(endpoint, old_entry.decrypt(ctx.keys.escrow_private_key()), ctx.deadline):
                problems.append(f"the previous escrowed password (entry {old_entry.id}) STILL logs in")
        return problems

    def _lock(self, ctx: ActionContext, params: RotateParams, state: AccountState,
              decision: AccountDecision) -> tuple[bool, str, dict]:
        user = state.user
        changed = False
        for command in decision.commands:
            ctx.run(command, check=True)
            changed = True
        if changed:
            record(ctx, "account.locked", {"account": user, "expired": True})
        ended = end_sessions(ctx, user) if params.end_sessions else []
        if ended:
            record(ctx, "sessions.ended", {"account": user, "pids": ended})
            changed = True
        note = ("locked and expired" if changed else "already locked and expired") + \
            (f", {len(ended)} process(es) ended" if ended else "")
        return changed, note, {"sessions_ended": len(ended)}

    # ---------------------------------------------------------------- verify
    def verify(self, ctx: ActionContext, params: RotateParams) -> Outcome:
        problems, notes = [], []
        store = self._escrow(ctx)
        for user, mode in self._accounts(ctx, params):
            decision = account_decision(account_state(ctx, user), mode)
            if decision.action == "absent":
                continue
            endpoint = endpoint_as(ctx, user)
            if params.old_password and login_with_password(endpoint, resolve(parse_ref(params.old_password)), ctx.deadline):
                problems.append(f"{user}: the old shared password STILL logs in")
            if decision.action in ("lock", "locked"):
                if decision.action == "lock":
                    problems.append(f"{user}: not locked and expired")
                elif session_pids(ctx, user) and params.end_sessions:
                    problems.append(f"{user}: processes still running")
                else:
                    notes.append(f"{user}: locked, expired, no processes")
                continue
            entry = store.current(ctx.host.tenant, ctx.host.name, user)
            if entry is None:
                entry = esc.last_verified(ctx.inventory.msp.name, ctx.host.tenant, ctx.host.name, user)
            if entry is None:
                problems.append(f"{user}: no verified escrowed password")
                continue
            if not login_with_password(endpoint, entry.decrypt(ctx.keys.escrow_private_key()), ctx.deadline):
                problems.append(f"{user}: the escrowed password (entry {entry.id}) does NOT log in")
            else:
                notes.append(f"{user}: escrowed password (entry {entry.id}) logs in")
        if problems:
            return Outcome(False, "; ".join(problems), ok=False)
        return Outcome(False, "; ".join(notes) or "no shared accounts on this host")
