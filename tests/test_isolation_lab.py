"""`irkit isolate` / `--release` on a real lab with real nftables: cut off from other hosts, the controller
keeps access (new and established sessions), release restores the exact previous ruleset, and the
safety nets (controller address check, watchdog) work."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from containment_helpers import home, irkit, key_login, keyed_env, tcp_reach

pytestmark = pytest.mark.lab

CASE = "ISO-1"
CUSTOM = ("nft add table ip custom && "
          "nft add chain ip custom c '{ type filter hook input priority 10; policy accept; }' && "
          "nft add rule ip custom c tcp dport 9999 counter accept && "
          "nft add table inet other && nft add set inet other s '{ type ipv4_addr; }' && "
          "nft add element inet other s '{ 192.0.2.7 }'")


@pytest.fixture(scope="module")
def iso(lab_factory):
    return lab_factory("iso", tenants=1, hosts_per_tenant=3)


@pytest.fixture(scope="module")
def env(iso):
    return keyed_env(iso)


def _ruleset(lab, name: str) -> bytes:
    return lab.exec(name, "nft -s list ruleset").stdout


def test_isolate_then_release_restores_exactly(iso, env):
    from ir_toolkit.inventory import load_inventory
    from ir_toolkit.transports.pool import ConnectionPool

    a, b, c = iso.info["hosts"]
    responder = iso.info["responder_private_key"]
    iso.exec(a["name"], CUSTOM)
    before = _ruleset(iso, a["name"])
    assert b"table ip custom" in before
    assert all(tcp_reach(iso, b["name"], [a, c]).values())
    # an established session from the controller, opened before isolation, must survive it
    with home(env):
        inventory = load_inventory(iso.inventory_path)
        fleet = ConnectionPool(inventory, None)
        conn = fleet.connection(inventory.host(a["name"]), time.monotonic() + 30)
    try:
        # isolation is destructive: refused without collected evidence
        refused = irkit(env, "isolate", "--inventory", str(iso.inventory_path), "--case", CASE, "--host", a["name"],
                        "--yes", "--format", "json")
        assert refused.returncode == 1 and "no verified evidence" in refused.stdout
        assert _ruleset(iso, a["name"]) == before
        irkit(env, "isolate", "--inventory", str(iso.inventory_path), "--case", CASE, "--host", a["name"],
              "--evidence-override", "test", "--allow", "192.0.2.0/24", "--yes", check=0)
        assert conn.run("echo still-here").text == "still-here\n"
    finally:
        conn.close()
    assert not any(tcp_reach(iso, b["name"], [a]).values()), "another host still reaches the isolated one"
    assert not any(tcp_reach(iso, a["name"], [b, c]).values()), "the isolated host still reaches others"
    assert all(tcp_reach(iso, b["name"], [c]).values()), "hosts not isolated are untouched"
    assert key_login(iso, a, "root", responder), "the controller lost access"
    table = iso.exec(a["name"], "nft list table inet irkit_isolation").stdout.decode()
    assert "policy drop" in table and iso.info["controller_address"] in table and "192.0.2.0/24" in table
    assert b"table ip custom" in _ruleset(iso, a["name"])  # other tables untouched
    # idempotent
    again = irkit(env, "isolate", "--inventory", str(iso.inventory_path), "--case", CASE, "--host", a["name"],
                  "--evidence-override", "test", "--allow", "192.0.2.0/24", "--yes", check=0)
    assert "nothing changed" in again.stdout
    # release: exactly the previous ruleset, and the host is reachable again
    irkit(env, "isolate", "--inventory", str(iso.inventory_path), "--case", CASE, "--host", a["name"],
          "--release", "--yes", check=0)
    assert _ruleset(iso, a["name"]) == before
    assert all(tcp_reach(iso, b["name"], [a]).values())
    again = irkit(env, "isolate", "--inventory", str(iso.inventory_path), "--case", CASE, "--host", a["name"],
                  "--release", "--yes", check=0)
    assert "nothing changed" in again.stdout
    from ir_toolkit.audit.log import iter_records

    with home(env):
        actions = [r["action"] for r in iter_records(CASE)]
    assert "host.isolated" in actions and "host.released" in actions and "gate.override" in actions
    assert irkit(env, "audit", "verify", "--case", CASE).returncode == 0


def test_refuses_when_the_controller_would_be_cut_off(iso, env, tmp_path):
    """If irkit reaches the host from an address the rules would not allow, it does not isolate."""
    a = iso.info["hosts"][1]
    data = yaml.safe_load(Path(iso.inventory_path).read_text())
    data["msp"]["responder"]["controller_address"] = "192.0.2.99"
    bad = tmp_path / "inventory.yml"
    bad.write_text(yaml.safe_dump(data))
    before = _ruleset(iso, a["name"])
    proc = irkit(env, "isolate", "--inventory", str(bad), "--case", "ISO-BAD", "--host", a["name"],
                 "--evidence-override", "test", "--yes", "--format", "json")
    assert proc.returncode == 1
    message = json.loads(proc.stdout)["hosts"][a["name"]]["message"]
    # refused at the first step that depends on it: the case key's from= (or the isolation itself)
    assert "which is not the controller_address" in message and "refusing to" in message
    assert _ruleset(iso, a["name"]) == before


def test_watchdog_releases_a_host_irkit_cannot_confirm(iso, env):
    """The host removes the table by itself unless irkit disarms the watchdog after a fresh login."""
    from ir_toolkit.actions.base import ActionContext
    from ir_toolkit.actions.isolation import IsolateHost, IsolateParams, ruleset
    from ir_toolkit.deadline import Deadline
    from ir_toolkit.inventory import load_inventory
    from ir_toolkit.transports.pool import ConnectionPool

    c = iso.info["hosts"][2]
    with home(env):
        inventory = load_inventory(iso.inventory_path)
        fleet = ConnectionPool(inventory, None)
        host = inventory.host(c["name"])
        conn = fleet.connection(host, time.monotonic() + 30)
        try:
            ctx = ActionContext(host, inventory, "ISO-WD", conn, Deadline.after(60), pool=fleet)
            action = IsolateHost()
            from ir_toolkit.actions.isolation import allowed_networks

            script, _ = ruleset(allowed_networks(ctx, IsolateParams()), "ISO-WD")
            action._arm_watchdog(ctx, 2)
            assert conn.run("nft -f -", stdin=script.encode()).ok
            assert conn.run("nft list table inet irkit_isolation").ok
            time.sleep(3.5)
            assert not conn.run("nft list table inet irkit_isolation").ok, "watchdog did not release"
            # a disarmed watchdog does nothing
            pid = action._arm_watchdog(ctx, 2)
            assert conn.run("nft -f -", stdin=script.encode()).ok
            action._disarm(ctx, pid)
            time.sleep(3)
            assert conn.run("nft list table inet irkit_isolation").ok, "disarmed watchdog still fired"
            assert conn.run("nft delete table inet irkit_isolation").ok
        finally:
            fleet.close()
