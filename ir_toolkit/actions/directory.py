"""Directory actions: the MSP's accounts in each client's Active Directory (docs/active-directory.md).

They target a tenant's directory pseudo-host (:meth:`Inventory.directory_hosts`: name = the
domain, transport ``ldap``) and talk to its DC over :mod:`ir_toolkit.transports.ldap`.

``directory.collect_evidence``
    Before anything changes: each MSP account's attributes (memberOf, pwdLastSet,
    lastLogonTimestamp, whenCreated/whenChanged, servicePrincipalName, userAccountControl,
    adminCount, ...) and the full (transitive) membership of every guarded group, written to
    ``evidence/<tenant>/<domain>/directory-<time>.json`` (fsynced) with a custody record
    (``directory.evidence``: SHA-256, size) in the signed log. Destructive directory steps are
    refused until it exists and still matches its hash.
``directory.msp_accounts``
    Removes every MSP account from every guarded group (nesting resolved: the account leaves
    the group through which it holds the privilege), then rotates it to a unique password —
    escrowed and fsynced *before* the DC sees it, set twice (Samba and AD keep accepting the
    previous password for a while after one reset: measured) — or disables it (and resets it the
    same way). Proof: an LDAP bind and a Kerberos AS-REQ with the leaked password fail, a bind
    with the escrowed one works.
``directory.krbtgt_reset``
    Resets krbtgt N times with a wait between (replication); a TGT taken before the first reset
    must no longer buy a service ticket afterwards, and msDS-KeyVersionNumber must have advanced.
``directory.privileged_sweep``
    Reports every member of a guarded group that is neither allow-listed nor an MSP account
    (flagging accounts created inside the incident window); disables them only with
    ``disable: true`` (give that step ``requires_approval: true``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets as _secrets
import string
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from ir_toolkit.fsutil import write_atomic
from ir_toolkit.actions.base import Action, ActionContext, ActionFailed, Outcome, Params, register, DESTROYS_CREDENTIALS
from ir_toolkit.cases import CaseLayout
from ir_toolkit.inventory.directory import Directory
from ir_toolkit.secrets import escrow as esc
from ir_toolkit.secrets.references import is_reference, parse_ref, resolve
from ir_toolkit.transports.base import TransportError
from ir_toolkit.transports.kerberos import TicketCache
from ir_toolkit.transports.ldap import (
    CONSTRAINT_VIOLATION,
    MATCHING_RULE_IN_CHAIN,
    UF_ACCOUNTDISABLE,
    DirectoryError,
    LdapConnection,
    LdapEndpoint,
    escape_filter,
    one_line,
)

EVIDENCE_ACTION = "directory.evidence"
ACCOUNT_ATTRIBUTES = ["sAMAccountName", "distinguishedName", "objectSid", "memberOf", "pwdLastSet",
                      "lastLogonTimestamp", "whenCreated", "whenChanged", "servicePrincipalName",
                      "userAccountControl", "adminCount", "description", "userPrincipalName",
                      "msDS-KeyVersionNumber", "accountExpires", "lockoutTime"]
_KRBTGT = "krbtgt"


# =========================================================================== helpers


def directory_of(ctx: ActionContext) -> Directory:
    tenant = ctx.inventory.tenant(ctx.host.tenant)
    if tenant.directory is None:
        raise ActionFailed(f"tenant {ctx.host.tenant} has no directory")
    return tenant.directory


def ldap(ctx: ActionContext) -> LdapConnection:
    conn = ctx.conn
    if not isinstance(conn, LdapConnection):
        raise ActionFailed(f"{ctx.host.name}: directory actions need an LDAP connection, got {conn.kind}")
    conn.deadline = _at(ctx)
    return conn


def _at(ctx: ActionContext) -> float:
    """The step's deadline as a ``time.monotonic()`` value (what the LDAP transport takes)."""
    return time.monotonic() + ctx.remaining()


def record(ctx: ActionContext, action: str, params: dict[str, Any], outcome: str = "ok") -> None:
    """A durable audit record about this directory (never while planning)."""
    ctx.record(action, {"case": ctx.case_id, **params}, outcome)


def _first(attrs: dict[str, list[Any]], name: str) -> Any:
    for key, values in attrs.items():
        if key.lower() == name.lower():
            return values[0] if values else None
    return None


def _all(attrs: dict[str, list[Any]], name: str) -> list[Any]:
    for key, values in attrs.items():
        if key.lower() == name.lower():
            return list(values)
    return []


def _jsonable(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(value)


def _uac(attrs: dict[str, list[Any]]) -> int:
    try:
        return int(_first(attrs, "userAccountControl") or 0)
    except (TypeError, ValueError):
        return 0


def _when(value: Any) -> dt.datetime | None:
    """An LDAP GeneralizedTime (``20261130082157.0Z``, or ldap3's datetime) as an aware datetime."""
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, str) and len(value) >= 14 and value[:14].isdigit():
        try:
            return dt.datetime.strptime(value[:14], "%Y%m%d%H%M%S").replace(tzinfo=dt.timezone.utc)
        except ValueError:
            return None
    return None


class Domain:
    """Read-side helpers over one bound connection."""

    def __init__(self, conn: LdapConnection, directory: Directory) -> None:
        self.conn = conn
        self.d = directory
        self._group_dns: dict[str, str | None] = {}

    def account(self, sam: str, attrs: list[str] | None = None) -> tuple[str, dict[str, list[Any]]] | None:
        found = self.conn.search(self.d.base_dn, f"(&(objectClass=user)(sAMAccountName={escape_filter(sam)}))",
                                 attrs or ACCOUNT_ATTRIBUTES)
        return found[0] if found else None

    def group_dn(self, name: str) -> str | None:
        if name not in self._group_dns:
            found = self.conn.search(self.d.base_dn, f"(&(objectClass=group)(|(sAMAccountName={escape_filter(name)})"
                                                     f"(cn={escape_filter(name)})))", ["distinguishedName"])
            self._group_dns[name] = found[0][0] if found else None
        return self._group_dns[name]

    def transitive_members(self, group_dn: str) -> list[tuple[str, dict[str, list[Any]]]]:
        """Every user/computer account in ``group_dn``, nesting resolved by the DC (in-chain rule)."""
        return self.conn.search(self.d.base_dn, f"(&(objectClass=user)(memberOf:{MATCHING_RULE_IN_CHAIN}:="
                                                f"{escape_filter(group_dn)}))", ACCOUNT_ATTRIBUTES)

    def nested_groups(self, group_dn: str) -> set[str]:
        """Groups that are (transitively) members of ``group_dn``, lower-cased DNs."""
        found = self.conn.search(self.d.base_dn, f"(&(objectClass=group)(memberOf:{MATCHING_RULE_IN_CHAIN}:="
                                                 f"{escape_filter(group_dn)}))", ["distinguishedName"])
        return {dn.lower() for dn, _ in found}

    def guarded(self) -> dict[str, str]:
        """Guarded group name -> DN (groups the domain does not have are skipped)."""
        out = {}
        for name in self.d.guarded_groups:
            dn = self.group_dn(name)
            if dn:
                out[name] = dn
        return out

    def msp_accounts(self) -> dict[str, tuple[str, dict[str, list[Any]]] | None]:
        """sAMAccountName -> (dn, attrs) for every MSP account (None: named but absent)."""
        found: dict[str, tuple[str, dict[str, list[Any]]] | None] = {}
        for sam in self.d.msp_accounts:
            found[sam] = self.account(sam)
        for group in self.d.msp_account_groups:
            dn = self.group_dn(group)
            if dn is None:
                continue
            for member_dn, attrs in self.transitive_members(dn):
                sam = str(_first(attrs, "sAMAccountName") or member_dn)
                found.setdefault(sam, (member_dn, attrs))
        return found

    def removals(self, account_dn: str, member_of: list[str]) -> list[dict[str, str]]:
        """The direct memberships that give ``account_dn`` a guarded group: [{group, via_dn}]."""
        direct = {str(g).lower(): str(g) for g in member_of}
        out: list[dict[str, str]] = []
        seen: set[str] = set()
        for name, gdn in self.guarded().items():
            chain = {gdn.lower()} | self.nested_groups(gdn)
            for low, original in direct.items():
                if low in chain and low not in seen:
                    seen.add(low)
                    out.append({"guarded": name, "remove_from": original})
        return out


def generate_password(length: int) -> str:
    """A random password with every character class (passes AD complexity)."""
    alphabet = string.ascii_letters + string.digits + "!#%+-.:=?@^_~"
    while True:
        value = "".join(_secrets.choice(alphabet) for _ in range(length))
        if (any(c.islower() for c in value) and any(c.isupper() for c in value) and any(c.isdigit() for c in value)
                and any(not c.isalnum() for c in value)):
            return value


def kdc_address(conn: LdapConnection) -> str:
    return conn.ldap_endpoint.address


def leaked_password(directory: Directory, params_ref: str | None) -> str | None:
    ref = params_ref or directory.leaked_password
    if not ref:
        return None
    return resolve(parse_ref(ref))


def bind_password(directory: Directory) -> str:
    return resolve(parse_ref(directory.bind.password))


def principal(sam: str, directory: Directory) -> str:
    return f"{sam}@{directory.domain}"


# =========================================================================== evidence


def evidence_dir(case_id: str, tenant: str, domain: str) -> Path:
    return CaseLayout.of(case_id).evidence / tenant / domain


def evidence_files(case_id: str, tenant: str, domain: str) -> list[Path]:
    base = evidence_dir(case_id, tenant, domain)
    return sorted(base.glob("directory-*.json")) if base.is_dir() else []


def evidence_ready(case_id: str, tenant: str, domain: str) -> tuple[bool, str]:
    """Is there directory evidence for ``domain`` whose file still matches its custody record?"""
    files = evidence_files(case_id, tenant, domain)
    if not files:
        return False, f"no directory evidence for {tenant}/{domain}: run directory.collect_evidence first"
    try:
        from ir_toolkit.audit.log import iter_records

        records = [r for r in iter_records(case_id) if r.get("action") == EVIDENCE_ACTION
                   and r.get("tenant") == tenant and r.get("host") == domain]
    except Exception as exc:  # noqa: BLE001 - an unreadable log is a refusal, with its reason
        return False, f"cannot read the custody records: {exc}"
    for path in reversed(files):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if any((r.get("params") or {}).get("sha256") == digest for r in records):
            return True, f"directory evidence {path.name} (sha256 {digest[:16]}...)"
    return False, f"directory evidence for {tenant}/{domain} has no matching custody record (altered?)"


def _write_durable(path: Path, data: bytes) -> None:
    write_atomic(path, data, mode=0o600)


class EvidenceParams(Params):
    pass


@register
class CollectDirectoryEvidence(Action):
    name = "directory.collect_evidence"
    Params = EvidenceParams
    description = "export the MSP accounts' attributes and the guarded groups' membership, with custody"
    os = ("directory",)
    connection_kinds = ("ldap",)

    def plan(self, ctx: ActionContext, params: EvidenceParams) -> Outcome:
        ready, why = evidence_ready(ctx.case_id, ctx.host.tenant, ctx.host.name)
        if ready:
            return Outcome(False, f"already collected: {why}")
        d = directory_of(ctx)
        return Outcome(True, f"would export {len(d.msp_accounts)} MSP account(s)"
                             f"{' + members of ' + ', '.join(d.msp_account_groups) if d.msp_account_groups else ''}"
                             f" and the membership of {len(d.guarded_groups)} guarded groups")

    def apply(self, ctx: ActionContext, params: EvidenceParams) -> Outcome:
        ready, why = evidence_ready(ctx.case_id, ctx.host.tenant, ctx.host.name)
        if ready:
            return Outcome(False, f"already collected: {why}", verified=True)
        d = directory_of(ctx)
        dom = Domain(ldap(ctx), d)
        accounts = {}
        for sam, found in sorted(dom.msp_accounts().items()):
            accounts[sam] = None if found is None else {"dn": found[0], "attributes": _jsonable(found[1])}
        groups = {}
        for name, gdn in dom.guarded().items():
            members = dom.transitive_members(gdn)
            direct = dom.conn.search(gdn, "(objectClass=*)", ["member"], scope="base")
            groups[name] = {
                "dn": gdn,
                "direct_members": _jsonable(_all(direct[0][1], "member")) if direct else [],
                "members": [{"dn": mdn, "sAMAccountName": _jsonable(_first(a, "sAMAccountName")),
                             "whenCreated": _jsonable(_first(a, "whenCreated")),
                             "userAccountControl": _jsonable(_first(a, "userAccountControl")),
                             "adminCount": _jsonable(_first(a, "adminCount"))} for mdn, a in members],
            }
        krbtgt = dom.account(_KRBTGT, ["msDS-KeyVersionNumber", "pwdLastSet", "whenChanged"])
        now = dt.datetime.now(dt.timezone.utc)
        doc = {
            "type": "irkit.directory-evidence", "version": 1, "case": ctx.case_id, "tenant": ctx.host.tenant,
            "domain": d.domain, "dc": dom.conn.ldap_endpoint.address,
            "dc_certificate": dom.conn.host_key_fingerprint, "collected": now.isoformat(),
            "msp_accounts": accounts, "guarded_groups": groups,
            "krbtgt": _jsonable(krbtgt[1]) if krbtgt else None,
        }
        data = json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"
        path = evidence_dir(ctx.case_id, ctx.host.tenant, d.domain) / f"directory-{now.strftime('%Y%m%dT%H%M%S%fZ')}.json"
        _write_durable(path, data)
        digest = hashlib.sha256(data).hexdigest()
        record(ctx, EVIDENCE_ACTION, {
            "file": str(path.relative_to(CaseLayout.of(ctx.case_id).root)), "sha256": digest, "size": len(data),
            "accounts": sorted(accounts), "groups": sorted(groups), "dc": doc["dc"],
            "dc_certificate": doc["dc_certificate"],
        })
        return Outcome(True, f"exported {len(accounts)} MSP account(s) and {len(groups)} guarded groups "
                             f"({len(data)} bytes, sha256 {digest[:16]}...)", details={"file": path.name,
                                                                                      "sha256": digest})

    def verify(self, ctx: ActionContext, params: EvidenceParams) -> Outcome:
        ready, why = evidence_ready(ctx.case_id, ctx.host.tenant, ctx.host.name)
        return Outcome(False, why, ok=ready)


# =========================================================================== MSP accounts


class MspAccountsParams(Params):
    #: rotate to a unique escrowed password, or disable; ``inventory`` takes the directory's setting
    mode: Literal["inventory", "rotate", "disable"] = "inventory"
    #: resets per rotation: the directory keeps accepting the previous password after one (measured)
    resets: int = Field(default=2, ge=1, le=4)
    length: int | None = Field(default=None, ge=16, le=128)
    #: only these MSP accounts (sAMAccountNames; default: all of the directory's)
    accounts: list[str] = []
    #: rotate only when the newest escrowed password (any case) is older than this (``irkit rotate --due``)
    due_after_days: int | None = Field(default=None, ge=1, le=3650)
    #: rotate unless the newest verified escrowed password (any case) was set at or after this time
    #: (``irkit rotate`` sets it to the run's start, so a resumed run never rotates twice)
    unless_rotated_since: dt.datetime | None = None
    #: leave group memberships alone (scheduled rotation)
    remove_from_groups: bool = True
    #: reference to the leaked shared password (default: the directory's ``leaked_password``)
    old_password: str | None = None
    extra_recipients: list[str] = []

    @field_validator("old_password")
    @classmethod
    def _ref(cls, value: str | None) -> str | None:
        if value is not None and not is_reference(value):
            raise ValueError("old_password is a reference (env:NAME or file:PATH), never the password itself")
        return value


def _escrow_key(ctx: ActionContext) -> Any:
    return ctx.keys.escrow_private_key()


def _recipients(ctx: ActionContext, extra: list[str]) -> list[Any]:
    from ir_toolkit.actions.accounts import escrow_recipients

    return escrow_recipients(ctx.keys, extra)


@register
class DirectoryMspAccounts(Action):
    name = "directory.msp_accounts"
    Params = MspAccountsParams
    description = "MSP accounts out of every guarded group; unique escrowed password (reset twice) or disabled"
    destructive = True
    destroys = DESTROYS_CREDENTIALS
    os = ("directory",)
    connection_kinds = ("ldap",)

    def _mode(self, d: Directory, params: MspAccountsParams) -> str:
        return d.msp_account_action if params.mode == "inventory" else params.mode

    @staticmethod
    def _accounts(dom: Domain, params: MspAccountsParams) -> list[tuple[str, Any]]:
        wanted = {a.lower() for a in params.accounts}
        return [(sam, found) for sam, found in sorted(dom.msp_accounts().items())
                if not wanted or sam.lower() in wanted]

    def _needs_password(self, ctx: ActionContext, d: Directory, params: MspAccountsParams, sam: str,
                        attrs: dict[str, list[Any]]) -> tuple[bool, str]:
        store = esc.Escrow(ctx.case_id)
        unsettled = store.unsettled(ctx.host.tenant, d.domain, sam)
        if unsettled:
            return True, f"finish escrow entry {unsettled[0].id} (a run stopped before it was verified)"
        if params.due_after_days is not None:
            last = esc.last_verified(ctx.inventory.msp.name, ctx.host.tenant, d.domain, sam)
            if last is None:
                return True, "no escrowed password on record"
            age = (esc.utcnow() - (last.updated or last.created)).total_seconds() / 86400
            if age >= params.due_after_days:
                return True, f"password is {age:.0f} days old (policy {params.due_after_days})"
            return False, f"not due: set {age:.1f} days ago"
        if params.unless_rotated_since is not None:
            since = params.unless_rotated_since
            since = since if since.tzinfo else since.replace(tzinfo=dt.timezone.utc)
            last = esc.last_verified(ctx.inventory.msp.name, ctx.host.tenant, d.domain, sam)
            if last is not None and (last.updated or last.created) >= since:
                return False, f"already rotated by this run (escrow entry {last.id}, case {last.case})"
            return True, "to a unique escrowed password (reset twice)"
        current = store.current(ctx.host.tenant, d.domain, sam)
        if current is None:
            return True, "to a unique escrowed password (reset twice)"
        if self._mode(d, params) == "disable":
            return (not _uac(attrs) & UF_ACCOUNTDISABLE), "disable"
        if ctx.planning:  # the escrow key stays locked while planning: apply re-checks with a bind
            return False, f"already rotated in this case (escrow entry {current.id}; apply re-checks it binds)"
        if not LdapConnection.try_bind(ldap(ctx).ldap_endpoint, principal(sam, d), current.decrypt(_escrow_key(ctx)),
                                       deadline=_at(ctx)):
            return True, f"escrow entry {current.id} no longer binds (changed outside irkit?)"
        return False, f"already rotated in this case (escrow entry {current.id})"

    def plan(self, ctx: ActionContext, params: MspAccountsParams) -> Outcome:
        d = directory_of(ctx)
        dom = Domain(ldap(ctx), d)
        mode = self._mode(d, params)
        lines, changed, details = [], False, {}
        for sam, found in self._accounts(dom, params):
            if found is None:
                lines.append(f"{sam}: not in the directory")
                continue
            dn, attrs = found
            removals = dom.removals(dn, [str(g) for g in _all(attrs, "memberOf")]) if params.remove_from_groups else []
            need, why = self._needs_password(ctx, d, params, sam, attrs)
            parts = [f"remove from {r['remove_from'].split(',')[0][3:]} (gives {r['guarded']})" for r in removals]
            if need:
                parts.append(f"{'disable + ' if mode == 'disable' else ''}reset password x{params.resets}: {why}")
            changed = changed or bool(removals) or need
            details[sam] = {"remove": removals, "password": need, "why": why, "mode": mode}
            lines.append(f"{sam}: " + ("; ".join(parts) if parts else f"nothing to do ({why})"))
        return Outcome(changed, " | ".join(lines) or "no MSP accounts", details=details)

    def apply(self, ctx: ActionContext, params: MspAccountsParams) -> Outcome:
        d = directory_of(ctx)
        conn = ldap(ctx)
        dom = Domain(conn, d)
        mode = self._mode(d, params)
        done: list[str] = []
        changed = False
        for sam, found in self._accounts(dom, params):
            if found is None:
                continue
            dn, attrs = found
            if params.remove_from_groups:
                for r in dom.removals(dn, [str(g) for g in _all(attrs, "memberOf")]):
                    conn.remove_member(r["remove_from"], dn)
                    record(ctx, "directory.group_member_removed", {"account": sam, "group": r["remove_from"],
                                                                   "guarded": r["guarded"]})
                    done.append(f"{sam} out of {r['remove_from'].split(',')[0][3:]}")
                    changed = True
            need, _why = self._needs_password(ctx, d, params, sam, attrs)
            if not need:
                continue
            if mode == "disable" and not _uac(attrs) & UF_ACCOUNTDISABLE:
                conn.modify(dn, {"userAccountControl": [("MODIFY_REPLACE", [str(_uac(attrs) | UF_ACCOUNTDISABLE)])]},
                            "disable")
                record(ctx, "directory.account_disabled", {"account": sam})
                done.append(f"{sam} disabled")
            entry_id = self._rotate(ctx, d, params, conn, sam, dn)
            done.append(f"{sam} password reset x{params.resets} (escrow {entry_id})")
            changed = True
        return Outcome(changed, "; ".join(done) or "nothing to change", details={"done": done})

    def _rotate(self, ctx: ActionContext, d: Directory, params: MspAccountsParams, conn: LdapConnection,
                sam: str, dn: str) -> str:
        store = esc.Escrow(ctx.case_id)
        unsettled = store.unsettled(ctx.host.tenant, d.domain, sam)
        if unsettled:  # a run stopped between escrow and verify: apply that very secret (idempotent)
            entry = unsettled[0]
            password = entry.decrypt(_escrow_key(ctx))
            for stale in unsettled[1:]:
                store.set_state(stale, esc.ROLLED_BACK, note="superseded by a newer pending entry")
        else:
            password = generate_password(params.length or ctx.inventory.msp.policy.password_length)
            # 1. escrow first: encrypted and fsynced before the DC ever sees it
            entry = store.put(msp=ctx.inventory.msp.name, tenant=ctx.host.tenant, host=d.domain, account=sam,
                              secret=password, recipients=_recipients(ctx, params.extra_recipients))
            record(ctx, "directory.password_escrowed", {"account": sam, "escrow": entry.id})
        # 2. reset (twice: the DC keeps accepting the previous password after one reset)
        for n in range(1, params.resets + 1):
            try:
                conn.set_password(dn, password)
            except DirectoryError as exc:
                if n == 1 and exc.code == CONSTRAINT_VIOLATION:
                    store.set_state(entry, esc.ROLLED_BACK, note=f"refused by the domain's password policy: {exc}")
                    record(ctx, "directory.password_refused", {"account": sam, "escrow": entry.id,
                                                               "error": str(exc)}, outcome="failed")
                    raise ActionFailed(f"{d.domain}: {sam}: the domain's password policy refused the new password "
                                       f"(nothing changed; escrow entry {entry.id} rolled back): "
                                       f"{one_line(exc, 160)}") from None
                raise
            record(ctx, "directory.password_reset", {"account": sam, "escrow": entry.id, "reset": n,
                                                     "of": params.resets})
        store.set_state(entry, esc.APPLIED)
        # 3. a fresh bind with the new password
        if not LdapConnection.try_bind(conn.ldap_endpoint, principal(sam, d), password, deadline=_at(ctx)):
            if self._mode(d, params) != "disable":
                raise ActionFailed(f"{d.domain}: {sam}: the new password does not bind (escrow entry {entry.id} "
                                   "kept as applied; irkit resume retries)")
        store.set_state(entry, esc.VERIFIED)
        return entry.id

    def verify(self, ctx: ActionContext, params: MspAccountsParams) -> Outcome:
        d = directory_of(ctx)
        conn = ldap(ctx)
        dom = Domain(conn, d)
        mode = self._mode(d, params)
        old = leaked_password(d, params.old_password)
        problems, proofs = [], []
        store = esc.Escrow(ctx.case_id)
        for sam, found in self._accounts(dom, params):
            if found is None:
                continue
            dn, attrs = found
            if params.remove_from_groups:
                still = dom.removals(dn, [str(g) for g in _all(attrs, "memberOf")])
                if still:
                    problems.append(f"{sam} still in {', '.join(r['guarded'] for r in still)}")
            if mode == "disable" and not _uac(attrs) & UF_ACCOUNTDISABLE:
                problems.append(f"{sam} is not disabled")
            current = (store.current(ctx.host.tenant, d.domain, sam)
                       or esc.last_verified(ctx.inventory.msp.name, ctx.host.tenant, d.domain, sam))
            if mode == "rotate":
                if current is None:
                    problems.append(f"{sam}: no verified escrowed password")
                elif not LdapConnection.try_bind(conn.ldap_endpoint, principal(sam, d),
                                                 current.decrypt(_escrow_key(ctx)), deadline=_at(ctx)):
                    problems.append(f"{sam}: the escrowed password does not bind")
                else:
                    proofs.append(f"{sam} binds with escrow {current.id}")
            if old is not None:
                if LdapConnection.try_bind(conn.ldap_endpoint, principal(sam, d), old, deadline=_at(ctx)):
                    problems.append(f"{sam}: the leaked password still binds over LDAP")
                with TicketCache(d.realm, kdc_address(conn), timeout=min(20.0, max(1.0, ctx.remaining()))) as cc:
                    issued, _ = cc.kinit(sam, old)
                if issued:
                    problems.append(f"{sam}: the KDC still issues a TGT for the leaked password")
                else:
                    proofs.append(f"{sam}: leaked password refused (LDAP bind + AS-REQ)")
        if old is None:
            proofs.append("leaked-password proof not configured (directory.leaked_password)")
        if problems:
            return Outcome(False, "; ".join(problems), ok=False)
        return Outcome(False, "; ".join(proofs) or "no MSP accounts present")


# =========================================================================== krbtgt


class KrbtgtParams(Params):
    #: CISA CM0050 says twice; Samba's KDC also honours the keys of the version before the previous
    #: one (measured), so a stolen TGT dies only after the third reset there
    resets: int = Field(default=2, ge=2, le=5)
    #: seconds between resets (default: the directory's replication_wait_seconds)
    wait_seconds: float | None = Field(default=None, ge=0, le=7 * 86400)
    #: prove that a TGT obtained before the first reset no longer buys a service ticket afterwards
    prove_old_tgt: bool = True


def _state_path(case_id: str, tenant: str, domain: str) -> Path:
    return CaseLayout.of(case_id).root / "directory" / tenant / domain / "krbtgt.json"


def _load_state(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        raise ActionFailed(f"{path}: unreadable krbtgt state; inspect it by hand") from None


def _kvno(dom: Domain) -> int:
    found = dom.account(_KRBTGT, ["msDS-KeyVersionNumber"])
    if found is None:
        raise ActionFailed(f"{dom.d.domain}: no krbtgt account found")
    try:
        return int(_first(found[1], "msDS-KeyVersionNumber"))
    except (TypeError, ValueError):
        raise ActionFailed(f"{dom.d.domain}: krbtgt has no readable msDS-KeyVersionNumber") from None


def _dc_service(conn: LdapConnection, d: Directory) -> str:
    name = conn.ldap_endpoint.server_name or f"dc01.{d.domain}"
    return f"host/{name}"


@register
class KrbtgtReset(Action):
    name = "directory.krbtgt_reset"
    Params = KrbtgtParams
    description = "reset krbtgt N times with a replication wait; a pre-run TGT must be refused afterwards"
    destructive = True
    destroys = DESTROYS_CREDENTIALS
    os = ("directory",)
    connection_kinds = ("ldap",)

    def plan(self, ctx: ActionContext, params: KrbtgtParams) -> Outcome:
        d = directory_of(ctx)
        kvno = _kvno(Domain(ldap(ctx), d))
        state = _load_state(_state_path(ctx.case_id, ctx.host.tenant, d.domain))
        if state and state.get("done") and kvno >= state["kvno_before"] + params.resets:
            return Outcome(False, f"already reset {state['resets_done']}x in this case (kvno {state['kvno_before']}"
                                  f" -> {kvno})")
        wait = params.wait_seconds if params.wait_seconds is not None else d.replication_wait_seconds
        done = state.get("resets_done", 0) if state else 0
        return Outcome(True, f"would reset krbtgt {params.resets - done}x (kvno {kvno} -> >= {kvno + params.resets - done})"
                             f", {wait:g} s apart")

    def apply(self, ctx: ActionContext, params: KrbtgtParams) -> Outcome:
        d = directory_of(ctx)
        conn = ldap(ctx)
        dom = Domain(conn, d)
        path = _state_path(ctx.case_id, ctx.host.tenant, d.domain)
        state = _load_state(path)
        kvno = _kvno(dom)
        if state and state.get("done") and kvno >= state["kvno_before"] + params.resets:
            return Outcome(False, f"already reset {state['resets_done']}x in this case", details=state)
        wait = params.wait_seconds if params.wait_seconds is not None else d.replication_wait_seconds
        cache: TicketCache | None = None
        if state is None:
            state = {"kvno_before": kvno, "resets_done": 0, "done": False, "old_tgt": None}
        try:
            if params.prove_old_tgt and state["resets_done"] == 0:
                cache = TicketCache(d.realm, kdc_address(conn), timeout=20)
                issued, why = cache.kinit(d.bind.user, bind_password(d))
                if not issued:
                    raise ActionFailed(f"{d.domain}: could not obtain the pre-reset TGT for the proof: {why}")
                state["old_tgt"] = "obtained"
            _write_durable(path, json.dumps(state).encode())
            dn = dom.account(_KRBTGT, ["distinguishedName"])
            assert dn is not None
            while state["resets_done"] < params.resets:
                if state["resets_done"] > 0 and wait > 0:
                    if wait > ctx.remaining() - 5:
                        raise ActionFailed(f"{d.domain}: the step's timeout is too short for a {wait:g} s wait")
                    if not ctx.deadline.sleep(wait):
                        raise ActionFailed(f"{d.domain}: interrupted during the wait between krbtgt resets "
                                           f"({state['resets_done']} of {params.resets} done; irkit resume goes on)")
                conn.set_password(dn[0], generate_password(64))  # never used again: not escrowed (as AD does)
                state["resets_done"] += 1
                _write_durable(path, json.dumps(state).encode())
                record(ctx, "directory.krbtgt_reset", {"reset": state["resets_done"], "of": params.resets,
                                                       "kvno_before": state["kvno_before"], "cm": "CM0050"})
            state["kvno_after"] = _kvno(dom)
            if cache is None and state.get("old_tgt") == "obtained":
                state["old_tgt"] = "not tested (resumed run: the pre-run TGT did not survive the interruption)"
            if cache is not None:
                still, why = cache.service_ticket(_dc_service(conn, d))
                state["old_tgt"] = "still accepted" if still else f"refused ({why})"
            state["done"] = True
            _write_durable(path, json.dumps(state).encode())
        finally:
            if cache is not None:
                cache.close()
        return Outcome(True, f"krbtgt reset {params.resets}x: kvno {state['kvno_before']} -> {state['kvno_after']}; "
                             f"pre-run TGT {state['old_tgt'] or 'not tested (resumed run)'}", details=state)

    def verify(self, ctx: ActionContext, params: KrbtgtParams) -> Outcome:
        d = directory_of(ctx)
        conn = ldap(ctx)
        state = _load_state(_state_path(ctx.case_id, ctx.host.tenant, d.domain)) or {}
        kvno = _kvno(Domain(conn, d))
        problems = []
        if not state.get("done"):
            problems.append("krbtgt resets not finished")
        elif kvno < state["kvno_before"] + params.resets:
            problems.append(f"kvno {kvno} advanced less than {params.resets} from {state['kvno_before']}")
        if params.prove_old_tgt and state.get("old_tgt") == "still accepted":
            problems.append(f"a TGT from before the resets still gets service tickets after {params.resets} resets "
                            "(this KDC keeps older keys: raise resets)")
        # positive control: a fresh TGT does get a service ticket (so a refusal above meant the old key)
        with TicketCache(d.realm, kdc_address(conn), timeout=20) as cache:
            issued, why = cache.kinit(d.bind.user, bind_password(d))
            fresh = issued and cache.service_ticket(_dc_service(conn, d))[0]
        if not fresh:
            problems.append(f"a fresh TGT gets no service ticket either ({why or 'TGS refused'}): the proof is void")
        if problems:
            return Outcome(False, "; ".join(problems), ok=False)
        return Outcome(False, f"kvno {state['kvno_before']} -> {kvno}; pre-run TGT {state.get('old_tgt')}; "
                              "a fresh TGT works")


# =========================================================================== privileged sweep


class SweepParams(Params):
    #: disable what the sweep finds (give the step requires_approval: true)
    disable: bool = False
    #: accounts created within this many days before now are flagged as likely intruder-made
    window_days: float = Field(default=7, gt=0, le=3650)
    #: or an explicit incident window start (ISO 8601); the window always runs to now
    window_start: dt.datetime | None = None


@register
class PrivilegedSweep(Action):
    name = "directory.privileged_sweep"
    Params = SweepParams
    description = "report (and, if approved, disable) unexpected members of the guarded groups"
    os = ("directory",)
    connection_kinds = ("ldap",)

    def _findings(self, ctx: ActionContext, params: SweepParams) -> list[dict[str, Any]]:
        d = directory_of(ctx)
        dom = Domain(ldap(ctx), d)
        allow = {a.lower() for a in d.allow_members}
        msp = {s.lower() for s in dom.msp_accounts()}
        start = params.window_start or (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=params.window_days))
        if start.tzinfo is None:
            start = start.replace(tzinfo=dt.timezone.utc)
        found: dict[str, dict[str, Any]] = {}
        for name, gdn in dom.guarded().items():
            for mdn, attrs in dom.transitive_members(gdn):
                sam = str(_first(attrs, "sAMAccountName") or "")
                if not sam or sam.lower() in allow or sam.lower() in msp:
                    continue
                created = _when(_first(attrs, "whenCreated"))
                item = found.setdefault(sam.lower(), {
                    "account": one_line(sam, 40), "dn": one_line(mdn, 200), "groups": [],
                    "whenCreated": created.isoformat() if created else None,
                    "in_incident_window": bool(created and created >= start),
                    "disabled": bool(_uac(attrs) & UF_ACCOUNTDISABLE), "uac": _uac(attrs),
                })
                item["groups"].append(name)
        return sorted(found.values(), key=lambda f: (not f["in_incident_window"], f["account"]))

    @staticmethod
    def _summary(findings: list[dict[str, Any]]) -> str:
        if not findings:
            return "no unexpected members of the guarded groups"
        return "unexpected privileged accounts: " + "; ".join(
            f"{f['account']} in {', '.join(f['groups'])}" + (" (created in the incident window: likely intruder-made)"
                                                             if f["in_incident_window"] else "")
            + (" [disabled]" if f["disabled"] else "") for f in findings)

    def plan(self, ctx: ActionContext, params: SweepParams) -> Outcome:
        findings = self._findings(ctx, params)
        to_disable = [f for f in findings if not f["disabled"]] if params.disable else []
        summary = self._summary(findings)
        if to_disable:
            summary += " -> would disable " + ", ".join(f["account"] for f in to_disable)
        return Outcome(bool(to_disable), summary, details={"findings": findings})

    def apply(self, ctx: ActionContext, params: SweepParams) -> Outcome:
        findings = self._findings(ctx, params)
        conn = ldap(ctx)
        changed = False
        for f in findings:
            record(ctx, "directory.privileged_member", {k: f[k] for k in ("account", "dn", "groups", "whenCreated",
                                                                           "in_incident_window", "disabled")},
                   outcome="finding")
            if params.disable and not f["disabled"]:
                conn.modify(f["dn"], {"userAccountControl": [("MODIFY_REPLACE", [str(f["uac"] | UF_ACCOUNTDISABLE)])]},
                            "disable")
                record(ctx, "directory.account_disabled", {"account": f["account"], "reason": "privileged sweep"})
                f["disabled"] = True
                changed = True
        report = [f"{f['account']} is in {', '.join(f['groups'])}"
                  + (f" (created {f['whenCreated']}, inside the incident window: likely intruder-made)"
                     if f["in_incident_window"] else "") + (" [disabled]" if f["disabled"] else "")
                  for f in findings]
        return Outcome(changed, self._summary(findings), details={"findings": findings, "report": report},
                       verified=not params.disable)

    def verify(self, ctx: ActionContext, params: SweepParams) -> Outcome:
        findings = self._findings(ctx, params)
        if params.disable:
            left = [f["account"] for f in findings if not f["disabled"]]
            if left:
                return Outcome(False, "still enabled: " + ", ".join(left), ok=False)
        return Outcome(False, self._summary(findings))


__all__ = ["CollectDirectoryEvidence", "DirectoryMspAccounts", "KrbtgtReset", "PrivilegedSweep", "evidence_ready",
           "LdapEndpoint", "TransportError"]
