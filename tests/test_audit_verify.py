"""Tampering the verifier must catch (issue 4 "Done when" list), each test by name.

Every scenario starts from a real log written by :class:`AuditLog` with a real
Ed25519 key, changes the files on disk the way an attacker (or a crash) would,
and runs :func:`verify_case`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ir_toolkit.audit import layout
from ir_toolkit.audit.log import AuditLog, iter_records
from ir_toolkit.tlog.merkle import CompactRange, leaf_hash
from ir_toolkit.tlog.note import Signer, format_checkpoint, sign_note
from ir_toolkit.audit.records import build_record, encode_record
from ir_toolkit.audit.verify import verify_case
from ir_toolkit.audit.witness import Witness, witness_case
from ir_toolkit.errors import VerificationFailed

CASE = "IR-T1"
ORIGIN = f"acme/ir/{CASE}"


def write_log(signer: Signer | None, total: int, *, case: str = CASE, checkpoint_at: tuple[int, ...] = (),
              small: bool = False) -> Path:
    """A log with ``total`` records (record 1 is the log's own creation record)."""
    with AuditLog.open(case, origin=f"acme/ir/{case}", signer=signer) as log:
        while log.size < total:
            n = log.size + 1
            if small:
                log.append(action="s", actor="a", params={"n": n})
            else:
                log.append(action="credential.revoked", actor="dana@ctl", tenant=f"tenant{n % 7}",
                           host=f"host-{n:04d}", params={"account": "mspadmin", "item": f"contain/{n}", "ok": True})
            if log.size in checkpoint_at:
                log.checkpoint()
    return layout.log_path(case)


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def put_lines(path: Path, items: list[bytes]) -> None:
    path.write_bytes(b"".join(x + b"\n" for x in items))


def roots_of(items: list[bytes]) -> bytes:
    acc = CompactRange()
    for line in items:
        acc.append(leaf_hash(line))
    return acc.root()


def test_valid_log_verifies_and_reports_unanchored(signer):
    write_log(signer, 50)
    result = verify_case(CASE)
    assert result.ok, result.problems
    assert result.size == result.signed_size == 50
    assert result.anchored_size == 0 and any("UNANCHORED" in n for n in result.notes)


# --------------------------------------------------------------------------- modification


def test_flipped_byte_in_record_500_of_1000_names_seq_500(signer):
    path = write_log(signer, 1000)
    original = path.read_bytes()
    items = lines(path)
    start = sum(len(x) + 1 for x in items[:499])
    record = items[499]
    assert b'"seq":500,' in record
    for offset in range(len(record)):  # every byte of record 500, one at a time
        data = bytearray(original)
        data[start + offset] ^= 0x01
        path.write_bytes(bytes(data))
        result = verify_case(CASE, key=signer.verifier_key())
        assert not result.ok
        assert result.first_bad_seq == 500, (offset, chr(record[offset]), result.problems)
    path.write_bytes(original)
    assert verify_case(CASE).ok


@pytest.mark.slow
def test_every_bit_of_a_small_log_and_its_checkpoints_toggled_is_detected(signer):
    write_log(signer, 5, small=True)
    directory = layout.audit_dir(CASE)
    files = [directory / layout.LOG_FILE, *layout.local_checkpoint_files(directory)]
    assert len(files) == 3  # log, checkpoint.note, checkpoints/5.note
    vkey = signer.verifier_key()
    assert verify_case(CASE, key=vkey).ok
    toggles = 0
    for path in files:
        original = path.read_bytes()
        for i in range(len(original)):
            for bit in range(8):
                data = bytearray(original)
                data[i] ^= 1 << bit
                path.write_bytes(bytes(data))
                result = verify_case(CASE, key=vkey)
                assert not result.ok, (path.name, i, bit)
                toggles += 1
        path.write_bytes(original)
    assert toggles > 9000
    assert verify_case(CASE, key=vkey).ok


def test_deleted_record_is_detected(signer):
    path = write_log(signer, 1000)
    items = lines(path)
    del items[499]
    put_lines(path, items)
    result = verify_case(CASE)
    assert not result.ok and result.first_bad_seq == 500
    assert "record 500 is missing" in result.reason


def test_two_swapped_records_are_detected(signer):
    path = write_log(signer, 1000)
    items = lines(path)
    items[499], items[500] = items[500], items[499]
    put_lines(path, items)
    result = verify_case(CASE)
    assert not result.ok and result.first_bad_seq == 500
    assert "expected seq 500, found seq 501" in result.reason


def test_non_canonical_json_with_the_same_meaning_is_rejected(signer):
    path = write_log(signer, 30)
    original = lines(path)
    record = original[9]  # seq 10
    variants = {
        "reordered keys": b'{"v":1,' + record[1:].replace(b',"v":1}', b"}"),
        "extra whitespace": record.replace(b'"actor":', b'"actor": '),
        "float for an int": record.replace(b'"v":1}', b'"v":1.0}'),
        "escaped unicode": record.replace(b'"dana@ctl"', b'"d\\u0061na@ctl"'),
        "escaped slash": record.replace(b'"contain/10"', b'"contain\\/10"'),
        "duplicate action key": record.replace(b'{"action":"credential.revoked",',
                                               b'{"action":"credential.revoked","action":"credential.revoked",'),
        "exponent int": record.replace(b'"seq":10,', b'"seq":1E1,'),
        "trailing space": record + b" ",
    }
    for name, variant in variants.items():
        assert variant != record, name
        items = list(original)
        items[9] = variant
        put_lines(path, items)
        result = verify_case(CASE)
        assert not result.ok, name
        assert result.first_bad_seq == 10, (name, result.problems)
        assert result.problems[0].kind == "record", (name, result.problems)
    items = list(original)
    items[9] = variants["duplicate action key"]
    put_lines(path, items)
    assert "duplicate key 'action'" in verify_case(CASE).reason
    items[9] = variants["float for an int"]
    put_lines(path, items)
    assert "float" in verify_case(CASE).reason


# --------------------------------------------------------------------------- truncation, rollback, fork


def _witness(tmp_path: Path, signer: Signer, monkeypatch) -> Witness:
    monkeypatch.setenv("IRKIT_WITNESS_PASSPHRASE", "witness pass")
    wdir = tmp_path / "witness"
    Witness.init(wdir, "witness pass", name="soc.example/witness")
    return Witness.load(wdir, "witness pass")


def test_tail_truncation_with_a_witnessed_checkpoint_is_detected(signer, tmp_path, monkeypatch):
    path = write_log(signer, 1000, checkpoint_at=(990,))
    witness = _witness(tmp_path, signer, monkeypatch)
    info = witness_case(witness, CASE, log_keys=[signer.verifier_key()])
    witnessed = Path(info["saved"])
    assert info["size"] == 1000 and witnessed.exists()
    wkey = witness.signer.verifier_key()
    assert verify_case(CASE, checkpoint_file=witnessed, witness_keys=[wkey]).ok
    # Attack: cut the last 10 records and put back the older signed state (size 990).
    directory = layout.audit_dir(CASE)
    put_lines(path, lines(path)[:990])
    shutil.copy(directory / "checkpoints" / "990.note", directory / layout.CHECKPOINT_FILE)
    (directory / "checkpoints" / "1000.note").unlink()
    shutil.rmtree(directory / layout.WITNESSED_DIR)
    local_only = verify_case(CASE)
    assert local_only.ok and any("UNANCHORED" in n for n in local_only.notes)  # undetectable locally...
    result = verify_case(CASE, checkpoint_file=witnessed, witness_keys=[wkey])
    assert not result.ok                                                       # ...but not with the witness
    assert "size 990 < witnessed 1000" in result.reason
    assert result.first_bad_seq == 991


def test_rollback_to_an_older_valid_state_is_detected(signer, tmp_path, monkeypatch):
    path = write_log(signer, 1000, checkpoint_at=(800,))
    saved = tmp_path / "auditor-saw-1000.note"
    saved.write_text(layout.checkpoint_path(CASE).read_text())  # what the auditor pinned
    witness = _witness(tmp_path, signer, monkeypatch)
    witness_case(witness, CASE, log_keys=[signer.verifier_key()])
    directory = layout.audit_dir(CASE)
    put_lines(path, lines(path)[:800])
    shutil.copy(directory / "checkpoints" / "800.note", directory / layout.CHECKPOINT_FILE)
    for p in list((directory / "checkpoints").glob("1000.note")) + list((directory / "witnessed").glob("*")):
        p.unlink()
    result = verify_case(CASE, checkpoint_file=saved)
    assert not result.ok and "size 800 < 1000" in result.reason
    # and the witness refuses to cosign the smaller tree, writing evidence
    with pytest.raises(VerificationFailed, match="smaller than the size 1000 already cosigned"):
        witness_case(witness, CASE)
    conflicts = list((witness.directory / "logs").glob("*/conflicts/*"))
    assert conflicts and (conflicts[0] / "cosigned.note").exists() and (conflicts[0] / "presented.note").exists()


def test_fork_two_inconsistent_checkpoints_are_written_out_as_evidence(signer, tmp_path):
    path = write_log(signer, 40)
    saved = tmp_path / "pinned-40.note"
    saved.write_text(layout.checkpoint_path(CASE).read_text())
    # Someone holding the key rewrites history from seq 20 on and signs the new tree (a fork).
    items = lines(path)[:19]
    prev = leaf_hash(items[-1]).hex()
    for seq in range(20, 46):
        rec = build_record(seq=seq, prev=prev, case=CASE, action="credential.revoked", actor="mallory",
                           params={"n": seq})
        line = encode_record(rec)
        items.append(line)
        prev = leaf_hash(line).hex()
    put_lines(path, items)
    forged = sign_note(format_checkpoint(ORIGIN, len(items), roots_of(items)), [signer])
    directory = layout.audit_dir(CASE)
    (directory / layout.CHECKPOINT_FILE).write_text(forged)
    shutil.rmtree(directory / "checkpoints")
    assert verify_case(CASE).ok  # self-consistent: only an outside copy can tell
    evidence = tmp_path / "evidence"
    result = verify_case(CASE, checkpoint_file=saved, evidence_dir=evidence)
    assert not result.ok
    fork = [p for p in result.problems if p.kind == "fork"]
    assert fork and "both validly signed but inconsistent" in fork[0].message
    out = Path(result.evidence_dir)
    assert out.parent == evidence
    assert (out / "checkpoint-a.note").read_text() == saved.read_text()
    assert (out / "checkpoint-b.note").read_text() == forged
    proof_lines = (out / "consistency-proof.txt").read_text().splitlines()
    assert proof_lines[:2] == ["old 40", "new 45"] and len(proof_lines) > 2
    assert "SECURITY ERROR" in (out / "README.txt").read_text()


# --------------------------------------------------------------------------- keys and signatures


def test_record_appended_without_the_key_is_detected(signer):
    write_log(signer, 100)
    with AuditLog.open(CASE, signer=None) as log:  # the attacker has file access but no key
        seq = log.append_durable(action="credential.revoked", actor="mallory", params={"note": "nothing to see"})
    assert seq == 101
    result = verify_case(CASE)
    assert not result.ok and result.first_bad_seq == 101
    assert "not covered by any signed checkpoint" in result.reason
    # ...even when the attacker also writes a checkpoint over the new root, signed by their own key
    mallory = Signer.generate("acme-ctl/irkit-responder")  # same name, different key
    items = lines(layout.log_path(CASE))
    layout.checkpoint_path(CASE).write_text(
        sign_note(format_checkpoint(ORIGIN, len(items), roots_of(items)), [mallory]))
    result = verify_case(CASE)
    assert not result.ok and result.first_bad_seq == 101
    assert any("no signature by the log's key" in p.message for p in result.problems)


def test_checkpoint_signed_by_an_unknown_key_is_rejected(signer):
    write_log(signer, 20)
    items = lines(layout.log_path(CASE))
    body = format_checkpoint(ORIGIN, 20, roots_of(items))
    directory = layout.audit_dir(CASE)
    shutil.rmtree(directory / "checkpoints")
    for other in (Signer.generate("someone.else/key"), Signer.generate("acme-ctl/irkit-responder")):
        (directory / layout.CHECKPOINT_FILE).write_text(sign_note(body, [other]))
        result = verify_case(CASE)
        assert not result.ok
        assert any("no signature by the log's key" in p.message for p in result.problems)
        assert any(p.kind == "unsigned" and p.seq == 1 for p in result.problems)
    # and a checkpoint that verifies but is not signed by a key the auditor trusts
    (directory / layout.CHECKPOINT_FILE).write_text(sign_note(body, [signer]))
    assert verify_case(CASE).ok
    stranger = Signer.generate("auditor.pinned/other")
    result = verify_case(CASE, key=stranger.verifier_key())
    assert not result.ok and any(p.kind == "trust" for p in result.problems)


def test_checkpoint_of_another_case_is_rejected(signer):
    write_log(signer, 10)
    write_log(signer, 10, case="IR-T2")
    other = layout.checkpoint_path("IR-T2").read_text()
    result = verify_case(CASE, checkpoint_file=[layout.checkpoint_path("IR-T2")])
    assert not result.ok and any("not this log" in p.message for p in result.problems)
    assert other  # the other case's checkpoint itself is fine


def test_rotation_with_its_rotation_record_verifies(signer):
    write_log(signer, 30)
    new = Signer.generate("acme-ctl/irkit-responder")
    with AuditLog.open(CASE, signer=signer) as log:
        log.rotate_key(new, actor="dana")
    with AuditLog.open(CASE, signer=new) as log:
        log.append_durable(action="step.done", actor="dana")
    for key in (signer.verifier_key(), new.verifier_key()):
        result = verify_case(CASE, key=key)
        assert result.ok, (key, result.problems)
    assert result.log_keys == [signer.verifier_key(), new.verifier_key()]
    rot = [r for r in iter_records(CASE) if r["action"] == "audit.key_rotated"][0]
    assert rot["params"] == {"old_key": signer.verifier_key(), "new_key": new.verifier_key()}


def test_rotation_without_its_rotation_record_fails(signer):
    write_log(signer, 30)
    new = Signer.generate("acme-ctl/irkit-responder")
    # the writer refuses to sign with a key the log does not name
    from ir_toolkit.errors import InputError
    with pytest.raises(InputError, match="not by your key"):
        AuditLog.open(CASE, signer=new)
    # A new key simply starts signing (no rotation record signed by the old key).
    with AuditLog.open(CASE, signer=None) as log:
        log.append(action="step.done", actor="dana")
    items = lines(layout.log_path(CASE))
    note = sign_note(format_checkpoint(ORIGIN, len(items), roots_of(items)), [new])
    layout.checkpoint_path(CASE).write_text(note)
    result = verify_case(CASE, key=[signer.verifier_key(), new.verifier_key()])
    assert not result.ok and result.first_bad_seq == 31
    assert any("no signature by the log's key" in p.message for p in result.problems)


def test_old_key_signature_after_the_rotation_point_fails(signer):
    write_log(signer, 30)
    new = Signer.generate("acme-ctl/irkit-responder-2")
    with AuditLog.open(CASE, signer=signer) as log:
        log.rotate_key(new, actor="dana")
    with AuditLog.open(CASE, signer=None) as log:
        log.append(action="step.done", actor="mallory-with-the-old-key")
    items = lines(layout.log_path(CASE))
    layout.checkpoint_path(CASE).write_text(
        sign_note(format_checkpoint(ORIGIN, len(items), roots_of(items)), [signer]))
    result = verify_case(CASE, key=signer.verifier_key())
    assert not result.ok
    assert any("not valid for size 33" in p.message for p in result.problems)
    assert result.first_bad_seq == 33


def test_rotation_record_without_old_key_checkpoint_fails(signer):
    write_log(signer, 30)
    new = Signer.generate("acme-ctl/irkit-responder")
    with AuditLog.open(CASE, signer=signer) as log:
        log.rotate_key(new, actor="dana")
    rotation = layout.audit_dir(CASE) / "checkpoints" / "31.note"
    assert rotation.exists()
    rotation.unlink()
    result = verify_case(CASE, key=new.verifier_key())
    assert not result.ok and result.first_bad_seq == 31
    assert "no checkpoint signed by the old key" in result.reason


# --------------------------------------------------------------------------- crashes


def test_torn_final_line_is_reported_then_recovered_and_recorded(signer):
    path = write_log(signer, 50)
    full = encode_record(build_record(seq=51, prev="0" * 64, case=CASE, action="x", actor="y"))
    with open(path, "ab") as fh:
        fh.write(full[:37])  # a crash in the middle of a write, beyond the signed range
    result = verify_case(CASE)
    assert not result.ok and result.first_bad_seq == 51
    assert "torn final line" in result.reason and "beyond the signed range" in result.reason
    with AuditLog.open(CASE, signer=signer) as log:
        assert log.size == 51  # 50 + the recovery record
    records = list(iter_records(CASE))
    assert records[-1]["action"] == "audit.recovered"
    assert records[-1]["params"]["torn_bytes"] == 37 and records[-1]["params"]["signed_size"] == 50
    assert verify_case(CASE).ok


def test_torn_line_inside_the_signed_range_is_tampering(signer):
    path = write_log(signer, 50)
    data = path.read_bytes()
    path.write_bytes(data[:-20])  # the last signed record loses its end
    result = verify_case(CASE)
    assert not result.ok and result.first_bad_seq == 50
    with pytest.raises(VerificationFailed, match="inside the signed range"):
        AuditLog.open(CASE, signer=signer)
