"""Security review finding 14: evidence has its own recipient key pair, separate from the escrow key.

The review: ``--encrypt`` and ``encrypt: true`` encrypted bundles to the escrow key, so whoever may read
evidence could decrypt every escrowed password. Now ``keys init`` makes an evidence key pair, triage
encrypts to it, ``evidence extract`` decrypts with it, and it can have a passphrase of its own: an
analyst with the evidence passphrase extracts bundles and still cannot open the escrow key. Real sshd on
loopback, the real collector and the real CLI.
"""

from __future__ import annotations

import os

import pytest

from ir_toolkit.cli.main import main
from ir_toolkit.secrets import keystore
from ir_toolkit.triage.bundle import latest_collection
from ir_toolkit.triage.crypto import fingerprint
from triage_helpers import make_evidence_tree, start_sshd, write_definitions, write_inventory

pytestmark = [pytest.mark.lab, pytest.mark.skipif(os.geteuid() != 0, reason="starting sshd needs root")]

KEYS_PASSPHRASE = "escrow-and-signing-passphrase"
EVIDENCE_PASSPHRASE = "analyst-evidence-passphrase"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = start_sshd(tmp_path_factory.mktemp("sshd"), ("127.0.0.1",))
    yield server
    server.stop()


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_f14_evidence_is_encrypted_to_its_own_key_not_the_escrow_key(irkit_home, sshd, tmp_path, capsys,
                                                                       monkeypatch):
    monkeypatch.setenv("IRKIT_INSECURE_TEST_SCRYPT_LOG2N", "10")
    monkeypatch.setenv("IRKIT_KEY_PASSPHRASE", KEYS_PASSPHRASE)
    monkeypatch.setenv("IRKIT_EVIDENCE_PASSPHRASE", EVIDENCE_PASSPHRASE)
    code, out, err = run(["keys", "init"], capsys)
    assert code == 0, err
    assert "evidence public key" in out
    escrow_fp = fingerprint(keystore.escrow_public_key())
    evidence_fp = fingerprint(keystore.evidence_public_key())
    assert escrow_fp != evidence_fp
    # the evidence key is sealed with its own passphrase, the escrow key is not opened by it
    keystore.load_evidence_private_key(EVIDENCE_PASSPHRASE)
    with pytest.raises(Exception):
        keystore.load_escrow_private_key(EVIDENCE_PASSPHRASE)

    root = tmp_path / "host"
    make_evidence_tree(root)
    inventory = write_inventory(tmp_path / "inv.yml", sshd, {"web01": ("globex", "127.0.0.1")})
    defs = write_definitions(tmp_path / "defs", root)
    code, _, err = run(["triage", "--inventory", str(inventory), "--case", "F14", "--profile", "t",
                        "--definitions", str(defs), "--encrypt"], capsys)
    assert code == 0, err
    coll = latest_collection("F14", "web01")
    assert coll.encrypted
    assert coll.seal()["recipients"] == [evidence_fp]  # not the escrow key

    # an analyst: the evidence passphrase only, and no escrow key at all on their copy
    monkeypatch.delenv("IRKIT_KEY_PASSPHRASE")
    escrow_key = irkit_home / "keys" / "escrow.key"
    escrow_key.rename(tmp_path / "escrow.key.elsewhere")
    code, out, err = run(["evidence", "extract", "--case", "F14", "--host", "web01", "--out",
                          str(tmp_path / "out")], capsys)
    assert code == 0, err
    assert (tmp_path / "out" / "manifest.json").exists()
    code, _, err = run(["evidence", "extract", "--case", "F14", "--host", "web01", "--raw", "--out",
                        str(tmp_path / "raw.tar")], capsys)
    assert code == 0, err


def test_f14_keys_made_before_the_evidence_key_get_one_on_request(irkit_home, capsys, monkeypatch):
    monkeypatch.setenv("IRKIT_INSECURE_TEST_SCRYPT_LOG2N", "10")
    monkeypatch.setenv("IRKIT_KEY_PASSPHRASE", KEYS_PASSPHRASE)
    keystore.init_keys(KEYS_PASSPHRASE)
    for name in ("evidence.key", "evidence.pub"):
        (irkit_home / "keys" / name).unlink()  # an older home
    with pytest.raises(Exception) as exc:
        keystore.evidence_public_key()
    assert "irkit keys init --evidence-key" in str(exc.value)
    code, out, err = run(["keys", "init", "--evidence-key"], capsys)
    assert code == 0, err
    assert fingerprint(keystore.evidence_public_key()) != fingerprint(keystore.escrow_public_key())
    code, _, err = run(["keys", "init", "--evidence-key"], capsys)
    assert code == 2 and "already exists" in err
