"""`irkit rotate` on a real-sshd lab: --due rotates only what is due; kill -9 at random points of a
rotation never leaves a host whose password exists nowhere, and `irkit resume` settles every entry."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from containment_helpers import IRKIT, REPO, escrow_get, home, irkit, keyed_env, password_login

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def rot(lab_factory):
    return lab_factory("rot")


@pytest.fixture(scope="module")
def env(rot):
    return keyed_env(rot)


@pytest.fixture(scope="module")
def inventory(rot, tmp_path_factory):
    """The lab inventory with a 30-day rotation policy."""
    data = yaml.safe_load(Path(rot.inventory_path).read_text())
    data["msp"]["policy"] = {"rotation_max_age_days": 30, "password_length": 20}
    path = tmp_path_factory.mktemp("rot") / "rot.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def _escrow_rows(env, case):
    return json.loads(irkit(env, "escrow", "list", "--case", case, "--all", "--format", "json", check=0).stdout)


def test_rotate_due_rotates_only_what_is_due(rot, env, inventory, monkeypatch, capsys):
    from ir_toolkit.cli.main import main
    from ir_toolkit.secrets import escrow as esc

    hosts = rot.info["hosts"]
    t1 = [h for h in hosts if h["tenant"] == "t001"]
    t2 = [h for h in hosts if h["tenant"] == "t002"]
    case = "rotation-rot"
    # tenant t001 was rotated 40 days ago (the escrow's clock moved back), t002 just now
    real_now = esc.utcnow
    with home(env):
        monkeypatch.setattr(esc, "utcnow", lambda: real_now() - dt.timedelta(days=40))
        with pytest.raises(SystemExit) as exc:
            main(["rotate", "--inventory", inventory, "--tenant", "t001", "--yes", "--format", "json"])
        assert exc.value.code == 0
        monkeypatch.setattr(esc, "utcnow", real_now)
    capsys.readouterr()
    irkit(env, "rotate", "--inventory", inventory, "--tenant", "t002", "--yes", check=0)
    before = {h["name"]: escrow_get(env, case, h["name"]) for h in hosts}
    assert all(len(p) == 20 for p in before.values())
    # policy 30 days: only t001 is due
    proc = irkit(env, "rotate", "--inventory", inventory, "--due", "--yes", "--format", "json", check=0)
    result = json.loads(proc.stdout)
    assert {n: r["changed"] for n, r in result["hosts"].items()} == {
        **{h["name"]: 1 for h in t1}, **{h["name"]: 0 for h in t2}}
    after = {h["name"]: escrow_get(env, case, h["name"]) for h in hosts}
    for h in t1:
        assert after[h["name"]] != before[h["name"]]
        assert password_login(rot, h, "mspadmin", after[h["name"]])
        assert not password_login(rot, h, "mspadmin", before[h["name"]])
    for h in t2:
        assert after[h["name"]] == before[h["name"]]
        assert password_login(rot, h, "mspadmin", after[h["name"]])
    rows = _escrow_rows(env, case)
    assert sorted(r["host"] for r in rows) == sorted([h["name"] for h in t1] * 2 + [h["name"] for h in t2])
    # nothing is due any more
    again = irkit(env, "rotate", "--inventory", inventory, "--due", "--yes", check=0)
    assert "nothing changed" in again.stdout
    assert irkit(env, "audit", "verify", "--case", case).returncode == 0


def _working_password(rot, host, candidates):
    """Which of the candidate passwords logs in now (at most one may)."""
    works = [p for p in candidates if password_login(rot, host, "mspadmin", p)]
    assert len(works) <= 1, f"{host['name']}: {len(works)} different passwords log in"
    return works[0] if works else None


def _all_secrets(env, case, host_name):
    from ir_toolkit.secrets import escrow as esc
    from ir_toolkit.secrets.keyprovider import KeyProvider

    with home(env):
        key = KeyProvider.unlock().escrow_private_key()
        return [(e.state, e.decrypt(key)) for e in esc.Escrow(case).entries(host=host_name, account="mspadmin")]


def _rotation_window(env, case, started_wall):
    """Seconds from process start to the first escrow write and to the last rotation record."""
    from ir_toolkit.audit.log import iter_records

    with home(env):
        stamps = [dt.datetime.fromisoformat(r["ts"].replace("Z", "+00:00")).timestamp()
                  for r in iter_records(case) if r["action"] in ("credential.escrowed", "credential.rotated")]
    return min(stamps) - started_wall, max(stamps) - started_wall


def test_kill_9_during_rotation_then_resume(rot, env, inventory):
    rng = random.Random(int(os.environ.get("IRKIT_TEST_SEED", "6")))
    hosts = rot.info["hosts"]
    known = {h["name"]: _working_password(rot, h, [rot.info["msp_shared_password"],
                                                   *(p for _, p in _all_secrets(env, "rotation-rot", h["name"]))])
             for h in hosts}
    assert all(known.values()), known
    # one uninterrupted run shows where the rotation happens in time
    started = time.time()
    irkit(env, "rotate", "--inventory", inventory, "--case", "KILL-0", "--yes", check=0)
    first, last = _rotation_window(env, "KILL-0", started)
    known = {h["name"]: escrow_get(env, "KILL-0", h["name"]) for h in hosts}
    delays = [rng.uniform(max(0.05, first - 0.3), last + 0.2) for _ in range(int(os.environ.get("IRKIT_TEST_KILLS", "5")))]
    for i, delay in enumerate(delays, start=1):
        case = f"KILL-{i}"
        child = subprocess.Popen([IRKIT, "rotate", "--inventory", inventory, "--case", case, "--yes"], env=env,
                                 cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        # Right after the kill, before anything else: every host's password is somewhere. (A chpasswd
        # the dead controller had started may still be finishing on the host: wait for it first.)
        for host in hosts:
            rot.exec(host["name"], "for i in $(seq 50); do ps -C chpasswd >/dev/null || exit 0; sleep 0.1; done")
            candidates = [known[host["name"]], *(p for _, p in _all_secrets(env, case, host["name"]))]
            assert _working_password(rot, host, candidates), f"kill after {delay:.2f}s: {host['name']} lost"
        proc = irkit(env, "resume", "--case", case)
        if "no run to resume" in proc.stderr:  # killed before the run's first record: start it again
            proc = irkit(env, "rotate", "--inventory", inventory, "--case", case, "--yes")
        assert proc.returncode == 0, f"kill after {delay:.2f}s:\n{proc.stdout}\n{proc.stderr}"
        for n, host in enumerate(hosts):
            entries = _all_secrets(env, case, host["name"])
            assert entries, f"kill after {delay:.2f}s: no escrow entry for {host['name']}"
            assert not [s for s, _ in entries if s in ("pending", "applied")], (delay, host["name"], entries)
            current = [p for s, p in entries if s == "verified"][-1]
            if n == i % len(hosts):  # and what a responder would type gives the same password
                assert escrow_get(env, case, host["name"]) == current
            assert password_login(rot, host, "mspadmin", current), f"kill after {delay:.2f}s: {host['name']}"
            if current != known[host["name"]]:
                assert not password_login(rot, host, "mspadmin", known[host["name"]])
            known[host["name"]] = current
        assert irkit(env, "audit", "verify", "--case", case).returncode == 0


def test_lock_mode_locks_expires_and_ends_sessions(rot, env, inventory):
    host = rot.info["hosts"][-1]
    name = host["name"]
    cases = sorted({p.parents[3].name for p in (Path(env["IRKIT_HOME"]) / "cases").glob(
        f"*/escrow/*/{name}/mspadmin.jsonl")})
    candidates = [rot.info["msp_shared_password"], *(secret for case in cases
                                                     for _, secret in _all_secrets(env, case, name))]
    current = _working_password(rot, host, candidates)
    assert password_login(rot, host, "mspadmin", current)
    rot.exec(name, "setsid runuser -u mspadmin -- sleep 600 </dev/null >/dev/null 2>&1 & "
                   "for i in $(seq 20); do ps -u mspadmin -o args= | grep -q 'sleep 600' && break; sleep 0.1; done")
    proc = irkit(env, "rotate", "--inventory", inventory, "--case", "LOCK-1", "--host", name, "--mode", "lock",
                 "--yes", "--format", "json", check=0)
    result = json.loads(proc.stdout)["hosts"][name]
    assert result["status"] == "ok" and result["changed"] == 2, result  # access + lock
    shadow = rot.exec(name, "getent shadow mspadmin").stdout.decode().split(":")
    assert shadow[1].startswith("!") and shadow[7] == "1"
    assert not password_login(rot, host, "mspadmin", current)
    assert "sleep 600" not in rot.exec(name, "ps -u mspadmin -o args=").stdout.decode()
    again = irkit(env, "rotate", "--inventory", inventory, "--case", "LOCK-1", "--host", name, "--mode", "lock",
                  "--yes", check=0)
    assert "nothing changed" in again.stdout
