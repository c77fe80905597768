"""Security review finding 6 on the lab: isolation ends the intruder's live sessions.

Before ``irkit contain`` starts, a real TCP session runs between two lab hosts in each direction (a
beacon on one host writes a line every 0.1 s to a collector on another, over one connection), and
the controller holds an SSH session of its own. Once the hosts are isolated the intruder's sessions
carry no data and their sockets are gone on both ends, while the controller's session and fresh
logins still work.

The lab hosts run a connection-tracking host firewall by default (an nftables table with ``ct state``
rules, like ufw/firewalld), so the sessions are tracked flows, as on a real server: with the old
``ct state established,related accept`` isolation they kept flowing. The same is checked on a lab
booted with ``--no-host-firewall``, where nothing is tracked before irkit's table loads.
"""

from __future__ import annotations

import time

import pytest

from containment_helpers import contain_playbook, home, irkit, key_login, keyed_env, summary

pytestmark = pytest.mark.lab

CASE = "F06-1"


@pytest.fixture(scope="module", params=["host-firewall", "no-host-firewall"])
def live(request, lab_factory):
    """With the host firewall, the outbound session is the hostile lab kind ``session`` of t001-h001."""
    if request.param == "host-firewall":
        lab = lab_factory("f06fw", tenants=1, hosts_per_tenant=3, hostile={"t001-h001": "session"})
    else:
        lab = lab_factory("f06nf", tenants=1, hosts_per_tenant=3, up_args=("--no-host-firewall",))
    return request.param, lab, keyed_env(lab)


def _flowing(session, seconds: float = 1.5) -> int:
    before = session.received()
    time.sleep(seconds)
    return session.received() - before


def test_f06_sessions_opened_before_contain_carry_no_data_after_isolation(live, tmp_path):
    from ir_toolkit.inventory import load_inventory
    from ir_toolkit.lab.intruder import LiveSession, start_live_session
    from ir_toolkit.transports.pool import ConnectionPool

    mode, lab, env = live
    a, b, c = lab.info["hosts"]
    assert all(h["host_firewall"] is (mode == "host-firewall") for h in lab.info["hosts"])
    # the intruder: a beacon on a -> collector on b (outbound from a), and c -> a (inbound to a)
    if mode == "host-firewall":  # opened by `irkit lab up --hostile t001-h001=session`
        out = LiveSession(lab.lab, a["name"], b["name"], b["address"], port=8443)
        assert out.beacon_running()
    else:
        out = start_live_session(lab.lab, a["name"], b["name"], b["address"], port=8443)
    inbound = start_live_session(lab.lab, c["name"], a["name"], a["address"], port=8444)
    sessions = (out, inbound)
    try:
        assert all(_flowing(s, 0.6) > 0 for s in sessions)
        tracked = lab.exec(a["name"], "conntrack -L 2>/dev/null").stdout.decode()
        if mode == "host-firewall":  # the lab does not hide the bug: these are tracked, established flows
            assert "ESTABLISHED" in tracked and "dport=8443" in tracked and "dport=8444" in tracked, tracked
        else:
            assert "dport=844" not in tracked, tracked
        # the controller's own session, opened before contain, must survive it
        with home(env):
            inventory = load_inventory(lab.inventory_path)
            fleet = ConnectionPool(inventory, None)
            conn = fleet.connection(inventory.host(a["name"]), time.monotonic() + 30)
        try:
            playbook = contain_playbook(lab, tmp_path / "contain.yml", phases=["access", "isolate"])
            proc = irkit(env, "contain", "--inventory", str(lab.inventory_path), "--playbook", str(playbook),
                         "--case", f"{CASE}-{mode}", "--yes", "--format", "json", check=0)
            assert summary(proc)["ok"] is True
            # no data any more, in either direction, and the sockets are gone on both ends
            assert [_flowing(s) for s in sessions] == [0, 0]
            for session in sessions:
                for host in (session.beacon_host, session.collector_host):
                    assert session.sockets(host).strip() == "", (host, session.sockets(host))
            assert "write failed" in out.beacon_log() and "write failed" in inbound.beacon_log()
            left = lab.exec(a["name"], "conntrack -L 2>/dev/null").stdout.decode()
            assert "dport=8443" not in left and "dport=8444" not in left, left
            # the controller keeps its session and can log in afresh
            assert conn.run("echo still-here").text == "still-here\n"
        finally:
            fleet.close()
        for host in (a, b, c):
            assert key_login(lab, host, "root", lab.info["responder_private_key"]), host["name"]
        # what was cut is in the audit log
        from ir_toolkit.audit.log import iter_records

        with home(env):
            records = [r for r in iter_records(f"{CASE}-{mode}") if r["action"] == "host.isolated"]
        cut = {r["host"]: r["params"]["flows_cut"] for r in records}
        assert b["address"] in cut[a["name"]]["peers"] and c["address"] in cut[a["name"]]["peers"]
        assert lab.info["controller_address"] not in cut[a["name"]]["peers"]
        assert all(not v["sockets_left"] for v in cut.values())
    finally:
        for session in sessions:
            session.stop()
