#!/usr/bin/env python3
"""Side-by-side: irkit vs ansible-playbook vs pyinfra on the same lab fleet, same three short tasks.

    sudo .venv/bin/python bench/bench_engine.py --tenants 4 --hosts-per-tenant 50

Brings up a lab of tenants x hosts-per-tenant real sshd hosts (msp "benchfleet",
198.18.0.0/16... chosen by `irkit lab generate`), then runs, one after another on the
same hosts:

* irkit:   `irkit contain --playbook tests/playbooks/engine-basic.yml --yes` (plan + apply + verify
           + signed audit log), forks = number of hosts;
* ansible: ansible-playbook -f 50, pipelining on, ControlPersist, gather_facts off, strict
           host keys; tasks: command `id -u`, copy content to the marker file, command grep;
* pyinfra: the same three operations (server.shell, files.put, server.shell), --parallel 50.

Wall time and controller CPU (user+sys of the tool and all its children, e.g. ssh
processes) are measured; ratios are printed. Peers run from their own venv
(bench/.venv-peers for pyinfra; ansible-core from the project venv). Results are
printed and written to bench/results/engine-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
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
sys.path.insert(0, str(REPO))
VENV_BIN = Path(sys.executable).parent
IRKIT = str(VENV_BIN / "irkit")
PEERS = REPO / "bench" / ".venv-peers"
MARKER = "/var/tmp/irkit-engine-marker"


def run_measured(cmd: list[str], env: dict[str, str], cwd: Path) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        sys.stderr.write(f"{cmd[0]} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n")
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "rc": proc.returncode}


def ensure_peers() -> Path:
    pyinfra = PEERS / "bin" / "pyinfra"
    if not pyinfra.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEERS)], check=True)
        subprocess.run([str(PEERS / "bin" / "pip"), "install", "-q", "pyinfra"], check=True)
    return pyinfra


def reset_markers(hosts: list[dict], env: dict[str, str], inventory: Path) -> None:
    """Remove the marker file on every host, out of band (in-process: 200 CLI calls would take minutes)."""
    from concurrent.futures import ThreadPoolExecutor

    from ir_toolkit.lab import Lab

    os.environ["IRKIT_HOME"] = env["IRKIT_HOME"]
    lab = Lab("benchfleet", Path(env["IRKIT_HOME"]) / "lab" / "benchfleet")
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda h: lab.exec(h["name"], ["rm", "-f", MARKER]), hosts))


def ansible_files(work: Path, info: dict) -> tuple[Path, Path, Path]:
    inv = work / "ansible-inventory.ini"
    lines = ["[lab]"]
    for h in info["hosts"]:
        lines.append(f"{h['name']} ansible_host={h['address']} ansible_port={h.get('port', 22)}")
    inv.write_text("\n".join(lines) + "\n")
    cfg = work / "ansible.cfg"
    cfg.write_text(
        "[defaults]\nhost_key_checking = True\ngathering = explicit\nforks = 50\nretry_files_enabled = False\n"
        f"private_key_file = {info['responder_private_key']}\nremote_user = {info.get('responder_user', 'root')}\n"
        "interpreter_python = /usr/bin/python3\n"
        "[ssh_connection]\npipelining = True\n"
        f"ssh_args = -o ControlMaster=auto -o ControlPersist=60s -o UserKnownHostsFile={info['known_hosts']} "
        "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes\n"
    )
    pb = work / "ansible-playbook.yml"
    pb.write_text(
        "- hosts: lab\n  gather_facts: false\n  tasks:\n"
        "    - command: id -u\n      changed_when: false\n"
        f"    - copy: {{content: \"irkit engine test\\n\", dest: {MARKER}, mode: '0600'}}\n"
        f"    - command: grep -qF 'engine test' {MARKER}\n      changed_when: false\n"
    )
    return inv, cfg, pb


def pyinfra_files(work: Path, info: dict) -> tuple[Path, Path]:
    inv = work / "pyinfra_inventory.py"
    hosts = [
        (h["address"], {"ssh_port": h.get("port", 22), "ssh_user": info.get("responder_user", "root"),
                        "ssh_key": info["responder_private_key"], "ssh_known_hosts_file": info["known_hosts"],
                        "ssh_strict_host_key_checking": "yes"})
        for h in info["hosts"]
    ]
    inv.write_text(f"lab = {hosts!r}\n")
    deploy = work / "pyinfra_deploy.py"
    deploy.write_text(
        "from io import StringIO\nfrom pyinfra.operations import files, server\n"
        "server.shell(name='id', commands=['id -u'])\n"
        f"files.put(name='marker', src=StringIO('irkit engine test\\n'), dest='{MARKER}', mode='600')\n"
        f"server.shell(name='check', commands=[\"grep -qF 'engine test' {MARKER}\"])\n"
    )
    return inv, deploy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=4)
    parser.add_argument("--hosts-per-tenant", type=int, default=50)
    parser.add_argument("--skip", action="append", default=[], choices=["ansible", "pyinfra"])
    parser.add_argument("--keep-lab", action="store_true")
    parser.add_argument("--base", default="198.18.64.0/18", help="lab network (inside 198.18.0.0/15)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_engine: the lab needs root")
    home = Path(tempfile.mkdtemp(prefix="irkit-bench-"))
    env = {**os.environ, "IRKIT_HOME": str(home), "IRKIT_KEY_PASSPHRASE": "bench-passphrase"}
    work = home / "work"
    work.mkdir()
    inventory = work / "inventory.yml"
    subprocess.run([IRKIT, "lab", "generate", "--tenants", str(args.tenants), "--hosts-per-tenant",
                    str(args.hosts_per_tenant), "--msp", "benchfleet", "--out", str(inventory),
                    "--base", args.base], env=env, check=True)
    n = args.tenants * args.hosts_per_tenant
    results: dict[str, dict] = {}
    try:
        t0 = time.monotonic()
        subprocess.run([IRKIT, "lab", "up", "--inventory", str(inventory)], env=env, check=True)
        results["lab_up"] = {"wall_s": round(time.monotonic() - t0, 2), "hosts": n}
        subprocess.run([IRKIT, "keys", "init", "--if-missing"], env=env, check=True, capture_output=True)
        info = json.loads(subprocess.run([IRKIT, "lab", "info", "--inventory", str(inventory), "--format", "json"],
                                         env=env, check=True, capture_output=True, text=True).stdout)
        reset_markers(info["hosts"], env, inventory)
        results["irkit"] = run_measured(
            [IRKIT, "contain", "--inventory", str(inventory), "--playbook", str(REPO / "tests/playbooks/engine-basic.yml"),
             "--case", "BENCH", "--yes", "--forks", str(min(n, 200))], env, REPO)
        if "ansible" not in args.skip:
            reset_markers(info["hosts"], env, inventory)
            inv, cfg, pb = ansible_files(work, info)
            results["ansible"] = run_measured([str(VENV_BIN / "ansible-playbook"), "-i", str(inv), "-f", "50", str(pb)],
                                              {**env, "ANSIBLE_CONFIG": str(cfg)}, work)
        if "pyinfra" not in args.skip:
            reset_markers(info["hosts"], env, inventory)
            pyinfra = ensure_peers()
            inv, deploy = pyinfra_files(work, info)
            results["pyinfra"] = run_measured([str(pyinfra), "-y", "--parallel", "50", str(inv), str(deploy)], env, work)
    finally:
        if not args.keep_lab:
            subprocess.run([IRKIT, "lab", "down", "--inventory", str(inventory)], env=env)
            shutil.rmtree(home, ignore_errors=True)

    print(f"\n{n} lab hosts, three short tasks each (wall s / controller CPU s / CPU ms per host)")
    for tool in ("irkit", "ansible", "pyinfra"):
        if tool in results:
            r = results[tool]
            print(f"  {tool:8s} {r['wall_s']:8.2f} s  {r['cpu_s']:8.2f} s  {1000 * r['cpu_s'] / n:7.1f} ms/host  rc={r['rc']}")
    base = results["irkit"]
    for tool in ("ansible", "pyinfra"):
        if tool in results:
            r = results[tool]
            print(f"  {tool} / irkit: wall x{r['wall_s'] / base['wall_s']:.1f}, CPU x{r['cpu_s'] / max(base['cpu_s'], 1e-9):.1f}")
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    (out / f"engine-{stamp}.json").write_text(json.dumps({"hosts": n, **results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
