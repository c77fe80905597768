"""The lab agents' parts that run without root: the supervisor, the broker's ACL and config text,
address picking, and the shipped systemd unit (docs/lab.md "Agents", docs/scaling.md)."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUPERVISOR = REPO / "ir_toolkit" / "lab" / "supervisor.py"


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def _pidfile(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def _start(tmp_path: Path, *command: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-I", str(SUPERVISOR), "--pidfile", str(tmp_path / "agent.pid"),
                             "--log", str(tmp_path / "agent.log"), "--backoff", "0.2", "--", *command],
                            env={"PATH": os.environ["PATH"], "IRKIT_HOME": str(tmp_path)})


def test_supervisor_restarts_a_killed_child_and_kills_what_it_left_behind(tmp_path):
    # the child leaves a grandchild in its process group (like a worker's pool child)
    script = "sleep 300 & echo $! > grandchild.$$; wait"
    sup = _start(tmp_path, "/bin/sh", "-c", script)
    try:
        first = _wait(lambda: _pidfile(tmp_path / "agent.pid"), 20, "the first start")
        assert first["supervisor"] == sup.pid and first["restarts"] == 0 and _alive(first["pid"])
        grandchild = int(_wait(lambda: (tmp_path / f"grandchild.{first['pid']}").exists()
                               and (tmp_path / f"grandchild.{first['pid']}").read_text().strip(), 10, "grandchild"))
        os.kill(first["pid"], signal.SIGKILL)
        second = _wait(lambda: (d := _pidfile(tmp_path / "agent.pid")) and d["pid"] != first["pid"] and d, 20,
                       "the restart")
        assert second["restarts"] == 1 and second["supervisor"] == sup.pid and _alive(second["pid"])
        _wait(lambda: not _alive(grandchild), 10, "the orphaned grandchild to be killed")
        log = (tmp_path / "agent.log").read_text()
        assert f"pid {first['pid']} exited (signal 9)" in log and "killed what was left of process group" in log
        # the child runs in the supervisor's directory, with IRKIT_HOME and nothing else of ours
        env = Path(f"/proc/{second['pid']}/environ").read_bytes().split(b"\0")
        assert f"IRKIT_HOME={tmp_path}".encode() in env
        assert Path(f"/proc/{second['pid']}/cwd").resolve() == tmp_path.resolve()
    finally:
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(20) == 0
    last = _pidfile(tmp_path / "agent.pid")
    assert last and not _alive(last["pid"])
    assert (tmp_path / "agent.log").read_text().rstrip().endswith("stopped")


def test_supervisor_backs_off_while_the_child_keeps_dying(tmp_path):
    sup = _start(tmp_path, "/bin/false")
    try:
        time.sleep(2.5)
        log = (tmp_path / "agent.log").read_text()
    finally:
        sup.send_signal(signal.SIGTERM)
        sup.wait(20)
    waits = [float(line.split("restarting in ")[1].split()[0]) for line in log.splitlines() if "restarting in" in line]
    assert waits[:4] == [0.2, 0.4, 0.8, 1.6][:len(waits[:4])] and len(waits) >= 3, log


def test_supervisor_killed_takes_its_child_with_it(tmp_path):
    sup = _start(tmp_path, "sleep", "300")
    first = _wait(lambda: _pidfile(tmp_path / "agent.pid"), 20, "the start")
    os.kill(sup.pid, signal.SIGKILL)
    sup.wait(10)
    _wait(lambda: not _alive(first["pid"]), 10, "the child to die with its supervisor (PR_SET_PDEATHSIG)")


def test_acl_limits_each_tenant_to_its_prefix_and_keeps_passwords_out():
    from ir_toolkit.lab import broker

    passwords = {"irkit-controller": "c" * 32, "irkit-agent-globex": "g" * 32, "irkit-agent-initech": "i" * 32}
    text = broker.acl_text(["globex", "initech"], passwords)
    lines = {line.split()[1]: line.split() for line in text.splitlines()}
    assert lines["default"][2] == "off"
    for user, pw in passwords.items():
        assert pw not in text
    g = lines["irkit-agent-globex"]
    assert "~irkit:globex:*" in g and "&irkit:globex:*" in g and "&irkit:globex:/0.celery.pidbox" in g
    assert not [w for w in g if w.startswith(("~", "&")) and "initech" in w]
    assert "-@all" in g and g.index("-@all") < g.index("+lpush")
    assert not {"+keys", "+scan", "+eval", "+config", "+flushall", "+flushdb", "+debug", "+acl", "+monitor",
                "+shutdown", "+@all", "+@dangerous"} & set(g)
    assert "~irkit:*" in lines["irkit-controller"]


def test_broker_config_is_tls_only_and_persists_in_the_lab_dir(tmp_path):
    from ir_toolkit.lab import broker

    paths = broker.BrokerPaths(tmp_path)
    conf = broker.redis_conf(paths, broker.BrokerState("198.18.0.2", "ns", "veth"))
    settings = dict(line.split(" ", 1) for line in conf.splitlines() if line and not line.startswith("#"))
    assert settings["port"] == "0" and settings["tls-port"] == "6380" and settings["bind"] == "198.18.0.2"
    assert settings["tls-auth-clients"] == "yes" and settings["aclfile"] == str(paths.acl)
    assert settings["appendonly"] == "yes" and settings["dir"] == str(paths.root) and settings["save"] == '""'
    assert "requirepass" not in conf


def test_addresses_stay_in_the_lab_network_and_avoid_hosts():
    from ir_toolkit.inventory import load_inventory
    from ir_toolkit.lab.agentlab import addresses
    from ir_toolkit.lab.plan import plan_lab

    inv = load_inventory(REPO / "inventories" / "acme.yml")
    plan = plan_lab(inv)
    broker, agents = addresses(inv, plan)
    assert broker == "198.18.0.2"
    assert agents["globex"] == "198.18.1.254"
    used = {h.address for h in plan.hosts} | {plan.controller_address}
    for tenant, addr in agents.items():
        ip = ipaddress.ip_address(addr)
        assert ip in plan.network and addr not in used
        assert ip in ipaddress.ip_network(str(inv.tenant(tenant).subnet))
    assert len(set(agents.values())) == len(agents) and broker not in agents.values()


def test_example_agent_unit_verifies(tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    unit = (REPO / "docs/systemd/irkit-agent@.service").read_text()
    for needed in ("Restart=always", "KillMode=control-group", "LoadCredential=broker-password:",
                   "--broker-password file:${CREDENTIALS_DIRECTORY}/broker-password"):
        assert needed in unit
    irkit_bin = str(Path(sys.executable).with_name("irkit"))
    (tmp_path / "irkit-agent@.service").write_text(unit.replace("/opt/irkit/.venv/bin/irkit", irkit_bin))
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", "irkit-agent@globex.service"], cwd=tmp_path,
                          capture_output=True, text=True)
    problems = [line for line in (proc.stdout + proc.stderr).splitlines()
                if "irkit-agent" in line and "Failed to" not in line and "/etc/irkit/" not in line]
    assert not problems, proc.stdout + proc.stderr
