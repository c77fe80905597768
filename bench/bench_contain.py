#!/usr/bin/env python3
"""Containment bench: the SHIPPED containment playbook vs an Ansible playbook of the same shape, side by side.

    sudo .venv/bin/python bench/bench_contain.py --hosts 200                 # irkit, then Ansible
    sudo .venv/bin/python bench/bench_contain.py --hosts 1000 --only irkit
    sudo .venv/bin/python bench/bench_contain.py --tenants 2 --hosts-per-tenant 10   # a quick run

Big labs (50 hosts or more) one at a time on this machine: wrap in ``flock /tmp/irkit-biglab.lock``.

What runs
---------
A lab of tenants x hosts-per-tenant real sshd hosts is generated (``irkit lab generate``) and brought
up; every host carries the seeded MSP compromise (``ir_toolkit/lab/seed.py``): the MSP's shared SSH
key in root's and ``mspadmin``'s authorized_keys, the shared ``mspadmin`` account (sudo) with the
leaked password, an implant listening on 4444 with cron and systemd persistence. Then, each on a FRESH
copy of the lab (containment changes the hosts, so the lab goes down and up again between tools):

* **irkit**: ``irkit contain --inventory GEN --yes --format json`` - the shipped playbook
  ``ir_toolkit/playbooks/msp-breach-containment.yml`` that ``irkit contain --msp`` runs, default forks;
* **Ansible** (ansible-playbook -f 50, pipelining, ControlPersist, strict host keys, facts off, as
  bench_engine.py), two playbooks under ``bench/ansible/``:
  1. ``snapshot-isolate.yml``: volatile snapshot (the artifacts of irkit's own ``volatile`` profile, with
     irkit's commands: processes with command lines and executable hashes, sockets with owners, sessions,
     interfaces, routes, ARP, firewall, kernel state), tar.gz,
     fetched; then the same nftables table as irkit's (policy drop; loopback and the controller only),
     under a watchdog that a fresh login from the controller disarms; live flows ended.
  2. ``contain-rest.yml``: full triage of the same profile (``ir_triage``; generated from irkit's
     definitions by ``bench/ansible/triage_scripts.py``), tar.gz, fetched; the MSP key out of every
     authorized_keys file and into a KRL; sshd hardening drop-in (validated, sshd reloaded); a unique
     password per host for ``mspadmin`` (password lookup), its sessions ended; end state checked.

Where the two differ (irkit does more): irkit installs and proves a per-case responder key first;
hashes every file on the host and again on receipt, seals, encrypts the bundles (Ansible: plain
tar.gz, no per-file hashes, no custody); refuses destructive steps until a host's evidence is sealed
(evidence gate); escrows each password encrypted and fsynced BEFORE applying it (Ansible: plaintext
files on the controller, written by the lookup); proves by fresh logins that the new password works
and the old one, the MSP key and the old sessions do not; finds authorized_keys files the way sshd
does (``sshd -T``, every passwd home) rather than by a find under /root and /home; runs its sshd
hardening as Ansible content through ansible-runner (so irkit's figures include one Ansible run);
re-verifies every step in a final phase; writes a signed audit log. The Ansible evidence is gzip
compressed on the host; irkit's bundles are uncompressed tar, encrypted - compare evidence bytes with that
in mind (both are printed, with the Ansible archives' uncompressed size).

What is measured
----------------
* time to isolation: from the tool's start to the LAST host isolated - irkit: the last ``host.isolated``
  record's time in the case's signed audit log; Ansible: the last host's end of the isolation's last
  task (fresh login proven, flows ended: the same point as irkit's record), from a callback plugin
  (``bench/ansible/callback_plugins/bench_times.py``); also when the last table was loaded;
* full containment: wall time of the whole run (Ansible: both playbooks);
* controller CPU: user+sys of the tool and ALL its descendants, read from a cpuacct cgroup the tool
  runs in (so daemonised ssh ControlPersist masters are counted too); RUSAGE_CHILDREN is printed too;
* host CPU: the lab's processes run in their own cpuacct cgroup; its use during each tool's run;
* evidence bytes (irkit: the case's evidence/ directory; Ansible: the fetched archives);
* irkit's breakdown per phase (first step start to last step end, from the audit log) and Ansible's
  per task group;
* (#16) the cost per host of the evidence gate and of the audit log's indexed queries, measured against
  the case's own audit log after the run (the index is built once per process, O(log); each query
  should then cost the same at 200 and 1,000 hosts).

Results are printed and written to ``bench/results/contain-<hosts>-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench" / "ansible"))
VENV_BIN = Path(sys.executable).parent
IRKIT = str(VENV_BIN / "irkit")
ANSIBLE_DIR = REPO / "bench" / "ansible"
PRESETS = {20: (2, 10), 200: (4, 50), 1000: (10, 100)}
CASE = "BENCH-CONTAIN"
ISOLATED_TASK = "isolate: a fresh login works; disarm the watchdog; end the flows of everyone else"
TABLE_TASK = "isolate: load the nftables table"
CPUACCT = Path("/sys/fs/cgroup/cpuacct")
# the bar (#17) at 200 hosts
TTI_RATIO_BAR, WALL_RATIO_BAR, CPU_MS_BAR = 5.0, 1.5, 150.0


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- measuring


class CpuGroup:
    """A cpuacct cgroup (v1) for one tool: its CPU and that of every descendant, daemonised or not."""

    def __init__(self, name: str) -> None:
        self.path: Path | None = CPUACCT / f"irkit-bench-{os.getpid()}-{name}"
        try:
            self.path.mkdir(exist_ok=True)
        except OSError:
            self.path = None

    def join(self) -> None:
        """preexec_fn: move the child into the group."""
        if self.path is not None:
            (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def seconds(self) -> float | None:
        if self.path is None:
            return None
        try:
            return int((self.path / "cpuacct.usage").read_text()) / 1e9
        except OSError:
            return None

    def pids(self) -> list[int]:
        if self.path is None:
            return []
        return [int(x) for x in (self.path / "cgroup.procs").read_text().split()]

    def kill_left(self) -> dict[str, int]:
        """End what the tool left running (ssh ControlPersist masters), by pid; returns their names and counts."""
        names: dict[str, int] = {}
        for pid in self.pids():
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
                os.kill(pid, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                continue
            names[comm] = names.get(comm, 0) + 1
        return names

    def remove(self) -> None:
        if self.path is None:
            return
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


class Sampler:
    """Samples (time, controller CPU, host CPU) once a second while a tool runs: CPU per phase."""

    def __init__(self, controller: CpuGroup, lab: CpuGroup) -> None:
        self.controller, self.lab = controller, lab
        self.samples: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        c, h = self.controller.seconds(), self.lab.seconds()
        if c is not None and h is not None:
            self.samples.append((time.time(), c, h))

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self._sample()

    def __enter__(self) -> Sampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def between(self, begin: float, end: float) -> tuple[float, float] | None:
        """(controller CPU s, host CPU s) used between two times (to the nearest sample, ~1 s)."""
        if len(self.samples) < 2:
            return None

        def at(t: float) -> tuple[float, float]:
            best = min(self.samples, key=lambda s: abs(s[0] - t))
            return best[1], best[2]

        (c0, h0), (c1, h1) = at(begin), at(end)
        return round(c1 - c0, 2), round(h1 - h0, 2)


def add_phase_cpu(phases: dict[str, dict[str, Any]], sampler: Sampler, start: float) -> None:
    for ph in phases.values():
        if ph.get("start_s") is not None and ph.get("end_s") is not None:
            cpu = sampler.between(start + ph["start_s"], start + ph["end_s"])
            if cpu is not None:
                ph["controller_cpu_s"], ph["host_cpu_s"] = cpu


def run_measured(cmd: list[str], env: dict[str, str], cwd: Path, group: CpuGroup, out: Path) -> dict[str, Any]:
    """Run ``cmd`` in ``group``; stdout/stderr to ``out``.{out,err}. Wall from just before the fork."""
    before_cg = group.seconds()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    with open(out.with_suffix(".out"), "wb") as so, open(out.with_suffix(".err"), "wb") as se:
        proc = subprocess.run(cmd, env=env, cwd=cwd, stdout=so, stderr=se, preexec_fn=group.join)
    end = time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    after_cg = group.seconds()
    rusage = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"start": start, "end": end, "wall_s": round(end - start, 3), "rc": proc.returncode,
            "cpu_s": round(after_cg - before_cg, 3) if after_cg is not None and before_cg is not None else rusage,
            "cpu_rusage_children_s": round(rusage, 3), "cpu_source": "cgroup" if after_cg is not None else "rusage"}


def tail(path: Path, n: int = 2500) -> str:
    try:
        return path.read_bytes()[-n:].decode("utf-8", "replace")
    except OSError:
        return ""


def tree_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def gzip_content_bytes(path: Path) -> int:
    """Uncompressed size of every .tgz under ``path`` (gzip's ISIZE trailer: exact below 4 GiB per file)."""
    total = 0
    for tgz in path.rglob("*.tgz"):
        with open(tgz, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            total += int.from_bytes(fh.read(4), "little")
    return total


def epoch(ts: str) -> float:
    return dt.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc).timestamp()


def spread(values: list[float], start: float) -> dict[str, float] | None:
    if not values:
        return None
    rel = sorted(v - start for v in values)
    return {"first_s": round(rel[0], 2), "median_s": round(statistics.median(rel), 2), "last_s": round(rel[-1], 2)}


# --------------------------------------------------------------------------- the lab


class LabRunner:
    def __init__(self, env: dict[str, str], inventory: Path, hosts: int) -> None:
        self.env = env
        self.inventory = inventory
        self.hosts = hosts
        self.group = CpuGroup("lab")
        self.ups: list[float] = []
        self.lab_id = ""

    def up(self) -> dict[str, Any]:
        t0 = time.monotonic()
        proc = subprocess.run([IRKIT, "lab", "up", "--inventory", str(self.inventory)], env=self.env,
                              capture_output=True, text=True, preexec_fn=self.group.join)
        if proc.returncode != 0:
            raise SystemExit(f"bench_contain: lab up failed (exit {proc.returncode}): "
                             f"{(proc.stderr or proc.stdout).strip()[-800:]}")
        self.ups.append(round(time.monotonic() - t0, 1))
        log(f"lab up: {self.hosts} hosts in {self.ups[-1]} s")
        info = subprocess.run([IRKIT, "lab", "info", "--inventory", str(self.inventory), "--format", "json"],
                              env=self.env, check=True, capture_output=True, text=True).stdout
        data = json.loads(info)
        self.lab_id = data.get("lab_id", "")
        return data

    def down(self) -> None:
        proc = subprocess.run([IRKIT, "lab", "down", "--inventory", str(self.inventory)], env=self.env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            log(f"lab down failed (exit {proc.returncode}): {proc.stderr.strip()[-400:]}")

    def host_cpu_s(self) -> float | None:
        return self.group.seconds()


def leftovers(lab_id: str, shm_before: set[str]) -> dict[str, Any]:
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
    ours = [line.split()[0] for line in ns if line.startswith(f"irk-{lab_id}-")]
    shm = sorted(set(os.listdir("/dev/shm")) - shm_before)
    return {"netns_left": len(ours), "dev_shm_new": shm[:20]}


# --------------------------------------------------------------------------- irkit


def irkit_run(args: argparse.Namespace, env: dict[str, str], inventory: Path, work: Path,
              lab: LabRunner, n: int) -> dict[str, Any]:
    home = Path(env["IRKIT_HOME"])
    info = lab.up()
    host0 = lab.host_cpu_s()
    group = CpuGroup("irkit")
    cmd = [IRKIT, "contain", "--inventory", str(inventory), "--case", CASE, "--yes", "--format", "json"]
    if args.forks:
        cmd += ["--forks", str(args.forks)]
    log(f"irkit: {' '.join(cmd[1:])}")
    try:
        with Sampler(group, lab.group) as sampler:
            res = run_measured(cmd, env, REPO, group, work / "irkit")
    finally:
        host1 = lab.host_cpu_s()
        res_left = group.kill_left()
        group.remove()
    res["host_cpu_s"] = round(host1 - host0, 2) if host0 is not None and host1 is not None else None
    res["processes_left"] = res_left
    log(f"irkit: exit {res['rc']} in {res['wall_s']} s")
    case = home / "cases" / CASE
    res.update(analyze_irkit(case, res["start"], n))
    add_phase_cpu(res.get("phases") or {}, sampler, res["start"])
    if res.get("planning_s") is not None:
        res["planning_cpu"] = sampler.between(res["start"], res["start"] + res["planning_s"])
    if res["rc"] != 0:
        res["stderr_tail"] = tail(work / "irkit.err")
    try:
        res["summary"] = summarize_summary(json.loads((work / "irkit.out").read_text()))
    except (OSError, ValueError) as exc:
        res["summary"] = {"error": f"no JSON summary on stdout: {exc}"}
    if not args.no_queries:
        res["queries"] = measure_queries(env, info, args.query_sample)
    lab.down()
    res["left"] = leftovers(lab.lab_id, set())
    return res


def summarize_summary(summary: dict[str, Any]) -> dict[str, Any]:
    hosts = summary.get("hosts", {})
    bad = {h: r for h, r in hosts.items() if r.get("status") != "ok"}
    messages: dict[str, int] = {}
    for r in bad.values():
        key = f"{r.get('status')}: {str(r.get('message'))[:160]}"
        messages[key] = messages.get(key, 0) + 1
    return {"ok": summary.get("ok"), "incomplete": summary.get("incomplete"), "reason": summary.get("reason"),
            "hosts": len(hosts), "not_ok": len(bad), "not_ok_by_message": messages}


def analyze_irkit(case: Path, start: float, n: int) -> dict[str, Any]:
    """Time to isolation, per-phase breakdown, order check and sizes, from the case's audit log and plan."""
    records = []
    log_file = case / "audit" / "log.jsonl"
    if not log_file.exists():
        return {"error": f"no audit log at {log_file}"}
    with open(log_file, "rb") as fh:
        for raw in fh:
            if raw.endswith(b"\n"):
                records.append(json.loads(raw))
    out: dict[str, Any] = {"audit_records": len(records)}
    run_start = next((r for r in records if r["action"] == "run.start"), None)
    run_end = next((r for r in reversed(records) if r["action"] == "run.end"), None)
    if run_start:
        out["planning_s"] = round(epoch(run_start["ts"]) - start, 2)
    if run_end:
        out["run_end"] = {k: v for k, v in run_end.get("params", {}).items() if k != "plan"}
        out["run_end_outcome"] = run_end.get("outcome")
    isolated: dict[str, float] = {}
    for r in records:
        if r["action"] == "host.isolated" and r.get("host") not in isolated:
            isolated[r["host"]] = epoch(r["ts"])
    out["hosts_isolated"] = len(isolated)
    out["isolation"] = spread(list(isolated.values()), start)
    out["time_to_isolation_s"] = out["isolation"]["last_s"] if out["isolation"] else None
    # per phase, from the plan the run executed
    phase_of: dict[str, str] = {}
    order: list[str] = []
    plan_hash = (run_start or {}).get("params", {}).get("plan", "")
    plans = sorted((case / "journal").glob("plan-*.json"))
    plan_file = next((p for p in plans if plan_hash and p.name == f"plan-{plan_hash[:16]}.json"), plans[-1] if plans else None)
    if plan_file:
        for item in json.loads(plan_file.read_text())["items"]:
            phase_of[item["id"]] = item["phase"]
            if item["phase"] not in order:
                order.append(item["phase"])
    phases: dict[str, dict[str, Any]] = {}
    failures: dict[str, int] = {}
    for r in records:
        item = (r.get("params") or {}).get("item")
        if item not in phase_of or r["action"] not in ("step.start", "step.done", "step.refused", "step.skipped"):
            continue
        ph = phases.setdefault(phase_of[item], {"begin": None, "end": None, "ok": 0, "failed": 0, "other": 0})
        t = epoch(r["ts"])
        if r["action"] == "step.start":
            ph["begin"] = t if ph["begin"] is None else min(ph["begin"], t)
        else:
            ph["end"] = t if ph["end"] is None else max(ph["end"], t)
            key = "ok" if r.get("outcome") == "ok" else "failed" if r["action"] == "step.done" else "other"
            ph[key] += 1
            if key != "ok":
                p = r.get("params") or {}
                why = f"{phase_of[item]} / {p.get('step_action')} / {r['action']} {r.get('outcome')}: " \
                      f"{str(p.get('error') or p.get('reason') or '')[:160]}"
                failures[why] = failures.get(why, 0) + 1
    out["phases"] = {
        name: {"start_s": round(ph["begin"] - start, 2) if ph["begin"] else None,
               "end_s": round(ph["end"] - start, 2) if ph["end"] else None,
               "wall_s": round(ph["end"] - ph["begin"], 2) if ph["begin"] and ph["end"] else None,
               "steps_ok": ph["ok"], "steps_failed": ph["failed"], "steps_refused_or_skipped": ph["other"]}
        for name in order if (ph := phases.get(name))
    }
    if failures:
        out["failures"] = dict(sorted(failures.items(), key=lambda kv: -kv[1])[:20])
    # safety: every host's evidence sealed before its first credential change
    first_evidence: dict[str, int] = {}
    first_change: dict[str, int] = {}
    for r in records:
        h = r.get("host")
        if r["action"] == "evidence.collected":
            first_evidence.setdefault(h, r["seq"])
        elif r["action"] in ("credential.applied", "credential.rotated", "account.locked", "ssh_keys.revoked"):
            first_change.setdefault(h, r["seq"])
    out["evidence_before_credential_changes"] = {
        "hosts_changed": len(first_change),
        "violations": sorted(h for h, s in first_change.items() if first_evidence.get(h, 1 << 62) > s)[:20],
    }
    out["hosts_with_evidence"] = len(first_evidence)
    out["evidence_bytes"] = tree_bytes(case / "evidence")
    out["run_log_bytes"] = tree_bytes(case / "logs")
    out["audit_log_bytes"] = tree_bytes(case / "audit")
    out["case_bytes"] = tree_bytes(case)
    return out


QUERY_SCRIPT = r"""
import json, os, sys, time
case, msp, sample = sys.argv[1], sys.argv[2], int(sys.argv[3])
hosts = json.loads(sys.stdin.read())[:sample]
from ir_toolkit.run.session import open_journal
from ir_toolkit.audit.log import signed_records
from ir_toolkit.playbook.gate import evidence_gate
from ir_toolkit.triage.status import host_evidence_status
out = {"hosts_queried": len(hosts)}
t = time.perf_counter(); c = time.process_time()
journal = open_journal(case, msp)
out["open_s"] = round(time.perf_counter() - t, 3)
out["records"] = journal.size
t = time.perf_counter(); c = time.process_time()
journal.indexed(("evidence.collected",))          # first query: builds the index (one pass, O(log))
out["index_build_s"] = round(time.perf_counter() - t, 3); out["index_build_cpu_s"] = round(time.process_time() - c, 3)
def per_host(fn):
    t = time.perf_counter(); c = time.process_time()
    for tenant, host in hosts:
        fn(tenant, host)
    k = max(len(hosts), 1)
    return {"wall_us": round(1e6 * (time.perf_counter() - t) / k, 1), "cpu_us": round(1e6 * (time.process_time() - c) / k, 1)}
actions = ("evidence.collected", "host.isolated", "credential.escrowed", "ssh_keys.revoked")
out["indexed_query_per_host"] = per_host(lambda tenant, host: signed_records(case, actions, tenant=tenant, host=host))
try:
    out["custody_status_no_rehash_per_host"] = per_host(
        lambda tenant, host: host_evidence_status(case, tenant, host, rehash=False))
except Exception as exc:
    out["custody_status_no_rehash_per_host"] = {"error": repr(exc)[:300]}
try:
    gate = evidence_gate(case)
    out["gate_per_host"] = per_host(lambda tenant, host: gate(tenant, host))
    out["gate_note"] = "first call per host: re-hashes the host's sealed bundle (cost follows the bundle size)"
except Exception as exc:
    out["gate_per_host"] = {"error": repr(exc)[:300]}
journal.close()
print(json.dumps(out))
"""


def measure_queries(env: dict[str, str], info: dict[str, Any], sample: int) -> dict[str, Any]:
    """#16: gate and indexed audit queries per host, against the case's own log (a fresh process)."""
    hosts = [(h["tenant"], h["name"]) for h in info["hosts"]]
    proc = subprocess.run([sys.executable, "-c", QUERY_SCRIPT, CASE, info["msp"], str(sample)],
                          input=json.dumps(hosts), env=env, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[-800:]}
    return json.loads(proc.stdout)


# --------------------------------------------------------------------------- Ansible


def ansible_files(work: Path, info: dict[str, Any]) -> tuple[Path, Path, Path]:
    from triage_scripts import triage_script, volatile_script

    work.mkdir(parents=True, exist_ok=True)
    inv = work / "inventory.ini"
    inv.write_text("[lab]\n" + "".join(f"{h['name']} ansible_host={h['address']} ansible_port={h.get('port', 22)}\n"
                                       for h in info["hosts"] if h.get("os", "linux") == "linux"))
    cfg = work / "ansible.cfg"
    cfg.write_text(
        "[defaults]\nhost_key_checking = True\ngathering = explicit\nforks = 50\nretry_files_enabled = False\n"
        f"private_key_file = {info['responder_private_key']}\nremote_user = {info.get('responder_user', 'root')}\n"
        "interpreter_python = /usr/bin/python3\n"
        f"callback_plugins = {ANSIBLE_DIR / 'callback_plugins'}\ncallbacks_enabled = bench_times\n"
        "[ssh_connection]\npipelining = True\n"
        f"control_path_dir = {work / 'cp'}\n"
        f"ssh_args = -o ControlMaster=auto -o ControlPersist=60s -o UserKnownHostsFile={info['known_hosts']} "
        "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes\n"
    )
    (work / "volatile.sh").write_text(volatile_script())
    (work / "triage.sh").write_text(triage_script("ir_triage"))
    msp_pub = work / "msp_shared.pub"
    msp_pub.write_text(info["msp_public_key"].strip() + "\n")
    krl = work / "msp.krl"
    subprocess.run(["ssh-keygen", "-q", "-k", "-f", str(krl), str(msp_pub)], check=True, capture_output=True)
    escrow = work / "escrow"
    escrow.mkdir(mode=0o700, exist_ok=True)
    fetch = work / "fetched"
    fetch.mkdir(exist_ok=True)
    extra = {
        "bench_controller": info["controller_address"],
        "bench_fetch_dir": str(fetch), "bench_volatile_script": str(work / "volatile.sh"),
        "bench_triage_script": str(work / "triage.sh"), "bench_case": CASE,
        "bench_msp_key_b64": msp_pub.read_text().split()[1], "bench_krl": str(krl),
        "bench_escrow_dir": str(escrow), "bench_shared_account": info.get("msp_shared_account", "mspadmin"),
        "bench_responder_user": info.get("responder_user", "root"),
    }
    extra_file = work / "vars.json"
    extra_file.write_text(json.dumps(extra))
    return inv, cfg, extra_file


def ansible_run(args: argparse.Namespace, env: dict[str, str], work: Path, lab: LabRunner, n: int) -> dict[str, Any]:
    info = lab.up()
    awork = work / "ansible"
    inv, cfg, extra = ansible_files(awork, info)
    times = awork / "times.jsonl"
    aenv = {**env, "ANSIBLE_CONFIG": str(cfg), "IRKIT_BENCH_TIMES": str(times), "ANSIBLE_NOCOLOR": "1"}
    host0 = lab.host_cpu_s()
    group = CpuGroup("ansible")
    res: dict[str, Any] = {}
    sampler = Sampler(group, lab.group).__enter__()
    try:
        books = (("playbook1", "snapshot-isolate.yml"),) if args.isolation_only else (
            ("playbook1", "snapshot-isolate.yml"), ("playbook2", "contain-rest.yml"))
        for key, book in books:
            cmd = [str(VENV_BIN / "ansible-playbook"), "-i", str(inv), "-f", "50", "-e", f"@{extra}",
                   str(ANSIBLE_DIR / book)]
            log(f"ansible: {book}")
            res[key] = run_measured(cmd, aenv, awork, group, awork / key)
            log(f"ansible: {book} exit {res[key]['rc']} in {res[key]['wall_s']} s")
            if res[key]["rc"] != 0:
                res[key]["stdout_tail"] = tail(awork / f"{key}.out")
    finally:
        sampler.__exit__()
        host1 = lab.host_cpu_s()
        total_cpu = group.seconds()
        res["processes_left"] = group.kill_left()
        group.remove()
    p1, p2 = res["playbook1"], res.get("playbook2")
    start = p1["start"]
    res["rc"] = max(p1["rc"], p2["rc"] if p2 else 0)
    # --isolation-only: no whole-containment figure (the second playbook did not run)
    res["wall_s"] = None if args.isolation_only else round((p2 or p1)["end"] - start, 3)
    # the cgroup's total includes the ControlPersist masters until they were killed above
    res["cpu_s"] = round(total_cpu, 3) if total_cpu is not None else round(
        p1["cpu_rusage_children_s"] + (p2["cpu_rusage_children_s"] if p2 else 0), 3)
    res["cpu_rusage_children_s"] = round(p1["cpu_rusage_children_s"] + (p2["cpu_rusage_children_s"] if p2 else 0), 3)
    res["host_cpu_s"] = round(host1 - host0, 2) if host0 is not None and host1 is not None else None
    res.update(analyze_ansible(times, start))
    add_phase_cpu(res.get("phases") or {}, sampler, start)
    res["evidence_bytes"] = tree_bytes(awork / "fetched")
    res["evidence_content_bytes"] = gzip_content_bytes(awork / "fetched")
    lab.down()
    shutil.rmtree(awork / "escrow", ignore_errors=True)   # plaintext passwords
    shutil.rmtree(awork / "fetched", ignore_errors=True)
    return res


def analyze_ansible(times: Path, start: float) -> dict[str, Any]:
    events = [json.loads(line) for line in times.read_text().splitlines()] if times.exists() else []
    done: dict[str, dict[str, float]] = {}
    groups: dict[str, dict[str, float]] = {}
    failed: dict[str, int] = {}
    for e in events:
        if e.get("event") == "task.start":
            g = groups.setdefault(e["task"].split(":")[0], {"begin": e["t"], "end": e["t"]})
            g["begin"] = min(g["begin"], e["t"])
        elif e.get("event") == "host.result":
            done.setdefault(e["task"], {})[e["host"]] = e["t"]
            g = groups.setdefault(e["task"].split(":")[0], {"begin": e["t"], "end": e["t"]})
            g["end"] = max(g["end"], e["t"])
            if e["status"] in ("failed", "unreachable"):
                key = f"{e['task']}: {e['status']}"
                failed[key] = failed.get(key, 0) + 1
    iso = done.get(ISOLATED_TASK, {})
    out: dict[str, Any] = {
        "hosts_isolated": len(iso),
        "isolation": spread(list(iso.values()), start),
        "table_loaded": spread(list(done.get(TABLE_TASK, {}).values()), start),
        "phases": {name: {"start_s": round(g["begin"] - start, 2), "end_s": round(g["end"] - start, 2),
                          "wall_s": round(g["end"] - g["begin"], 2)} for name, g in groups.items()},
    }
    out["time_to_isolation_s"] = out["isolation"]["last_s"] if out["isolation"] else None
    if failed:
        out["failures"] = failed
    return out


# --------------------------------------------------------------------------- report


def commit() -> str:
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return head + ("+dirty" if dirty else "")


def report(result: dict[str, Any]) -> None:
    n = result["hosts"]
    rows = [("time to isolation (last host) s", "time_to_isolation_s", 1),
            ("full containment wall s", "wall_s", 1),
            ("controller CPU s", "cpu_s", 1),
            ("controller CPU per host ms", None, 1),
            ("host CPU per host ms (lab)", None, 1),
            ("evidence MB", None, 1)]
    tools = [t for t in ("irkit", "ansible") if t in result]
    print(f"\ncontainment, {n} lab hosts ({result['tenants']} tenants), commit {result['commit']}")
    print(f"  {'':34s}" + "".join(f"{t:>12s}" for t in tools) + ("   ansible/irkit" if len(tools) == 2 else ""))

    def value(tool: str, label: str, key: str | None) -> float | None:
        r = result[tool]
        if key:
            return r.get(key)
        if label.startswith("controller CPU per host"):
            return 1000 * r["cpu_s"] / n if r.get("cpu_s") is not None else None
        if label.startswith("host CPU"):
            return 1000 * r["host_cpu_s"] / n if r.get("host_cpu_s") is not None else None
        return r.get("evidence_bytes", 0) / 1e6

    for label, key, _ in rows:
        vals = [value(t, label, key) for t in tools]
        line = f"  {label:34s}" + "".join(f"{v:12.1f}" if v is not None else f"{'-':>12s}" for v in vals)
        if len(vals) == 2 and vals[0] and vals[1] is not None:
            line += f"   x{vals[1] / vals[0]:.2f}"
        print(line)
    for tool in tools:
        r = result[tool]
        print(f"  {tool}: exit {r.get('rc')}, hosts isolated {r.get('hosts_isolated')}/{n}, "
              f"isolation first/median/last {r.get('isolation')}")
        for name, ph in (r.get("phases") or {}).items():
            print(f"    {name:12s} {ph.get('start_s')!s:>8} -> {ph.get('end_s')!s:>8} s  ({ph.get('wall_s')} s; "
                  f"CPU controller {ph.get('controller_cpu_s')} s, hosts {ph.get('host_cpu_s')} s)")
        for why, count in (r.get("failures") or {}).items():
            print(f"    FAILED x{count}: {why}")
    if "irkit" in result:
        r = result["irkit"]
        print(f"  irkit: planning {r.get('planning_s')} s; evidence {r.get('hosts_with_evidence')} hosts; order "
              f"violations {r.get('evidence_before_credential_changes', {}).get('violations')}; run log "
              f"{r.get('run_log_bytes', 0) / 1e6:.1f} MB; audit log {r.get('audit_log_bytes', 0) / 1e6:.1f} MB "
              f"({r.get('audit_records')} records)")
        if r.get("run_end"):
            print(f"  irkit run.end record: {json.dumps(r['run_end'])[:600]}")
        if r.get("queries"):
            print(f"  irkit audit/gate queries (#16): {json.dumps(r['queries'])}")
    if "ansible" in result:
        r = result["ansible"]
        print(f"  ansible: table loaded first/median/last {r.get('table_loaded')}; evidence uncompressed "
              f"{r.get('evidence_content_bytes', 0) / 1e6:.1f} MB; playbook 1 {r['playbook1']['wall_s']} s")
    if len(tools) == 2 and n >= 200:
        i, a = result["irkit"], result["ansible"]
        checks = {
            f"time to isolation >= {TTI_RATIO_BAR}x shorter": (a.get("time_to_isolation_s") or 0)
            >= TTI_RATIO_BAR * (i.get("time_to_isolation_s") or float("inf")),
            f"controller CPU <= {CPU_MS_BAR} ms per host": 1000 * i["cpu_s"] / n <= CPU_MS_BAR,
        }
        if a.get("wall_s") is not None:
            checks[f"full containment >= {WALL_RATIO_BAR}x faster"] = a["wall_s"] >= WALL_RATIO_BAR * i["wall_s"]
        result["bars"] = checks
        for text, ok in checks.items():
            print(f"  #17 bar: {text}: {'holds' if ok else 'does NOT hold'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, choices=sorted(PRESETS), help="preset: 20 (2x10), 200 (4x50), 1000 (10x100)")
    parser.add_argument("--tenants", type=int, default=2)
    parser.add_argument("--hosts-per-tenant", type=int, default=10)
    parser.add_argument("--only", choices=["irkit", "ansible"], help="run one tool only")
    parser.add_argument("--ansible-first", action="store_true", help="run the Ansible side first")
    parser.add_argument("--isolation-only", action="store_true",
                        help="Ansible runs only its snapshot + isolation playbook (time to isolation side by side; "
                             "no full-containment comparison, and its controller/host CPU cover that playbook only)")
    parser.add_argument("--forks", type=int, default=0, help="irkit --forks (default: irkit's own default)")
    parser.add_argument("--base", default="198.18.64.0/18", help="lab network (inside 198.18.0.0/15)")
    parser.add_argument("--query-sample", type=int, default=200, help="hosts to run the #16 queries for")
    parser.add_argument("--no-queries", action="store_true", help="skip the #16 gate/audit query measurement")
    parser.add_argument("--keep-home", action="store_true", help="keep the private IRKIT_HOME (case, evidence)")
    parser.add_argument("--out", type=Path, help="JSON result file (default bench/results/contain-N-STAMP.json)")
    args = parser.parse_args()
    if args.hosts:
        args.tenants, args.hosts_per_tenant = PRESETS[args.hosts]
    if os.geteuid() != 0:
        print("bench_contain: the lab needs root (network namespaces); run with sudo", file=sys.stderr)
        return 4
    n = args.tenants * args.hosts_per_tenant
    import ipaddress

    from ir_toolkit.lab.netns import conflicts

    clash = conflicts(ipaddress.ip_network(args.base, strict=False), own_bridge="")
    if clash:
        print(f"bench_contain: --base {args.base}: {clash}", file=sys.stderr)
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 1 << 20)), hard))
    home = Path(tempfile.mkdtemp(prefix="irkit-bench-contain-"))
    env = {**os.environ, "IRKIT_HOME": str(home), "IRKIT_KEY_PASSPHRASE": "bench-passphrase"}
    work = home / "work"
    work.mkdir()
    inventory = work / "inventory.yml"
    subprocess.run([IRKIT, "lab", "generate", "--tenants", str(args.tenants), "--hosts-per-tenant",
                    str(args.hosts_per_tenant), "--msp", "benchcontain", "--out", str(inventory),
                    "--base", args.base], env=env, check=True, capture_output=True)
    subprocess.run([IRKIT, "keys", "init", "--if-missing"], env=env, check=True, capture_output=True)
    shm_before = set(os.listdir("/dev/shm"))
    lab = LabRunner(env, inventory, n)
    result: dict[str, Any] = {"hosts": n, "tenants": args.tenants, "commit": commit(),
                              "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              "loadavg_start": os.getloadavg(), "nproc": os.cpu_count()}
    try:
        order = ["ansible", "irkit"] if args.ansible_first else ["irkit", "ansible"]
        for tool in order:
            if args.only in (None, tool):
                result[tool] = (irkit_run(args, env, inventory, work, lab, n) if tool == "irkit"
                                else ansible_run(args, env, work, lab, n))
    finally:
        lab.down()
        subprocess.run([IRKIT, "lab", "down", "--inventory", str(inventory), "--purge"], env=env,
                       capture_output=True)
        lab.group.kill_left()
        lab.group.remove()
        result["lab_up_s"] = lab.ups
        result["loadavg_end"] = os.getloadavg()
        result["left"] = leftovers(lab.lab_id, shm_before)
        if not args.keep_home:
            shutil.rmtree(home, ignore_errors=True)
        else:
            result["home"] = str(home)
    report(result)
    out = args.out or REPO / "bench" / "results" / (
        f"contain-{n}-{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"results: {out}")
    bad = [t for t in ("irkit", "ansible") if t in result and result[t].get("rc")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
