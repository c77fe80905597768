"""Is a host's evidence collected, verified and recorded? The question the destruction gate asks.

The engine calls :func:`host_evidence_status` before any destructive step on a
host (credential rotation, isolation that kills sessions, reimage). A host is
``ready`` when its newest sealed collection

* had no hash mismatch (every copied file's host and receipt hashes agree),
* collected at least one file when any failed (a host that fails every file
  must not open the gate with no evidence),
* still has the bundle SHA-256 its seal states (re-hashed now), and
* is recorded in the case's audit log with that bundle and manifest SHA-256 - in
  its verified, signed history (a record appended without the key never counts).

Anything else returns ``ready=False`` with a one-line reason for the operator.

Each collection has a kind (docs/containment.md): a ``volatile`` snapshot (live state only,
taken before isolation) or a ``full`` bundle. ``kind="full"`` (the default) counts full bundles
only; ``kind="volatile"`` counts either (a full bundle holds the volatile state too). The kind
is taken from the seal and must agree with the signed custody record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ir_toolkit.errors import VerificationFailed
from ir_toolkit.triage.bundle import list_collections, sha256_file
from ir_toolkit.triage.custody import custody_records, find_record, record_kind, seal_kind

VOLATILE = "volatile"
FULL = "full"
#: what each kind of evidence is called in refusals and reports
KIND_TEXT = {VOLATILE: "volatile snapshot", FULL: "full evidence bundle"}


@dataclass(frozen=True)
class EvidenceStatus:
    ready: bool
    reason: str
    collection: str | None = None
    bundle_sha256: str | None = None
    custody_seq: int | None = None
    #: the kind of the collection found (``volatile`` or ``full``)
    kind: str | None = None


def host_evidence_status(
    case_id: str,
    tenant: str,
    host: str,
    *,
    records: list[dict[str, Any]] | None = None,
    rehash: bool = True,
    kind: str = FULL,
) -> EvidenceStatus:
    """Whether ``host`` has ``kind`` evidence (a full bundle; ``volatile``: a snapshot or a full bundle).

    ``records`` avoids re-reading the audit log per host.
    """
    if kind not in (VOLATILE, FULL):
        raise ValueError(f"unknown evidence kind {kind!r}")
    collections = list_collections(case_id, tenant=tenant, host=host)
    if not collections:
        return EvidenceStatus(False, f"no evidence collected for {tenant}/{host}: run irkit triage first")
    if records is None:
        records = custody_records(case_id, tenant=tenant, host=host)
    reason = ""
    for collection in reversed(collections):
        try:
            seal = collection.seal()
        except VerificationFailed as exc:
            reason = str(exc)
            continue
        found = seal_kind(seal)
        if kind == FULL and found != FULL:
            reason = reason or (f"only a {KIND_TEXT[found]} for {tenant}/{host} ({collection.id}): "
                                f"a {KIND_TEXT[FULL]} is needed")
            continue
        counts = seal.get("counts", {})
        if counts.get("hash_mismatch"):
            reason = f"collection {collection.id} has hash mismatches: collect again"
            continue
        if not counts.get("collected") and counts.get("failed"):
            reason = (f"collection {collection.id}: every file failed ({counts.get('failed')}), no evidence "
                      "was collected: collect again")
            continue
        if rehash:
            actual = sha256_file(collection.bundle_path) if collection.bundle_path.exists() else None
            if actual != seal.get("bundle_sha256"):
                reason = f"bundle {collection.relative(case_id)} does not match its seal (altered or missing)"
                continue
        if records is None:
            return EvidenceStatus(False, f"no audit log for case {case_id}: the custody of "
                                         f"{tenant}/{host}'s evidence cannot be confirmed", collection.id)
        record = find_record(records, collection)
        if record is None:
            reason = f"collection {collection.id} has no chain-of-custody record in the audit log"
            continue
        params = record.get("params") or {}
        if (params.get("bundle_sha256") != seal.get("bundle_sha256")
                or params.get("manifest_sha256") != seal.get("manifest_sha256")):
            reason = f"collection {collection.id} differs from its custody record (seq {record.get('seq')})"
            continue
        if params.get("hash_mismatches"):
            reason = f"collection {collection.id} has hash mismatches (custody record seq {record.get('seq')}): collect again"
            continue
        if record_kind(record) != found:
            reason = (f"collection {collection.id} is sealed as a {KIND_TEXT[found]} but recorded as a "
                      f"{KIND_TEXT[record_kind(record)]} (seq {record.get('seq')})")
            continue
        return EvidenceStatus(True, f"{KIND_TEXT[found]} collected, verified and recorded", collection.id,
                              seal.get("bundle_sha256"), record.get("seq"), found)
    return EvidenceStatus(False, reason or f"no usable evidence for {tenant}/{host}")
