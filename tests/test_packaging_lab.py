"""The wheel carries the shipped playbooks: an installed irkit plans ``contain`` from any directory.

Builds the wheel from the checkout, unpacks it (its ``ir_toolkit`` comes first on
``PYTHONPATH``, ahead of the checkout's editable install; the third-party packages
come from this venv) and runs ``irkit contain --inventory PATH --dry-run`` in an empty
directory against a lab: no ``playbooks/`` directory exists there, so the plan can only
come from the packaged playbook.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.lab, pytest.mark.slow]


def test_installed_wheel_runs_contain_dry_run_from_another_directory(lab_factory, tmp_path):
    lab = lab_factory("wheel", tenants=1, hosts_per_tenant=2)
    out = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(out), str(REPO)], capture_output=True, text=True, timeout=600)
    if build.returncode != 0 and "hatchling" in build.stderr:
        build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
                               capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    (wheel,) = out.glob("irkit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "ir_toolkit/playbooks/msp-breach-containment.yml" in names
    # the shipped Ansible content's own module and callback (the hardening runs in the plan's check mode below)
    assert {"ir_toolkit/playbooks/ansible/sshd-hardening.yml",
            "ir_toolkit/playbooks/ansible/library/irkit_sshd_dropin.py",
            "ir_toolkit/playbooks/ansible/callback_plugins/irkit_gc_freeze.py"} <= set(names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "IRKIT_HOME": str(lab.home), "PYTHONPATH": str(site)}
    env.pop("IRKIT_INVENTORY", None)
    proc = subprocess.run([sys.executable, "-m", "ir_toolkit", "contain", "--inventory", str(lab.inventory_path),
                           "--case", "WHEEL-1", "--dry-run", "--format", "json"],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["playbook"]["path"].startswith(str(site))  # the packaged playbook, not the checkout's
    assert {i["phase"] for i in plan["items"]} >= {"access", "preserve", "isolate", "revoke", "rotate"}
    assert {i["host"] for i in plan["items"]} == {h["name"] for h in lab.info["hosts"]}
    assert all(i["change"].get("error") is None for i in plan["items"]), plan["items"]
    assert "dry run: nothing was changed" in proc.stderr
