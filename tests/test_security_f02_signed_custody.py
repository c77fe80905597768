"""Finding 2 (security review of 0085039): ``irkit evidence verify`` and the destruction gate trusted
the *unverified* audit log, and passed with a warning when the log was missing.

Now custody records come only from the verified, signed history of the log (``signed_records``;
``verified_records`` outside a writing process), so do resume's "finished", reimage history and the
evidence gate; a missing log fails custody (exit 1) unless ``--no-custody``.

Fails on 0085039: A1 (bundle swapped + custody record edited) and A2 (log removed) both gave
``evidence verify ok = True`` (poc_audit.py §A); a custody record appended without the key opened the
gate; a forged ``reimage.done`` counted as history.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from ir_toolkit.audit import layout
from ir_toolkit.audit import verify as averify
from ir_toolkit.audit.log import AuditLog
from ir_toolkit.audit.records import build_record, encode_record
from ir_toolkit.cli.main import main
from ir_toolkit.secrets import keystore
from ir_toolkit.triage import verify as everify
from ir_toolkit.triage.bundle import BundleWriter, MemberMeta, host_dir
from ir_toolkit.triage.custody import custody_params, record_custody

PASS = "pw-for-poc"
CASE = "IR-1"


@pytest.fixture
def env(irkit_home, monkeypatch):
    monkeypatch.setenv("IRKIT_KEY_PASSPHRASE", PASS)
    monkeypatch.setenv(keystore.TEST_SCRYPT_ENV, "10")
    keystore.init_keys(PASS, name="ctl/irkit-responder")
    return irkit_home


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def bundle(content: bytes, cid: str, *, case: str = CASE, host: str = "web01", status: str = "collected",
           counts: dict | None = None):
    w = BundleWriter(host_dir(case, "globex", host) / cid)
    d = w.add_bytes("files/etc/passwd", content, MemberMeta())
    man = {"files": [{"source_path": "/etc/passwd", "archive_path": "files/etc/passwd", "sha256_received": d,
                      "status": status}], "outputs": []}
    return w.finish(man, b"", {"case": case, "tenant": "globex", "host": host, "collection_id": cid,
                               "status": "complete", "counts": counts or {"collected": 1}})


def forge_append(case: str, **fields) -> int:
    path = layout.log_path(case)
    lines = path.read_bytes().splitlines()
    rec = build_record(seq=len(lines) + 1, prev=hashlib.sha256(b"\x00" + lines[-1]).hexdigest(), case=case,
                       ts="2026-12-01T06:00:00.000000Z", **fields)
    with open(path, "ab") as fh:
        fh.write(encode_record(rec) + b"\n")
    return rec["seq"]


def test_poc_evidence_verify_takes_custody_only_from_the_signed_log(env, capsys):
    """poc_audit.py §A, ported: the bundle is swapped for one without the attacker's passwd line."""
    signer = keystore.load_signing_key(PASS)
    log = AuditLog.open(CASE, origin=f"acme/ir/{CASE}", signer=signer)
    coll = bundle(b"root:x:0:0:root:/root:/bin/bash\nevil:x:0:0::/:/bin/sh\n", "C1")
    record_custody(log, CASE, coll, coll.seal())
    log.append_durable(action="credential.rotated", actor="dana", tenant="globex", host="web01",
                       params={"entry": "e1"})
    log.checkpoint()
    log.close()
    assert averify.verify_case(CASE).ok and all(r.ok for r in everify.verify_case(CASE))

    forged = bundle(b"root:x:0:0:root:/root:/bin/bash\n", "TMP")
    for name in ("bundle.tar", "manifest.json", "seal.json"):
        data = (forged.path / name).read_bytes()
        if name == "seal.json":
            s = json.loads(data)
            s["collection_id"] = "C1"
            data = (json.dumps(s, indent=2, sort_keys=True) + "\n").encode()
        (coll.path / name).write_bytes(data)
    shutil.rmtree(forged.path)
    assert not everify.verify_case(CASE)[0].ok                       # A0: as before

    # A1: also rewrite the custody record inside log.jsonl
    logf = layout.log_path(CASE)
    orig = logf.read_bytes()
    new = json.loads((coll.path / "seal.json").read_text())
    lines = orig.decode().splitlines()
    for i, line in enumerate(lines):
        rec = json.loads(line)
        if rec["action"] == "evidence.collected":
            rec["params"]["bundle_sha256"] = new["bundle_sha256"]
            rec["params"]["manifest_sha256"] = new["manifest_sha256"]
            lines[i] = json.dumps(rec, sort_keys=True, separators=(",", ":"))
    logf.write_text("\n".join(lines) + "\n")
    report = everify.verify_case(CASE)[0]
    assert not report.ok, "evidence verify trusted an edited custody record"
    assert report.custody == "missing" and any("does not verify" in p for p in report.problems)
    code, _, err = run(["evidence", "verify", "--case", CASE], capsys)
    assert code == 1 and "FAILED globex/web01/C1" in err

    # A2: move the audit log away: custody fails (exit 1) unless --no-custody
    logf.rename(logf.with_suffix(".gone"))
    report = everify.verify_case(CASE)[0]
    assert not report.ok and any("no audit log for this case" in p for p in report.problems)
    code, _, err = run(["evidence", "verify", "--case", CASE], capsys)
    assert code == 1 and "no audit log for this case" in err
    # --no-custody checks the bundle alone: the consistent swap passes it, and the output says what was
    # not checked - which is why it is an explicit option and not the default
    code, out, err = run(["evidence", "verify", "--case", CASE, "--no-custody"], capsys)
    assert code == 0 and "--no-custody: the chain of custody was not checked" in err
    # the original log back: the swap is caught again
    logf.with_suffix(".gone").rename(logf)
    logf.write_bytes(orig)
    code, _, err = run(["evidence", "verify", "--case", CASE], capsys)
    assert code == 1 and "differs from the audit log" in err


def test_no_custody_checks_the_bundle_alone(env, capsys):
    bundle(b"root:x:0:0\n", "C9", case="IR-9")
    code, _, err = run(["evidence", "verify", "--case", "IR-9"], capsys)
    assert code == 1 and "no audit log for this case" in err
    code, out, err = run(["evidence", "verify", "--case", "IR-9", "--no-custody", "--format", "json"], capsys)
    assert code == 0, err
    assert json.loads(out)[0]["custody"] == "skipped" and "--no-custody" in err


def test_custody_record_appended_without_the_key_opens_neither_gate_nor_verify(env):
    from ir_toolkit.triage.status import host_evidence_status

    signer = keystore.load_signing_key(PASS)
    with AuditLog.open("IR-G", origin="acme/ir/IR-G", signer=signer) as log:
        log.append_durable(action="run.start", actor="dana", params={"plan": "ab" * 32})
    coll = bundle(b"root:x:0:0\n", "G1", case="IR-G")
    seq = forge_append("IR-G", action="evidence.collected", actor="dana", tenant="globex", host="web01",
                       params=custody_params("IR-G", coll, coll.seal()))
    status = host_evidence_status("IR-G", "globex", "web01")
    assert not status.ready and "no chain-of-custody record" in status.reason
    # also after the key holder reopened the log (the record is flagged, never trusted)
    with AuditLog.open("IR-G", signer=signer) as log:
        assert log.untrusted == [(seq, seq)]
        assert not host_evidence_status("IR-G", "globex", "web01").ready
    assert not host_evidence_status("IR-G", "globex", "web01").ready
    report = everify.verify_case("IR-G")[0]
    assert not report.ok and report.custody == "missing"
    # a genuine record does open it
    with AuditLog.open("IR-G", signer=signer) as log:
        record_custody(log, "IR-G", coll, coll.seal())
        assert host_evidence_status("IR-G", "globex", "web01").ready
    assert host_evidence_status("IR-G", "globex", "web01").ready


def test_forged_reimage_history_and_step_results_do_not_count(env):
    from ir_toolkit.reimage.history import RECORD_DONE, last_reimage
    from ir_toolkit.playbook.journal import journal_state

    signer = keystore.load_signing_key(PASS)
    with AuditLog.open("IR-R", origin="acme/ir/IR-R", signer=signer) as log:
        log.append_durable(action="run.start", actor="dana", params={"plan": "ab" * 32})
        log.append_durable(action="step.done", actor="dana", tenant="globex", host="web01",
                           params={"item": "reimage/0/web01"}, outcome="failed")
    forge_append("IR-R", action=RECORD_DONE, actor="dana", tenant="globex", host="web01",
                 params={"new_host_key_fingerprint": "SHA256:" + "A" * 43})
    forge_append("IR-R", action="step.done", actor="dana", tenant="globex", host="web01",
                 params={"item": "reimage/0/web01"}, outcome="ok")
    assert last_reimage("IR-R", "globex", "web01") is None            # verified prefix, outside a writer
    with AuditLog.open("IR-R", signer=signer) as log:                 # inside the writing process
        assert last_reimage("IR-R", "globex", "web01") is None
        state = journal_state(log.verified_records())
        assert "reimage/0/web01" in state.failed


def test_a_line_edited_while_the_writer_has_the_log_open_is_never_used(env):
    from ir_toolkit.errors import VerificationFailed

    signer = keystore.load_signing_key(PASS)
    with AuditLog.open("IR-E", origin="acme/ir/IR-E", signer=signer) as log:
        log.append_durable(action="evidence.collected", actor="dana", tenant="globex", host="web01",
                           params={"collection_id": "C1", "bundle_sha256": "aa" * 32})
        path = layout.log_path("IR-E")
        path.write_bytes(path.read_bytes().replace(b'"aa', b'"bb', 1))     # same length, in place
        with pytest.raises(VerificationFailed, match="changed on disk at seq 2"):
            log.verified_records(("evidence.collected",))
