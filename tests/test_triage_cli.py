"""``irkit triage`` end to end against a real sshd on loopback: pinned host keys, bundles, custody records.

Two inventory hosts are the same sshd on 127.0.0.1 and 127.0.0.2; 127.0.0.3 is
pinned to a different key (an interception) and must be refused before login.
"""

from __future__ import annotations

import json
import os

import pytest

from ir_toolkit.audit.log import iter_records
from ir_toolkit.cli.main import main
from ir_toolkit.secrets import keystore
from ir_toolkit.triage.bundle import list_collections
from ir_toolkit.triage.status import host_evidence_status
from triage_helpers import make_evidence_tree, start_sshd, write_definitions, write_inventory

pytestmark = [pytest.mark.lab, pytest.mark.skipif(os.geteuid() != 0, reason="starting sshd needs root")]

ADDRESSES = ("127.0.0.1", "127.0.0.2", "127.0.0.3")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = start_sshd(tmp_path_factory.mktemp("sshd"), ADDRESSES)
    yield server
    server.stop()


@pytest.fixture
def setup(irkit_home, sshd, tmp_path, monkeypatch):
    monkeypatch.setenv("IRKIT_KEY_PASSPHRASE", "correct horse battery staple")
    monkeypatch.setenv("IRKIT_INSECURE_TEST_SCRYPT_LOG2N", "10")
    keystore.init_keys("correct horse battery staple")
    root = tmp_path / "host"
    paths = make_evidence_tree(root)
    defs = write_definitions(tmp_path / "defs", root)
    # 127.0.0.3 is pinned to another key: what an interception looks like.
    known = tmp_path / "known_hosts"
    other = "AAAAC3NzaC1lZDI1NTE5AAAAIOrVtfh8qj0g2qE7bCC2bY2aXiQH3u8c3yFmNQn3v6rM"
    lines = [ln for ln in sshd.known_hosts.read_text().splitlines() if "127.0.0.3" not in ln]
    known.write_text("\n".join(lines + [f"[127.0.0.3]:{sshd.port} ssh-ed25519 {other}"]) + "\n")
    inventory = write_inventory(tmp_path / "inv.yml", sshd, {
        "web01": ("globex", "127.0.0.1"), "app01": ("initech", "127.0.0.2"), "evil01": ("initech", "127.0.0.3"),
        "down01": ("initech", "127.0.0.4"),  # nothing listens there
    }, known_hosts=known)
    return {"inventory": str(inventory), "defs": str(defs), "paths": paths, "home": irkit_home}


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def triage(setup, case, *extra):
    return ["triage", "--inventory", setup["inventory"], "--case", case, "--profile", "t",
            "--definitions", setup["defs"], *extra]


def test_triage_collects_each_host_and_records_custody(setup, capsys):
    code, out, err = run(triage(setup, "C1", "--host", "web01", "--host", "app01", "--format", "json"), capsys)
    assert code == 0, err
    rows = json.loads(out)
    assert {(r["tenant"], r["host"], r["status"]) for r in rows} == {("globex", "web01", "complete"),
                                                                     ("initech", "app01", "complete")}
    records = [r for r in iter_records("C1") if r["action"] == "evidence.collected"]
    assert {(r["tenant"], r["host"]) for r in records} == {("globex", "web01"), ("initech", "app01")}
    for coll in list_collections("C1"):
        seal = coll.seal()
        rec = next(r for r in records if r["host"] == coll.host)
        assert rec["params"]["bundle_sha256"] == seal["bundle_sha256"]
        assert rec["params"]["manifest_sha256"] == seal["manifest_sha256"]
        assert seal["host_key_fingerprint"].startswith("SHA256:")
        assert host_evidence_status("C1", coll.tenant, coll.host).ready
    assert not host_evidence_status("C1", "initech", "evil01").ready
    code, out, err = run(["evidence", "list", "--case", "C1", "--format", "json"], capsys)
    assert code == 0 and {r["custody"] for r in json.loads(out)} == {"recorded"}
    code, out, err = run(["evidence", "verify", "--case", "C1", "--format", "json"], capsys)
    assert code == 0, err
    assert all(r["result"] == "ok" and r["custody"] == "recorded" for r in json.loads(out))
    code, _, err = run(["audit", "verify", "--case", "C1"], capsys)
    assert code == 0, err


def test_changed_host_key_is_refused_before_login(setup, capsys):
    code, out, err = run(triage(setup, "C2", "--tenant", "initech"), capsys)
    assert code == 1
    assert "initech/evil01: host_key_changed: host key changed" in err
    assert "initech/down01: unreachable: cannot connect to 127.0.0.4" in err
    assert "triage: 2 of 3 host(s) not collected" in err
    assert [c.host for c in list_collections("C2")] == ["app01"]
    failed = [r for r in iter_records("C2") if r["action"] == "evidence.collection_failed"]
    assert sorted(r["host"] for r in failed) == ["down01", "evil01"]
    assert {r["outcome"] for r in failed} == {"failed"}


def test_one_changed_byte_fails_verify_naming_the_file(setup, capsys):
    assert run(triage(setup, "C3", "--host", "web01"), capsys)[0] == 0
    (coll,) = list_collections("C3")
    import tarfile

    auth = str(setup["paths"]["auth_log"])
    with tarfile.open(coll.bundle_path) as tar:
        offset = tar.getmember("files" + auth).offset_data
    data = bytearray(coll.bundle_path.read_bytes())
    data[offset + 10] ^= 0x01
    coll.bundle_path.write_bytes(bytes(data))
    code, _, err = run(["evidence", "verify", "--case", "C3"], capsys)
    assert code == 1
    assert f"files{auth} (source {auth}): content changed" in err
    assert "differs from the audit log" in err
    assert err.strip().splitlines()[-1].startswith("irkit: error: evidence verification failed: globex/web01:")
    assert not host_evidence_status("C3", "globex", "web01").ready


def test_encrypted_bundle_extracts_only_with_a_recipient_key(setup, capsys, tmp_path):
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from ir_toolkit.triage.crypto import private_key_pem, public_key_text

    client, stranger = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    (tmp_path / "client.pub").write_text(public_key_text(client.public_key()))
    (tmp_path / "client.key").write_bytes(private_key_pem(client))
    (tmp_path / "stranger.key").write_bytes(private_key_pem(stranger))
    code, _, err = run(triage(setup, "C4", "--host", "web01", "--recipient", str(tmp_path / "client.pub")), capsys)
    assert code == 0, err
    (coll,) = list_collections("C4")
    assert coll.encrypted
    code, _, err = run(["evidence", "extract", "--case", "C4", "--host", "web01", "--out", str(tmp_path / "o1")],
                       capsys)
    assert code == 2 and "is encrypted: give --identity" in err
    code, _, err = run(["evidence", "extract", "--case", "C4", "--host", "web01", "--out", str(tmp_path / "o2"),
                        "--identity", str(tmp_path / "stranger.key")], capsys)
    assert code == 2 and "none of the given keys" in err
    code, out, err = run(["evidence", "extract", "--case", "C4", "--host", "web01", "--out", str(tmp_path / "o3"),
                          "--identity", str(tmp_path / "client.key")], capsys)
    assert code == 0, err
    history = setup["paths"]["history"]
    assert (tmp_path / "o3" / "files" / str(history).lstrip("/")).read_bytes() == history.read_bytes()
    code, out, err = run(["evidence", "verify", "--case", "C4", "--identity", str(tmp_path / "client.key"),
                          "--format", "json"], capsys)
    assert code == 0 and json.loads(out)[0]["contents"] == "re-hashed"


def test_encrypt_to_the_evidence_key(setup, capsys, tmp_path):
    code, _, err = run(triage(setup, "C5", "--host", "app01", "--encrypt"), capsys)
    assert code == 0, err
    code, out, err = run(["evidence", "extract", "--case", "C5", "--host", "app01", "--out", str(tmp_path / "o")],
                         capsys)
    assert code == 0, err
    assert (tmp_path / "o" / "manifest.json").exists()


@pytest.mark.parametrize("extra,message", [
    (["--host", "nope"], "unknown host 'nope'"),
    (["--tenant", "nope"], "unknown tenant 'nope'"),
    (["--profile", "nope"], "unknown triage profile 'nope'"),
    (["--recipient", "/nonexistent/key.pem"], "recipient key file /nonexistent/key.pem does not exist"),
])
def test_bad_input_is_one_line_exit_2(setup, capsys, extra, message):
    argv = triage(setup, "C6")
    if "--profile" in extra:
        argv = argv[:argv.index("--profile")] + argv[argv.index("--profile") + 2:]
    code, _, err = run(argv + extra, capsys)
    assert code == 2
    assert err.strip().splitlines() == [f"irkit: error: {err.strip().split('irkit: error: ')[1]}"]
    assert message in err
    assert list_collections("C6") == []


def test_triage_without_responder_keys_stops_before_collecting(irkit_home, sshd, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("IRKIT_KEY_PASSPHRASE", "x" * 12)
    root = tmp_path / "host"
    make_evidence_tree(root)
    inventory = write_inventory(tmp_path / "inv.yml", sshd, {"web01": ("globex", "127.0.0.1")})
    code, _, err = run(["triage", "--inventory", str(inventory), "--case", "NOKEYS", "--profile", "t",
                        "--definitions", str(write_definitions(tmp_path / "defs", root))], capsys)
    assert code == 2 and "irkit keys init" in err
    assert list_collections("NOKEYS") == []


def test_evidence_commands_on_a_case_without_bundles(setup, capsys, tmp_path):
    code, _, err = run(["evidence", "verify", "--case", "EMPTY"], capsys)
    assert code == 2 and "no evidence bundles" in err
    code, _, err = run(["evidence", "extract", "--case", "EMPTY", "--host", "web01", "--out", str(tmp_path / "x")],
                       capsys)
    assert code == 2 and "no evidence bundle for host 'web01'" in err
