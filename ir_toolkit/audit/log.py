"""The audit log writer: append-only, fsynced, group-committed, signed after every batch.

One :class:`AuditLog` per case and process (a second :meth:`AuditLog.open` in
the same process returns the same object; another process is refused by an
``flock``). Appending is thread-safe:

* :meth:`AuditLog.append` writes the canonical line with one ``write(2)`` on an
  ``O_APPEND`` descriptor and returns its seq (not yet durable);
* :meth:`AuditLog.append_durable` returns only once the record is fsynced. Many
  threads share fsyncs (group commit): the first waiter becomes the leader,
  fsyncs everything written so far, releases every waiter covered by it, then
  signs a checkpoint for that size (``checkpoint.note``, written atomically)
  while the next batch accumulates. So the signed state trails the disk by at
  most one batch, and a crash leaves at most that batch unsigned.

On opening an existing log the writer re-hashes every line, checks that the
latest checkpoint is validly signed and matches the records, truncates a torn
final line beyond the signed range (recording ``audit.recovered``) and refuses
(``VerificationFailed``) when the damage is inside the signed range. Complete
records beyond the last checkpoint (a crash between fsync and signing) are
checked, then covered by a new checkpoint and an ``audit.recovered`` record
that names them - but only the lines this writer itself produced:

Every line the writer appends also gets a MAC in ``log.mac`` (HMAC-SHA256 keyed
from the signing key, over origin, seq and the line's leaf hash), fsynced with
the line. Recovery signs an unsigned line only if its MAC is valid. A line
without one was appended by someone without the key: it is named (seq ranges,
``params.unauthenticated``) in the ``audit.recovered`` record, stays in the file
(removing it would hide the tampering), is excluded from every control decision
(:func:`signed_records`) and is reported by every later ``irkit audit verify``.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import hmac
import json
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ir_toolkit import __version__
from ir_toolkit.actor import system_actor
from ir_toolkit.fsutil import fsync_dir as _fsync_dir
from ir_toolkit.audit import layout
from ir_toolkit.audit.keyschedule import KeySchedule
from ir_toolkit.tlog.merkle import CompactRange, leaf_hash
from ir_toolkit.tlog.note import (
    NoteError,
    Signer,
    UnverifiedNote,
    format_checkpoint,
    open_note,
    parse_checkpoint,
    sign_note,
)
from ir_toolkit.audit.records import (
    ACTION_CREATED,
    ACTION_KEY_ACTIVATED,
    ACTION_KEY_ROTATED,
    ACTION_RECOVERED,
    GENESIS_PREV,
    RESERVED_PREFIX,
    RecordError,
    build_record,
    check_fields,
    decode_line,
    encode_record,
    now_ts,
)
from ir_toolkit.errors import InputError, VerificationFailed
from ir_toolkit.home import case_dir, validate_case_id
from ir_toolkit.fsutil import write_atomic

_ROTATION_MARK = b'"action":"' + ACTION_KEY_ROTATED.encode() + b'"'
_RECOVERED_MARK = b'"action":"' + ACTION_RECOVERED.encode() + b'"'
_MAC_KEY_INFO = b"irkit audit line MAC key v1"
_registry: dict[Path, AuditLog] = {}
_registry_lock = threading.Lock()


def valid_origin_for(case_id: str, origin: str) -> bool:
    """``<msp>/ir/<case>``: non-empty MSP part, no whitespace or '+'."""
    return (
        isinstance(origin, str)
        and origin.endswith(f"/ir/{case_id}")
        and len(origin) > len(f"/ir/{case_id}")
        and not any(ch.isspace() or ch == "+" or ord(ch) < 0x20 for ch in origin)
    )


def line_mac_key(signer: Signer) -> bytes:
    """The writer's secret per-line MAC key, derived from the signing key's seed."""
    return hmac.new(signer.seed(), _MAC_KEY_INFO, hashlib.sha256).digest()


def line_mac(key: bytes, origin: str, seq: int, leaf: bytes) -> str:
    """HMAC-SHA256 over origin, seq and the leaf hash of one line (hex)."""
    msg = b"irkit-audit-line-v1\n" + origin.encode() + b"\n" + str(seq).encode() + b"\n" + leaf
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def unauthenticated_ranges(record: Mapping[str, Any]) -> list[tuple[int, int]]:
    """The seq ranges an ``audit.recovered`` record flags as appended without the key."""
    if record.get("action") != ACTION_RECOVERED:
        return []
    out = []
    for item in (record.get("params") or {}).get("unauthenticated") or []:
        if (isinstance(item, list) and len(item) == 2 and all(isinstance(x, int) for x in item)
                and 1 <= item[0] <= item[1]):
            out.append((item[0], item[1]))
    return out


def _ranges(seqs: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for seq in seqs:
        if out and out[-1][1] == seq - 1:
            out[-1][1] = seq
        else:
            out.append([seq, seq])
    return out


def _in_ranges(seq: int, ranges: list[tuple[int, int]]) -> bool:
    return any(a <= seq <= b for a, b in ranges)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        end = fh.seek(0, os.SEEK_END)
        if end == 0:
            return True
        fh.seek(end - 1)
        return fh.read(1) == b"\n"


def describe_ranges(ranges: list[tuple[int, int]] | list[list[int]]) -> str:
    return ", ".join(f"seq {a}" if a == b else f"seq {a}..{b}" for a, b in ranges)


class AuditLog:
    """A case's signed, append-only audit log, open for appending."""

    def __init__(self, case_id: str, directory: Path, signer: Signer | None) -> None:
        self.case_id = case_id
        self.directory = directory
        self.path = directory / layout.LOG_FILE
        self.origin: str = ""
        self._signer = signer
        self._schedule = KeySchedule()
        self._cond = threading.Condition(threading.Lock())
        self._fd = -1
        self._mac_fd = -1
        self._mac_key = line_mac_key(signer) if signer is not None else None
        self._leaves = bytearray()      # leaf hash of every complete record (32 bytes each)
        self._untrusted: list[tuple[int, int]] = []   # seq ranges never to be used for decisions
        self._verified: dict[tuple[str, ...] | None, tuple[int, int, list[dict[str, Any]]]] = {}
        self._verified_lock = threading.Lock()
        self._lock_fd = -1
        self._refs = 1
        self._acc = CompactRange()
        self._last_hash = b""
        self._size = 0          # complete records in the file
        self._offset = 0        # file length
        self._durable = 0       # records known fsynced
        self._signed = 0        # size of the latest signed checkpoint
        self._latest_note: str | None = None
        self._syncing = False
        self._broken: BaseException | None = None
        self.stats = {"records": 0, "fsyncs": 0, "checkpoints": 0, "batches": 0}
        # The index for decisions (gate, reimage history, resume): records by (tenant, host, action).
        # Records this writer writes are indexed as written; the ones before (up to ``_open_size``) are read
        # and verified once, on the first indexed query. Queries are then O(records asked for).
        self._open_size: int | None = None
        self._new_index: dict[tuple[str | None, str | None, str], list[dict[str, Any]]] = {}
        self._old_index: dict[tuple[str | None, str | None, str], list[dict[str, Any]]] | None = None

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, case_id: str, *, origin: str | None = None, signer: Signer | None = None) -> AuditLog:
        """Open (creating if needed) the audit log of ``case_id``.

        ``origin`` is ``<msp>/ir/<case>``; it is required for a new log and, when
        given for an existing one, must match. With ``signer=None`` records can be
        appended but nothing is signed (tests; an unsigned tail fails verification).
        """
        validate_case_id(case_id)
        directory = layout.audit_dir(case_id)
        key = directory.resolve() if directory.exists() else directory.absolute()
        with _registry_lock:
            existing = _registry.get(key)
            if existing is not None and existing._fd >= 0:
                existing._reuse(origin, signer)
                return existing
            log = cls(case_id, directory, signer)
            log._open(origin)
            _registry[log.directory.resolve()] = log
            return log

    def _reuse(self, origin: str | None, signer: Signer | None) -> None:
        if origin is not None and origin != self.origin:
            raise InputError(f"case {self.case_id}: the audit log's origin is {self.origin!r}, not {origin!r}")
        if signer is not None:
            if self._signer is None:
                raise InputError(f"case {self.case_id}: the audit log is already open without a signing key")
            if signer.verifier_key() != self._signer.verifier_key():
                raise InputError(f"case {self.case_id}: the audit log is already open with another key")
        with self._cond:
            self._refs += 1

    def _lock(self) -> None:
        self._lock_fd = os.open(self.directory / layout.LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            self._lock_fd = -1
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise InputError(f"the audit log of case {self.case_id} is open in another irkit process") from None
            raise

    def _open(self, origin: str | None) -> None:
        created = not self.path.exists()
        if created and origin is None:
            raise InputError(f"case {self.case_id} has no audit log yet (an origin <msp>/ir/<case> is needed)")
        if origin is not None and not valid_origin_for(self.case_id, origin):
            raise InputError(f"invalid audit log origin {origin!r}: expected <msp>/ir/{self.case_id}")
        case_dir(self.case_id, create=True)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock()
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            if self._signer is not None:
                self._mac_fd = os.open(self.directory / layout.MAC_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                                       0o600)
                if not _ends_with_newline(self.directory / layout.MAC_FILE):
                    os.write(self._mac_fd, b"\n")      # a MAC line torn by a crash: start a fresh line
            if created or os.fstat(self._fd).st_size == 0:
                if (self.directory / layout.CHECKPOINT_FILE).exists():
                    raise VerificationFailed(
                        f"audit log of case {self.case_id} is empty but a signed checkpoint exists: "
                        "records were removed")
                if origin is None:
                    raise InputError(f"case {self.case_id} has no audit log yet "
                                     "(an origin <msp>/ir/<case> is needed)")
                _fsync_dir(self.directory)
                self.origin = origin
                self._create_genesis()
            else:
                self._recover(origin)
            if self._signer is not None:
                self._drain_queue()
        except BaseException:
            self._release()
            raise

    def _drain_queue(self) -> None:
        """Append the records queued by :func:`queue_record` (only those with a valid MAC)."""
        path = self.directory / layout.PENDING_FILE
        if not path.exists():
            return
        draining = path.with_name(f".{path.name}.draining-{os.getpid()}")
        os.replace(path, draining)
        assert self._mac_key is not None
        rejected: list[str] = []
        for raw in draining.read_bytes().splitlines():
            if not raw.strip():
                continue
            try:
                item = json.loads(raw)
                body = item["record"]
                ok = hmac.compare_digest(str(item["mac"]), _queue_mac(self._mac_key, self.case_id, body))
                if ok:
                    self.append(action=body["action"], actor=body["actor"], tenant=body.get("tenant"),
                                host=body.get("host"), outcome=body.get("outcome", "ok"),
                                params={**(body.get("params") or {}), "queued_at": body.get("queued_at"),
                                        "recorded_late": True})
                    continue
            except (ValueError, KeyError, TypeError, InputError):
                pass
            rejected.append(hashlib.sha256(raw).hexdigest())
        if rejected:
            self._append_internal(ACTION_RECOVERED, {
                "reason": "queued records without a valid MAC (not queued by a holder of the signing key) "
                          "were rejected", "rejected": len(rejected), "sha256": rejected[:20]})
        self.sync()
        draining.unlink()
        _fsync_dir(self.directory)

    def _create_genesis(self) -> None:
        params = {"origin": self.origin, "key": self._signer.verifier_key() if self._signer else None,
                  "irkit": __version__}
        self._append_internal(ACTION_CREATED, params)
        self._schedule.observe({"seq": 1, "action": ACTION_CREATED, "params": params})
        self.sync()

    def _recover(self, origin: str | None) -> None:
        """Rebuild state from the file, check it against the latest checkpoint, repair a torn tail."""
        torn: bytes | None = None
        last_line = b""
        recovered: list[tuple[int, Any]] = []
        with open(self.path, "rb") as fh:
            for raw in fh:
                if not raw.endswith(b"\n"):
                    torn = raw
                    break
                line = raw[:-1]
                h = leaf_hash(line)
                self._acc.append(h)
                self._leaves += h
                self._size += 1
                self._offset += len(raw)
                self._last_hash = h
                last_line = line
                if _RECOVERED_MARK in line:
                    try:
                        recovered.append((self._size, json.loads(line)))
                    except ValueError:
                        pass
                if self._size == 1 or _ROTATION_MARK in line:
                    try:
                        self._schedule.observe(decode_line(line))
                    except RecordError as exc:
                        raise VerificationFailed(
                            f"audit log of case {self.case_id} is damaged at seq {self._size}: {exc}") from None
        self.origin = self._schedule.origin or ""
        if self._size and origin is not None and origin != self.origin:
            raise InputError(f"case {self.case_id}: the audit log's origin is {self.origin!r}, not {origin!r}")
        if self._size:
            signed = self._check_latest_checkpoint()
        elif (self.directory / layout.CHECKPOINT_FILE).exists():
            raise VerificationFailed(f"audit log of case {self.case_id} has no complete record but a signed "
                                     "checkpoint exists: records were removed")
        else:
            signed = 0
        # A final line that is incomplete, or complete but not a record, is a torn write.
        if torn is None and last_line and self._size > signed:
            try:
                decode_line(last_line)
            except RecordError:
                torn = last_line + b"\n"
                self._size -= 1
                self._offset -= len(torn)
                self._rebuild_accumulator()
        if torn is not None and self._size + 1 <= signed:
            raise VerificationFailed(
                f"audit log of case {self.case_id}: seq {self._size + 1} is damaged inside the signed range "
                f"(checkpoint size {signed}): tampering or disk corruption")
        if signed > self._size:
            raise VerificationFailed(
                f"audit log of case {self.case_id} has {self._size} records but its signed checkpoint covers "
                f"{signed}: records were removed")
        self._durable = self._size
        self._signed = signed
        unsigned = (signed + 1, self._size) if self._size > signed else None
        if unsigned:
            self._check_unsigned_tail(signed)
        if self._size:
            self._verify_key_matches()  # before changing anything: a repair must be recorded
        # Ranges flagged by earlier recoveries (inside the signed range: the writer wrote those records).
        for seq, record in recovered:
            if seq <= signed and isinstance(record, dict):
                self._untrusted.extend(r for r in unauthenticated_ranges(record) if r[1] < seq)
        foreign: list[int] = []
        if unsigned and self._signer is not None:
            foreign = self._unauthenticated_lines(signed)
            self._untrusted.extend((a, b) for a, b in _ranges(foreign))
        elif unsigned:
            # Without the key nothing can be authenticated: not for decisions in this process.
            self._untrusted.append(unsigned)
        if torn is not None:
            os.ftruncate(self._fd, self._offset)
            os.fsync(self._fd)
        if self._size == 0:  # the genesis record itself was torn
            if origin is None:
                raise InputError(f"case {self.case_id} has no audit log yet (an origin <msp>/ir/<case> is needed)")
            self.origin = origin
            self._create_genesis()
            return
        if torn is not None:
            self._append_internal(ACTION_RECOVERED, {
                "reason": "torn final line (a write interrupted by a crash) beyond the signed range",
                "torn_bytes": len(torn), "torn_sha256": hashlib.sha256(torn).hexdigest(),
                "signed_size": signed})
        if unsigned and self._signer is not None and not foreign:
            self._append_internal(ACTION_RECOVERED, {
                "reason": "complete records beyond the last signed checkpoint (the writer stopped before "
                          "signing them; every line carries the writer's MAC); they are signed now",
                "first_seq": unsigned[0], "last_seq": unsigned[1], "signed_size": signed})
        elif unsigned and self._signer is not None:
            ranges = _ranges(foreign)
            self._append_internal(ACTION_RECOVERED, {
                "reason": "records beyond the last signed checkpoint without the writer's MAC: appended by "
                          "someone without the signing key; they are flagged, never trusted, and reported by "
                          "every irkit audit verify",
                "first_seq": unsigned[0], "last_seq": unsigned[1], "signed_size": signed,
                "unauthenticated": ranges, "authenticated": (unsigned[1] - unsigned[0] + 1) - len(foreign)})
            from ir_toolkit.log import get_logger

            get_logger("irkit.audit").warning(
                f"case {self.case_id}: audit records appended without the signing key: {describe_ranges(ranges)}; "
                "they are flagged in the log (irkit audit verify reports them) and not trusted")
        if torn is not None or (unsigned and self._signer is not None):
            self.sync()

    def _append_internal(self, action: str, params: dict[str, Any]) -> int:
        with self._cond:
            return self._append_locked(action=action, actor=system_actor(), tenant=None, host=None,
                                       params=params, outcome="ok", internal=True)

    def _rebuild_accumulator(self) -> None:
        acc = CompactRange()
        last = b""
        with open(self.path, "rb") as fh:
            for i, raw in enumerate(fh):
                if i >= self._size:
                    break
                last = leaf_hash(raw[:-1])
                acc.append(last)
        self._acc, self._last_hash = acc, last
        del self._leaves[self._size * 32:]

    def _read_macs(self) -> dict[int, set[str]]:
        macs: dict[int, set[str]] = {}
        try:
            with open(self.directory / layout.MAC_FILE, "rb") as fh:
                for raw in fh:
                    parts = raw.split()
                    if len(parts) == 2 and parts[0].isdigit() and len(parts[1]) == 64:
                        macs.setdefault(int(parts[0]), set()).add(parts[1].decode("ascii", "replace"))
        except FileNotFoundError:
            pass
        return macs

    def _unauthenticated_lines(self, signed: int) -> list[int]:
        """Seqs beyond ``signed`` whose line has no valid MAC by this writer's key."""
        assert self._mac_key is not None
        macs = self._read_macs()
        foreign = []
        for seq in range(signed + 1, self._size + 1):
            leaf = bytes(self._leaves[(seq - 1) * 32: seq * 32])
            want = line_mac(self._mac_key, self.origin, seq, leaf)
            if not any(hmac.compare_digest(want, got) for got in macs.get(seq, ())):
                foreign.append(seq)
        return foreign

    def _check_latest_checkpoint(self) -> int:
        path = self.directory / layout.CHECKPOINT_FILE
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeDecodeError) as exc:
            raise VerificationFailed(f"audit log of case {self.case_id}: unreadable checkpoint: {exc}") from None
        try:
            body, _sigs = _split_note(text)
            cp = parse_checkpoint(body)
        except NoteError as exc:
            raise VerificationFailed(f"audit log of case {self.case_id}: damaged checkpoint: {exc}") from None
        if cp.origin != self.origin:
            raise VerificationFailed(f"audit log of case {self.case_id}: checkpoint is for origin {cp.origin!r}")
        key = self._schedule.key_for_size(cp.size)
        if key is None:
            raise VerificationFailed(f"audit log of case {self.case_id}: checkpoint but no signing key in the log")
        try:
            open_note(text, [key])
        except UnverifiedNote:
            raise VerificationFailed(
                f"audit log of case {self.case_id}: the latest checkpoint is not signed by the log's key "
                f"{key.vkey}") from None
        except NoteError as exc:
            raise VerificationFailed(f"audit log of case {self.case_id}: latest checkpoint: {exc}") from None
        if cp.size <= self._size and self._root_at(cp.size) != cp.root:
            raise VerificationFailed(
                f"audit log of case {self.case_id} does not match its signed checkpoint (size {cp.size}): "
                f"tampering; run irkit audit verify --case {self.case_id}")
        # cp.size > records is judged by the caller (a torn signed record, or removed records).
        self._latest_note = text
        return cp.size

    def _root_at(self, size: int) -> bytes:
        if size == self._size:
            return self._acc.root()
        acc = CompactRange()
        with open(self.path, "rb") as fh:
            for i, raw in enumerate(fh):
                if i >= size:
                    break
                acc.append(leaf_hash(raw.rstrip(b"\n")))
        return acc.root()

    def _check_unsigned_tail(self, signed: int) -> None:
        """Records beyond the signed size must still be canonical and chained before we sign them."""
        prev = GENESIS_PREV
        with open(self.path, "rb") as fh:
            for seq, raw in enumerate(fh, start=1):
                if seq > self._size:
                    break
                line = raw[:-1]
                if seq > signed:
                    try:
                        record = decode_line(line)
                        check_fields(record, seq=seq, case=self.case_id)
                    except RecordError as exc:
                        raise VerificationFailed(
                            f"audit log of case {self.case_id} is damaged at seq {seq}: {exc}") from None
                    if record["prev"] != prev:
                        raise VerificationFailed(
                            f"audit log of case {self.case_id}: seq {seq} does not chain to seq {seq - 1} "
                            f"(records after the signed checkpoint at size {signed} were altered)")
                prev = leaf_hash(line).hex()

    def _verify_key_matches(self) -> None:
        if self._signer is None:
            return
        current = self._schedule.current
        mine = self._signer.verifier()
        if current is None:
            raise InputError(f"case {self.case_id}: the audit log was created without a signing key; "
                             "it cannot be signed later")
        if current != mine:
            if mine in self._schedule.keys():
                raise InputError(f"case {self.case_id}: your key {mine.vkey} was rotated out of this log")
            raise InputError(
                f"case {self.case_id}: the audit log is signed by {current.vkey}, not by your key "
                f"{mine.vkey} (if you rotated keys, the log needed `irkit keys rotate --case {self.case_id}`)")

    # ------------------------------------------------------------------ appending

    @property
    def size(self) -> int:
        return self._size

    @property
    def signer(self) -> Signer | None:
        return self._signer

    def latest_checkpoint(self) -> str | None:
        return self._latest_note

    def append(self, *, action: str, actor: str, tenant: str | None = None, host: str | None = None,
               params: dict | None = None, outcome: str = "ok") -> int:
        """Append one record (redacted; no floats) and return its seq; not yet durable."""
        if isinstance(action, str) and action.startswith(RESERVED_PREFIX):
            raise InputError(f"audit action {action!r} is reserved for the audit log itself")
        # Redaction and validation outside the lock; seq, prev and ts are filled in under it.
        record = build_record(seq=0, prev=GENESIS_PREV, case=self.case_id, action=action, actor=actor,
                              tenant=tenant, host=host, params=params, outcome=outcome)
        with self._cond:
            return self._write_locked(record)

    def append_durable(self, *, action: str, actor: str, tenant: str | None = None, host: str | None = None,
                       params: dict | None = None, outcome: str = "ok") -> int:
        """Append and return once the record is on disk (fsync shared with concurrent callers)."""
        seq = self.append(action=action, actor=actor, tenant=tenant, host=host, params=params, outcome=outcome)
        self._commit(min_seq=seq)
        return seq

    def _append_locked(self, *, action: str, actor: str, tenant: str | None, host: str | None,
                       params: Mapping[str, Any] | None, outcome: str, internal: bool = False) -> int:
        if isinstance(action, str) and action.startswith(RESERVED_PREFIX) and not internal:
            raise InputError(f"audit action {action!r} is reserved for the audit log itself")
        record = build_record(seq=0, prev=GENESIS_PREV, case=self.case_id, action=action, actor=actor,
                              tenant=tenant, host=host, params=params, outcome=outcome)
        return self._write_locked(record)

    def _write_locked(self, record: dict[str, Any]) -> int:
        """Number, chain, encode and write one record (the caller holds the lock)."""
        if self._broken is not None:
            raise OSError(errno.EIO, f"audit log of case {self.case_id} is unusable after an I/O error: "
                                     f"{self._broken}")
        if self._fd < 0:
            raise InputError(f"the audit log of case {self.case_id} is closed")
        seq = self._size + 1
        record["seq"] = seq
        record["prev"] = GENESIS_PREV if seq == 1 else self._last_hash.hex()
        record["ts"] = now_ts()
        line = encode_record(record)
        data = line + b"\n"
        h = leaf_hash(line)
        if self._mac_fd >= 0 and self._mac_key is not None:
            # The MAC goes first: a MAC without its line is harmless, a line without its MAC is "foreign".
            mac = f"{seq} {line_mac(self._mac_key, self.origin, seq, h)}\n".encode()
            try:
                os.write(self._mac_fd, mac)
            except OSError as exc:
                self._broken = exc
                raise
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
        except OSError:
            try:
                os.ftruncate(self._fd, self._offset)
            except OSError as exc2:
                self._broken = exc2
            raise
        self._acc.append(h)
        self._leaves += h
        self._last_hash = h
        if self._open_size is None:
            self._open_size = seq - 1
        indexed = json.loads(line)
        self._new_index.setdefault((indexed.get("tenant"), indexed.get("host"), str(indexed.get("action"))),
                                   []).append(indexed)
        self._size = seq
        self._offset += len(data)
        self.stats["records"] += 1
        return seq

    # ------------------------------------------------------------------ commit / checkpoint

    def _commit(self, *, min_seq: int | None = None, keep: bool = False) -> str | None:
        """Group commit: fsync everything written, then sign a checkpoint for that size."""
        with self._cond:
            while True:
                if min_seq is not None and self._durable >= min_seq:
                    return None
                if not self._syncing:
                    break
                self._cond.wait()
            if self._broken is not None:
                raise OSError(errno.EIO, f"audit log of case {self.case_id}: {self._broken}")
            if (min_seq is None and not keep and self._durable >= self._size
                    and (self._signer is None or self._signed >= self._size)):
                # nothing written since the last commit: the gate's and history queries call this per
                # host; without this shortcut each paid an fsync pair (measured: 200 queries, 201 fsyncs)
                return self._latest_note
            self._syncing = True
            target = self._size
            root = self._acc.root()
            signer = self._signer
        note: str | None = None
        try:
            try:
                if self._mac_fd >= 0:
                    os.fsync(self._mac_fd)
                os.fsync(self._fd)
            except OSError as exc:
                self._broken = exc
                raise
            with self._cond:
                self._durable = max(self._durable, target)
                self.stats["fsyncs"] += 1
                self.stats["batches"] += 1
                self._cond.notify_all()
            if signer is not None and (target > self._signed or (keep and target == self._signed)):
                note = self._write_checkpoint(signer, target, root, keep=keep)
            elif signer is not None and keep:
                note = self._latest_note
        finally:
            with self._cond:
                self._syncing = False
                self._cond.notify_all()
        return note

    def _write_checkpoint(self, signer: Signer, size: int, root: bytes, *, keep: bool) -> str:
        text = sign_note(format_checkpoint(self.origin, size, root), [signer])
        data = text.encode("utf-8")
        if keep:
            write_atomic(self.directory / layout.CHECKPOINTS_DIR / f"{size}.note", data, mode=0o644)
        write_atomic(self.directory / layout.CHECKPOINT_FILE, data, mode=0o644)
        with self._cond:
            if size >= self._signed:
                self._signed = size
                self._latest_note = text
            self.stats["checkpoints"] += 1
        return text

    def sync(self) -> None:
        """Make every appended record durable (and signed, when there is a key)."""
        self._commit()

    def checkpoint(self) -> str:
        """Sync, sign the current tree head, keep it in ``checkpoints/<size>.note``; return the note."""
        if self._signer is None:
            raise InputError(f"the audit log of case {self.case_id} has no signing key: run irkit keys init")
        note = self._commit(keep=True)
        assert note is not None
        return note

    def rotate_key(self, new_signer: Signer, *, actor: str | None = None) -> str:
        """Record a key rotation signed by the current key, then continue with ``new_signer``.

        Appends ``audit.key_rotated`` (old and new verifier keys), signs the
        checkpoint of that size with the OLD key, switches keys, appends
        ``audit.key_activated`` and signs it with the NEW key. Other appenders
        wait meanwhile. Returns the new key's checkpoint.
        """
        old = self._signer
        if old is None:
            raise InputError(f"the audit log of case {self.case_id} has no signing key to rotate")
        if new_signer.verifier_key() == old.verifier_key():
            raise InputError("the new key is the current key")
        actor = actor or system_actor()
        with self._cond:
            while self._syncing:
                self._cond.wait()
            self._syncing = True
        try:
            with self._cond:
                seq = self._append_locked(action=ACTION_KEY_ROTATED, actor=actor, tenant=None, host=None,
                                          params={"old_key": old.verifier_key(), "new_key": new_signer.verifier_key()},
                                          outcome="ok", internal=True)
                os.fsync(self._fd)
                self._durable = seq
                root = self._acc.root()
            self._write_checkpoint(old, seq, root, keep=True)
            self._schedule.observe({"seq": seq, "action": ACTION_KEY_ROTATED,
                                    "params": {"old_key": old.verifier_key(),
                                               "new_key": new_signer.verifier_key()}})
            with self._cond:
                self._signer = new_signer
                self._mac_key = line_mac_key(new_signer)
                seq2 = self._append_locked(action=ACTION_KEY_ACTIVATED, actor=actor, tenant=None, host=None,
                                           params={"key": new_signer.verifier_key()}, outcome="ok", internal=True)
                os.fsync(self._fd)
                self._durable = seq2
                root2 = self._acc.root()
            return self._write_checkpoint(new_signer, seq2, root2, keep=True)
        finally:
            with self._cond:
                self._syncing = False
                self._cond.notify_all()

    # ------------------------------------------------------------------ reading for decisions

    @property
    def untrusted(self) -> list[tuple[int, int]]:
        """Seq ranges this writer does not vouch for (flagged as appended without the key)."""
        return list(self._untrusted)

    def verified_records(self, actions: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        """The records this writer vouches for, read back from disk and checked line by line.

        Everything appended so far is made durable (and signed) first. A line is
        returned only if its leaf hash is the one this writer holds for it (so the
        file cannot be edited underneath a running process), and never a line
        flagged as appended without the key. ``actions`` filters by action.
        Lines already checked are not read again (the result of each ``actions``
        filter is kept and extended), so the gate's per-host calls stay cheap.
        """
        self._commit()
        with self._cond:
            size = self._size
            untrusted = list(self._untrusted)
        key = tuple(sorted(actions)) if actions else None
        with self._verified_lock:
            upto, offset, found = self._verified.get(key, (0, 0, []))
            if upto < size:
                with self._cond:
                    leaves = bytes(self._leaves[upto * 32: size * 32])
                marks = [b'"action":"' + a.encode() + b'"' for a in key] if key else None
                with open(self.path, "rb") as fh:
                    fh.seek(offset)
                    for seq in range(upto + 1, size + 1):
                        raw = fh.readline()
                        line = raw[:-1]
                        i = seq - upto - 1
                        if not raw.endswith(b"\n") or leaf_hash(line) != leaves[i * 32: (i + 1) * 32]:
                            raise VerificationFailed(f"audit log of case {self.case_id} was changed on disk at "
                                                     f"seq {seq} while irkit had it open")
                        offset += len(raw)
                        if untrusted and _in_ranges(seq, untrusted):
                            continue
                        if marks is not None and not any(m in line for m in marks):
                            continue
                        record = json.loads(line)
                        if key is None or record.get("action") in key:
                            found.append(record)
                self._verified[key] = (size, offset, found)
            return list(found)

    def indexed(self, actions: tuple[str, ...], *, tenant: str | None = None,
                host: str | None = None) -> list[dict[str, Any]]:
        """The trusted records of ``actions`` (for ``tenant``/``host`` when given), oldest first.

        Same trust as :meth:`verified_records` (durable first; records from before this writer
        opened the log are verified once, never a flagged line), answered from the in-memory
        index by (tenant, host, action): O(records returned), not O(log).
        """
        self._commit()
        with self._cond:
            if self._open_size is None:
                self._open_size = self._size
            open_size = self._open_size
            ready = self._old_index is not None
        if not ready:
            old: dict[tuple[str | None, str | None, str], list[dict[str, Any]]] = {}
            for record in self.verified_records():
                if int(record.get("seq", 0)) <= open_size:
                    old.setdefault((record.get("tenant"), record.get("host"), str(record.get("action"))),
                                   []).append(record)
            with self._cond:
                if self._old_index is None:
                    self._old_index = old
        with self._cond:
            assert self._old_index is not None
            out: list[dict[str, Any]] = []
            for index in (self._old_index, self._new_index):
                if host is not None and tenant is not None:
                    for action in actions:
                        out.extend(index.get((tenant, host, action), ()))
                else:
                    wanted = set(actions)
                    for (t, h, action), records in index.items():
                        if action in wanted and (tenant is None or t == tenant) and (host is None or h == host):
                            out.extend(records)
        return sorted(out, key=lambda r: int(r.get("seq", 0)))

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Sync and write a final kept checkpoint; the last close releases the file and lock."""
        with _registry_lock:
            with self._cond:
                self._refs -= 1
                if self._refs > 0 or self._fd < 0:
                    return
            try:
                if self._broken is None:
                    if self._signer is not None:
                        self._commit(keep=True)
                    else:
                        self._commit()
            finally:
                self._release()
                _registry.pop(self.directory.resolve(), None)

    def _release(self) -> None:
        if self._mac_fd >= 0:
            os.close(self._mac_fd)
            self._mac_fd = -1
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd >= 0:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            finally:
                os.close(self._lock_fd)
                self._lock_fd = -1

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _split_note(text: str) -> tuple[str, str]:
    split = text.rfind("\n\n")
    if split < 0:
        raise NoteError("malformed note: no blank line before the signatures")
    return text[: split + 1], text[split + 2:]


# --------------------------------------------------------------------------- reading


def _queue_mac(key: bytes, case_id: str, body: Mapping[str, Any]) -> str:
    from ir_toolkit.audit.records import canonical

    return hmac.new(key, b"irkit-audit-queued-v1\n" + case_id.encode() + b"\n" + canonical(dict(body)),
                    hashlib.sha256).hexdigest()


def queue_record(case_id: str, signer: Signer, *, action: str, actor: str, tenant: str | None = None,
                 host: str | None = None, params: dict[str, Any] | None = None, outcome: str = "ok") -> Path:
    """Queue a record for a log that cannot be opened now (held by another process, ...).

    The next :meth:`AuditLog.open` with the key appends it (with ``recorded_late``
    and ``queued_at``). The entry carries a MAC keyed from the signing key, so
    nobody without the key can queue records.
    """
    validate_case_id(case_id)
    if isinstance(action, str) and action.startswith(RESERVED_PREFIX):
        raise InputError(f"audit action {action!r} is reserved for the audit log itself")
    body = build_record(seq=0, prev=GENESIS_PREV, case=case_id, action=action, actor=actor, tenant=tenant,
                        host=host, params=params, outcome=outcome)
    body = {k: body[k] for k in ("action", "actor", "tenant", "host", "params", "outcome") if k in body}
    body["queued_at"] = now_ts()
    line = json.dumps({"record": body, "mac": _queue_mac(line_mac_key(signer), case_id, body)},
                      sort_keys=True, separators=(",", ":")).encode() + b"\n"
    directory = layout.audit_dir(case_id, create=True)
    path = directory / layout.PENDING_FILE
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(directory)
    return path


def open_instance(case_id: str) -> AuditLog | None:
    """The case's log if this process has it open for writing, else None."""
    directory = layout.audit_dir(validate_case_id(case_id))
    key = directory.resolve() if directory.exists() else directory.absolute()
    with _registry_lock:
        log = _registry.get(key)
    return log if log is not None and log._fd >= 0 else None


def signed_records(case_id: str, actions: tuple[str, ...] | None = None, *, tenant: str | None = None,
                   host: str | None = None) -> list[dict[str, Any]] | None:
    """Records for control decisions: only the verified, signed history, never a flagged record.

    When this process has the log open, its writer vouches for the records (see
    :meth:`AuditLog.verified_records`); otherwise the log is verified
    (:func:`ir_toolkit.audit.verify.verified_records`) and only the signed prefix
    before the first problem is used. None when the case has no audit log.
    """
    log = open_instance(case_id)
    if log is not None:
        if actions is not None:  # the open writer's index: O(records asked for)
            return log.indexed(actions, tenant=tenant, host=host)
        records = log.verified_records(actions)
    else:
        if not layout.log_path(validate_case_id(case_id)).exists():
            return None
        from ir_toolkit.audit.verify import verified_records

        records = verified_records(case_id, actions=actions).records
    return [r for r in records if (tenant is None or r.get("tenant") == tenant)
            and (host is None or r.get("host") == host)]


def iter_records(case_id: str) -> Iterator[dict]:
    """Yield the parsed records of a case's log in order (no verification; a torn tail is skipped).

    For display only: decisions use :func:`signed_records`. A case without an
    audit log yields nothing. Use :func:`ir_toolkit.audit.verify.verify_case` to
    check the log.
    """
    path = layout.log_path(validate_case_id(case_id))
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return
    with fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                return
            try:
                record = json.loads(raw)
            except ValueError:
                return
            if isinstance(record, dict):
                yield record


def log_key_schedule(case_id: str) -> KeySchedule:
    """The key schedule named by a case's records (unverified; cheap: parses only key records)."""
    schedule = KeySchedule()
    path = layout.log_path(validate_case_id(case_id))
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return schedule
    with fh:
        for seq, raw in enumerate(fh, start=1):
            if not raw.endswith(b"\n"):
                break
            if seq == 1 or _ROTATION_MARK in raw:
                try:
                    schedule.observe(decode_line(raw[:-1]))
                except RecordError:
                    break
    return schedule
