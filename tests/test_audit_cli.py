"""``irkit audit`` commands end to end: verify (valid, each tampering, usage errors), show,
checkpoint, witness; and a real engine run on the lab."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ir_toolkit.audit import layout
from ir_toolkit.audit.log import AuditLog
from ir_toolkit.tlog.merkle import CompactRange, leaf_hash
from ir_toolkit.tlog.note import Signer, format_checkpoint, sign_note
from ir_toolkit.audit.records import build_record, encode_record
from ir_toolkit.cli.main import main
from ir_toolkit.secrets import keystore

PASS = "cli test passphrase"
CASE = "IR-CLI"
ORIGIN = f"acme/ir/{CASE}"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def env(irkit_home, monkeypatch):
    monkeypatch.setenv("IRKIT_KEY_PASSPHRASE", PASS)
    monkeypatch.setenv(keystore.TEST_SCRYPT_ENV, "10")
    monkeypatch.setenv("IRKIT_WITNESS_PASSPHRASE", "witness passphrase")
    keystore.init_keys(PASS, name="acme-ctl/irkit-responder")
    return irkit_home


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def engine_like_run(signer: Signer, hosts: int = 60, case: str = CASE) -> None:
    """Intent and result records for every host from a pool of threads, a checkpoint per phase."""
    with AuditLog.open(case, origin=f"acme/ir/{case}", signer=signer) as log:
        log.append_durable(action="run.start", actor="dana@ctl", params={"plan": "ab" * 32})
        for phase in ("triage", "contain"):
            def work(i: int, phase: str = phase) -> None:
                tenant, host = f"tenant{i % 3}", f"host{i:03d}"
                item = f"{phase}/0/{host}"
                log.append_durable(action="step.start", actor="dana@ctl", tenant=tenant, host=host,
                                   params={"item": item})
                log.append_durable(action="step.done", actor="dana@ctl", tenant=tenant, host=host,
                                   params={"item": item, "changed": True}, outcome="ok")
            threads = [threading.Thread(target=work, args=(i,)) for i in range(hosts)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            log.checkpoint()
        log.append_durable(action="run.end", actor="dana@ctl", params={"status": "done"})


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def put_lines(path: Path, items: list[bytes]) -> None:
    path.write_bytes(b"".join(x + b"\n" for x in items))


def resign(items: list[bytes], signer: Signer) -> str:
    acc = CompactRange()
    for line in items:
        acc.append(leaf_hash(line))
    return sign_note(format_checkpoint(ORIGIN, len(items), acc.root()), [signer])


# --------------------------------------------------------------------------- tamperings


def t_flip_byte(ctx):
    path = layout.log_path(CASE)
    data = bytearray(path.read_bytes())
    start = sum(len(x) + 1 for x in lines(path)[:99])
    data[start + 40] ^= 0x20
    path.write_bytes(bytes(data))
    return [], "seq 100"


def t_delete(ctx):
    path = layout.log_path(CASE)
    items = lines(path)
    del items[99]
    put_lines(path, items)
    return [], "seq 100: expected seq 100, found seq 101"


def t_swap(ctx):
    path = layout.log_path(CASE)
    items = lines(path)
    items[99], items[100] = items[100], items[99]
    put_lines(path, items)
    return [], "seq 100"


def t_truncate_witnessed(ctx):
    path = layout.log_path(CASE)
    directory = layout.audit_dir(CASE)
    witnessed = ctx["witnessed"]
    items = lines(path)
    kept = sorted((directory / "checkpoints").glob("*.note"), key=lambda p: int(p.stem))
    older = kept[0]  # the first phase's checkpoint
    size = int(older.stem)
    put_lines(path, items[:size])
    shutil.copy(older, directory / layout.CHECKPOINT_FILE)
    for p in kept[1:]:
        p.unlink()
    shutil.rmtree(directory / layout.WITNESSED_DIR, ignore_errors=True)
    return ["--checkpoint", str(witnessed), "--witness-key", ctx["witness_key"]], \
        f"size {size} < witnessed {len(items)}"


def t_rollback(ctx):
    saved = ctx["tmp"] / "saved.note"
    saved.write_text(layout.checkpoint_path(CASE).read_text())
    t_truncate_witnessed({**ctx, "witnessed": saved})
    return ["--checkpoint", str(saved)], "(records removed: truncation or rollback)"


def t_fork(ctx):
    path = layout.log_path(CASE)
    saved = ctx["tmp"] / "pinned.note"
    saved.write_text(layout.checkpoint_path(CASE).read_text())
    items = lines(path)[:149]
    prev = leaf_hash(items[-1]).hex()
    for seq in range(150, 260):
        line = encode_record(build_record(seq=seq, prev=prev, case=CASE, action="x", actor="mallory"))
        items.append(line)
        prev = leaf_hash(line).hex()
    put_lines(path, items)
    directory = layout.audit_dir(CASE)
    shutil.rmtree(directory / "checkpoints")
    shutil.rmtree(directory / layout.WITNESSED_DIR, ignore_errors=True)
    layout.checkpoint_path(CASE).write_text(resign(items, ctx["signer"]))
    return ["--checkpoint", str(saved), "--evidence-dir", str(ctx["tmp"] / "ev")], "fork"


def t_append_without_key(ctx):
    with AuditLog.open(CASE, signer=None) as log:
        log.append(action="credential.revoked", actor="mallory")
    return [], "not covered by any signed checkpoint"


def t_unknown_key_checkpoint(ctx):
    items = lines(layout.log_path(CASE))
    directory = layout.audit_dir(CASE)
    shutil.rmtree(directory / "checkpoints")
    shutil.rmtree(directory / layout.WITNESSED_DIR, ignore_errors=True)
    layout.checkpoint_path(CASE).write_text(resign(items, Signer.generate("acme-ctl/irkit-responder")))
    return [], "not covered by any signed checkpoint"


def t_non_canonical(ctx):
    path = layout.log_path(CASE)
    items = lines(path)
    items[99] = items[99].replace(b'"actor":', b'"actor": ')
    put_lines(path, items)
    return [], "seq 100: not RFC 8785 canonical JSON"


def t_torn(ctx):
    with open(layout.log_path(CASE), "ab") as fh:
        fh.write(b'{"action":"step.do')
    return [], "torn final line"


def t_rotation_without_record(ctx):
    with AuditLog.open(CASE, signer=None) as log:
        log.append(action="step.done", actor="new key")
    items = lines(layout.log_path(CASE))
    layout.checkpoint_path(CASE).write_text(resign(items, Signer.generate("acme-ctl/irkit-responder-2")))
    return [], "not covered by any signed checkpoint"


TAMPERINGS = {
    "flipped byte": t_flip_byte, "deleted record": t_delete, "swapped records": t_swap,
    "truncation with witnessed checkpoint": t_truncate_witnessed, "rollback": t_rollback, "fork": t_fork,
    "appended without key": t_append_without_key, "checkpoint by unknown key": t_unknown_key_checkpoint,
    "non-canonical json": t_non_canonical, "torn final line": t_torn,
    "rotation without rotation record": t_rotation_without_record,
}


@pytest.mark.parametrize("name", list(TAMPERINGS))
def test_audit_verify_passes_on_a_run_and_fails_on_each_tampering(env, capsys, tmp_path, name):
    signer = keystore.load_signing_key(PASS)
    engine_like_run(signer)
    wdir = tmp_path / "witness"
    code, out, err = run(["audit", "witness", "--witness-dir", str(wdir), "--init", "--name", "soc/w1"], capsys)
    assert code == 0, err
    code, out, err = run(["audit", "witness", "--witness-dir", str(wdir), "--case", CASE,
                          "--log-key", signer.verifier_key(), "--format", "json"], capsys)
    assert code == 0, err
    info = json.loads(out)
    code, out, err = run(["audit", "verify", "--case", CASE, "--checkpoint", info["saved"],
                          "--witness-key", info["witness_key"]], capsys)
    assert code == 0, (out, err)
    assert "VALID" in out and f"anchored:  through seq {info['size']}" in out
    ctx = {"signer": signer, "tmp": tmp_path, "witnessed": Path(info["saved"]), "witness_key": info["witness_key"]}
    args, expected = TAMPERINGS[name](ctx)
    code, out, err = run(["audit", "verify", "--case", CASE, *args], capsys)
    assert code == 1, (name, out, err)
    assert err.startswith(f"irkit: error: audit log of case {CASE} is INVALID: ") and err.count("\n") == 1, err
    assert expected in err or expected in out, (name, expected, err, out)
    assert "Traceback" not in err


def test_audit_verify_json_and_unanchored_report(env, capsys):
    engine_like_run(keystore.load_signing_key(PASS), hosts=5)
    code, out, err = run(["audit", "verify", "--case", CASE, "--format", "json"], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["ok"] is True and data["size"] == data["signed_size"] and data["anchored_size"] == 0
    assert data["unanchored"] == [1, data["size"]] and data["notes"][0].startswith("UNANCHORED")


def test_audit_verify_usage_errors_exit_2(env, capsys):
    code, _, err = run(["audit", "verify", "--case", "NOPE"], capsys)
    assert code == 2 and "has no audit log" in err
    engine_like_run(keystore.load_signing_key(PASS), hosts=2)
    code, _, err = run(["audit", "verify", "--case", CASE, "--key", "not-a-key"], capsys)
    assert code == 2 and "--key" in err
    code, _, err = run(["audit", "verify", "--case", CASE, "--checkpoint", "/nonexistent.note"], capsys)
    assert code == 2 and "checkpoint file not found" in err
    code, _, err = run(["audit", "verify", "--case", "../x"], capsys)
    assert code == 2


def test_audit_verify_with_pinned_key_from_another_machine(env, capsys, monkeypatch, tmp_path):
    signer = keystore.load_signing_key(PASS)
    engine_like_run(signer, hosts=3)
    shutil.rmtree(env / "keys")  # the auditor has only the case and the pinned verifier key
    code, _, err = run(["audit", "verify", "--case", CASE], capsys)
    assert code == 2 and "no trusted key: pass --key" in err
    code, out, err = run(["audit", "verify", "--case", CASE, "--key", signer.verifier_key()], capsys)
    assert code == 0, err


def test_audit_show_filters_and_json(env, capsys):
    engine_like_run(keystore.load_signing_key(PASS), hosts=6)
    code, out, _ = run(["audit", "show", "--case", CASE, "--host", "host004", "--format", "json"], capsys)
    rows = json.loads(out)
    assert code == 0 and {r["host"] for r in rows} == {"host004"} and len(rows) == 4
    code, out, _ = run(["audit", "show", "--case", CASE, "--tenant", "tenant1", "--action", "step.d*",
                        "--format", "json"], capsys)
    rows = json.loads(out)
    assert rows and all(r["tenant"] == "tenant1" and r["action"] == "step.done" for r in rows)
    code, out, _ = run(["audit", "show", "--case", CASE, "--action", "run.*"], capsys)
    assert code == 0 and "run.start" in out and "run.end" in out and "step.start" not in out
    code, _, err = run(["audit", "show", "--case", "NOPE"], capsys)
    assert code == 2


def test_audit_checkpoint_prints_and_saves_the_signed_note(env, capsys, tmp_path):
    engine_like_run(keystore.load_signing_key(PASS), hosts=2)
    out_file = tmp_path / "pin.note"
    code, out, _ = run(["audit", "checkpoint", "--case", CASE, "-o", str(out_file)], capsys)
    assert code == 0 and out.startswith(f"{ORIGIN}\n") and out_file.read_text() == out
    # --sign prints a new checkpoint; a line appended without the key is not laundered by it
    with AuditLog.open(CASE, signer=None) as log:
        seq = log.append(action="late", actor="x")
    code, _, _ = run(["audit", "verify", "--case", CASE], capsys)
    assert code == 1
    code, out2, err = run(["audit", "checkpoint", "--case", CASE, "--sign"], capsys)
    assert code == 0, err
    assert int(out2.split("\n")[1]) > int(out.split("\n")[1])
    code, out3, err = run(["audit", "verify", "--case", CASE], capsys)
    assert code == 1 and f"seq {seq}: record {seq} appended to the log without the signing key" in out3 + err


def test_audit_witness_cli_refuses_rollback(env, capsys, tmp_path):
    signer = keystore.load_signing_key(PASS)
    engine_like_run(signer, hosts=4)
    wdir = tmp_path / "w"
    code, out, err = run(["audit", "witness", "--witness-dir", str(wdir), "--init"], capsys)
    assert code == 0 and "+" in out
    code, _, err = run(["audit", "witness", "--witness-dir", str(wdir), "--case", CASE], capsys)
    assert code == 2 and "--log-key" in err
    code, out, err = run(["audit", "witness", "--witness-dir", str(wdir), "--case", CASE, "--log-key",
                          signer.verifier_key()], capsys)
    assert code == 0 and "cosigned acme/ir/IR-CLI" in out
    with AuditLog.open(CASE, signer=signer) as log:
        log.append_durable(action="more", actor="x")
    code, out, err = run(["audit", "witness", "--witness-dir", str(wdir), "--case", CASE], capsys)
    assert code == 0 and "(previously" in out
    # roll back the log to the first phase's checkpoint: the witness refuses
    directory = layout.audit_dir(CASE)
    kept = sorted((directory / "checkpoints").glob("*.note"), key=lambda p: int(p.stem))
    put_lines(layout.log_path(CASE), lines(layout.log_path(CASE))[:int(kept[0].stem)])
    shutil.copy(kept[0], directory / layout.CHECKPOINT_FILE)
    for p in kept[1:]:
        p.unlink()
    shutil.rmtree(directory / layout.WITNESSED_DIR)
    code, _, err = run(["audit", "witness", "--witness-dir", str(wdir), "--case", CASE], capsys)
    assert code == 1 and "smaller than the size" in err and "evidence in" in err
    code, _, err = run(["audit", "witness", "--case", CASE], capsys)
    assert code == 2 and "IRKIT_WITNESS_DIR" in err


def test_audit_report_is_listed_and_needs_a_log(env, capsys):
    code, out, _ = run(["audit", "--help"], capsys)
    assert {"verify", "show", "checkpoint", "witness", "report"} <= set(out.split())
    code, _, err = run(["audit", "report", "--case", CASE], capsys)
    assert code == 2 and "has no audit log" in err


def test_console_script_verify_without_traceback(env):
    engine_like_run(keystore.load_signing_key(PASS), hosts=2)
    irkit = str(Path(sys.executable).with_name("irkit"))
    proc = subprocess.run([irkit, "audit", "verify", "--case", CASE], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and "VALID" in proc.stdout
    path = layout.log_path(CASE)
    path.write_bytes(path.read_bytes().replace(b"host001", b"host999", 1))
    proc = subprocess.run([irkit, "audit", "verify", "--case", CASE], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("irkit: error: audit log of case IR-CLI is INVALID: seq ")


# --------------------------------------------------------------------------- a real run on the lab


@pytest.mark.lab
def test_audit_verify_on_a_real_engine_run_in_the_lab(lab_factory, tmp_path):
    lab = lab_factory("audlab", tenants=1, hosts_per_tenant=2)
    import os

    env = {**os.environ, "IRKIT_HOME": str(lab.home), "IRKIT_KEY_PASSPHRASE": PASS,
           keystore.TEST_SCRYPT_ENV: "10"}
    env.pop("IRKIT_INVENTORY", None)
    irkit = str(Path(sys.executable).with_name("irkit"))

    def cli(*args):
        return subprocess.run([irkit, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)

    assert cli("keys", "init", "--if-missing").returncode == 0
    proc = cli("contain", "--inventory", str(lab.inventory_path), "--playbook",
               str(REPO / "tests/playbooks/engine-basic.yml"), "--case", "AUD-LAB", "--yes")
    assert proc.returncode == 0, proc.stderr
    proc = cli("audit", "verify", "--case", "AUD-LAB")
    assert proc.returncode == 0 and "VALID" in proc.stdout, proc.stdout + proc.stderr
    log = lab.home / "cases" / "AUD-LAB" / "audit" / "log.jsonl"
    data = log.read_bytes()
    items = data.split(b"\n")[:-1]
    target = next(i for i, line in enumerate(items) if b'"step.done"' in line)
    items[target] = items[target].replace(b'"outcome":"ok"', b'"outcome":"OK"')
    log.write_bytes(b"".join(x + b"\n" for x in items))
    proc = cli("audit", "verify", "--case", "AUD-LAB")
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"irkit: error: audit log of case AUD-LAB is INVALID: seq {target + 1}: ")
