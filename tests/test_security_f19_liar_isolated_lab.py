"""A host that lies about its hashes can no longer keep itself connected (issue 17, the gate by destruction class).

On a real-sshd lab, t001-h001 is hostile (``names``): its ``sha256sum`` lies about files in /etc/cron.d,
so its full triage bundle has hash mismatches. Under the old order (full triage -> isolate) that bundle was
not "ready", the gate refused isolation, and the liar stayed connected to the intruder. Now the shipped order
runs: access -> volatile snapshot -> isolate -> full triage (isolated) -> revoke. The liar's snapshot (commands
only) is sealed and opens isolation: it is isolated for real (a new connection from a peer is dropped). Its full
triage does not verify, so the host stops there, isolated, its keys untouched. A credential change run on its own
(revoking the MSP's keys) needs the full bundle and is refused by the gate, naming the missing evidence kind; an
audited ``evidence_override`` lets a responder run it.
"""

from __future__ import annotations

import json

import pytest
import yaml

from containment_helpers import contain_playbook, home, irkit, keyed_env, summary, tcp_reach

pytestmark = pytest.mark.lab

LIAR = "t001-h001"
CASE = "F19-LIAR"


@pytest.fixture(scope="module")
def liar_lab(lab_factory):
    lab = lab_factory("f19liar", tenants=1, hosts_per_tenant=2, hostile={LIAR: "names"})
    return lab, keyed_env(lab)


def _records(env, case):
    from ir_toolkit.audit.log import iter_records

    with home(env):
        return list(iter_records(case))


def test_a_lying_host_is_isolated_on_its_snapshot_and_its_credential_changes_are_refused(liar_lab, tmp_path):
    lab, env = liar_lab
    honest = next(h for h in lab.info["hosts"] if h["name"] != LIAR)
    liar = next(h for h in lab.info["hosts"] if h["name"] == LIAR)
    playbook = contain_playbook(lab, tmp_path / "contain.yml",
                                phases=["access", "snapshot", "isolate", "preserve", "revoke"])
    assert "evidence_override" not in playbook.read_text()
    proc = irkit(env, "contain", "--inventory", str(lab.inventory_path), "--playbook", str(playbook),
                 "--case", CASE, "--yes", "--format", "json", timeout=900)
    result = summary(proc)
    hosts = result["hosts"]
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert hosts[honest["name"]]["status"] == "ok", (hosts, proc.stderr[-2000:])
    # the liar's full triage does not verify (its hashes lie): the host stops there, after its isolation
    assert hosts[LIAR]["status"] == "failed" and "hash mismatches" in hosts[LIAR]["message"], hosts[LIAR]

    records = _records(env, CASE)
    # the liar's evidence: a sealed volatile snapshot, then a full bundle with hash mismatches
    collected = [r for r in records if r["action"] == "evidence.collected" and r.get("host") == LIAR]
    assert [r["params"]["kind"] for r in collected] == ["volatile", "full"], collected
    assert collected[0]["params"]["hash_mismatches"] == 0 and collected[1]["params"]["hash_mismatches"] > 0
    # isolated (its host.isolated record is in the signed log, after the snapshot and before the full triage)
    seq = {(r["action"], r.get("host"), r["params"].get("kind")): r["seq"] for r in records}
    assert seq[("evidence.collected", LIAR, "volatile")] < seq[("host.isolated", LIAR, None)] \
        < seq[("evidence.collected", LIAR, "full")]
    # ... for real: a new connection from the honest peer is dropped
    assert tcp_reach(lab, honest["name"], [liar]) == {LIAR: False}
    assert not any(r["action"] == "step.start" and r.get("host") == LIAR and r["params"]["item"].startswith("revoke/")
                   for r in records)
    # time to isolation: both hosts isolated; full containment not reached (the liar's keys are not revoked)
    figures = result["figures"]
    assert figures["isolation"]["complete"] and figures["isolation"]["reached"] == 2, figures
    assert not figures["containment"]["complete"] and figures["containment"]["reached"] == 1, figures
    (end,) = [r for r in records if r["action"] == "run.end"]
    assert end["params"]["isolated"] == "2/2" and isinstance(end["params"]["time_to_isolation_ms"], int)
    assert end["params"]["time_to_full_containment_ms"] is None and end["params"]["contained"] == "1/2"
    # evidence list tells the snapshot from the full bundle
    listing = json.loads(irkit(env, "evidence", "list", "--case", CASE, "--host", LIAR, "--format", "json",
                               check=0).stdout)
    assert sorted(row["kind"] for row in listing) == ["full", "volatile"]
    assert irkit(env, "audit", "verify", "--case", CASE).returncode == 0

    # the credential change on its own (no triage phase, no override): the gate refuses it, naming the
    # missing evidence kind - the snapshot that opened isolation does not open a credential change
    data = yaml.safe_load(playbook.read_text())
    data["phases"] = [p for p in data["phases"] if p["name"] in ("access", "revoke")]
    for phase in data["phases"]:
        for step in phase["steps"]:
            step["targets"] = {"hosts": [LIAR]}
    revoke = tmp_path / "revoke.yml"
    revoke.write_text(yaml.safe_dump(data, sort_keys=False))
    proc = irkit(env, "contain", "--inventory", str(lab.inventory_path), "--playbook", str(revoke),
                 "--case", CASE, "--yes", "--format", "json", timeout=600)
    assert proc.returncode == 1, proc.stderr[-2000:]
    message = summary(proc)["hosts"][LIAR]["message"]
    assert message.startswith(f"refused: no verified evidence for {LIAR}: ssh_keys.revoke destroys credentials"), message
    assert "needs a full evidence bundle" in message and "hash mismatches" in message, message
    refused = [r for r in _records(env, CASE) if r["action"] == "step.refused" and r.get("host") == LIAR]
    assert len(refused) == 1 and refused[0]["params"]["item"].startswith("revoke/")
    assert refused[0]["params"]["needs"] == "full" and refused[0]["params"]["destroys"] == "credentials"

    # an audited override lets the responder revoke the liar's keys anyway
    for phase in data["phases"]:
        for step in phase["steps"]:
            if step["action"] == "ssh_keys.revoke":
                step["evidence_override"] = "the host lies about its hashes; revoke now (IC approved)"
    override = tmp_path / "override.yml"
    override.write_text(yaml.safe_dump(data, sort_keys=False))
    proc = irkit(env, "contain", "--inventory", str(lab.inventory_path), "--playbook", str(override),
                 "--case", CASE, "--yes", "--format", "json", timeout=600)
    assert summary(proc)["hosts"][LIAR]["status"] == "ok", proc.stderr[-2000:]
    gate = [r for r in _records(env, CASE) if r["action"] == "gate.override" and r.get("host") == LIAR]
    assert gate and gate[-1]["params"]["needs"] == "full" and gate[-1]["params"]["destroys"] == "credentials"
