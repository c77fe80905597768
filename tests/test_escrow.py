"""Escrow: envelope encryption, append-only states, durability order, torn lines, and the `irkit escrow` CLI."""

from __future__ import annotations

import datetime as dt
import json
import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa, x25519

from ir_toolkit.errors import InputError
from ir_toolkit.secrets import escrow as esc
from ir_toolkit.redaction import forget_secrets, redact_text


@pytest.fixture
def store(irkit_home):
    return esc.Escrow("CASE-1")


def put(store, secret="s3cret-Password!", recipients=None, host="web01", account="mspadmin", **kw):
    if recipients is None:
        recipients = [x25519.X25519PrivateKey.generate().public_key()]
    return store.put(msp="acme", tenant="globex", host=host, account=account, secret=secret,
                     recipients=recipients, **kw)


def test_roundtrip_for_every_recipient_and_algorithm(store):
    x1, x2 = x25519.X25519PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    r = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for alg in esc.DATA_ALGS:
        entry = put(store, "pw-" + alg, [x1.public_key(), x2.public_key(), r.public_key()], data_alg=alg)
        again = store.get("globex", "web01", "mspadmin", entry.id)
        assert again.envelope["data_alg"] == alg
        for key in (x1, x2, r):
            assert again.decrypt(key) == "pw-" + alg
    outsider = x25519.X25519PrivateKey.generate()
    with pytest.raises(InputError, match="not a recipient"):
        again.decrypt(outsider)


def test_file_holds_no_plaintext_and_list_shows_no_secret(store):
    key = x25519.X25519PrivateKey.generate()
    entry = put(store, "Very-Secret-Value-123", [key.public_key()])
    raw = store.path("globex", "web01", "mspadmin").read_bytes()
    assert b"Very-Secret-Value-123" not in raw
    summary = json.dumps(entry.summary())
    assert "Very-Secret-Value-123" not in summary and "ciphertext" not in summary
    assert oct(store.path("globex", "web01", "mspadmin").stat().st_mode & 0o777) == "0o600"


def test_ciphertext_is_bound_to_its_entry(store):
    key = x25519.X25519PrivateKey.generate()
    put(store, "pw-web01", [key.public_key()], host="web01")
    put(store, "pw-web02", [key.public_key()], host="web02")
    one = store.path("globex", "web01", "mspadmin")
    two = store.path("globex", "web02", "mspadmin")
    # move web02's envelope into web01's entry: the associated data no longer matches
    rec1, rec2 = json.loads(one.read_text()), json.loads(two.read_text())
    rec1["envelope"] = rec2["envelope"]
    one.write_text(json.dumps(rec1) + "\n")
    with pytest.raises(InputError, match="does not decrypt"):
        store.history("globex", "web01", "mspadmin")[0].decrypt(key)


def test_state_machine(store):
    entry = put(store)
    assert entry.state == esc.PENDING
    store.set_state(entry, esc.APPLIED)
    store.set_state(entry, esc.VERIFIED, note="login ok")
    with pytest.raises(InputError, match="cannot go from verified to pending"):
        store.set_state(entry, esc.PENDING)
    with pytest.raises(InputError, match="cannot go from verified to rolled_back"):
        store.set_state(entry, esc.ROLLED_BACK)
    other = put(store)
    store.set_state(other, esc.ROLLED_BACK)
    with pytest.raises(InputError):
        store.set_state(other, esc.APPLIED)
    history = store.history("globex", "web01", "mspadmin")
    assert [e.state for e in history] == [esc.VERIFIED, esc.ROLLED_BACK]
    assert [h["state"] for h in history[0].history] == ["pending", "applied", "verified"]
    assert store.current("globex", "web01", "mspadmin").id == entry.id
    third = put(store)
    assert [e.id for e in store.unsettled("globex", "web01", "mspadmin")] == [third.id]


def test_put_is_durable_before_it_returns(store, monkeypatch):
    """The file and its directories are fsynced before put() returns (i.e. before anyone applies it)."""
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    entry = put(store)
    path = str(store.path("globex", "web01", "mspadmin"))
    assert path in synced                                   # the file itself
    assert str(store.root / "globex" / "web01") in synced   # the directory entry of the new file
    assert str(store.root) in synced                        # the new tenant directory in escrow/
    synced.clear()
    store.set_state(entry, esc.APPLIED)
    assert path in synced


def test_torn_last_line_is_ignored_and_terminated(store):
    key = x25519.X25519PrivateKey.generate()
    first = put(store, "first-password", [key.public_key()])
    path = store.path("globex", "web01", "mspadmin")
    with open(path, "ab") as fh:
        fh.write(b'{"type":"secret","id":"dead","envelope":{"data_a')   # a crash mid-write
    assert [e.id for e in store.history("globex", "web01", "mspadmin")] == [first.id]
    second = put(store, "second-password", [key.public_key()])
    entries = store.history("globex", "web01", "mspadmin")
    assert [e.id for e in entries] == [first.id, second.id]
    assert entries[1].decrypt(key) == "second-password"


def test_decrypted_secret_is_registered_for_redaction(store):
    forget_secrets()
    key = x25519.X25519PrivateKey.generate()
    entry = store.put(msp="acme", tenant="globex", host="h", account="a", secret="Zq9-unique-secret",
                      recipients=[key.public_key()])
    forget_secrets()
    assert entry.decrypt(key) == "Zq9-unique-secret"
    assert redact_text("login with Zq9-unique-secret") == "login with [REDACTED]"


def test_last_verified_spans_cases_and_msps(irkit_home):
    key = x25519.X25519PrivateKey.generate().public_key()
    old = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    a = esc.Escrow("CASE-A")
    e1 = a.put(msp="acme", tenant="t", host="h", account="u", secret="one-password", recipients=[key], now=old)
    a.set_state(e1, esc.VERIFIED, now=old)
    b = esc.Escrow("CASE-B")
    e2 = b.put(msp="acme", tenant="t", host="h", account="u", secret="two-password", recipients=[key])
    assert esc.last_verified("acme", "t", "h", "u").id == e1.id   # e2 is still pending
    b.set_state(e2, esc.VERIFIED)
    assert esc.last_verified("acme", "t", "h", "u").id == e2.id
    other = esc.Escrow("CASE-C")
    e3 = other.put(msp="other-msp", tenant="t", host="h", account="u", secret="three-password", recipients=[key])
    other.set_state(e3, esc.VERIFIED)
    assert esc.last_verified("acme", "t", "h", "u").id == e2.id
    assert esc.last_verified("acme", "t", "h", "nobody") is None


def test_bad_names_and_missing_recipients(store):
    with pytest.raises(InputError, match="invalid host"):
        put(store, host="../etc")
    with pytest.raises(InputError, match="no recipient"):
        put(store, recipients=[])


def test_public_and_private_key_files(tmp_path):
    x = x25519.X25519PrivateKey.generate()
    pem = tmp_path / "x.pub"
    pem.write_bytes(x.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo))
    assert esc.key_id(esc.load_public_key(pem)) == esc.key_id(x.public_key())
    r = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ssh = tmp_path / "r.pub"
    ssh.write_bytes(r.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    assert esc.key_id(esc.load_public_key(ssh)) == esc.key_id(r.public_key())
    enc = tmp_path / "r.key"
    enc.write_bytes(r.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.BestAvailableEncryption(b"pw-for-key")))
    with pytest.raises(InputError, match="encrypted"):
        esc.load_private_key_file(enc)
    with pytest.raises(InputError, match="wrong passphrase"):
        esc.load_private_key_file(enc, "nope")
    assert esc.load_private_key_file(enc, "pw-for-key").key_size == 2048
    junk = tmp_path / "junk"
    junk.write_text("hello")
    with pytest.raises(InputError, match="not a public key"):
        esc.load_public_key(junk)


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def keyed_home(irkit_home, monkeypatch):
    from ir_toolkit.secrets.keystore import init_keys

    monkeypatch.setenv("IRKIT_KEY_PASSPHRASE", "test-passphrase")
    monkeypatch.setenv("IRKIT_INSECURE_TEST_SCRYPT_LOG2N", "10")
    init_keys("test-passphrase")
    return irkit_home


def run(argv, capsys):
    from ir_toolkit.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_cli_list_and_get(keyed_home, capsys, tmp_path):
    from ir_toolkit.secrets.keystore import escrow_public_key

    other = x25519.X25519PrivateKey.generate()
    store = esc.Escrow("IR-9")
    old = store.put(msp="acme", tenant="globex", host="web01", account="mspadmin", secret="Old-Password-1",
                    recipients=[escrow_public_key(), other.public_key()])
    store.set_state(old, esc.VERIFIED)
    new = store.put(msp="acme", tenant="globex", host="web01", account="mspadmin", secret="New-Password-2",
                    recipients=[escrow_public_key(), other.public_key()])
    store.set_state(new, esc.APPLIED)
    store.set_state(new, esc.VERIFIED)
    pending = store.put(msp="acme", tenant="globex", host="db01", account="mspadmin", secret="Pending-Pw-3",
                        recipients=[escrow_public_key()])

    code, out, err = run(["escrow", "list", "--case", "IR-9", "--format", "json"], capsys)
    assert code == 0
    rows = json.loads(out)
    assert {(r["host"], r["state"]) for r in rows} == {("web01", "verified"), ("db01", "pending")}
    assert "Password" not in out
    code, out, _ = run(["escrow", "list", "--case", "IR-9", "--all", "--format", "json"], capsys)
    assert len(json.loads(out)) == 3
    code, out, _ = run(["escrow", "list", "--case", "IR-9"], capsys)
    assert code == 0 and "web01" in out and "Password" not in out

    code, out, err = run(["escrow", "get", "--case", "IR-9", "--host", "web01", "--account", "mspadmin"], capsys)
    assert code == 0 and out == "New-Password-2\n"
    code, out, _ = run(["escrow", "get", "--case", "IR-9", "--host", "web01", "--account", "mspadmin",
                        "--entry", old.id], capsys)
    assert out == "Old-Password-1\n"
    keyfile = tmp_path / "other.pem"
    keyfile.write_bytes(other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    code, out, _ = run(["escrow", "get", "--case", "IR-9", "--host", "web01", "--account", "mspadmin",
                        "--key", str(keyfile)], capsys)
    assert code == 0 and out == "New-Password-2\n"
    # errors: one line, exit 2
    code, out, err = run(["escrow", "get", "--case", "IR-9", "--host", "db01", "--account", "mspadmin"], capsys)
    assert code == 2 and "is pending" in err and "--entry" in err and err.count("\n") == 1
    assert "Pending-Pw-3" not in out + err
    code, _, err = run(["escrow", "get", "--case", "IR-9", "--host", "db01", "--account", "mspadmin",
                        "--entry", pending.id, "--key", str(keyfile)], capsys)
    assert code == 2 and "not a recipient" in err
    code, _, err = run(["escrow", "get", "--case", "IR-9", "--host", "nope", "--account", "mspadmin"], capsys)
    assert code == 2 and err.startswith("irkit: error: case IR-9: no escrowed secret")
    code, _, err = run(["escrow", "list", "--case", "NOPE"], capsys)
    assert code == 2 and "no case NOPE" in err


def test_cli_get_wrong_passphrase(keyed_home, capsys, monkeypatch):
    from ir_toolkit.secrets.keystore import escrow_public_key

    store = esc.Escrow("IR-10")
    entry = store.put(msp="acme", tenant="t", host="h", account="a", secret="Some-Password-9",
                      recipients=[escrow_public_key()])
    store.set_state(entry, esc.VERIFIED)
    monkeypatch.setenv("IRKIT_KEY_PASSPHRASE", "not-the-passphrase")
    code, out, err = run(["escrow", "get", "--case", "IR-10", "--host", "h", "--account", "a"], capsys)
    assert code == 2 and "wrong passphrase" in err and "Some-Password-9" not in out


def test_escrow_reference_resolves_newest_verified(store):
    key = x25519.X25519PrivateKey.generate()
    first = put(store, "first-pw-1", [key.public_key()])
    store.set_state(first, esc.VERIFIED)
    put(store, "pending-pw-2", [key.public_key()])
    assert esc.resolve_reference("CASE-1", "globex/web01/mspadmin", key) == "first-pw-1"
    with pytest.raises(InputError, match="use escrow:TENANT/HOST/ACCOUNT"):
        esc.resolve_reference("CASE-1", "web01/mspadmin", key)
    with pytest.raises(InputError, match="no verified secret"):
        esc.resolve_reference("CASE-1", "globex/web02/mspadmin", key)
