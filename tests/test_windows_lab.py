"""Windows hosts in the lab: WinRS endpoints in their own network namespaces, reached over WinRM.

Each Windows host is a network namespace on the lab bridge with the lab's WinRS endpoint in it;
its firewall rules are real nftables rules there, so reachability is checked with packets from
a peer lab host and from the controller.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ir_toolkit.transports.base import AUTH_FAILED, TransportError
from ir_toolkit.transports.winrm import WinrmConnection, WinrmEndpoint, probe_login
from tests.conftest import run_irkit

pytestmark = [pytest.mark.lab]


@pytest.fixture(scope="module")
def winlab(lab_factory):
    return lab_factory("winlab", tenants=2, hosts_per_tenant=1, windows_per_tenant=1)


def _win(info):
    return [h for h in info["hosts"] if h["os"] == "windows"]


def _endpoint(info, host, user):
    return WinrmEndpoint(host["address"], host["winrm_port"], user, ca_file=info["winrm_ca_file"], name=host["name"])


def _reach(winlab, peer: str, address: str, port: int = 5986) -> bool:
    proc = winlab.exec(peer, f"timeout 3 bash -c 'echo > /dev/tcp/{address}/{port}' && echo yes || echo no")
    return proc.stdout.decode().strip() == "yes"


def _controller_reaches(address: str, port: int = 5986) -> bool:
    import socket

    try:
        with socket.create_connection((address, port), timeout=3):
            return True
    except OSError:
        return False


def test_info_lists_windows_hosts(winlab):
    info = winlab.info
    win = _win(info)
    assert len(win) == 2 and {h["tenant"] for h in win} == {"t001", "t002"}
    for h in win:
        assert (h["os"], h["winrm_port"], h["winrm_scheme"], h["running"]) == ("windows", 5986, "https", True)
        assert h["address"].startswith("198.19.") and h["certificate_sha256"]
    assert Path(info["winrm_ca_file"]).is_file()
    assert info["windows_shared_account"] == "acmeadmin" and info["windows_shared_password"]
    assert Path(info["windows_shared_password_file"]).stat().st_mode & 0o777 == 0o600


def test_shared_admin_logs_in_over_ntlm_https_with_the_lab_ca(winlab):
    info = winlab.info
    for h in _win(info):
        ep = _endpoint(info, h, info["windows_shared_account"])
        with WinrmConnection.open(ep, password=info["windows_shared_password"]) as conn:
            who = conn.run_cmd("whoami")
            assert who.ok and who.text.strip() == f"{h['name']}\\acmeadmin"
            assert conn.run("hostname").text.strip() == h["name"]
        assert probe_login(ep, "Wrong-Password-1!") is False
    msp = _endpoint(info, _win(info)[0], "msp-support")
    with pytest.raises(TransportError) as err:  # its password is unknown (random per host)
        WinrmConnection.open(msp, password=info["windows_shared_password"])
    assert err.value.kind == AUTH_FAILED


def test_firewall_rules_are_enforced_by_packets(winlab):
    info = winlab.info
    win = _win(info)[0]
    peer = next(h for h in info["hosts"] if h["os"] == "linux")["name"]
    controller = info["controller_address"]
    assert _reach(winlab, peer, win["address"]) and _controller_reaches(win["address"])
    ep = _endpoint(info, win, info["windows_shared_account"])
    a = controller.split(".")
    below = ".".join(a[:3] + [str(int(a[3]) - 1)])
    above = ".".join(a[:3] + [str(int(a[3]) + 1)])
    rules = (f"$ErrorActionPreference = 'Stop'\n"
             f"New-NetFirewallRule -Name 'test-iso-in' -DisplayName 'test isolation' -Group 'test-iso' "
             f"-Direction Inbound -Action Block -Profile Any -RemoteAddress @('0.0.0.0-{below}','{above}-255.255.255.255') | Out-Null")
    with WinrmConnection.open(ep, password=info["windows_shared_password"]) as conn:
        assert conn.run(rules).ok
        try:
            assert not _reach(winlab, peer, win["address"])  # the peer's packets are dropped
            assert _controller_reaches(win["address"])  # the controller is outside the blocked ranges
            assert conn.run_cmd("whoami").ok
        finally:
            assert conn.run("Remove-NetFirewallRule -Group 'test-iso'").ok
    assert _reach(winlab, peer, win["address"])


def test_second_up_keeps_windows_hosts(winlab):
    before = {h["name"]: h["pid"] for h in winlab.info["hosts"]}
    proc = winlab.irkit("lab", "up", "--inventory", str(winlab.inventory_path))
    assert proc.returncode == 0 and "nothing changed" in proc.stdout, proc.stdout + proc.stderr
    after = {h["name"]: h["pid"] for h in winlab.refresh()["hosts"]}
    assert before == after


def test_reimage_resets_the_model_and_issues_a_new_certificate(winlab):
    from ir_toolkit.lab import Lab

    info = winlab.refresh()
    win = _win(info)[1]
    lab = Lab(info["msp"], Path(info["lab_dir"]))
    ep = _endpoint(info, win, info["windows_shared_account"])
    members = ("Get-LocalGroupMember -Group 'Administrators' | Select-Object Name,ObjectClass,PrincipalSource,SID "
               "| ConvertTo-Json -Compress")
    with WinrmConnection.open(ep, password=info["windows_shared_password"]) as conn:
        assert f"{win['name'].upper()}\\\\msp-support" in conn.run(members).text
    new = lab.reimage(win["name"])
    assert new["certificate_sha256"] != win["certificate_sha256"] and not new["breached"]
    with WinrmConnection.open(ep, password=info["windows_shared_password"]) as conn:
        out = json.loads(conn.run(members).text)
        assert "msp-support" not in " ".join(m["Name"] for m in out)  # clean image: no breach
    winlab.refresh()
