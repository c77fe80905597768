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
        [--repeat N] [--no-steps] [--top 25] [--processes 300] [--step-repeat N] [--cprofile FILE]
        [--compare-tree DIR]

The per-step run also charges each step with the **controller's** CPU (``time.process_time()`` of this
process: the collector, paramiko's transport thread and the bundle writer all run in it) and prints the
whole in-process collection's controller CPU, into an encrypted bundle as a case's are. ``--compare-tree DIR``
(e.g. ``git archive <commit> | tar -x -C DIR``) runs that in-process collection in child processes with DIR's
``ir_toolkit`` and with this tree's, alternating ``--step-repeat`` rounds against the same lab host: a
before/after in one run.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent


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
                 out: Path, cprofile: Path | None = None) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Collect ``profile`` in this process, charging each collector step with its wall time, host CPU and
    controller CPU (``time.process_time()``: every thread of this process - paramiko's reader, the bundle
    writer - which is all the collection runs on the controller). Returns (steps, totals)."""
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
                c0, t0, p0 = cpu.seconds(), time.monotonic(), time.process_time()
                try:
                    return method(self, *args, **kwargs)
                finally:
                    p1 = time.process_time()
                    steps.append({"step": label_of(*args), "wall_s": round(time.monotonic() - t0, 3),
                                  "host_cpu_s": round(cpu.seconds() - c0, 3),
                                  "controller_cpu_s": round(p1 - p0, 3)})
            return inner
        return wrap

    base = collector_mod.HostCollector
    seen: list[Any] = []

    class Measured(base):  # type: ignore[misc, valid-type]
        def run(self) -> None:
            seen.append(self)
            base.run(self)

        _preflight = measured(lambda: "(preflight: tool check)")(base._preflight)
        _command = measured(lambda a: a.name)(base._command)
        _enumerate = measured(lambda a: a.name)(base._enumerate)
        _hash_on_host = measured(lambda paths: f"(host hash pass: {len(paths)} files)")(base._hash_on_host)
        _copy = measured(lambda paths: f"(tar stream: {len(paths)} files)")(base._copy)

    endpoint = Endpoint(host["address"], host.get("port", 22), info.get("responder_user") or "root",
                        {host["host_key_fingerprint"]}, host["name"])
    conn = SshConnection.open(endpoint, pkey=load_private_key(Path(info["responder_private_key"])))
    collector_mod.HostCollector = Measured
    totals: dict[str, float] = {}
    profiler = None
    try:
        selection = load_catalog().select(profile, "linux")
        target = collector_mod.HostTarget(case="BENCH-STEPS", msp="bcost", tenant=host["tenant"],
                                          host=host["name"], address=host["address"])
        # encrypted to a throwaway recipient, as a case's bundles are
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
        recipients = [X25519PrivateKey.generate().public_key()]
        if cprofile is not None and os.environ.get("BENCH_YAPPI"):
            import yappi  # every thread (paramiko's reader, the bundle writer), CPU clock

            yappi.set_clock_type("cpu")
            yappi.start()
            profiler = yappi
        elif cprofile is not None:
            import cProfile
            profiler = cProfile.Profile()
            profiler.enable()
        p0, t0 = time.process_time(), time.monotonic()
        result = collector_mod.collect_host(conn, target, selection, directory=out / profile, recipients=recipients)
        totals = {"controller_cpu_s": round(time.process_time() - p0, 3), "wall_s": round(time.monotonic() - t0, 3),
                  "bytes": result.counts.get("bytes", 0),
                  "bundle_bytes": result.collection.bundle_path.stat().st_size if result.collection else 0}
        if seen:  # what the bytes are: the largest command outputs and copied files
            members = [(o.get("archive_path"), o.get("size") or 0) for o in seen[-1].outputs]
            members += [(e.get("archive_path"), e.get("received_size") or 0) for e in seen[-1].files.values()]
            totals["largest"] = sorted((m for m in members if m[0]), key=lambda m: -m[1])[:10]
    finally:
        if profiler is not None and getattr(profiler, "__name__", "") == "yappi":
            profiler.stop()
            profiler.get_func_stats().save(str(cprofile), type="pstat")
            with open(f"{cprofile}.threads", "w") as fh:
                profiler.get_thread_stats().print_all(out=fh)
        elif profiler is not None:
            profiler.disable()
            profiler.dump_stats(str(cprofile))
        collector_mod.HostCollector = base
        conn.close()
    return steps, totals


class _GroupCpu(HostCpu):
    """A lab host's CPU in a child of the bench: reads the group the parent made (or /proc sums)."""

    def __init__(self, group: str | None, init_pid: int) -> None:  # noqa: D107 - no new group
        self.init_pid = init_pid
        self.group = Path(group) if group else None
        self.origin = {}
        self.method = "parent's"

    def close(self) -> None:
        pass


def child_steps(spec_path: Path) -> int:
    """``--child-steps SPEC``: one in-process collection with whatever ``ir_toolkit`` is first on sys.path
    (PYTHONPATH: another tree, for a before/after run against the same lab host); prints JSON."""
    spec = json.loads(spec_path.read_text())
    import ir_toolkit

    cpu = _GroupCpu(spec["group"], spec["init_pid"])
    steps, totals = step_profile(spec["profile"], spec["host"], spec["info"], cpu, Path(spec["out"]))
    steps.sort(key=lambda st: -st["controller_cpu_s"])
    json.dump({"tree": str(Path(ir_toolkit.__file__).parent.parent), **totals,
               "host_cpu_s": round(sum(st["host_cpu_s"] for st in steps), 3), "top": steps[:12]}, sys.stdout)
    return 0


def compare(trees: list[Path], profile: str, host: dict[str, Any], info: dict[str, Any], cpu: HostCpu,
            out: Path, repeat: int) -> list[dict[str, Any]]:
    """In-process collections of ``profile`` alternating between ``trees`` (each in a child process with that
    tree first on its path), ``repeat`` rounds: the before/after figures of one run on the same host."""
    rows = []
    for rep in range(repeat):
        for i, tree in enumerate(trees):
            spec = out / f"spec-{rep}-{i}.json"
            out.mkdir(parents=True, exist_ok=True)
            spec.write_text(json.dumps({"profile": profile, "host": host, "info": info, "init_pid": cpu.init_pid,
                                        "group": str(cpu.group) if cpu.group else None,
                                        "out": str(out / f"c-{rep}-{i}")}))
            env = {**os.environ, "PYTHONPATH": str(tree)}
            load = os.getloadavg()[0]
            proc = subprocess.run([sys.executable, __file__, "--child-steps", str(spec)], env=env,
                                  capture_output=True, text=True, timeout=3600)
            assert proc.returncode == 0, proc.stderr[-3000:]
            row = json.loads(proc.stdout)
            row.update(round=rep, load_1min=round(load, 1))
            rows.append(row)
            print(f"{profile:>10} round {rep} {tree}: controller CPU {row['controller_cpu_s']:6.3f} s  host CPU "
                  f"{row['host_cpu_s']:5.2f} s  wall {row['wall_s']:6.2f} s  bundle {row['bundle_bytes'] / 1e6:6.1f} MB"
                  f"  load {load:.1f}", file=sys.stderr, flush=True)
    return rows


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
    parser.add_argument("--step-repeat", type=int, default=1,
                        help="in-process collections per profile (controller CPU of each is printed)")
    parser.add_argument("--compare-tree", type=Path, action="append", default=[],
                        help="also collect in-process with this source tree (e.g. an export of main), alternating "
                             "with this one --step-repeat times: before/after on the same host in one run")
    parser.add_argument("--child-steps", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cprofile", type=Path, default=None,
                        help="write a cProfile of the (last) in-process collection to FILE.<profile> (with "
                             "BENCH_YAPPI=1 in the environment: a yappi CPU profile of every thread, pstat format, "
                             "and FILE.<profile>.threads)")
    args = parser.parse_args()
    if args.child_steps is not None:
        return child_steps(args.child_steps)
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
                kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                case = f"BENCH-{profile}-{rep}"
                proc = irkit(env, "triage", "--inventory", str(inventory), "--case", case,
                             "--profile", profile, "--format", "json")
                wall = time.monotonic() - t0
                kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                controller = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
                time.sleep(0.3)
                used = cpu.seconds() - cpu0
                assert proc.returncode in (0, 1), proc.stderr
                mpath = next((home / "cases" / case).rglob("manifest.json"))
                manifest = json.loads(mpath.read_text())
                bundle = next(mpath.parent.glob("bundle.tar*"))
                results["runs"].append({
                    "profile": profile, "load_1min": round(load, 1), "wall_s": round(wall, 2),
                    "host_cpu_s": round(used, 2), "controller_cpu_s": round(controller, 2),
                    "bundle_bytes": bundle.stat().st_size,
                    "files": len(manifest["files"]), "status": manifest["status"],
                })
        if args.compare_tree:
            for profile in profiles:
                results.setdefault("compare", {})[profile] = compare(
                    [ROOT, *args.compare_tree], profile, host, info, cpu, home / "compare", args.step_repeat)
        elif not args.no_steps:
            for profile in profiles:
                collections = []
                for rep in range(args.step_repeat):
                    prof = (args.cprofile.with_name(f"{args.cprofile.name}.{profile}")
                            if args.cprofile is not None and rep == args.step_repeat - 1 else None)
                    steps, totals = step_profile(profile, host, info, cpu, home / f"steps-{rep}", prof)
                    collections.append({**totals, "load_1min": round(os.getloadavg()[0], 1)})
                steps.sort(key=lambda s: -s["host_cpu_s"])
                results["steps"][profile] = {
                    "host_cpu_s": round(sum(s["host_cpu_s"] for s in steps), 2),
                    "controller_cpu_s": round(sum(s["controller_cpu_s"] for s in steps), 2),
                    "wall_s": round(sum(s["wall_s"] for s in steps), 2),
                    "collections": collections,
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
              f"controller CPU (CLI, with start-up) {run['controller_cpu_s']:5.2f} s  "
              f"bundle {run['bundle_bytes'] / 1e6:6.1f} MB  files {run['files']:5d}  load {run['load_1min']}",
              file=sys.stderr)
    for profile, data in results["steps"].items():
        for c in data.get("collections", []):
            print(f"{profile:>10}: in-process collection: controller CPU {c['controller_cpu_s']:6.3f} s  wall "
                  f"{c['wall_s']:6.2f} s  {c['bytes'] / 1e6:6.1f} MB collected, bundle {c['bundle_bytes'] / 1e6:6.1f} MB"
                  f"  load {c['load_1min']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
