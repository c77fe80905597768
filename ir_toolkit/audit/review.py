"""What was done in a case, per tenant, read from the signed audit log (the model behind
``irkit audit report`` and the client exports).

:func:`build_review` verifies the log (:func:`ir_toolkit.audit.verify.verify_case`) and folds its
records into a plain, JSON-able dict: the verdict, a timeline (phases and waves per tenant, failures
and time-outs), and per tenant the hosts, directory accounts, revocations, rotations, isolations,
reimages, failures, approvals, evidence bundles with their custody, and a short statement for the
client. Renderers (:mod:`ir_toolkit.audit.report`) only format this dict.

**Tenant scope.** With ``tenant=T`` only records whose ``tenant`` is T are used, plus three kinds of
case-wide records reduced to fields that say nothing about other tenants: the run's start (actor,
playbook, plan hash), its end (status only: the host counts are dropped) and the responder's own
confirmation of the plan (who, when, plan hash). A stopped run is reported without its reason (the
reason counts hosts of every tenant). The verdict block names the checkpoint (origin, tree size,
root), which is the same for every tenant by design: it is what the client verifies against.

Every string here comes from the log, and much of it from hosts the intruder controls: renderers
must escape all of it.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ir_toolkit.audit import layout
from ir_toolkit.tlog.merkle import leaf_hash
from ir_toolkit.tlog.note import NoteError, parse_vkey
from ir_toolkit.errors import InputError
from ir_toolkit.home import validate_case_id

REVIEW_VERSION = 1

#: case-wide records (no tenant) that a tenant's report may show, reduced to these params
_CASE_WIDE_KEEP = {
    "run.start": ("plan", "playbook", "resumed"),
    "run.end": ("plan", "status"),
    "run.stopped": ("phase", "wave"),
}
FAILED_OUTCOMES = frozenset({"failed", "timed_out", "refused", "stopped", "partial"})


# --------------------------------------------------------------------------- reading


def read_log(case_id: str) -> list[tuple[dict[str, Any], str]]:
    """Every complete record of the case's log with its hex leaf hash, in order (unverified)."""
    path = layout.log_path(validate_case_id(case_id))
    if not path.exists():
        raise InputError(f"case {case_id} has no audit log ({path})")
    out: list[tuple[dict[str, Any], str]] = []
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break
            try:
                record = json.loads(raw)
            except ValueError:
                break
            if not isinstance(record, dict):
                break
            out.append((record, leaf_hash(raw[:-1]).hex()))
    return out


def key_fingerprint(vkey: str) -> str:
    """``SHA256:<base64>`` of the raw Ed25519 public key of a verifier key (as OpenSSH prints keys)."""
    try:
        verifier = parse_vkey(vkey)
    except NoteError:
        return "unparseable key"
    digest = hashlib.sha256(verifier.public).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


_TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d{1,9})?Z$")


def _epoch(ts: object) -> float | None:
    if not isinstance(ts, str):
        return None
    m = _TS.match(ts)
    if not m:
        return None
    try:
        whole = _dt.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=_dt.timezone.utc)
    except ValueError:
        return None
    return whole.timestamp() + (float(m.group(2)) if m.group(2) else 0.0)


def _str(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


# --------------------------------------------------------------------------- verification


def verification_block(case_id: str, *, keys: Sequence[str] | None = None,
                       checkpoints: Sequence[str | Path] | None = None,
                       witness_keys: Sequence[str] | None = None) -> dict[str, Any]:
    """The verdict at the top of a report: valid or not and why, the checkpoint the records are
    anchored to, its cosignatures, and the fingerprints of the verifier keys."""
    from ir_toolkit.audit.verify import verify_case

    result = verify_case(case_id, checkpoint_file=list(checkpoints) if checkpoints else None,
                         key=list(keys) if keys else None, witness_keys=list(witness_keys) if witness_keys else None)
    good = [c for c in result.checkpoints if c["matches_records"] and c["signed_by"] and not c["error"]]
    # the checkpoint to show: the largest externally anchored one, else the largest signed one
    external = [c for c in good if c["external"]]
    chosen = max(external or good, key=lambda c: (c["size"], len(c["cosigned_by"])), default=None)
    cosigners = sorted({w for c in good if chosen and c["size"] == chosen["size"] for w in c["cosigned_by"]})
    return {
        "ok": result.ok,
        "verdict": "valid" if result.ok else "invalid",
        "reason": result.reason,
        "problems": [p.line() for p in result.problems],
        "notes": list(result.notes),
        "origin": result.origin,
        "tree_size": result.size,
        "root": result.root,
        "signed_size": result.signed_size,
        "anchored_size": result.anchored_size,
        "anchored": bool(result.anchored_size),
        "unanchored": list(result.unanchored) if result.unanchored else None,
        "checkpoint": None if chosen is None else {
            "size": chosen["size"], "root": chosen["root"], "signed_by": chosen["signed_by"],
            "external": chosen["external"], "file": Path(chosen["file"]).name,
        },
        "cosigned_by": [{"key": w, "fingerprint": key_fingerprint(w)} for w in cosigners],
        "trusted_keys": [{"key": k, "fingerprint": key_fingerprint(k)} for k in result.trusted_keys],
        "log_keys": [{"key": k, "fingerprint": key_fingerprint(k)} for k in result.log_keys],
    }


# --------------------------------------------------------------------------- folding records


def _item_parts(params: dict[str, Any]) -> tuple[str | None, str | None]:
    """(phase, step_action) of an engine step record."""
    item = params.get("item")
    phase = item.split("/", 2)[0] if isinstance(item, str) and "/" in item else None
    action = params.get("step_action")
    return phase, action if isinstance(action, str) else None


def _base(record: dict[str, Any], leaf: str) -> dict[str, Any]:
    return {"seq": record.get("seq"), "ts": record.get("ts"), "host": record.get("host"),
            "actor": record.get("actor"), "leaf": leaf}


class _Tenant:
    def __init__(self, name: str) -> None:
        self.name = name
        self.hosts: dict[str, dict[str, Any]] = {}
        self.accounts: list[dict[str, Any]] = []
        self.revoked: list[dict[str, Any]] = []
        self.rotated: list[dict[str, Any]] = []
        self.sessions: list[dict[str, Any]] = []
        self.isolated: list[dict[str, Any]] = []
        self.released: list[dict[str, Any]] = []
        self.reimaged: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []
        self.approvals: list[dict[str, Any]] = []
        self.evidence: list[dict[str, Any]] = []
        self.custody: list[dict[str, Any]] = []
        self.other: list[dict[str, Any]] = []
        self.first: str | None = None
        self.last: str | None = None
        self.records = 0
        # timeline: (phase, wave) -> segment
        self.segments: dict[tuple[str, int], dict[str, Any]] = {}
        self.marks: list[dict[str, Any]] = []
        self.phase_order: list[str] = []

    def host(self, name: str | None) -> dict[str, Any] | None:
        if not name:
            return None
        return self.hosts.setdefault(name, {"name": name, "address": None, "status": "ok", "steps": 0,
                                            "failed_steps": 0, "isolated": False, "revoked": False,
                                            "rotated": [], "reimaged": False, "evidence": 0})

    def add(self, record: dict[str, Any], leaf: str) -> None:
        action = str(record.get("action"))
        params = record.get("params") if isinstance(record.get("params"), dict) else {}
        outcome = str(record.get("outcome"))
        ts = record.get("ts")
        self.records += 1
        if isinstance(ts, str):
            self.first = ts if self.first is None or ts < self.first else self.first
            self.last = ts if self.last is None or ts > self.last else self.last
        host = self.host(record.get("host"))
        if host is not None and isinstance(params.get("address"), str):
            host["address"] = params["address"]
        base = _base(record, leaf)
        if action.startswith("step."):
            self._step(action, params, outcome, base, host)
        elif action == "evidence.collected":
            self.evidence.append({**base, "collection_id": params.get("collection_id"),
                                  "bundle": params.get("bundle"), "bundle_file": params.get("bundle_file"),
                                  "sha256": params.get("bundle_sha256"), "size": params.get("bundle_size"),
                                  "manifest_sha256": params.get("manifest_sha256"),
                                  "encrypted": params.get("encrypted"), "recipients": params.get("recipients") or [],
                                  "status": params.get("status"), "outcome": outcome,
                                  "kind": "volatile" if params.get("kind") == "volatile" else "full",
                                  "files": {k: params.get(f"files_{k}") for k in ("collected", "failed", "skipped")},
                                  "hash_mismatches": params.get("hash_mismatches"), "custody": []})
            if host:
                host["evidence"] += 1
        elif action == "evidence.collection_failed":
            self.failures.append({**base, "phase": "preserve", "what": action, "outcome": outcome,
                                  "reason": _str(params.get("error"))})
        elif action == "ssh_keys.revoked":
            self.revoked.append({**base, "what": "MSP SSH keys", "fingerprints": params.get("fingerprints") or [],
                                 "removed": params.get("removed") or [], "krl": params.get("krl")})
            if host:
                host["revoked"] = True
        elif action in ("credential.rotated", "credential.applied", "credential.escrowed",
                        "credential.reconciled"):
            entry = {**base, "step": action.split(".", 1)[1], "account": params.get("account"),
                     "escrow_entry": params.get("entry"), "state": params.get("state"), "outcome": outcome}
            if action == "credential.rotated":
                self.rotated.append(entry)
                if host and params.get("account"):
                    host["rotated"].append(params.get("account"))
        elif action in ("group.member_removed", "directory.group_member_removed"):
            self.revoked.append({**base, "what": f"{_str(params.get('account'))} removed from group "
                                                 f"{_str(params.get('group') or params.get('remove_from'))}",
                                 "fingerprints": [], "removed": [], "krl": None})
            if host:
                host["revoked"] = True
        elif action == "account.locked":
            self.revoked.append({**base, "what": f"account {_str(params.get('account'))} locked",
                                 "fingerprints": [], "removed": [], "krl": None})
        elif action == "sessions.ended":
            self.sessions.append({**base, "account": params.get("account"), "pids": params.get("pids") or []})
        elif action == "host.isolated":
            self.isolated.append({**base, "allowed": params.get("allowed") or [],
                                  "controller_seen_as": params.get("controller_seen_as"),
                                  "ruleset_before_sha256": params.get("ruleset_before_sha256")})
            if host:
                host["isolated"] = True
        elif action == "host.released":
            self.released.append({**base, "restored_exactly": params.get("restored_exactly")})
            if host:
                host["isolated"] = False
        elif action == "reimage.done":
            if outcome == "ok":
                self.reimaged.append({**base, "provider": params.get("provider"),
                                      "old_host_key": params.get("old_host_key_fingerprint"),
                                      "new_host_key": params.get("new_host_key_fingerprint"),
                                      "host_key_changed": params.get("host_key_changed")})
                if host:
                    host["reimaged"] = True
            else:
                self.failures.append({**base, "phase": "reimage", "what": action, "outcome": outcome,
                                      "reason": _str(params.get("error"))})
        elif action == "approval.given":
            self.approvals.append({**base, "approver": params.get("approver") or record.get("actor"), "kind": params.get("kind"),
                                   "plan": params.get("plan"), "scope": "tenant"})
        elif action == "tenant.stopped":
            self.failures.append({**base, "phase": params.get("phase"), "what": action, "outcome": outcome,
                                  "reason": f"tenant stopped in phase {_str(params.get('phase'))}: "
                                            f"{_str(params.get('failed'))} of {_str(params.get('hosts'))} hosts failed"})
            self.marks.append({"ts": ts, "kind": "stopped", "host": None, "phase": params.get("phase"),
                               "reason": "tenant stopped"})
        elif action == "directory.evidence":
            self.evidence.append({**base, "collection_id": None, "bundle": params.get("file"),
                                  "bundle_file": params.get("file"), "sha256": params.get("sha256"),
                                  "size": params.get("size"), "manifest_sha256": None, "encrypted": False,
                                  "recipients": [], "status": "directory export", "outcome": outcome,
                                  "files": {"collected": 1, "failed": 0, "skipped": 0}, "hash_mismatches": 0,
                                  "custody": []})
            found = params.get("accounts") if isinstance(params.get("accounts"), list) else []
            self.accounts.append({**base, "action": action, "outcome": outcome,
                                  "account": ", ".join(map(str, found)) or None, "details": {}})
        elif action.startswith("directory.") or action == "account.created":
            account = params.get("account") or params.get("user") or params.get("sam") or params.get("name")
            if action == "directory.krbtgt_reset":
                account = f"krbtgt (reset {_str(params.get('reset'))} of {_str(params.get('of'))})"
            self.accounts.append({**base, "action": action, "outcome": outcome, "account": account,
                                  "details": {k: v for k, v in params.items() if k not in ("case",)}})
        else:
            self.other.append({**base, "action": action, "outcome": outcome})
        if outcome in FAILED_OUTCOMES and not action.startswith("step.") and action not in (
                "evidence.collection_failed", "reimage.done", "tenant.stopped") and action != "evidence.collected":
            self.failures.append({**base, "phase": None, "what": action, "outcome": outcome,
                                  "reason": _str(params.get("reason") or params.get("error") or outcome)})
        if isinstance(params.get("collection_id"), str) and action != "evidence.collected":
            self.custody.append({**base, "action": action, "collection_id": params["collection_id"],
                                 "outcome": outcome})

    def _step(self, action: str, params: dict[str, Any], outcome: str, base: dict[str, Any],
              host: dict[str, Any] | None) -> None:
        phase, step_action = _item_parts(params)
        if phase is None:
            return
        if phase not in self.phase_order:
            self.phase_order.append(phase)
        wave = params.get("wave") if isinstance(params.get("wave"), int) else 1
        seg = self.segments.setdefault((phase, wave), {"phase": phase, "wave": wave, "start": None, "end": None,
                                                       "hosts": set(), "failed": 0, "timed_out": 0, "refused": 0,
                                                       "skipped": 0})
        ts = base["ts"]
        if isinstance(ts, str):
            seg["start"] = ts if seg["start"] is None or ts < seg["start"] else seg["start"]
            seg["end"] = ts if seg["end"] is None or ts > seg["end"] else seg["end"]
        if base["host"]:
            seg["hosts"].add(base["host"])
        if action == "step.done" and host is not None:
            host["steps"] += 1
        if outcome in ("failed", "timed_out", "refused"):
            seg[outcome] += 1
            reason = _str(params.get("error") or params.get("reason") or outcome)
            self.failures.append({**base, "phase": phase, "what": step_action or action, "outcome": outcome,
                                  "reason": reason})
            self.marks.append({"ts": ts, "kind": outcome, "host": base["host"], "phase": phase, "reason": reason})
            if host is not None:
                host["failed_steps"] += 1
                host["status"] = outcome
        elif outcome == "skipped":
            seg["skipped"] += 1

    def finish(self, *, addresses: dict[str, str]) -> dict[str, Any]:
        for name, host in self.hosts.items():
            host["address"] = addresses.get(name) or host["address"]
            host["rotated"] = sorted(set(host["rotated"]))
        by_collection = {e["collection_id"]: e for e in self.evidence if e.get("collection_id")}
        for event in self.custody:
            target = by_collection.get(event["collection_id"])
            if target is not None:
                target["custody"].append(event)
        phase_rank = {p: i for i, p in enumerate(self.phase_order)}
        segments = sorted(self.segments.values(), key=lambda s: (phase_rank.get(s["phase"], 99), s["wave"]))
        return {
            "name": self.name,
            "first": self.first, "last": self.last, "records": self.records,
            "hosts": sorted(self.hosts.values(), key=lambda h: h["name"]),
            "accounts": self.accounts, "revoked": self.revoked, "rotated": self.rotated,
            "sessions_ended": self.sessions, "isolated": self.isolated, "released": self.released,
            "reimaged": self.reimaged, "failures": self.failures, "approvals": self.approvals,
            "evidence": self.evidence,
            "timeline": {"segments": [{**s, "hosts": len(s["hosts"])} for s in segments],
                         "marks": sorted(self.marks, key=lambda m: str(m["ts"]))},
        }


def _readable(ts: object) -> str:
    """``2026-05-01 12:00:00`` from a record timestamp (seconds; UTC)."""
    return ts[:19].replace("T", " ") if isinstance(ts, str) and _TS.match(ts) else "?"


def _statement(case: str, origin: str | None, tenant: dict[str, Any], verification: dict[str, Any],
               run: dict[str, Any]) -> str:
    """A short plain-text statement the client can receive."""
    hosts = tenant["hosts"]
    n = len(hosts)
    parts = [f"Incident case {case}: between {_readable(tenant['first'])} and {_readable(tenant['last'])} (UTC) the "
             f"responders acted on {n} host{'s' if n != 1 else ''} of {tenant['name']}."]
    did = []
    if tenant["evidence"]:
        did.append(f"preserved evidence from {len({e['host'] for e in tenant['evidence']})} host(s) in "
                   f"{len(tenant['evidence'])} sealed bundle(s) (SHA-256 listed below)")
    if tenant["isolated"]:
        did.append(f"isolated {len({e['host'] for e in tenant['isolated']})} host(s) from the network "
                   "(responder access only)")
    if tenant["revoked"]:
        did.append(f"revoked the shared MSP credentials on {len({e['host'] for e in tenant['revoked']})} host(s)")
    if tenant["rotated"]:
        accounts = sorted({str(e["account"]) for e in tenant["rotated"]})
        did.append(f"rotated {', '.join(accounts)} on {len({e['host'] for e in tenant['rotated']})} host(s) to "
                   "unique secrets held in escrow")
    if tenant["sessions_ended"]:
        did.append(f"ended live sessions on {len({e['host'] for e in tenant['sessions_ended']})} host(s)")
    if tenant["reimaged"]:
        did.append(f"reimaged {len({e['host'] for e in tenant['reimaged']})} host(s)")
    if tenant["accounts"]:
        did.append(f"changed {len(tenant['accounts'])} directory account(s)")
    if did:
        parts.append("They " + "; ".join(did) + ".")
    failures = tenant["failures"]
    if failures:
        parts.append(f"{len(failures)} step(s) did not succeed; each is listed with its reason.")
    else:
        parts.append("Every recorded step succeeded.")
    if tenant["approvals"] or run.get("approvals"):
        who = sorted({str(a["approver"]) for a in tenant["approvals"] + run.get("approvals", [])})
        parts.append(f"The plan was approved by {', '.join(who)}.")
    cp = verification.get("checkpoint")
    if verification["ok"] and cp:
        anchored = (f", cosigned by {len(verification['cosigned_by'])} witness(es)"
                    if verification["cosigned_by"] else "")
        parts.append(f"Every action above is a record in the signed, tamper-evident audit log {origin} "
                     f"(checkpoint of size {cp['size']}, root {cp['root']}{anchored}); the client export "
                     "(irkit audit export --tenant) lets you check each record against it with only the "
                     "published verifier key.")
    else:
        parts.append(f"WARNING: the audit log did NOT verify ({verification.get('reason')}); do not rely on "
                     "this statement until that is resolved.")
    return " ".join(parts)


def build_review(case_id: str, *, tenant: str | None = None, keys: Sequence[str] | None = None,
                 checkpoints: Sequence[str | Path] | None = None, witness_keys: Sequence[str] | None = None,
                 addresses: dict[str, str] | None = None, tenant_names: dict[str, str] | None = None,
                 now: str | None = None) -> dict[str, Any]:
    """The report model of a case (or of one tenant of it); see the module docstring."""
    validate_case_id(case_id)
    rows = read_log(case_id)
    verification = verification_block(case_id, keys=keys, checkpoints=checkpoints, witness_keys=witness_keys)
    tenants: dict[str, _Tenant] = {}
    run: dict[str, Any] = {"start": None, "end": None, "status": None, "playbooks": [], "plans": [],
                           "actors": [], "approvals": [], "stopped": []}
    known = {r.get("tenant") for r, _ in rows if isinstance(r.get("tenant"), str)}
    if tenant is not None and tenant not in known:
        raise InputError(f"case {case_id} has no records of tenant {tenant!r} (tenants: "
                         f"{', '.join(sorted(t for t in known if t)) or 'none'})")
    actors: set[str] = set()
    for record, leaf in rows:
        action = str(record.get("action"))
        name = record.get("tenant")
        params = record.get("params") if isinstance(record.get("params"), dict) else {}
        if isinstance(name, str):
            if tenant is not None and name != tenant:
                continue
            tenants.setdefault(name, _Tenant(name)).add(record, leaf)
            if isinstance(record.get("actor"), str):
                actors.add(record["actor"])
            continue
        # case-wide records
        if action.startswith("audit."):
            continue
        keep = _CASE_WIDE_KEEP.get(action)
        if action == "run.start":
            run["start"] = run["start"] or record.get("ts")
            if params.get("playbook") not in run["playbooks"]:
                run["playbooks"].append(params.get("playbook"))
        if action in ("run.start", "run.end") and params.get("plan") and params.get("plan") not in run["plans"]:
            run["plans"].append(params.get("plan"))
        if action == "run.end":
            run["end"], run["status"] = record.get("ts"), params.get("status")
        if action == "run.stopped":
            stop = {"ts": record.get("ts"), "phase": params.get("phase"), "wave": params.get("wave")}
            if tenant is None:
                stop["reason"] = params.get("reason")
            run["stopped"].append(stop)
        if action == "approval.given":
            run["approvals"].append({"seq": record.get("seq"), "ts": record.get("ts"),
                                     "approver": params.get("approver") or record.get("actor"),
                                     "kind": params.get("kind"), "plan": params.get("plan"), "scope": "case",
                                     "leaf": leaf, "actor": record.get("actor"), "host": None})
        if keep is None and action != "approval.given" and tenant is None:
            run.setdefault("other", []).append({"seq": record.get("seq"), "ts": record.get("ts"),
                                                "action": action, "outcome": record.get("outcome")})
        if isinstance(record.get("actor"), str) and (keep is not None or action == "approval.given"):
            actors.add(record["actor"])
    run["actors"] = sorted(actors)
    out_tenants = []
    for name in sorted(tenants):
        data = tenants[name].finish(addresses=addresses or {})
        data["display_name"] = (tenant_names or {}).get(name)
        data["statement"] = _statement(case_id, verification["origin"], data, verification, run)
        out_tenants.append(data)
    times = [e for t in out_tenants for e in (t["first"], t["last"]) if e]
    if tenant is None:
        times += [t for t in (run["start"], run["end"]) if t]
    return {
        "report": "irkit audit report", "version": REVIEW_VERSION,
        "generated": now or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "case": case_id, "origin": verification["origin"], "scope": tenant,
        "verification": verification, "run": run,
        "window": {"start": min(times) if times else None, "end": max(times) if times else None},
        "tenants": out_tenants,
    }


def epoch(ts: object) -> float | None:
    """Seconds since the epoch of a record timestamp (None when it does not parse)."""
    return _epoch(ts)


def all_strings(value: Any) -> Iterable[str]:
    """Every string inside a JSON value (tests use it to look for another tenant's data)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from all_strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from all_strings(v)
