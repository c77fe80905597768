"""A client-verifiable export of one tenant's audit records (``irkit audit export --tenant``).

The directory it writes::

    records.jsonl        the tenant's records, byte for byte as logged (plus the log's own key records)
    checkpoint.note      the signed (and, where a witness cosigned this size, cosigned) checkpoint, size N
    manifest.note        signed by the log key: origin, N, root, tenant, record count, SHA-256 of the indices
    export.json          indices, RFC 6962 inclusion proofs per seq, consistency proofs from earlier sizes
    checkpoints/*.note   earlier signed/witnessed checkpoints of the log (each with a consistency proof)
    verify_export.py     the stand-alone verifier (needs only Python and `cryptography`)
    README.txt           how to check it

Other tenants' records are never in it; their leaf hashes appear only inside proofs (and as the
``prev`` of a record that follows one of theirs). See :mod:`ir_toolkit.audit.clientverify` for what a
client can and cannot conclude.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ir_toolkit.audit import clientverify, layout
from ir_toolkit.tlog.merkle import consistency_proof, leaf_hash, node_hash
from ir_toolkit.tlog.note import NoteError, Signer, b64encode, parse_checkpoint, parse_note, sign_note
from ir_toolkit.errors import InputError, VerificationFailed
from ir_toolkit.fsutil import write_atomic
from ir_toolkit.home import validate_case_id

LOG_RECORD_ACTIONS = clientverify.LOG_RECORD_ACTIONS


def _levels(leaves: list[bytes]) -> list[list[bytes]]:
    """The RFC 6962 tree bottom-up: a lone last node is carried up unchanged (never duplicated)."""
    levels = [leaves]
    while len(levels[-1]) > 1:
        cur = levels[-1]
        nxt = [node_hash(cur[i], cur[i + 1]) for i in range(0, len(cur) - 1, 2)]
        if len(cur) % 2:
            nxt.append(cur[-1])
        levels.append(nxt)
    return levels


def inclusion_from_levels(levels: list[list[bytes]], index: int) -> list[bytes]:
    """PATH(index, D[n]) from precomputed levels (O(log n) per proof)."""
    proof = []
    for level in levels[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            proof.append(level[sibling])
        index >>= 1
    return proof


def _note_for_size(directory: Path, size: int) -> tuple[str, list[str]]:
    """The note to export for ``size``: a witness-cosigned one if there is, else the log's own."""
    candidates = sorted((directory / layout.WITNESSED_DIR).glob(f"*-{size}.note")) if \
        (directory / layout.WITNESSED_DIR).is_dir() else []
    candidates += [directory / layout.CHECKPOINT_FILE, directory / layout.CHECKPOINTS_DIR / f"{size}.note"]
    best, best_sigs = None, -1
    for path in candidates:
        try:
            text = path.read_text(encoding="utf-8")
            body, sigs = parse_note(text)
            if parse_checkpoint(body).size != size:
                continue
        except (OSError, NoteError):
            continue
        if len(sigs) > best_sigs:
            best, best_sigs = text, len(sigs)
    if best is None:
        raise VerificationFailed(f"no signed checkpoint of size {size} to export against (run irkit audit "
                                 "checkpoint --sign)")
    return best, [p.name for p in candidates]


def _earlier_notes(directory: Path, size: int) -> dict[int, str]:
    """Kept and witnessed checkpoints smaller than ``size`` (one per size, the most signed)."""
    found: dict[int, tuple[int, str]] = {}
    for path in layout.local_checkpoint_files(directory):
        try:
            text = path.read_text(encoding="utf-8")
            body, sigs = parse_note(text)
            cp = parse_checkpoint(body)
        except (OSError, NoteError):
            continue
        if 0 < cp.size < size and len(sigs) > found.get(cp.size, (-1, ""))[0]:
            found[cp.size] = (len(sigs), text)
    return {s: t for s, (_, t) in found.items()}


def build_export(case_id: str, tenant: str, out_dir: Path, signer: Signer, *,
                 since: Sequence[Path] = (), keys: Sequence[str] | None = None) -> dict[str, Any]:
    """Write the export of ``tenant`` to ``out_dir`` (new or empty); returns a summary."""
    from ir_toolkit.audit.verify import verify_case

    validate_case_id(case_id)
    result = verify_case(case_id, key=list(keys) if keys else None)
    if not result.ok:
        raise VerificationFailed(f"audit log of case {case_id} is INVALID: {result.reason} (nothing exported)")
    if signer.verifier_key() not in result.log_keys[-1:]:
        raise InputError(f"the signing key {signer.verifier_key()} is not the log's current key "
                         f"({', '.join(result.log_keys[-1:])}): the client could not verify the manifest")
    directory = layout.audit_dir(case_id)
    raw = layout.log_path(case_id).read_bytes()
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    size = result.size
    lines = lines[:size]
    leaves = [leaf_hash(line) for line in lines]
    records = [json.loads(line) for line in lines]
    indices = [i for i, r in enumerate(records) if r.get("tenant") == tenant]
    if not indices:
        raise InputError(f"case {case_id} has no records of tenant {tenant!r}")
    log_indices = [i for i, r in enumerate(records) if r.get("tenant") is None and r.get("action") in LOG_RECORD_ACTIONS]
    chosen = sorted(indices + log_indices)

    note, _ = _note_for_size(directory, size)
    body, _ = parse_note(note)
    cp = parse_checkpoint(body)
    levels = _levels(leaves)
    if levels[-1][0] != cp.root:
        raise VerificationFailed("the checkpoint's root does not match the records (nothing exported)")
    proofs = {str(i + 1): [b64encode(h) for h in inclusion_from_levels(levels, i)] for i in chosen}
    earlier = _earlier_notes(directory, size)
    for path in since:
        try:
            text = Path(path).read_text(encoding="utf-8")
            held = parse_checkpoint(parse_note(text)[0])
        except (OSError, NoteError) as exc:
            raise InputError(f"--since {path}: {exc}") from None
        if held.origin != cp.origin:
            raise InputError(f"--since {path}: a checkpoint of {held.origin!r}, not {cp.origin!r}")
        if held.size > size:
            raise InputError(f"--since {path}: size {held.size} is larger than the log ({size})")
        if 0 < held.size < size:
            earlier.setdefault(held.size, text)
    consistency = {str(m): [b64encode(h) for h in consistency_proof(leaves, m)] for m in sorted(earlier)}

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"--out {out_dir}: exists and is not an empty directory")
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (out_dir / "checkpoints").mkdir(mode=0o700, exist_ok=True)
    manifest = sign_note(clientverify.manifest_text(cp.origin, size, cp.root, tenant, indices), [signer])
    meta = {
        "format": clientverify.EXPORT_FORMAT,
        "generated": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "case": case_id, "origin": cp.origin, "tenant": tenant,
        "tree_size": size, "root": b64encode(cp.root),
        "verifier_key": signer.verifier_key(),
        "indices": indices, "log_record_indices": log_indices,
        "proofs": proofs, "consistency": consistency,
    }
    write_atomic(out_dir / "records.jsonl", b"".join(lines[i] + b"\n" for i in chosen), mode=0o644)
    write_atomic(out_dir / "checkpoint.note", note.encode("utf-8"), mode=0o644)
    write_atomic(out_dir / "manifest.note", manifest.encode("utf-8"), mode=0o644)
    write_atomic(out_dir / "export.json", (json.dumps(meta, indent=1) + "\n").encode(), mode=0o644)
    for m, text in earlier.items():
        write_atomic(out_dir / "checkpoints" / f"{m}.note", text.encode("utf-8"), mode=0o644)
    source = Path(clientverify.__file__).read_bytes()
    write_atomic(out_dir / "verify_export.py", source, mode=0o755)
    write_atomic(out_dir / "README.txt", _readme(case_id, tenant, signer.verifier_key()).encode(), mode=0o644)
    return {"directory": str(out_dir), "tenant": tenant, "records": len(indices), "tree_size": size,
            "root": b64encode(cp.root), "origin": cp.origin, "earlier_checkpoints": sorted(earlier),
            "verifier_key": signer.verifier_key()}


def _readme(case_id: str, tenant: str, vkey: str) -> str:
    return f"""Audit records of tenant {tenant} in incident case {case_id}, exported by irkit.

Check them with the log's verifier key, which you should have received out of band
(engagement letter, ticket), NOT from this directory:

    python3 verify_export.py . --key 'THE-VERIFIER-KEY' [--checkpoint YOUR-SAVED-CHECKPOINT.note]

(needs Python 3.9+ and the `cryptography` package; `irkit audit verify-export` does the same).
The key this export was made with is {vkey}: compare it with the one you hold.

It checks that every record is signed into the log at its position and unaltered, that each
is yours, that none of the records the MSP's signed manifest lists as yours is missing, and,
with --checkpoint, that the log only grew since the checkpoint you saved. Keep checkpoint.note:
it lets you check the next export against this one.
"""
