"""Finding 1 (security review of 0085039): recovery laundering.

Someone who can write ``log.jsonl`` but holds no key appends well-formed, chained records (a forged
``approval.given``, ``step.done ok``, ...). On 0085039 the next irkit command that opened the log
with the key signed them ("audit.recovered ... they are signed now") and ``audit verify`` said VALID.
Now only lines carrying the writer's own MAC enter the signed range; the others are flagged with
their seq in the log and reported by every later verify, and control decisions never see them.

Fails on 0085039: after the reopen, ``verify_case(...).ok`` was True and the forged record was inside
the signed range (poc_launder.py); ``irkit resume --retry-failed`` believed a forged ``step.done ok``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ir_toolkit.audit import layout
from ir_toolkit.audit import verify as averify
from ir_toolkit.audit.log import AuditLog, iter_records, signed_records
from ir_toolkit.audit.records import build_record, encode_record
from ir_toolkit.cli.main import main
from ir_toolkit.secrets import keystore

REPO = Path(__file__).resolve().parents[1]
IRKIT = str(Path(sys.executable).with_name("irkit"))


def forge_append(log_file: Path, *, case: str, action: str, actor: str, params: dict, outcome: str = "ok",
                 tenant: str | None = None, host: str | None = None) -> int:
    """What an insider without the key can do: append a canonical record chained to the last line."""
    lines = log_file.read_bytes().splitlines()
    seq = len(lines) + 1
    rec = build_record(seq=seq, prev=hashlib.sha256(b"\x00" + lines[-1]).hexdigest(), case=case, action=action,
                       actor=actor, tenant=tenant, host=host, params=params, outcome=outcome,
                       ts="2026-12-01T06:00:00.000000Z")
    with open(log_file, "ab") as fh:
        fh.write(encode_record(rec) + b"\n")
    return seq


def test_poc_launder_forged_record_is_never_signed_into_the_history(signer):
    """poc_launder.py, ported: forged approval appended, the responder's next command opens the log."""
    case = "IR-3"
    log = AuditLog.open(case, origin=f"acme/ir/{case}", signer=signer)
    log.append_durable(action="step.done", actor="dana", host="web01", params={"summary": "isolated"})
    log.close()
    assert averify.verify_case(case).ok
    path = layout.log_path(case)
    forged = forge_append(path, case=case, action="approval.given", actor="Hank Scorpio", tenant="globex",
                          params={"plan": "ab" * 32, "approver": "Hank Scorpio", "kind": "signed approval"})
    r = averify.verify_case(case)
    assert not r.ok and r.first_bad_seq == forged

    # the next normal open/close with the key: the forged line has no writer MAC
    with AuditLog.open(case, signer=signer) as reopened:
        assert reopened.untrusted == [(forged, forged)]
        assert all(x["actor"] != "Hank Scorpio" for x in reopened.verified_records())
    r = averify.verify_case(case)
    assert not r.ok, "the forged record was laundered into the signed range"
    assert r.first_bad_seq == forged and r.unauthenticated == [[forged, forged]]
    assert any(p.kind == "unauthenticated" and p.seq == forged for p in r.problems)
    # the recovery record itself says what happened
    recovered = [x for x in iter_records(case) if x["action"] == "audit.recovered"]
    assert recovered[-1]["params"]["unauthenticated"] == [[forged, forged]]
    # decisions made outside a writing process do not see it either
    assert all(x["actor"] != "Hank Scorpio" for x in signed_records(case))

    # ... and it stays flagged however often the log is reopened and extended
    for _ in range(3):
        with AuditLog.open(case, signer=signer) as again:
            again.append_durable(action="step.done", actor="dana", host="web02", params={"summary": "x"})
    r = averify.verify_case(case)
    assert not r.ok and r.first_bad_seq == forged
    assert sum(1 for x in iter_records(case) if x["action"] == "audit.recovered") == 1


def test_a_crashed_writers_own_tail_is_still_recovered_and_signed(signer):
    """The legitimate case recovery exists for: the writer's fsynced lines, checkpoint lost."""
    case = "IR-4"
    log = AuditLog.open(case, origin=f"acme/ir/{case}", signer=signer)
    log.append_durable(action="step.done", actor="dana", host="web01", params={})
    (log.directory / layout.CHECKPOINT_FILE).unlink()           # as if it died before signing
    log._release()
    from ir_toolkit.audit import log as logmod

    logmod._registry.pop(log.directory.resolve(), None)
    assert not averify.verify_case(case).ok
    with AuditLog.open(case, signer=signer):
        pass
    assert averify.verify_case(case).ok


def test_tampered_mac_file_cannot_vouch_for_a_forged_line(signer):
    """A MAC line copied from another seq, or made with another key, does not authenticate."""
    case = "IR-5"
    with AuditLog.open(case, origin=f"acme/ir/{case}", signer=signer) as log:
        log.append_durable(action="a", actor="x")
    path = layout.log_path(case)
    macs = (path.parent / layout.MAC_FILE).read_text().splitlines()
    forged = forge_append(path, case=case, action="step.done", actor="mallory", params={"item": "p/0/h"})
    from ir_toolkit.audit.log import line_mac, line_mac_key
    from ir_toolkit.tlog.note import Signer

    other_key = line_mac_key(Signer.generate("mallory/key"))
    leaf = hashlib.sha256(b"\x00" + path.read_bytes().splitlines()[-1]).digest()
    with open(path.parent / layout.MAC_FILE, "a") as fh:
        fh.write(f"{forged} {macs[-1].split()[1]}\n")                     # replayed from another line
        fh.write(f"{forged} {line_mac(other_key, f'acme/ir/{case}', forged, leaf)}\n")   # wrong key
    with AuditLog.open(case, signer=signer) as log:
        assert log.untrusted == [(forged, forged)]
    assert averify.verify_case(case).first_bad_seq == forged


@pytest.fixture
def cli_env(irkit_home, monkeypatch):
    monkeypatch.setenv("IRKIT_KEY_PASSPHRASE", "f01 passphrase")
    monkeypatch.setenv(keystore.TEST_SCRYPT_ENV, "10")
    keystore.init_keys("f01 passphrase", name="acme-ctl/irkit-responder")
    return irkit_home


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def test_escrow_get_and_audit_checkpoint_reopen_the_log_but_the_forgery_stays_reported(cli_env, capsys):
    from ir_toolkit.secrets import escrow as esc

    case = "IR-6"
    signer = keystore.load_signing_key("f01 passphrase")
    with AuditLog.open(case, origin=f"acme/ir/{case}", signer=signer) as log:
        log.append_durable(action="run.start", actor="dana", params={"plan": "cd" * 32})
    store = esc.Escrow(case)
    entry = store.put(msp="acme", tenant="globex", host="web01", account="mspadmin", secret="S3cret-pw-f01-xyz",
                      recipients=[keystore.escrow_public_key()])
    store.set_state(entry, esc.VERIFIED)
    forged = forge_append(layout.log_path(case), case=case, action="escrow.read", actor="nobody",
                          tenant="globex", host="web01", params={"account": "mspadmin", "entry": "x"})
    code, out, err = run(["escrow", "get", "--case", case, "--host", "web01", "--account", "mspadmin"], capsys)
    assert code == 0 and out == "S3cret-pw-f01-xyz\n", err
    code, out, err = run(["audit", "checkpoint", "--case", case, "--sign"], capsys)
    assert code == 0
    code, out, err = run(["audit", "verify", "--case", case], capsys)
    assert code == 1
    assert f"seq {forged}: record {forged} appended to the log without the signing key" in out
    assert f"INVALID: seq {forged}:" in err
    # the genuine escrow.read of `escrow get` is there and trusted; the forged one is not
    reads = [r for r in signed_records(case) if r["action"] == "escrow.read"]
    assert [r["actor"] for r in reads] != [] and all(r["actor"] != "nobody" for r in reads)


# --------------------------------------------------------------------------- on the lab: contain, resume

PLAYBOOK = """\
version: 1
name: f01-laundering
defaults: {timeout: 30, retries: 0, host_timeout: 120, connect_timeout: 10}
phases:
  - name: work
    steps:
      - name: count when allowed
        action: command.run
        params: {command: "test -e /var/tmp/irkit-f01-allow && echo run >> /var/tmp/irkit-f01-count"}
"""


@pytest.mark.lab
def test_forged_step_done_survives_contain_escrow_get_and_resume_as_a_reported_forgery(lab_factory, tmp_path):
    lab = lab_factory("fzero", tenants=1, hosts_per_tenant=2)
    env = {**os.environ, "IRKIT_HOME": str(lab.home), "IRKIT_KEY_PASSPHRASE": "f01-lab-passphrase",
           keystore.TEST_SCRYPT_ENV: "10"}
    env.pop("IRKIT_INVENTORY", None)

    def cli(*args):
        return subprocess.run([IRKIT, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)

    assert cli("keys", "init", "--if-missing").returncode == 0
    names = [h["name"] for h in lab.info["hosts"]]
    for name in names:
        lab.exec(name, "rm -f /var/tmp/irkit-f01-allow /var/tmp/irkit-f01-count")
    pb = tmp_path / "f01.yml"
    pb.write_text(PLAYBOOK)
    case = "F01-LAB"
    proc = cli("contain", "--inventory", str(lab.inventory_path), "--playbook", str(pb), "--case", case, "--yes",
               "--format", "json")
    assert proc.returncode == 1, proc.stdout + proc.stderr          # the step failed on every host
    log_file = lab.home / "cases" / case / "audit" / "log.jsonl"
    records = [json.loads(x) for x in log_file.read_bytes().splitlines()]
    failed = [r for r in records if r["action"] == "step.done" and r["outcome"] != "ok"]
    assert {r["host"] for r in failed} == set(names)

    # the insider marks every failed step as done and ok
    forged = [forge_append(log_file, case=case, action="step.done", actor=r["actor"], tenant=r["tenant"],
                           host=r["host"], params={**r["params"], "changed": True}, outcome="ok")
              for r in failed]

    # escrow get reopens the log with the key (its audit record is written)
    old = os.environ.get("IRKIT_HOME")
    os.environ["IRKIT_HOME"] = str(lab.home)
    try:
        from ir_toolkit.secrets import escrow as esc

        store = esc.Escrow(case)
        entry = store.put(msp=lab.msp, tenant=failed[0]["tenant"], host=names[0], account="mspadmin",
                          secret="F01-lab-secret-Qz9", recipients=[keystore.escrow_public_key()])
        store.set_state(entry, esc.VERIFIED)
    finally:
        if old is None:
            os.environ.pop("IRKIT_HOME")
        else:
            os.environ["IRKIT_HOME"] = old
    proc = cli("escrow", "get", "--case", case, "--host", names[0], "--account", "mspadmin")
    assert proc.returncode == 0 and proc.stdout == "F01-lab-secret-Qz9\n", proc.stderr

    # resume --retry-failed must still retry them: the forged "ok" does not count
    for name in names:
        lab.exec(name, "touch /var/tmp/irkit-f01-allow")
    proc = cli("resume", "--case", case, "--retry-failed", "--format", "json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in names:
        assert lab.exec(name, "cat /var/tmp/irkit-f01-count").stdout == b"run\n"

    # contain on the same case reopens the log once more
    proc = cli("contain", "--inventory", str(lab.inventory_path), "--playbook", str(pb), "--case", case, "--yes")
    assert proc.returncode == 0, proc.stdout + proc.stderr

    proc = cli("audit", "verify", "--case", case)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"INVALID: seq {forged[0]}:" in proc.stderr and "appended to the log without the signing key" in proc.stderr
    proc = cli("audit", "verify", "--case", case, "--format", "json")
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["unauthenticated"] == [[forged[0], forged[-1]]]
