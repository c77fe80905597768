"""Evidence bundles on disk: one archive per host collection, its manifest and its seal.

Layout (never overwritten; each collection gets its own directory)::

    $IRKIT_HOME/cases/<case>/evidence/<tenant>/<host>/<collection-id>/
        bundle.tar            POSIX tar: files/<source path>, live/<artifact output>,
                              retry/<source path>, collection.log, manifest.json (last)
        bundle.tar.enc        ... or the same tar, encrypted (see crypto.py); then no
                              plaintext manifest sits beside it
        manifest.json         plain bundles: byte-identical copy of the one inside
        seal.json             bundle and manifest SHA-256, identity, counts, recipients

A collection is written to ``<collection-id>.partial/`` and renamed when complete,
so a crash never leaves something that looks like a finished bundle.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import io
import json
import os
import queue
import secrets
import tarfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)

from ir_toolkit.cases import CaseLayout
from ir_toolkit.errors import InputError, VerificationFailed
from ir_toolkit.timeutil import file_stamp, stamp
from ir_toolkit.fsutil import fsync_dir as _fsync_dir
from ir_toolkit.home import case_dir
from ir_toolkit.triage.crypto import DecryptingReader, EncryptingWriter, fingerprint
from ir_toolkit.triage.tarstream import MemberReader, SourceFailed, TarWriter, iter_members
from ir_toolkit.triage.transfer import HashingReader

MANIFEST_FORMAT = "irkit-evidence-manifest/1"
SEAL_FORMAT = "irkit-evidence-seal/1"
PLAIN_NAME = "bundle.tar"
ENCRYPTED_NAME = "bundle.tar.enc"
MANIFEST_NAME = "manifest.json"
SEAL_NAME = "seal.json"
LOG_NAME = "collection.log"
PARTIAL = ".partial"
_COPY_BUF = 1 << 20


def utc_now() -> str:
    return stamp()


def new_collection_id() -> str:
    return f"{file_stamp()}-{secrets.token_hex(3)}"


def evidence_root(case_id: str) -> Path:
    return CaseLayout.of(case_id).evidence


def host_dir(case_id: str, tenant: str, host: str) -> Path:
    return evidence_root(case_id) / tenant / host


def json_bytes(data: Any) -> bytes:
    """The on-disk form of manifest.json and seal.json: sorted keys, ASCII, final newline; one top-level key a
    line, and a list of objects (the manifest's ``files``, ``outputs``, ``artifacts``) one object a line.

    (Not ``json.dumps(indent=2)``: with an indent the standard library encodes in Python, ~20 ms of
    controller CPU per 1,500-file manifest; compact values go through its C encoder.)"""
    if not isinstance(data, dict) or not data:
        return (json.dumps(data, sort_keys=True, ensure_ascii=True) + "\n").encode()
    dump = json.JSONEncoder(sort_keys=True, ensure_ascii=True).encode
    lines = []
    for key in sorted(data):
        value = data[key]
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            text = "[\n" + ",\n".join("    " + dump(v) for v in value) + "\n  ]"
        else:
            text = dump(value)
        lines.append(f"  {dump(key)}: {text}")
    return ("{\n" + ",\n".join(lines) + "\n}\n").encode()


def sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_COPY_BUF):
            sha.update(chunk)
    return sha.hexdigest()


#: a member of at most this many bytes is read whole before it is written (:meth:`BundleWriter.add_stream`)
SMALL_MEMBER = 1 << 20
_ENDED = object()  # _read_whole: the source ended before the size


def _read_whole(stream: IO[bytes], size: int) -> tuple[bytes, Any]:
    """``size`` bytes of ``stream`` and None; or what came before it failed (the exception) or ended (``_ENDED``)."""
    parts: list[bytes] = []
    got = 0
    try:
        while got < size:
            chunk = stream.read(size - got)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
    except Exception as exc:  # noqa: BLE001 - replayed into the tar writer, which completes the member
        return b"".join(parts)[:size], exc
    data = parts[0] if len(parts) == 1 else b"".join(parts)
    if len(data) > size:  # a source that gave more than asked: only the member's bytes are its data
        data = data[:size]
    return data, (None if len(data) == size else _ENDED)


class _Replay(io.RawIOBase):
    """The bytes :func:`_read_whole` got, then its source's failure again (or its end)."""

    def __init__(self, data: bytes, failure: Any) -> None:
        self._data: bytes | None = data
        self._failure = failure

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        if self._data:
            data, self._data = self._data, None
            return data
        if self._failure is _ENDED:
            return b""
        raise self._failure


class _HashingWriter(io.RawIOBase):
    """Hashes and counts what is written; the disk writes happen on a helper thread.

    Receiving from the network and writing to disk then overlap (the bundle's
    bytes are hashed in order, on the writer thread). Writes are gathered into
    blocks of :data:`BLOCK` bytes before they are handed over: one queue hand-off
    (a lock, a condition, a thread wake-up) per block, not per 64 KiB chunk the
    encryption emits or per member header and padding. At most ``depth`` blocks
    wait in memory, plus the one being gathered.
    """

    BLOCK = 256 << 10

    def __init__(self, sink: IO[bytes], depth: int = 4) -> None:
        self.sink = sink
        self.sha = hashlib.sha256()
        self.count = 0
        self._pending = bytearray()
        self._queue: queue.Queue[bytearray | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bundle-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            data = self._queue.get()
            if data is None:
                return
            if self._error is not None:
                continue
            try:
                self.sink.write(data)
                self.sha.update(data)
            except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
                self._error = exc

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:  # type: ignore[override]
        if self._error is not None:
            raise self._error
        pending = self._pending
        before = len(pending)
        pending += data
        n = len(pending) - before
        self.count += n
        if len(pending) >= self.BLOCK:
            self._pending = bytearray()
            self._queue.put(pending)  # handed over whole: the writer thread owns it now
        return n

    def drain(self) -> None:
        """Wait until every byte is on its way to the file; re-raise a write error (e.g. disk full)."""
        if self._thread.is_alive():
            if self._pending:
                self._queue.put(self._pending)
                self._pending = bytearray()
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error


# --------------------------------------------------------------------------- evidence space


GiB = 1 << 30
#: per-member overhead reserved on top of its data (pax header, padding)
_MEMBER_OVERHEAD = 4096


class QuotaExceeded(OSError):
    """Writing this member would go over a quota or below the free-space floor (nothing was written)."""


@dataclass(frozen=True)
class EvidenceLimits:
    """What one host's bundle, and all evidence of a case, may take of the controller's disk.

    ``min_free`` is a floor of free space that evidence never writes into, so the audit log
    and the escrow (on the same ``$IRKIT_HOME``) stay writable when a host fills the disk.
    """

    host_quota: int = 16 * GiB
    case_quota: int = 512 * GiB
    min_free: int = 1 * GiB

    @classmethod
    def from_env(cls) -> EvidenceLimits:
        """Defaults, overridden by ``IRKIT_EVIDENCE_HOST_QUOTA`` / ``_CASE_QUOTA`` / ``_MIN_FREE`` (sizes like 4G)."""
        from ir_toolkit.triage.schema import parse_size

        values: dict[str, int] = {}
        for name, env in (("host_quota", "IRKIT_EVIDENCE_HOST_QUOTA"), ("case_quota", "IRKIT_EVIDENCE_CASE_QUOTA"),
                          ("min_free", "IRKIT_EVIDENCE_MIN_FREE")):
            if os.environ.get(env):
                try:
                    values[name] = parse_size(os.environ[env])
                except ValueError as exc:
                    raise InputError(f"{env}: {exc}") from None
        return cls(**values)


_usage_lock = threading.Lock()
_case_usage: dict[str, int] = {}   # evidence root -> bytes (on disk at first use + written since, this process)
_in_flight = 0                     # bytes reserved by members being written right now (all cases)
#: free space per evidence directory: (monotonic time of the statvfs, bytes free then, bytes settled since).
#: A host's bundle has hundreds of members; one statvfs per member, under the lock every collecting
#: thread takes, cost more controller CPU than the members' own bookkeeping. The figure is refreshed
#: at most every _FREE_MAX_AGE seconds, and at once near the floor; bytes settled since are subtracted.
_free_cache: dict[str, tuple[float, int, int]] = {}
_FREE_MAX_AGE = 0.25


def _free_bytes(directory: Path, need: int, floor: int) -> int:
    """Free bytes under ``directory`` less what this process wrote since the last look (lock held)."""
    key = str(directory)
    now = time.monotonic()
    cached = _free_cache.get(key)
    if cached is not None and now - cached[0] < _FREE_MAX_AGE:
        estimate = cached[1] - cached[2]
        if estimate - _in_flight - need >= 2 * floor + (64 << 20):
            return estimate
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    _free_cache[key] = (now, free, 0)
    return free


def _disk_usage(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                continue
    return total


class EvidenceBudget:
    """Reserves space for each member before it is written (sizes are known up front)."""

    def __init__(self, limits: EvidenceLimits, case_root: Path, directory: Path) -> None:
        self.limits = limits
        self.case_key = str(case_root)
        self.directory = directory
        self.host_used = 0
        with _usage_lock:
            if self.case_key not in _case_usage:
                _case_usage[self.case_key] = _disk_usage(case_root) if case_root.is_dir() else 0

    def reserve(self, size: int) -> int:
        """Claim ``size`` (+ overhead) bytes; raises :class:`QuotaExceeded`. Returns the amount claimed."""
        global _in_flight
        need = size + _MEMBER_OVERHEAD
        with _usage_lock:
            if self.host_used + need > self.limits.host_quota:
                raise QuotaExceeded(errno.EDQUOT, f"host evidence quota of {self.limits.host_quota} bytes reached "
                                                  f"({self.host_used} used, {size} more asked)")
            case_used = _case_usage.get(self.case_key, 0)
            if case_used + need > self.limits.case_quota:
                raise QuotaExceeded(errno.EDQUOT, f"case evidence quota of {self.limits.case_quota} bytes reached "
                                                  f"({case_used} used, {size} more asked)")
            free = _free_bytes(self.directory, need, self.limits.min_free) - _in_flight
            if free - need < self.limits.min_free:
                raise QuotaExceeded(errno.ENOSPC, f"free space floor: only {max(free, 0)} bytes free, evidence keeps "
                                                  f"{self.limits.min_free} free for the audit log and escrow")
            self.host_used += need
            _case_usage[self.case_key] = case_used + need
            _in_flight += need
        return need

    def settle(self, claimed: int) -> None:
        """The member is written: its bytes are on disk now, no longer in flight."""
        global _in_flight
        with _usage_lock:
            _in_flight = max(0, _in_flight - claimed)
            cached = _free_cache.get(str(self.directory))
            if cached is not None:  # on disk now: counted against the cached free space until the next look
                _free_cache[str(self.directory)] = (cached[0], cached[1], cached[2] + claimed)


class IncompleteMember(Exception):
    """A member's source broke after its header was written; the archive member was completed with
    ``padded`` zero bytes (at most the size announced, which is within the cap). ``digest`` covers the
    member as stored, ``received`` the bytes that really came from the source."""

    def __init__(self, name: str, digest: str, received: int, padded: int, cause: BaseException | None) -> None:
        super().__init__(f"{name}: source broke after {received} bytes ({padded} zero bytes complete the member)")
        self.name, self.digest, self.received, self.padded, self.cause = name, digest, received, padded, cause


@dataclass(frozen=True)
class MemberMeta:
    mtime: float = 0.0
    mode: int = 0o600
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""


class BundleWriter:
    """Streams members into one archive (optionally encrypted) and seals it."""

    def __init__(self, final_dir: Path, recipients: list[X25519PublicKey] | None = None, *,
                 budget: EvidenceBudget | None = None) -> None:
        self.final_dir = final_dir
        self.budget = budget
        self.partial_dir = final_dir.with_name(final_dir.name + PARTIAL)
        self.recipients = list(recipients or [])
        final_dir.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.partial_dir.mkdir(mode=0o700)
        self.bundle_name = ENCRYPTED_NAME if self.recipients else PLAIN_NAME
        self._raw = os.fdopen(os.open(self.partial_dir / self.bundle_name,
                                      os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")
        self._hasher = _HashingWriter(self._raw)
        self._enc = EncryptingWriter(self._hasher, self.recipients) if self.recipients else None
        self._tar = TarWriter(self._enc or self._hasher)
        self.members: dict[str, str] = {}
        self._closed = False

    def _info(self, name: str, size: int, meta: MemberMeta) -> tarfile.TarInfo:
        if name in self.members:
            raise ValueError(f"duplicate archive member {name}")
        info = tarfile.TarInfo(name)
        info.size = size
        info.mtime = min(max(meta.mtime, 0.0), 253402300799.0) if meta.mtime == meta.mtime else 0.0
        info.mode = meta.mode & 0o7777
        info.uid, info.gid = meta.uid, meta.gid
        info.uname, info.gname = meta.uname, meta.gname
        return info

    def add_stream(self, name: str, size: int, stream: IO[bytes], meta: MemberMeta = MemberMeta()) -> str:
        """Copy exactly ``size`` bytes from ``stream`` into member ``name``; returns their SHA-256.

        A member of at most :data:`SMALL_MEMBER` bytes (most of a host's files) is read whole first, hashed in one
        call and written as one piece with its header and padding (one write through the encryption and the
        writer's gathering instead of three, no pass-through reader per chunk); the archive's bytes are the same.
        """
        info = self._info(name, size, meta)
        claimed = self.budget.reserve(size) if self.budget is not None else 0
        try:
            source: IO[bytes] = stream
            if size <= SMALL_MEMBER:
                data, failure = _read_whole(stream, size)
                if failure is None:
                    digest = hashlib.sha256(data).hexdigest()
                    self._tar.add_data(info, data)
                    self.members[name] = digest
                    return digest
                # the source broke or ended early: the member is completed exactly as a streamed one would be
                source = _Replay(data, failure)  # type: ignore[assignment]
            reader = HashingReader(source)
            try:
                self._tar.add(info, reader)  # type: ignore[arg-type]
            except SourceFailed as exc:
                sha = reader.sha.copy()
                zeros = bytes(min(exc.padded, 1 << 20))
                left = exc.padded
                while left > 0:
                    sha.update(zeros[:left])
                    left -= min(left, len(zeros))
                self.members[name] = sha.hexdigest()
                raise IncompleteMember(name, sha.hexdigest(), reader.count, exc.padded, exc.cause) from exc
        finally:
            if self.budget is not None:
                self.budget.settle(claimed)
        digest = reader.sha.hexdigest()
        self.members[name] = digest
        return digest

    def add_bytes(self, name: str, data: bytes, meta: MemberMeta = MemberMeta()) -> str:
        return self.add_stream(name, len(data), io.BytesIO(data), meta)

    def finish(self, manifest: dict[str, Any], log_bytes: bytes, seal_fields: dict[str, Any]) -> Collection:
        """Append the log and manifest, close and fsync, write the seal, rename into place."""
        now = _dt.datetime.now(_dt.timezone.utc).timestamp()
        self.budget = None  # the log and manifest always fit: they are what makes the bundle evidence at all
        log_sha = self.add_bytes(LOG_NAME, log_bytes, MemberMeta(mtime=now))
        manifest = {**manifest, "log": {"archive_path": LOG_NAME, "sha256": log_sha, "size": len(log_bytes)}}
        manifest_bytes = json_bytes(manifest)
        self.add_bytes(MANIFEST_NAME, manifest_bytes, MemberMeta(mtime=now))
        self._tar.close()
        if self._enc is not None:
            self._enc.close()
        self._hasher.drain()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        self._closed = True
        if self._enc is None:
            fd = os.open(self.partial_dir / MANIFEST_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(manifest_bytes)
        seal = {
            "format": SEAL_FORMAT,
            **seal_fields,
            "bundle_file": self.bundle_name,
            "bundle_sha256": self._hasher.sha.hexdigest(),
            "bundle_size": self._hasher.count,
            "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
            "encrypted": self._enc is not None,
            "recipients": [fingerprint(r) for r in self.recipients],
        }
        seal_path = self.partial_dir / SEAL_NAME
        with os.fdopen(os.open(seal_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as fh:
            fh.write(json_bytes(seal))
            fh.flush()
            os.fsync(fh.fileno())
        if (self.partial_dir / MANIFEST_NAME).exists():
            with open(self.partial_dir / MANIFEST_NAME, "rb+") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(self.partial_dir)
        os.rename(self.partial_dir, self.final_dir)
        _fsync_dir(self.final_dir.parent)
        return Collection(self.final_dir)

    def abort(self) -> None:
        """Close without sealing; the ``.partial`` directory stays for inspection."""
        if self._closed:
            return
        self._closed = True
        for closer in (self._tar.close, getattr(self._enc, "close", None), self._hasher.drain, self._raw.close):
            if closer is None:
                continue
            try:
                closer()
            except Exception:  # noqa: BLE001 - best effort on an already failing path
                pass


@dataclass(frozen=True)
class Collection:
    """One sealed collection directory."""

    path: Path

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def host(self) -> str:
        return self.path.parent.name

    @property
    def tenant(self) -> str:
        return self.path.parent.parent.name

    def seal(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / SEAL_NAME).read_bytes())
        except FileNotFoundError:
            raise VerificationFailed(f"{self.path}: {SEAL_NAME} is missing") from None
        except ValueError:
            raise VerificationFailed(f"{self.path / SEAL_NAME}: not valid JSON") from None

    @property
    def encrypted(self) -> bool:
        return (self.path / ENCRYPTED_NAME).exists()

    @property
    def bundle_path(self) -> Path:
        return self.path / (ENCRYPTED_NAME if self.encrypted else PLAIN_NAME)

    def relative(self, case_id: str) -> str:
        return str(self.path.relative_to(case_dir(case_id)))


def list_collections(case_id: str, *, tenant: str | None = None, host: str | None = None,
                     include_partial: bool = False) -> list[Collection]:
    """Sealed collections of a case (sorted by tenant, host, collection id)."""
    root = evidence_root(case_id)
    if not root.is_dir():
        return []
    found: list[Collection] = []
    for tdir in sorted(p for p in root.iterdir() if p.is_dir()):
        if tenant is not None and tdir.name != tenant:
            continue
        for hdir in sorted(p for p in tdir.iterdir() if p.is_dir()):
            if host is not None and hdir.name != host:
                continue
            for cdir in sorted(p for p in hdir.iterdir() if p.is_dir()):
                if cdir.name.endswith(PARTIAL) and not include_partial:
                    continue
                found.append(Collection(cdir))
    return found


def latest_collection(case_id: str, host: str, *, tenant: str | None = None) -> Collection:
    sealed = [c for c in list_collections(case_id, tenant=tenant, host=host) if not c.id.endswith(PARTIAL)]
    if not sealed:
        raise InputError(f"case {case_id}: no evidence bundle for host {host!r} (run irkit triage first)")
    return sealed[-1]


class ArchiveStream:
    """The byte streams under an open archive: ``sha``/``count`` cover the file on disk."""

    def __init__(self, raw: HashingReader, source: IO[bytes]) -> None:
        self._raw = raw
        self._source = source

    def drain(self) -> None:
        """Read (and for encrypted bundles authenticate) everything after the tar's end."""
        while self._source.read(_COPY_BUF):
            pass
        while self._raw.read(_COPY_BUF):
            pass

    @property
    def sha256(self) -> str:
        return self._raw.sha.hexdigest()

    @property
    def count(self) -> int:
        return self._raw.count


@contextmanager
def open_archive(collection: Collection, identities: list[X25519PrivateKey] | None = None
                 ) -> Iterator[tuple[Iterator[tuple[tarfile.TarInfo, MemberReader]], ArchiveStream]]:
    """Stream-read a bundle's members, decrypting on the fly when it is encrypted.

    Raises :class:`TarFormatError` (corrupt archive), VerificationFailed (failed
    decryption) or InputError (no recipient key) while iterating.
    """
    with open(collection.bundle_path, "rb") as fh:
        raw = HashingReader(fh)
        source: IO[bytes]
        if collection.encrypted:
            source = io.BufferedReader(DecryptingReader(raw, list(identities or []),  # type: ignore[arg-type]
                                                        name=collection.bundle_path.name), _COPY_BUF)
        else:
            source = io.BufferedReader(raw, _COPY_BUF)  # type: ignore[arg-type]
        yield iter_members(source), ArchiveStream(raw, source)
