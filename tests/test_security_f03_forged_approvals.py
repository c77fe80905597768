"""Finding 3 (security review of 0085039): signed N-of-M approvals could be forged or double-counted.

On 0085039 any Ed25519 key counted for an approver without ``approval_key`` (every shipped approver),
one key could sign as several approvers, and the responder's ``--yes`` plus an approval signed with
the responder's own key counted twice (poc_misc.py §3: a key nobody registered gave globex its 2).
Now an approver needs a pinned ``approval_key`` (the loader refuses one without: one line, exit 2),
distinct keys count, and the responder's own key counts once.

Fails on 0085039: the PoC's inventory loaded and ``valid_approvals`` returned both names for globex
with no problem; a duplicated pinned key counted twice; the responder's key counted on top of --yes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from ir_toolkit.inventory import load_inventory
from ir_toolkit.inventory.model import Inventory
from ir_toolkit.playbook.approvals import valid_approvals, write_approval
from ir_toolkit.playbook.plan import Plan, PlanItem
from ir_toolkit.secrets import keystore
from ir_toolkit.tlog.note import Signer

REPO = Path(__file__).resolve().parents[1]
IRKIT = str(Path(sys.executable).with_name("irkit"))


def poc_inventory(dana: dict, hank: dict) -> dict:
    return {"msp": {"name": "acme", "responder": {"key": "file:/x", "controller_address": "10.0.0.1"},
                    "contacts": [{"name": "Dana Whitfield", "approver": True, **dana}]},
            "tenants": [{"name": "globex", "approvals_required": 2,
                         "contacts": [{"name": "Hank Scorpio", "approver": True, **hank}], "hosts": []}]}


def make_plan(case: str) -> Plan:
    item = PlanItem(id="contain/0/globex-web01", phase="contain", phase_index=0, step="write", step_index=0,
                    tenant="globex", host="globex-web01", action="file.write", params={}, requires_approval=True,
                    destructive=False, change={"changed": True, "summary": "would write"})
    return Plan(case=case, msp="acme", playbook_path="p.yml", playbook_sha256="0" * 64, inventory_path="i.yml",
                inventory_sha256="0" * 64, items=[item])


def test_poc_approver_without_a_pinned_key_is_refused_by_the_loader(irkit_home, tmp_path, capsys):
    """poc_misc.py §3, ported: the PoC's inventory (approvers without approval_key) no longer loads."""
    with pytest.raises(ValidationError, match="has no approval_key"):
        Inventory.model_validate(poc_inventory({}, {}))
    data = yaml.safe_load((REPO / "inventories/acme.yml").read_text())
    del data["tenants"][0]["contacts"][0]["approval_key"]
    path = tmp_path / "acme.yml"
    path.write_text(yaml.safe_dump(data))
    from ir_toolkit.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["inventory", "validate", str(path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "has no approval_key" in err, err
    assert "Hank Scorpio" in err and "Traceback" not in err
    # the shipped inventory pins every approver's key (a file the lab writes)
    inv = load_inventory(REPO / "inventories/acme.yml")
    approvers = [c for c in (*inv.msp.contacts, *(c for t in inv.tenants for c in t.contacts)) if c.approver]
    assert approvers and all(c.approval_key.startswith("file:${IRKIT_HOME}/lab/acme/approvers/")
                             for c in approvers)


def test_poc_unregistered_key_counts_for_nobody(irkit_home):
    dana, hank, mallory = Signer.generate("dana"), Signer.generate("hank"), Signer.generate("mallory/laptop")
    inv = Inventory.model_validate(poc_inventory({"approval_key": dana.verifier_key()},
                                                 {"approval_key": hank.verifier_key()}))
    plan = make_plan("F03-1")
    plan.save()
    write_approval(plan, plan.path(), "Hank Scorpio", mallory)
    write_approval(plan, plan.path(), "Dana Whitfield", mallory)
    found, problems = valid_approvals(plan, inv)
    assert found == {"globex": set()}
    assert len(problems) == 2 and all("not signed with the approval_key pinned" in p for p in problems)
    write_approval(plan, plan.path(), "Hank Scorpio", hank)
    write_approval(plan, plan.path(), "Dana Whitfield", dana)
    assert valid_approvals(plan, inv)[0] == {"globex": {"Hank Scorpio", "Dana Whitfield"}}


def test_one_key_pinned_for_two_approvers_counts_once(irkit_home):
    shared = Signer.generate("shared")
    inv = Inventory.model_validate(poc_inventory({"approval_key": shared.verifier_key()},
                                                 {"approval_key": shared.verifier_key()}))
    plan = make_plan("F03-2")
    plan.save()
    write_approval(plan, plan.path(), "Hank Scorpio", shared)
    write_approval(plan, plan.path(), "Dana Whitfield", shared)
    found, problems = valid_approvals(plan, inv)
    assert len(found["globex"]) == 1
    assert any("keys count, not names" in p for p in problems)


def test_the_responders_own_key_and_confirmation_count_once(irkit_home):
    responder = Signer.generate("ctl/irkit-responder")
    # the responder is also listed as an approver (e.g. the incident commander running irkit)
    inv = Inventory.model_validate(poc_inventory({"approval_key": responder.verifier_key()},
                                                 {"approval_key": Signer.generate("hank").verifier_key()}))
    plan = make_plan("F03-3")
    plan.save()
    write_approval(plan, plan.path(), "Dana Whitfield", responder)          # `irkit approve --as` + --yes
    found, problems = valid_approvals(plan, inv, responder_key=responder.public)
    assert found == {"globex": set()} and any("responder's own key" in p for p in problems)
    # without the responder's own confirmation, the same signature is one approval
    assert valid_approvals(plan, inv)[0] == {"globex": {"Dana Whitfield"}}


def test_approval_key_file_reference_is_read_and_a_missing_file_counts_nothing(irkit_home, tmp_path):
    hank = Signer.generate("hank")
    vkey = tmp_path / "hank.vkey"
    inv = Inventory.model_validate(poc_inventory({"approval_key": Signer.generate("d").verifier_key()},
                                                 {"approval_key": f"file:{vkey}"}))
    plan = make_plan("F03-4")
    plan.save()
    write_approval(plan, plan.path(), "Hank Scorpio", hank)
    found, problems = valid_approvals(plan, inv)
    assert found == {"globex": set()} and any("cannot read" in p for p in problems)
    vkey.write_text(hank.verifier_key() + "\n")
    assert valid_approvals(plan, inv)[0] == {"globex": {"Hank Scorpio"}}


# --------------------------------------------------------------------------- 2-of-M on a lab

PLAYBOOK = """\
version: 1
name: f03-approvals
defaults: {timeout: 30, retries: 0, host_timeout: 120, connect_timeout: 10}
phases:
  - name: change
    steps:
      - name: write approved marker
        action: file.write
        params: {path: /var/tmp/irkit-f03-marker, content: "approved\\n"}
        requires_approval: true
"""


@pytest.mark.lab
def test_two_of_m_with_the_lab_approver_keys_and_no_double_counting(lab_factory, tmp_path):
    lab = lab_factory("fthree", tenants=1, hosts_per_tenant=1)
    env = {**os.environ, "IRKIT_HOME": str(lab.home), "IRKIT_KEY_PASSPHRASE": "f03-lab-passphrase",
           keystore.TEST_SCRYPT_ENV: "10"}
    env.pop("IRKIT_INVENTORY", None)

    def cli(*args):
        return subprocess.run([IRKIT, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)

    assert cli("keys", "init", "--if-missing").returncode == 0
    inv = yaml.safe_load(Path(lab.inventory_path).read_text())
    tenant = inv["tenants"][0]
    approver = tenant["contacts"][0]
    vkey_file = Path(approver["approval_key"][len("file:"):].replace("${IRKIT_HOME}", str(lab.home)))
    key_file = vkey_file.with_suffix(".key")
    assert vkey_file.exists() and key_file.exists() and oct(key_file.stat().st_mode & 0o777) == "0o600"
    tenant["approvals_required"] = 2
    inv_path = tmp_path / "inv.yml"
    inv_path.write_text(yaml.safe_dump(inv))
    pb = tmp_path / "pb.yml"
    pb.write_text(PLAYBOOK)
    host = tenant["hosts"][0]["name"]
    lab.exec(host, "rm -f /var/tmp/irkit-f03-marker")
    plan = json.loads(cli("plan", "--inventory", str(inv_path), "--playbook", str(pb), "--case", "F03-LAB",
                          "--format", "json").stdout)
    # the responder signs as the approver with its own key: still 1 of 2
    assert cli("approve", plan["path"], "--as", approver["name"]).returncode == 0
    proc = cli("apply", plan["path"], "--yes", "--format", "json")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["hosts"][host]["message"] == f"awaiting approval: 1 of 2 approvals for tenant {tenant['name']}"
    assert lab.exec(host, "test -e /var/tmp/irkit-f03-marker").returncode != 0
    # the approver signs with the key the lab made for them: 2 of 2
    proc = cli("approve", plan["path"], "--as", approver["name"], "--key", str(key_file))
    assert proc.returncode == 0, proc.stderr
    proc = cli("resume", "--case", "F03-LAB", "--format", "json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["ok"] is True, proc.stdout + proc.stderr
    assert lab.exec(host, "cat /var/tmp/irkit-f03-marker").stdout == b"approved\n"
