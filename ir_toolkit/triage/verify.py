"""Re-check evidence: every archive member against the manifest, the bundle against its seal
and against the chain-of-custody record in the audit log.

A problem names the file: ``files/etc/passwd (source /etc/passwd): content changed ...``.
Encrypted bundles are re-hashed only when a recipient key is given; without one
only the outer SHA-256 is checked and the report says so (never a silent pass).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ir_toolkit.errors import InputError, VerificationFailed
from ir_toolkit.triage.bundle import (
    LOG_NAME,
    MANIFEST_NAME,
    Collection,
    list_collections,
    open_archive,
    sha256_file,
)
from ir_toolkit.triage.custody import custody_view, find_record, record_kind, seal_kind
from ir_toolkit.triage.tarstream import TarFormatError


@dataclass
class BundleReport:
    collection: Collection
    tenant: str
    host: str
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    members_checked: int = 0
    contents_checked: bool = False
    custody: str = "unchecked"  # recorded | missing | mismatch | unchecked
    manifest: dict[str, Any] | None = None
    #: volatile (snapshot before isolation) | full (the triage bundle), from the seal
    kind: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def row(self, case_id: str) -> dict[str, Any]:
        return {
            "tenant": self.tenant, "host": self.host, "collection": self.collection.id, "kind": self.kind,
            "result": "ok" if self.ok else "FAILED", "members": self.members_checked,
            "contents": "re-hashed" if self.contents_checked else "not checked",
            "custody": self.custody, "bundle": self.collection.relative(case_id),
            "problems": self.problems, "warnings": self.warnings,
        }


def expected_members(manifest: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """archive path -> (sha256, description) for everything the manifest says is in the archive."""
    expected: dict[str, tuple[str, str]] = {}
    for entry in manifest.get("files", []):
        if entry.get("archive_path") and entry.get("sha256_received"):
            expected[entry["archive_path"]] = (entry["sha256_received"], f"source {entry.get('source_path')}")
        first = entry.get("first_attempt") or {}
        if first.get("archive_path") and first.get("sha256_received"):
            expected[first["archive_path"]] = (first["sha256_received"],
                                               f"first copy of {entry.get('source_path')}")
    for out in manifest.get("outputs", []):
        if out.get("archive_path") and out.get("sha256_received"):
            expected[out["archive_path"]] = (out["sha256_received"], f"output of {out.get('artifact')}")
        err = out.get("stderr") or {}
        if err.get("archive_path"):
            expected[err["archive_path"]] = (err["sha256_received"], f"stderr of {out.get('artifact')}")
    log = manifest.get("log") or {}
    if log.get("archive_path"):
        expected[log["archive_path"]] = (log["sha256"], "collection log")
    return expected


def verify_collection(
    case_id: str,
    collection: Collection,
    *,
    identities: list[X25519PrivateKey] | None = None,
    records: list[dict[str, Any]] | None = None,
) -> BundleReport:
    """Verify one collection; ``records`` are the case's custody records (None: no audit log)."""
    report = BundleReport(collection, collection.tenant, collection.host)
    bundle_name = collection.bundle_path.name
    try:
        seal = collection.seal()
    except VerificationFailed as exc:
        report.problems.append(str(exc))
        return report
    report.kind = seal_kind(seal)
    beside: bytes | None = None
    if not collection.encrypted:
        try:
            beside = (collection.path / MANIFEST_NAME).read_bytes()
        except FileNotFoundError:
            report.problems.append(f"{MANIFEST_NAME} is missing beside {bundle_name}")
        if beside is not None and hashlib.sha256(beside).hexdigest() != seal.get("manifest_sha256"):
            report.problems.append(f"{MANIFEST_NAME}: SHA-256 differs from the seal (manifest altered)")
    if not collection.bundle_path.exists():
        report.problems.append(f"{bundle_name} is missing")
        return report

    can_read = not collection.encrypted or bool(identities)
    bundle_sha: str | None = None
    if can_read:
        bundle_sha = _check_contents(collection, identities, beside, seal, report)
    if bundle_sha is None:
        bundle_sha = sha256_file(collection.bundle_path)
        if collection.encrypted and not report.contents_checked and not report.problems:
            report.warnings.append(
                f"{bundle_name} is encrypted and no recipient key was given: only its outer SHA-256 was checked"
            )
    if bundle_sha != seal.get("bundle_sha256"):
        report.problems.append(f"{bundle_name}: SHA-256 {bundle_sha} differs from the seal's "
                               f"{seal.get('bundle_sha256')} (bundle altered)")
    _check_custody(collection, seal, bundle_sha, records, report)
    return report


def _check_contents(collection: Collection, identities: list[X25519PrivateKey] | None, beside: bytes | None,
                    seal: dict[str, Any], report: BundleReport) -> str | None:
    bundle_name = collection.bundle_path.name
    seen: dict[str, str] = {}
    inner_manifest: bytes | None = None
    current = "(start of archive)"
    try:
        with open_archive(collection, identities) as (members, stream):
            for member, fh in members:
                current = member.name
                if not member.isreg():
                    report.problems.append(f"{member.name}: unexpected non-file member in {bundle_name}")
                    continue
                sha = hashlib.sha256()
                if member.name == MANIFEST_NAME:
                    inner_manifest = fh.read()
                    sha.update(inner_manifest)
                else:
                    while chunk := fh.read(1 << 20):
                        sha.update(chunk)
                if member.name in seen:
                    report.problems.append(f"{member.name}: appears twice in {bundle_name}")
                seen[member.name] = sha.hexdigest()
            stream.drain()
            bundle_sha = stream.sha256
    except VerificationFailed as exc:
        report.problems.append(f"{exc} (while reading {current})")
        return None
    except InputError as exc:  # none of the given keys is a recipient of this bundle
        report.warnings.append(str(exc))
        return None
    except (TarFormatError, EOFError, OSError) as exc:
        report.problems.append(f"{bundle_name}: corrupt archive after {current}: {exc}")
        return None
    report.contents_checked = True
    report.members_checked = len(seen)
    if inner_manifest is None:
        report.problems.append(f"{MANIFEST_NAME} is missing inside {bundle_name}")
        return bundle_sha
    if hashlib.sha256(inner_manifest).hexdigest() != seal.get("manifest_sha256"):
        report.problems.append(f"{MANIFEST_NAME} inside {bundle_name}: SHA-256 differs from the seal")
    if beside is not None and beside != inner_manifest:
        report.problems.append(f"{MANIFEST_NAME} beside the bundle differs from the one inside it")
    try:
        manifest = json.loads(inner_manifest)
    except ValueError:
        report.problems.append(f"{MANIFEST_NAME} inside {bundle_name} is not valid JSON")
        return bundle_sha
    report.manifest = manifest
    expected = expected_members(manifest)
    for name, (want, what) in sorted(expected.items()):
        got = seen.get(name)
        if got is None:
            report.problems.append(f"{name} ({what}): missing from {bundle_name}")
        elif got != want:
            report.problems.append(f"{name} ({what}): content changed: SHA-256 {got}, manifest says {want}")
    for name in sorted(set(seen) - set(expected) - {MANIFEST_NAME}):
        report.problems.append(f"{name}: in {bundle_name} but not in the manifest")
    if LOG_NAME not in seen:
        report.problems.append(f"{LOG_NAME} is missing from {bundle_name}")
    for entry in manifest.get("files", []):
        if entry.get("status") == "hash_mismatch":
            report.warnings.append(f"{entry.get('source_path')}: was collected with a hash mismatch "
                                   "(the host's SHA-256 differs from the bytes received)")
    return bundle_sha


def _check_custody(collection: Collection, seal: dict[str, Any], bundle_sha: str,
                   records: list[dict[str, Any]] | None, report: BundleReport) -> None:
    if records is None:
        report.custody = "unchecked"
        report.warnings.append("no audit log for this case: chain of custody not checked")
        return
    record = find_record(records, collection)
    if record is None:
        report.custody = "missing"
        report.problems.append(f"no chain-of-custody record for collection {collection.id} in the audit log")
        return
    params = record.get("params") or {}
    bad = []
    if params.get("bundle_sha256") != bundle_sha:
        bad.append(f"bundle SHA-256 {bundle_sha} != recorded {params.get('bundle_sha256')}")
    if params.get("manifest_sha256") != seal.get("manifest_sha256"):
        bad.append(f"manifest SHA-256 {seal.get('manifest_sha256')} != recorded {params.get('manifest_sha256')}")
    if record_kind(record) != seal_kind(seal):
        bad.append(f"sealed as {seal_kind(seal)} evidence, recorded as {record_kind(record)}")
    if bad:
        report.custody = "mismatch"
        report.problems.append(f"{collection.bundle_path.name}: differs from the audit log (seq "
                               f"{record.get('seq')}): " + "; ".join(bad))
    else:
        report.custody = "recorded"


def verify_case(
    case_id: str,
    *,
    identities: list[X25519PrivateKey] | None = None,
    tenant: str | None = None,
    host: str | None = None,
    custody: bool = True,
    key: str | list[str] | None = None,
) -> list[BundleReport]:
    """Verify every sealed collection of a case (optionally one tenant/host).

    Custody records come only from the verified, signed prefix of the audit log
    (``key``: verifier key(s) to trust, default the responder's). A case without
    an audit log fails custody unless ``custody=False`` (``--no-custody``).
    """
    collections = list_collections(case_id, tenant=tenant, host=host)
    view = custody_view(case_id, key=key) if custody else None
    records = view.records if view is not None else None
    reports = [verify_collection(case_id, c, identities=identities, records=records) for c in collections]
    for report in reports:
        if view is None:
            report.custody = "skipped"
            report.warnings = [w for w in report.warnings if not w.startswith("no audit log")]
            report.warnings.append("--no-custody: the chain of custody was not checked")
        elif view.records is None:
            report.warnings = [w for w in report.warnings if not w.startswith("no audit log")]
            report.problems.append("no audit log for this case: the chain of custody cannot be confirmed "
                                   "(pass --no-custody to check the bundle alone)")
        elif view.problem:
            if report.custody == "missing":
                report.problems.append(f"the audit log does not verify ({view.problem}); only its signed "
                                       f"prefix (seq 1..{view.signed_size}) counts for custody")
            else:
                report.warnings.append(f"the audit log does not fully verify: {view.problem}")
    if records is not None:
        known = {(c.tenant, c.host, c.id) for c in collections}
        for record in records:
            params = record.get("params") or {}
            key = (record.get("tenant"), record.get("host"), params.get("collection_id"))
            if (tenant is None or key[0] == tenant) and (host is None or key[1] == host) and key not in known:
                missing = BundleReport(_ghost(case_id, params), str(key[0]), str(key[1]), custody="recorded")
                missing.problems.append(
                    f"bundle {params.get('bundle')} is recorded in the audit log (seq {record.get('seq')}) "
                    "but missing on disk"
                )
                reports.append(missing)
    if not reports:
        raise InputError(f"case {case_id}: no evidence bundles to verify")
    return reports


def _ghost(case_id: str, params: dict[str, Any]) -> Collection:
    from ir_toolkit.home import case_dir

    return Collection(case_dir(case_id) / str(params.get("bundle") or "evidence/?/?/?"))
