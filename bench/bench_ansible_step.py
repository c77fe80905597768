#!/usr/bin/env python3
"""Controller CPU of the Ansible hardening step alone (apply and check-mode re-check), A/B between trees.

    sudo .venv/bin/python bench/bench_ansible_step.py --hosts 20 --rounds 2 [--tree before=DIR ...]

Brings up one lab (MSP ``ansfleet``, a free 198.19.x.0/22 block: under 50 hosts no big-lab lock),
then per round and per tree (this one, ``head``, and each ``--tree NAME=DIR``, an export of another
commit: ``git archive C | tar -x -C DIR``, run with ``PYTHONPATH=DIR``) removes the hardening drop-in
from every host and runs ``irkit contain --yes`` with a playbook of three phases: ``access``
(responder.ensure_access), ``harden`` (the shipped containment playbook's ``ansible.playbook`` step,
which changes every host) and ``verify`` (the same step with ``expect_no_change: true``: one check-mode
run). The irkit process tree's CPU is sampled from /proc (bench/profile_contain.py's sampler) and split
per phase into irkit's own process and its children (ansible-runner worker, ansible-playbook, ssh).
Also counted: ssh processes left running after the run. Prints per tree and round the harden and verify
phases' children CPU per host; trees alternate within each round, so load drifts hit both.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

from profile_contain import Sampler, phase_breakdown  # noqa: E402

VENV_BIN = Path(sys.executable).parent
IRKIT = str(VENV_BIN / "irkit")
STEP = {"action": "ansible.playbook", "targets": {"os": ["linux"]},
        "evidence_override": "bench of the Ansible step alone: no evidence phase"}


def playbook(path: Path) -> Path:
    import yaml

    params = {"playbook": "sshd-hardening.yml", "sshd_facts": True, "verify": "none"}
    data = {"version": 1, "name": "bench-ansible-step",
            "defaults": {"timeout": 600, "retries": 0, "host_timeout": 1800},
            "phases": [
                {"name": "access", "steps": [{"name": "responder key", "action": "responder.ensure_access"}]},
                {"name": "harden", "steps": [{"name": "sshd hardening (Ansible)", **STEP, "params": params}]},
                {"name": "verify", "steps": [{"name": "sshd hardening still in place", **STEP,
                                              "params": {**params, "expect_no_change": True}}]},
            ]}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def ssh_pids() -> set[int]:
    """ssh processes of irkit's Ansible jobs (their control paths are under the worker dirs, and a
    ControlPersist master's process title is its control path)."""
    out = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if Path(f"/proc/{d}/comm").read_text().strip() != "ssh":
                    continue
                cmdline = Path(f"/proc/{d}/cmdline").read_bytes()
            except OSError:
                continue
            if b"irkit-ansible-" in cmdline:
                out.add(int(d))
    return out


def acct_on(path: Path) -> None:
    import ctypes

    path.write_bytes(b"")
    if ctypes.CDLL(None, use_errno=True).acct(str(path).encode()):
        raise OSError(ctypes.get_errno(), "acct")


def acct_off() -> None:
    import ctypes

    ctypes.CDLL(None).acct(None)


def acct_breakdown(path: Path, root: int, hosts: int) -> dict[str, list]:
    """ms of CPU per host by process name: the tree under ``root`` (by ppid at exit), and detached ssh
    processes (ppid 1 or a subreaper: the ControlPersist masters)."""
    import collections
    import struct

    def comp(v: int) -> int:
        return (v & 0x1FFF) << (((v >> 13) & 7) * 3)

    data = path.read_bytes()
    recs = []
    for i in range(0, len(data) - 63, 64):
        pid, ppid = struct.unpack_from("<II", data, i + 16)
        ut, st = struct.unpack_from("<HH", data, i + 32)
        comm = data[i + 48:i + 64].split(b"\0")[0].decode(errors="replace")
        recs.append((pid, ppid, comm, (comp(ut) + comp(st)) / os.sysconf("SC_CLK_TCK")))
    kids: dict[int, list] = collections.defaultdict(list)
    for r in recs:
        kids[r[1]].append(r)
    tree, stack, seen = [], [root], set()
    while stack:
        for r in kids.get(stack.pop(), []):
            if r[0] not in seen:
                seen.add(r[0])
                tree.append(r)
                stack.append(r[0])
    tree += [r for r in recs if r[0] == root]
    by: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
    comm_of = {r[0]: r[2] for r in tree}
    for pid, ppid, comm, cpu in tree:
        if pid == root:
            comm = "irkit (its own process)"
        elif comm.startswith("python"):
            comm = "python (ansible-runner worker)"
        if comm.startswith("ansible-playboo"):
            comm = "ansible-playbook " + ("worker" if comm_of.get(ppid, "").startswith("ansible-playboo") else "main")
        by[comm][0] += 1
        by[comm][1] += cpu
    for pid, _ppid, comm, cpu in recs:
        if comm == "ssh" and pid not in seen:
            by["ssh(detached)"][0] += 1
            by["ssh(detached)"][1] += cpu
    return {c: [n, round(1000 * cpu / hosts, 1)] for c, (n, cpu) in sorted(by.items(), key=lambda x: -x[1][1])[:12]}


def ansible_jobs(log: Path, hosts: int) -> dict[str, float]:
    """ansible-runner jobs per phase, from the ``ansible.stats`` records (each says how many hosts its job
    had): the first ``hosts`` records are the harden phase's, the rest the verify phase's."""
    sizes = []
    try:
        for line in log.read_text().splitlines():
            rec = json.loads(line)
            body = rec.get("record", rec)
            if body.get("action") == "ansible.stats":
                sizes.append(int((body.get("params") or {}).get("hosts_in_job") or 1))
    except (OSError, ValueError):
        return {}
    return {"harden_jobs": round(sum(1 / n for n in sizes[:hosts]), 1),
            "verify_jobs": round(sum(1 / n for n in sizes[hosts:]), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tree", action="append", default=[], help="NAME=DIR: another tree to compare")
    parser.add_argument("--only-trees", action="store_true", help="do not run this tree (head)")
    parser.add_argument("--forks", type=int, default=0,
                        help="irkit's --forks (hosts worked on at once; default irkit's): fewer than --hosts "
                             "shows how a step of more hosts than engine workers is split into jobs")
    parser.add_argument("--acct", action="store_true",
                        help="BSD process accounting (acct(2)) during each run: CPU by process name of the run's "
                             "tree, and of the ssh ControlPersist masters (detached: no sampler sees them), after "
                             "they exit; machine-wide while on, so only on a machine where nobody else uses it")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_ansible_step: the lab needs root")
    if args.hosts >= 50:
        sys.exit("bench_ansible_step: 50 hosts or more belong to profile_contain.py under the big-lab lock")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    trees: list[tuple[str, str | None]] = [] if args.only_trees else [("head", None)]
    for spec in args.tree:
        name, _, path = spec.partition("=")
        trees.append((name, str(Path(path).resolve())))
    from ir_toolkit.lab.netns import conflicts

    base = next(str(net) for block in range(0, 256, 4)
                if not conflicts(net := ipaddress.ip_network(f"198.19.{block}.0/22"), own_bridge=""))
    home = Path(tempfile.mkdtemp(prefix="irkit-ansbench-"))
    env = {**os.environ, "IRKIT_HOME": str(home), "IRKIT_KEY_PASSPHRASE": "bench-passphrase"}
    env.pop("PYTHONPATH", None)
    inventory = home / "inventory.yml"
    pb = playbook(home / "bench-ansible.yml")
    subprocess.run([IRKIT, "lab", "generate", "--tenants", "1", "--hosts-per-tenant", str(args.hosts),
                    "--msp", "ansfleet", "--out", str(inventory), "--base", base], env=env, check=True,
                   capture_output=True)
    rows: list[dict] = []
    try:
        subprocess.run([IRKIT, "lab", "up", "--inventory", str(inventory)], env=env, check=True, capture_output=True)
        subprocess.run([IRKIT, "keys", "init", "--if-missing"], env=env, check=True, capture_output=True)
        info = json.loads(subprocess.run([IRKIT, "lab", "info", "--inventory", str(inventory), "--format", "json"],
                                         env=env, check=True, capture_output=True, text=True).stdout)
        names = [h["name"] for h in info["hosts"]]
        for rnd in range(args.rounds):
            for tname, tree in trees:
                for h in names:
                    subprocess.run([IRKIT, "lab", "exec", "--inventory", str(inventory), h, "--",
                                    "rm", "-f", "/etc/ssh/sshd_config.d/10-irkit-hardening.conf"],
                                   env=env, capture_output=True)
                run_env = dict(env)
                if tree:
                    run_env["PYTHONPATH"] = tree
                case = f"AB-{tname}-{rnd}"
                ssh_before = ssh_pids()
                cmd = [sys.executable, "-c", "from ir_toolkit.cli.entry import run; run()", "contain",
                       "--inventory", str(inventory), "--playbook", str(pb), "--case", case, "--yes",
                       "--format", "json"] + (["--forks", str(args.forks)] if args.forks else [])
                acct_file = home / f"acct-{case}"
                if args.acct:
                    acct_on(acct_file)
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                start = time.monotonic()
                proc = subprocess.Popen(cmd, env=run_env, cwd=tree or REPO, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
                sampler = Sampler(proc.pid)
                sampler.start()
                out, err = proc.communicate()
                wall = time.monotonic() - start
                sampler.stop.set()
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                left = len(ssh_pids() - ssh_before)
                cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
                logs = sorted((home / "cases" / case / "logs").glob("*.jsonl"))
                phases = {r["phase"]: r for r in phase_breakdown(sampler.samples, logs[-1] if logs else None)}
                load = os.getloadavg()[0]
                row = {"tree": tname, "round": rnd, "rc": proc.returncode, "wall_s": round(wall, 1),
                       "cpu_ms_per_host": round(1000 * cpu / len(names)), "ssh_left": left, "load": round(load),
                       **{f"{p}_children_ms": round(1000 * phases[p]["children_cpu_s"] / len(names))
                          for p in ("harden", "verify") if p in phases},
                       **{f"{p}_irkit_ms": round(1000 * phases[p]["irkit_cpu_s"] / len(names))
                          for p in ("harden", "verify") if p in phases}}
                row.update(ansible_jobs(home / "cases" / case / "audit" / "log.jsonl", len(names)))
                if args.acct:
                    deadline = time.monotonic() + 90
                    while ssh_pids() - ssh_before and time.monotonic() < deadline:
                        time.sleep(2)  # the masters end after ControlPersist's idle time
                    acct_off()
                    row["acct"] = acct_breakdown(acct_file, proc.pid, len(names))
                if proc.returncode != 0:
                    row["tail"] = (out[-1500:] + err[-1500:])
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        subprocess.run([IRKIT, "lab", "down", "--inventory", str(inventory)], env=env, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
    for tname, _ in trees:
        mine = [r for r in rows if r["tree"] == tname and r["rc"] == 0]
        if mine:
            def med(key: str) -> float:
                vals = sorted(r.get(key, 0) for r in mine)
                return vals[len(vals) // 2]
            print(f"{tname}: harden children {med('harden_children_ms')} ms/host, verify children "
                  f"{med('verify_children_ms')} ms/host, whole run {med('cpu_ms_per_host')} ms/host "
                  f"(median of {len(mine)}), ssh left {max(r['ssh_left'] for r in mine)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
