"""Inventory loading: the shipped example validates; each kind of bad input gets one exact line, exit 2."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from ir_toolkit.cli.main import main
from ir_toolkit.inventory import load_inventory

REPO = Path(__file__).resolve().parents[1]

GOOD = """\
version: 1
msp:
  name: acme
  shared_credentials:
    accounts:
      - user: mspadmin
  responder:
    key: file:/nonexistent/responder
    controller_address: 198.18.0.1
tenants:
  - name: globex
    hosts:
      - name: web01
        address: 198.18.1.20
      - name: db01
        address: 198.18.1.30
"""


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "inv.yml"
    path.write_text(textwrap.dedent(text))
    return path


def test_shipped_acme_inventory_validates(capsys):
    code, out, err = run_cli(["inventory", "validate", str(REPO / "inventories/acme.yml")], capsys)
    assert code == 0, err
    assert "ok: MSP acme, 5 tenants, 18 hosts" in out
    inv = load_inventory(REPO / "inventories/acme.yml")
    assert len(inv.tenants) >= 3 and len(inv.hosts()) >= 12
    assert all(h.address.startswith("198.18.") for h in inv.hosts())


def test_inventory_list_json_by_msp(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code, out, _ = run_cli(["inventory", "list", "--msp", "acme", "--format", "json"], capsys)
    assert code == 0
    rows = json.loads(out)
    assert len(rows) == 18 and sum(r["os"] == "windows" for r in rows) == 4
    assert {"tenant", "name", "address", "port", "os", "transport"} <= set(rows[0])
    assert rows[0] == {**rows[0], "tenant": "globex", "name": "globex-dc01", "address": "198.18.1.10",
                       "port": 22, "os": "linux", "transport": "ssh"}


def test_inventory_env_var_overrides_default(capsys, monkeypatch, tmp_path):
    path = write(tmp_path, GOOD)
    monkeypatch.setenv("IRKIT_INVENTORY", str(path))
    code, out, _ = run_cli(["inventory", "list", "--format", "json"], capsys)
    assert code == 0
    assert [r["name"] for r in json.loads(out)] == ["web01", "db01"]


BAD_CASES = {
    "yaml_syntax": (
        GOOD.replace("      - name: db01\n", "      - name: db01\n   bad: [unclosed\n"),
        "{path}:16: YAML syntax error: expected <block end>, but found '<block mapping start>'",
    ),
    "unknown_key": (
        GOOD.replace("        address: 198.18.1.30\n", "        address: 198.18.1.30\n        colour: blue\n"),
        "{path}:17: tenants[0].hosts[1].colour: unknown key",
    ),
    "duplicate_host_name": (
        GOOD.replace("name: db01", "name: web01"),
        "{path}:15: tenants[0].hosts[1].name: duplicate host name 'web01' (also in tenant 'globex')",
    ),
    "duplicate_address": (
        GOOD.replace("198.18.1.30", "198.18.1.20"),
        "{path}:16: tenants[0].hosts[1].address: duplicate address 198.18.1.20 (also host 'web01')",
    ),
    "host_in_no_tenant": (
        GOOD + "hosts:\n  - name: stray01\n    address: 198.18.9.9\n",
        "{path}:17: hosts: host in no tenant: list every host under tenants[].hosts",
    ),
    "invalid_address": (
        GOOD.replace("198.18.1.30", "198.18.1.300"),
        "{path}:16: tenants[0].hosts[1].address: invalid IP address '198.18.1.300'",
    ),
    "plaintext_secret": (
        GOOD.replace("key: file:/nonexistent/responder", "key: hunter2-not-a-reference"),
        "{path}:8: msp.responder.key: plaintext secret where a reference belongs "
        "(use env:NAME, file:PATH or escrow:...)",
    ),
    "plaintext_password_on_bmc": (
        GOOD.replace("        address: 198.18.1.30\n",
                     "        address: 198.18.1.30\n        bmc:\n          url: https://198.18.9.1\n"
                     "          password: S3cret!\n"),
        "{path}:19: tenants[0].hosts[1].bmc.password: plaintext secret where a reference belongs "
        "(use env:NAME, file:PATH or escrow:...)",
    ),
    "private_key_inline": (
        GOOD.replace("  name: acme\n", "  name: acme\n  display_name: |\n    -----BEGIN OPENSSH PRIVATE KEY-----\n"
                     "    b3BlbnNzaC1rZXktdjEAAAAA\n    -----END OPENSSH PRIVATE KEY-----\n"),
        "{path}:4: msp.display_name: plaintext secret where a reference belongs "
        "(use env:NAME, file:PATH or escrow:...)",
    ),
    "duplicate_yaml_key": (
        GOOD.replace("        address: 198.18.1.20\n", "        address: 198.18.1.20\n        address: 198.18.1.21\n"),
        "{path}:15: YAML syntax error: duplicate key 'address'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_inventory_one_line_exit_2(case, tmp_path, capsys):
    text, expected = BAD_CASES[case]
    path = write(tmp_path, text)
    code, out, err = run_cli(["inventory", "validate", str(path)], capsys)
    assert code == 2
    assert err == f"irkit: error: {expected.format(path=path)}\n"
    assert "Traceback" not in err and out == ""
    assert "hunter2" not in err and "S3cret" not in err


def test_missing_inventory_file(tmp_path, capsys):
    code, _, err = run_cli(["inventory", "validate", str(tmp_path / "nope.yml")], capsys)
    assert code == 2
    assert err == f"irkit: error: {tmp_path / 'nope.yml'}: inventory not found\n"


def test_unknown_command_and_option_are_usage_errors(capsys):
    code, _, err = run_cli(["inventory", "list", "--bogus"], capsys)
    assert code == 2 and err.startswith("irkit: error: No such option") and err.count("\n") == 1
