"""Issue 7 "Done when" on the lab: `irkit triage` yields a verified bundle per host holding every seeded trace.

Uses the shared session lab (MSP ``labtest``, see docs/lab.md for the seeded
breach). Triage only reads on the hosts. The responder keys of the lab's
IRKIT_HOME are made once with the containment tests' passphrase.
"""

from __future__ import annotations

import json
import tarfile

import pytest

from containment_helpers import home, irkit, keyed_env

pytestmark = pytest.mark.lab

CASE = "TRIAGE-LAB"


@pytest.fixture(scope="module")
def triaged(lab):
    env = keyed_env(lab)
    proc = irkit(env, "triage", "--inventory", str(lab.inventory_path), "--case", CASE, "--format", "json",
                 timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return env, json.loads(proc.stdout)


def bundle_members(lab, host: str) -> tuple[dict, dict[str, bytes]]:
    from ir_toolkit.triage.bundle import latest_collection

    coll = latest_collection(CASE, host)
    with tarfile.open(coll.bundle_path) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    return json.loads(members["manifest.json"]), members


def test_every_host_has_a_complete_recorded_bundle(lab, triaged):
    env, rows = triaged
    names = {h["name"] for h in lab.info["hosts"]}
    assert {r["host"] for r in rows} == names
    assert all(r["status"] == "complete" and r["mismatch"] == 0 for r in rows), rows
    proc = irkit(env, "evidence", "verify", "--case", CASE, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    reports = json.loads(proc.stdout)
    assert {r["host"] for r in reports} == names
    assert all(r["result"] == "ok" and r["custody"] == "recorded" and r["contents"] == "re-hashed"
               for r in reports)
    with home(env):
        from ir_toolkit.triage.status import host_evidence_status

        for host in lab.info["hosts"]:
            assert host_evidence_status(CASE, host["tenant"], host["name"]).ready


def test_seeded_breach_traces_are_in_each_bundle(lab, triaged):
    env, _ = triaged
    info = lab.info
    dropper, port, attacker = info["dropper_path"], str(info["implant_port"]), info["attacker_address"]
    unit = info["persistence_unit"]
    msp_key = info["msp_public_key"].split()[1]
    with home(env):
        for host in info["hosts"]:
            manifest, members = bundle_members(lab, host["name"])
            files = {e["source_path"]: e for e in manifest["files"]}
            text = {k: v.decode("utf-8", "replace") for k, v in members.items()}
            where = host["name"]
            # persistence: cron entry and systemd unit (+ its enable symlink, recorded not followed)
            assert dropper in text["files/var/spool/cron/crontabs/root"], where
            assert f"ExecStart={dropper}" in text[f"files/etc/systemd/system/{unit}"], where
            link = files[f"/etc/systemd/system/multi-user.target.wants/{unit}"]
            assert link["status"] == "recorded" and link["link_target"].endswith(unit), where
            # the /tmp dropper, copied with both hashes equal and its mode
            drop = files[dropper]
            assert drop["status"] == "collected" and drop["mode"] == "0755", where
            assert drop["sha256_host"] == drop["sha256_received"], where
            assert text["files" + dropper].startswith("#!/usr/bin/perl"), where
            # the running implant and its listening socket with the owning process
            assert dropper in text["live/linux.live.processes.txt"], where
            implant_rows = [ln for ln in text["live/linux.live.process_details.txt"].splitlines()
                            if ln.endswith(dropper) or f"\t{dropper}" in ln]
            assert implant_rows and "/usr/bin/perl" in implant_rows[0], where
            listening = [ln for ln in text["live/linux.live.network_sockets.txt"].splitlines()
                         if "LISTEN" in ln and f":{port}" in ln]
            assert listening and "pid=" in listening[0], where
            # attacker shell history and auth log lines
            assert attacker in text["files/root/.bash_history"], where
            assert "history -c" in text["files/home/mspadmin/.bash_history"], where
            assert f"Accepted password for mspadmin from {attacker}" in text["files/var/log/auth.log"], where
            # the MSP's shared key in root's and mspadmin's authorized_keys
            assert msp_key in text["files/root/.ssh/authorized_keys"], where
            assert msp_key in text["files/home/mspadmin/.ssh/authorized_keys"], where
            # volatile data came first
            orders = [a["name"] for a in manifest["artifacts"] if a.get("status") != "not_run"]
            assert orders[0] == "linux.live.processes", where
            assert any(a["name"] == "linux.live.reveal_hidden_processes" and a["status"] == "not_run"
                       for a in manifest["artifacts"]), where
