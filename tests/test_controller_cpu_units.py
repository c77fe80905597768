"""Controller-CPU fixes of #17 that must not weaken anything: the decrypted-key cache and the run-log level."""

from __future__ import annotations

import io
import json
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ir_toolkit import log
from ir_toolkit.transports.ssh import TransportError, load_private_key


def _write_key(path, passphrase: bytes | None) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    enc = serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, enc))
    path.chmod(0o600)
    return key


def _pub(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_encrypted_key_is_decrypted_once_and_matches_the_file(tmp_path):
    path = tmp_path / "case_key"
    key = _write_key(path, b"case-pass")
    start = time.process_time()
    first = load_private_key(path, "case-pass")
    slow = time.process_time() - start
    start = time.process_time()
    for _ in range(20):
        again = load_private_key(path, "case-pass")
    fast = (time.process_time() - start) / 20
    assert again is first
    assert first.get_name() == "ssh-ed25519"
    assert first.asbytes().endswith(_pub(key))
    assert fast < slow / 10, (fast, slow)  # the bcrypt KDF is not run again


def test_the_cache_never_answers_for_a_wrong_or_missing_passphrase(tmp_path):
    path = tmp_path / "case_key"
    _write_key(path, b"right")
    load_private_key(path, "right")
    with pytest.raises(TransportError, match="wrong passphrase"):
        load_private_key(path, "wrong")
    with pytest.raises(TransportError, match="password"):
        load_private_key(path, None)


def test_a_replaced_key_file_is_read_again(tmp_path):
    path = tmp_path / "case_key"
    _write_key(path, b"p")
    old = load_private_key(path, "p")
    new_key = _write_key(path, b"p")
    new = load_private_key(path, "p")
    assert new is not old and new.asbytes().endswith(_pub(new_key))
    path.unlink()
    with pytest.raises(TransportError, match="does not exist"):
        load_private_key(path, "p")


def test_unencrypted_and_pem_keys_still_load(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    plain = tmp_path / "plain"
    _write_key(plain, None)
    assert load_private_key(plain).get_name() == "ssh-ed25519"
    pem = tmp_path / "rsa.pem"
    pem.write_bytes(rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    assert load_private_key(pem).get_name() == "ssh-rsa"
    ecdsa = tmp_path / "ecdsa"
    ecdsa.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.BestAvailableEncryption(b"e")))
    assert load_private_key(ecdsa, "e").get_name() == "ecdsa-sha2-nistp256"
    junk = tmp_path / "junk"
    junk.write_text("not a key\n")
    with pytest.raises(TransportError, match="cannot load responder key"):
        load_private_key(junk)


def test_debug_records_stay_out_of_the_default_run_log(tmp_path):
    """The per-path debug records of a triage (hundreds per host) are not formatted nor written at the
    default level; info and above are; at -vv (verbosity 2) debug is written too."""
    from ir_toolkit.triage.collector import CollectionLog

    path = tmp_path / "run.jsonl"
    log.configure(json_path=path, verbosity=0, stream=io.StringIO())
    try:
        clog = CollectionLog("h1")
        for i in range(2000):
            clog.add("info", "symlink recorded, not followed", artifact="a", path=f"/usr/lib/x{i}")
        clog.add("warning", "tools missing on host", tools=["lsattr"])
        log.get_logger("engine").info("step.done", host="h1")
    finally:
        log.configure(stream=io.StringIO())
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["event"] for r in records] == ["tools missing on host", "step.done"]
    assert len(clog.records) == 2001  # the bundle's own collection log still has every path's fate
    assert path.stat().st_size < 1024

    verbose = tmp_path / "verbose.jsonl"
    log.configure(json_path=verbose, verbosity=2, stream=io.StringIO())
    try:
        CollectionLog("h1").add("info", "symlink recorded, not followed", path="/x")
    finally:
        log.configure(stream=io.StringIO())
    assert "symlink recorded" in verbose.read_text()
