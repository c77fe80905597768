"""Lab life cycle: kill -9 of `lab up`, stale state, address conflicts, repair, reimage, the fixture."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import paramiko
import pytest

from conftest import _lab_skip_reason, lab_leftovers, run_irkit

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh(tmp_path):
    """A not-yet-started lab inventory (2 tenants x 5 hosts) in a free 198.19.x.0/22 block."""
    reason = _lab_skip_reason()
    if reason:
        pytest.skip(reason)
    from ir_toolkit.lab.generate import generate_inventory, write_inventory
    from ir_toolkit.lab.netns import conflicts

    block = next((b for b in range(128, 256, 4)
                  if not conflicts(ipaddress.ip_network(f"198.19.{b}.0/22"), own_bridge="")), None)
    if block is None:
        pytest.skip("no free 198.19.x.0/22 block")
    home = tmp_path / "home"
    home.mkdir()
    inventory = home / "labkill.yml"
    write_inventory(inventory, generate_inventory(msp="labkill", tenants=2, hosts_per_tenant=5,
                                                  base=f"198.19.{block}.0/22"))
    yield home, inventory
    run_irkit(home, "lab", "down", "--inventory", str(inventory), "--purge")


def _lab_id(home: Path) -> str:
    from ir_toolkit.lab.layout import lab_id

    return lab_id("labkill", (home / "lab" / "labkill").absolute())


def _kill_up_midway(home: Path, inventory: Path, when: str) -> None:
    """Start `irkit lab up` and SIGKILL it at a point of its work (`netns` or `hosts`)."""
    lid = _lab_id(home)
    init = f"{home}/lab/labkill/init.sh".encode()
    proc = subprocess.Popen([sys.executable, "-m", "ir_toolkit", "lab", "up", "--inventory", str(inventory)],
                            env={**os.environ, "IRKIT_HOME": str(home)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if when == "netns":
            hit = Path("/run/netns").exists() and any(n.startswith(f"irk-{lid}-") for n in os.listdir("/run/netns"))
        else:
            hit = sum(1 for p in filter(str.isdigit, os.listdir("/proc"))
                      if init in _cmdline(p)) >= 3
        if hit:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL, "lab up finished before it could be killed"


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.parametrize("when", ["netns", "hosts"])
def test_down_after_kill9_of_up_leaves_nothing(fresh, when):
    home, inventory = fresh
    _kill_up_midway(home, inventory, when)
    lab_dir = home / "lab" / "labkill"
    assert lab_leftovers(_lab_id(home), lab_dir)  # the killed run did leave resources
    state = json.loads((lab_dir / "state.json").read_text())
    assert len(state["hosts"]) == 10  # intents were recorded before anything was made
    proc = run_irkit(home, "lab", "down", "--inventory", str(inventory))
    assert proc.returncode == 0, proc.stderr
    assert lab_leftovers(_lab_id(home), lab_dir) == []


def test_up_after_kill9_cleans_stale_state_and_comes_up(fresh):
    home, inventory = fresh
    _kill_up_midway(home, inventory, "hosts")
    proc = run_irkit(home, "lab", "up", "--inventory", str(inventory))
    assert proc.returncode == 0 and "10 hosts up (10 started, 0 kept)" in proc.stdout, proc.stderr
    status = json.loads(run_irkit(home, "lab", "status", "--msp", "labkill", "--format", "json").stdout)
    assert status["healthy"] and len(status["hosts"]) == 10
    # exactly one init per host: the stale ones of the killed run are gone
    init = f"{home}/lab/labkill/init.sh".encode()
    inits = [p for p in filter(str.isdigit, os.listdir("/proc")) if _cmdline(p).startswith(b"/bin/sh\0" + init)]
    assert len(inits) == 10
    assert run_irkit(home, "lab", "down", "--inventory", str(inventory)).returncode == 0
    assert lab_leftovers(_lab_id(home), home / "lab" / "labkill") == []


def test_a_second_lab_on_the_same_addresses_is_refused(lab, tmp_path):
    home = tmp_path / "clash"
    home.mkdir()
    data = Path(lab.inventory_path).read_text().replace("name: labtest", "name: labclash")
    data = data.replace("/lab/labtest/", "/lab/labclash/")
    inventory = home / "clash.yml"
    inventory.write_text(data)
    proc = run_irkit(home, "lab", "up", "--inventory", str(inventory))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("irkit: error: another lab or network already uses these addresses")
    assert "the lab of MSP labtest" in proc.stderr and proc.stderr.count("\n") == 1
    run_irkit(home, "lab", "down", "--inventory", str(inventory), "--purge")
    assert lab.exec(lab.info["hosts"][0]["name"], "true").returncode == 0  # the first lab is untouched


def test_the_fixture_api(lab):
    assert lab.inventory_path.exists() and (lab.home / "lab" / "labtest" / "state.json").exists()
    info = lab.info
    assert info["msp"] == "labtest" and len(info["hosts"]) == 4
    assert {h["tenant"] for h in info["hosts"]} == {"t001", "t002"}
    assert all(ipaddress.ip_address(h["address"]) in ipaddress.ip_network("198.19.0.0/16") for h in info["hosts"])
    assert ipaddress.ip_address(info["controller_address"]) in ipaddress.ip_network("198.19.0.0/16")
    host = info["hosts"][0]["name"]
    proc = lab.exec(host, "cat; hostname; exit 3", stdin=b"in\n")
    assert (proc.returncode, proc.stdout) == (3, f"in\n{host}\n".encode())
    assert lab.irkit("lab", "status", "--inventory", str(lab.inventory_path)).returncode == 0


def test_dead_host_is_reported_and_repaired_by_up(lab_factory):
    handle = lab_factory("labrepair", tenants=1, hosts_per_tenant=3)
    victim = handle.info["hosts"][1]
    others = {h["name"]: h["pid"] for h in handle.info["hosts"] if h["name"] != victim["name"]}
    os.kill(victim["pid"], signal.SIGKILL)
    time.sleep(0.2)
    proc = handle.irkit("lab", "status", "--inventory", str(handle.inventory_path), "--format", "json")
    rows = {r["name"]: r for r in json.loads(proc.stdout)["hosts"]}
    assert proc.returncode == 1 and rows[victim["name"]]["init"] == "dead"
    assert all(rows[n]["ok"] for n in others)
    proc = handle.irkit("lab", "exec", "--inventory", str(handle.inventory_path), victim["name"], "--", "true")
    assert proc.returncode == 4 and "is not running" in proc.stderr
    proc = handle.irkit("lab", "up", "--inventory", str(handle.inventory_path))
    assert proc.returncode == 0 and "(1 started, 2 kept)" in proc.stdout, proc.stdout + proc.stderr
    info = handle.refresh()
    assert {h["name"]: h["pid"] for h in info["hosts"] if h["name"] != victim["name"]} == others
    assert handle.exec(victim["name"], "hostname").stdout.decode().strip() == victim["name"]
    handle.down()
    assert lab_leftovers(info["lab_id"], Path(info["lab_dir"])) == []


def test_reimage_rebuilds_a_host_clean_with_a_new_host_key(lab_factory):
    handle = lab_factory("labreimage", tenants=1, hosts_per_tenant=3)
    old = handle.info["hosts"][0]
    handle.exec(old["name"], "echo residue > /root/residue")
    new = handle.lab.reimage(old["name"])
    assert new["host_key_fingerprint"] != old["host_key_fingerprint"] and not new["breached"]
    info = handle.refresh()
    assert Path(info["known_hosts"]).read_text().count(old["address"] + " ") == 1
    out = handle.exec(old["name"], "ls /root/residue /tmp/.kworkerd 2>&1; grep -c mspadmin /etc/passwd; "
                                   "cat /root/.ssh/authorized_keys | wc -l").stdout.decode()
    assert "No such file" in out and out.split()[-2:] == ["0", "1"]
    client = paramiko.SSHClient()
    client.load_host_keys(info["known_hosts"])
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    key = paramiko.Ed25519Key.from_private_key_file(info["responder_private_key"])
    client.connect(old["address"], username="root", pkey=key, look_for_keys=False, allow_agent=False, timeout=10)
    _, out, _ = client.exec_command("hostname")
    assert out.read().decode().strip() == old["name"]
    client.close()
    msp = paramiko.Ed25519Key.from_private_key_file(info["msp_private_key"])
    client = paramiko.SSHClient()
    client.load_host_keys(info["known_hosts"])
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.AuthenticationException):
        client.connect(old["address"], username="root", pkey=msp, look_for_keys=False, allow_agent=False, timeout=10)
    client.close()
    # the reimage provider (`bmc: {provider: lab}`) does the same through the provider interface
    import ir_toolkit.lab.reimage  # noqa: F401 - registers the `lab` provider
    from ir_toolkit.reimage import ReimageStatus, get_provider, run_to_completion
    from ir_toolkit.inventory import load_inventory

    inv = load_inventory(handle.inventory_path)
    second = inv.host(info["hosts"][1]["name"])
    handle.exec(second.name, "nft add table inet residue")
    result = run_to_completion(get_provider("lab"), second, interval=0.05)
    assert result.status is ReimageStatus.DONE, result.message
    record = result.to_record()
    assert record["facts"]["was_breached"] is True and record["facts"]["lab_msp"] == "labreimage"
    assert record["facts"]["old_host_key_fingerprint"] == info["hosts"][1]["host_key_fingerprint"]
    assert record["facts"]["new_host_key_fingerprint"] == handle.refresh()["hosts"][1]["host_key_fingerprint"]
    assert record["facts"]["new_host_key_fingerprint"] != record["facts"]["old_host_key_fingerprint"]
    out = handle.exec(second.name, "nft list tables; test -e /tmp/.kworkerd && echo dropper").stdout
    assert out == b"table inet filter\n"  # a fresh network stack (only the host firewall) and no breach
    stranger = second.model_copy(update={"name": "not-in-any-lab"})
    failed = run_to_completion(get_provider("lab"), stranger, interval=0.05)
    assert failed.status is ReimageStatus.FAILED and "not a host of any running lab" in failed.message
    # the third host still carries the breach
    other = info["hosts"][2]["name"]
    assert handle.exec(other, "test -x /tmp/.kworkerd").returncode == 0
    # a later `lab up` keeps the reimaged host as it is
    proc = handle.irkit("lab", "up", "--inventory", str(handle.inventory_path))
    assert "nothing changed" in proc.stdout
    handle.down()
