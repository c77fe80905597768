"""A realistic multi-tenant case written through the real AuditLog API (the records the engine,
triage, containment, reimage and directory actions write), for the report, export and OCSF tests.

Every tenant gets its own host names, addresses, directory accounts and evidence bundles, so a
test can look for each of them in another tenant's output. One host of ``initech`` is hostile:
its records carry HTML/script, control characters and bidi overrides in host-supplied fields.
"""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path
from typing import Any

from ir_toolkit.audit.log import AuditLog
from ir_toolkit.tlog.merkle import leaf_hash
from ir_toolkit.audit import layout

HOSTILE = '<script>alert("pwned")</script><img src=x onerror=alert(1)>\x1b[31m\u202eevil'
PLAN = "ab12" * 16
TENANTS = {
    "globex": {"hosts": {"globex-dc01": "198.18.1.10", "globex-web01": "198.18.1.20"},
               "accounts": ["gx-svc-backup"]},
    "initech": {"hosts": {"initech-app01": "198.18.2.10", "initech-files01": "198.18.2.20"},
                "accounts": ["it-peter.gibbons"]},
    "umbrella": {"hosts": {"umbrella-ehr01": "198.18.3.10"}, "accounts": ["um-wesker"]},
}


def inventory_text(msp: str = "acme") -> str:
    lines = [f"version: 1\nmsp:\n  name: {msp}\n  shared_credentials:\n    accounts:\n      - user: mspadmin\n"
             "  responder:\n    key: file:/nonexistent/responder\n    controller_address: 198.18.0.1\ntenants:"]
    for tenant, data in TENANTS.items():
        lines.append(f"  - name: {tenant}\n    display_name: {tenant.title()} Inc\n    hosts:")
        for host, address in data["hosts"].items():
            lines.append(f"      - {{name: {host}, address: {address}}}")
    return "\n".join(lines) + "\n"


def write_inventory(path: Path) -> Path:
    path.write_text(inventory_text())
    return path


def _bundle(tenant: str, host: str) -> str:
    return hashlib.sha256(f"bundle of {tenant}/{host}".encode()).hexdigest()


def write_case(signer: Any, case: str = "IR-REP", *, msp: str = "acme", failures: bool = True) -> dict[str, Any]:
    """Write the case; returns what each tenant owns: hosts, addresses, accounts, bundle hashes, leaf hashes."""
    actor = "dana@ctl"
    with AuditLog.open(case, origin=f"{msp}/ir/{case}", signer=signer) as log:
        log.append_durable(action="approval.given", actor=actor,
                           params={"plan": PLAN, "approver": actor, "kind": "responder confirmation"})
        for tenant in TENANTS:
            log.append_durable(action="approval.given", actor=f"cio@{tenant}", tenant=tenant,
                               params={"plan": PLAN, "approver": f"cio@{tenant}", "kind": "signed approval"})
        log.append_durable(action="run.start", actor=actor,
                           params={"plan": PLAN, "playbook": "msp-breach-containment", "resumed": False})
        phases = [("access", "responder.ensure_access"), ("preserve", "triage.collect"), ("isolate", "host.isolate"), ("revoke", "ssh_keys.revoke"),
                  ("rotate", "credential.rotate"), ("reimage", "host.reimage"), ("directory", "directory.reset")]
        for pi, (phase, step_action) in enumerate(phases):
            for tenant, data in TENANTS.items():
                for hi, host in enumerate(data["hosts"]):
                    wave = 1 + hi % 2 if phase == "isolate" else 1
                    item = {"item": f"{phase}/0/{host}", "step_action": step_action, "wave": wave}
                    log.append_durable(action="step.start", actor=actor, tenant=tenant, host=host, params=item,
                                       outcome="intent")
                    hostile = failures and tenant == "initech" and host == "initech-files01"
                    if hostile and phase == "rotate":
                        log.append_durable(action="step.done", actor=actor, tenant=tenant, host=host,
                                           params={**item, "error": f"host said: {HOSTILE}", "kind": "timed_out",
                                                   "attempts": 2}, outcome="timed_out")
                        continue
                    if hostile and phase == "reimage":
                        log.append_durable(action="reimage.done", actor=actor, tenant=tenant, host=host,
                                           params={"case": case, "provider": "redfish", "error": HOSTILE},
                                           outcome="failed")
                        log.append_durable(action="step.done", actor=actor, tenant=tenant, host=host,
                                           params={**item, "error": f"reimage failed: {HOSTILE}", "attempts": 1},
                                           outcome="failed")
                        continue
                    _effect(log, case, phase, tenant, host, data, actor)
                    log.append_durable(action="step.done", actor=actor, tenant=tenant, host=host,
                                       params={**item, "changed": True, "summary": f"{phase} done on {host}",
                                               "attempts": 1}, outcome="ok")
            if failures and phase == "isolate":
                # a host-supplied string as the host field itself
                log.append_durable(action="step.done", actor=actor, tenant="initech", host=HOSTILE,
                                   params={"item": f"isolate/0/{HOSTILE}", "step_action": "host.isolate",
                                           "error": HOSTILE, "wave": 2}, outcome="failed")
            log.checkpoint()
        log.append_durable(action="run.end", actor=actor, params={"plan": PLAN, "status": "done", "ok": 987654321,
                                                                  "failed": 1})
    return owned(case)


def _effect(log: AuditLog, case: str, phase: str, tenant: str, host: str, data: dict, actor: str) -> None:
    address = data["hosts"][host]
    common = {"case": case}
    if phase == "access":
        log.append_durable(action="responder.key_installed", actor=actor, tenant=tenant, host=host, params={
            **common, "file": "/root/.ssh/authorized_keys", "fingerprint": "SHA256:caseresponderkey",
            "key_created": False, "user": "root"})
    elif phase == "preserve":
        cid = f"20260501T120000Z-{hashlib.sha256(host.encode()).hexdigest()[:6]}"
        log.append_durable(action="evidence.collected", actor=actor, tenant=tenant, host=host, params={
            "collection_id": cid, "bundle": f"evidence/{tenant}/{host}/{cid}", "bundle_file": "bundle.tar.enc",
            "bundle_sha256": _bundle(tenant, host), "bundle_size": 12345,
            "manifest_sha256": hashlib.sha256(f"manifest {host}".encode()).hexdigest(), "encrypted": True,
            "recipients": ["SHA256:responderescrowkey"], "profile": "ir_triage", "status": "complete",
            "files_collected": 300, "files_failed": 0, "files_skipped": 2, "hash_mismatches": 0})
    elif phase == "isolate":
        log.append_durable(action="host.isolated", actor=actor, tenant=tenant, host=host, params={
            **common, "allowed": ["198.18.0.1"], "controller_seen_as": "198.18.0.1", "address": address,
            "ruleset_before_sha256": hashlib.sha256(f"rules {host}".encode()).hexdigest(), "spec": "b7ea71f0"})
    elif phase == "revoke":
        log.append_durable(action="ssh_keys.revoked", actor=actor, tenant=tenant, host=host, params={
            **common, "fingerprints": ["SHA256:mspsharedkey2019"], "krl": "/etc/ssh/irkit-revoked-keys.krl",
            "removed": [{"file": "/root/.ssh/authorized_keys", "lines": 1, "user": "root"}]})
    elif phase == "rotate":
        entry = hashlib.sha256(f"escrow {host}".encode()).hexdigest()[:16]
        log.append_durable(action="credential.escrowed", actor=actor, tenant=tenant, host=host,
                           params={**common, "account": "mspadmin", "entry": entry, "state": "pending"})
        log.append_durable(action="sessions.ended", actor=actor, tenant=tenant, host=host,
                           params={**common, "account": "mspadmin", "pids": [4242]})
        log.append_durable(action="credential.rotated", actor=actor, tenant=tenant, host=host,
                           params={**common, "account": "mspadmin", "entry": entry, "state": "verified",
                                   "sessions_ended": 1})
    elif phase == "reimage":
        log.append_durable(action="reimage.done", actor=actor, tenant=tenant, host=host, params={
            **common, "provider": "redfish", "old_host_key_fingerprint": f"SHA256:old-{host}",
            "new_host_key_fingerprint": f"SHA256:new-{host}", "host_key_changed": True})
    elif phase == "directory" and host == next(iter(data["hosts"])):
        digest = hashlib.sha256(f"directory {tenant}".encode()).hexdigest()
        log.append_durable(action="directory.evidence", actor=actor, tenant=tenant, host=host, params={
            **common, "file": f"evidence/{tenant}/{tenant}.example/directory-1.json", "sha256": digest,
            "size": 999, "accounts": list(data["accounts"]), "groups": ["Domain Admins"], "dc": host,
            "dc_certificate": "SHA256:dccert"})
        log.append_durable(action="directory.krbtgt_reset", actor=actor, tenant=tenant, host=host,
                           params={**common, "reset": 1, "of": 2, "kvno_before": 3, "cm": "CM0050"})
        log.append_durable(action="group.member_removed", actor=actor, tenant=tenant, host=host,
                           params={**common, "account": data["accounts"][0], "group": "Administrators"})
        log.append_durable(action="ansible.task", actor=actor, tenant=tenant, host=host, params={
            **common, "changed": True, "duration_ms": 12, "module": "ansible.builtin.lineinfile",
            "playbook": "sshd-hardening.yml", "task": "no root login", "message": ""})
        for account in data["accounts"]:
            log.append_durable(action="directory.account_disabled", actor=actor, tenant=tenant, host=host,
                               params={**common, "account": account})
            log.append_durable(action="directory.password_escrowed", actor=actor, tenant=tenant, host=host,
                               params={**common, "account": account, "escrow": "e1"})
            log.append_durable(action="directory.password_reset", actor=actor, tenant=tenant, host=host,
                               params={**common, "account": account, "domain": f"{tenant}.example"})


def owned(case: str) -> dict[str, Any]:
    """Per tenant: the strings and hashes only that tenant may see."""
    lines = layout.log_path(case).read_bytes().split(b"\n")[:-1]
    import json

    out: dict[str, Any] = {}
    for tenant, data in TENANTS.items():
        out[tenant] = {"hosts": list(data["hosts"]), "addresses": list(data["hosts"].values()),
                       "accounts": list(data["accounts"]) + [f"{tenant}.example", f"cio@{tenant}"],
                       "bundles": [_bundle(tenant, h) for h in data["hosts"]], "leaves": [], "seqs": []}
    for line in lines:
        record = json.loads(line)
        tenant = record.get("tenant")
        if tenant in out:
            out[tenant]["leaves"].append(leaf_hash(line).hex())
            out[tenant]["seqs"].append(record["seq"])
            params = record.get("params", {})
            for key in ("manifest_sha256", "ruleset_before_sha256", "entry", "sha256"):
                if isinstance(params.get(key), str):
                    out[tenant].setdefault("hashes", []).append(params[key])
    return out


def secrets_of_others(owned_map: dict[str, Any], tenant: str) -> list[str]:
    """Every name, address, account and hash another tenant owns."""
    found: list[str] = []
    for other, data in owned_map.items():
        if other == tenant:
            continue
        found.append(other)
        for key in ("hosts", "addresses", "accounts", "bundles", "leaves", "hashes"):
            found.extend(data.get(key, []))
    return found


_ = textwrap
