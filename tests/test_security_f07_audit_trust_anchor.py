"""Finding 7 (security review of 0085039): default ``audit verify`` trust was self-referential and
truncation to an older checkpoint passed.

* On 0085039 every ``keys/retired/*/signing.vkey`` and ``signing.vkey.pending`` was trusted: an insider
  planted a vkey, rewrote the whole log with their own key and got VALID (poc_audit.py §B). Now
  retired keys are trusted only through the signed rotation chain (``keys/rotations/``, each link
  signed by the old and the new key) that leads to the current key.
* A VALID verdict names what it rests on (self-attested key file, ``--key``, external checkpoint,
  witness).
* Truncating to an older kept checkpoint verified as VALID with only a note (poc_trunc.py); an
  external checkpoint or ``--witness-dir`` detects it, and ``--require-anchor`` makes a missing
  anchor an error (exit 1).

Fails on 0085039: §B's forged log verified ok with default trust; ``--require-anchor``/``--witness-dir``
did not exist (usage error, exit 2), so the truncated log passed every offered check.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ir_toolkit.audit import layout
from ir_toolkit.audit import verify as averify
from ir_toolkit.audit.log import AuditLog
from ir_toolkit.tlog.note import Signer
from ir_toolkit.cli.main import main
from ir_toolkit.secrets import keystore

REPO = Path(__file__).resolve().parents[1]
PASS = "f07 passphrase"


@pytest.fixture
def env(irkit_home, monkeypatch):
    monkeypatch.setenv("IRKIT_KEY_PASSPHRASE", PASS)
    monkeypatch.setenv(keystore.TEST_SCRYPT_ENV, "10")
    monkeypatch.setenv("IRKIT_WITNESS_PASSPHRASE", "f07 witness passphrase")
    keystore.init_keys(PASS, name="ctl/irkit-responder")
    return irkit_home


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def small_log(case: str, signer: Signer, n: int = 2) -> None:
    with AuditLog.open(case, origin=f"acme/ir/{case}", signer=signer) as log:
        for i in range(n):
            log.append_durable(action="credential.rotated", actor="dana", tenant="globex", host=f"web{i:02d}",
                               params={"entry": f"e{i}"})


def test_poc_forged_log_with_a_planted_retired_or_pending_key_is_not_trusted(env):
    """poc_audit.py §B, ported."""
    home = env
    evil = Signer.generate("ctl/irkit-responder")               # same name as the real key, another key
    (home / "keys" / "retired" / "x").mkdir(parents=True)
    (home / "keys" / "retired" / "x" / "signing.vkey").write_text(evil.verifier_key() + "\n")
    small_log("IR-1", evil)                                       # a whole log made with the attacker's key
    res = averify.verify_case("IR-1")
    assert not res.ok and any(p.kind == "trust" for p in res.problems)
    assert evil.verifier_key() not in res.trusted_keys
    # a planted pending key is not trusted either
    shutil.rmtree(home / "keys" / "retired" / "x")
    (home / "keys" / "signing.vkey.pending").write_text(evil.verifier_key() + "\n")
    assert not averify.verify_case("IR-1").ok
    # pinned: as before
    res = averify.verify_case("IR-1", key=[keystore.signing_verifier().vkey])
    assert not res.ok and "no valid checkpoint is signed by a trusted key" in res.reason
    # a forged rotation link (signed only by the attacker) does not make the key trusted
    real = keystore.load_signing_key(PASS)
    from ir_toolkit.tlog.note import sign_note

    link = sign_note(keystore.rotation_link_text(evil.verifier(), real.verifier()), [evil])
    (home / "keys" / "rotations").mkdir(exist_ok=True)
    (home / "keys" / "rotations" / "forged.note").write_text(link)
    assert evil.verifier() not in keystore.trusted_verifiers()
    assert not averify.verify_case("IR-1").ok


def test_retired_key_is_trusted_through_the_signed_rotation_chain(env, capsys):
    old = keystore.load_signing_key(PASS)
    small_log("OLD-1", old)                  # never rotated: stays on the old key
    code, _, err = run(["keys", "rotate"], capsys)
    assert code == 0, err
    assert keystore.load_signing_key(PASS).verifier_key() != old.verifier_key()
    links = list((env / "keys" / "rotations").glob("*.note"))
    assert len(links) == 1
    res = averify.verify_case("OLD-1")
    assert res.ok and old.verifier_key() in res.trusted_keys
    # break the link (drop the new key's signature): the old key is no longer trusted
    text = links[0].read_text()
    body, sigs = text.split("\n\n", 1)
    links[0].write_text(body + "\n\n" + sigs.splitlines()[0] + "\n")
    assert not averify.verify_case("OLD-1").ok


def test_valid_verdict_names_its_anchor(env, capsys, tmp_path):
    signer = keystore.load_signing_key(PASS)
    small_log("IR-A", signer)
    code, out, err = run(["audit", "verify", "--case", "IR-A"], capsys)
    assert code == 0 and "VALID (self-attested)" in out
    assert "anchored to: the responder's key file" in out and "self-attested" in out
    code, out, _ = run(["audit", "verify", "--case", "IR-A", "--key", signer.verifier_key()], capsys)
    assert code == 0 and "anchored to: key(s) given with --key" in out and "self-attested" not in out
    vkey_file = tmp_path / "pinned.vkey"
    vkey_file.write_text(signer.verifier_key() + "\n")
    code, out, _ = run(["audit", "verify", "--case", "IR-A", "--key", f"@{vkey_file}"], capsys)
    assert code == 0 and "key(s) given with --key" in out
    pin = tmp_path / "pin.note"
    assert run(["audit", "checkpoint", "--case", "IR-A", "-o", str(pin)], capsys)[0] == 0
    code, out, _ = run(["audit", "verify", "--case", "IR-A", "--checkpoint", str(pin)], capsys)
    assert code == 0 and f"external checkpoint {pin}" in out


def truncate_to_older_checkpoint(case: str) -> int:
    """poc_trunc.py: cut the log back to a kept checkpoint and remove every newer checkpoint file."""
    a = layout.audit_dir(case)
    kept = sorted(int(p.stem) for p in (a / "checkpoints").glob("*.note"))
    n = kept[0]
    lines = (a / "log.jsonl").read_bytes().splitlines(keepends=True)[:n]
    (a / "log.jsonl").write_bytes(b"".join(lines))
    (a / "checkpoint.note").unlink()
    for p in (a / "checkpoints").glob("*.note"):
        if p.stem != str(n):
            p.unlink()
    shutil.rmtree(a / "witnessed", ignore_errors=True)
    return n


def test_poc_truncation_detected_by_checkpoint_witness_and_require_anchor(env, capsys, tmp_path):
    signer = keystore.load_signing_key(PASS)
    case = "IR-2"
    log = AuditLog.open(case, origin=f"acme/ir/{case}", signer=signer)
    log.append_durable(action="evidence.collected", actor="dana", host="web01", params={})
    log.checkpoint()
    log.append_durable(action="host.reimage.started", actor="dana", host="web01", params={"note": "wipes"})
    log.close()
    wdir = tmp_path / "witness"
    assert run(["audit", "witness", "--witness-dir", str(wdir), "--init"], capsys)[0] == 0
    code, _, err = run(["audit", "witness", "--witness-dir", str(wdir), "--case", case,
                        "--log-key", signer.verifier_key()], capsys)
    assert code == 0, err
    saved = tmp_path / "saved.note"
    assert run(["audit", "checkpoint", "--case", case, "-o", str(saved)], capsys)[0] == 0
    code, out, err = run(["audit", "verify", "--case", case, "--require-anchor", "--witness-dir", str(wdir)], capsys)
    assert code == 0, out + err
    assert "log key(s) pinned by the witness" in out and "cosigned by" in out

    n = truncate_to_older_checkpoint(case)
    # without an anchor the truncation is invisible (the limit of any signed log) ...
    code, out, _ = run(["audit", "verify", "--case", case], capsys)
    assert code == 0 and "UNANCHORED" in out
    # ... so --require-anchor refuses to call it valid
    code, out, err = run(["audit", "verify", "--case", case, "--require-anchor"], capsys)
    assert code == 1 and "--require-anchor: no external checkpoint or witness given" in err
    # an external checkpoint or the witness detects the truncation
    code, out, err = run(["audit", "verify", "--case", case, "--checkpoint", str(saved)], capsys)
    assert code == 1 and f"the log has {n} records but the external checkpoint" in out
    code, out, err = run(["audit", "verify", "--case", case, "--require-anchor", "--witness-dir", str(wdir)],
                         capsys)
    assert code == 1 and f"the log has {n} records but the external checkpoint witness {wdir}" in out
    # a witness that never saw this log is no anchor
    other = tmp_path / "witness2"
    assert run(["audit", "witness", "--witness-dir", str(other), "--init"], capsys)[0] == 0
    code, out, err = run(["audit", "verify", "--case", case, "--require-anchor", "--witness-dir", str(other),
                          "--key", signer.verifier_key()], capsys)
    assert code == 1 and "has no cosigned checkpoint of this log" in err


def test_systemd_unit_verifies_with_require_anchor_and_docs_tell_auditors():
    unit = (REPO / "docs/systemd/irkit-rotate.service").read_text()
    verify_lines = [line for line in unit.splitlines() if "audit verify" in line and not line.startswith("#")]
    assert verify_lines and all("--require-anchor" in line for line in verify_lines)
    doc = (REPO / "docs/audit-log.md").read_text()
    assert "--require-anchor" in doc and "self-attested" in doc
