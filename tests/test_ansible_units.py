"""Units of the Ansible step: event parsing (hostile output, no_log), the inventory export."""

from __future__ import annotations

import json
import os
from pathlib import Path

from containment_helpers import REPO


def test_inventory_export_is_accepted_by_ansible_inventory(tmp_path):
    """`irkit inventory export --msp acme --format ansible` is accepted by `ansible-inventory --list`."""
    import subprocess
    import sys

    env = {**os.environ, "IRKIT_HOME": str(tmp_path)}
    out = tmp_path / "acme-ansible.yml"
    proc = subprocess.run([str(Path(sys.executable).with_name("irkit")), "inventory", "export", "--msp", "acme",
                           "--format", "ansible", "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    listing = subprocess.run([str(Path(sys.executable).with_name("ansible-inventory")), "-i", str(out), "--list"],
                             env={**env, "ANSIBLE_INVENTORY_UNPARSED_FAILED": "True"}, capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    data = json.loads(listing.stdout)
    import ir_toolkit.inventory as inv_mod

    inv = inv_mod.load_inventory(REPO / "inventories" / "acme.yml")
    assert set(data["_meta"]["hostvars"]) == {h.name for h in inv.hosts()}
    for tenant in inv.tenants:
        group = "tenant_" + tenant.name.replace("-", "_")
        assert set(data[group]["hosts"]) == {h.name for h in tenant.hosts}
    some = inv.hosts()[0]
    assert data["_meta"]["hostvars"][some.name]["ansible_host"] == some.address
    assert "StrictHostKeyChecking=yes" in data["_meta"]["hostvars"][some.name]["ansible_ssh_common_args"]
