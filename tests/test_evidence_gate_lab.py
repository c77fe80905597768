"""Evidence before destruction: credential rotation is refused on hosts without verified evidence;
an override with a written reason lets it run and is an audit record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[1]
IRKIT = str(Path(sys.executable).with_name("irkit"))

PLAYBOOK = """\
version: 1
name: gate-test
defaults: {timeout: 60, retries: 0, host_timeout: 120, connect_timeout: 5}
phases:
  - name: preserve
    steps:
      - name: collect evidence of the first host only
        action: triage.collect
        targets: {hosts: [%(first)s]}
  - name: rotate
    steps:
      - name: rotate the shared account
        action: accounts.rotate
%(override)s"""

@pytest.fixture(scope="module")
def gate_lab(lab_factory):
    handle = lab_factory("gatetest", tenants=1, hosts_per_tenant=2)
    env = {**os.environ, "IRKIT_HOME": str(handle.home), "IRKIT_KEY_PASSPHRASE": "gate-test-passphrase",
           "IRKIT_INSECURE_TEST_SCRYPT_LOG2N": "10"}
    env.pop("IRKIT_INVENTORY", None)
    subprocess.run([IRKIT, "keys", "init", "--if-missing"], env=env, check=True, capture_output=True)
    return handle, env


def run(env, *args):
    return subprocess.run([IRKIT, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)


def records(env, case):
    from ir_toolkit.audit.log import iter_records

    old = os.environ.get("IRKIT_HOME")
    os.environ["IRKIT_HOME"] = env["IRKIT_HOME"]
    try:
        return list(iter_records(case))
    finally:
        if old is None:
            os.environ.pop("IRKIT_HOME")
        else:
            os.environ["IRKIT_HOME"] = old


def test_rotation_needs_evidence_or_an_audited_override(gate_lab, tmp_path):
    lab, env = gate_lab
    first, second = (h["name"] for h in lab.info["hosts"])
    inv = str(lab.inventory_path)
    gated = tmp_path / "gated.yml"
    gated.write_text(PLAYBOOK % {"first": first, "override": ""})
    proc = run(env, "contain", "--inventory", inv, "--playbook", str(gated), "--case", "GATE-1", "--yes",
               "--format", "json")
    assert proc.returncode == 1, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["hosts"][first]["status"] == "ok"
    assert summary["hosts"][second]["status"] == "failed"
    assert summary["hosts"][second]["message"].startswith(f"refused: no verified evidence for {second}")
    recs = records(env, "GATE-1")
    refused = [r for r in recs if r["action"] == "step.refused" and r["host"] == second]
    assert refused and "no verified evidence" in refused[0]["params"]["reason"]
    assert not any(r["action"] == "step.start" and r["host"] == second and r["params"]["item"].startswith("rotate/")
                   for r in recs)
    password = lab.info["msp_shared_password"]
    from containment_helpers import password_login

    host2 = next(h for h in lab.info["hosts"] if h["name"] == second)
    assert password_login(lab, host2, "mspadmin", password)  # untouched: still the shared password

    overridden = tmp_path / "override.yml"
    overridden.write_text(PLAYBOOK % {"first": first, "override": "        evidence_override: 'IR lead: host is a honeypot clone, no evidence value'\n"})
    proc = run(env, "contain", "--inventory", inv, "--playbook", str(overridden), "--case", "GATE-1", "--yes",
               "--format", "json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    recs = records(env, "GATE-1")
    overrides = [r for r in recs if r["action"] == "gate.override"]
    assert [r["host"] for r in overrides] == [second]
    assert overrides[0]["params"]["reason"] == "IR lead: host is a honeypot clone, no evidence value"
    assert run(env, "audit", "verify", "--case", "GATE-1").returncode == 0
    assert not password_login(lab, host2, "mspadmin", password)
