"""bench/bench_contain.py's own parts, without a lab: the Ansible side's generated host scripts cover
the same triage profile as irkit, and the figures are read correctly from an audit log / callback file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "bench" / "ansible"))

import bench_contain  # noqa: E402
import triage_scripts  # noqa: E402

from ir_toolkit.triage.schema import builtin_catalog  # noqa: E402


@pytest.mark.parametrize("script", ["volatile", "triage"])
def test_generated_scripts_are_valid_sh(tmp_path: Path, script: str) -> None:
    text = triage_scripts.volatile_script() if script == "volatile" else triage_scripts.triage_script("ir_triage")
    path = tmp_path / "s.sh"
    path.write_text(text)
    proc = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "tar --create --gzip" in text


def test_triage_script_covers_every_artifact_of_the_profile() -> None:
    text = triage_scripts.triage_script("ir_triage")
    selection = builtin_catalog().select("ir_triage", "linux")
    assert len(selection.artifacts) > 50
    missing = [a.name for a in selection.artifacts if f"# {a.name}\n" not in text]
    assert missing == []
    # a volatile artifact's command is irkit's own, and the snapshot holds the list
    volatile = triage_scripts.volatile_script()
    for name in ("linux.live.process_hashes", "linux.live.network_sockets", "linux.live.sessions",
                 "linux.live.routes", "linux.live.arp"):
        assert f"# {name}\n" in volatile


def test_triage_script_runs_and_packs_files(tmp_path: Path) -> None:
    """One file artifact, run for real against a scratch tree (the WORK dir moved under tmp_path)."""
    from ir_toolkit.triage.schema import Artifact

    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("x\n")
    (root / "etc" / "big").write_bytes(b"0" * 5000)
    art = Artifact(name="linux.test.files", description="d", os="linux", collector="file",
                   paths=[str(root / "etc")], max_file_size=1000)
    cmd = Artifact(name="linux.test.cmd", description="d", os="linux", collector="command", command="echo hi")
    work = tmp_path / "work"
    text = triage_scripts._script([art, cmd], "t.tgz").replace(triage_scripts.WORK, str(work))
    proc = subprocess.run(["sh", "-c", text], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    names = subprocess.run(["tar", "-tzf", str(work / "t.tgz")], capture_output=True, text=True).stdout.split()
    assert any(n.endswith("etc/passwd") for n in names)
    assert not any(n.endswith("etc/big") for n in names)      # over the artifact's size cap
    assert "out/live/linux.test.cmd.txt" in names


def test_ansible_times_give_time_to_isolation(tmp_path: Path) -> None:
    times = tmp_path / "times.jsonl"
    start = 1000.0
    lines = [{"t": 1001.0, "event": "task.start", "task": "snapshot: volatile state"}]
    for i, host in enumerate(["a", "b", "c"]):
        lines.append({"t": 1010.0 + i, "event": "host.result", "task": bench_contain.TABLE_TASK, "host": host,
                      "status": "changed"})
        lines.append({"t": 1020.0 + 5 * i, "event": "host.result", "task": bench_contain.ISOLATED_TASK,
                      "host": host, "status": "changed"})
    lines.append({"t": 1040.0, "event": "host.result", "task": "triage: fetch", "host": "a", "status": "failed"})
    times.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = bench_contain.analyze_ansible(times, start)
    assert out["time_to_isolation_s"] == 30.0
    assert out["hosts_isolated"] == 3
    assert out["table_loaded"] == {"first_s": 10.0, "median_s": 11.0, "last_s": 12.0}
    assert out["failures"] == {"triage: fetch: failed": 1}
    assert out["phases"]["isolate"]["end_s"] == 30.0


def _rec(seq: int, ts: str, action: str, host: str | None = None, outcome: str = "ok", **params: object) -> dict:
    r = {"seq": seq, "ts": ts, "action": action, "outcome": outcome, "params": params}
    if host:
        r["host"], r["tenant"] = host, "t1"
    return r


def test_irkit_audit_log_gives_time_to_isolation_phases_and_order(tmp_path: Path) -> None:
    case = tmp_path / "case"
    (case / "audit").mkdir(parents=True)
    (case / "journal").mkdir()
    (case / "evidence").mkdir()
    (case / "evidence" / "b").write_bytes(b"x" * 123)
    items = [{"id": "i1", "phase": "preserve"}, {"id": "i2", "phase": "isolate"}, {"id": "i3", "phase": "rotate"},
             {"id": "j3", "phase": "rotate"}]
    (case / "journal" / "plan-abcdef0123456789.json").write_text(json.dumps({"items": items}))
    t = "2026-12-01T10:00:{:02d}.000000Z".format
    records = [
        _rec(1, t(1), "run.start", plan="abcdef0123456789ffff"),
        _rec(2, t(2), "step.start", "h1", "intent", item="i1", step_action="triage.collect"),
        _rec(3, t(5), "evidence.collected", "h1"),
        _rec(4, t(6), "step.done", "h1", item="i1", step_action="triage.collect"),
        _rec(5, t(7), "step.start", "h1", "intent", item="i2", step_action="host.isolate"),
        _rec(6, t(9), "host.isolated", "h1"),
        _rec(7, t(9), "step.done", "h1", item="i2", step_action="host.isolate"),
        _rec(8, t(10), "step.start", "h1", "intent", item="i3", step_action="accounts.rotate"),
        _rec(9, t(11), "credential.applied", "h1"),
        _rec(10, t(12), "step.done", "h1", item="i3", step_action="accounts.rotate"),
        # h2 changed without evidence: an order violation the bench must report
        _rec(11, t(13), "step.done", "h2", "failed", item="j3", step_action="accounts.rotate", error="boom"),
        _rec(12, t(13), "credential.applied", "h2"),
        _rec(13, t(14), "run.end", status="done", ok=1, failed=1),
    ]
    (case / "audit" / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    start = bench_contain.epoch(t(0))
    out = bench_contain.analyze_irkit(case, start, 2)
    assert out["time_to_isolation_s"] == 9.0
    assert out["planning_s"] == 1.0
    assert list(out["phases"]) == ["preserve", "isolate", "rotate"]
    assert out["phases"]["preserve"] == {"start_s": 2.0, "end_s": 6.0, "wall_s": 4.0, "steps_ok": 1,
                                         "steps_failed": 0, "steps_refused_or_skipped": 0}
    assert out["phases"]["rotate"]["steps_failed"] == 1
    assert out["evidence_before_credential_changes"] == {"hosts_changed": 2, "violations": ["h2"]}
    assert out["evidence_bytes"] == 123
    assert any("accounts.rotate" in k and "boom" in k for k in out["failures"])
    assert out["run_end"] == {"status": "done", "ok": 1, "failed": 1}
