"""Audit records as OCSF 1.8.0 events for a SIEM (``irkit audit export --format ocsf``).

One event per record, in log order, so that a SIEM record can always be traced back to the
signed log: ``metadata.sequence`` is the record's seq, ``metadata.uid`` its hex leaf hash
(SHA-256(0x00 || line), the value the Merkle tree and the client export use),
``metadata.log_name`` the log origin, ``metadata.tenant_uid`` the tenant, and
``metadata.correlation_uid`` the case. The whole record (params already redacted by the log) is
kept under ``unmapped.irkit``. The mapping (docs/ocsf.md) follows
../shared/reference/scale-out-windows-ocsf.md §4; ``type_uid`` is always
``class_uid * 100 + activity_id``. Plain dicts, no model library: the events are validated in the
tests against JSON Schemas built from the pinned ocsf-schema 1.8.0 tree (tests/data/ocsf/).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from ir_toolkit import __version__
from ir_toolkit.audit.review import epoch, read_log

OCSF_VERSION = "1.8.0"

# class name -> (class_uid, category_uid, class caption, category caption)
CLASSES = {
    "base_event": (0, 0, "Base Event", "Uncategorized"),
    "incident_finding": (2005, 2, "Incident Finding", "Findings"),
    "account_change": (3001, 3, "Account Change", "Identity & Access Management"),
    "authentication": (3002, 3, "Authentication", "Identity & Access Management"),
    "evidence_info": (5040, 5, "Live Evidence Info", "Discovery"),
    "api_activity": (6003, 6, "API Activity", "Application Activity"),
    "remediation_activity": (7001, 7, "Remediation Activity", "Remediation"),
    "file_remediation_activity": (7002, 7, "File Remediation Activity", "Remediation"),
    "process_remediation_activity": (7003, 7, "Process Remediation Activity", "Remediation"),
    "network_remediation_activity": (7004, 7, "Network Remediation Activity", "Remediation"),
}

# irkit action -> (class, activity_id, activity_name)
MAPPING: dict[str, tuple[str, int, str]] = {
    "audit.log_created": ("incident_finding", 1, "Create"),
    "run.start": ("incident_finding", 2, "Update"),
    "run.end": ("incident_finding", 2, "Update"),
    "run.stopped": ("incident_finding", 2, "Update"),
    "tenant.stopped": ("incident_finding", 2, "Update"),
    "approval.given": ("api_activity", 3, "Update"),
    "step.start": ("api_activity", 1, "Create"),
    "step.done": ("api_activity", 3, "Update"),
    "step.skipped": ("api_activity", 3, "Update"),
    "step.refused": ("api_activity", 3, "Update"),
    "gate.override": ("api_activity", 3, "Update"),
    "escrow.read": ("api_activity", 2, "Read"),
    "credential.escrowed": ("api_activity", 1, "Create"),
    "credential.reconciled": ("api_activity", 3, "Update"),
    "host_key.accepted": ("api_activity", 3, "Update"),
    "host_key.refused": ("api_activity", 3, "Update"),
    "credential.applied": ("account_change", 3, "Password Change"),
    "credential.rotated": ("account_change", 3, "Password Change"),
    "account.locked": ("account_change", 9, "Lock"),
    "account.created": ("account_change", 1, "Create"),
    "ssh_keys.revoked": ("account_change", 99, "SSH Key Revoke"),
    "responder.key_installed": ("authentication", 1, "Logon"),
    "responder.access_failed": ("authentication", 1, "Logon"),
    "evidence.collected": ("evidence_info", 1, "Query"),
    "evidence.collection_failed": ("evidence_info", 1, "Query"),
    "host.isolated": ("network_remediation_activity", 1, "Isolate"),
    "host.isolation_rolled_back": ("network_remediation_activity", 1, "Isolate"),
    "host.released": ("network_remediation_activity", 3, "Restore"),
    "sessions.ended": ("process_remediation_activity", 2, "Evict"),
    "reimage.start": ("remediation_activity", 3, "Restore"),
    "reimage.provider": ("remediation_activity", 3, "Restore"),
    "reimage.done": ("remediation_activity", 3, "Restore"),
    # Active Directory (ir_toolkit/actions/directory.py)
    "directory.evidence": ("evidence_info", 1, "Query"),
    "directory.account_disabled": ("account_change", 5, "Disable"),
    "directory.password_reset": ("account_change", 4, "Password Reset"),
    "directory.password_refused": ("account_change", 4, "Password Reset"),
    "directory.krbtgt_reset": ("account_change", 4, "Password Reset"),
    "directory.group_member_removed": ("account_change", 99, "Group Member Removed"),
    "directory.password_escrowed": ("api_activity", 1, "Create"),
    "directory.privileged_member": ("base_event", 99, "directory.privileged_member"),
    # Windows hosts (ir_toolkit/actions/windows.py), Ansible steps (one record per task)
    "group.member_removed": ("account_change", 99, "Group Member Removed"),
    "ansible.task": ("remediation_activity", 4, "Harden"),
}
#: directory.<verb> records (the Active Directory actions) -> Account Change activity
DIRECTORY_ACTIVITIES = {"create": (1, "Create"), "enable": (2, "Enable"), "password_change": (3, "Password Change"),
                        "password_reset": (4, "Password Reset"), "disable": (5, "Disable"), "delete": (6, "Delete"),
                        "lock": (9, "Lock"), "unlock": (12, "Unlock")}
_FAILED = {"failed", "timed_out", "refused", "stopped", "partial", "error"}


def classify(action: str) -> tuple[str, int, str]:
    """(OCSF class, activity_id, activity_name) of an irkit action."""
    if action in MAPPING:
        return MAPPING[action]
    if action.startswith("directory."):
        verb = action.split(".", 1)[1]
        for key, (activity, name) in DIRECTORY_ACTIVITIES.items():
            if verb == key or verb.startswith(key):
                return "account_change", activity, name
        return "account_change", 99, verb.replace("_", " ").title() or "Other"
    return "base_event", 99, action


def _str(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def _status(outcome: str) -> tuple[int, str]:
    if outcome in ("ok", "intent"):
        return (1, "Success") if outcome == "ok" else (0, "Unknown")
    if outcome in _FAILED:
        return 2, "Failure"
    return 99, "Other"


def to_ocsf(record: dict[str, Any], leaf: str, origin: str | None) -> dict[str, Any]:
    """One OCSF event for one audit record."""
    action = str(record.get("action"))
    params = record.get("params") if isinstance(record.get("params"), dict) else {}
    outcome = str(record.get("outcome"))
    host = record.get("host") if isinstance(record.get("host"), str) else None
    tenant = record.get("tenant") if isinstance(record.get("tenant"), str) else None
    actor = str(record.get("actor"))
    name, activity, activity_name = classify(action)
    class_uid, category_uid, class_name, category_name = CLASSES[name]
    status_id, status = _status(outcome)
    ms = epoch(record.get("ts"))
    metadata: dict[str, Any] = {
        "product": {"name": "irkit", "vendor_name": "irkit", "version": __version__},
        "version": OCSF_VERSION, "profiles": ["host"],
        "sequence": record.get("seq"), "uid": leaf, "correlation_uid": record.get("case"),
        "log_name": origin or "", "log_provider": "irkit audit log", "original_time": _str(record.get("ts")),
    }
    if tenant is not None:
        metadata["tenant_uid"] = tenant
    event: dict[str, Any] = {
        "class_uid": class_uid, "class_name": class_name, "category_uid": category_uid,
        "category_name": category_name, "activity_id": activity, "activity_name": activity_name,
        "type_uid": class_uid * 100 + activity, "type_name": f"{class_name}: {activity_name}",
        "time": int(ms * 1000) if ms is not None else 0,
        "severity_id": 3 if status_id == 2 else 1, "severity": "Medium" if status_id == 2 else "Informational",
        "status_id": status_id, "status": status,
        "message": f"{action} {outcome}" + (f" on {host}" if host else "") + (f" ({tenant})" if tenant else ""),
        "metadata": metadata,
        "actor": {"user": {"name": actor}},
        "unmapped": {"irkit": {"action": action, "outcome": outcome, "case": record.get("case"),
                               "prev": record.get("prev"), "params": params}},
    }
    if status_id == 2:
        event["status_detail"] = _str(params.get("error") or params.get("reason") or outcome)[:1000]
    if host:
        event["device"] = {"hostname": host, "name": host, "type_id": 0}
    command_uid = f"{record.get('case')}/{record.get('seq')}"
    builder = _BUILDERS.get(name)
    if builder is not None:
        builder(event, action, params, record, command_uid)
    if name == "base_event":
        event["activity_name"] = action
    return event


def _account_change(event: dict, action: str, params: dict, record: dict, _cmd: str) -> None:
    user: dict[str, Any] = {}
    if action == "ssh_keys.revoked":
        users = sorted({r.get("user") for r in params.get("removed") or [] if isinstance(r, dict) and r.get("user")})
        user["name"] = ", ".join(map(str, users)) or "unknown"
        fps = params.get("fingerprints") or []
        if fps:
            user["credential_uid"] = _str(fps[0])
    elif action == "directory.krbtgt_reset":
        user["name"] = "krbtgt"
    else:
        user["name"] = _str(params.get("account") or params.get("user") or params.get("sam") or "unknown")
        if params.get("domain"):
            user["domain"] = _str(params["domain"])
    event["user"] = user


def _authentication(event: dict, action: str, params: dict, record: dict, _cmd: str) -> None:
    event["user"] = {"name": _str(params.get("user") or "root")}
    event["is_remote"] = True
    event["logon_type_id"] = 3  # Network
    event["auth_protocol_id"] = 99
    event["auth_protocol"] = "SSH public key"
    if record.get("host"):
        event["dst_endpoint"] = {"hostname": record["host"]}


def _evidence(event: dict, action: str, params: dict, record: dict, _cmd: str) -> None:
    query: dict[str, Any] = {"query_type_id": 99, "query_type": "irkit triage collection"}
    if action == "directory.evidence":
        query = {"query_type_id": 14, "query_type": "Users",
                 "users": [{"name": _str(a)} for a in params.get("accounts") or []]}
        if params.get("sha256"):
            query["file"] = {"name": _str(params.get("file") or "directory.json").rsplit("/", 1)[-1], "type_id": 1,
                             "path": _str(params.get("file") or ""),
                             "hashes": [{"algorithm_id": 3, "algorithm": "SHA-256", "value": _str(params["sha256"])}]}
    elif params.get("bundle_sha256"):
        query["file"] = {"name": _str(params.get("bundle_file") or "bundle"), "type_id": 1,
                         "path": _str(params.get("bundle") or ""),
                         "hashes": [{"algorithm_id": 3, "algorithm": "SHA-256", "value": _str(params["bundle_sha256"])}]}
        if isinstance(params.get("bundle_size"), int):
            query["file"]["size"] = params["bundle_size"]
    event["query_evidence"] = query
    status = params.get("status")
    event["query_result_id"] = 4 if action.endswith("failed") else 1 if status == "complete" or \
        action == "directory.evidence" else 2
    event["query_result"] = {1: "Exists", 2: "Partial", 4: "Error"}[event["query_result_id"]]
    event.setdefault("device", {"name": "unknown", "type_id": 0})


def _api(event: dict, action: str, params: dict, record: dict, _cmd: str) -> None:
    operation = params.get("step_action") if action.startswith("step.") else {
        "approval.given": "approve_plan", "escrow.read": "read_escrowed_secret",
        "credential.escrowed": "escrow_secret", "credential.reconciled": "reconcile_escrow",
        "gate.override": "override_evidence_gate", "directory.password_escrowed": "escrow_secret",
    }.get(action, action)
    event["api"] = {"operation": _str(operation or action)}
    if params.get("item"):
        event["api"]["request"] = {"uid": _str(params["item"])}
    actor = str(record.get("actor"))
    event["src_endpoint"] = {"hostname": actor.split("@", 1)[1] if "@" in actor else "irkit-controller"}


def _remediation(event: dict, action: str, params: dict, record: dict, cmd: str) -> None:
    event["command_uid"] = cmd
    desc = {"host.isolated": "host isolated: only the responder controller may connect",
            "host.isolation_rolled_back": "isolation rolled back (responder access could not be proven)",
            "host.released": "host released from isolation",
            "sessions.ended": "live sessions of the account ended",
            "reimage.start": "reimage started", "reimage.provider": "reimage provider finished",
            "reimage.done": "reimage finished: new host key pinned"}.get(action, action)
    if action == "ansible.task":
        desc = f"ansible task {_str(params.get('task'))} ({_str(params.get('module'))}, playbook {_str(params.get('playbook'))})"
    event["remediation"] = {"desc": desc}


def _network(event: dict, action: str, params: dict, record: dict, cmd: str) -> None:
    _remediation(event, action, params, record, cmd)
    event["connection_info"] = {"direction_id": 99, "direction": "All (host isolation)"}
    event["countermeasures"] = [{"d3f_technique": {"uid": "D3-NI", "name": "Network Isolation"}}] \
        if action != "host.released" else []
    if not event["countermeasures"]:
        del event["countermeasures"]


def _process(event: dict, action: str, params: dict, record: dict, cmd: str) -> None:
    _remediation(event, action, params, record, cmd)
    pids = [p for p in params.get("pids") or [] if isinstance(p, int)]
    event["process"] = {"user": {"name": _str(params.get("account") or "unknown")}}
    if pids:
        event["process"]["pid"] = pids[0]


def _incident(event: dict, action: str, params: dict, record: dict, _cmd: str) -> None:
    case = _str(record.get("case"))
    event["finding_info_list"] = [{"uid": case, "title": f"Incident {case}"}]
    event["status_id"] = 1 if action == "audit.log_created" else 3 if action.endswith("stopped") else 2
    event["status"] = {1: "New", 2: "In Progress", 3: "On Hold"}[event["status_id"]]


_BUILDERS = {
    "account_change": _account_change, "authentication": _authentication, "evidence_info": _evidence,
    "api_activity": _api, "remediation_activity": _remediation, "network_remediation_activity": _network,
    "process_remediation_activity": _process, "incident_finding": _incident,
}


def export_lines(case_id: str, fmt: str, *, tenant: str | None = None) -> Iterator[str]:
    """The case's records (optionally one tenant's) as OCSF events or raw records, one JSON per line."""
    rows = read_log(case_id)
    origin = next((r["params"].get("origin") for r, _ in rows if r.get("action") == "audit.log_created"
                   and isinstance(r.get("params"), dict)), None)
    for record, leaf in rows:
        if tenant is not None and record.get("tenant") != tenant:
            continue
        if fmt == "jsonl":
            yield json.dumps({**record, "leaf": leaf}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        else:
            yield json.dumps(to_ocsf(record, leaf, origin), sort_keys=True, separators=(",", ":"),
                             ensure_ascii=False)
