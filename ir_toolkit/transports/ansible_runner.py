"""Ansible content through ansible-runner, with its event stream under irkit's control.

irkit does not run ansible-runner inside its own process: ansible-runner would hand the
child ``ansible-playbook`` a copy of irkit's whole environment (``IRKIT_KEY_PASSPHRASE``,
every ``env:`` secret) and write ``env/extravars``, ``env/ssh_key`` and full event data
into the private data dir. Instead it uses ansible-runner's own streaming protocol
(``transmit | worker | process``, the one AWX's Receptor mesh uses):

* **transmit** (here, in-process): the job's kwargs (playbook, inventory path, forks,
  check mode, extra vars, the responder's SSH key) and a zip of the *private data dir*
  — which lives in the case directory and holds only the playbook project and the
  generated inventory, never a secret — are written to a pipe;
* **worker** (``python -m ansible_runner worker --delete``): a child process started with
  irkit's allow-listed environment (:mod:`ir_toolkit.childenv`), whose own private data
  dir is a fresh 0700 directory on a memory file system (``/dev/shm`` when present), deleted
  when the job ends. ansible-runner puts the SSH key in a FIFO read by ``ssh-agent``;
* **process** (here): irkit reads the worker's output stream itself, one JSON line at a time
  and bounded in size (a host's module output comes back through it), turns the events
  into :class:`AnsibleEvent` values and discards the artifacts zip, so nothing of the job's
  data lands on disk unless irkit writes it (redacted) to the audit log.

Deadlines are irkit's: the worker's process group is killed at ``job_timeout`` and after
``idle_timeout`` seconds without a line. The same stream is what a per-tenant agent would
carry to run Ansible inside a tenant's network (docs/ansible.md).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ir_toolkit import childenv

#: the longest line irkit reads from the worker (one event with a module's result)
MAX_LINE = 4 * 1024 * 1024
#: the most events irkit keeps per job (beyond that only the stats count)
MAX_EVENTS = 200_000
#: the artifacts zip the worker sends at the end is skipped, up to this size
MAX_ZIP = 512 * 1024 * 1024

HOST_EVENTS = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_unreachable": "unreachable",
    "runner_on_skipped": "skipped",
    "runner_item_on_ok": "ok",
    "runner_item_on_failed": "failed",
    "runner_item_on_skipped": "skipped",
    "runner_on_async_failed": "failed",
}
NO_LOG_TEXT = "(hidden: no_log)"
#: seconds between ansible-playbook's polls for worker results (Ansible's default: 0.001)
POLL_INTERVAL = 0.01
#: idle seconds an ssh ControlPersist master outlives its last session: long enough for the verify
#: phase's check-mode re-run to reuse the apply's connection to a host (irkit ends the masters when
#: its process exits: :func:`end_shared_masters`)
CONTROL_PERSIST = 900
#: Ansible's ssh options. Ansible's defaults without ``-C`` (compression costs CPU at both ends for
#: nothing on a LAN); keepalives, so a master whose host stopped answering ends within a minute;
#: ``sntrup761x25519-sha512`` (both names) out of the key exchanges: OpenSSH 9.2-9.8's implementation costs the
#: controller ~60 ms of CPU per connection (curve25519: ~10 ms, measured here; docs/performance.md),
#: which leaves what irkit's own (paramiko) connections use with those hosts, curve25519, and
#: ``mlkem768x25519-sha256`` first where both ends have it (OpenSSH 9.9+)
SSH_ARGS = (f"-o ControlMaster=auto -o ControlPersist={CONTROL_PERSIST}s -o ServerAliveInterval=20 "
            "-o ServerAliveCountMax=3 -o KexAlgorithms=-sntrup761x25519-sha512*")

_SHARED_LOCK = threading.Lock()
_SHARED_DIR: tuple[int, str] | None = None


class AnsibleRunError(Exception):
    """The job could not run at all (worker missing, stream broken, deadline)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class AnsibleEvent:
    """One per-host task result of the job (what the audit log records)."""

    event: str
    status: str            # ok | failed | unreachable | skipped
    host: str
    task: str
    module: str
    changed: bool
    ignore_errors: bool
    duration: float | None
    message: str
    no_log: bool
    diff: str = ""


@dataclass
class HostStats:
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    rescued: int = 0
    ignored: int = 0

    @property
    def success(self) -> bool:
        return self.failed == 0 and self.unreachable == 0


@dataclass
class AnsibleResult:
    status: str                                  # successful | failed | timeout | canceled | error
    rc: int | None
    events: list[AnsibleEvent] = field(default_factory=list)
    stats: dict[str, HostStats] = field(default_factory=dict)
    seen_stats: bool = False
    explanation: str = ""

    def host_stats(self, host: str) -> HostStats:
        return self.stats.get(host, HostStats())

    def host_events(self, host: str) -> list[AnsibleEvent]:
        return [e for e in self.events if e.host == host]


@dataclass(frozen=True)
class AnsibleJob:
    """What to run. ``project`` is copied into the private data dir as ``project/``."""

    project: Path
    playbook: str                                # relative to project/
    inventory: Mapping[str, Any]                 # Ansible YAML inventory structure
    limit: tuple[str, ...]
    forks: int = 25
    check: bool = False
    diff: bool = False
    extravars: Mapping[str, Any] = field(default_factory=dict)
    ssh_key: str | None = None                   # private key text, handed to ssh-agent through a FIFO
    job_timeout: float = 600.0
    idle_timeout: float = 120.0
    secrets: tuple[str, ...] = ()                # values that must never be echoed back
    #: known_hosts lines ssh must enforce (``StrictHostKeyChecking=yes``); empty: the inventory's own args
    known_hosts: str = ""


def _memory_dir() -> str | None:
    shm = Path("/dev/shm")
    try:
        if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
            return str(shm)
    except OSError:
        pass
    return None


def _remove_stale_worker_dirs() -> None:
    """Worker directories of irkit processes that died (kill -9) before removing them: removed now,
    so nothing of a job (extra vars, the ssh-agent FIFO) outlives its run for long."""
    base = Path(_memory_dir() or tempfile.gettempdir())
    try:
        entries = list(base.glob("irkit-ansible-*"))
    except OSError:
        return
    for entry in entries:
        parts = entry.name.split("-")
        pid = int(parts[2]) if len(parts) > 3 and parts[2].isdigit() else None
        if pid is not None:
            try:
                os.kill(pid, 0)
                continue  # its irkit is still running
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        elif time.time() - entry.stat().st_mtime < 24 * 3600:
            continue  # an old-style name: removed only once it is a day old
        if entry.is_dir() and not entry.is_symlink() and entry.stat().st_uid == os.getuid():
            end_control_masters(str(entry))
            end_control_masters(str(entry / ".ansible" / "cp"))
            shutil.rmtree(entry, ignore_errors=True)


def prepare_private_dir(job: AnsibleJob, private_dir: Path, worker_pdd: str | None = None) -> None:
    """The transmit side's private data dir: project + inventory (+ known_hosts), nothing secret."""
    import yaml

    from ir_toolkit.inventory.ansible import ssh_common_args

    if private_dir.exists():
        shutil.rmtree(private_dir)
    private_dir.mkdir(parents=True, mode=0o700)
    shutil.copytree(job.project, private_dir / "project", symlinks=False,
                    ignore=shutil.ignore_patterns("*.retry", "__pycache__"))
    (private_dir / "inventory").mkdir(mode=0o700)
    inventory = json.loads(json.dumps(dict(job.inventory)))
    if job.known_hosts and worker_pdd is not None:
        (private_dir / "known_hosts").write_text(job.known_hosts)
        group = inventory.setdefault("all", {}).setdefault("vars", {})
        group["ansible_ssh_common_args"] = ssh_common_args([os.path.join(worker_pdd, "known_hosts")])
    (private_dir / "inventory" / "hosts.yml").write_text(yaml.safe_dump(inventory, sort_keys=False))


def shared_control_dir() -> str:
    """This irkit process's ssh control directory, shared by its Ansible jobs (0700, in memory): the
    jobs of one run (the harden apply, the verify re-check) reuse one authenticated master per host
    instead of a new connection and key exchange each. Ended, with its masters, at exit."""
    global _SHARED_DIR
    with _SHARED_LOCK:
        if _SHARED_DIR is None or _SHARED_DIR[0] != os.getpid() or not os.path.isdir(_SHARED_DIR[1]):
            first = _SHARED_DIR is None or _SHARED_DIR[0] != os.getpid()
            path = tempfile.mkdtemp(prefix=f"irkit-ansible-{os.getpid()}-cp-", dir=_memory_dir())
            os.chmod(path, 0o700)
            _SHARED_DIR = (os.getpid(), path)
            if first:
                atexit.register(end_shared_masters)
        return _SHARED_DIR[1]


def end_shared_masters() -> list[int]:
    """End this process's ssh masters and remove their control directory (at exit; callable earlier)."""
    global _SHARED_DIR
    with _SHARED_LOCK:
        shared, _SHARED_DIR = _SHARED_DIR, None
    if shared is None or shared[0] != os.getpid():
        return []
    ended = end_control_masters(shared[1])
    shutil.rmtree(shared[1], ignore_errors=True)
    return ended


def end_control_masters(control_dir: str) -> list[int]:
    """End the ssh ControlPersist masters of one job (those whose control sockets are in
    ``control_dir``): they detach from the worker's process group, so killing the group does not
    reach them, and each would otherwise hold its host connection for ControlPersist's idle time
    after the job. A master's process title is ``ssh: <control path> [mux]`` (set by ssh itself,
    nothing a host sends); only processes of this user with that prefix get SIGTERM, by pid."""
    prefix = ("ssh: " + control_dir.rstrip("/") + "/").encode()
    uid = os.getuid()
    ended: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return ended
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm", "rb") as f:
                if f.read().strip() != b"ssh":
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                title = f.read(4096)
            if not title.startswith(prefix) or os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            os.kill(int(entry), signal.SIGTERM)
            ended.append(int(entry))
        except (OSError, ValueError):
            continue
    return ended


def _child_env(worker_dir: str, control_dir: str) -> dict[str, str]:
    venv_bin = os.path.dirname(sys.executable)
    path = os.environ.get("PATH", childenv.DEFAULT_PATH)
    if venv_bin not in path.split(os.pathsep):
        path = venv_bin + os.pathsep + path
    return childenv.child_env({
        "PATH": path,
        "HOME": worker_dir,
        "ANSIBLE_HOME": os.path.join(worker_dir, ".ansible"),
        "ANSIBLE_LOCAL_TEMP": os.path.join(worker_dir, ".ansible", "tmp"),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": control_dir,
        "ANSIBLE_CONFIG": os.path.join(worker_dir, "ansible.cfg"),
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "ANSIBLE_SYSTEM_WARNINGS": "False",
        "ANSIBLE_COMMAND_WARNINGS": "False",
        "ANSIBLE_LOCALHOST_WARNING": "False",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
        "ANSIBLE_GATHERING": "explicit",
        "ANSIBLE_TIMEOUT": "10",
        "ANSIBLE_SSH_ARGS": SSH_ARGS,
        "ANSIBLE_NO_TARGET_SYSLOG": "True",
        "ANSIBLE_LOG_PATH": "",
    }, python=True)


def _bounded_lines(stream: IO[bytes]) -> Iterable[bytes | None]:
    """Lines of at most :data:`MAX_LINE` bytes; ``None`` for a line that was longer (skipped)."""
    buf = bytearray()
    too_long = False
    while True:
        chunk = stream.readline(MAX_LINE + 1)
        if not chunk:
            return
        if too_long:
            if chunk.endswith(b"\n"):
                too_long = False
            continue
        buf += chunk
        if chunk.endswith(b"\n"):
            yield bytes(buf)
            buf.clear()
        elif len(buf) > MAX_LINE:
            buf.clear()
            too_long = True
            yield None


def _skip_bytes(stream: IO[bytes], count: int) -> None:
    while count > 0:
        chunk = stream.read(min(count, 1 << 20))
        if not chunk:
            return
        count -= len(chunk)


def _text(value: Any, limit: int = 300) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        try:
            value = json.dumps(value, sort_keys=True, default=str)
        except (TypeError, ValueError):
            value = str(value)
    value = value.replace("\r", " ").replace("\n", " ").strip()
    return value[:limit] + ("…" if len(value) > limit else "")


def _diff_text(res: Mapping[str, Any], limit: int = 2000) -> str:
    diffs = res.get("diff")
    if not diffs:
        return ""
    if isinstance(diffs, Mapping):
        diffs = [diffs]
    parts: list[str] = []
    for d in diffs if isinstance(diffs, list) else []:
        if not isinstance(d, Mapping):
            continue
        if isinstance(d.get("prepared"), str):
            parts.append(d["prepared"])
            continue
        before, after = d.get("before"), d.get("after")
        if isinstance(before, str) and isinstance(after, str):
            import difflib

            header = d.get("after_header") or d.get("before_header") or "file"
            parts.extend(difflib.unified_diff(before.splitlines(), after.splitlines(),
                                              fromfile=f"{header} (before)", tofile=f"{header} (after)",
                                              lineterm="", n=1))
    text = "\n".join(parts)
    return text[:limit]


def parse_event(data: Mapping[str, Any], secrets: Iterable[str] = ()) -> AnsibleEvent | None:
    """One worker event → an :class:`AnsibleEvent` (``None`` for events that are not host results).

    Everything comes from a host's module output or the playbook and is treated as hostile:
    strings are bounded, ``no_log`` results are dropped whole, known secrets are cut out.
    """
    name = data.get("event")
    if name not in HOST_EVENTS:
        return None
    ev = data.get("event_data")
    if not isinstance(ev, Mapping):
        return None
    res = ev.get("res") if isinstance(ev.get("res"), Mapping) else {}
    no_log = bool(res.get("_ansible_no_log")) or "censored" in res
    duration = ev.get("duration")
    message = ""
    diff = ""
    if not no_log:
        message = _text(res.get("msg") or res.get("stderr") or res.get("reason") or "")
        diff = _diff_text(res)
    secret_values = [s for s in secrets if s]
    for s in secret_values:
        message = message.replace(s, "[REDACTED]")
        diff = diff.replace(s, "[REDACTED]")
    task = _text(ev.get("task"), 200)
    for s in secret_values:
        task = task.replace(s, "[REDACTED]")
    return AnsibleEvent(
        event=name,
        status=HOST_EVENTS[name],
        host=_text(ev.get("host"), 255),
        task=task,
        module=_text(ev.get("task_action") or ev.get("resolved_action"), 100),
        changed=bool(res.get("changed")) if not no_log or "changed" in res else False,
        ignore_errors=bool(ev.get("ignore_errors")),
        duration=float(duration) if isinstance(duration, (int, float)) and duration == duration else None,
        message=message,
        no_log=no_log,
        diff=diff,
    )


def _stats(ev: Mapping[str, Any]) -> dict[str, HostStats]:
    stats: dict[str, HostStats] = {}
    for key, attr in (("ok", "ok"), ("changed", "changed"), ("failures", "failed"), ("dark", "unreachable"),
                      ("skipped", "skipped"), ("rescued", "rescued"), ("ignored", "ignored")):
        table = ev.get(key)
        if not isinstance(table, Mapping):
            continue
        for host, count in table.items():
            if isinstance(host, str) and isinstance(count, int) and 0 <= count < 10**9:
                setattr(stats.setdefault(host, HostStats()), attr, count)
    return stats


def run_job(job: AnsibleJob, private_dir: Path, *,
            on_event: Callable[[AnsibleEvent], None] | None = None,
            cancel: threading.Event | None = None) -> AnsibleResult:
    """Run ``job`` through an ansible-runner worker child process; events as they come."""
    from ansible_runner.streaming import Transmitter

    _remove_stale_worker_dirs()
    worker_dir = tempfile.mkdtemp(prefix=f"irkit-ansible-{os.getpid()}-", dir=_memory_dir())
    os.chmod(worker_dir, 0o700)
    # an empty config file of our own: no ansible.cfg of the working directory or $HOME applies
    # internal_poll_interval: the strategy's wait for results sleeps 1 ms between polls by default (a
    # busy loop of ansible-playbook's main process for the whole run); 10 ms costs a task < 10 ms of wall
    Path(worker_dir, "ansible.cfg").write_text(f"[defaults]\ninternal_poll_interval = {POLL_INTERVAL}\n")
    worker_pdd = os.path.join(worker_dir, "job")
    try:
        prepare_private_dir(job, private_dir, worker_pdd)
    except OSError as exc:
        shutil.rmtree(worker_dir, ignore_errors=True)
        raise AnsibleRunError("config", f"cannot prepare the Ansible job directory: {exc}") from exc
    cmd = [sys.executable, "-m", "ansible_runner", "worker", "--private-data-dir", worker_pdd, "--delete"]
    cmdline = ["--diff"] if job.diff else []
    if job.check:
        cmdline.append("--check")
    kwargs: dict[str, Any] = {
        "private_data_dir": str(private_dir),
        "playbook": job.playbook,
        "inventory": "inventory/hosts.yml",
        "limit": ",".join(job.limit),
        "forks": max(1, job.forks),
        "cmdline": " ".join(cmdline) or None,
        "extravars": dict(job.extravars),
        "settings": {"idle_timeout": int(max(1, job.idle_timeout)), "job_timeout": int(max(1, job.job_timeout)),
                     "suppress_ansible_output": True},
        "quiet": True,
    }
    if job.ssh_key:
        kwargs["ssh_key"] = job.ssh_key
    try:
        proc = childenv.popen(cmd, env=_child_env(worker_dir, shared_control_dir()), stdin=childenv.PIPE, stdout=childenv.PIPE,
                              stderr=childenv.PIPE, start_new_session=True, close_fds=True)
    except OSError as exc:
        shutil.rmtree(worker_dir, ignore_errors=True)
        raise AnsibleRunError("config", f"cannot start the ansible-runner worker: {exc.strerror or exc}") from exc
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    result = AnsibleResult(status="error", rc=None)
    stderr_tail = bytearray()
    last_output = [time.monotonic()]
    killed: list[str] = []
    last_verbose: list[str] = []

    def feed() -> None:
        try:
            Transmitter(_output=proc.stdin, **kwargs).run()
        except (BrokenPipeError, OSError):
            pass
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass

    def drain_stderr() -> None:
        while True:
            chunk = proc.stderr.read(65536)
            if not chunk:
                return
            stderr_tail.extend(chunk)
            del stderr_tail[:-8192]

    def kill(reason: str) -> None:
        if not killed:
            killed.append(reason)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def watchdog() -> None:
        start = time.monotonic()
        while proc.poll() is None:
            now = time.monotonic()
            if now - start > job.job_timeout:
                kill(f"the Ansible job ran past its deadline ({job.job_timeout:.0f} s)")
            elif now - last_output[0] > job.idle_timeout:
                kill(f"the Ansible job printed nothing for {job.idle_timeout:.0f} s")
            elif cancel is not None and cancel.is_set():
                kill("canceled")
            time.sleep(0.2)

    threads = [threading.Thread(target=f, daemon=True, name=f"irkit-ansible-{f.__name__}")
               for f in (feed, drain_stderr, watchdog)]
    for t in threads:
        t.start()
    try:
        lines = _bounded_lines(proc.stdout)
        for line in lines:
            last_output[0] = time.monotonic()
            if line is None:
                continue  # an oversized event: dropped (the stats at the end still count it)
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if not isinstance(data, dict):
                continue
            if "zipfile" in data:
                size = data.get("zipfile")
                if isinstance(size, int) and 0 <= size <= MAX_ZIP:
                    _skip_bytes(proc.stdout, size)
                else:
                    kill("the worker sent a malformed artifacts stream")
                    break
                continue
            if data.get("eof"):
                break
            if "status" in data and "event" not in data:
                status = data.get("status")
                if isinstance(status, str):
                    result.status = status
                if isinstance(data.get("job_explanation"), str):
                    result.explanation = _text(data["job_explanation"])
                continue
            if data.get("event") == "playbook_on_stats" and isinstance(data.get("event_data"), Mapping):
                result.stats = _stats(data["event_data"])
                result.seen_stats = True
                continue
            if data.get("event") == "verbose" and isinstance(data.get("stdout"), str):
                text = data["stdout"].strip()
                if text and not text.startswith("["):
                    last_verbose[:] = [text]
            event = parse_event(data, job.secrets)
            if event is None:
                continue
            if len(result.events) < MAX_EVENTS:
                result.events.append(event)
            if on_event is not None:
                on_event(event)
        # drain what is left (artifacts after eof) without holding the worker
        proc.stdout.close()
        try:
            result.rc = proc.wait(timeout=max(1.0, job.job_timeout))
        except childenv.TimeoutExpired:
            kill("the worker did not exit")
            result.rc = proc.wait()
    finally:
        if proc.poll() is None:
            kill("irkit stopped")
            proc.wait()
        for t in threads:
            t.join(timeout=5)
        shutil.rmtree(worker_dir, ignore_errors=True)
    if killed:
        result.status = "canceled" if killed[0] == "canceled" else "timeout"
        result.explanation = killed[0]
    elif not result.seen_stats and result.status in ("successful", "failed", "error"):
        tail = stderr_tail.decode("utf-8", "replace").strip().splitlines()
        if result.status != "successful" or not result.events:
            detail = result.explanation or (_text(last_verbose[0]) if last_verbose else "") or \
                (tail[-1][:300] if tail else f"worker exited {result.rc}")
            for s in job.secrets:
                if s:
                    detail = detail.replace(s, "[REDACTED]")
            result.explanation = detail
            result.status = "error"
    return result
