"""The lab's pure parts: naming, planning, inventory generation, keys, state, CLI errors."""

from __future__ import annotations

import ipaddress
import json
import os
import stat
import subprocess
import warnings
from pathlib import Path

import pytest

from ir_toolkit.cli.main import main
from ir_toolkit.errors import InputError
from ir_toolkit.inventory import load_inventory
from ir_toolkit.lab import host as labhost
from ir_toolkit.lab.generate import generate_inventory, write_inventory
from ir_toolkit.lab.layout import IFNAMSIZ, MAX_SLOT, LabPaths, bridge_name, lab_id, netns_name, veth_name
from ir_toolkit.lab.plan import assign_slots, covering_network, plan_lab
from ir_toolkit.lab.sshkeys import (
    ensure_keypair,
    ensure_password,
    fingerprint,
    known_hosts_line,
    sha512_crypt,
)
from ir_toolkit.lab.state import HostState, LabState, load_state

REPO = Path(__file__).resolve().parents[1]
ACME = REPO / "inventories" / "acme.yml"


def test_kernel_names_fit_ifnamsiz_and_differ_per_lab(tmp_path):
    a = lab_id("acme", tmp_path / "a")
    b = lab_id("acme", tmp_path / "b")
    c = lab_id("globex", tmp_path / "a")
    assert len({a, b, c}) == 3 and all(len(x) == 6 for x in (a, b, c))
    assert len(bridge_name(a)) <= IFNAMSIZ
    assert len(veth_name(a, MAX_SLOT)) <= IFNAMSIZ
    with pytest.raises(ValueError):
        veth_name(a, MAX_SLOT + 1)
    assert netns_name(a, "globex-dc01", 3) == f"irk-{a}-globex-dc01"
    assert netns_name(a, "x" * 100, 3) == f"irk-{a}-h3"


def test_acme_plan_network_is_the_smallest_cover():
    plan = plan_lab(load_inventory(ACME))
    assert plan.controller_address == "198.18.0.1"
    assert plan.network == ipaddress.ip_network("198.18.0.0/21")
    assert len(plan.hosts) == 18 and not plan.skipped
    assert sum(h.os == "windows" for h in plan.hosts) == 4 and plan.windows is not None
    assert {h.tenant for h in plan.hosts} == {"globex", "initech", "umbrella", "vandelay", "wayne"}
    assert all(h.port == (5986 if h.os == "windows" else 22) for h in plan.hosts)


def test_covering_network_avoids_network_and_broadcast_addresses():
    pts = [ipaddress.IPv4Address("198.19.0.1"), ipaddress.IPv4Address("198.19.0.3")]
    net = covering_network(pts, [])
    assert net == ipaddress.ip_network("198.19.0.0/29")  # /30 would make .3 the broadcast address


def _write_inv(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "inv.yml"
    write_inventory(path, data, force=True)
    return path


def test_plan_refuses_addresses_outside_the_lab_range(tmp_path):
    data = generate_inventory(msp="outside", tenants=1, hosts_per_tenant=2, base="198.18.0.0/16")
    data["tenants"][0]["hosts"][1]["address"] = "10.0.0.5"
    with pytest.raises(InputError, match="outside 198.18.0.0/15"):
        plan_lab(load_inventory(_write_inv(tmp_path, data)))
    data = generate_inventory(msp="outside", tenants=1, hosts_per_tenant=2, base="198.18.0.0/16")
    data["tenants"][0]["hosts"][0]["address"] = data["msp"]["responder"]["controller_address"]
    with pytest.raises(InputError, match="controller's address"):
        plan_lab(load_inventory(_write_inv(tmp_path, data)))


def test_slots_are_stable_and_reuse_free_numbers():
    first = assign_slots(["a", "b", "c"], {})
    assert first == {"a": 0, "b": 1, "c": 2}
    again = assign_slots(["c", "d", "a"], first)  # b removed, d added
    assert again["a"] == 0 and again["c"] == 2 and again["d"] == 1


def test_generate_writes_a_valid_inventory_referencing_the_lab_files(tmp_path):
    out = tmp_path / "scale.yml"
    with pytest.raises(SystemExit) as exc:
        main(["lab", "generate", "--tenants", "3", "--hosts-per-tenant", "4", "--msp", "scale",
              "--out", str(out), "--base", "198.19.0.0/16"])
    assert exc.value.code == 0
    inv = load_inventory(out)
    assert inv.msp.name == "scale" and len(inv.tenants) == 3 and len(inv.hosts()) == 12
    assert inv.msp.responder.controller_address == "198.19.0.1"
    assert inv.msp.responder.key == "file:${IRKIT_HOME}/lab/scale/responder_ed25519"
    assert inv.msp.known_hosts == "${IRKIT_HOME}/lab/scale/known_hosts"
    assert inv.msp.shared_credentials.ssh_keys[0].public_key_file == "${IRKIT_HOME}/lab/scale/msp_shared_ed25519.pub"
    assert [a.user for a in inv.msp.shared_credentials.accounts] == ["mspadmin"]
    for i, tenant in enumerate(inv.tenants, start=1):
        assert tenant.subnet == f"198.19.{i}.0/24"
        assert all(ipaddress.ip_address(h.address) in ipaddress.ip_network(tenant.subnet) for h in tenant.hosts)
    plan = plan_lab(inv)
    assert plan.network.subnet_of(ipaddress.ip_network("198.19.0.0/16"))
    # a second write without --force is refused with exit 2
    with pytest.raises(SystemExit) as exc:
        main(["lab", "generate", "--tenants", "1", "--hosts-per-tenant", "1", "--msp", "scale", "--out", str(out)])
    assert exc.value.code == 2


def test_generate_big_and_bad_inputs():
    big = generate_inventory(msp="big", tenants=50, hosts_per_tenant=20)
    assert sum(len(t["hosts"]) for t in big["tenants"]) == 1000
    wide = generate_inventory(msp="wide", tenants=2, hosts_per_tenant=300)
    assert wide["tenants"][0]["subnet"].endswith("/23")
    with pytest.raises(InputError, match="inside 198.18.0.0/15"):
        generate_inventory(msp="x", tenants=1, hosts_per_tenant=1, base="10.0.0.0/16")
    with pytest.raises(InputError, match="holds at most"):
        generate_inventory(msp="x", tenants=4, hosts_per_tenant=10, base="198.19.0.0/22")
    with pytest.raises(InputError, match="not a valid name"):
        generate_inventory(msp="Bad Name", tenants=1, hosts_per_tenant=1)


def test_keys_fingerprints_and_known_hosts_match_openssh(tmp_path):
    key = tmp_path / "k_ed25519"
    public, created = ensure_keypair(key, "test@lab")
    assert created and stat.S_IMODE(key.stat().st_mode) == 0o600
    again, created2 = ensure_keypair(key, "other")
    assert again == public and not created2
    out = subprocess.run(["ssh-keygen", "-lf", str(key)], capture_output=True, text=True, check=True).stdout
    assert out.split()[1] == fingerprint(public)
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(key)], capture_output=True, text=True, check=True).stdout
    assert derived.split()[:2] == public.split()[:2]
    assert known_hosts_line("198.18.1.10", 22, public) == f"198.18.1.10 {' '.join(public.split()[:2])}"
    assert known_hosts_line("198.18.1.10", 2222, public).startswith("[198.18.1.10]:2222 ssh-ed25519 AAAA")


def test_password_file_and_crypt_hash(tmp_path):
    path = tmp_path / "pw"
    value, created = ensure_password(path)
    assert created and stat.S_IMODE(path.stat().st_mode) == 0o600 and len(value) == 20
    assert ensure_password(path) == (value, False)
    hashed = sha512_crypt(value)
    assert hashed.startswith("$6$")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        crypt = pytest.importorskip("crypt")
    assert crypt.crypt(value, hashed) == hashed
    assert crypt.crypt(value + "x", hashed) != hashed


def test_state_round_trip_is_atomic(tmp_path):
    state = LabState(msp="m", lab_id="abcdef", inventory="/i.yml", network="198.19.0.0/22",
                     controller_address="198.19.0.1", bridge="irkabcdefbr")
    state.hosts["h1"] = HostState(name="h1", tenant="t", slot=0, address="198.19.1.10", port=22,
                                  netns="irk-abcdef-h1", veth="irkabcdefh0", init_pid=5, init_start=9)
    path = tmp_path / "state.json"
    state.save(path)
    assert load_state(path) == state
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
    assert load_state(tmp_path / "missing.json") is None
    path.write_text("{not json")
    with pytest.raises(InputError, match="unreadable lab state"):
        load_state(path)


def test_init_script_is_valid_sh_and_fstab_escapes_paths(tmp_path):
    subprocess.run(["sh", "-n"], input=labhost.INIT_SCRIPT, text=True, check=True)
    paths = LabPaths(tmp_path / "a b")
    h = HostState(name="h1", tenant="t", slot=0, address="198.19.1.10", port=22, netns="n", veth="v")
    text = labhost.fstab(paths, h)
    assert "a\\040b" in text and " a b" not in text
    first = text.splitlines()[0].split()
    assert first[2] == "overlay" and first[3].startswith(f"lowerdir={paths.breach}:".replace(" ", "\\040"))
    assert any(line.split()[1].endswith("/usr") and "bind,ro" in line for line in text.splitlines())


@pytest.mark.parametrize("args", [
    ["lab", "up", "--msp", "acme"],
    ["lab", "down", "--msp", "acme"],
    ["lab", "status", "--msp", "acme"],
    ["lab", "info", "--msp", "acme", "--format", "json"],
    ["lab", "exec", "--msp", "acme", "globex-dc01", "--", "true"],
])
def test_not_root_is_a_clear_environment_error(monkeypatch, capsys, args):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 4
    err = capsys.readouterr().err
    assert err == "irkit: error: the lab needs root (network namespaces); run as root\n"


def test_commands_on_a_lab_that_is_not_up(irkit_home, capsys):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with pytest.raises(SystemExit) as exc:
        main(["lab", "info", "--msp", "nolab", "--format", "json"])
    assert exc.value.code == 2
    assert "the lab of MSP nolab is not up" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["lab", "status", "--msp", "nolab", "--format", "json"])
    assert exc.value.code == 1
    assert json.loads(capsys.readouterr().out) == {"msp": "nolab", "up": False, "healthy": False, "hosts": []}
    with pytest.raises(SystemExit) as exc:
        main(["lab", "down", "--msp", "nolab"])
    assert exc.value.code == 0
    assert "not up" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["lab", "exec", "--msp", "nolab", "h1"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["lab", "up", "--msp", "Bad/Name"])
    assert exc.value.code == 2


def _fake_lab_state(msp: str) -> None:
    from ir_toolkit.lab.fleet import Lab
    from ir_toolkit.lab.state import LabState

    lab = Lab(msp)
    lab.paths.root.mkdir(parents=True, exist_ok=True)
    LabState(msp, lab.lab_id, f"inventories/{msp}.yml", "198.19.200.0/24", "198.19.200.1",
             "irkbr-test").save(lab.paths.state)


def test_lab_info_and_exec_use_the_one_lab_that_is_up(irkit_home, capsys, monkeypatch):
    """README tour: `irkit lab info --format json` without --msp; none or several labs: one line, exit 2."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    monkeypatch.delenv("IRKIT_INVENTORY", raising=False)
    for args in (["lab", "info", "--format", "json"], ["lab", "exec", "h1", "--", "true"]):
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "no lab is up" in err and "irkit lab up --msp NAME" in err and len(err.strip().splitlines()) == 1
    _fake_lab_state("solo")
    with pytest.raises(SystemExit) as exc:
        main(["lab", "info", "--format", "json"])
    assert exc.value.code == 0
    assert json.loads(capsys.readouterr().out)["msp"] == "solo"
    with pytest.raises(SystemExit) as exc:
        main(["lab", "exec", "nohost", "--", "true"])
    assert exc.value.code == 2 and "no host 'nohost' in the lab of MSP solo" in capsys.readouterr().err
    _fake_lab_state("duo")
    with pytest.raises(SystemExit) as exc:
        main(["lab", "info", "--format", "json"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "2 labs are up (duo, solo): name one with --msp NAME" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exc:
        main(["lab", "info", "--msp", "solo", "--format", "json"])
    assert exc.value.code == 0 and json.loads(capsys.readouterr().out)["msp"] == "solo"
