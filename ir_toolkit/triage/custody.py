"""Chain of custody: each sealed bundle's hashes go into the case's signed audit log.

One place writes the record (:func:`record_custody`) and one place reads them
back (:func:`custody_records`, :func:`custody_view`): only from the verified,
signed history of the log (a record appended without the key, or edited, never
counts). The record::

    action  evidence.collected
    tenant, host
    params  {collection_id, bundle (path under the case), bundle_file, bundle_sha256,
             bundle_size, manifest_sha256, encrypted, recipients, profile, kind (volatile | full), status,
             files_collected, files_failed, files_skipped, hash_mismatches}
    outcome ok | partial

The audit log is :mod:`ir_toolkit.audit.log` (``AuditLog.open``/``append_durable``/
``signed_records``). A case without an audit log has no custody records (``None``):
``evidence verify`` then reports custody as unchecked.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ir_toolkit.actor import system_actor
from ir_toolkit.audit import log as audit_log
from ir_toolkit.home import case_dir
from ir_toolkit.triage.bundle import Collection

ACTION_COLLECTED = "evidence.collected"
ACTION_FAILED = "evidence.collection_failed"


def actor() -> str:
    """Who acts: ``<os user>@<controller host>`` (:func:`ir_toolkit.actor.system_actor`)."""
    return system_actor()


def custody_params(case_id: str, collection: Collection, seal: dict[str, Any]) -> dict[str, Any]:
    counts = seal.get("counts", {})
    return {
        "collection_id": collection.id,
        "bundle": collection.relative(case_id),
        "bundle_file": seal["bundle_file"],
        "bundle_sha256": seal["bundle_sha256"],
        "bundle_size": int(seal["bundle_size"]),
        "manifest_sha256": seal["manifest_sha256"],
        "encrypted": bool(seal["encrypted"]),
        "recipients": list(seal.get("recipients", [])),
        "profile": seal.get("profile"),
        "kind": seal_kind(seal),
        "status": seal.get("status"),
        "files_collected": int(counts.get("collected", 0)),
        "files_failed": int(counts.get("failed", 0)),
        "files_skipped": int(counts.get("skipped", 0)),
        "hash_mismatches": int(counts.get("hash_mismatch", 0)),
    }


def seal_kind(seal: dict[str, Any]) -> str:
    """The evidence kind a seal states: ``volatile`` or ``full`` (seals from before kinds were full bundles)."""
    return "volatile" if seal.get("kind") == "volatile" else "full"


def record_kind(record: dict[str, Any]) -> str:
    """The evidence kind of a custody record (records from before kinds were full bundles)."""
    return "volatile" if (record.get("params") or {}).get("kind") == "volatile" else "full"


def record_custody(audit_log: Any, case_id: str, collection: Collection, seal: dict[str, Any],
                   *, who: str | None = None) -> int:
    """Append (durably: fsynced before returning) the custody record of one sealed bundle."""
    params = custody_params(case_id, collection, seal)
    return int(audit_log.append_durable(
        action=ACTION_COLLECTED, actor=who or actor(), tenant=seal["tenant"], host=seal["host"],
        params=params, outcome="ok" if seal.get("status") == "complete" else "partial",
    ))


def record_failure(audit_log: Any, tenant: str, host: str, error: str, *, who: str | None = None) -> int:
    """Record that a collection was attempted and failed (no bundle)."""
    return int(audit_log.append_durable(
        action=ACTION_FAILED, actor=who or actor(), tenant=tenant, host=host,
        params={"error": error}, outcome="failed",
    ))


def custody_records(case_id: str, *, tenant: str | None = None, host: str | None = None) -> list[dict[str, Any]] | None:
    """Every trusted ``evidence.collected`` record of the case (of one host when given); None without a log.

    Trusted: from the writer that has the log open in this process (its index: O(records
    asked for)), else from the verified, signed prefix of the log (``audit.log.signed_records``).
    """
    if not (case_dir(case_id) / "audit" / "log.jsonl").exists():
        return None
    return audit_log.signed_records(case_id, actions=(ACTION_COLLECTED,), tenant=tenant, host=host)


@dataclass(frozen=True)
class CustodyView:
    """The custody records ``evidence verify`` may rely on, and what they rest on."""

    records: list[dict[str, Any]] | None     # None: the case has no audit log
    problem: str | None = None               # why (part of) the log is not trusted
    signed_size: int = 0                     # records in the verified, signed prefix
    anchor: str = ""                         # what the verification is anchored to


def custody_view(case_id: str, *, key: str | Sequence[str] | None = None) -> CustodyView:
    """Verify the case's audit log and take the custody records from its signed prefix only."""
    if not (case_dir(case_id) / "audit" / "log.jsonl").exists():
        return CustodyView(None, "no audit log")
    if key is None and audit_log.open_instance(case_id) is not None:
        records = audit_log.signed_records(case_id, actions=(ACTION_COLLECTED,))
        return CustodyView(records, None, 0, "the writer holding the signing key (this process)")
    from ir_toolkit.audit.verify import verified_records

    view = verified_records(case_id, key=key, actions=(ACTION_COLLECTED,))
    return CustodyView(view.records, view.problem, view.size, view.result.anchor_text())


def find_record(records: Iterable[dict[str, Any]], collection: Collection) -> dict[str, Any] | None:
    """The custody record of one collection (the last one, should there be several)."""
    found = None
    for record in records:
        params = record.get("params") or {}
        if (params.get("collection_id") == collection.id and record.get("host") == collection.host
                and record.get("tenant") == collection.tenant):
            found = record
    return found
