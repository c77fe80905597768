"""Cost of triage profiles on one lab host: wall time, bytes, the host's own CPU, and where it goes.

Root only. Brings up a private one-host lab in a free 198.19.x.0/22 block under a private IRKIT_HOME, and
per profile (default: ``volatile`` if defined, then ``ir_triage``):

1. runs ``irkit triage`` (the real CLI) once: wall time, bundle size, files, and the host's CPU;
2. runs the same collection in this process over one SSH connection, with every step the collector makes
   on the host (the preflight, each artifact, the host-side hash pass, the tar stream) timed and charged
   with the host CPU it cost: the per-artifact table.

Host CPU is measured exactly with a cgroup v2 group per lab host: before the runs, every process of the
host (its PID 1 and all descendants: sshd, and everything it will fork, inherits the group) is moved into
``<cgroup2 mount>/irkit-bench-<pid>-<host>``, and ``cpu.stat``'s ``usage_usec`` (user + system of every
process that ran in the group, exited ones included) is read before and after each step. Without a
writable cgroup2 mount the bench falls back to summing utime+stime+cutime+cstime over the host's live
processes from /proc (exact for everything reaped by a live process, which is all of a collection's
children) and says so. The group is removed at the end (the lab's processes are moved back first).

    sudo .venv/bin/python bench/bench_triage_cost.py [--profile ir_triage --profile volatile] [--plant]
        [--repeat N] [--no-steps] [--top 25] [--processes 300]
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
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")


def irkit(env: dict[str, str], *args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ir_toolkit", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def descendants(pid: int) -> list[int]:
    from ir_toolkit.lab import procs

    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(procs.children(p))
    return found


def cgroup2_mount() -> Path | None:
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "cgroup2":
            return Path(parts[1].replace("\\040", " "))
    return None


class HostCpu:
    """The CPU seconds a lab host's processes used (a cgroup v2 group, else /proc sums)."""

    def __init__(self, name: str, init_pid: int) -> None:
        self.init_pid = init_pid
        self.group: Path | None = None
        self.origin: dict[int, str] = {}
        mount = cgroup2_mount()
        if mount is not None:
            group = mount / f"irkit-bench-{os.getpid()}-{name}"
            try:
                group.mkdir()
                for pid in descendants(init_pid):
                    try:
                        self.origin[pid] = Path(f"/proc/{pid}/cgroup").read_text()
                        (group / "cgroup.procs").write_text(str(pid))
                    except OSError:
                        continue
                self.group = group
            except OSError as exc:
                print(f"cgroup v2 not usable ({exc}); falling back to /proc sums", file=sys.stderr)
                self.close()
        self.method = "cgroup v2 cpu.stat usage_usec" if self.group else "/proc utime+stime+cutime+cstime"

    def seconds(self) -> float:
        if self.group is not None:
            for line in (self.group / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value) / 1e6
        total = 0
        for pid in descendants(self.init_pid):
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            total += sum(int(f) for f in stat[stat.rfind(")") + 2:].split()[11:15])
        return total / TICK

    def close(self) -> None:
        if self.group is None:
            return
        parent = self.group.parent
        try:
            for pid in (self.group / "cgroup.procs").read_text().split():
                try:
                    (parent / "cgroup.procs").write_text(pid)
                except OSError:
                    pass
            self.group.rmdir()
        except OSError as exc:
            print(f"could not remove {self.group}: {exc}", file=sys.stderr)
        self.group = None


def step_profile(profile: str, host: dict[str, Any], info: dict[str, Any], cpu: HostCpu,
                 out: Path) -> list[dict[str, Any]]:
    """Collect ``profile`` in this process, charging each collector step with its wall time and host CPU."""
    from ir_toolkit.log import configure
    from ir_toolkit.transports.base import Endpoint
    from ir_toolkit.transports.ssh import SshConnection, load_private_key
    from ir_toolkit.triage import collector as collector_mod
    from ir_toolkit.triage.schema import load_catalog

    configure(verbosity=0)  # warnings only, on stderr
    steps: list[dict[str, Any]] = []

    def measured(label_of):
        def wrap(method):
            def inner(self, *args, **kwargs):
                c0, t0 = cpu.seconds(), time.monotonic()
                try:
                    return method(self, *args, **kwargs)
                finally:
                    steps.append({"step": label_of(*args), "wall_s": round(time.monotonic() - t0, 3),
                                  "host_cpu_s": round(cpu.seconds() - c0, 3)})
            return inner
        return wrap

    base = collector_mod.HostCollector

    class Measured(base):  # type: ignore[misc, valid-type]
        _preflight = measured(lambda: "(preflight: tool check)")(base._preflight)
        _command = measured(lambda a: a.name)(base._command)
        _enumerate = measured(lambda a: a.name)(base._enumerate)
        _hash_on_host = measured(lambda paths: f"(host hash pass: {len(paths)} files)")(base._hash_on_host)
        _copy = measured(lambda paths: f"(tar stream: {len(paths)} files)")(base._copy)

    endpoint = Endpoint(host["address"], host.get("port", 22), info.get("responder_user") or "root",
                        {host["host_key_fingerprint"]}, host["name"])
    conn = SshConnection.open(endpoint, pkey=load_private_key(Path(info["responder_private_key"])))
    collector_mod.HostCollector = Measured
    try:
        selection = load_catalog().select(profile, "linux")
        target = collector_mod.HostTarget(case="BENCH-STEPS", msp="bcost", tenant=host["tenant"],
                                          host=host["name"], address=host["address"])
        collector_mod.collect_host(conn, target, selection, directory=out / profile)
    finally:
        collector_mod.HostCollector = base
        conn.close()
    return steps


def profiles_defined() -> set[str]:
    from ir_toolkit.triage.schema import load_catalog

    return set(load_catalog().profiles)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", action="append", default=None)
    parser.add_argument("--plant", action="store_true", help="plant the coverage traces first")
    parser.add_argument("--repeat", type=int, default=1, help="CLI runs per profile (the table shows each)")
    parser.add_argument("--no-steps", action="store_true", help="skip the per-step run")
    parser.add_argument("--processes", type=int, default=0,
                        help="start this many extra processes on the host first (a tenth of them distinct binaries), "
                             "as a real server has hundreds")
    parser.add_argument("--top", type=int, default=25, help="steps shown per profile (by host CPU)")
    args = parser.parse_args()
    known = profiles_defined()
    profiles = args.profile or [p for p in ("volatile", "ir_triage") if p in known]
    from ir_toolkit.lab.generate import generate_inventory, write_inventory
    from ir_toolkit.lab.netns import conflicts

    home = Path(tempfile.mkdtemp(prefix="irkit-bench-cost-"))
    env = {**os.environ, "IRKIT_HOME": str(home), "IRKIT_KEY_PASSPHRASE": "bench",
           "IRKIT_INSECURE_TEST_SCRYPT_LOG2N": "10"}
    env.pop("IRKIT_INVENTORY", None)
    os.environ.update(IRKIT_HOME=str(home))
    inventory = home / "bench.yml"
    for block in range(128, 256, 4):
        net = ipaddress.ip_network(f"198.19.{block}.0/22")
        if not conflicts(net, own_bridge=""):
            break
    write_inventory(inventory, generate_inventory(msp="bcost", tenants=1, hosts_per_tenant=1, base=str(net)),
                    force=True)
    results: dict[str, Any] = {"runs": [], "steps": {}}
    cpu = None
    try:
        up = irkit(env, "lab", "up", "--inventory", str(inventory))
        assert up.returncode == 0, up.stderr
        irkit(env, "keys", "init")
        info = json.loads(irkit(env, "lab", "info", "--inventory", str(inventory), "--format", "json").stdout)
        host = info["hosts"][0]
        if args.plant:
            p = irkit(env, "lab", "plant", "--inventory", str(inventory), host["name"])
            assert p.returncode == 0, p.stderr
        if args.processes:
            distinct = max(1, args.processes // 10)
            script = (f"mkdir -p /var/tmp/irkit-bench && for i in $(seq {distinct}); do "
                      "cp /usr/bin/sleep /var/tmp/irkit-bench/b$i && printf $i >> /var/tmp/irkit-bench/b$i; done; "
                      f"for i in $(seq {args.processes}); do setsid /var/tmp/irkit-bench/b$((i % {distinct} + 1)) 7200 "
                      "</dev/null >/dev/null 2>&1 & done")
            p = irkit(env, "lab", "exec", "--inventory", str(inventory), host["name"], "--", "sh", "-c", script)
            assert p.returncode == 0, p.stderr
        cpu = HostCpu(host["name"], host["pid"])
        results["method"] = cpu.method
        time.sleep(1.0)
        for rep in range(args.repeat):
            for profile in profiles:
                load = os.getloadavg()[0]
                cpu0, t0 = cpu.seconds(), time.monotonic()
                case = f"BENCH-{profile}-{rep}"
                proc = irkit(env, "triage", "--inventory", str(inventory), "--case", case,
                             "--profile", profile, "--format", "json")
                wall = time.monotonic() - t0
                time.sleep(0.3)
                used = cpu.seconds() - cpu0
                assert proc.returncode in (0, 1), proc.stderr
                mpath = next((home / "cases" / case).rglob("manifest.json"))
                manifest = json.loads(mpath.read_text())
                bundle = next(mpath.parent.glob("bundle.tar*"))
                results["runs"].append({
                    "profile": profile, "load_1min": round(load, 1), "wall_s": round(wall, 2),
                    "host_cpu_s": round(used, 2), "bundle_bytes": bundle.stat().st_size,
                    "files": len(manifest["files"]), "status": manifest["status"],
                })
        if not args.no_steps:
            for profile in profiles:
                steps = step_profile(profile, host, info, cpu, home / "steps")
                steps.sort(key=lambda s: -s["host_cpu_s"])
                results["steps"][profile] = {
                    "host_cpu_s": round(sum(s["host_cpu_s"] for s in steps), 2),
                    "wall_s": round(sum(s["wall_s"] for s in steps), 2),
                    "top": steps[:args.top],
                }
    finally:
        if cpu is not None:
            cpu.close()
        irkit(env, "lab", "down", "--inventory", str(inventory), "--purge")
    json.dump(results, sys.stdout, indent=1)
    print()
    print(f"host CPU measured by {results.get('method')}", file=sys.stderr)
    for run in results["runs"]:
        print(f"{run['profile']:>10}: wall {run['wall_s']:6.2f} s  host CPU {run['host_cpu_s']:5.2f} s  "
              f"bundle {run['bundle_bytes'] / 1e6:6.1f} MB  files {run['files']:5d}  load {run['load_1min']}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
