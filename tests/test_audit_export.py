"""Client-verifiable tenant exports: verify with only the public key (also by the stand-alone
verify_export.py); fail when one record is altered, dropped, or taken from another tenant; the
manifest, the client's earlier checkpoint and witness cosignatures are checked; nothing of other
tenants is in an export except leaf hashes."""

from __future__ import annotations

import ast
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ir_toolkit.audit import clientverify, layout
from ir_toolkit.audit.export import _levels, inclusion_from_levels
from ir_toolkit.tlog.merkle import inclusion_proof, leaf_hash, verify_inclusion
from ir_toolkit.tlog.note import Signer, b64encode, format_checkpoint, sign_note
from ir_toolkit.cli.main import main
from tests.audit_case import TENANTS, secrets_of_others, write_case

CASE = "IR-EXP"


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.fixture
def case(signer, tmp_path, capsys):
    owned = write_case(signer, CASE)
    exports = {}
    for tenant in TENANTS:
        target = tmp_path / f"export-{tenant}"
        code, out, err = run(["audit", "export", "--case", CASE, "--tenant", tenant, "--out", str(target)], capsys)
        assert code == 0, err
        assert f"exported {len(owned[tenant]['seqs'])} records of tenant {tenant}" in out
        exports[tenant] = target
    return {"owned": owned, "exports": exports, "vkey": signer.verifier_key(), "signer": signer, "tmp": tmp_path}


def verify(capsys, directory, vkey, *extra):
    return run(["audit", "verify-export", str(directory), "--key", vkey, *extra], capsys)


def records(directory: Path) -> list[bytes]:
    return (directory / "records.jsonl").read_bytes().split(b"\n")[:-1]


def test_each_export_verifies_with_only_the_public_key(case, capsys):
    for tenant, directory in case["exports"].items():
        code, out, err = verify(capsys, directory, case["vkey"])
        assert code == 0, out + err
        assert f"VERIFIED: tenant {tenant}, {len(case['owned'][tenant]['seqs'])} records" in out


def test_standalone_verifier_runs_without_irkit(case, tmp_path):
    source = (case["exports"]["globex"] / "verify_export.py").read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"__future__", "argparse", "base64", "binascii", "hashlib", "json", "re", "sys", "time",
                        "pathlib", "typing", "cryptography"}, imported
    # a copy of the export somewhere else, run in isolated mode from a directory without irkit
    copy = tmp_path / "client" / "globex"
    shutil.copytree(case["exports"]["globex"], copy)
    cmd = [sys.executable, "-I", str(copy / "verify_export.py"), str(copy), "--key", case["vkey"]]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path / "client")
    assert proc.returncode == 0 and proc.stdout.startswith("VERIFIED"), proc.stdout + proc.stderr
    (copy / "records.jsonl").write_bytes((copy / "records.jsonl").read_bytes().replace(b"globex-dc01", b"globex-dc02", 1))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path / "client")
    assert proc.returncode == 1 and "FAILED" in proc.stdout


def test_altered_record_fails(case, capsys):
    directory = case["exports"]["initech"]
    lines = records(directory)
    index = next(i for i, line in enumerate(lines) if b"evidence.collected" in line)
    record = json.loads(lines[index])
    record["params"]["bundle_sha256"] = "0" * 64
    lines[index] = clientverify.canonical(record).encode()
    (directory / "records.jsonl").write_bytes(b"".join(x + b"\n" for x in lines))
    code, out, err = verify(capsys, directory, case["vkey"])
    assert code == 1 and f"seq {record['seq']}: not in the signed tree" in out
    assert "does NOT verify" in err


def test_every_single_byte_flip_of_a_record_fails(case):
    directory = case["exports"]["umbrella"]
    original = (directory / "records.jsonl").read_bytes()
    rng = random.Random(14)
    for pos in rng.sample(range(len(original) - 1), 60):
        flipped = bytearray(original)
        flipped[pos] ^= 1 << rng.randrange(7)
        (directory / "records.jsonl").write_bytes(bytes(flipped))
        result = clientverify.verify_export(directory, [case["vkey"]])
        assert not result["ok"], pos
    (directory / "records.jsonl").write_bytes(original)
    assert clientverify.verify_export(directory, [case["vkey"]])["ok"]


def test_dropped_record_fails(case, capsys):
    directory = case["exports"]["globex"]
    lines = records(directory)
    dropped = json.loads(lines[5])
    del lines[5]
    (directory / "records.jsonl").write_bytes(b"".join(x + b"\n" for x in lines))
    code, out, _ = verify(capsys, directory, case["vkey"])
    assert code == 1 and f"records missing from the export (dropped): seq {dropped['seq']}" in out


def test_dropped_record_with_edited_index_list_fails(case, capsys):
    directory = case["exports"]["globex"]
    lines = records(directory)
    dropped = json.loads(lines[-1])
    (directory / "records.jsonl").write_bytes(b"".join(x + b"\n" for x in lines[:-1]))
    meta = json.loads((directory / "export.json").read_text())
    meta["indices"].remove(dropped["seq"] - 1)
    (directory / "export.json").write_text(json.dumps(meta))
    code, out, _ = verify(capsys, directory, case["vkey"])
    assert code == 1 and "manifest.note: does not match" in out
    # ... and a manifest re-signed by someone else's key is not trusted
    text = clientverify.manifest_text(meta["origin"], meta["tree_size"], clientverify.b64d(meta["root"]),
                                      "globex", meta["indices"])
    (directory / "manifest.note").write_text(sign_note(text, [Signer.generate("acme-ctl/irkit-responder")]))
    code, out, _ = verify(capsys, directory, case["vkey"])
    assert code == 1 and "manifest.note: no signature by a trusted key" in out


def test_record_of_another_tenant_inserted_fails(case, capsys):
    directory = case["exports"]["globex"]
    log_lines = layout.log_path(CASE).read_bytes().split(b"\n")[:-1]
    seq = case["owned"]["initech"]["seqs"][3]
    foreign = log_lines[seq - 1]
    # with its genuine inclusion proof: it IS in the signed tree, it is just not globex's
    leaves = [leaf_hash(x) for x in log_lines]
    meta = json.loads((directory / "export.json").read_text())
    meta["proofs"][str(seq)] = [b64encode(h) for h in inclusion_proof(leaves, seq - 1)]
    (directory / "export.json").write_text(json.dumps(meta))
    lines = records(directory) + [foreign]
    (directory / "records.jsonl").write_bytes(b"".join(x + b"\n" for x in lines))
    code, out, _ = verify(capsys, directory, case["vkey"])
    assert code == 1 and f"seq {seq}: the record is not of tenant globex" in out
    # relabelled as globex's, it is no longer the leaf the tree holds
    record = json.loads(foreign)
    record["tenant"] = "globex"
    lines[-1] = clientverify.canonical(record).encode()
    (directory / "records.jsonl").write_bytes(b"".join(x + b"\n" for x in lines))
    code, out, _ = verify(capsys, directory, case["vkey"])
    assert code == 1 and f"seq {seq}: not in the signed tree" in out


def test_wrong_key_and_forged_checkpoint_fail(case, capsys):
    directory = case["exports"]["umbrella"]
    code, out, _ = verify(capsys, directory, Signer.generate("acme-ctl/irkit-responder").verifier_key())
    assert code == 1 and "no signature by a trusted key" in out
    code, _, err = verify(capsys, directory, "not-a-key")
    assert code == 2 and "malformed verifier key" in err
    meta = json.loads((directory / "export.json").read_text())
    forged = sign_note(format_checkpoint(meta["origin"], meta["tree_size"], b"\x01" * 32),
                       [Signer.generate("acme-ctl/irkit-responder")])
    (directory / "checkpoint.note").write_text(forged)
    code, out, _ = verify(capsys, directory, case["vkey"])
    assert code == 1


def test_client_checkpoint_consistency_rollback_and_fork(case, capsys, tmp_path):
    directory = case["exports"]["globex"]
    kept = sorted((layout.audit_dir(CASE) / "checkpoints").glob("*.note"), key=lambda p: int(p.stem))
    early = kept[0]
    code, out, err = verify(capsys, directory, case["vkey"], "--checkpoint", str(early))
    assert code == 0 and f"consistent with your checkpoint of size {early.stem}" in out, out + err
    # the client holds a bigger tree than the export: rollback
    signer = case["signer"]
    meta = json.loads((directory / "export.json").read_text())
    log_lines = layout.log_path(CASE).read_bytes().split(b"\n")[:-1]
    from ir_toolkit.tlog.merkle import root_hash

    bigger = tmp_path / "bigger.note"
    leaves = [leaf_hash(x) for x in log_lines] + [leaf_hash(b"later")]
    bigger.write_text(sign_note(format_checkpoint(meta["origin"], len(leaves), root_hash(leaves)), [signer]))
    code, out, _ = verify(capsys, directory, case["vkey"], "--checkpoint", str(bigger))
    assert code == 1 and "smaller than your checkpoint" in out
    # a validly signed checkpoint of an earlier size with another root: a fork
    fork = tmp_path / "fork.note"
    fork.write_text(sign_note(format_checkpoint(meta["origin"], int(early.stem), b"\x02" * 32), [signer]))
    code, out, _ = verify(capsys, directory, case["vkey"], "--checkpoint", str(fork))
    assert code == 1 and "not an append-only extension" in out


def test_witnessed_export(signer, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("IRKIT_WITNESS_PASSPHRASE", "witness passphrase")
    write_case(signer, CASE)
    wdir = tmp_path / "witness"
    code, out, err = run(["audit", "witness", "--witness-dir", str(wdir), "--init", "--name", "soc.example/w1",
                          "--format", "json"], capsys)
    assert code == 0, err
    wkey = json.loads(out)["witness_key"]
    code, _, err = run(["audit", "witness", "--witness-dir", str(wdir), "--case", CASE, "--log-key",
                        signer.verifier_key()], capsys)
    assert code == 0, err
    target = tmp_path / "exp"
    code, _, err = run(["audit", "export", "--case", CASE, "--tenant", "initech", "--out", str(target)], capsys)
    assert code == 0, err
    code, out, err = verify(capsys, target, signer.verifier_key(), "--witness-key", wkey)
    assert code == 0 and "cosigned by: soc.example/w1" in out, out + err
    other = Signer.generate("soc.example/w2", alg=0x04).verifier_key()
    code, out, _ = verify(capsys, target, signer.verifier_key(), "--witness-key", other)
    assert code == 1 and "no checkpoint is cosigned by the given witness" in out


def test_export_holds_nothing_of_other_tenants(case):
    for tenant, directory in case["exports"].items():
        others = secrets_of_others(case["owned"], tenant)
        leaves_of_others = {h for t, d in case["owned"].items() if t != tenant for h in d["leaves"]}
        for path in directory.rglob("*"):
            if not path.is_file() or path.name == "verify_export.py":
                continue
            text = path.read_text()
            if path.name == "export.json":
                meta = json.loads(text)
                del meta["proofs"], meta["consistency"]      # leaf and node hashes only
                text = json.dumps(meta)
            if path.name == "records.jsonl":
                # a record's prev is the leaf hash of the record before it, whoever's it is
                text = "\n".join(json.dumps({k: v for k, v in json.loads(x).items() if k != "prev"})
                                 for x in text.splitlines())
            for secret in others:
                assert secret not in text, (tenant, path.name, secret)
        # proofs are hashes: none of them is another tenant's record, only (at most) its leaf hash
        meta = json.loads((directory / "export.json").read_text())
        proof_hashes = {clientverify.b64d(h).hex() for p in meta["proofs"].values() for h in p}
        assert proof_hashes & leaves_of_others        # siblings are leaf hashes (by design) ...
        own = set(case["owned"][tenant]["leaves"])
        assert len(records(directory)) == len(own) + 1  # ... but the records are only its own + log_created


def test_bad_export_requests_are_one_line(case, capsys, tmp_path):
    code, _, err = run(["audit", "export", "--case", CASE, "--tenant", "nosuch", "--out", str(tmp_path / "x")],
                       capsys)
    assert code == 2 and "no records of tenant 'nosuch'" in err
    code, _, err = run(["audit", "export", "--case", CASE, "--tenant", "globex", "--out",
                        str(case["exports"]["globex"])], capsys)
    assert code == 2 and "not an empty directory" in err
    code, _, err = run(["audit", "export", "--case", CASE, "--tenant", "globex"], capsys)
    assert code == 2 and "--tenant T and --out DIR" in err
    code, _, err = run(["audit", "verify-export", str(tmp_path / "nothing"), "--key", case["vkey"]], capsys)
    assert code == 2 and "not a readable export" in err
    # a log that does not verify is not exported
    path = layout.log_path(CASE)
    path.write_bytes(path.read_bytes().replace(b"globex-web01", b"globex-web99", 1))
    code, _, err = run(["audit", "export", "--case", CASE, "--tenant", "globex", "--out", str(tmp_path / "y")],
                       capsys)
    assert code == 1 and "INVALID" in err and not (tmp_path / "y").exists()


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 8, 9, 16, 17, 31, 33, 100])
def test_proofs_from_levels_match_the_rfc_paths(size):
    leaves = [leaf_hash(str(i).encode()) for i in range(size)]
    levels = _levels(leaves)
    from ir_toolkit.tlog.merkle import root_hash

    assert levels[-1][0] == root_hash(leaves)
    for i in range(size):
        proof = inclusion_from_levels(levels, i)
        assert proof == inclusion_proof(leaves, i)
        assert clientverify.verify_inclusion(leaves[i], i, size, proof, levels[-1][0])
        assert verify_inclusion(leaves[i], i, size, proof, levels[-1][0])


def test_standalone_primitives_agree_with_irkit():
    from ir_toolkit.tlog.merkle import consistency_proof, root_hash, verify_consistency
    from ir_toolkit.audit.records import canonical

    rng = random.Random(6962)
    for _ in range(200):
        n = rng.randrange(2, 70)
        m = rng.randrange(1, n + 1)
        leaves = [leaf_hash(bytes([rng.randrange(256)]) * rng.randrange(1, 9)) for _ in range(n)]
        proof = consistency_proof(leaves, m)
        r1, r2 = root_hash(leaves[:m]), root_hash(leaves)
        assert clientverify.verify_consistency(m, n, proof, r1, r2) is verify_consistency(m, n, proof, r1, r2) is True
        if proof:
            bad = list(proof)
            bad[rng.randrange(len(bad))] = b"\x00" * 32
            assert not clientverify.verify_consistency(m, n, bad, r1, r2)
    value = {"\u00e9": 1, "z": [True, None, "\u2028\x01"], "a": {"\U0001f600": "x", "\ufb33": -5}, "10": "é"}
    assert clientverify.canonical(value).encode() == canonical(value)
    with pytest.raises(ValueError):
        clientverify.parse_record(b'{"a":1,"a":2}')
    with pytest.raises(ValueError):
        clientverify.parse_record(b'{"a":1.0}')
    with pytest.raises(ValueError):
        clientverify.parse_record(b'{"b":1, "a":2}')
