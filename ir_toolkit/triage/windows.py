"""Triage of a Windows host over WinRM: volatile data first, then event logs and registry hives.

The same bundle, manifest, caps, deadlines and custody record as the Linux collector
(:class:`~ir_toolkit.triage.collector.HostCollector`); only the way data leaves the host differs:

* ``command`` artifacts are PowerShell scripts run as they are written in the catalog
  (``artifacts/windows/live.yml``), their stdout kept up to the artifact's cap; plus irkit's own
  volatile shapes (accounts, privileged group members, sessions, processes, scheduled tasks,
  Run keys, firewall rules) as JSON, which the lab's endpoint also answers;
* event logs are exported with ``wevtutil epl`` and hives saved with ``reg save`` into a
  per-collection directory under ``C:\\Windows\\Temp\\irkit``, then **fetched in chunks**, the
  SHA-256 computed on the host (``Get-FileHash``) and again on the bytes received; a size over the
  artifact's cap is not fetched, a mismatch is ``hash_mismatch``; the staging directory is
  removed afterwards;
* other file artifacts (user hives, prefetch, task files, startup folders) are listed as not run
  over WinRM in this version.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from typing import Any

from ir_toolkit.transports.base import TransportError
from ir_toolkit.transports.winrm import ps_quote
from ir_toolkit.triage.bundle import MemberMeta, QuotaExceeded
from ir_toolkit.triage.collector import COLLECTED, FAILED, HASH_MISMATCH, SKIPPED, TRUNCATED, HostCollector, _iso
from ir_toolkit.triage.schema import Artifact

STOP = "$ErrorActionPreference = 'Stop'\n"
CHUNK = 256 * 1024
STAGING = "C:\\Windows\\Temp\\irkit"
HIVES = {"SYSTEM": "HKLM\\SYSTEM", "SOFTWARE": "HKLM\\SOFTWARE", "SAM": "HKLM\\SAM", "SECURITY": "HKLM\\SECURITY",
         "DEFAULT": "HKU\\.DEFAULT"}
_EVTX = re.compile(r"^C:\\Windows\\System32\\winevt\\Logs\\([^*?\\]+)\.evtx$", re.IGNORECASE)
_HIVE = re.compile(r"^C:\\Windows\\System32\\config\\([A-Z]+)\*?$", re.IGNORECASE)

#: irkit's own volatile shapes (the lab's endpoint answers them; they also run on Windows)
VOLATILE = {
    "irkit.windows.local_users": "Get-LocalUser | Select-Object Name,Enabled,SID,PasswordLastSet,Description | "
                                 "ConvertTo-Json -Compress",
    **{f"irkit.windows.group_{g.lower().replace(' ', '_')}":
       f"Get-LocalGroupMember -Group {ps_quote(g)} | Select-Object Name,ObjectClass,PrincipalSource,SID | "
       "ConvertTo-Json -Compress"
       for g in ("Administrators", "Remote Desktop Users", "Remote Management Users")},
    "irkit.windows.sessions": "quser",
    "irkit.windows.processes": "Get-CimInstance -ClassName Win32_Process | Select-Object @{n='Id';e={$_.ProcessId}},"
                               "@{n='ProcessName';e={$_.Name}},@{n='UserName';e={$o=Invoke-CimMethod -InputObject $_ "
                               "-MethodName GetOwner;\"$($o.Domain)\\$($o.User)\"}},SessionId,CommandLine | "
                               "ConvertTo-Json -Compress",
    "irkit.windows.scheduled_tasks": "Get-ScheduledTask | Select-Object TaskPath,TaskName,@{n='State';e={[string]$_.State}},"
                                     "@{n='UserId';e={$_.Principal.UserId}},@{n='Execute';e={$_.Actions[0].Execute}},"
                                     "@{n='Arguments';e={$_.Actions[0].Arguments}} | ConvertTo-Json -Compress",
    "irkit.windows.run_keys": "Get-ItemProperty -Path 'HKLM:\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Run' | "
                              "Select-Object -Property * -ExcludeProperty PS* | ConvertTo-Json -Compress",
}


class WindowsHostCollector(HostCollector):
    """One pass over one Windows host (see the module docstring)."""

    def run(self) -> None:
        self.staging = f"{STAGING}\\{int(time.time())}-{self.target.host[:40]}"
        for name, script in VOLATILE.items():
            self._output(name, f"live/{name}.json", script, cap=64 * 1024 * 1024, timeout=120)
        staged = False
        for artifact in self.selection.artifacts:
            started = time.monotonic()
            if artifact.collector == "command":
                summary = self._ps(artifact)
            elif artifact.name.startswith("windows.eventlogs") or artifact.name == "windows.registry.system_hives":
                if not staged:
                    self._ps_ok(f"New-Item -ItemType Directory -Force -Path {ps_quote(self.staging)} | Out-Null")
                    staged = True
                summary = self._exported(artifact)
            else:
                summary = {"name": artifact.name, "collector": artifact.collector, "status": "not_run",
                           "reason": "file collection over WinRM covers event logs and registry hives only "
                                     "(docs/windows.md)"}
                self.log.add("warning", "artifact not run over WinRM", artifact=artifact.name)
            summary["duration_ms"] = int((time.monotonic() - started) * 1000)
            self.artifacts.append(summary)
        if staged:
            try:
                self._ps_ok(f"Remove-Item -LiteralPath {ps_quote(self.staging)} -Recurse -Force")
            except TransportError as exc:
                self._lost(exc)
                self.log.add("warning", "staging directory not removed", path=self.staging, reason=str(exc))

    # ------------------------------------------------------------------ helpers
    def _ps_ok(self, line: str, *, timeout: float = 60) -> str:
        res = self.conn.run(STOP + line, timeout=self._timeout(timeout))
        if not res.ok:
            raise _HostError(res.stderr.decode("utf-8", "replace").strip().splitlines()[:1] or ["exit 1"])
        return res.text

    def _output(self, artifact: str, archive: str, script: str, *, cap: int, timeout: float,
                command: str | None = None) -> dict[str, Any]:
        try:
            res = self.conn.run(script, timeout=self._timeout(timeout))
        except TransportError as exc:
            self._lost(exc)
            self.outputs.append({"archive_path": None, "artifact": artifact, "kind": "command",
                                 "command": command or script, "status": FAILED, "reason": str(exc)})
            return {"status": "failed", "reason": str(exc)}
        captured = time.time()
        data = res.stdout[:cap]
        try:
            digest = self.writer.add_bytes(archive, data, MemberMeta(mtime=captured, mode=0o644))
        except QuotaExceeded as exc:
            self.quota_reason = str(exc)
            return {"status": "failed", "reason": str(exc)}
        entry: dict[str, Any] = {"archive_path": archive, "artifact": artifact, "kind": "command",
                                 "command": command or script, "exit_status": res.exit_status, "size": len(data),
                                 "sha256_received": digest, "sha256_host": None, "captured": _iso(captured),
                                 "status": TRUNCATED if len(res.stdout) > cap else COLLECTED}
        if res.stderr:
            try:
                entry["stderr"] = {"archive_path": archive + ".stderr", "size": len(res.stderr),
                                   "sha256_received": self.writer.add_bytes(archive + ".stderr", res.stderr,
                                                                            MemberMeta(mtime=captured, mode=0o644))}
            except QuotaExceeded as exc:
                self.quota_reason = str(exc)
        self.outputs.append(entry)
        self.log.add("info" if res.exit_status == 0 else "warning", "command ran", artifact=artifact,
                     exit_status=res.exit_status, bytes=len(data))
        return {"status": "ok" if res.exit_status == 0 else "errors", "exit_status": res.exit_status,
                "files": 1, "bytes": len(data)}

    def _ps(self, artifact: Artifact) -> dict[str, Any]:
        assert artifact.command is not None
        summary = {"name": artifact.name, "collector": "command"}
        summary.update(self._output(artifact.name, f"live/{artifact.output_name}", artifact.command,
                                    cap=artifact.file_cap, timeout=float(artifact.timeout), command=artifact.command))
        return summary

    def _exported(self, artifact: Artifact) -> dict[str, Any]:
        """Event logs (wevtutil epl) or hives (reg save), staged on the host and fetched in chunks."""
        summary: dict[str, Any] = {"name": artifact.name, "collector": artifact.collector}
        files = errors = 0
        size_total = 0
        for pattern in artifact.paths:
            if artifact.name.startswith("windows.eventlogs"):
                m = _EVTX.match(pattern)
                if not m:
                    self.log.add("warning", "event log pattern not exported over WinRM (wildcard)",
                                 artifact=artifact.name, path=pattern)
                    continue
                name = m.group(1)
                staged = f"{self.staging}\\{name.replace('%4', '_')}.evtx"
                export = (f"wevtutil.exe epl {ps_quote(name.replace('%4', '/'))} {ps_quote(staged)} /ow:true\n"
                          "if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }")
                source = pattern
            else:
                m = _HIVE.match(pattern)
                if not m or m.group(1).upper() not in HIVES:
                    continue
                hive = m.group(1).upper()
                staged = f"{self.staging}\\{hive}.hiv"
                export = (f"reg.exe save {ps_quote(HIVES[hive])} {ps_quote(staged)} /y\n"
                          "if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }")
                source = f"C:\\Windows\\System32\\config\\{hive}"
            try:
                self._ps_ok(export, timeout=float(artifact.timeout))
            except _HostError as exc:
                self.log.add("info", "not exported", artifact=artifact.name, path=source, reason=str(exc))
                continue
            except TransportError as exc:
                self._lost(exc)
                errors += 1
                continue
            entry = self._fetch(artifact, source, staged)
            if entry["status"] == COLLECTED:
                files += 1
                size_total += entry["size"]
            else:
                errors += 1
        summary.update(status="ok" if not errors else "errors", files=files, bytes=size_total,
                       errors=errors or None)
        return summary

    def _fetch(self, artifact: Artifact, source: str, staged: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"source_path": source, "artifacts": [artifact.name], "kind": "file",
                                 "staged_as": staged, "sha256_host": None, "sha256_received": None,
                                 "archive_path": None, "status": FAILED}
        self.files[source] = entry
        try:
            size = int(self._ps_ok(f"(Get-Item -LiteralPath {ps_quote(staged)}).Length").strip())
            host_sha = self._ps_ok(f"(Get-FileHash -Algorithm SHA256 -LiteralPath {ps_quote(staged)}).Hash").strip().lower()
        except (ValueError, _HostError) as exc:
            entry["reason"] = f"not collected: {exc}"
            return entry
        entry.update(size=size, sha256_host=host_sha)
        if size < 0 or not re.fullmatch(r"[0-9a-f]{64}", host_sha):
            self.anomaly(f"{source}: the host reported an impossible size or hash", path=source)
            entry["reason"] = "the host reported an impossible size or hash"
            return entry
        if size > artifact.file_cap:
            entry.update(status=SKIPPED, reason=f"size {size} > max_file_size {artifact.file_cap}")
            return entry
        data = bytearray()
        while len(data) < size:
            want = min(CHUNK, size - len(data))
            script = (f"$f = [IO.File]::OpenRead({ps_quote(staged)}); try {{ $null = $f.Seek({len(data)}, 'Begin'); "
                      f"$b = New-Object byte[] {want}; $n = $f.Read($b, 0, {want}); "
                      "[Convert]::ToBase64String($b, 0, $n) } finally { $f.Close() }")
            try:
                piece = base64.b64decode(self._ps_ok(script).strip(), validate=True)
            except (ValueError, _HostError) as exc:
                entry["reason"] = f"copy failed after {len(data)} of {size} bytes: {exc}"
                return entry
            if not piece or len(piece) > want:
                self.anomaly(f"{source}: chunk of {len(piece)} bytes where {want} were asked", path=source)
                entry["reason"] = f"the host sent a chunk of {len(piece)} bytes where {want} were asked"
                return entry
            data += piece
        received = hashlib.sha256(data).hexdigest()
        archive = "files/" + source.replace("\\", "/").replace(":", "")
        try:
            digest = self.writer.add_bytes(archive, bytes(data), MemberMeta(mtime=time.time(), mode=0o644))
        except QuotaExceeded as exc:
            self.quota_reason = str(exc)
            entry["reason"] = f"not copied: {exc}"
            return entry
        entry.update(archive_path=archive, sha256_received=digest, received_size=len(data), captured=_iso(time.time()))
        if received != host_sha:
            entry.update(status=HASH_MISMATCH, reason="SHA-256 of the bytes received differs from the host's SHA-256")
            self.log.add("error", "HASH MISMATCH: received bytes differ from the host's", path=source)
            return entry
        entry["status"] = COLLECTED
        return entry


class _HostError(Exception):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(lines[0][:300] if lines else "failed")
