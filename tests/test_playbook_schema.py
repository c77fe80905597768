"""Playbook validation: shipped playbooks load; bad ones get one line naming file, line and field (exit 2)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from ir_toolkit.errors import FileInputError
from ir_toolkit.inventory import load_inventory
from ir_toolkit.playbook.schema import Wave, load_playbook
from ir_toolkit.playbook.targets import make_waves, select_hosts

REPO = Path(__file__).resolve().parents[1]

GOOD = """\
name: test
phases:
  - name: preserve
    wave: {canary_tenant: globex, size: 4}
    max_fail_percentage: 20
    steps:
      - name: write marker
        action: file.write
        params: {path: /tmp/marker, content: "x\\n"}
        targets: {os: [linux]}
      - name: check marker
        action: file.check
        params: {path: /tmp/marker}
"""


def load_text(tmp_path: Path, text: str):
    path = tmp_path / "pb.yml"
    path.write_text(textwrap.dedent(text))
    return path, load_playbook(path)


def test_good_playbook_loads(tmp_path):
    _, loaded = load_text(tmp_path, GOOD)
    assert loaded.playbook.phases[0].steps[0].action == "file.write"
    assert loaded.step_params(0, 0).path == "/tmp/marker"


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "playbooks").glob("*.yml")))
def test_shipped_playbooks_load(name):
    load_playbook(REPO / "playbooks" / name)


BAD = {
    "unknown_action": (GOOD.replace("action: file.check", "action: file.chek"),
                       "{path}:12: phases[0].steps[1].action: unknown action 'file.chek' (known: "),
    "unknown_param": (GOOD.replace("params: {path: /tmp/marker}", "params: {path: /tmp/marker, colour: red}"),
                      "{path}:13: phases[0].steps[1].params.colour: unknown parameter for action 'file.check'"),
    "missing_param": (GOOD.replace('params: {path: /tmp/marker, content: "x\\n"}', "params: {path: /tmp/marker}"),
                      "{path}:9: phases[0].steps[0].params.content: required parameter is missing for action 'file.write'"),
    "unknown_key": (GOOD.replace("    max_fail_percentage: 20\n", "    max_fail_percentage: 20\n    serial: 5\n"),
                    "{path}:6: phases[0].serial: unknown key"),
    "bad_wave": (GOOD.replace("size: 4", "size: lots"),
                 "{path}:4: phases[0].wave.size: wave size is a host count or a percentage like '25%'"),
    "yaml": (GOOD + "  - [\n", "{path}:"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_playbooks(case, tmp_path):
    text, expected = BAD[case]
    path = tmp_path / "pb.yml"
    path.write_text(text)
    with pytest.raises(FileInputError) as exc:
        load_playbook(path)
    assert str(exc.value).startswith(expected.format(path=path))
    assert exc.value.exit_code == 2 and "\n" not in str(exc.value)


def test_cli_reports_bad_playbook_with_exit_2(tmp_path, capsys, irkit_home):
    from ir_toolkit.cli.main import main

    path = tmp_path / "pb.yml"
    path.write_text(BAD["unknown_param"][0])
    with pytest.raises(SystemExit) as exc:
        main(["plan", "--inventory", str(REPO / "inventories/acme.yml"), "--case", "T1", "--playbook", str(path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.startswith(f"irkit: error: {path}:13: phases[0].steps[1].params.colour: unknown parameter")


def test_waves_canary_first_then_batches():
    inv = load_inventory(REPO / "inventories/acme.yml")
    hosts = inv.hosts()
    waves = make_waves(hosts, Wave(canary_tenant="initech", size=4))
    assert [h.tenant for h in waves[0]] == ["initech"] * 4
    assert [len(w) for w in waves[1:]] == [4, 4, 4, 2]
    assert sum(len(w) for w in waves) == len(hosts) == 18
    assert [len(w) for w in make_waves(hosts, Wave(size="50%"))] == [9, 9]


def test_select_hosts_by_group_and_tenant():
    from ir_toolkit.playbook.schema import Targets

    inv = load_inventory(REPO / "inventories/acme.yml")
    assert [h.name for h in select_hosts(inv, Targets(groups=["database"]))] == ["globex-db01", "umbrella-ehr-db01"]
    assert len(select_hosts(inv, Targets(tenants=["vandelay"]))) == 2
