"""Approvals: signatures bound to a plan hash, counted only for the tenant's (or MSP's) approvers."""

from __future__ import annotations

from pathlib import Path

import yaml

from ir_toolkit.tlog.note import Signer
from ir_toolkit.inventory import load_inventory
from ir_toolkit.playbook.approvals import valid_approvals, write_approval
from ir_toolkit.playbook.plan import Plan, PlanItem

REPO = Path(__file__).resolve().parents[1]


def signer_with_plus_in_key(name: str) -> Signer:
    """A key whose verifier string has '+' inside its base64 part (the separator of the format)."""
    for seed in range(10_000):
        signer = Signer.from_seed(name, seed.to_bytes(32, "big"))
        if "+" in signer.verifier_key().split("+", 2)[2]:
            return signer
    raise AssertionError("no such key found")


def make_plan(case: str) -> Plan:
    item = PlanItem(id="contain/0/globex-web01", phase="contain", phase_index=0, step="write", step_index=0,
                    tenant="globex", host="globex-web01", action="file.write", params={}, requires_approval=True,
                    destructive=False, change={"changed": True, "summary": "would write"})
    return Plan(case=case, msp="acme", playbook_path="p.yml", playbook_sha256="0" * 64, inventory_path="i.yml",
                inventory_sha256="0" * 64, items=[item])


def test_signed_approval_counts_only_for_a_pinned_approver(irkit_home, tmp_path):
    carol, mallory = signer_with_plus_in_key("carol"), Signer.generate("mallory")
    data = yaml.safe_load((REPO / "inventories/acme.yml").read_text())
    data["tenants"][0]["contacts"] = [
        {"name": "Carol", "approver": True, "approval_key": carol.verifier_key()},
        {"name": "Mallory", "approver": False},
    ]
    path = tmp_path / "acme.yml"
    path.write_text(yaml.safe_dump(data))
    inventory = load_inventory(path)
    plan = make_plan("APPR-1")
    plan.save()
    write_approval(plan, plan.path(), "Carol", carol)
    write_approval(plan, plan.path(), "Mallory", mallory)       # not an approver
    found, problems = valid_approvals(plan, inventory)
    assert found == {"globex": {"Carol"}} and problems == []

    # the same name with another key, or a signature over another plan, does not count
    write_approval(plan, plan.path(), "Carol", mallory)
    assert valid_approvals(plan, inventory)[0] == {"globex": set()}
    other = make_plan("APPR-2")
    other.save()
    write_approval(other, plan.path(), "Carol", carol)
    found, problems = valid_approvals(plan, inventory)
    assert found == {"globex": set()} and any("Carol" in p for p in problems)
