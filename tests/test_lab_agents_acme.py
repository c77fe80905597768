"""#19 "Done when" on the example acme lab: `irkit lab up --msp acme --agents`, then `irkit contain
--inventory <the agents' inventory> --yes` contains every tenant through its agent, with globex's agent
killed -9 during the run; `irkit audit verify` passes and each plan item has exactly one step.done.

The acme lab has fixed addresses and can exist once per machine: the module takes
/tmp/irkit-acme-lab.lock (as every use of the acme lab does) and skips when it cannot get it in time.
End-state checks run where the responders now stand: from inside each tenant's agent namespace (the
hosts are isolated to the agent's address), plus out of band (`lab exec`).
"""

from __future__ import annotations

import fcntl
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

from conftest import _lab_skip_reason, lab_leftovers

pytestmark = [pytest.mark.lab, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
ACME = REPO / "inventories" / "acme.yml"
IRKIT = str(Path(sys.executable).with_name("irkit"))
CASE = "ACME-AGENTS-1"
LOCK = "/tmp/irkit-acme-lab.lock"


def _irkit(env: dict, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([IRKIT, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def acme(tmp_path_factory):
    reason = _lab_skip_reason()
    if reason:
        pytest.skip(reason)
    if not shutil.which("redis-server"):
        pytest.skip("needs redis-server")
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    deadline = time.monotonic() + 900
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                pytest.skip(f"the acme lab is in use ({LOCK} held for 15 min)")
            time.sleep(5)
    from ir_toolkit.lab.netns import conflicts

    busy = conflicts(ipaddress.ip_network("198.18.0.0/21"), own_bridge="")
    if busy:
        os.close(fd)
        pytest.skip(f"acme's lab addresses are in use on this machine: {busy}")
    home = tmp_path_factory.mktemp("acme-agents-home")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("IRKIT_")}, "IRKIT_HOME": str(home),
           "IRKIT_KEY_PASSPHRASE": "acme agents test passphrase", "IRKIT_INSECURE_TEST_SCRYPT_LOG2N": "10"}
    try:
        assert _irkit(env, "keys", "init").returncode == 0
        up = _irkit(env, "lab", "up", "--inventory", str(ACME), "--agents")
        assert up.returncode == 0, up.stdout + up.stderr
        info = json.loads(_irkit(env, "lab", "info", "--msp", "acme", "--format", "json").stdout)
        yield {"env": env, "home": home, "info": info}
    finally:
        _irkit(env, "lab", "down", "--msp", "acme", "--purge")
        os.close(fd)


def _in_agent(info: dict, tenant: str, argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run ``argv`` in the network namespace of ``tenant``'s agent (the box the responders now use)."""
    ns = next(a["netns"] for a in info["agents"] if a["tenant"] == tenant)
    return subprocess.run(["nsenter", f"--net=/run/netns/{ns}", "--", *argv], input=stdin, capture_output=True,
                          text=True, timeout=60)


def _ssh(info: dict, tenant: str, host: dict, user: str, key: str | None = None,
         password: str | None = None) -> bool:
    opts = ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={info['known_hosts']}", "-o",
            "ConnectTimeout=10", "-F", "/dev/null", "-o", "NumberOfPasswordPrompts=1"]
    if key:
        argv = ["ssh", *opts, "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o",
                "PreferredAuthentications=publickey", "-i", key, f"{user}@{host['address']}", "true"]
        return _in_agent(info, tenant, argv).returncode == 0
    argv = ["sshpass", "-d", "0", "ssh", *opts, "-o", "PreferredAuthentications=password", "-o",
            "PubkeyAuthentication=no", f"{user}@{host['address']}", "true"]
    ns = next(a["netns"] for a in info["agents"] if a["tenant"] == tenant)
    proc = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", "--", *argv], input=password + "\n",
                          capture_output=True, text=True, timeout=60)
    return proc.returncode == 0


def _records(env: dict, case: str) -> list[dict]:
    proc = _irkit(env, "audit", "show", "--case", case, "--format", "json")
    if proc.returncode != 0:
        return []
    data = json.loads(proc.stdout)
    return data["records"] if isinstance(data, dict) else data


def test_contain_through_the_agents_with_one_killed(acme):
    env, info = acme["env"], acme["info"]
    assert info["inventory"].endswith("agents-inventory.yml")
    agents = {a["tenant"]: a for a in info["agents"]}
    linux = [h for h in info["hosts"] if h["os"] == "linux"]
    assert set(agents) == {h["tenant"] for h in info["hosts"]}
    # baseline: the breach is real, seen from the agents' boxes
    assert _ssh(info, linux[0]["tenant"], linux[0], "root", key=info["msp_private_key"])

    controller = subprocess.Popen([IRKIT, "contain", "--inventory", info["inventory"], "--case", CASE, "--yes",
                                   "--format", "json"], env=env, cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if any(r["action"] == "agent.intent" and r.get("tenant") == "globex" for r in _records(env, CASE)):
                break
            assert controller.poll() is None, controller.communicate()
            time.sleep(3)
        time.sleep(2)
        os.kill(agents["globex"]["pid"], signal.SIGKILL)
        out, err = controller.communicate(timeout=1800)
    finally:
        if controller.poll() is None:
            controller.kill()
            controller.wait()
    after = {a["tenant"]: a for a in json.loads(_irkit(env, "lab", "info", "--msp", "acme", "--format",
                                                           "json").stdout)["agents"]}
    assert controller.returncode == 0, f"{out.decode()[-3000:]}\n{err.decode()[-6000:]}"
    assert after["globex"]["restarts"] >= 1 and after["globex"]["pid"] != agents["globex"]["pid"]

    records = _records(env, CASE)
    done = [r["params"]["item"] for r in records if r["action"] == "step.done"]
    assert done and len(done) == len(set(done)), "exactly one step.done per plan item"
    assert all(r["outcome"] == "ok" for r in records if r["action"] == "step.done")
    through = {r["host"] for r in records if r["action"] == "agent.result"}
    assert {h["name"] for h in info["hosts"]} <= through, "every host was worked on by its tenant's agent"
    verify = _irkit(env, "audit", "verify", "--case", CASE)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    # end state, from each tenant's agent box: the MSP key and the old password are dead, irkit's own
    # key still works; hosts are isolated from each other
    old_password = info["msp_shared_password"]
    for host in linux:
        tenant = host["tenant"]
        assert _ssh(info, tenant, host, "root", key=info["responder_private_key"]), host["name"]
        assert not _ssh(info, tenant, host, "root", key=info["msp_private_key"]), host["name"]
        assert not _ssh(info, tenant, host, "mspadmin", password=old_password), host["name"]
        # the new password was escrowed by the tenant's agent, travelled back through the drop, and the
        # controller's `irkit escrow get` decrypts it (docs/agents.md); it logs in
        got = _irkit(env, "escrow", "get", "--case", CASE, "--host", host["name"], "--account", "mspadmin")
        assert got.returncode == 0, got.stderr
        new = got.stdout.rstrip("\n")
        assert new and new != old_password and _ssh(info, tenant, host, "mspadmin", password=new), host["name"]
    for host in (h for h in info["hosts"] if h["os"] == "windows"):  # the shared local admin, rotated by the agent
        got = _irkit(env, "escrow", "get", "--case", CASE, "--host", host["name"], "--account", "acmeadmin")
        assert got.returncode == 0 and got.stdout.strip(), (host["name"], got.stderr)
    probe = subprocess.run([IRKIT, "lab", "exec", "--msp", "acme", linux[0]["name"], "--", "sh", "-c",
                            f"timeout 2 bash -c 'echo > /dev/tcp/{linux[1]['address']}/22' && echo REACHED || "
                            "echo BLOCKED"], env=env, capture_output=True, text=True, timeout=60)
    assert "BLOCKED" in probe.stdout, probe.stdout + probe.stderr


def test_lab_down_leaves_nothing(acme):
    info = acme["info"]
    assert _irkit(acme["env"], "lab", "down", "--msp", "acme").returncode == 0
    assert lab_leftovers(info["lab_id"], Path(info["lab_dir"])) == []
