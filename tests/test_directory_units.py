"""Directory inventory, LDAP helpers and the directory pseudo-hosts (no lab needed)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from ir_toolkit.errors import FileInputError
from ir_toolkit.inventory.loader import load_inventory

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "inv.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def acme() -> dict:
    return yaml.safe_load((REPO / "inventories/acme.yml").read_text())


def _directory(data: dict) -> dict:
    return next(t for t in data["tenants"] if "directory" in t)["directory"]


def test_acme_directories_load_with_defaults(acme, tmp_path):
    inv = load_inventory(_write(tmp_path, acme))
    dirs = [t.directory for t in inv.tenants if t.directory]
    assert len(dirs) >= 2
    d = dirs[0]
    assert d.transport == "ldaps" and d.effective_port == 636 and d.realm == d.domain.upper()
    assert "Domain Admins" in d.guarded_groups and "DnsAdmins" in d.guarded_groups and len(d.guarded_groups) == 10
    assert d.allow_members == ["Administrator"]
    hosts = inv.directory_hosts()
    assert [h.name for h in hosts] == [x.domain for x in dirs]
    assert all(h.transport == "ldap" and h.os == "directory" and h.tenant for h in hosts)
    assert {h.name for h in inv.targets()} == {h.name for h in inv.hosts()} | {h.name for h in hosts}


@pytest.mark.parametrize("change, message", [
    (lambda d: d["bind"].__setitem__("password", "hunter2-in-the-clear"), "plaintext secret"),
    (lambda d: d.__setitem__("transport", "starttls"), "refused unless allow_insecure_transport"),
    (lambda d: d.__setitem__("transport", "plain"), "refused unless allow_insecure_transport"),
    (lambda d: d.pop("ca_file"), "ca_file"),
    (lambda d: d.__setitem__("domain", "not a domain"), "is not a DNS domain name"),
    (lambda d: d.__setitem__("netbios", "WAY-TOO-LONG-NETBIOS"), "NetBIOS"),
    (lambda d: d.__setitem__("msp_accounts", ["bad/name"]), "sAMAccountName"),
    (lambda d: d.__setitem__("domain_controllers", [{"host": "no-such-host"}]), "no host 'no-such-host'"),
    (lambda d: d.__setitem__("domain_controllers", [{"address": "198.18.1.5", "host": "x"}]), "exactly one"),
    (lambda d: d.__setitem__("surprise", 1), "unknown key"),
])
def test_bad_directory_config_is_one_line_with_file_and_line(acme, tmp_path, change, message):
    data = copy.deepcopy(acme)
    change(_directory(data))
    path = _write(tmp_path, data)
    with pytest.raises(FileInputError) as exc:
        load_inventory(path)
    text = str(exc.value)
    assert "\n" not in text and text.startswith(f"{path}:") and message.lower() in text.lower(), text


def test_insecure_transport_only_when_allowed(acme, tmp_path):
    data = copy.deepcopy(acme)
    d = _directory(data)
    d.update({"transport": "starttls", "allow_insecure_transport": True})
    inv = load_inventory(_write(tmp_path, data))
    assert next(t.directory for t in inv.tenants if t.directory).effective_port == 389


def test_msp_accounts_by_group_alone_are_enough(acme, tmp_path):
    data = copy.deepcopy(acme)
    d = _directory(data)
    d.pop("msp_accounts")
    d["msp_account_groups"] = ["ACME Support Staff"]
    load_inventory(_write(tmp_path, data))
    d.pop("msp_account_groups")
    with pytest.raises(FileInputError, match="name the MSP's accounts"):
        load_inventory(_write(tmp_path, data))


def test_domain_name_may_not_shadow_a_host(acme, tmp_path):
    data = copy.deepcopy(acme)
    tenant = next(t for t in data["tenants"] if "directory" in t)
    tenant["hosts"][0]["name"] = tenant["directory"]["domain"]
    with pytest.raises(FileInputError, match="also a host"):
        load_inventory(_write(tmp_path, data))


def test_ldap_filter_escaping_and_hostile_text():
    from ir_toolkit.transports.ldap import escape_filter, one_line

    assert escape_filter("a*b(c)\\d\0") == "a\\2ab\\28c\\29\\5cd\\00"
    assert one_line("evil\x1b[31mred\nline" + "x" * 500, 20) == "evil?[31mred?linexxx..."


def test_generated_passwords_meet_ad_complexity():
    from ir_toolkit.actions.directory import generate_password

    for _ in range(50):
        pw = generate_password(24)
        assert len(pw) == 24
        assert any(c.islower() for c in pw) and any(c.isupper() for c in pw)
        assert any(c.isdigit() for c in pw) and any(not c.isalnum() for c in pw)
        assert '"' not in pw  # unicodePwd quotes the value


def test_generalized_time_parsing():
    from ir_toolkit.actions.directory import _when

    when = _when("20261130082157.0Z")
    assert when is not None and when.year == 2026 and when.tzinfo is not None
    assert _when("garbage") is None and _when(None) is None


def test_containment_playbook_has_the_directory_phase_after_preserve():
    from ir_toolkit.playbook.schema import load_playbook

    loaded = load_playbook(REPO / "playbooks/msp-breach-containment.yml")
    names = [p.name for p in loaded.playbook.phases]
    assert names.index("preserve") < names.index("directory") < names.index("rotate")
    actions = [s.action for s in loaded.playbook.phases[names.index("directory")].steps]
    assert actions[0] == "directory.collect_evidence"  # evidence before anything changes


def test_generated_lab_inventory_with_directories_loads(tmp_path):
    from ir_toolkit.lab.generate import generate_inventory, write_inventory

    path = tmp_path / "g.yml"
    write_inventory(path, generate_inventory(msp="g", tenants=3, hosts_per_tenant=2, base="198.19.0.0/22",
                                             directories=2))
    inv = load_inventory(path)
    assert [h.name for h in inv.directory_hosts()] == ["t001.lab", "t002.lab"]


def test_ticket_caches_of_dead_runs_are_removed(tmp_path, monkeypatch):
    """A kill -9 leaves a ticket cache (a TGT) behind: the next Kerberos proof deletes it."""
    import tempfile

    from ir_toolkit.transports import kerberos

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = tmp_path / "irkit-krb5-999999999-abc"
    dead.mkdir()
    (dead / "ccache").write_bytes(b"TGT")
    alive = tmp_path / f"irkit-krb5-{__import__('os').getppid()}-xyz"
    alive.mkdir()
    cache = kerberos.TicketCache("EXAMPLE.TEST", "198.18.0.9")
    try:
        assert not dead.exists() and alive.exists() and cache.dir.parent == tmp_path
        assert "198.18.0.9" in (cache.dir / "krb5.conf").read_text()
    finally:
        cache.close()
    assert not cache.dir.exists()
