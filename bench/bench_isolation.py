#!/usr/bin/env python3
"""Time to isolation only, for before/after comparisons of trees in ONE run (alternating, on a noisy machine).

    sudo .venv/bin/python bench/bench_isolation.py --tree /path/to/before --tree . --rounds 2 \\
        --tenants 2 --hosts-per-tenant 10 --base 198.19.224.0/20

For each round and each tree (a checkout with its own ``.venv``, ``make venv``): a fresh lab from a generated
inventory (``irkit lab generate``, the seeded MSP compromise) is brought up, ``irkit contain --inventory GEN
--yes --format json`` (the shipped containment playbook) starts, and when the audit log holds a
``host.isolated`` record for every host the run is killed (-9) and the lab taken down: what comes after
isolation (the full triage, credential changes) is not run, so a comparison costs a minute, not the
quarter of an hour of ``bench/bench_contain.py``.

Printed per run (one JSON line): ``planning_s`` (start to the ``run.start`` record), the first step start
and last step end of the ``access``, ``snapshot`` and ``isolate`` phases and ``tti_s`` (start to the last
``host.isolated``), seconds from the start of ``irkit contain``; controller CPU per host (the irkit process
and its children, a cpuacct cgroup) and the lab hosts' CPU per host (their own cgroup) from the start to
the last isolation; the load average at start and end. Big labs (50 hosts or more) one at a time on this
machine: wrap in ``flock /tmp/irkit-biglab.lock``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

CPUACCT = Path("/sys/fs/cgroup/cpuacct")


class Group:
    """A cpuacct cgroup (v1) whose processes and descendants are counted and, at the end, ended by pid."""

    def __init__(self, name: str) -> None:
        self.path = CPUACCT / f"irkit-bench-iso-{os.getpid()}-{name}"
        self.path.mkdir(exist_ok=True)

    def join(self) -> None:  # preexec_fn
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def seconds(self) -> float:
        return int((self.path / "cpuacct.usage").read_text()) / 1e9

    def end(self) -> None:
        for pid in (self.path / "cgroup.procs").read_text().split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def epoch(ts: str) -> float:
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def one_run(tree: Path, args: argparse.Namespace, hosts: int) -> dict[str, Any]:
    irkit = str(tree / ".venv" / "bin" / "irkit")
    home = Path(tempfile.mkdtemp(prefix="irkit-bench-iso-"))
    env = {**os.environ, "IRKIT_HOME": str(home), "IRKIT_KEY_PASSPHRASE": "bench-isolation"}
    inventory = home / "inventory.yml"
    subprocess.run([irkit, "lab", "generate", "--tenants", str(args.tenants), "--hosts-per-tenant",
                    str(args.hosts_per_tenant), "--msp", "benchiso", "--out", str(inventory), "--base", args.base],
                   env=env, check=True, capture_output=True)
    subprocess.run([irkit, "keys", "init", "--if-missing"], env=env, check=True, capture_output=True)
    lab, tool = Group("lab"), Group("irkit")
    out: dict[str, Any] = {"tree": str(tree)}
    try:
        subprocess.run([irkit, "lab", "up", "--inventory", str(inventory)], env=env, check=True,
                       capture_output=True, preexec_fn=lab.join)
        time.sleep(2)
        host0, cpu0, load0 = lab.seconds(), tool.seconds(), os.getloadavg()[0]
        start = time.time()
        proc = subprocess.Popen([irkit, "contain", "--inventory", str(inventory), "--case", "BENCH-ISO", "--yes",
                                 "--format", "json"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, preexec_fn=tool.join)
        log = home / "cases" / "BENCH-ISO" / "audit" / "log.jsonl"
        records: list[dict[str, Any]] = []
        isolated: dict[str, float] = {}
        offset, rest = 0, b""
        while len(isolated) < hosts and proc.poll() is None and time.time() - start < args.limit:
            time.sleep(0.2)
            if not log.exists():
                continue
            with open(log, "rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
            offset += len(chunk)
            *lines, rest = (rest + chunk).split(b"\n")
            for raw in lines:
                record = json.loads(raw)
                records.append(record)
                if record["action"] == "host.isolated":
                    isolated.setdefault(record["host"], epoch(record["ts"]))
        cpu1, host1 = tool.seconds(), lab.seconds()
        proc.kill()
        proc.wait()
        run_start = next((r for r in records if r["action"] == "run.start"), None)
        out["planning_s"] = round(epoch(run_start["ts"]) - start, 2) if run_start else None
        phases: dict[str, list[float]] = {}
        for record in records:
            if record["action"] in ("step.start", "step.done"):
                name = str((record.get("params") or {}).get("item", "?")).split("/")[0]
                t = epoch(record["ts"]) - start
                span = phases.setdefault(name, [t, t])
                span[0], span[1] = min(span[0], t), max(span[1], t)
        out["phases"] = {k: [round(a, 2), round(b, 2)] for k, (a, b) in phases.items()
                         if k in ("access", "snapshot", "isolate")}
        out["isolated"] = len(isolated)
        out["tti_s"] = round(max(isolated.values()) - start, 2) if len(isolated) == hosts else None
        out["controller_cpu_ms_per_host"] = round(1000 * (cpu1 - cpu0) / hosts, 1)
        out["host_cpu_ms_per_host"] = round(1000 * (host1 - host0) / hosts, 1)
        out["load"] = [round(load0, 1), round(os.getloadavg()[0], 1)]
    finally:
        tool.end()
        subprocess.run([irkit, "lab", "down", "--inventory", str(inventory), "--purge"], env=env,
                       capture_output=True)
        lab.end()
        shutil.rmtree(home, ignore_errors=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", type=Path, required=True, help="a checkout with .venv (repeat)")
    parser.add_argument("--tenants", type=int, default=2)
    parser.add_argument("--hosts-per-tenant", type=int, default=10)
    parser.add_argument("--base", default="198.19.224.0/20", help="lab network (inside 198.18.0.0/15)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--limit", type=float, default=900, help="give up a run after this many seconds")
    parser.add_argument("--out", type=Path, help="JSON file for all runs")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_isolation: the lab needs root (network namespaces); run with sudo")
        return 4
    hosts = args.tenants * args.hosts_per_tenant
    results = []
    for rnd in range(args.rounds):
        for tree in args.tree:
            result = {**one_run(tree.resolve(), args, hosts), "round": rnd}
            print(json.dumps(result), flush=True)
            results.append(result)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
