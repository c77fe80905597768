#!/usr/bin/env python3
"""Benchmark `irkit lab`: time to bring N hosts up and down, and their memory.

    sudo .venv/bin/python bench/bench_lab.py --hosts 200
    sudo .venv/bin/python bench/bench_lab.py --hosts 1000 --ssh-sample 100

Steps: generate an inventory (20 hosts per tenant) in a private IRKIT_HOME,
`irkit lab up` (timed, wall + CPU of irkit and everything it started), check
every host is healthy (`lab status`) and log in over real SSH with the pinned
host keys (all hosts, or a sample), measure memory (drop of MemAvailable, sum
of the PSS of every lab process), run `lab up` again (idempotent), then
`lab down` (timed) and check that nothing is left. Prints a summary and JSON.
Figures are recorded in docs/lab.md; this is not a timed test.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def meminfo(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def machine_cpu_s() -> float:
    """CPU seconds used by the whole machine since boot (user+nice+system+irq+softirq)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    busy = sum(int(fields[i]) for i in (0, 1, 2, 5, 6))
    return busy / os.sysconf("SC_CLK_TCK")


def irkit(home: Path, *args: str) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run irkit; returns (process, wall seconds, machine CPU seconds during the run)."""
    env = {**os.environ, "IRKIT_HOME": str(home)}
    cpu0 = machine_cpu_s()
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "ir_toolkit", *args], env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    cpu = machine_cpu_s() - cpu0
    if proc.returncode not in (0,):
        sys.stderr.write(f"irkit {' '.join(args)} -> {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc, wall, cpu


def lab_pss_kib(lab_id: str) -> tuple[int, int]:
    """(sum of PSS of every process in the lab's network namespaces, number of such processes)."""
    from ir_toolkit.lab import procs

    inodes = set()
    for name in os.listdir("/run/netns"):
        if name.startswith(f"irk-{lab_id}-"):
            inodes.add(os.stat(f"/run/netns/{name}").st_ino)
    members = procs.netns_members(inodes)
    total = count = 0
    for pids in members.values():
        for pid in pids:
            try:
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        count += 1
            except OSError:
                pass
    return total, count


def ssh_ok(info: dict, address: str) -> bool:
    proc = subprocess.run(
        ["ssh", "-F", "/dev/null", "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={info['known_hosts']}",
         "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=20",
         "-i", info["responder_private_key"], f"root@{address}", "hostname"],
        capture_output=True, text=True, timeout=120)
    return proc.returncode == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=200)
    ap.add_argument("--per-tenant", type=int, default=20)
    ap.add_argument("--base", default="198.18.128.0/17", help="network for the bench lab (inside 198.18.0.0/15)")
    ap.add_argument("--ssh-sample", type=int, default=0, help="log in to this many random hosts (0 = all)")
    ap.add_argument("--keep", action="store_true", help="leave the lab up (prints its IRKIT_HOME)")
    ap.add_argument("--json", action="store_true", help="only print the JSON result")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_lab: the lab needs root (network namespaces); run as root", file=sys.stderr)
        return 4

    from ir_toolkit.lab.generate import generate_inventory, write_inventory

    home = Path(tempfile.mkdtemp(prefix="irkit-bench-lab."))
    tenants = math.ceil(args.hosts / args.per_tenant)
    data = generate_inventory(msp="benchlab", tenants=tenants, hosts_per_tenant=args.per_tenant, base=args.base)
    extra = tenants * args.per_tenant - args.hosts
    for tenant in reversed(data["tenants"]):
        while extra and tenant["hosts"]:
            tenant["hosts"].pop()
            extra -= 1
    inventory = home / "benchlab.yml"
    write_inventory(inventory, data)

    result: dict = {"hosts": args.hosts, "tenants": tenants, "cores": os.cpu_count()}
    mem0 = meminfo("MemAvailable")
    up, result["up_wall_s"], result["up_cpu_s"] = irkit(home, "lab", "up", "--inventory", str(inventory))
    if up.returncode != 0:
        irkit(home, "lab", "down", "--inventory", str(inventory), "--purge")
        return 1
    time.sleep(1)
    result["mem_available_drop_mib"] = round((mem0 - meminfo("MemAvailable")) / 1024)
    info = json.loads(irkit(home, "lab", "info", "--inventory", str(inventory), "--format", "json")[0].stdout)
    pss, nprocs = lab_pss_kib(info["lab_id"])
    result["lab_pss_mib"] = round(pss / 1024)
    result["lab_processes"] = nprocs
    result["pss_per_host_kib"] = round(pss / args.hosts)
    status, result["status_wall_s"], _ = irkit(home, "lab", "status", "--inventory", str(inventory), "--format", "json")
    result["healthy"] = json.loads(status.stdout)["healthy"]
    hosts = info["hosts"]
    sample = hosts if not args.ssh_sample else random.sample(hosts, min(args.ssh_sample, len(hosts)))
    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(32) as pool:
        oks = list(pool.map(lambda h: ssh_ok(info, h["address"]), sample))
    result["ssh_checked"] = len(sample)
    result["ssh_ok"] = sum(oks)
    result["ssh_wall_s"] = round(time.monotonic() - t0, 1)
    again, result["up_again_wall_s"], _ = irkit(home, "lab", "up", "--inventory", str(inventory))
    result["up_again_nothing_changed"] = "nothing changed" in again.stdout
    if args.keep:
        result["irkit_home"] = str(home)
    else:
        _, result["down_wall_s"], result["down_cpu_s"] = irkit(home, "lab", "down", "--inventory", str(inventory),
                                                               "--purge")
        left = [n for n in os.listdir("/run/netns") if n.startswith(f"irk-{info['lab_id']}-")]
        left += [n for n in os.listdir("/sys/class/net") if n.startswith(f"irk{info['lab_id']}")]
        result["left_behind"] = len(left)
        shutil.rmtree(home, ignore_errors=True)
    for key, value in list(result.items()):
        if isinstance(value, float):
            result[key] = round(value, 2)
    if not args.json:
        print(f"lab of {args.hosts} hosts ({tenants} tenants) on {os.cpu_count()} cores:")
        print(f"  up:     {result['up_wall_s']} s wall, {result['up_cpu_s']} s CPU (whole machine: irkit + every host starting)")
        print(f"  memory: {result['mem_available_drop_mib']} MiB less MemAvailable; lab processes "
              f"{result['lab_pss_mib']} MiB PSS ({result['pss_per_host_kib']} KiB/host, {nprocs} processes)")
        print(f"  health: {'all healthy' if result['healthy'] else 'NOT healthy'}; ssh with pinned keys "
              f"{result['ssh_ok']}/{result['ssh_checked']} in {result['ssh_wall_s']} s")
        print(f"  again:  {result['up_again_wall_s']} s (nothing changed: {result['up_again_nothing_changed']})")
        if not args.keep:
            print(f"  down:   {result['down_wall_s']} s wall; left behind: {result['left_behind']}")
    print(json.dumps(result, sort_keys=True))
    ok = result["healthy"] and result["ssh_ok"] == result["ssh_checked"] and not result.get("left_behind")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
