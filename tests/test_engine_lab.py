"""The engine end to end on real lab hosts: summaries, dry runs, hung hosts, changed host keys, kill -9 + resume."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[1]
IRKIT = str(Path(sys.executable).with_name("irkit"))
BASIC = str(REPO / "tests/playbooks/engine-basic.yml")
RESUME = str(REPO / "tests/playbooks/engine-resume.yml")
STATE_DIGEST = ("find /etc /root /home /tmp /var -path /var/log -prune -o -path /var/cache -prune -o "
                "-printf '%p %s %m %T@\\n' 2>/dev/null | sort | sha256sum")


@pytest.fixture(scope="module")
def env(lab):
    """The lab's IRKIT_HOME with responder keys (shared with the other modules that use the session lab)."""
    from containment_helpers import keyed_env

    return keyed_env(lab)


def irkit(env, *args, check=None, timeout=300):
    proc = subprocess.run([IRKIT, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if check is not None:
        assert proc.returncode == check, f"exit {proc.returncode}\nstdout:{proc.stdout}\nstderr:{proc.stderr}"
    return proc


def host_names(lab):
    return [h["name"] for h in lab.info["hosts"]]


def records(env, case):
    path = Path(env["IRKIT_HOME"]) / "cases" / case / "audit"
    from ir_toolkit.audit.log import iter_records

    old = os.environ.get("IRKIT_HOME")
    os.environ["IRKIT_HOME"] = env["IRKIT_HOME"]
    try:
        assert path.exists()
        return list(iter_records(case))
    finally:
        if old is None:
            os.environ.pop("IRKIT_HOME", None)
        else:
            os.environ["IRKIT_HOME"] = old


def test_contain_with_test_playbook_summary_and_idempotence(lab, env):
    for name in host_names(lab):
        lab.exec(name, "rm -f /var/tmp/irkit-engine-marker")
    proc = irkit(env, "contain", "--inventory", str(lab.inventory_path), "--playbook", BASIC,
                 "--case", "ENG-1", "--yes", "--format", "json", check=0)
    summary = json.loads(proc.stdout)
    assert summary["ok"] is True and summary["incomplete"] is False
    per_tenant = {}
    for host in lab.info["hosts"]:
        per_tenant.setdefault(host["tenant"], 0)
        per_tenant[host["tenant"]] += 1
    assert summary["tenants"] == {t: {"ok": n, "failed": 0, "timed_out": 0, "skipped": 0} for t, n in per_tenant.items()}
    assert all(h["changed"] == 1 for h in summary["hosts"].values())
    for name in host_names(lab):
        assert lab.exec(name, "cat /var/tmp/irkit-engine-marker").stdout == b"irkit engine test\n"
    # second run: nothing to change, and it says so
    proc = irkit(env, "contain", "--inventory", str(lab.inventory_path), "--playbook", BASIC,
                 "--case", "ENG-1", "--yes", check=0)
    assert "nothing changed" in proc.stdout
    assert irkit(env, "audit", "verify", "--case", "ENG-1").returncode == 0


def test_dry_run_changes_nothing_on_any_host(lab, env):
    for name in host_names(lab):
        lab.exec(name, "rm -f /var/tmp/irkit-engine-marker")
    before = {name: lab.exec(name, STATE_DIGEST).stdout for name in host_names(lab)}
    proc = irkit(env, "contain", "--inventory", str(lab.inventory_path), "--playbook", BASIC,
                 "--case", "ENG-DRY", "--dry-run", check=0)
    assert "would create /var/tmp/irkit-engine-marker" not in proc.stderr  # the plan goes to stdout
    assert "dry run: nothing was changed" in proc.stderr
    plan_files = list((Path(env["IRKIT_HOME"]) / "cases/ENG-DRY/journal").glob("plan-*.json"))
    assert len(plan_files) == 1
    plan = json.loads(plan_files[0].read_text())
    writes = [i for i in plan["items"] if i["action"] == "file.write"]
    assert writes and all(i["change"]["changed"] is True for i in writes)
    after = {name: lab.exec(name, STATE_DIGEST).stdout for name in host_names(lab)}
    assert before == after


def test_plan_is_deterministic_and_apply_refuses_edited_plan(lab, env, tmp_path):
    hashes = set()
    for _ in range(2):
        proc = irkit(env, "plan", "--inventory", str(lab.inventory_path), "--playbook", BASIC,
                     "--case", "ENG-PLAN", "--format", "json", check=0)
        hashes.add(json.loads(proc.stdout)["hash"])
    assert len(hashes) == 1
    plan_path = Path(json.loads(proc.stdout)["path"])
    edited = tmp_path / "edited.json"
    data = json.loads(plan_path.read_text())
    data["items"] = data["items"][:1]
    edited.write_text(json.dumps(data))
    proc = irkit(env, "apply", str(edited), "--yes", check=2)
    assert "plan hash mismatch" in proc.stderr and proc.stderr.count("\n") == 1


def test_hung_host_times_out_while_the_rest_finish(lab, env):
    victim = host_names(lab)[0]
    pid = lab.exec(victim, "cat /run/sshd.pid").stdout.decode().strip()
    assert pid.isdigit()
    lab.exec(victim, f"kill -STOP {pid}")
    try:
        start = time.monotonic()
        proc = irkit(env, "contain", "--inventory", str(lab.inventory_path), "--playbook", BASIC,
                     "--case", "ENG-HUNG", "--yes", "--format", "json", check=1)
        elapsed = time.monotonic() - start
    finally:
        lab.exec(victim, f"kill -CONT {pid}")
    summary = json.loads(proc.stdout)
    assert summary["hosts"][victim]["status"] == "timed_out"
    assert all(h["status"] == "ok" for n, h in summary["hosts"].items() if n != victim)
    assert elapsed < 60  # deadlines of a few seconds, not a stall


def test_changed_host_key_is_refused_and_reported(lab, env, tmp_path):
    names = host_names(lab)
    victim, other = lab.info["hosts"][0], lab.info["hosts"][1]
    known = Path(lab.info["known_hosts"]).read_text().splitlines()
    other_keys = [l.split(None, 1)[1] for l in known if l.split()[0] == other["address"]]
    forged = [l for l in known if l.split()[0] != victim["address"]]
    forged += [f"{victim['address']} {k}" for k in other_keys]
    kh = tmp_path / "known_hosts"
    kh.write_text("\n".join(forged) + "\n")
    inv = yaml.safe_load(Path(lab.inventory_path).read_text())
    inv["msp"]["known_hosts"] = str(kh)
    inv_path = tmp_path / "inv.yml"
    inv_path.write_text(yaml.safe_dump(inv))
    proc = irkit(env, "contain", "--inventory", str(inv_path), "--playbook", BASIC,
                 "--case", "ENG-HOSTKEY", "--yes", "--format", "json", check=1)
    summary = json.loads(proc.stdout)
    assert summary["hosts"][victim["name"]]["status"] == "failed"
    assert "host key changed — possible interception" in summary["hosts"][victim["name"]]["message"]
    assert all(summary["hosts"][n]["status"] == "ok" for n in names if n != victim["name"])
    recs = records(env, "ENG-HOSTKEY")
    bad = [r for r in recs if r["action"] == "step.done" and r.get("host") == victim["name"]]
    assert bad and bad[0]["params"]["kind"] == "host_key_changed"


def _count_lines(lab, name, word):
    out = lab.exec(name, "cat /var/tmp/irkit-resume-count 2>/dev/null || true").stdout.decode()
    return sum(1 for line in out.splitlines() if line == word)


def test_kill_9_at_random_points_then_resume_completes(lab, env):
    rng = random.Random(int(os.environ.get("IRKIT_TEST_SEED", "1234")))
    names = host_names(lab)
    # measure one uninterrupted run to know where "random points" can fall
    for name in names:
        lab.exec(name, "rm -f /var/tmp/irkit-resume-count /var/tmp/irkit-resume-marker")
    proc = irkit(env, "plan", "--inventory", str(lab.inventory_path), "--playbook", RESUME,
                 "--case", "ENG-RES-0", "--format", "json", check=0)
    start = time.monotonic()
    irkit(env, "apply", json.loads(proc.stdout)["path"], "--yes", check=0)
    duration = time.monotonic() - start

    for i in range(1, 6):
        case = f"ENG-RES-{i}"
        for name in names:
            lab.exec(name, "rm -f /var/tmp/irkit-resume-count /var/tmp/irkit-resume-marker")
        proc = irkit(env, "plan", "--inventory", str(lab.inventory_path), "--playbook", RESUME,
                     "--case", case, "--format", "json", check=0)
        plan = json.loads(proc.stdout)
        delay = rng.uniform(0.05, duration * 0.9)
        child = subprocess.Popen([IRKIT, "apply", plan["path"], "--yes"], env=env, cwd=REPO,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        proc = irkit(env, "resume", "--case", case)
        if "no run to resume" in proc.stderr:  # killed before the run's first record: start it again
            proc = irkit(env, "apply", plan["path"], "--yes")
        assert proc.returncode == 0, f"kill after {delay:.2f}s: {proc.stdout}{proc.stderr}"
        recs = records(env, case)
        done = {r["params"]["item"] for r in recs if r["action"] == "step.done" and r["outcome"] == "ok"}
        assert done == {item["id"] for item in plan["items"]}, f"kill after {delay:.2f}s"
        starts = {}
        for r in recs:
            if r["action"] == "step.start":
                starts[r["params"]["item"]] = starts.get(r["params"]["item"], 0) + 1
        for name in names:
            for phase, idx, word in (("first", 0, "first"), ("second", 1, "second")):
                n = _count_lines(lab, name, word)
                started = starts[f"{phase}/{idx}/{name}"]
                # a finished step is never run again; only a step cut mid-way may run twice
                assert 1 <= n <= started, (name, word, n, started)
            assert lab.exec(name, "cat /var/tmp/irkit-resume-marker").stdout == b"resumed\n"
        assert irkit(env, "audit", "verify", "--case", case).returncode == 0


APPROVAL_PLAYBOOK = """\
version: 1
name: approval-test
defaults: {timeout: 30, retries: 1, host_timeout: 120, connect_timeout: 10}
phases:
  - name: change
    steps:
      - name: write approved marker
        action: file.write
        params: {path: /var/tmp/irkit-approved-marker, content: "approved\\n"}
        requires_approval: true
"""


def test_two_of_m_approvals_hold_a_tenant_until_signed_then_resume_finishes(lab, env, tmp_path):
    carol = {**env, "IRKIT_HOME": str(tmp_path / "carol-home"), "IRKIT_KEY_PASSPHRASE": "carol-passphrase"}
    irkit(carol, "keys", "init", "--name", "carol", check=0)
    vkey = json.loads(irkit(carol, "keys", "show", "--format", "json", check=0).stdout)["verifier_key"]
    inv = yaml.safe_load(Path(lab.inventory_path).read_text())
    strict, lenient = inv["tenants"][0]["name"], inv["tenants"][1]["name"]
    inv["tenants"][0]["approvals_required"] = 2
    inv["tenants"][0]["contacts"] = [{"name": "Carol Approver", "approver": True, "approval_key": vkey},
                                     {"name": "Mallory", "approver": False}]
    inv_path = tmp_path / "inv.yml"
    inv_path.write_text(yaml.safe_dump(inv))
    pb = tmp_path / "approval.yml"
    pb.write_text(APPROVAL_PLAYBOOK)
    for name in host_names(lab):
        lab.exec(name, "rm -f /var/tmp/irkit-approved-marker")

    plan = json.loads(irkit(env, "plan", "--inventory", str(inv_path), "--playbook", str(pb), "--case", "ENG-APPR",
                            "--format", "json", check=0).stdout)
    proc = irkit(env, "apply", plan["path"], "--yes", "--format", "json", check=3)
    summary = json.loads(proc.stdout)
    assert summary["incomplete"] is True
    for name, host in summary["hosts"].items():
        tenant = next(h["tenant"] for h in lab.info["hosts"] if h["name"] == name)
        if tenant == strict:
            assert host["status"] == "skipped" and host["message"] == f"awaiting approval: 1 of 2 approvals for tenant {strict}"
            assert lab.exec(name, "test -e /var/tmp/irkit-approved-marker").returncode != 0
        else:
            assert tenant == lenient and host["status"] == "ok"

    # an approval by someone who is not an approver does not count
    proc = irkit(carol, "approve", plan["path"], "--as", "Mallory", check=0)
    assert irkit(env, "resume", "--case", "ENG-APPR").returncode == 3

    proc = irkit(carol, "approve", plan["path"], "--as", "Carol Approver", check=0)
    assert "approved plan" in proc.stdout
    proc = irkit(env, "resume", "--case", "ENG-APPR", "--format", "json", check=0)
    assert json.loads(proc.stdout)["ok"] is True
    for name in host_names(lab):
        assert lab.exec(name, "cat /var/tmp/irkit-approved-marker").stdout == b"approved\n"
    recs = records(env, "ENG-APPR")
    signed = [r for r in recs if r["action"] == "approval.given" and r["params"]["kind"] == "signed approval"]
    assert {r["params"]["approver"] for r in signed} == {"Carol Approver"}
    assert all(r["tenant"] == strict for r in signed)
    assert irkit(env, "audit", "verify", "--case", "ENG-APPR").returncode == 0


def test_ctrl_c_stops_between_steps_exit_3_then_resume_finishes(lab, env):
    names = host_names(lab)
    for name in names:
        lab.exec(name, "rm -f /var/tmp/irkit-resume-count /var/tmp/irkit-resume-marker")
    plan = json.loads(irkit(env, "plan", "--inventory", str(lab.inventory_path), "--playbook", RESUME,
                            "--case", "ENG-INT", "--format", "json", check=0).stdout)
    child = subprocess.Popen([IRKIT, "apply", plan["path"], "--yes"], env=env, cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until steps are running, then press Ctrl-C
        try:
            if any(r["action"] == "step.start" for r in records(env, "ENG-INT")):
                break
        except (AssertionError, OSError, ValueError):
            pass
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 3, out + err
    assert "finish with: irkit resume --case ENG-INT" in err
    assert "Traceback" not in err
    ends = [r for r in records(env, "ENG-INT") if r["action"] == "run.end"]
    assert ends and ends[-1]["params"]["status"] == "incomplete"
    irkit(env, "resume", "--case", "ENG-INT", check=0)
    for name in names:
        assert lab.exec(name, "cat /var/tmp/irkit-resume-marker").stdout == b"resumed\n"
        assert _count_lines(lab, name, "first") == 1 and _count_lines(lab, name, "second") == 1
    assert irkit(env, "audit", "verify", "--case", "ENG-INT").returncode == 0


def test_disk_full_mid_run_is_one_line_exit_4_and_nothing_is_lost(lab, env):
    case = "ENG-DISK"
    case_dir = Path(env["IRKIT_HOME"]) / "cases" / case
    case_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(case_dir)], check=True)
    try:
        for name in host_names(lab):
            lab.exec(name, "rm -f /var/tmp/irkit-engine-marker")
        plan = json.loads(irkit(env, "plan", "--inventory", str(lab.inventory_path), "--playbook", BASIC,
                                "--case", case, "--format", "json", check=0).stdout)
        filler = case_dir / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)  # fill the case's disk up, then give a little back
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        os.truncate(filler, max(0, filler.stat().st_size - 12 * 1024))
        proc = irkit(env, "apply", plan["path"], "--yes")
        assert proc.returncode == 4, proc.stdout + proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("irkit: error: disk full")
        assert "Traceback" not in proc.stderr
        filler.unlink()
        proc = irkit(env, "resume", "--case", case)
        if "no run to resume" in proc.stderr:  # the disk filled before the run's first record
            proc = irkit(env, "apply", plan["path"], "--yes")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        done = {r["params"]["item"] for r in records(env, case) if r["action"] == "step.done" and r["outcome"] == "ok"}
        assert done == {item["id"] for item in plan["items"]}
        assert irkit(env, "audit", "verify", "--case", case).returncode == 0
    finally:
        subprocess.run(["umount", str(case_dir)], check=False)
