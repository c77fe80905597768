"""Verify a case's audit log: records, hash chain, Merkle tree, signed checkpoints, anchors.

What is checked, in this order of evidence:

1. every line is a canonical v1 record of this case with the next seq, and its
   ``prev`` is the leaf hash of the record before (the first bad record is named:
   a record whose successor's ``prev`` no longer matches it was modified);
2. the key schedule in the records (the first record's key, then rotation
   records, each authorised by a checkpoint signed with the old key);
3. every checkpoint (local, kept, witnessed, and any given with
   ``checkpoint_file``) has the log's origin, a valid signature by the key valid
   for its size, and the Merkle root of the records at its size;
4. at least one of them is signed by a *trusted* key (``key`` given by the
   auditor, else the log keys a witness pinned (``witness_dir``), else the
   responder's current ``$IRKIT_HOME/keys/signing.vkey`` and the keys the signed
   rotation chain links to it - that last one is *self-attested*: a file next to
   the log, and the verdict says so);
5. no record is beyond the largest valid checkpoint (an unsigned tail is what a
   record appended without the key looks like), and no record is one that a
   recovery flagged as appended without the key (``audit.recovered`` with
   ``unauthenticated`` ranges: the line had no valid writer MAC);
6. external checkpoints (a witness's or an auditor's saved copy) anchor the log:
   a log shorter than one of them was truncated or rolled back; a validly signed
   checkpoint that disagrees with the records while another one agrees is a fork,
   and both notes plus the consistency proof are written out as evidence. Records
   beyond every external checkpoint are reported as an *unanchored tail*. With
   ``require_anchor`` a missing external checkpoint (or witness state) is a
   problem, not a note.

A valid result names what it is anchored to (:attr:`VerifyResult.anchors`).
:func:`verified_records` gives the records of the verified, signed prefix for
decisions (custody, the evidence gate) made outside a writing process.

Large logs are scanned by one worker process per core (parse, canonical check
and leaf hash per line); the chain and the Merkle tree are then checked in the
parent.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import pickle
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ir_toolkit import childenv
from ir_toolkit.audit import layout
from ir_toolkit.audit.keyschedule import KeySchedule
from ir_toolkit.tlog.merkle import EMPTY_ROOT, consistency_proof, verify_consistency
from ir_toolkit.tlog.note import (
    Checkpoint,
    InvalidNoteSignature,
    NoteError,
    UnverifiedNote,
    Verifier,
    b64encode,
    open_note,
    parse_checkpoint,
    parse_note,
    parse_vkey,
)
from ir_toolkit.audit.records import (
    GENESIS_PREV,
    RESERVED_PREFIX,
    RecordError,
    check_fields,
    decode_line,
)
from ir_toolkit.errors import InputError
from ir_toolkit.home import validate_case_id

PARALLEL_MIN_BYTES = 48 * 1024 * 1024
_ZERO = bytes(32)


@dataclass
class Problem:
    seq: int | None
    kind: str
    message: str

    def line(self) -> str:
        return f"seq {self.seq}: {self.message}" if self.seq is not None else self.message


@dataclass
class VerifyResult:
    """The outcome of :func:`verify_case`; ``ok`` is True only when nothing is wrong."""

    case: str
    origin: str | None = None
    size: int = 0                      # complete records on disk
    root: str | None = None            # base64 root of all complete records
    signed_size: int = 0               # largest size covered by a valid checkpoint
    anchored_size: int = 0             # largest size covered by a valid external checkpoint
    trusted_keys: list[str] = field(default_factory=list)
    log_keys: list[str] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    evidence_dir: str | None = None
    anchors: list[str] = field(default_factory=list)       # what a VALID verdict rests on
    self_attested: bool = False                             # trust only from files next to the log
    unauthenticated: list[list[int]] = field(default_factory=list)   # flagged seq ranges

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_bad_seq(self) -> int | None:
        seqs = [p.seq for p in self.problems if p.seq is not None]
        return min(seqs) if seqs else None

    @property
    def reason(self) -> str | None:
        if not self.problems:
            return None
        first = self.first_bad_seq
        for p in self.problems:
            if p.seq == first:
                return p.line()
        return self.problems[0].line()

    @property
    def unanchored(self) -> tuple[int, int] | None:
        if self.anchored_size >= self.size:
            return None
        return (self.anchored_size + 1, self.size)

    def add(self, seq: int | None, kind: str, message: str) -> None:
        self.problems.append(Problem(seq, kind, message))

    def anchor_text(self) -> str:
        return "; ".join(self.anchors) if self.anchors else "nothing"

    def summary(self) -> str:
        if self.ok:
            what = "self-attested" if self.self_attested else "anchored"
            return (f"audit log of case {self.case} is valid ({self.size} records), {what}: "
                    f"{self.anchor_text()}")
        return f"audit log of case {self.case} is INVALID: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(ok=self.ok, first_bad_seq=self.first_bad_seq, reason=self.reason,
                    unanchored=list(self.unanchored) if self.unanchored else None)
        return data


# --------------------------------------------------------------------------- scanning


@dataclass
class _Scan:
    count: int = 0                       # complete lines
    hashes: bytes = b""                  # 32 bytes per complete line
    prevs: bytes = b""                   # 32 bytes per line parsed OK (zeros otherwise)
    good: int = 0                        # leading lines that parsed and passed the schema
    problem: tuple[int, str] | None = None
    specials: list[dict[str, Any]] = field(default_factory=list)
    torn: bytes | None = None


def scan_range(path: str, start: int, end: int, first_seq: int, case_id: str) -> _Scan:
    """Parse, check and hash the complete lines in ``[start, end)`` (``first_seq`` is the first one's seq)."""
    sha256 = hashlib.sha256
    hashes = bytearray()
    prevs = bytearray()
    specials: list[dict[str, Any]] = []
    problem: tuple[int, str] | None = None
    good = 0
    seq = first_seq
    consumed = 0
    torn: bytes | None = None
    limit = end - start
    with open(path, "rb") as fh:
        fh.seek(start)
        for raw in fh:
            if consumed >= limit:
                break
            consumed += len(raw)
            if raw[-1:] != b"\n":
                torn = raw
                break
            line = raw[:-1]
            hashes += sha256(b"\x00" + line).digest()
            if problem is None:
                try:
                    record = decode_line(line)
                    check_fields(record, seq=seq, case=case_id)
                except RecordError as exc:
                    problem = (seq, str(exc))
                else:
                    prevs += bytes.fromhex(record["prev"])
                    good += 1
                    if seq == 1 or record["action"].startswith(RESERVED_PREFIX):
                        specials.append(record)
            seq += 1
    count = seq - first_seq
    return _Scan(count, bytes(hashes), bytes(prevs), good, problem, specials, torn)


def _count_newlines(path: Path, start: int, end: int) -> int:
    n = 0
    with open(path, "rb") as fh:
        fh.seek(start)
        left = end - start
        while left > 0:
            block = fh.read(min(left, 16 << 20))
            if not block:
                break
            n += block.count(b"\n")
            left -= len(block)
    return n


def _boundaries(path: Path, size: int, parts: int) -> list[int]:
    cuts = [0]
    with open(path, "rb") as fh:
        for i in range(1, parts):
            fh.seek(size * i // parts)
            fh.readline()
            pos = fh.tell()
            if cuts[-1] < pos < size:
                cuts.append(pos)
    cuts.append(size)
    return cuts


def scan_log(path: Path, case_id: str, *, workers: int | None = None) -> _Scan:
    """Scan a whole log file (in parallel when it is large)."""
    size = path.stat().st_size
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if size >= PARALLEL_MIN_BYTES else 1
    if workers <= 1:
        return scan_range(str(path), 0, size, 1, case_id)
    cuts = _boundaries(path, size, workers)
    first_seqs = [1]
    for a, b in zip(cuts[:-2], cuts[1:-1], strict=True):
        first_seqs.append(first_seqs[-1] + _count_newlines(path, a, b))
    # Plain worker processes (not multiprocessing): no dependence on how __main__ was started.
    procs = []
    for a, b, first in zip(cuts[:-1], cuts[1:], first_seqs, strict=True):
        cmd = [sys.executable, "-m", "ir_toolkit.audit.verify", "--scan-worker", str(path), str(a), str(b),
               str(first), case_id]
        procs.append(childenv.popen(cmd, python=True, stdout=childenv.PIPE, stderr=childenv.PIPE))
    parts = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"audit scan worker failed: {err.decode(errors='replace').strip()[-500:]}")
        parts.append(_Scan(**pickle.loads(out)))
    merged = _Scan()
    hashes, prevs = [], []
    stop = False
    for part in parts:
        merged.count += part.count
        hashes.append(part.hashes)
        if not stop:
            prevs.append(part.prevs)
            merged.good += part.good
            merged.specials.extend(part.specials)
            if part.problem is not None:
                merged.problem = part.problem
                stop = True
        merged.torn = part.torn
    merged.hashes = b"".join(hashes)
    merged.prevs = b"".join(prevs)
    return merged


# --------------------------------------------------------------------------- chain


def _first_chain_break(scan: _Scan) -> tuple[int, str] | None:
    """The first record whose content or prev does not fit the chain, with the reason."""
    good, hashes, prevs = scan.good, scan.hashes, scan.prevs
    if good == 0:
        return None
    if prevs[:32] != bytes.fromhex(GENESIS_PREV):
        return (1, "the first record's prev is not 64 zeros")
    hv, pv = memoryview(hashes), memoryview(prevs)
    if pv[32: good * 32] == hv[: (good - 1) * 32]:
        return None
    # Find the first k (0-based index >= 1) with prevs[k] != hashes[k-1] by bisection on prefix equality.
    lo, hi = 1, good - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if pv[32: (mid + 1) * 32] == hv[: mid * 32]:
            lo = mid + 1
        else:
            hi = mid
    k = lo
    seq = k + 1
    if k + 1 < good and pv[(k + 1) * 32: (k + 2) * 32] == hv[k * 32: (k + 1) * 32]:
        return (seq - 1, f"record {seq - 1} was modified: it no longer matches the hash that seq {seq} "
                         "committed to (prev)")
    if k + 1 < good:
        return (seq, f"record {seq} was modified or replaced: its prev does not match seq {seq - 1} "
                     f"and seq {seq + 1}'s prev does not match it")
    return (seq - 1, f"seq {seq - 1} or seq {seq} was modified: seq {seq}'s prev does not match seq {seq - 1}")


# --------------------------------------------------------------------------- checkpoints


@dataclass
class _Cp:
    label: str
    text: str
    external: bool
    checkpoint: Checkpoint | None = None
    signed_by: Verifier | None = None      # the log key whose signature verified
    cosigners: list[Verifier] = field(default_factory=list)
    matches: bool | None = None            # root equals the records' root at its size
    error: str | None = None

    @property
    def valid_signature(self) -> bool:
        return self.signed_by is not None


def _load_checkpoints(directory: Path, external: Sequence[Path]) -> list[_Cp]:
    """External checkpoints first (their problems are the ones to report), then local ones."""
    found: list[_Cp] = []
    for path in external:
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            raise InputError(f"checkpoint file not found: {path}") from None
        except OSError as exc:
            raise InputError(f"cannot read checkpoint file {path}: {exc.strerror}") from None
        try:
            found.append(_Cp(str(path), data.decode("utf-8"), True))
        except UnicodeDecodeError:
            found.append(_Cp(str(path), "", True, error="not UTF-8"))
    for path in layout.local_checkpoint_files(directory):
        label = str(path.relative_to(directory.parent))
        try:
            found.append(_Cp(label, path.read_bytes().decode("utf-8"), False))
        except UnicodeDecodeError:
            found.append(_Cp(label, "", False, error="not UTF-8"))
        except OSError as exc:
            found.append(_Cp(label, "", False, error=f"unreadable: {exc.strerror}"))
    return found


def _check_signature(cp: _Cp, schedule: KeySchedule, witnesses: Sequence[Verifier]) -> None:
    assert cp.checkpoint is not None
    key = schedule.key_for_size(cp.checkpoint.size)
    known = ([key] if key else []) + list(witnesses)
    try:
        note = open_note(cp.text, known)
    except UnverifiedNote as exc:
        cp.error = _why_unverified(exc.note, schedule, cp.checkpoint.size)
        return
    except InvalidNoteSignature as exc:
        witness = next((w for w in witnesses if w.name == exc.name and w.key_id == exc.key_id), None)
        if witness is not None:
            cp.error = f"invalid or future-dated cosignature by witness {witness.vkey}"
        else:
            cp.error = f"invalid signature by the log key {exc.name}+{exc.key_id.hex()}"
        return
    except NoteError as exc:
        cp.error = str(exc)
        return
    cp.cosigners = [v for v in note.verified_by if v.is_cosigner]
    if key is None or key not in note.verified_by:
        cp.error = _why_unverified(note, schedule, cp.checkpoint.size)
        return
    cp.signed_by = key


def _why_unverified(note: Any, schedule: KeySchedule, size: int) -> str:
    names = sorted({f"{s.name}+{s.key_id.hex()}" for s in (*note.sigs, *note.unverified)})
    body = note.text.encode()
    for sig in note.unverified:
        for key in schedule.keys():
            if key.name == sig.name and key.key_id == sig.key_id:
                try:
                    raw = sig.raw
                except NoteError:
                    continue
                if key.verify(body, raw):
                    return (f"signed by the log key {key.vkey}, which is not valid for size {size} "
                            f"(valid for {schedule.valid_range(key)}; a rotation needs its rotation record)")
    if schedule.key_for_size(size) is None:
        return "the log names no signing key"
    return "no signature by the log's key (signed only by unknown key(s): " + (", ".join(names) or "none") + ")"


def _roots_at(hashes: bytes, sizes: Iterable[int]) -> dict[int, bytes]:
    """Merkle roots of the first ``n`` leaves for each requested ``n``.

    Builds the perfect-subtree levels once (one list comprehension per level,
    n - 1 node hashes in all), then each root folds the O(log n) perfect
    subtrees that make up its size.
    """
    wanted = sorted({s for s in sizes if s >= 0})
    top = max(wanted, default=0)
    level = [hashes[i:i + 32] for i in range(0, top * 32, 32)]
    levels = [level]
    sha256 = hashlib.sha256
    while len(level) > 1:
        it = iter(level)
        level = [sha256(b"\x01" + a + b).digest() for a, b in zip(it, it)]  # noqa: B905 - pairs
        levels.append(level)
    roots: dict[int, bytes] = {}
    for size in wanted:
        nodes: list[bytes] = []
        pos = 0
        for k in reversed(range(size.bit_length())):
            if size >> k & 1:
                nodes.append(levels[k][pos >> k])
                pos += 1 << k
        if not nodes:
            roots[size] = EMPTY_ROOT
            continue
        root = nodes[-1]
        for left in reversed(nodes[:-1]):
            root = sha256(b"\x01" + left + root).digest()
        roots[size] = root
    return roots


def _write_fork_evidence(base: Path, origin: str, bad: _Cp, good: _Cp, proof: list[bytes],
                         records_root: bytes) -> Path:
    assert bad.checkpoint and good.checkpoint
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    target = base / stamp
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    (target / "checkpoint-a.note").write_text(bad.text)
    (target / "checkpoint-b.note").write_text(good.text)
    s1, s2 = bad.checkpoint.size, good.checkpoint.size
    lines = [
        "SECURITY ERROR: two validly signed checkpoints for one log disagree (a fork).",
        f"origin: {origin}",
        f"checkpoint-a.note: size {s1}, root {b64encode(bad.checkpoint.root)}, from {bad.label}",
        f"checkpoint-b.note: size {s2}, root {b64encode(good.checkpoint.root)}, from {good.label}",
        f"The records on disk match checkpoint-b; their root at size {s1} is {b64encode(records_root)}.",
        f"consistency-proof.txt proves size {s1} (root {b64encode(records_root)}) -> size {s2} (checkpoint-b);",
        "it does not verify from checkpoint-a's root, so no single append-only log can have produced both.",
        "Whoever holds the log's signing key signed two different histories: treat the key as compromised.",
    ]
    (target / "README.txt").write_text("\n".join(lines) + "\n")
    proof_text = "".join(b64encode(h) + "\n" for h in proof)
    (target / "consistency-proof.txt").write_text(f"old {s1}\nnew {s2}\n{proof_text}")
    return target


# --------------------------------------------------------------------------- main entry


def _key_text(text: str) -> str:
    """A verifier key string, or ``@FILE``/a path of a file holding one."""
    candidate = text[1:] if text.startswith("@") else text
    if text.startswith("@") or ("/" in candidate and "+" not in candidate) or candidate.endswith(".vkey"):
        try:
            return Path(candidate).expanduser().read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise InputError(f"--key {candidate}: cannot read: {exc.strerror}") from None
    return text


def _trusted(key: str | Sequence[str] | None) -> list[Verifier]:
    from ir_toolkit.secrets.keystore import trusted_verifiers

    if key is None:
        found = trusted_verifiers()
        if not found:
            raise InputError("no trusted key: pass --key VKEY (the verifier key pinned for this case) "
                             "or run where the responder's keys are (irkit keys init)")
        return found
    keys = [key] if isinstance(key, str) else list(key)
    out = []
    for text in (_key_text(k) for k in keys):
        try:
            verifier = parse_vkey(text)
        except NoteError as exc:
            raise InputError(f"--key: {exc}") from None
        if verifier.is_cosigner:
            raise InputError(f"--key {text}: a witness cosigning key is not a log key (use --witness-key)")
        out.append(verifier)
    return out


def _witnesses(witness_keys: str | Sequence[str] | None) -> list[Verifier]:
    if not witness_keys:
        return []
    keys = [witness_keys] if isinstance(witness_keys, str) else list(witness_keys)
    out = []
    for text in keys:
        try:
            verifier = parse_vkey(text)
        except NoteError as exc:
            raise InputError(f"--witness-key: {exc}") from None
        if not verifier.is_cosigner:
            raise InputError(f"--witness-key {text}: not a witness cosignature key (type 0x04)")
        out.append(verifier)
    return out


def _witness_anchor(witness_dir: Path | str, case_id: str) -> tuple[str, _Cp | None, list[str]]:
    """(witness verifier key, the witness's latest cosigned checkpoint of this log, its pinned log keys)."""
    from ir_toolkit.audit.log import log_key_schedule
    from ir_toolkit.audit.witness import VKEY_FILE

    wdir = Path(witness_dir).expanduser()
    try:
        wkey = (wdir / VKEY_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        raise InputError(f"--witness-dir {wdir}: no witness key ({VKEY_FILE}) there") from None
    origin = log_key_schedule(case_id).origin
    if origin is None:
        return wkey, None, []
    log_dir = wdir / "logs" / layout.safe_name(origin)
    pinned: list[str] = []
    try:
        import json

        pinned = [str(k) for k in json.loads((log_dir / "log_keys.json").read_text())]
        state = json.loads((log_dir / "state.json").read_text())
        text = str(state["checkpoint"])
    except (OSError, ValueError, KeyError, TypeError):
        return wkey, None, pinned
    return wkey, _Cp(f"witness {wdir} (size {state.get('size')})", text, True), pinned


def verify_case(
    case_id: str,
    *,
    checkpoint_file: Path | str | Sequence[Path | str] | None = None,
    key: str | Sequence[str] | None = None,
    witness_keys: str | Sequence[str] | None = None,
    witness_dir: Path | str | None = None,
    require_anchor: bool = False,
    evidence_dir: Path | None = None,
    workers: int | None = None,
) -> VerifyResult:
    """Verify the audit log of ``case_id`` (see the module docstring). Never raises for tampering.

    ``checkpoint_file``: external checkpoint(s) (a witness's or an auditor's
    copy) that anchor the log. ``key``: verifier key(s) to trust; default: the
    log keys pinned by the witness in ``witness_dir``, else the responder's
    current key and its signed rotation chain in ``$IRKIT_HOME/keys``
    (self-attested). ``witness_keys``: when given, every external checkpoint
    must carry a valid cosignature by one of them. ``witness_dir``: a witness's
    state directory: its latest cosigned checkpoint of this log is an external
    checkpoint and its key a witness key. ``require_anchor``: no external
    checkpoint (or no witness state for this log) is a problem.
    Usage errors (no log, unreadable file, malformed key string) raise
    :class:`InputError`.
    """
    return _verify(case_id, checkpoint_file=checkpoint_file, key=key, witness_keys=witness_keys,
                   witness_dir=witness_dir, require_anchor=require_anchor, evidence_dir=evidence_dir,
                   workers=workers)[0]


def _verify(
    case_id: str,
    *,
    checkpoint_file: Path | str | Sequence[Path | str] | None = None,
    key: str | Sequence[str] | None = None,
    witness_keys: str | Sequence[str] | None = None,
    witness_dir: Path | str | None = None,
    require_anchor: bool = False,
    evidence_dir: Path | None = None,
    workers: int | None = None,
) -> tuple[VerifyResult, _Scan]:
    validate_case_id(case_id)
    directory = layout.audit_dir(case_id)
    path = directory / layout.LOG_FILE
    if not path.exists():
        raise InputError(f"case {case_id} has no audit log ({path})")
    witness_cp: _Cp | None = None
    dir_witness: list[Verifier] = []
    anchors: list[str] = []
    self_attested = False
    if witness_dir is not None:
        wkey, witness_cp, pinned = _witness_anchor(witness_dir, case_id)
        dir_witness = _witnesses([wkey])
        if key is None:
            if not pinned:
                raise InputError(f"--witness-dir {witness_dir}: the witness pinned no log key for this case "
                                 "(pass --key VKEY)")
            key = pinned
            anchors.append("log key(s) pinned by the witness: " + ", ".join(pinned))
    if key is not None and not anchors:
        anchors.append("key(s) given with --key")
    trusted = _trusted(key)
    if key is None:
        from ir_toolkit.home import keys_dir

        self_attested = True
        anchors.append(f"the responder's key file {keys_dir() / 'signing.vkey'} (and its signed rotation "
                       "chain), which lies next to the log: self-attested")
    witnesses = _witnesses(witness_keys)
    if checkpoint_file is None:
        external: list[Path] = []
    elif isinstance(checkpoint_file, (str, Path)):
        external = [Path(checkpoint_file)]
    else:
        external = [Path(p) for p in checkpoint_file]
    cps = _load_checkpoints(directory, external)
    if witness_cp is not None:
        cps.insert(0, witness_cp)

    result = VerifyResult(case=case_id, trusted_keys=[t.vkey for t in trusted], self_attested=self_attested)
    scan = scan_log(path, case_id, workers=workers)
    result.size = scan.count

    # 1. records and the chain
    if scan.problem is not None:
        result.add(scan.problem[0], "record", scan.problem[1])
    chain = _first_chain_break(scan)
    if chain is not None:
        result.add(chain[0], "chain", chain[1])
    # 2. key schedule (from the records before the first problem)
    schedule = KeySchedule()
    limit = min([scan.good] + [p.seq - 1 for p in result.problems if p.seq is not None])
    for record in scan.specials:
        if record["seq"] > limit:
            break
        try:
            schedule.observe(record)
        except RecordError as exc:
            result.add(record["seq"], "record", str(exc))
            break
    result.origin = schedule.origin
    result.log_keys = [k.vkey for k in schedule.keys()]
    if scan.count == 0:
        result.add(None, "record", "the log has no complete record")
    origin = schedule.origin

    # 3. checkpoints: syntax, origin, signature, root
    for cp in cps:
        if cp.error:
            continue
        try:
            text, _ = parse_note(cp.text)
            cp.checkpoint = parse_checkpoint(text)
        except NoteError as exc:
            cp.error = str(exc)
            continue
        if origin is None or cp.checkpoint.origin != origin:
            cp.error = f"checkpoint is for origin {cp.checkpoint.origin!r}, not this log ({origin!r})"
            continue
        if cp.label.endswith(".note") and not cp.external and Path(cp.label).parent.name == layout.CHECKPOINTS_DIR:
            if Path(cp.label).stem != str(cp.checkpoint.size):
                cp.error = f"kept checkpoint file name says size {Path(cp.label).stem}, content {cp.checkpoint.size}"
                continue
        _check_signature(cp, schedule, (witnesses + dir_witness) if cp is witness_cp else
                         witnesses if cp.external else [])
    roots = _roots_at(scan.hashes, [cp.checkpoint.size for cp in cps
                                    if cp.checkpoint and cp.checkpoint.size <= scan.count] + [scan.count])
    result.root = b64encode(roots[scan.count])
    for cp in cps:
        if cp.checkpoint is None or cp.error:
            continue
        if cp.checkpoint.size <= scan.count:
            cp.matches = roots[cp.checkpoint.size] == cp.checkpoint.root

    valid = [cp for cp in cps if cp.valid_signature and not cp.error]
    matching = [cp for cp in valid if cp.matches]
    for cp in cps:
        size = cp.checkpoint.size if cp.checkpoint else None
        if cp.error:
            result.add(None, "checkpoint", f"checkpoint {cp.label}: {cp.error}")
        elif cp.checkpoint is not None and cp.checkpoint.size > scan.count:
            what = "external" if cp.external else "local"
            result.add(scan.count + 1 if scan.count < cp.checkpoint.size else None, "truncated",
                       f"the log has {scan.count} records but the {what} checkpoint {cp.label} covers "
                       f"{cp.checkpoint.size}: size {scan.count} < {'witnessed ' if cp.cosigners else ''}"
                       f"{cp.checkpoint.size} (records removed: truncation or rollback)")
        elif cp.matches is False:
            cover = [m for m in matching if m.checkpoint and m.checkpoint.size >= (size or 0)]
            if cover:
                proof = consistency_proof(_hash_list(scan.hashes, cover[0].checkpoint.size), size or 0)
                records_root = roots[size or 0]
                assert verify_consistency(size or 0, cover[0].checkpoint.size, proof, records_root,
                                          cover[0].checkpoint.root)
                base = evidence_dir or (directory / layout.FORKS_DIR)
                target = _write_fork_evidence(base, origin or "", cp, cover[0], proof, records_root)
                result.evidence_dir = str(target)
                result.add(None, "fork",
                           f"fork: checkpoint {cp.label} (size {size}) and {cover[0].label} "
                           f"(size {cover[0].checkpoint.size}) are both validly signed but inconsistent; "
                           f"both notes and the consistency proof are in {target}")
            else:
                seq = _first_uncovered(matching, size or 0)
                result.add(seq, "checkpoint",
                           f"the records do not match the signed checkpoint {cp.label} (size {size}): "
                           "a record inside the signed range was changed")
        if cp.checkpoint is not None:
            result.checkpoints.append({
                "file": cp.label, "external": cp.external, "size": cp.checkpoint.size,
                "root": b64encode(cp.checkpoint.root),
                "signed_by": cp.signed_by.vkey if cp.signed_by else None,
                "cosigned_by": [c.vkey for c in cp.cosigners], "matches_records": cp.matches,
                "error": cp.error,
            })

    # 4. trust
    anchor = [cp for cp in valid if cp.signed_by in trusted]
    if not anchor and scan.count:
        log_keys = ", ".join(result.log_keys) or "none"
        result.add(None, "trust", f"no valid checkpoint is signed by a trusted key (trusted: "
                                  f"{', '.join(result.trusted_keys)}; the log's keys: {log_keys})")
    # 5. rotations need a checkpoint by the old key at the rotation point
    for seq, old, _new in schedule.rotations:
        if not any(cp.checkpoint and cp.checkpoint.size == seq and cp.signed_by == old for cp in matching):
            result.add(seq, "rotation", f"the key rotation at seq {seq} has no checkpoint signed by the old "
                                        f"key {old.vkey}")
    # 6. coverage and the tail
    result.signed_size = max((cp.checkpoint.size for cp in matching if cp.checkpoint), default=0)
    signed_any = max((cp.checkpoint.size for cp in valid if cp.checkpoint), default=0)
    if scan.count > signed_any:
        result.add(signed_any + 1, "unsigned",
                   f"records {signed_any + 1}..{scan.count} are not covered by any signed checkpoint "
                   "(appended without the signing key, or the writer stopped before signing; reopening the "
                   "log with the key signs only the lines its writer wrote, the others stay flagged)")
    # 6b. records a recovery found without the writer's MAC: appended without the key, flagged for good
    from ir_toolkit.audit.log import unauthenticated_ranges

    for record in scan.specials:
        if record["seq"] > result.signed_size:
            continue
        for a, b in unauthenticated_ranges(record):
            if b >= record["seq"]:
                continue
            result.unauthenticated.append([a, b])
            result.add(a, "unauthenticated",
                       f"{'record' if a == b else 'records'} {a if a == b else f'{a}..{b}'} appended to the log "
                       "without the signing key (no valid "
                       f"writer MAC when the log was recovered, audit.recovered at seq {record['seq']}); "
                       "not part of the signed history")
    if scan.torn is not None:
        if scan.count + 1 <= max((cp.checkpoint.size for cp in valid if cp.checkpoint), default=0):
            result.add(scan.count + 1, "torn", f"seq {scan.count + 1} is damaged (incomplete line) inside the "
                                               "signed range")
        else:
            result.add(scan.count + 1, "torn",
                       f"torn final line ({len(scan.torn)} bytes without a newline) beyond the signed range: "
                       "a write interrupted by a crash; reopening the log with the key truncates it and records "
                       "the recovery")
    # 7. anchoring by external checkpoints
    ext_ok = [cp for cp in matching if cp.external]
    if witnesses:
        for cp in valid:
            if cp.external and not cp.cosigners:
                result.add(None, "witness", f"external checkpoint {cp.label} has no valid cosignature by "
                                            "the given witness key(s)")
        ext_ok = [cp for cp in ext_ok if cp.cosigners]
    if witness_cp is not None:
        if witness_cp.valid_signature and not witness_cp.error and not any(c in dir_witness for c in witness_cp.cosigners):
            result.add(None, "witness", f"{witness_cp.label}: the checkpoint is not cosigned by the witness key")
        ext_ok = [cp for cp in ext_ok if cp is not witness_cp or any(c in dir_witness for c in cp.cosigners)]
    result.anchored_size = max((cp.checkpoint.size for cp in ext_ok if cp.checkpoint), default=0)
    for cp in ext_ok:
        assert cp.checkpoint is not None
        cosigned = f", cosigned by {', '.join(c.vkey for c in cp.cosigners)}" if cp.cosigners else ""
        anchors.append(f"external checkpoint {cp.label} (size {cp.checkpoint.size}{cosigned})")
    if ext_ok:
        result.self_attested = False
    result.anchors = anchors
    if require_anchor and not ext_ok:
        if witness_dir is not None and witness_cp is None:
            why = f"the witness in {witness_dir} has no cosigned checkpoint of this log"
        elif external or witness_cp is not None:
            why = "no given external checkpoint is valid for this log"
        else:
            why = "no external checkpoint or witness given"
        result.add(None, "anchor", f"--require-anchor: {why} (pass --checkpoint FILE or --witness-dir DIR); "
                                   "truncation or rollback could not be detected")
    if not external and witness_cp is None:
        result.notes.append(
            "UNANCHORED: no external checkpoint given (--checkpoint): the records are signed, but truncation "
            "or rollback to an older signed state cannot be detected without a checkpoint kept elsewhere "
            "(irkit audit witness, or a saved `irkit audit checkpoint`)")
    elif result.unanchored and ext_ok:
        a, b = result.unanchored
        result.notes.append(f"UNANCHORED TAIL: records {a}..{b} are beyond the external checkpoint(s) "
                            f"(anchored through {result.anchored_size})")
    result.problems.sort(key=lambda p: (p.seq is None, p.seq or 0))
    return result, scan


@dataclass
class VerifiedRecords:
    records: list[dict[str, Any]]          # the verified, signed prefix, flagged records left out
    size: int                               # records in that prefix
    result: VerifyResult

    @property
    def problem(self) -> str | None:
        """Why the log (or part of it) cannot be trusted, or None."""
        return None if self.result.ok else self.result.reason


_DAMAGE = frozenset({"record", "chain", "checkpoint", "fork", "rotation", "torn"})


def verified_records(case_id: str, *, key: str | Sequence[str] | None = None,
                     actions: tuple[str, ...] | None = None) -> VerifiedRecords:
    """The records of the verified, signed prefix of a case's log (for decisions and custody).

    The prefix ends at the largest checkpoint that is validly signed and matches
    the records, and before the first damaged record; nothing counts when no
    checkpoint is signed by a trusted key. Records flagged as appended without the
    key are left out. Every line is re-hashed against the verified scan.
    """
    import json

    from ir_toolkit.audit.log import _in_ranges

    result, scan = _verify(case_id, key=key)
    size = result.signed_size
    if any(p.kind == "trust" for p in result.problems):
        size = 0
    for problem in result.problems:
        if problem.kind in _DAMAGE and problem.seq is not None:
            size = min(size, problem.seq - 1)
    size = min(size, scan.good)
    flagged = [(a, b) for a, b in result.unauthenticated]
    wanted = set(actions) if actions else None
    out: list[dict[str, Any]] = []
    with open(layout.log_path(case_id), "rb") as fh:
        for seq, raw in enumerate(fh, start=1):
            if seq > size:
                break
            line = raw[:-1]
            if hashlib.sha256(b"\x00" + line).digest() != scan.hashes[(seq - 1) * 32: seq * 32]:
                size = seq - 1     # changed since the scan: stop trusting here
                break
            if flagged and _in_ranges(seq, flagged):
                continue
            record = json.loads(line)
            if wanted is None or record.get("action") in wanted:
                out.append(record)
    return VerifiedRecords(out, size, result)


def _first_uncovered(matching: list[_Cp], size: int) -> int | None:
    below = [cp.checkpoint.size for cp in matching if cp.checkpoint and cp.checkpoint.size < size]
    return (max(below) + 1) if below else None


def _hash_list(hashes: bytes, size: int) -> list[bytes]:
    return [hashes[i * 32:(i + 1) * 32] for i in range(size)]


def _worker_main(argv: list[str]) -> int:
    """``python -m ir_toolkit.audit.verify --scan-worker PATH START END FIRST_SEQ CASE``."""
    path, start, end, first, case_id = argv
    scan = scan_range(path, int(start), int(end), int(first), case_id)
    sys.stdout.buffer.write(pickle.dumps(asdict(scan), protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through scan_log's worker processes
    if len(sys.argv) == 7 and sys.argv[1] == "--scan-worker":
        sys.exit(_worker_main(sys.argv[2:]))
    sys.exit("usage: python -m ir_toolkit.audit.verify --scan-worker PATH START END FIRST_SEQ CASE")
