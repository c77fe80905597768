"""Cost of `ir_triage` (and `full`) on one lab host: wall time, bytes, host CPU, per-artifact figures.

Root only. Brings up a private one-host lab in a free 198.19.x.0/22 block under a private IRKIT_HOME, runs
`irkit triage` once per profile and takes it down again. Host CPU is what the host's sshd spent on the
collection: the listening sshd's cutime+cstime (its reaped per-connection children and everything they ran)
before and after, read from /proc on the controller.

    sudo .venv/bin/python bench/bench_triage_cost.py [--profile ir_triage --profile full]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def irkit(env: dict[str, str], *args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ir_toolkit", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def host_sshd_cpu(init_pid: int) -> float:
    from ir_toolkit.lab import procs

    total = 0.0
    for pid in procs.children(init_pid):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.find("(") + 1:stat.rfind(")")]
        if comm.startswith("sshd"):
            fields = stat[stat.rfind(")") + 2:].split()
            total += sum(int(f) for f in fields[11:15]) / TICK  # utime stime cutime cstime
    return total


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", action="append", default=None)
    parser.add_argument("--plant", action="store_true", help="plant the coverage traces first")
    args = parser.parse_args()
    profiles = args.profile or ["ir_triage", "full"]
    from ir_toolkit.lab.generate import generate_inventory, write_inventory
    from ir_toolkit.lab.netns import conflicts

    home = Path(tempfile.mkdtemp(prefix="irkit-bench-cost-"))
    env = {**os.environ, "IRKIT_HOME": str(home), "IRKIT_KEY_PASSPHRASE": "bench",
           "IRKIT_INSECURE_TEST_SCRYPT_LOG2N": "10"}
    env.pop("IRKIT_INVENTORY", None)
    inventory = home / "bench.yml"
    for block in range(128, 256, 4):
        net = ipaddress.ip_network(f"198.19.{block}.0/22")
        if not conflicts(net, own_bridge=""):
            break
    write_inventory(inventory, generate_inventory(msp="bcost", tenants=1, hosts_per_tenant=1, base=str(net)),
                    force=True)
    results = []
    try:
        up = irkit(env, "lab", "up", "--inventory", str(inventory))
        assert up.returncode == 0, up.stderr
        irkit(env, "keys", "init")
        info = json.loads(irkit(env, "lab", "info", "--inventory", str(inventory), "--format", "json").stdout)
        host = info["hosts"][0]
        if args.plant:
            p = irkit(env, "lab", "plant", "--inventory", str(inventory), host["name"])
            assert p.returncode == 0, p.stderr
        for profile in profiles:
            cpu0, t0 = host_sshd_cpu(host["pid"]), time.monotonic()
            proc = irkit(env, "triage", "--inventory", str(inventory), "--case", f"BENCH-{profile}",
                         "--profile", profile, "--format", "json")
            wall = time.monotonic() - t0
            time.sleep(0.5)
            cpu = host_sshd_cpu(host["pid"]) - cpu0
            assert proc.returncode in (0, 1), proc.stderr
            mpath = next((home / "cases" / f"BENCH-{profile}").rglob("manifest.json"))
            manifest = json.loads(mpath.read_text())
            bundle = next(mpath.parent.glob("bundle.tar*"))
            arts = sorted(manifest["artifacts"], key=lambda a: -a.get("duration_ms", 0))
            results.append({"profile": profile, "wall_s": round(wall, 1), "host_cpu_s": round(cpu, 2),
                            "bundle_bytes": bundle.stat().st_size, "files": len(manifest["files"]),
                            "status": manifest["status"],
                            "artifacts": [{"name": a["name"], "ms": a.get("duration_ms"), "bytes": a.get("bytes"),
                                           "files": a.get("files")} for a in arts]})
    finally:
        irkit(env, "lab", "down", "--inventory", str(inventory), "--purge")
    json.dump(results, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
