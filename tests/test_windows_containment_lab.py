"""Containment of Windows hosts over WinRM on the lab (WinRS endpoints + real nftables), mixed with Linux.

The done-when of issue 12, checked from outside irkit: the old shared password is refused over
WinRM (pywinrm, NTLM over HTTPS, CA validated), the escrowed one (``irkit escrow get``) logs in and
runs whoami, the MSP account is out of Administrators and Remote Desktop Users, a peer lab host
cannot reach the host while the controller can, and the signed log verifies.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import winrm

from containment_helpers import IRKIT, REPO, contain_playbook, escrow_get, irkit, keyed_env, tcp_reach

pytestmark = [pytest.mark.lab, pytest.mark.slow]

MEMBERS = ("Get-LocalGroupMember -Group '{g}' | Select-Object Name,ObjectClass,PrincipalSource,SID | "
           "ConvertTo-Json -Compress")


@pytest.fixture(scope="module")
def winc(lab_factory):
    # t001: one Linux and two Windows hosts (mixed, several Windows); t002 the same
    return lab_factory("winc", tenants=2, hosts_per_tenant=1, windows_per_tenant=2)


@pytest.fixture(scope="module")
def env(winc):
    return keyed_env(winc)


def _win(lab):
    return [h for h in lab.info["hosts"] if h["os"] == "windows"]


def session(lab, host, user, password):
    """pywinrm directly (not irkit's transport): NTLM over HTTPS, the lab CA validating the certificate."""
    return winrm.Session(f"https://{host['address']}:{host['winrm_port']}/wsman", auth=(user, password),
                         transport="ntlm", server_cert_validation="validate", ca_trust_path=lab.info["winrm_ca_file"])


def logs_in(lab, host, user, password) -> bool:
    try:
        r = session(lab, host, user, password).run_cmd("whoami")
    except winrm.exceptions.InvalidCredentialsError:
        return False
    return r.status_code == 0 and r.std_out.decode().strip() == f"{host['name']}\\{user}"


def members(lab, host, group):
    s = session(lab, host, "irkit-responder",
                Path(lab.info["windows_responder_password_file"]).read_text().strip())
    r = s.run_ps(MEMBERS.format(g=group))
    assert r.status_code == 0, r.std_err
    out = json.loads(r.std_out or b"[]")
    return [m["Name"].split("\\")[-1] for m in ([out] if isinstance(out, dict) else out)]


def test_contain_mixed_fleet_on_windows_hosts(winc, env, tmp_path):
    info = winc.info
    win = _win(winc)
    shared = info["windows_shared_password"]
    linux = [h for h in info["hosts"] if h["os"] == "linux"]
    assert all(logs_in(winc, h, "acmeadmin", shared) for h in win)
    assert all("msp-support" in members(winc, h, "Administrators") for h in win)
    assert tcp_reach(winc, linux[0]["name"], win, port=5986) == {h["name"]: True for h in win}

    playbook = contain_playbook(winc, tmp_path / "contain.yml")  # the whole playbook: evidence first
    proc = irkit(env, "contain", "--inventory", str(winc.inventory_path), "--case", "WC-1",
                 "--playbook", str(playbook), "--yes", "--format", "json", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    for h in win:
        assert not logs_in(winc, h, "acmeadmin", shared), h["name"]  # the leaked password is refused
        new = escrow_get(env, "WC-1", h["name"], "acmeadmin")
        assert new and new != shared and logs_in(winc, h, "acmeadmin", new), h["name"]
        assert "msp-support" not in members(winc, h, "Administrators")
        assert "msp-support" not in members(winc, h, "Remote Desktop Users")
    passwords = {escrow_get(env, "WC-1", h["name"], "acmeadmin") for h in win}
    assert len(passwords) == len(win)  # unique per host
    # isolation by packets: peers blocked, the controller still in. The Linux peer is isolated too:
    # take its own isolation table away (out of band), so only the Windows hosts' rules can block it.
    assert winc.exec(linux[0]["name"], "nft delete table inet irkit_isolation").returncode == 0
    assert tcp_reach(winc, linux[0]["name"], win, port=5986) == {h["name"]: False for h in win}
    assert all(logs_in(winc, h, "irkit-responder",
                       Path(info["windows_responder_password_file"]).read_text().strip()) for h in win)
    assert irkit(env, "audit", "verify", "--case", "WC-1").returncode == 0
    assert irkit(env, "evidence", "verify", "--case", "WC-1").returncode == 0
    records = json.loads(irkit(env, "audit", "show", "--case", "WC-1", "--format", "json", check=0).stdout)
    for h in win:
        mine = [r for r in records if r.get("host") == h["name"]]
        actions = {r.get("action") for r in mine}
        assert {"evidence.collected", "credential.rotated", "host.isolated"} <= actions, (h["name"], actions)
        assert "group.member_removed" in actions
    # the Windows bundle holds the volatile data and the exported event log, hashed on both ends
    from ir_toolkit.triage.status import host_evidence_status
    from containment_helpers import home

    with home(env):
        for h in win:
            status = host_evidence_status("WC-1", h["tenant"], h["name"], rehash=True)
            assert status.ready, (h["name"], status)


# ----------------------------------------------------------------------------- kill -9 and resume


@pytest.fixture(scope="module")
def wrot(lab_factory):
    return lab_factory("wrot", tenants=1, hosts_per_tenant=1, windows_per_tenant=2)


def _secrets(env, case, host_name, account="acmeadmin"):
    from ir_toolkit.secrets import escrow as esc
    from ir_toolkit.secrets.keyprovider import KeyProvider

    from containment_helpers import home

    with home(env):
        key = KeyProvider.unlock().escrow_private_key()
        return [(e.state, e.decrypt(key)) for e in esc.Escrow(case).entries(host=host_name, account=account)]


def _working(lab, host, candidates):
    works = [p for p in dict.fromkeys(candidates) if logs_in(lab, host, "acmeadmin", p)]
    assert len(works) <= 1, f"{host['name']}: {len(works)} different passwords log in"
    return works[0] if works else None


def test_kill_9_during_windows_rotation_then_resume(wrot):
    import random

    env = keyed_env(wrot)
    rng = random.Random(int(os.environ.get("IRKIT_TEST_SEED", "12")))
    win = _win(wrot)
    known = {h["name"]: wrot.info["windows_shared_password"] for h in win}
    assert all(_working(wrot, h, [known[h["name"]]]) for h in win)
    for i in range(int(os.environ.get("IRKIT_TEST_KILLS", "3"))):
        case = f"WKILL-{i}"
        child = subprocess.Popen([IRKIT, "rotate", "--inventory", str(wrot.inventory_path), "--case", case, "--yes"],
                                 env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # wait until the rotation has escrowed something (the kill lands inside the rotation), then kill
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            if any(_secrets(env, case, h["name"]) for h in win):
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 1.5))
        child.send_signal(signal.SIGKILL)
        child.wait()
        # right after the kill: every Windows host's password is known (the old one, or one in escrow)
        for h in win:
            candidates = [known[h["name"]], *(p for _, p in _secrets(env, case, h["name"]))]
            assert _working(wrot, h, candidates), f"kill {i}: {h['name']}: no known password logs in"
        proc = irkit(env, "resume", "--case", case, timeout=600)
        if "no run to resume" in proc.stderr:
            proc = irkit(env, "rotate", "--inventory", str(wrot.inventory_path), "--case", case, "--yes", timeout=600)
        assert proc.returncode == 0, f"kill {i}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        for h in win:
            entries = _secrets(env, case, h["name"])
            assert entries and not [s for s, _ in entries if s in ("pending", "applied")], (i, h["name"], entries)
            current = escrow_get(env, case, h["name"], "acmeadmin")
            assert current == [p for s, p in entries if s == "verified"][-1]
            assert logs_in(wrot, h, "acmeadmin", current), (i, h["name"])
            if current != known[h["name"]]:
                assert not logs_in(wrot, h, "acmeadmin", known[h["name"]])
            known[h["name"]] = current
        assert irkit(env, "audit", "verify", "--case", case).returncode == 0
