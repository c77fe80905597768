#!/usr/bin/env python3
"""Verify an irkit tenant export with nothing but the log's public key.

    python3 verify_export.py EXPORT_DIR --key VKEY [--checkpoint MY_SAVED.note] [--witness-key WKEY]

This file stands alone: Python 3.9+ and the ``cryptography`` package, no irkit. It is copied into
every export (``verify_export.py``) and is what ``irkit audit verify-export`` runs.

An export holds one tenant's records of a case's audit log exactly as logged, and proves:

* **authentic**: ``checkpoint.note`` (origin, tree size N, Merkle root) carries a valid Ed25519
  signed-note signature by a key you pinned (``--key``); cosignatures by witnesses you name
  (``--witness-key``) are checked too (c2sp.org/tlog-cosignature);
* **unaltered, in place**: each record's leaf hash SHA-256(0x00 || line) has an RFC 6962 / RFC 9162
  inclusion proof at index seq-1 against that root, the line is canonical JSON (RFC 8785), and
  consecutive records chain (``prev``);
* **yours**: every record names your tenant (or is one of the log's own key records);
* **complete, as signed**: ``manifest.note``, signed by the same key, commits to the log origin, N,
  the root, your tenant, the number of your records and the SHA-256 of the list of their leaf indices.
  A record dropped from the export (or one added) no longer matches it;
* **append-only since what you hold**: with ``--checkpoint`` (a checkpoint you saved earlier), an RFC
  9162 consistency proof shows the exported tree extends it; a tree smaller than yours, or a different
  root at the same size, fails (rollback, fork).

Limits (also in docs/audit-report.md): the manifest is the MSP's signed statement of which leaves are
yours; you cannot check it against the other tenants' leaves without seeing them. What it gives you is
a signed, non-repudiable claim: should one of your records ever turn up at an index the manifest
leaves out, the manifest proves the omission. Proofs contain other tenants' leaf hashes (never their
records); a leaf hash of a record with little entropy could be confirmed by someone who guesses the
whole record, timestamp included.

Exit codes: 0 verified, 1 verification failed (one line per problem), 2 unusable input.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

EXPORT_FORMAT = "irkit-tenant-export/v1"
MANIFEST_HEADER = "irkit-tenant-manifest/v1"
LOG_RECORD_ACTIONS = ("audit.log_created", "audit.key_rotated", "audit.key_activated")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")
_SIZE = re.compile(r"^(0|[1-9][0-9]*)$")
_KEYNAME = re.compile(r"^[^\s+]+$")
MAX_SKEW = 300


class Unusable(Exception):
    """The input cannot be checked at all (exit 2)."""


# --------------------------------------------------------------------------- primitives


def b64d(text: str) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise ValueError("invalid base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise ValueError("non-canonical base64")
    return raw


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def verify_inclusion(leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2."""
    if index < 0 or index >= size or len(leaf) != 32 or len(root) != 32 or any(len(p) != 32 for p in proof):
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = _node(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(size1: int, size2: int, proof: list[bytes], root1: bytes, root2: bytes) -> bool:
    """RFC 9162 §2.1.4.2 (a proof from size 0 is never valid)."""
    if size1 <= 0 or size1 > size2:
        return False
    if size1 == size2:
        return not proof and root1 == root2
    if not proof or len(root1) != 32 or len(root2) != 32 or any(len(p) != 32 for p in proof):
        return False
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = _node(c, fr), _node(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = _node(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == root1 and sr == root2 and sn == 0


def canonical(value: Any) -> str:
    """RFC 8785 for the values an audit record may hold (no floats): keys sorted by UTF-16 units."""
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: kv[0].encode("utf-16-be"))
        return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + canonical(v) for k, v in items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(canonical(v) for v in value) + "]"
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return json.dumps(value, ensure_ascii=False)
    raise ValueError(f"{type(value).__name__} is not allowed in a record")


def _no_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _no_float(text: str) -> Any:
    raise ValueError("floats are not allowed")


def parse_record(line: bytes) -> dict[str, Any]:
    try:
        value = json.loads(line.decode("utf-8"), object_pairs_hook=_no_dupes, parse_float=_no_float,
                           parse_constant=_no_float)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"not a valid record: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    if canonical(value).encode("utf-8") != line:
        raise ValueError("not canonical JSON (RFC 8785)")
    return value


# --------------------------------------------------------------------------- keys and notes


class Key:
    def __init__(self, vkey: str) -> None:
        parts = vkey.strip().split("+", 2)
        if len(parts) != 3 or not _KEYNAME.match(parts[0]) or not re.fullmatch(r"[0-9a-fA-F]{8}", parts[1]):
            raise Unusable(f"malformed verifier key {vkey!r}: expected NAME+KEYID+KEY")
        try:
            raw = b64d(parts[2])
        except ValueError:
            raise Unusable(f"malformed verifier key {vkey!r}: bad base64") from None
        if len(raw) != 33 or raw[0] not in (0x01, 0x04):
            raise Unusable(f"verifier key {vkey!r}: not an Ed25519 note or cosignature key")
        self.name, self.alg, self.public = parts[0], raw[0], raw[1:]
        self.key_id = hashlib.sha256(self.name.encode() + b"\n" + raw).digest()[:4]
        if self.key_id.hex() != parts[1].lower():
            raise Unusable(f"verifier key {vkey!r}: key ID does not match the key")
        self.vkey = vkey.strip()
        self._key = Ed25519PublicKey.from_public_bytes(self.public)

    def check(self, text: bytes, sig: bytes, now: int) -> bool:
        try:
            if self.alg == 0x01:
                if len(sig) != 64:
                    return False
                self._key.verify(sig, text)
                return True
            if len(sig) != 72:
                return False
            ts = int.from_bytes(sig[:8], "big")
            if ts >= 1 << 63 or ts > now + MAX_SKEW:
                return False
            self._key.verify(sig[8:], b"cosignature/v1\ntime %d\n" % ts + text)
            return True
        except InvalidSignature:
            return False

    def fingerprint(self) -> str:
        return "SHA256:" + base64.b64encode(hashlib.sha256(self.public).digest()).decode().rstrip("=")


def open_note(msg: str, keys: list[Key], now: int | None = None) -> tuple[str, list[Key]]:
    """The note's text and the given keys that validly signed it (c2sp.org/signed-note rules:
    unknown keys are ignored; a failing signature by a known key rejects the note)."""
    now = int(time.time()) if now is None else now
    if _CONTROL.search(msg):
        raise ValueError("malformed note: control character")
    split = msg.rfind("\n\n")
    if split < 0 or not msg.endswith("\n"):
        raise ValueError("malformed note: no signature block")
    text, block = msg[: split + 1], msg[split + 2:]
    good: list[Key] = []
    for line in block[:-1].split("\n"):
        if not line.startswith("\u2014 "):
            raise ValueError("malformed note: signature line does not start with an em dash")
        name, sep, b64 = line[2:].partition(" ")
        raw = b64d(b64) if sep else b""
        if len(raw) < 5:
            raise ValueError("malformed note: bad signature line")
        for key in keys:
            if key.name == name and key.key_id == raw[:4]:
                if not key.check(text.encode("utf-8"), raw[4:], now):
                    raise ValueError(f"invalid signature by {key.vkey}")
                if key not in good:
                    good.append(key)
    return text, good


def parse_checkpoint(text: str) -> tuple[str, int, bytes]:
    lines = text[:-1].split("\n") if text.endswith("\n") else []
    if len(lines) < 3 or not _SIZE.match(lines[1]):
        raise ValueError("malformed checkpoint")
    root = b64d(lines[2])
    if len(root) != 32:
        raise ValueError("malformed checkpoint: root is not 32 bytes")
    return lines[0], int(lines[1]), root


def manifest_text(origin: str, size: int, root: bytes, tenant: str, indices: list[int]) -> str:
    """The signed body of a tenant manifest (shared with the exporter)."""
    listing = ",".join(str(i) for i in indices).encode("ascii")
    return (f"{MANIFEST_HEADER}\n{origin}\n{size}\n{base64.b64encode(root).decode()}\ntenant {tenant}\n"
            f"records {len(indices)}\nindices {hashlib.sha256(listing).hexdigest()}\n")


# --------------------------------------------------------------------------- the export


def verify_export(directory: str | Path, keys: list[str], *, checkpoint: str | Path | None = None,
                  witness_keys: list[str] | None = None, now: int | None = None) -> dict[str, Any]:
    """Check an export; returns {"ok", "problems", ...}. Raises Unusable for input it cannot read."""
    directory = Path(directory)
    trusted = [Key(k) for k in keys]
    if not trusted or any(k.alg != 0x01 for k in trusted):
        raise Unusable("--key must name the log's verifier key (an Ed25519 note key)")
    witnesses = [Key(k) for k in witness_keys or []]
    if any(w.alg != 0x04 for w in witnesses):
        raise Unusable("--witness-key must be a witness cosignature key")
    try:
        meta = json.loads((directory / "export.json").read_text(encoding="utf-8"))
        note = (directory / "checkpoint.note").read_text(encoding="utf-8")
        manifest_note = (directory / "manifest.note").read_text(encoding="utf-8")
        lines = (directory / "records.jsonl").read_bytes().split(b"\n")
    except (OSError, ValueError) as exc:
        raise Unusable(f"{directory}: not a readable export ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise Unusable(f"{directory}: not an {EXPORT_FORMAT} export")
    problems: list[str] = []
    out: dict[str, Any] = {"ok": False, "tenant": meta.get("tenant"), "problems": problems}

    # 1. the checkpoint
    try:
        text, signers = open_note(note, trusted + witnesses, now)
        origin, size, root = parse_checkpoint(text)
    except ValueError as exc:
        problems.append(f"checkpoint.note: {exc}")
        return out
    if not any(k in trusted for k in signers):
        problems.append("checkpoint.note: no signature by a trusted key (--key)")
    cosigners = [k for k in signers if k in witnesses]
    out.update(origin=origin, tree_size=size, root=base64.b64encode(root).decode(),
               signed_by=[k.vkey for k in signers if k in trusted], cosigned_by=[k.vkey for k in cosigners],
               key_fingerprints=[k.fingerprint() for k in trusted])
    tenant = meta.get("tenant")
    if not isinstance(tenant, str) or not tenant or "\n" in tenant:
        problems.append("export.json: no tenant")
        return out

    # 2. the records: canonical, yours, included at their index, chained
    if lines and lines[-1] == b"":
        lines.pop()
    else:
        problems.append("records.jsonl: does not end with a newline")
    proofs = meta.get("proofs") if isinstance(meta.get("proofs"), dict) else {}
    seen: dict[int, bytes] = {}
    prev_line: dict[int, dict[str, Any]] = {}
    for n, line in enumerate(lines, start=1):
        try:
            record = parse_record(line)
        except ValueError as exc:
            problems.append(f"records.jsonl line {n}: {exc}")
            continue
        seq = record.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= size:
            problems.append(f"records.jsonl line {n}: seq {seq!r} is not inside the tree of size {size}")
            continue
        if seq in seen:
            problems.append(f"seq {seq}: appears twice")
            continue
        if record.get("tenant") != tenant and not (record.get("tenant") is None
                                                    and record.get("action") in LOG_RECORD_ACTIONS):
            problems.append(f"seq {seq}: the record is not of tenant {tenant} (taken from another tenant or "
                            "the case)")
        leaf = leaf_hash(line)
        try:
            proof = [b64d(p) for p in proofs.get(str(seq), [])]
        except (ValueError, TypeError, AttributeError):
            proof = []
        if not verify_inclusion(leaf, seq - 1, size, proof, root):
            problems.append(f"seq {seq}: not in the signed tree at index {seq - 1} (the record was altered, or "
                            "its proof is wrong)")
        seen[seq] = leaf
        prev_line[seq] = record
    for seq, record in prev_line.items():
        if seq - 1 in seen and record.get("prev") != seen[seq - 1].hex():
            problems.append(f"seq {seq}: prev does not chain to seq {seq - 1}")
    tenant_seqs = sorted(s for s, r in prev_line.items() if r.get("tenant") == tenant)
    out["records"] = len(tenant_seqs)

    # 3. completeness: the signed manifest
    try:
        mtext, msigners = open_note(manifest_note, trusted, now)
    except ValueError as exc:
        problems.append(f"manifest.note: {exc}")
        mtext, msigners = "", []
    if mtext and not msigners:
        problems.append("manifest.note: no signature by a trusted key (--key)")
    indices = meta.get("indices")
    if not isinstance(indices, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
        problems.append("export.json: no index list")
        indices = []
    if mtext and mtext != manifest_text(origin, size, root, tenant, indices):
        problems.append("manifest.note: does not match this checkpoint, tenant and index list (the export was "
                        "changed after it was signed)")
    expected = sorted(indices)
    got = [s - 1 for s in tenant_seqs]
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if missing:
        problems.append(f"records missing from the export (dropped): seq {', '.join(str(i + 1) for i in missing[:20])}"
                        + (" ..." if len(missing) > 20 else ""))
    if extra:
        problems.append(f"records not in the signed manifest: seq {', '.join(str(i + 1) for i in extra[:20])}")

    # 4. consistency with the client's own earlier checkpoint
    consistency = meta.get("consistency") if isinstance(meta.get("consistency"), dict) else {}
    if checkpoint is not None:
        try:
            ctext, csigners = open_note(Path(checkpoint).read_text(encoding="utf-8"), trusted + witnesses, now)
            corigin, csize, croot = parse_checkpoint(ctext)
        except OSError as exc:
            raise Unusable(f"--checkpoint {checkpoint}: {exc}") from None
        except ValueError as exc:
            problems.append(f"--checkpoint: {exc}")
        else:
            if not any(k in trusted for k in csigners):
                problems.append("--checkpoint: no signature by a trusted key")
            if corigin != origin:
                problems.append(f"--checkpoint is for {corigin!r}, not {origin!r}")
            elif csize > size:
                problems.append(f"the export's tree (size {size}) is smaller than your checkpoint (size {csize}): "
                                "rollback or truncation")
            else:
                try:
                    cproof = [b64d(p) for p in consistency.get(str(csize), [])] if csize < size else []
                except (ValueError, TypeError):
                    cproof = []
                if not verify_consistency(csize, size, cproof, croot, root):
                    problems.append(f"the exported tree (size {size}) is not an append-only extension of your "
                                    f"checkpoint (size {csize}): fork or rewritten history"
                                    + ("" if str(csize) in consistency or csize == size
                                       else " (the export has no proof from that size)"))
                out["consistent_with"] = csize
                cosigners += [k for k in csigners if k in witnesses and k not in cosigners]
    # earlier checkpoints shipped with the export (kept phase ends, witnesses' copies)
    earlier_dir = directory / "checkpoints"
    for path in sorted(earlier_dir.glob("*.note")) if earlier_dir.is_dir() else []:
        try:
            etext, esigners = open_note(path.read_text(encoding="utf-8"), trusted + witnesses, now)
            eorigin, esize, eroot = parse_checkpoint(etext)
            eproof = [b64d(p) for p in consistency.get(str(esize), [])]
        except (OSError, ValueError, TypeError) as exc:
            problems.append(f"checkpoints/{path.name}: {exc}")
            continue
        if not any(k in trusted for k in esigners):
            continue  # not ours to judge (no trusted signature): ignored
        if eorigin != origin or not verify_consistency(esize, size, eproof, eroot, root):
            problems.append(f"checkpoints/{path.name}: the exported tree is not consistent with this signed "
                            f"checkpoint (size {esize})")
            continue
        cosigners += [k for k in esigners if k in witnesses and k not in cosigners]
    if witnesses and not cosigners:
        problems.append("no checkpoint is cosigned by the given witness key(s)")
    out["cosigned_by"] = [k.vkey for k in cosigners]
    out["ok"] = not problems
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="verify_export.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("directory")
    parser.add_argument("--key", action="append", required=True, metavar="VKEY",
                        help="the log's verifier key, obtained out of band (repeatable)")
    parser.add_argument("--checkpoint", metavar="FILE", help="a checkpoint of this log you saved earlier")
    parser.add_argument("--witness-key", action="append", default=[], metavar="VKEY",
                        help="require a cosignature by this witness (repeatable)")
    parser.add_argument("--format", choices=["text", "json"], default="text")
    args = parser.parse_args(argv)
    try:
        result = verify_export(args.directory, args.key, checkpoint=args.checkpoint, witness_keys=args.witness_key)
    except Unusable as exc:
        print(f"verify-export: error: {exc}", file=sys.stderr)
        return 2
    if args.format == "json":
        print(json.dumps(result, indent=2))
    else:
        print(f"{'VERIFIED' if result['ok'] else 'FAILED'}: tenant {result.get('tenant')!r}, "
              f"{result.get('records', 0)} records, log {result.get('origin')!r} size {result.get('tree_size')}")
        for problem in result["problems"]:
            print(f"  problem: {problem}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
