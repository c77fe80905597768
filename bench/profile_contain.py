#!/usr/bin/env python3
"""Profile the controller side of `irkit contain` with the shipped containment playbook on a lab fleet.

    flock /tmp/irkit-biglab.lock sudo .venv/bin/python bench/profile_contain.py --hosts 200 [--py-spy]

Generates an inventory (`irkit lab generate`, MSP "cpufleet": its shared SSH key and shared
`mspadmin` account are seeded on every host, so revocation and rotation have real work),
brings the lab up, runs `irkit contain --inventory GEN --yes` and brings the lab down again.

Measured:

* controller CPU = user+sys of the irkit process and of all its children (ansible-runner workers,
  ansible-playbook and its ssh processes), from RUSAGE_CHILDREN of this driver;
* CPU per phase: the irkit process tree's CPU (from /proc, every 0.25 s) between the `phase.start`
  events of the run's JSON log, split into irkit's own process and its children;
* with --py-spy: a sampling profile of every thread and subprocess (py-spy record --subprocesses);
  the top functions by self and by inclusive samples are printed (py-spy's CPU is then part of the
  RUSAGE figure, so use the figures of a run without --py-spy for the budget).

Results go to stdout and bench/results/profile-contain-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
IRKIT = str(VENV_BIN / "irkit")
TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> tuple[float, float, list[int]]:
    """(own utime+stime, reaped children's cutime+cstime, child pids) of one process, in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0, []
    own = (int(fields[11]) + int(fields[12])) / TICK
    reaped = (int(fields[13]) + int(fields[14])) / TICK
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids.extend(int(x) for x in f.read().split())
    except OSError:
        pass
    return own, reaped, kids


def tree_cpu(root: int) -> tuple[float, float]:
    """(CPU of ``root`` itself, CPU of its live and reaped descendants)."""
    own, reaped, kids = _proc_cpu(root)
    children = reaped
    stack = list(kids)
    while stack:
        pid = stack.pop()
        o, r, k = _proc_cpu(pid)
        children += o + r
        stack.extend(k)
    return own, children


class Sampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.25):
            own, kids = tree_cpu(self.pid)
            if own or kids:
                self.samples.append((time.time(), own, kids))


def phase_breakdown(samples: list[tuple[float, float, float]], log_path: Path | None) -> list[dict]:
    if not samples or log_path is None:
        return []
    # phases are fleet-wide barriers: a phase ends with its last step.done (info level, always logged)
    last: dict[str, float] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        if '"step.done"' not in line and '"run.start"' not in line:
            continue
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        ts = dt.datetime.fromisoformat(ev["timestamp"]).timestamp()
        name = "startup+plan" if ev.get("event") == "run.start" else str(ev.get("item", "?")).split("/", 1)[0]
        last[name] = max(ts, last.get(name, ts))
    ends = sorted((ts, name) for name, ts in last.items())
    if not ends:
        return []
    names = [n for _, n in ends]
    bounds = [samples[0][0] - 1] + [ts for ts, _ in ends[:-1]] + [samples[-1][0] + 1]

    def at(t: float) -> tuple[float, float]:
        best = (0.0, 0.0)
        for ts, own, kids in samples:
            if ts <= t:
                best = (own, kids)
        return best

    rows = []
    for name, t0, t1 in zip(names, bounds, bounds[1:]):
        a, b = at(t0), at(t1)
        rows.append({"phase": name, "wall_s": round(t1 - t0, 2), "irkit_cpu_s": round(b[0] - a[0], 2),
                     "children_cpu_s": round(b[1] - a[1], 2)})
    # what the last sample missed (process exit)
    return rows


def summarize_pyspy(raw: Path, top: int = 40) -> dict[str, list]:
    self_c: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    by_proc: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        frames = stack.split(";")
        total += n
        by_proc[frames[0][:80]] += n
        # py-spy raw frames: "process ..;thread ..;func (file:line);..."
        funcs = [f.rsplit(":", 1)[0] if "(" in f else f for f in frames]
        seen = set()
        for f in funcs:
            if f not in seen:
                incl[f] += n
                seen.add(f)
        self_c[funcs[-1]] += n
    return {"total_samples": total, "by_process": by_proc.most_common(10),
            "self": self_c.most_common(top), "inclusive": incl.most_common(top * 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--tenants", type=int, default=0, help="default: one per 50 hosts")
    parser.add_argument("--forks", type=int, default=200)
    parser.add_argument("--base", default="198.18.128.0/18",
                        help="lab network; 'auto': a free 198.19.x.0/22 block as the test labs use (labs of fewer "
                             "than 50 hosts, which need no /tmp/irkit-biglab.lock)")
    parser.add_argument("--py-spy", action="store_true", help="sample every thread and subprocess with py-spy")
    parser.add_argument("--rate", type=int, default=50)
    parser.add_argument("--playbook", default=None)
    parser.add_argument("--keep-home", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("profile_contain: the lab needs root")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tenants = args.tenants or max(1, args.hosts // 50)
    per = args.hosts // tenants
    n = tenants * per
    home = Path(tempfile.mkdtemp(prefix="irkit-prof-"))
    env = {**os.environ, "IRKIT_HOME": str(home), "IRKIT_KEY_PASSPHRASE": "bench-passphrase"}
    inventory = home / "inventory.yml"
    base = args.base
    if base == "auto":
        import ipaddress

        sys.path.insert(0, str(REPO))
        from ir_toolkit.lab.netns import conflicts

        base = next(str(net) for block in range(0, 256, 4)
                    if not conflicts(net := ipaddress.ip_network(f"198.19.{block}.0/22"), own_bridge=""))
    subprocess.run([IRKIT, "lab", "generate", "--tenants", str(tenants), "--hosts-per-tenant", str(per),
                    "--msp", "cpufleet", "--out", str(inventory), "--base", base], env=env, check=True,
                   capture_output=True)
    result: dict = {"hosts": n, "tenants": tenants}
    try:
        t0 = time.monotonic()
        subprocess.run([IRKIT, "lab", "up", "--inventory", str(inventory)], env=env, check=True, capture_output=True)
        result["lab_up_s"] = round(time.monotonic() - t0, 1)
        subprocess.run([IRKIT, "keys", "init", "--if-missing"], env=env, check=True, capture_output=True)
        cmd = [IRKIT, "contain", "--inventory", str(inventory), "--case", "PROF", "--yes",
               "--forks", str(min(n, args.forks))]
        if args.playbook:
            cmd += ["--playbook", args.playbook]
        raw = home / "pyspy.txt"
        if args.py_spy:
            cmd = [str(VENV_BIN / "py-spy"), "record", "--subprocesses", "--nonblocking", "--format", "raw",
                   "--rate", str(args.rate), "--output", str(raw), "--"] + cmd
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.monotonic()
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # the irkit process: py-spy's child when profiling
        target = proc.pid
        if args.py_spy:
            for _ in range(100):
                _, _, kids = _proc_cpu(proc.pid)
                if kids:
                    target = kids[0]
                    break
                time.sleep(0.05)
        sampler = Sampler(target)
        sampler.start()
        out, err = proc.communicate()
        wall = time.monotonic() - start
        sampler.stop.set()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        result.update({"rc": proc.returncode, "wall_s": round(wall, 1), "cpu_s": round(cpu, 2),
                       "cpu_ms_per_host": round(1000 * cpu / n, 1), "py_spy": args.py_spy})
        case = home / "cases" / "PROF"
        logs = sorted((case / "logs").glob("*.jsonl")) if (case / "logs").exists() else []
        result["run_log_bytes"] = sum(p.stat().st_size for p in logs)
        result["run_log_bytes_per_host"] = round(result["run_log_bytes"] / n)
        result["phases"] = phase_breakdown(sampler.samples, logs[-1] if logs else None)
        result["cpu_samples"] = sampler.samples
        if proc.returncode != 0:
            sys.stderr.write(f"contain exited {proc.returncode}\n{out[-4000:]}\n{err[-4000:]}\n")
        result["summary_tail"] = out[-1500:]
        if args.py_spy and raw.exists():
            result["py_spy_profile"] = summarize_pyspy(raw)
            shutil.copy(raw, REPO / "bench" / "results" / f"pyspy-{n}.txt") if (REPO / "bench" / "results").exists() else None
    finally:
        subprocess.run([IRKIT, "lab", "down", "--inventory", str(inventory)], env=env, capture_output=True)
        if not args.keep_home:
            shutil.rmtree(home, ignore_errors=True)
        else:
            print(f"IRKIT_HOME kept: {home}")

    print(f"{n} hosts: rc={result.get('rc')} wall {result.get('wall_s')} s, controller CPU {result.get('cpu_s')} s "
          f"= {result.get('cpu_ms_per_host')} ms/host, run log {result.get('run_log_bytes_per_host')} B/host")
    for row in result.get("phases", []):
        print(f"  {row['phase']:14s} wall {row['wall_s']:7.1f} s  irkit {row['irkit_cpu_s']:7.2f} s  "
              f"children {row['children_cpu_s']:7.2f} s")
    prof = result.get("py_spy_profile")
    if prof:
        print(f"py-spy: {prof['total_samples']} samples")
        for name, c in prof["by_process"]:
            print(f"  proc {c:7d}  {name}")
        print("self:")
        for name, c in prof["self"][:30]:
            print(f"  {c:7d}  {name}")
    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    (out_dir / f"profile-contain-{n}-{stamp}.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
