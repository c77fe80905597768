"""Finding 15 (security review of 0085039): escrow entries were not bound to their file, and
``escrow get`` printed secrets whose read could not be audited (part of finding 18).

* A whole record (header included) copied from web01's file into db01's still decrypted, and
  ``Escrow.current(db01)`` returned web01's password (poc_misc.py §1). Now a record whose
  case/tenant/host/account differ from its file's is refused.
* ``escrow get`` printed the secret with only a note when the audit log was held by another process.
  Now it refuses (exit 2) unless ``--unaudited``; the queued read is recorded (MACed with the signing
  key) the next time the log is opened, and a queued record nobody with the key made is rejected.

Fails on 0085039: ``Escrow.current("globex", "db01", ...)`` returned the copied web01 entry and it
decrypted; ``escrow get`` exited 0 printing the secret while the log's flock was held.
"""

from __future__ import annotations

import fcntl
import json
import os

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519

from ir_toolkit.audit import layout
from ir_toolkit.audit.log import AuditLog, iter_records
from ir_toolkit.audit.verify import verify_case
from ir_toolkit.cli.main import main
from ir_toolkit.errors import VerificationFailed
from ir_toolkit.secrets import escrow as esc
from ir_toolkit.secrets import keystore

PASS = "f15 passphrase"


@pytest.fixture
def env(irkit_home, monkeypatch):
    monkeypatch.setenv("IRKIT_KEY_PASSPHRASE", PASS)
    monkeypatch.setenv(keystore.TEST_SCRYPT_ENV, "10")
    keystore.init_keys(PASS, name="acme-ctl/irkit-responder")
    return irkit_home


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def test_poc_record_copied_into_another_hosts_file_is_refused(irkit_home):
    """poc_misc.py §1, ported."""
    key = x25519.X25519PrivateKey.generate()
    store = esc.Escrow("IR-1")
    a = store.put(msp="acme", tenant="globex", host="web01", account="mspadmin", secret="PW-of-web01-xyz",
                  recipients=[key.public_key()])
    store.set_state(a, esc.VERIFIED)
    src = store.path("globex", "web01", "mspadmin")
    dst = store.path("globex", "db01", "mspadmin")
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())
    with pytest.raises(VerificationFailed, match="is for host 'web01', not this file's host 'db01'"):
        store.current("globex", "db01", "mspadmin")
    # the genuine file is untouched and still works
    assert store.current("globex", "web01", "mspadmin").decrypt(key) == "PW-of-web01-xyz"
    # another account's file, or another case's directory, is refused the same way
    other = store.path("globex", "web01", "backup")
    other.write_bytes(src.read_bytes())
    with pytest.raises(VerificationFailed, match="account 'mspadmin'"):
        store.history("globex", "web01", "backup")
    moved = esc.Escrow("IR-2")
    target = moved.path("globex", "web01", "mspadmin")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(src.read_bytes())
    with pytest.raises(VerificationFailed, match="case 'IR-1'"):
        moved.current("globex", "web01", "mspadmin")


def _escrowed(case: str) -> None:
    signer = keystore.load_signing_key(PASS)
    with AuditLog.open(case, origin=f"acme/ir/{case}", signer=signer) as log:
        log.append_durable(action="run.start", actor="dana", params={"plan": "ab" * 32})
    store = esc.Escrow(case)
    entry = store.put(msp="acme", tenant="globex", host="web01", account="mspadmin", secret="S3cret-f15-Zq",
                      recipients=[keystore.escrow_public_key()])
    store.set_state(entry, esc.VERIFIED)


def test_escrow_get_refuses_to_print_when_the_read_cannot_be_audited(env, capsys):
    case = "IR-15"
    _escrowed(case)
    argv = ["escrow", "get", "--case", case, "--host", "web01", "--account", "mspadmin"]
    lock = os.open(layout.audit_dir(case) / layout.LOCK_FILE, os.O_RDWR)
    fcntl.flock(lock, fcntl.LOCK_EX)            # as a running `irkit contain` holds it
    try:
        code, out, err = run(argv, capsys)
        assert code == 2 and out == "" and "S3cret" not in err
        assert "the secret was not printed" in err and "--unaudited" in err and err.count("\n") == 1
        code, out, err = run([*argv, "--unaudited"], capsys)
        assert code == 0 and out == "S3cret-f15-Zq\n"
        assert "queued, recorded the next time the log is opened" in err
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(lock)
    assert not any(r["action"] == "escrow.read" for r in iter_records(case))
    # the next opening of the log records the queued read
    code, out, err = run(argv, capsys)
    assert code == 0 and out == "S3cret-f15-Zq\n"
    reads = [r for r in iter_records(case) if r["action"] == "escrow.read"]
    assert len(reads) == 2
    late = reads[0]["params"]
    assert late["unaudited"] is True and late["recorded_late"] is True and late["entry"]
    assert "another irkit process" in late["why"]
    assert not (layout.audit_dir(case) / layout.PENDING_FILE).exists()
    assert verify_case(case).ok


def test_queued_record_without_the_keys_mac_is_rejected(env, capsys):
    case = "IR-16"
    _escrowed(case)
    pending = layout.audit_dir(case) / layout.PENDING_FILE
    forged = {"record": {"action": "approval.given", "actor": "Hank Scorpio", "params": {"plan": "ab" * 32},
                         "outcome": "ok", "queued_at": "2026-12-01T06:00:00.000000Z"}, "mac": "00" * 32}
    pending.write_text(json.dumps(forged) + "\n")
    with AuditLog.open(case, signer=keystore.load_signing_key(PASS)):
        pass
    records = list(iter_records(case))
    assert not any(r["action"] == "approval.given" for r in records)
    assert records[-1]["action"] == "audit.recovered" and records[-1]["params"]["rejected"] == 1
    assert verify_case(case).ok
