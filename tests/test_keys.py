"""Responder keys: creation, encryption at rest, passphrases, rotation, CLI."""

from __future__ import annotations

import json
import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization

from ir_toolkit.cli.main import main
from ir_toolkit.errors import InputError
from ir_toolkit.secrets import keystore
from ir_toolkit.secrets.keystore import (
    escrow_public_key,
    get_passphrase,
    init_keys,
    load_escrow_private_key,
    load_signing_key,
    show_keys,
)

PASS = "correct horse battery staple"


@pytest.fixture
def keyenv(irkit_home, monkeypatch):
    monkeypatch.setenv("IRKIT_KEY_PASSPHRASE", PASS)
    monkeypatch.setenv(keystore.TEST_SCRYPT_ENV, "10")
    return irkit_home


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def test_init_creates_encrypted_keys_with_safe_modes(keyenv):
    info = init_keys(PASS, name="acme-ctl/irkit-responder")
    kdir = keyenv / "keys"
    for name in ("signing.key", "escrow.key"):
        assert stat.S_IMODE(os.stat(kdir / name).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(kdir).st_mode) == 0o700
    signer = load_signing_key(PASS)
    assert signer.verifier_key() == info["verifier_key"] == (kdir / "signing.vkey").read_text().strip()
    assert signer.name == "acme-ctl/irkit-responder" and len(signer.key_id) == 4
    # the private key is not in the file in any encoding
    seed = signer.seed()
    raw = (kdir / "signing.key").read_bytes()
    import base64
    assert seed not in raw and base64.b64encode(seed) not in raw and seed.hex().encode() not in raw
    doc = json.loads(raw)
    assert doc["kdf"]["name"] == "scrypt" and doc["aead"]["name"] == "AES-256-GCM"
    # escrow: public part without passphrase, private part decrypts and matches
    pub = escrow_public_key()
    priv = load_escrow_private_key(PASS)
    raw_pub = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert priv.public_key().public_bytes(*raw_pub) == pub.public_bytes(*raw_pub)
    assert (kdir / "escrow.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")


def test_signing_key_signs_verifiably(keyenv):
    init_keys(PASS)
    signer = load_signing_key(PASS)
    sig = signer.sign(b"hello")
    assert signer.verifier().verify_raw(b"hello", sig)
    assert not signer.verifier().verify_raw(b"hellp", sig)


def test_default_scrypt_parameters_are_strong(irkit_home, monkeypatch):
    monkeypatch.delenv(keystore.TEST_SCRYPT_ENV, raising=False)
    init_keys(PASS)
    doc = json.loads((irkit_home / "keys" / "signing.key").read_text())
    assert doc["kdf"]["log2n"] >= 17 and doc["kdf"]["r"] == 8 and doc["kdf"]["p"] == 1
    assert load_signing_key(PASS).name


def test_wrong_passphrase_is_a_clear_input_error(keyenv):
    init_keys(PASS)
    with pytest.raises(InputError, match="wrong passphrase for .*signing.key"):
        load_signing_key("not it")
    with pytest.raises(InputError, match="wrong passphrase"):
        load_escrow_private_key("not it")


def test_tampered_header_fails_to_decrypt(keyenv):
    init_keys(PASS)
    path = keyenv / "keys" / "signing.key"
    doc = json.loads(path.read_text())
    doc["name"] = "attacker/key"
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="wrong passphrase .* modified"):
        load_signing_key(PASS)


def test_missing_keys_say_run_keys_init(keyenv):
    with pytest.raises(InputError, match="no responder keys in .*: run irkit keys init"):
        load_signing_key(PASS)
    with pytest.raises(InputError, match="run irkit keys init"):
        escrow_public_key()


def test_refuses_to_overwrite_without_force_and_retires_with_force(keyenv):
    first = init_keys(PASS)
    with pytest.raises(InputError, match="already exist"):
        init_keys(PASS)
    second = init_keys(PASS, force=True)
    assert second["verifier_key"] != first["verifier_key"]
    retired = list((keyenv / "keys" / "retired").glob("*/escrow.key"))
    assert len(retired) == 1
    # the retired escrow key still decrypts (secrets escrowed to it stay recoverable)
    load_escrow_private_key(PASS, path=retired[0])
    assert first["verifier_key"] in show_keys()["retired_verifier_keys"]


def test_passphrase_from_env_or_error_without_tty(monkeypatch):
    monkeypatch.setenv("IRKIT_KEY_PASSPHRASE", "from-env-123")
    assert get_passphrase() == "from-env-123"
    monkeypatch.delenv("IRKIT_KEY_PASSPHRASE")
    monkeypatch.setattr("sys.stdin.isatty", lambda: False, raising=False)
    with pytest.raises(InputError, match="set IRKIT_KEY_PASSPHRASE or run on a terminal"):
        get_passphrase()


def test_cli_keys_init_show_and_if_missing(keyenv, capsys):
    code, out, _ = run(["keys", "init", "--name", "ctl/resp"], capsys)
    assert code == 0 and "ctl/resp+" in out
    vkey = show_keys()["verifier_key"]
    code, out, _ = run(["keys", "init", "--if-missing"], capsys)
    assert code == 0 and vkey in out
    code, _, err = run(["keys", "init"], capsys)
    assert code == 2 and "already exist" in err and "Traceback" not in err
    code, out, _ = run(["keys", "show", "--format", "json"], capsys)
    assert code == 0 and json.loads(out)["verifier_key"] == vkey


def test_cli_wrong_passphrase_and_missing_keys_exit_2(keyenv, capsys, monkeypatch):
    code, _, err = run(["audit", "checkpoint", "--case", "NOPE", "--sign"], capsys)
    assert code == 2
    code, _, err = run(["keys", "show"], capsys)
    assert code == 2 and err.strip() == f"irkit: error: no responder keys in {keyenv / 'keys'}: run irkit keys init"
    run(["keys", "init"], capsys)
    from ir_toolkit.audit.log import AuditLog

    AuditLog.open("C-1", origin="acme/ir/C-1", signer=load_signing_key(PASS)).close()
    monkeypatch.setenv("IRKIT_KEY_PASSPHRASE", "not-the-passphrase")
    code, _, err = run(["audit", "checkpoint", "--case", "C-1", "--sign"], capsys)
    assert code == 2 and "wrong passphrase" in err and err.count("\n") == 1


def test_cli_keys_rotate_records_rotation_in_each_case(keyenv, capsys):
    from ir_toolkit.audit.log import AuditLog, iter_records
    from ir_toolkit.audit.verify import verify_case

    run(["keys", "init"], capsys)
    old = load_signing_key(PASS)
    for case in ("R-1", "R-2"):
        with AuditLog.open(case, origin=f"acme/ir/{case}", signer=old) as log:
            log.append(action="step.done", actor="t", params={"n": 1})
    code, out, err = run(["keys", "rotate", "--case", "R-1"], capsys)
    assert code == 0, err
    new = load_signing_key(PASS)
    assert new.verifier_key() != old.verifier_key()
    actions = [r["action"] for r in iter_records("R-1")]
    assert actions[-2:] == ["audit.key_rotated", "audit.key_activated"]
    assert "R-2: still signed by the old key" in out
    # both keys are trusted by default (the old one as retired); R-1 verifies across the rotation
    assert verify_case("R-1").ok
    assert verify_case("R-1", key=old.verifier_key()).ok      # pinned old key: trust flows via the rotation
    assert verify_case("R-1", key=new.verifier_key()).ok      # pinned new key: covers all history
    with AuditLog.open("R-1", signer=new) as log:
        log.append_durable(action="step.done", actor="t")
    assert verify_case("R-1").ok
    # R-2 was not rotated: the new key may not sign it
    with pytest.raises(InputError, match="signed by .*not by your key"):
        AuditLog.open("R-2", signer=new)
    assert not (keyenv / "keys" / "signing.key.pending").exists()
