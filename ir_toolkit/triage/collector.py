"""Collect one Linux host over one already-open SSH connection into one bundle.

Order of work (volatile first; nothing is copied to the host's disk):

1. ``command`` artifacts, in ``order``: output captured (up to a cap, the
   excess counted and logged) and written into the bundle at once.
   Consecutive plain ones share one exec channel (:mod:`.cmdbatch`: each
   output gzip-framed on the host, so none can pose as another's).
2. ``file``/``glob``/``hash`` artifacts, in ``order``: ``find -P`` + ``stat``
   record MACB times, owner and mode *before* anything reads the files.
   Symlinks are recorded, never followed. Files over the cap are listed with
   the reason, not copied.
3. One ``sha256sum`` pass on the host over every selected file.
4. One tar stream brings the files over; each is hashed again on receipt.
   A file whose two hashes differ is copied once more, hashed on the host
   from the very bytes sent (it changed between the reads); if that also
   disagrees the file is marked ``hash_mismatch`` and reported loudly.

Every skipped, missing or failed path is written to the collection log with
its reason, and every file appears in the manifest with its status.
"""

from __future__ import annotations

import datetime as _dt
import getpass
import hashlib
import io
import json
import re
import socket
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from ir_toolkit import __version__
from ir_toolkit.log import get_logger
from ir_toolkit.timeutil import stamp
from ir_toolkit.transports.base import TIMED_OUT, TransportError
from ir_toolkit.triage import cmdbatch, remote, utmp
from ir_toolkit.triage.bundle import (
    MANIFEST_FORMAT,
    BundleWriter,
    Collection,
    EvidenceBudget,
    EvidenceLimits,
    IncompleteMember,
    MemberMeta,
    QuotaExceeded,
    evidence_root,
    host_dir,
    new_collection_id,
    utc_now,
)
from ir_toolkit.triage.schema import USER_HOME, VOLATILE, Artifact, Selection
from ir_toolkit.triage.transfer import (
    BoundedBuffer,
    CappedResult,
    DeadlineExceeded,
    LimitedReader,
    MemberRefused,
    TransferError,
    open_exec,
    run_capped,
    sftp_fetch,
    tar_fetch,
    tee_fetch,
)

# Statuses of a manifest file entry.
COLLECTED = "collected"          # copied; host and receipt hashes agree (or command output kept)
HASHED = "hashed"                # hash-only artifact: host-side hash recorded, not copied
RECORDED = "recorded"            # symlink: metadata and target recorded, never followed
SKIPPED = "skipped"              # over the size cap: metadata recorded, reason given
FAILED = "failed"                # could not be read, hashed or copied: reason given
HASH_MISMATCH = "hash_mismatch"  # the bytes received differ from the host's hash
TRUNCATED = "truncated"          # command output longer than its cap: first bytes kept
PROBLEM_STATUSES = (HASH_MISMATCH,)

# Statuses of a collection.
COMPLETE = "complete"                      # everything selected was collected as listed
COMPLETE_WITH_ERRORS = "complete_with_errors"  # some files failed (unreadable, vanished, hash mismatch)
PARTIAL = "partial"                        # cut short (deadline, lost connection, quota) or the host lied
FAILED_COLLECTION = "failed"

_HASH_RATE = 20 * 1024 * 1024  # bytes/s assumed when sizing the host hashing timeout
_HASH_TIMEOUT_MAX = 900.0      # ... but never longer than this, whatever sizes the host claims
#: a refused tar member (unrequested, duplicate, longer than listed) whose extra data is at most this
#: is skipped and the stream goes on; anything larger stops the stream (it is not read)
SKIP_LIMIT = 4 << 20
#: at most this many tar streams per collection (each restart leaves out the file it broke at)
MAX_STREAMS = 8
#: host anomalies recorded in the manifest (the count goes on)
MAX_ANOMALIES = 200
#: command output and retry copies above this go to a spool file in the bundle's .partial directory
SPOOL_IN_MEMORY = 8 << 20
_SAFE_NAME = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]{0,31}")


#: a file artifact's listing (``find`` + ``stat`` records) longer than this fails, as over the transport's limit
LISTING_OUTPUT_CAP = 64 << 20


@dataclass
class _Job:
    """One artifact's remote command in a batch (:mod:`.cmdbatch`); ``roots`` for a file artifact's listing."""

    index: int
    artifact: Artifact
    command: str
    roots: list[tuple[str, bool]] | None = None

    @property
    def name(self) -> str:
        return self.artifact.name

    @property
    def timeout(self) -> int:
        return int(self.artifact.timeout)


class CollectionCut(Exception):
    """The collection cannot go on (deadline, lost connection); what was collected is sealed ``partial``."""

    def __init__(self, reason: str, *, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.timed_out = timed_out


@dataclass(frozen=True)
class HostTarget:
    """Who and what is being collected."""

    case: str
    msp: str
    tenant: str
    host: str
    address: str
    os: str = "linux"
    ssh_user: str = "root"
    host_key_fingerprint: str | None = None


@dataclass
class CollectionResult:
    target: HostTarget
    status: str  # complete | complete_with_errors | failed
    collection: Collection | None = None
    seal: dict[str, Any] | None = None
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    error: str | None = None
    duration: float = 0.0
    #: the step's deadline cut the collection short (the host is then ``timed_out``)
    timed_out: bool = False
    #: what the host did that it must not (sizes it lied about, members it was not asked for ...)
    anomalies: list[str] = field(default_factory=list)


class CollectionLog:
    """The per-collection log (JSON lines, stored in the bundle): every path's fate, with reasons."""

    def __init__(self, host: str) -> None:
        self.records: list[dict[str, Any]] = []
        self._log = get_logger("triage").bind(host=host)

    def add(self, level: str, event: str, **fields: Any) -> None:
        record = {"ts": utc_now(), "level": level, "event": event, **{k: v for k, v in fields.items() if v is not None}}
        self.records.append(record)
        # The console gets errors (hash mismatches); -v shows warnings; everything is in the bundle's log.
        getattr(self._log, {"error": "error", "warning": "info"}.get(level, "debug"))(event, **fields)

    def to_bytes(self) -> bytes:
        return "".join(json.dumps(r, sort_keys=True, ensure_ascii=True) + "\n" for r in self.records).encode()


def collector_identity(target: HostTarget, profile: str, transfer: str) -> dict[str, Any]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return {
        "tool": "irkit", "version": __version__, "controller": socket.gethostname(), "operator": user,
        "ssh_user": target.ssh_user, "profile": profile, "transfer": transfer,
    }


class HostCollector:
    """One pass over one host: run :meth:`run`, then read :attr:`files` and :attr:`artifacts`."""

    def __init__(
        self,
        conn: Any,
        target: HostTarget,
        selection: Selection,
        writer: BundleWriter,
        *,
        transfer: str = "tar",
        idle_timeout: float = 120.0,
        deadline: float | None = None,
        batch_commands: bool = True,
    ) -> None:
        if transfer not in ("tar", "sftp"):
            raise ValueError(f"unknown transfer method {transfer!r}")
        self.deadline = deadline
        #: consecutive plain command artifacts share one exec channel (:mod:`.cmdbatch`)
        self.batch_commands = batch_commands
        self.anomalies: list[str] = []
        self.anomaly_count = 0
        self.quota_reason: str | None = None
        self.conn = conn
        self.target = target
        self.selection = selection
        self.writer = writer
        self.transfer = transfer
        self.idle_timeout = idle_timeout
        self.log = CollectionLog(target.host)
        self.files: dict[str, dict[str, Any]] = {}   # source path -> manifest entry
        self.outputs: list[dict[str, Any]] = []      # command outputs
        self.artifacts: list[dict[str, Any]] = []
        self._stats: dict[str, remote.FileStat] = {}
        self._inodes: dict[tuple[int, int], str] = {}
        self._symlinks = 0                          # symlinks recorded by the listing being read
        self._homes: list[str] | None = None
        self._missing_tools: set[str] = set()      # tools the preflight found missing on the host
        self._decode: dict[str, str] = {}          # path -> decoder, for files decoded on the controller
        self._captured: dict[str, bytes] = {}      # path -> the bytes stored, kept for decoding
        self._capture_room = DECODE_TOTAL
        self._limits: dict[str, int] = {}        # path -> the most bytes that may be stored for it
        self._requested: set[str] = set()        # paths asked for in the current stream
        self._got: set[str] = set()              # ... and already received in it
        self._refused: dict[str, str] = {}       # path -> why its copy was refused
        #: "<artifact>#<section>" -> that section's bytes, for the artifacts listed by a walk (``listed_by``)
        self._listings: dict[str, bytes | None] = {a.listed_by: None for a in selection.artifacts if a.listed_by}

    # ------------------------------------------------------------------ limits
    def _timeout(self, wanted: float) -> float:
        """``wanted`` seconds, but never past the step's deadline (which raises :class:`CollectionCut`)."""
        if self.deadline is None:
            return wanted
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise CollectionCut("the step's deadline passed", timed_out=True)
        return max(0.5, min(wanted, left))

    def _past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def _lost(self, exc: BaseException) -> None:
        """After a failed remote call: a dead connection or a passed deadline ends the collection."""
        if isinstance(exc, DeadlineExceeded) or self._past_deadline():
            raise CollectionCut(f"the step's deadline passed: {exc}", timed_out=True) from None
        if not _alive(self.conn):
            raise CollectionCut(f"connection lost: {exc}") from None

    def anomaly(self, text: str, **fields: Any) -> None:
        """Record something the host did that it must not; the collection is then ``partial``."""
        self.anomaly_count += 1
        if len(self.anomalies) < MAX_ANOMALIES:
            self.anomalies.append(text)
        self.log.add("warning", "host anomaly: " + text, **fields)

    def _spool(self) -> Any:
        return tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, dir=self.writer.partial_dir)

    # ------------------------------------------------------------------ steps
    def run(self) -> None:
        self._preflight()
        for held in self.selection.held_back:
            self.artifacts.append({"name": held.name, "collector": held.collector, "status": "not_run",
                                   "reason": "modifies_state: needs the explicit flag to run"})
            self.log.add("warning", "artifact not run: it modifies state on the host", artifact=held.name)
        artifacts = list(self.selection.artifacts)
        i = 0
        while i < len(artifacts):
            group = self._batchable_run(artifacts, i)
            if len(group) > 1:
                i += self._command_batch(group)
                continue
            artifact = artifacts[i]
            started = time.monotonic()
            if artifact.collector == "command":
                summary = self._command(artifact)
            else:
                summary = self._enumerate(artifact)
            summary["duration_ms"] = int((time.monotonic() - started) * 1000)
            self.artifacts.append(summary)
            i += 1
        self._hash_on_host([p for p, e in self.files.items() if e["status"] in ("pending", "pending_hash")])
        self._copy([p for p, e in self.files.items() if e["status"] == "pending"])
        for entry in self.files.values():
            if entry["status"] == "pending_hash":
                entry["status"] = HASHED
        self._decode_login_records()

    def _decode_login_records(self) -> None:
        """Decode the copied login records on the controller (``live/decoded/<path>.txt``), from the bytes stored."""
        for path, data in sorted(self._captured.items()):
            entry = self.files.get(path, {})
            if entry.get("status") != COLLECTED or hashlib.sha256(data).hexdigest() != entry.get("sha256_received"):
                continue
            kind = utmp.kind_for(path)
            if kind is None:
                continue
            text = utmp.decode(path, data, kind).encode("ascii")
            name = f"live/decoded{path}.txt"
            try:
                digest = self.writer.add_bytes(name, text, MemberMeta(mtime=time.time(), mode=0o644))
            except QuotaExceeded as exc:
                self.quota_reason = str(exc)
                self.log.add("error", "decoded login records not stored: evidence quota", path=path, reason=str(exc))
                continue
            self.outputs.append({
                "archive_path": name, "artifact": entry["artifacts"][0], "kind": "decoded", "decoded_from": path,
                "decoder": f"irkit {kind} parser (controller)", "size": len(text), "sha256_received": digest,
                "sha256_host": None, "captured": _iso(time.time()), "status": COLLECTED,
            })
        self._captured.clear()

    def _preflight(self) -> None:
        """Note missing tools; without tar the files come over SFTP instead, without gzip (or awk, for an output
        with sections) a compressed output comes over uncompressed."""
        commands = sum(a.collector == "command" for a in self.selection.artifacts)
        # a batch needs gzip only where its outputs come compressed (not in the volatile snapshot: _gzip_in_batch)
        batch_gzip = self.batch_commands and commands > 1 and self.selection.kind != VOLATILE
        if not any(a.collector != "command" or a.compress is not None for a in self.selection.artifacts) and not (
                batch_gzip):
            return
        try:
            result = self.conn.run(remote.PREFLIGHT_COMMAND, timeout=self._timeout(60))
        except TransportError as exc:
            self._lost(exc)
            self.log.add("warning", "tool check failed", reason=str(exc))
            return
        missing = result.stdout.decode("utf-8", "replace").split()
        if missing:
            self.log.add("warning", "tools missing on host", tools=missing)
        self._missing_tools = set(missing)
        if self._missing_tools & set(remote.COMPRESS_TOOLS) and any(a.compress for a in self.selection.artifacts):
            self.log.add("warning", "outputs the host would compress come over uncompressed",
                         tools=sorted(self._missing_tools & set(remote.COMPRESS_TOOLS)))
        if "tar" in missing and self.transfer == "tar":
            self.transfer = "sftp"
            self.log.add("warning", "no tar on host: files are copied over SFTP")

    def _user_homes(self) -> list[str]:
        if self._homes is None:
            try:
                result = self.conn.run(remote.HOMES_COMMAND, timeout=self._timeout(60))
            except TransportError as exc:
                self._lost(exc)
                self.log.add("warning", "home directories unknown", reason=str(exc))
                self._homes = []
                return self._homes
            homes = sorted({h for h in result.stdout.decode("utf-8", "surrogateescape").splitlines()
                            if h.startswith("/") and "\0" not in h and len(h) < 4096})
            self._homes = homes
            self.log.add("info", "home directories", homes=homes)
        return self._homes

    def _command(self, artifact: Artifact) -> dict[str, Any]:
        summary: dict[str, Any] = {"name": artifact.name, "collector": "command"}
        compress = self._compresses(artifact)
        archive = f"live/{artifact.compressed_name if compress else artifact.output_name}"
        spool = self._spool()
        parts = {tag: self._spool() for tag in artifact.sections} if artifact.sections else {}
        untagged = self._spool() if compress and artifact.sections else None
        # Plain output: sections are split as it arrives (one pass; no second copy of a large output).
        # Compressed: the host split them off (remote.SECTION_AWK); the stream is kept as it came, hashed.
        sink: Any
        if compress:
            sink = _HashingSink(spool)
        elif artifact.sections:
            sink = SectionSplitter(artifact.sections, spool, parts)
        else:
            sink = spool
        try:
            res = run_capped(self.conn, remote.command_for(artifact, compress=compress), cap=artifact.file_cap,
                             timeout=self._timeout(float(artifact.timeout)), deadline=self.deadline, spool=sink)
        except TransferError as exc:
            for f in (spool, untagged, *parts.values()):
                if f is not None:
                    f.close()
            self._lost(exc)
            return self._command_failed(artifact, summary, str(exc))
        return self._keep_output(artifact, summary, res, spool, sink=sink, compress=compress, archive=archive,
                                 parts=parts, untagged=untagged)

    def _command_failed(self, artifact: Artifact, summary: dict[str, Any], reason: str) -> dict[str, Any]:
        self.log.add("error", "command failed", artifact=artifact.name, reason=reason)
        summary.update(status="failed", reason=reason)
        self.outputs.append({"archive_path": None, "artifact": artifact.name, "kind": "command",
                             "command": artifact.command, "status": FAILED, "reason": reason})
        return summary

    def _keep_output(self, artifact: Artifact, summary: dict[str, Any], res: Any, spool: IO[bytes], *,
                     sink: Any, compress: bool, archive: str, parts: Mapping[str, IO[bytes]],
                     untagged: IO[bytes] | None, transit: dict[str, Any] | None = None) -> dict[str, Any]:
        """Store a command's output (``spool``: what was kept of it) and stderr; its manifest entry and summary."""
        captured = time.time()
        size = res.kept
        sections: dict[str, tuple[IO[bytes], int]] = {}
        stream_sha = None
        extra: dict[str, Any] = {}
        section_entries: list[dict[str, Any]] = []
        meta = MemberMeta(mtime=captured, mode=0o644)
        try:
            if compress:
                stream_sha = sink.sha.hexdigest()
                size, sections, extra = self._unframe(artifact, spool, res, parts, untagged)
            elif artifact.sections:
                size, part_sizes, stream_sha = sink.finish()
                sections = {tag: (parts[tag], part_sizes[tag]) for tag in artifact.sections}
            if sections and not res.truncated:
                self._keep_listings(artifact.name, sections)
            spool.seek(0)
            digest = self.writer.add_stream(archive, size, LimitedReader(spool, size), meta)
            for tag, (part, part_size) in sections.items():
                name = f"live/{artifact.sections[tag]}"
                part.seek(0)
                section_entries.append({
                    "archive_path": name, "artifact": artifact.name, "kind": "section", "section": tag,
                    "size": part_size, "sha256_received": self.writer.add_stream(name, part_size, part, meta),
                    "sha256_host": None, "captured": _iso(captured), "status": COLLECTED,
                    "note": f"the output lines of {artifact.name} tagged '{tag}', tag removed",
                })
            if untagged is not None and extra.get("untagged_size"):
                name = f"live/{artifact.untagged_name}"
                untagged.seek(0)
                section_entries.append({
                    "archive_path": name, "artifact": artifact.name, "kind": "section", "section": None,
                    "size": extra["untagged_size"], "sha256_received": self.writer.add_stream(
                        name, extra.pop("untagged_size"), untagged, meta),
                    "sha256_host": None, "captured": _iso(captured), "status": COLLECTED,
                    "note": f"untagged lines the host sent among the section lines of {artifact.name} "
                            "(irkit's own framing never puts any there)",
                })
        except QuotaExceeded as exc:
            self.quota_reason = str(exc)
            self.log.add("error", "command output not stored: evidence quota", artifact=artifact.name, reason=str(exc))
            summary.update(status="failed", reason=str(exc))
            self.outputs.append({"archive_path": None, "artifact": artifact.name, "kind": "command",
                                 "command": artifact.command, "status": FAILED, "reason": str(exc)})
            return summary
        finally:
            for f in (spool, untagged, *parts.values()):
                if f is not None:
                    f.close()
        entry: dict[str, Any] = {
            "archive_path": archive, "artifact": artifact.name, "kind": "command", "command": artifact.command,
            "exit_status": res.exit_status, "size": size, "sha256_received": digest,
            "sha256_host": None, "captured": _iso(captured), "status": COLLECTED,
        }
        if compress:
            entry.update(encoding="gzip", **extra)
        if stream_sha is not None and (stream_sha != digest or artifact.sections):
            entry["sha256_stream"] = stream_sha
        if transit:
            entry.update(transit)
        self.outputs.extend(section_entries)
        if res.truncated:
            entry["status"] = TRUNCATED
            what = "compressed output" if compress else "output"
            entry["reason"] = (f"{what} {res.total_bytes} bytes > max_file_size {artifact.file_cap}; first bytes kept"
                               + ("; its sections (at the end of the stream) are not in it"
                                  if compress and artifact.sections else ""))
            self.log.add("warning", "command output over cap: truncated", artifact=artifact.name,
                         total_bytes=res.total_bytes, kept=size)
        if res.stderr:
            err_name = f"live/{artifact.output_name}.stderr"
            try:
                err_digest = self.writer.add_bytes(err_name, res.stderr, meta)
                entry["stderr"] = {"archive_path": err_name, "sha256_received": err_digest, "size": len(res.stderr)}
            except QuotaExceeded as exc:
                self.quota_reason = str(exc)
        level = "info" if res.exit_status == 0 else "warning"
        why = "tool not found on host" if res.exit_status == 127 else None
        self.log.add(level, "command ran", artifact=artifact.name, exit_status=res.exit_status,
                     bytes=size, reason=why)
        self.outputs.append(entry)
        summary.update(status="ok" if res.exit_status == 0 else "errors", exit_status=res.exit_status,
                       files=1 + len(section_entries), bytes=res.kept)
        return summary

    def _batchable(self, artifact: Artifact) -> bool:
        """An artifact whose one remote command may share a channel with its neighbours' (:mod:`.cmdbatch`):
        a plain command artifact, or a file artifact's listing (not one a walk already listed)."""
        if not self.batch_commands:
            return False
        if artifact.collector == "command":
            return bool(artifact.command) and not artifact.sections and not self._compresses(artifact)
        return not artifact.listed_by

    def _batchable_run(self, artifacts: list[Artifact], start: int) -> list[Artifact]:
        """The batchable artifacts from ``start`` on, consecutive (the order stays the profile's)."""
        group: list[Artifact] = []
        for artifact in artifacts[start:start + cmdbatch.MAX_BATCH]:
            if not self._batchable(artifact):
                break
            group.append(artifact)
        return group

    def _command_batch(self, group: list[Artifact]) -> int:
        """Run ``group``'s remote commands in one channel; an artifact the batch did not deliver (and every one
        after it) runs alone. Summaries are appended in the group's order. Returns ``len(group)``."""
        summaries: dict[int, dict[str, Any]] = {}
        jobs: list[_Job] = []
        for i, artifact in enumerate(group):
            if artifact.collector == "command":
                jobs.append(_Job(i, artifact, artifact.command or ""))
                continue
            started = time.monotonic()
            prepared = self._enumerate_prepare(artifact)
            if isinstance(prepared, dict):
                prepared["duration_ms"] = int((time.monotonic() - started) * 1000)
                summaries[i] = prepared
            else:
                jobs.append(_Job(i, artifact, prepared[0], prepared[1]))
        done = self._run_batch(jobs, summaries) if len(jobs) > 1 else 0
        for job in jobs[done:]:
            started = time.monotonic()
            if job.artifact.collector == "command":
                summary = self._command(job.artifact)
            else:
                summary = self._enumerate_alone(job.artifact, job.command, job.roots or [])
            summary["duration_ms"] = int((time.monotonic() - started) * 1000)
            summaries[job.index] = summary
        self.artifacts.extend(summaries[i] for i in sorted(summaries))
        return len(group)

    def _run_batch(self, jobs: list[_Job], summaries: dict[int, dict[str, Any]]) -> int:
        """The batch itself: fills ``summaries`` for the jobs it delivered; returns how many (in order)."""
        boundary = cmdbatch.new_boundary()
        command, script = cmdbatch.batch_command(jobs, boundary, remote.ENV_PREFIX,
                                                 [self._gzip_in_batch(job) for job in jobs])
        started = time.monotonic()
        # the channel waits at most the longest of the commands' limits for output; each command's own limit
        # is kept by the watch below, which ends the channel when the command in progress outlives it
        limit = max(job.timeout for job in jobs)
        try:
            stream = open_exec(self.conn, command, stdin=script, idle_timeout=self._timeout(float(limit)),
                               deadline=self.deadline)
        except TransferError as exc:
            self._lost(exc)
            self.log.add("warning", "command batch could not start: the commands run one by one", reason=str(exc))
            return 0
        reader = cmdbatch.BatchReader(stream.stdout(), len(jobs), boundary)
        watch = cmdbatch.FrameWatch(stream.close)
        try:
            return self._read_batch(jobs, summaries, stream, reader, watch, started)
        finally:
            watch.stop()

    def _read_batch(self, jobs: list[_Job], summaries: dict[int, dict[str, Any]], stream: Any,
                    reader: cmdbatch.BatchReader, watch: cmdbatch.FrameWatch, started: float) -> int:
        done = 0
        try:
            for job in jobs:
                watch.arm(done, self._timeout(float(job.timeout)))
                summaries[job.index] = self._batch_frame(job, reader, started)
                started = time.monotonic()
                done += 1
            watch.arm(done, self._timeout(60.0))
            reader.end()
            stream.finish()
        except (cmdbatch.BatchBroken, TransferError) as exc:
            watch.stop()
            if watch.expired is not None and watch.expired < done:
                return done  # the watch ended the channel just as the frame before completed: the rest run alone
            if watch.expired is not None:
                stream.close()
                if done == len(jobs):  # every output complete; the end line or the exit status did not come
                    self.anomaly("command batch: no end within 60 s after its last output (every output was "
                                 "complete before it)")
                    return done
                # the command in progress outlived its limit: it failed as it would have alone (the channel is
                # closed, its output lost); the ones after it run alone
                job = jobs[done]
                self.log.add("warning", "command timed out in a batch; the commands after it run one by one",
                             artifact=job.artifact.name, timeout=job.timeout)
                self._batch_failed(job, f"in a command batch: timed out after {job.timeout} s", summaries, started)
                return done + 1
            if isinstance(exc, TransferError):
                stream.close()
                self._lost(exc)
                # nor did the channel carry anything: that artifact failed as it would have alone; the ones
                # after it run alone
                if done < len(jobs):
                    self._batch_failed(jobs[done], f"in a command batch: {exc}", summaries, started)
                    done += 1
                return done
            # a shell without builtin printf exits before it prints anything (only then is its status asked for)
            if done == 0 and reader.received == 0 and self._no_builtin_printf(stream):
                self.log.add("warning", "the host's shell has no builtin printf: the commands run one by one")
                return 0
            stream.close()
            where = jobs[exc.index].artifact.name if exc.index < len(jobs) else None
            if where is not None:
                self.anomaly(f"command batch broke at {where}: {exc.reason}; it and the commands after it run "
                             "one by one", artifact=where)
            else:
                self.anomaly(f"command batch: {exc.reason} (every output was complete before it)")
            return done
        return done

    def _gzip_in_batch(self, job: _Job) -> bool:
        """Whether ``job``'s output comes gzip-compressed in its batch (:mod:`.cmdbatch`). A gzip member arrives
        in one or a few writes; an output as printed comes in one SSH packet per write of the command (a
        listing's many stat processes write 4 KB each, a script one per statement), and each packet costs the
        controller a wake-up and a decryption in Python (~80 us). So: gzip (one process on the host, ~1.4 ms)
        everywhere but in the volatile snapshot, where the host's CPU decides how soon the host is isolated
        and every extra irkit process is one more in the process table being recorded."""
        if "gzip" in self._missing_tools:
            return False
        return job.artifact.collector != "command" or self.selection.kind != VOLATILE

    @staticmethod
    def _no_builtin_printf(stream: Any) -> bool:
        """The batch printed nothing and its shell exited with the no-builtin-printf status."""
        try:
            return bool(stream.finish().exit_status == cmdbatch.NO_BUILTIN_PRINTF)
        except (TransferError, OSError):
            return False

    def _batch_failed(self, job: _Job, reason: str, summaries: dict[int, dict[str, Any]], started: float) -> None:
        if job.artifact.collector == "command":
            summary = self._command_failed(job.artifact, {"name": job.artifact.name, "collector": "command"},
                                           reason)
        else:
            summary = self._listing_failed(job.artifact, reason)
        summary.update(batched=True, duration_ms=int((time.monotonic() - started) * 1000))
        summaries[job.index] = summary

    def _batch_frame(self, job: _Job, reader: cmdbatch.BatchReader, started: float) -> dict[str, Any]:
        artifact = job.artifact
        if artifact.collector != "command":
            sink = io.BytesIO()
            frame = reader.frame(sink, LISTING_OUTPUT_CAP, compressed=self._gzip_in_batch(job))
            if frame.truncated:
                summary = self._listing_failed(artifact, f"listing output over {LISTING_OUTPUT_CAP} bytes (not kept)")
            else:
                summary = self._enumerate_result(artifact, job.roots or [], sink.getvalue(), frame.stderr)
        else:
            spool = self._spool()
            try:
                frame = reader.frame(spool, artifact.file_cap, compressed=self._gzip_in_batch(job))
            except BaseException:
                spool.close()
                raise
            stderr = BoundedBuffer()
            stderr.add(frame.stderr)
            res = CappedResult(frame.exit_status, b"", stderr.value(), frame.total, frame.truncated,
                               time.monotonic() - started, frame.kept)
            transit = {"transit": "in one channel with other commands"}
            summary = self._keep_output(artifact, {"name": artifact.name, "collector": "command"}, res, spool,
                                        sink=spool, compress=False, archive=f"live/{artifact.output_name}",
                                        parts={}, untagged=None, transit=transit)
        summary.update(batched=True, duration_ms=int((time.monotonic() - started) * 1000))
        return summary

    def _compresses(self, artifact: Artifact) -> bool:
        """The host compresses this output: the artifact asks for it and the host has the tools."""
        if artifact.compress is None:
            return False
        needs = {"gzip", "awk"} if artifact.sections else {"gzip"}
        return not (needs & self._missing_tools)

    def _unframe(self, artifact: Artifact, spool: IO[bytes], res: Any, parts: Mapping[str, IO[bytes]],
                 untagged: IO[bytes] | None) -> tuple[int, dict[str, tuple[IO[bytes], int]], dict[str, Any]]:
        """A compressed output as received in ``spool``: (bytes of the compressed stream, sections, manifest
        fields). Nothing is decompressed; with sections the trailer says where the plain section lines begin."""
        total = res.kept
        extra: dict[str, Any] = {}
        if artifact.sections and not res.truncated:
            frame = unframe_sections(spool, total)
            if frame is None:
                self.anomaly(f"output of {artifact.name} does not end with irkit's section trailer: stored whole "
                             "(as received), its sections not split", artifact=artifact.name)
                extra["framing"] = "no section trailer: stored whole, sections not split"
            else:
                body, tail = frame
                spool.seek(body)
                splitter = SectionSplitter(artifact.sections, untagged or io.BytesIO(), parts)
                reader = LimitedReader(spool, tail)
                while block := reader.read(1 << 20):
                    splitter.write(block)
                untagged_size, part_sizes, _ = splitter.finish()
                extra.update(stream_size=total, sections_size=tail)
                if untagged_size:
                    self.anomaly(f"output of {artifact.name}: {untagged_size} bytes of untagged lines among its "
                                 "section lines", artifact=artifact.name, size=untagged_size)
                    extra["untagged_size"] = untagged_size
                total = body
                sections = {tag: (parts[tag], part_sizes[tag]) for tag in artifact.sections}
                return self._check_gzip(artifact, spool, total, extra, sections)
        return self._check_gzip(artifact, spool, total, extra, {})

    def _check_gzip(self, artifact: Artifact, spool: IO[bytes], size: int, extra: dict[str, Any],
                    sections: dict[str, tuple[IO[bytes], int]]
                    ) -> tuple[int, dict[str, tuple[IO[bytes], int]], dict[str, Any]]:
        spool.seek(0)
        if spool.read(2) != b"\x1f\x8b":
            self.anomaly(f"output of {artifact.name} is not a gzip stream (stored as received)", artifact=artifact.name)
            extra["framing"] = (extra.get("framing", "") + "; " if extra.get("framing") else "") + "not gzip"
        return size, sections, extra

    def _keep_listings(self, name: str, sections: dict[str, tuple[IO[bytes], int]]) -> None:
        """Keep the sections of ``name``'s output that list files for a later artifact (bounded)."""
        for tag, (part, size) in sections.items():
            key = f"{name}#{tag}"
            if key in self._listings and size <= LISTING_CAP:
                part.seek(0)
                self._listings[key] = part.read(LISTING_CAP + 1)

    def _listed(self, artifact: Artifact) -> dict[str, Any] | None:
        """Files of a ``listed_by`` artifact from the walk's listing; None when the listing is not usable."""
        data = self._listings.pop(artifact.listed_by or "", None)
        records = remote.parse_walk_listing(data) if data is not None else None
        if records is None:
            self.log.add("info", "no usable listing from the walk: the artifact lists its files itself",
                         artifact=artifact.name, listed_by=artifact.listed_by)
            return None
        size_total = 0
        for st in records:
            if st.kind == "file":
                size_total += st.size
                self._add_file(artifact, st)
        return {"name": artifact.name, "collector": artifact.collector, "status": "ok", "files": len(records),
                "bytes": size_total, "listed_by": artifact.listed_by}

    def _enumerate(self, artifact: Artifact) -> dict[str, Any]:
        if artifact.listed_by and (listed := self._listed(artifact)) is not None:
            return listed
        prepared = self._enumerate_prepare(artifact)
        if isinstance(prepared, dict):
            return prepared
        return self._enumerate_alone(artifact, *prepared)

    def _enumerate_prepare(self, artifact: Artifact) -> dict[str, Any] | tuple[str, list[tuple[str, bool]]]:
        """The listing command of a file artifact and its roots; or its summary when it needs none."""
        summary: dict[str, Any] = {"name": artifact.name, "collector": artifact.collector}
        uses_homes = any(p.startswith(USER_HOME) for p in artifact.paths)
        roots = remote.expand_roots(artifact, self._user_homes() if uses_homes else [])
        if not roots:
            summary.update(status="ok", files=0, bytes=0)
            return summary
        return remote.enumerate_command(artifact, [r for r, _ in roots],
                                        glob=artifact.collector in ("glob", "hash")), roots

    def _enumerate_alone(self, artifact: Artifact, command: str, roots: list[tuple[str, bool]]) -> dict[str, Any]:
        try:
            res = self.conn.run(command, timeout=self._timeout(float(artifact.timeout)))
        except TransportError as exc:
            self._lost(exc)
            return self._listing_failed(artifact, str(exc))
        return self._enumerate_result(artifact, roots, res.stdout, res.stderr)

    def _listing_failed(self, artifact: Artifact, reason: str) -> dict[str, Any]:
        self.log.add("error", "listing failed: nothing collected for this artifact", artifact=artifact.name,
                     reason=reason)
        return {"name": artifact.name, "collector": artifact.collector, "status": "failed", "reason": reason,
                "files": 0, "bytes": 0}

    def _enumerate_result(self, artifact: Artifact, roots: list[tuple[str, bool]], stdout: bytes,
                          stderr: bytes) -> dict[str, Any]:
        summary: dict[str, Any] = {"name": artifact.name, "collector": artifact.collector}
        errors, absent, other = remote.parse_errors(stderr)
        from_home = {remote.glob_unescape(r) if artifact.collector in ("glob", "hash") else r
                     for r, home in roots if home}
        home_absent = [p for p in absent if p in from_home]
        for path in absent:
            if path not in from_home:
                self.log.add("info", "not present on host", artifact=artifact.name, path=path)
        if home_absent:
            self.log.add("info", "not present in home directories", artifact=artifact.name, count=len(home_absent))
        for path, reason in errors:
            self.log.add("warning", "cannot list", artifact=artifact.name, path=path, reason=reason)
        for line in other:
            self.log.add("warning", "unexpected message from find", artifact=artifact.name, message=line)
        files = 0
        size_total = 0
        self._symlinks = 0
        for st in remote.parse_stat(stdout):
            if st.kind == "other":
                continue
            files += 1
            size_total += st.size if st.kind == "file" else 0
            self._add_file(artifact, st)
        if self._symlinks:
            self.log.add("info", "symlinks recorded, not followed (each in the manifest with its target)",
                         artifact=artifact.name, count=self._symlinks)
        summary.update(status="ok" if not errors else "errors", files=files, bytes=size_total,
                       errors=len(errors) or None)
        return summary

    def _add_file(self, artifact: Artifact, st: remote.FileStat) -> None:
        if artifact.decode and st.kind == "file" and utmp.kind_for(st.path):
            self._decode[st.path] = artifact.decode
        cap = artifact.file_cap
        if st.problem is not None:
            if st.path in self.files:
                self.files[st.path]["artifacts"].append(artifact.name)
                return
            entry = {"source_path": st.path, "artifacts": [artifact.name], "kind": st.kind, "size": st.size,
                     "status": FAILED, "reason": f"not collected: {st.problem}", "sha256_host": None,
                     "sha256_received": None, "archive_path": None}
            _check_path_encoding(entry)
            self.files[st.path] = entry
            self.anomaly(f"{entry['source_path']}: {st.problem}", artifact=artifact.name, path=entry["source_path"])
            return
        existing = self.files.get(st.path)
        if existing is not None:
            existing["artifacts"].append(artifact.name)
            if existing["status"] == SKIPPED and artifact.copies_files and st.size <= cap:
                existing.update(status="pending")
                existing.pop("reason", None)
                self._limits[st.path] = min(cap, self._stats[st.path].size)
                self.log.add("info", "collected after all: within this artifact's cap", artifact=artifact.name,
                             path=st.path, size=st.size, cap=cap)
            elif existing["status"] == "pending_hash" and artifact.copies_files and st.size <= cap:
                existing["status"] = "pending"
                self._limits[st.path] = min(cap, self._stats[st.path].size)
            elif existing["status"] == "pending" and artifact.copies_files:
                self._limits[st.path] = max(self._limits.get(st.path, 0), min(cap, self._stats[st.path].size))
            return
        entry: dict[str, Any] = {
            "source_path": st.path, "artifacts": [artifact.name], "kind": st.kind, "size": st.size,
            "mode": st.mode, "uid": st.uid, "gid": st.gid, "owner": st.owner, "group": st.group,
            "times": st.times(), "sha256_host": None, "sha256_received": None, "archive_path": None,
        }
        same = self._inodes.get((st.device, st.inode)) if st.kind == "file" and st.inode else None
        if st.kind == "symlink":
            # each symlink is in the manifest (status recorded, link_target); the log counts them per artifact
            entry.update(status=RECORDED, link_target=st.link_target)
            self._symlinks += 1
        elif same is not None:
            entry.update(status=RECORDED, same_file_as=same,
                         note="same file (device and inode) as another path; its content is stored once")
        elif artifact.collector == "hash":
            entry.update(status="pending_hash")
        elif st.size > cap:
            entry.update(status=SKIPPED, reason=f"size {st.size} > max_file_size {cap}")
            self.log.add("warning", "skipped: over size cap", artifact=artifact.name, path=st.path,
                         size=st.size, cap=cap)
        else:
            entry.update(status="pending")
            self._limits[st.path] = min(cap, st.size)
        _check_path_encoding(entry)
        self.files[st.path] = entry
        self._stats[st.path] = st
        if st.kind == "file" and st.inode and same is None:
            self._inodes[(st.device, st.inode)] = st.path

    def _hash_on_host(self, paths: list[str]) -> None:
        if not paths:
            return
        total = sum(self.files[p]["size"] for p in paths)
        listing = b"".join(remote.encode_path(p) + b"\0" for p in paths)
        try:
            res = self.conn.run(remote.HASH_COMMAND, stdin=listing,
                                timeout=self._timeout(min(_HASH_TIMEOUT_MAX, 120.0 + total / _HASH_RATE)))
        except TransportError as exc:
            self._lost(exc)
            for path in paths:
                self.files[path].update(status=FAILED, reason=f"host hash failed: {exc}")
            self.log.add("error", "hashing on the host failed", files=len(paths), reason=str(exc))
            return
        hashes = remote.parse_hashes(res.stdout)
        errors, _, other = remote.parse_errors(res.stderr)
        reasons = dict(errors)
        for line in other:
            self.log.add("warning", "unexpected message from sha256sum", message=line)
        for path in paths:
            entry = self.files[path]
            if path in hashes:
                entry["sha256_host"] = hashes[path]
            else:
                reason = reasons.get(path, "no hash returned by sha256sum")
                entry.update(status=FAILED, reason=f"host hash failed: {reason}")
                self.log.add("warning", "cannot hash on host", path=path, reason=reason)

    def _copy(self, paths: list[str]) -> None:
        """Bring ``paths`` over in one tar stream; a stream that breaks at a file is restarted without it."""
        if not paths:
            return
        outcome_stderr = b""
        received: set[str] = set()
        remaining = list(paths)
        streams = 0
        while remaining:
            streams += 1
            self._requested, self._got = set(remaining), set()
            try:
                if self.transfer == "tar":
                    outcome = tar_fetch(self.conn, remaining, self._sink, idle_timeout=self._timeout(self.idle_timeout),
                                        deadline=self.deadline)
                else:
                    outcome = sftp_fetch(self.conn, remaining, self._sink, limits=self._limits,
                                         deadline=self.deadline)
            except TransferError as exc:
                received |= exc.received
                try:
                    self._lost(exc)
                except CollectionCut:
                    self._fail_unreceived(paths, received, "not copied: the collection was cut short")
                    raise
                culprit = exc.culprit or next((p for p in remaining if p not in exc.received), None)
                if self.quota_reason is None:
                    self.anomaly(f"transfer stream broke at {culprit!r}: {exc}", path=culprit)
                if culprit is not None and culprit not in self._refused:
                    self._refused[culprit] = f"copy failed: {exc}"
                if culprit is not None:
                    self.log.add("warning", "tar stream broke at a file; restarting without it", path=culprit,
                                 reason=str(exc))
                remaining = [p for p in remaining if p not in received and p != culprit]
                if self.quota_reason is not None or streams >= MAX_STREAMS:
                    why = self.quota_reason or f"the host broke {streams} transfer streams"
                    self._fail_unreceived(remaining, received, f"not copied: {why}")
                    break
                continue
            received |= outcome.received
            outcome_stderr += outcome.stderr
            break
        self._requested, self._got = set(), set()
        errors, _, other = remote.parse_errors(outcome_stderr, relative=self.transfer == "tar")
        reasons: dict[str, str] = {}
        for path, reason in errors:
            reasons.setdefault(path, reason)
        for line in other[:100]:
            if "Exiting with failure status" not in line:
                self.log.add("warning", "message from tar", message=line)
        retry: list[str] = []
        for path in paths:
            entry = self.files[path]
            if entry["status"] == FAILED:
                continue
            if path in self._refused:
                entry.update(status=FAILED, reason=self._refused[path])
                self.log.add("warning", "copy refused", path=path, reason=self._refused[path])
            elif path not in received:
                reason = reasons.get(path, "not in the transfer stream")
                entry.update(status=FAILED, reason=f"copy failed: {reason}")
                self.log.add("warning", "copy failed", path=path, reason=reason)
            elif entry["sha256_received"] != entry["sha256_host"]:
                retry.append(path)
            else:
                entry["status"] = COLLECTED
                if path in reasons:
                    entry["note"] = reasons[path]
        for path in retry:
            self._retry(path)

    def _fail_unreceived(self, paths: list[str], received: set[str], reason: str) -> None:
        for path in paths:
            entry = self.files[path]
            if path not in received and entry["status"] in ("pending", "pending_hash"):
                entry.update(status=FAILED, reason=self._refused.get(path, reason))

    def _sink(self, path: str, size: int, stream: IO[bytes], _info: Any) -> None:
        """Store one member of the stream, after checking that the host may send it."""
        if path not in self._requested or path in self._got:
            what = "was not asked for" if path not in self._requested else "was sent twice"
            self.anomaly(f"tar member {path!r} {what} ({size} bytes): not stored", path=path, size=size)
            raise MemberRefused(f"member {what}", abort=size > SKIP_LIMIT)
        self._got.add(path)
        limit = self._limits.get(path, 0)
        if size > limit:
            listed = self._stats[path].size
            if size - limit > SKIP_LIMIT or limit < listed:
                # far more than listed (or more than the cap): not a log that grew, the host lies
                self.anomaly(f"{path}: host sent {size} bytes, listed as {listed} (limit {limit}): "
                             f"at most {limit} stored", path=path, size=size, limit=limit)
            else:
                self.log.add("info", "file grew after the listing: the listed bytes are stored", path=path,
                             size=size, listed=listed)
            if size - limit > SKIP_LIMIT:
                self._store(path, f"files{path}", limit, LimitedReader(stream, limit))
                self._refused[path] = (f"copy refused: the host sent {size} bytes for a file it listed as "
                                       f"{listed} bytes (only the first {limit} stored; the rest was not read)")
                raise MemberRefused("member larger than listed", abort=True)
            self.files[path]["note"] = f"host sent {size} bytes; the first {limit} (the size listed) are stored"
            self._store(path, f"files{path}", limit, LimitedReader(stream, limit))
            return
        self._store(path, f"files{path}", size, stream)

    def _retry(self, path: str) -> None:
        entry = self.files[path]
        first = {"archive_path": entry["archive_path"], "sha256_host": entry["sha256_host"],
                 "sha256_received": entry["sha256_received"], "size": entry.get("received_size")}
        self.log.add("warning", "hashes differ; copying again with a single hashed read", path=path,
                      sha256_host=entry["sha256_host"], sha256_received=entry["sha256_received"])
        entry["first_attempt"] = first
        limit = self._limits.get(path, 0)
        res = None
        spool = self._spool()
        try:
            try:
                res = tee_fetch(self.conn, path, spool, limit=limit, idle_timeout=self._timeout(self.idle_timeout),
                                deadline=self.deadline)
            except TransferError as exc:
                self._lost(exc)
                res = None
            if res is not None and res.host_sha256:
                spool.seek(0)
                try:
                    self._store(path, f"retry{path}", res.size, spool)
                except (MemberRefused, TransferError):
                    res = None
        finally:
            spool.close()
        if res is not None and res.host_sha256 and res.host_sha256 == entry["sha256_received"] and entry[
                "archive_path"].startswith("retry/"):
            entry.update(status=COLLECTED, sha256_host=res.host_sha256,
                         note="file changed between the host hash and the copy; copied again with a single read")
            self.log.add("info", "second copy verified", path=path)
            return
        entry.update(status=HASH_MISMATCH,
                     reason="SHA-256 of the bytes received differs from the host's SHA-256 (copied twice)")
        if res is not None and res.host_sha256:
            entry["sha256_host"] = res.host_sha256
        self.log.add("error", "HASH MISMATCH: received bytes differ from the host's", path=path,
                     sha256_host=entry["sha256_host"], sha256_received=entry["sha256_received"])

    def _store(self, path: str, archive: str, size: int, stream: IO[bytes]) -> None:
        entry = self.files[path]
        st = self._stats[path]
        meta = MemberMeta(mtime=st.mtime, mode=int(st.mode, 8) & 0o7777, uid=st.uid, gid=st.gid,
                          uname=st.owner if _SAFE_NAME.fullmatch(st.owner) and not st.owner.isdigit() else "",
                          gname=st.group if _SAFE_NAME.fullmatch(st.group) and not st.group.isdigit() else "")
        capture = None
        if path in self._decode and size <= DECODE_CAP and self._capture_room >= size:
            capture = _Capture(stream)
            stream = capture
        try:
            digest = self.writer.add_stream(archive, size, stream, meta)
        except QuotaExceeded as exc:
            self.quota_reason = str(exc)
            self._refused[path] = f"not copied: {exc}"
            self.log.add("error", "evidence quota reached: file not stored", path=path, reason=str(exc))
            raise MemberRefused(str(exc), abort=True) from None
        except IncompleteMember as exc:
            entry.update(archive_path=archive, sha256_received=exc.digest, received_size=exc.received,
                         padded_bytes=exc.padded)
            self._refused[path] = (f"copy failed after {exc.received} of {size} bytes (the archive member is "
                                   f"completed with {exc.padded} zero bytes; they are not evidence)")
            if exc.cause is not None:
                raise exc.cause from None
            raise TransferError(str(exc)) from None
        entry.update(archive_path=archive, sha256_received=digest, received_size=size)
        if capture is not None:
            old = self._captured.pop(path, b"")
            self._capture_room += len(old) - len(capture.data)
            self._captured[path] = bytes(capture.data)

    # ---------------------------------------------------------------- results
    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {s: 0 for s in (COLLECTED, HASHED, RECORDED, SKIPPED, FAILED, HASH_MISMATCH,
                                                  TRUNCATED)}
        for entry in [*self.files.values(), *self.outputs]:
            counts[entry["status"]] = counts.get(entry["status"], 0) + 1
        counts["bytes"] = sum(e.get("received_size", 0) for e in self.files.values()) + sum(
            e.get("size", 0) for e in self.outputs)
        return counts


DECODE_CAP = 64 * 1024 * 1024       # a login-record file larger than this is stored, not decoded
LISTING_CAP = 16 * 1024 * 1024      # a walk's listing section larger than this is not used (own enumeration)
DECODE_TOTAL = 256 * 1024 * 1024    # at most this much is held in memory for decoding per host


class _Capture(io.RawIOBase):
    """Pass-through reader that keeps a copy of what was read (for decoding on the controller)."""

    def __init__(self, source: IO[bytes]) -> None:
        self.source = source
        self.data = bytearray()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        data = self.source.read(size)
        if data:
            self.data += data
        return data


class _HashingSink:
    """A write-only pass-through that SHA-256s what is written (a compressed output, as received)."""

    def __init__(self, sink: IO[bytes]) -> None:
        self.sink = sink
        self.sha = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        return self.sink.write(data)


def unframe_sections(stream: IO[bytes], total: int) -> tuple[int, int] | None:
    """Where a compressed output with sections (:data:`remote.SECTION_AWK`: the compressed stream, the plain
    section lines, the trailer) divides: (bytes of the compressed stream, bytes of the section lines), from the
    trailer in the last bytes of ``stream`` (``total`` long). None when it does not end with a valid trailer.

    The host chooses every byte: a lying length can only move the division within what the host sent (both
    parts are stored; the whole stream's SHA-256 is in the manifest); it can never point outside the stream.
    """
    look = min(total, 64)
    stream.seek(total - look)
    end = stream.read(look)
    match = remote.SECTION_TRAILER.search(end)
    if match is None or len(end) != look:
        return None
    tail = int(match.group(1))
    trailer = look - match.start()
    if tail > total - trailer:
        return None
    return total - trailer - tail, tail


class SectionSplitter:
    """A write-only sink that routes a command's output as it arrives: lines that start with ``tag<TAB>``
    (a declared tag) go to ``parts[tag]`` without the tag, the rest to ``main``; :meth:`finish` returns
    main's size, each part's size and the SHA-256 of the whole.

    The host chooses the bytes, so a forged tagged line can only land in a section the definition
    declared. A line is routed by its first bytes only (the first tab within 34 bytes, as a tag is at
    most 32 characters); a hostile endless line is routed once it reaches :data:`SECTION_LINE_PIECE`
    bytes, and the rest of it follows (nothing inside a line can start a section).

    Work is per block, not per line: C-speed searches for ``\n`` + ``tag<TAB>`` and slices (a 24 MB
    bodyfile used to cost ~200,000 Python ``readline`` calls on the controller).
    """

    def __init__(self, tags: dict[str, str], main: IO[bytes], parts: Mapping[str, IO[bytes]]) -> None:
        self.prefixes = {tag.encode() + b"\t": tag for tag in tags
                         if len(tag.encode()) < 34 and not any(c in tag for c in "\t\n")}
        self.main, self.parts = main, parts
        self.sha = hashlib.sha256()
        self.sizes = {tag: 0 for tag in tags}
        self.main_size = 0
        self._pending = b""
        self._in_line = False        # a line whose start was routed is still going on
        self._current: str | None = None

    def writable(self) -> bool:
        return True

    def _out(self, tag: str | None, data: bytes | memoryview) -> None:
        if not data:
            return
        if tag is None:
            self.main.write(data)
            self.main_size += len(data)
        else:
            self.parts[tag].write(data)
            self.sizes[tag] += len(data)

    def _route_start(self, data: bytes) -> tuple[str | None, int]:
        tab = data.find(b"\t", 0, 34)
        tag = self.prefixes.get(data[:tab + 1]) if tab >= 0 else None
        return tag, (tab + 1 if tag is not None else 0)

    def write(self, chunk: bytes) -> int:
        chunk = bytes(chunk)
        self.sha.update(chunk)
        self._feed(chunk, final=False)
        return len(chunk)

    def finish(self) -> tuple[int, dict[str, int], str]:
        self._feed(b"", final=True)
        return self.main_size, dict(self.sizes), self.sha.hexdigest()

    def _feed(self, chunk: bytes, *, final: bool) -> None:
        data = self._pending + chunk if self._pending else chunk
        self._pending = b""
        if not data:
            return
        pos = 0
        if self._in_line:
            nl = data.find(b"\n")
            if nl < 0:
                self._out(self._current, data)
                return
            self._out(self._current, data[:nl + 1])
            pos = nl + 1
            self._in_line, self._current = False, None
        # data[pos:] starts a line; route its complete lines
        last_nl = data.rfind(b"\n", pos)
        end = last_nl + 1 if last_nl >= 0 else pos
        if self.prefixes and pos < end:
            nexts: dict[bytes, int] = {}
            for p in self.prefixes:
                if data.startswith(p, pos):
                    nexts[p] = pos
                else:
                    i = data.find(b"\n" + p, pos, end)
                    nexts[p] = i + 1 if i >= 0 else -1
            while True:
                live = [(i, p) for p, i in nexts.items() if i >= 0]
                if not live:
                    break
                start, p = min(live)
                self._out(None, data[pos:start])
                nl = data.find(b"\n", start + len(p), end)
                self._out(self.prefixes[p], data[start + len(p):nl + 1])
                pos = nl + 1
                for q, i in nexts.items():
                    if 0 <= i < pos:
                        j = data.find(b"\n" + q, pos - 1, end)
                        nexts[q] = j + 1 if j >= 0 else -1
        self._out(None, data[pos:end])
        rest = data[end:]
        if not rest:
            return
        if final or len(rest) >= SECTION_LINE_PIECE:
            tag, skip = self._route_start(rest)
            self._out(tag, rest[skip:])
            self._in_line, self._current = not final, tag
        else:
            self._pending = rest


#: a line longer than this is routed by its first bytes before its end arrives
SECTION_LINE_PIECE = 1 << 20


def split_sections_stream(source: IO[bytes], tags: dict[str, str], main: IO[bytes],
                          parts: Mapping[str, IO[bytes]]) -> tuple[int, dict[str, int], str]:
    """:class:`SectionSplitter` over a readable stream: (main's size, each part's size, SHA-256 of the whole)."""
    splitter = SectionSplitter(tags, main, parts)
    while block := source.read(1 << 20):
        splitter.write(block)
    return splitter.finish()


def split_sections(output: bytes, tags: dict[str, str]) -> tuple[bytes, dict[str, bytes]]:
    """:func:`split_sections_stream` over bytes (every declared section returned, empty if untagged)."""
    main = io.BytesIO()
    parts = {tag: io.BytesIO() for tag in tags}
    split_sections_stream(io.BytesIO(output), tags, main, parts)
    return main.getvalue(), {tag: part.getvalue() for tag, part in parts.items()}


def _alive(conn: Any) -> bool:
    alive = getattr(conn, "alive", None)
    if alive is not None:
        return bool(alive)
    transport = conn.client.get_transport()
    return bool(transport and transport.is_active())


def _iso(epoch: float) -> str:
    return stamp(_dt.datetime.fromtimestamp(epoch, tz=_dt.timezone.utc))


def _check_path_encoding(entry: dict[str, Any]) -> None:
    """Paths that are not valid UTF-8 keep their exact bytes in ``source_path_hex``."""
    try:
        entry["source_path"].encode("utf-8")
    except UnicodeEncodeError:
        raw = remote.encode_path(entry["source_path"])
        entry["source_path_hex"] = raw.hex()
        entry["source_path"] = raw.decode("utf-8", "backslashreplace")


def collection_status(counts: dict[str, int], *, partial: bool = False) -> str:
    if partial:
        return PARTIAL
    return COMPLETE if not counts.get(HASH_MISMATCH) and not counts.get(FAILED) else COMPLETE_WITH_ERRORS


def collect_host(
    conn: Any,
    target: HostTarget,
    selection: Selection,
    *,
    recipients: list[X25519PublicKey] | None = None,
    transfer: str = "tar",
    idle_timeout: float = 120.0,
    deadline: float | None = None,
    limits: EvidenceLimits | None = None,
    directory: Path | None = None,
    on_sealed: Callable[[Collection, dict[str, Any]], None] | None = None,
    batch_commands: bool = True,
) -> CollectionResult:
    """Collect ``selection`` from one host into a new sealed bundle under the case's evidence tree.

    ``deadline`` (``time.monotonic()``) bounds every remote call and every read: a host that
    trickles its output still ends there. ``limits`` caps the bundle (per host, per case, free
    space floor). A collection that is cut short (deadline, lost connection) or that the host
    lied to is sealed with status ``partial``; ``timed_out`` says the deadline cut it.
    ``on_sealed(collection, seal)`` runs once the bundle is on disk (the custody record).
    A failure before anything was collected propagates; the ``.partial`` directory is left.
    """
    started_wall = utc_now()
    start = time.monotonic()
    collection_id = new_collection_id()
    final = (directory or host_dir(target.case, target.tenant, target.host)) / collection_id
    limits = limits or EvidenceLimits.from_env()
    final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    budget = EvidenceBudget(limits, evidence_root(target.case) if directory is None else directory, final.parent)
    writer = BundleWriter(final, recipients, budget=budget)
    collector_cls = HostCollector
    if target.os == "windows":  # over WinRM: PowerShell, wevtutil/reg save, chunked fetch (triage/windows.py)
        from ir_toolkit.triage.windows import WindowsHostCollector

        collector_cls = WindowsHostCollector
    collector = collector_cls(conn, target, selection, writer, transfer=transfer, idle_timeout=idle_timeout,
                              deadline=deadline, batch_commands=batch_commands)
    collector.log.add("info", "collection started", case=target.case, tenant=target.tenant, host=target.host,
                      address=target.address, profile=selection.profile)
    cut: str | None = None
    timed_out = False
    try:
        collector.run()
    except CollectionCut as exc:
        cut, timed_out = str(exc), exc.timed_out
    except (TransportError, TransferError) as exc:
        if not writer.members:
            writer.abort()
            raise
        cut = f"connection failed: {exc}"
        timed_out = isinstance(exc, DeadlineExceeded) or getattr(exc, "kind", None) == TIMED_OUT
    except Exception as exc:  # noqa: BLE001 - whatever was collected is sealed, then the error is reported
        if not writer.members:
            writer.abort()
            raise
        cut = f"internal error: {type(exc).__name__}: {exc}"
        collector.log.add("error", "collection stopped by an internal error", reason=cut)
    except BaseException:
        writer.abort()
        raise
    if cut is not None:
        for entry in collector.files.values():
            if entry["status"] in ("pending", "pending_hash"):
                entry.update(status=FAILED, reason=f"not collected: {cut}")
        collector.log.add("warning", "collection cut short: sealing what was collected", reason=cut)
    if collector.quota_reason is not None:
        collector.log.add("error", "evidence quota reached", reason=collector.quota_reason)
    counts = collector.counts()
    finished_wall = utc_now()
    partial = cut is not None or bool(collector.anomaly_count) or collector.quota_reason is not None
    status = collection_status(counts, partial=partial)
    collector.log.add("info" if status == COMPLETE else "warning", "collection finished", status=status,
                      **{k: v for k, v in counts.items() if v})
    identity = {
        "case": target.case, "msp": target.msp, "tenant": target.tenant, "host": target.host,
        "address": target.address, "os": target.os, "host_key_fingerprint": target.host_key_fingerprint,
        "collection_id": collection_id,
    }
    manifest = {
        "format": MANIFEST_FORMAT, **identity,
        "collector": collector_identity(target, selection.profile, collector.transfer),
        "started": started_wall, "finished": finished_wall, "status": status, "counts": counts,
        "artifacts": collector.artifacts,
        "outputs": collector.outputs,
        "files": [collector.files[p] for p in sorted(collector.files)],
    }
    if partial:
        manifest["partial"] = {
            "cut_short": cut, "timed_out": timed_out, "quota": collector.quota_reason,
            "anomalies": collector.anomalies, "anomaly_count": collector.anomaly_count,
        }
    try:
        sealed = writer.finish(manifest, collector.log.to_bytes(), {
            **identity, "profile": selection.profile, "kind": selection.kind, "started": started_wall, "finished": finished_wall,
            "status": status, "counts": counts,
        })
    except BaseException:
        writer.abort()
        raise
    seal = sealed.seal()
    problems = [f"{e['source_path']}: {e.get('reason')}" for e in collector.files.values()
                if e["status"] in PROBLEM_STATUSES]
    if on_sealed is not None:
        on_sealed(sealed, seal)
    return CollectionResult(target=target, status=status, collection=sealed, seal=seal, counts=counts,
                            problems=problems, error=cut, duration=time.monotonic() - start, timed_out=timed_out,
                            anomalies=list(collector.anomalies))
