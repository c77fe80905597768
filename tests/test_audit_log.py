"""The audit log writer: records, redaction, thread safety, group commit, crash safety."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from ir_toolkit.audit import layout
from ir_toolkit.audit.log import AuditLog, iter_records
from ir_toolkit.audit.verify import verify_case
from ir_toolkit.errors import InputError
from ir_toolkit.redaction import forget_secrets, register_secret

CASE = "IR-L1"
ORIGIN = f"acme/ir/{CASE}"


def test_records_are_canonical_chained_and_signed(signer):
    with AuditLog.open(CASE, origin=ORIGIN, signer=signer) as log:
        seq = log.append_durable(action="credential.revoked", actor="dana", tenant="globex", host="web01",
                                 params={"account": "mspadmin", "attempts": 2, "ok": True, "list": [1, "a"]})
        assert seq == 2
    records = list(iter_records(CASE))
    assert [r["seq"] for r in records] == [1, 2]
    first, second = records
    assert first["action"] == "audit.log_created" and first["params"]["origin"] == ORIGIN
    assert first["params"]["key"] == signer.verifier_key() and first["prev"] == "0" * 64
    assert second["tenant"] == "globex" and second["host"] == "web01" and second["outcome"] == "ok"
    raw = layout.log_path(CASE).read_bytes().split(b"\n")[1]
    import rfc8785
    assert rfc8785.dumps(json.loads(raw)) == raw
    note = layout.checkpoint_path(CASE).read_text()
    assert note.startswith(f"{ORIGIN}\n2\n") and "\n\n\u2014 acme-ctl/irkit-responder " in note
    assert verify_case(CASE).ok


def test_floats_and_non_json_values_are_refused(signer):
    with AuditLog.open(CASE, origin=ORIGIN, signer=signer) as log:
        for params in ({"x": 1.5}, {"a": {"b": [1, 2.0]}}, {"big": 2**60}, {"obj": object()}, {1: "int key"}):
            with pytest.raises(TypeError):
                log.append(action="x", actor="y", params=params)
        with pytest.raises(TypeError):
            log.append(action="", actor="y")
        assert log.size == 1  # nothing was written
    assert verify_case(CASE).ok


def test_secrets_never_enter_a_record(signer):
    forget_secrets()
    register_secret("Gen3rated-P@ssw0rd-xyz")
    try:
        with AuditLog.open(CASE, origin=ORIGIN, signer=signer) as log:
            log.append_durable(action="account.rotated", actor="dana", host="web01", params={
                "password": "hunter2-hunter2", "new_password_ref": "escrow:globex/web01/mspadmin",
                "api_key": "AKIAEXAMPLE", "detail": "set to Gen3rated-P@ssw0rd-xyz on web01",
                "key": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaA==\n-----END OPENSSH PRIVATE KEY-----",
                "nested": [{"token": "t0k3n-value"}]})
    finally:
        forget_secrets()
    raw = layout.log_path(CASE).read_text()
    for secret in ("hunter2-hunter2", "AKIAEXAMPLE", "Gen3rated-P@ssw0rd-xyz", "b3BlbnNzaA==", "t0k3n-value"):
        assert secret not in raw
    record = list(iter_records(CASE))[-1]
    assert record["params"]["password"] == "[REDACTED]"
    assert record["params"]["new_password_ref"] == "escrow:globex/web01/mspadmin"  # a reference stays
    assert record["params"]["detail"] == "set to [REDACTED] on web01"
    assert verify_case(CASE).ok


def test_reserved_actions_and_bad_origins_are_refused(signer):
    with pytest.raises(InputError, match="origin"):
        AuditLog.open(CASE, origin="acme/ir/OTHER", signer=signer)
    with pytest.raises(InputError, match="origin"):
        AuditLog.open(CASE, origin="acme corp/ir/IR-L1", signer=signer)
    with pytest.raises(InputError, match="no audit log yet"):
        AuditLog.open(CASE, signer=signer)
    with AuditLog.open(CASE, origin=ORIGIN, signer=signer) as log:
        with pytest.raises(InputError, match="reserved"):
            log.append(action="audit.key_rotated", actor="x")
    with pytest.raises(InputError, match="origin is"):
        AuditLog.open(CASE, origin="other/ir/IR-L1", signer=signer)


def test_reopen_continues_the_chain_and_same_process_shares_the_log(signer):
    with AuditLog.open(CASE, origin=ORIGIN, signer=signer) as log:
        log.append(action="a", actor="x")
        again = AuditLog.open(CASE, signer=signer)
        assert again is log
        again.close()  # reference counted: still open
        log.append(action="b", actor="x")
    with AuditLog.open(CASE, origin=ORIGIN, signer=signer) as log:
        assert log.size == 3
        log.append(action="c", actor="x")
    assert [r["action"] for r in iter_records(CASE)] == ["audit.log_created", "a", "b", "c"]
    assert verify_case(CASE).ok


def test_another_process_cannot_open_the_log_for_writing(signer, irkit_home):
    code = textwrap.dedent(f"""
        from ir_toolkit.audit.log import AuditLog
        from ir_toolkit.errors import InputError
        try:
            AuditLog.open({CASE!r}, signer=None)
        except InputError as exc:
            print("refused:", exc)
    """)
    with AuditLog.open(CASE, origin=ORIGIN, signer=signer):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "IRKIT_HOME": str(irkit_home)}).stdout
    assert "refused: the audit log of case IR-L1 is open in another irkit process" in out


def test_group_commit_many_threads_share_fsyncs(signer):
    threads, per_thread = 200, 25
    seqs: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    with AuditLog.open(CASE, origin=ORIGIN, signer=signer) as log:
        start_fsyncs = log.stats["fsyncs"]
        barrier = threading.Barrier(threads)

        def worker(t: int) -> None:
            try:
                barrier.wait()
                for i in range(per_thread):
                    seq = log.append_durable(action="step.start", actor="engine", host=f"h{t}",
                                             params={"t": t, "i": i})
                    assert log._durable >= seq  # returned only once fsynced
                    with lock:
                        seqs.append(seq)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        started = time.monotonic()
        pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
        for th in pool:
            th.start()
        for th in pool:
            th.join()
        elapsed = time.monotonic() - started
        fsyncs = log.stats["fsyncs"] - start_fsyncs
    assert not errors
    total = threads * per_thread
    assert sorted(seqs) == list(range(2, total + 2))
    assert fsyncs < total / 4, f"{fsyncs} fsyncs for {total} durable records: no group commit"
    assert elapsed < 60
    result = verify_case(CASE)
    assert result.ok and result.size == total + 1
    by_thread: dict[int, list[int]] = {}
    for record in iter_records(CASE):
        if record["action"] == "step.start":
            by_thread.setdefault(record["params"]["t"], []).append(record["params"]["i"])
    assert all(v == list(range(per_thread)) for v in by_thread.values())  # per-thread order kept


WRITER = textwrap.dedent("""
    import sys, threading
    from ir_toolkit.audit.log import AuditLog
    from ir_toolkit.secrets.keystore import load_signing_key
    log = AuditLog.open(sys.argv[1], origin="acme/ir/" + sys.argv[1], signer=load_signing_key())
    out = sys.stdout
    lock = threading.Lock()
    def work(t):
        i = 0
        while True:
            seq = log.append_durable(action="step.done", actor="engine", host="h%d" % t,
                                     params={"t": t, "i": i, "pad": "x" * (200 + 37 * (i % 50))})
            with lock:
                out.write("ACK %d %d %d\\n" % (seq, t, i))
                out.flush()
            i += 1
    for t in range(8):
        threading.Thread(target=work, args=(t,), daemon=True).start()
    threading.Event().wait()
""")


@pytest.mark.parametrize("round_", range(3))
def test_writer_killed_with_sigkill_leaves_a_log_that_verifies(signer, irkit_home, round_):
    case = f"IR-KILL{round_}"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, case], stdout=subprocess.PIPE,
                            env={**os.environ, "IRKIT_HOME": str(irkit_home)})
    acked: dict[int, tuple[int, int]] = {}
    wanted = random.Random(round_).randint(50, 600)
    assert proc.stdout is not None
    while len(acked) < wanted:
        line = proc.stdout.readline()
        assert line, "writer died"
        _, seq, t, i = line.split()
        acked[int(seq)] = (int(t), int(i))
    os.kill(proc.pid, signal.SIGKILL)
    for line in proc.stdout.read().splitlines():  # acks printed before the kill landed
        _, seq, t, i = line.split()
        acked[int(seq)] = (int(t), int(i))
    proc.wait()
    # As left by the crash: nothing inside the signed range is damaged; at most an unsigned
    # tail (records fsynced after the last checkpoint) and a torn last line remain.
    result = verify_case(case)
    assert {p.kind for p in result.problems} <= {"unsigned", "torn"}, result.problems
    assert result.signed_size >= 1
    # Reopening with the key recovers (recorded), and every acknowledged record is there.
    with AuditLog.open(case, signer=signer) as log:
        log.append_durable(action="run.resumed", actor="engine")
    result = verify_case(case)
    assert result.ok, result.problems
    records = {r["seq"]: r for r in iter_records(case)}
    for seq, (t, i) in acked.items():
        assert records[seq]["params"]["t"] == t and records[seq]["params"]["i"] == i
    assert records[result.size]["action"] == "run.resumed"


def test_unsigned_tail_is_signed_on_reopen_with_a_recovery_record(signer):
    with AuditLog.open(CASE, origin=ORIGIN, signer=signer) as log:
        log.append(action="a", actor="x")
    # a writer with the key that died after fsync but before signing: its lines carry its MACs
    log = AuditLog.open(CASE, signer=signer)
    log.append(action="b", actor="x")
    log.append(action="c", actor="x")
    log._commit()                                 # fsynced (and signed) ...
    (log.directory / "checkpoint.note").write_bytes(
        (log.directory / "checkpoints" / "2.note").read_bytes())   # ... as if the signature never landed
    log._release()
    from ir_toolkit.audit import log as logmod
    logmod._registry.pop(log.directory.resolve(), None)
    assert not verify_case(CASE).ok
    with AuditLog.open(CASE, signer=signer):
        pass
    records = list(iter_records(CASE))
    recovery = records[-1]
    assert recovery["action"] == "audit.recovered"
    assert (recovery["params"]["first_seq"], recovery["params"]["last_seq"]) == (3, 4)
    assert "unauthenticated" not in recovery["params"]
    assert verify_case(CASE).ok


def test_lines_written_without_the_key_stay_flagged_after_recovery(signer):
    with AuditLog.open(CASE, origin=ORIGIN, signer=signer) as log:
        log.append(action="a", actor="x")
    with AuditLog.open(CASE, signer=None) as log:  # no key: no MAC, nothing signed
        log.append_durable(action="b", actor="x")
    with AuditLog.open(CASE, signer=signer) as log:
        assert log.untrusted == [(3, 3)]
        assert [r["action"] for r in log.verified_records()][:3] == ["audit.log_created", "a", "audit.recovered"]
    result = verify_case(CASE)
    assert not result.ok and result.first_bad_seq == 3 and result.unauthenticated == [[3, 3]]
    with AuditLog.open(CASE, signer=signer):
        pass
    assert verify_case(CASE).unauthenticated == [[3, 3]]


def test_damage_in_the_signed_range_refuses_to_open(signer):
    with AuditLog.open(CASE, origin=ORIGIN, signer=signer) as log:
        for i in range(10):
            log.append(action="a", actor="x", params={"i": i})
    path = layout.log_path(CASE)
    data = path.read_bytes()
    path.write_bytes(data.replace(b'"i":4', b'"i":5', 1))
    from ir_toolkit.errors import VerificationFailed
    with pytest.raises(VerificationFailed, match="does not match its signed checkpoint"):
        AuditLog.open(CASE, signer=signer)
    path.write_bytes(data)
    lines = data.split(b"\n")
    path.write_bytes(b"\n".join(lines[:8]) + b"\n")  # records removed below the signed size
    with pytest.raises(VerificationFailed, match="records were removed"):
        AuditLog.open(CASE, signer=signer)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a tiny tmpfs")
def test_disk_full_leaves_a_consistent_log(signer, tmp_path, monkeypatch):
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)], check=True)
    try:
        home = mount / "home"
        home.mkdir()
        monkeypatch.setenv("IRKIT_HOME", str(home))
        import errno
        with pytest.raises(OSError) as exc:
            log = AuditLog.open(CASE, origin=ORIGIN, signer=signer)
            try:
                for i in range(100000):
                    log.append_durable(action="step.done", actor="x", params={"pad": "y" * 500, "i": i})
            finally:
                try:
                    log.close()
                except OSError:
                    pass
        assert exc.value.errno == errno.ENOSPC
        data = layout.log_path(CASE).read_bytes()
        assert data.endswith(b"\n")  # the failed write was rolled back: no torn fragment
        subprocess.run(["mount", "-o", "remount,size=4m", str(mount)], check=True)
        with AuditLog.open(CASE, signer=signer) as log:
            log.append_durable(action="after.disk.full", actor="x")
        assert verify_case(CASE, key=signer.verifier_key()).ok
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_iter_records_skips_a_torn_tail_and_handles_missing_logs(signer):
    assert list(iter_records("NO-SUCH-CASE")) == []
    with AuditLog.open(CASE, origin=ORIGIN, signer=signer) as log:
        log.append(action="a", actor="x")
    with open(layout.log_path(CASE), "ab") as fh:
        fh.write(b'{"action":"tor')
    assert [r["action"] for r in iter_records(CASE)] == ["audit.log_created", "a"]


def test_checkpoint_is_kept_for_phase_ends(signer):
    with AuditLog.open(CASE, origin=ORIGIN, signer=signer) as log:
        log.append(action="a", actor="x")
        note = log.checkpoint()
        assert note.startswith(f"{ORIGIN}\n2\n")
    kept = layout.audit_dir(CASE) / "checkpoints" / "2.note"
    assert kept.read_text() == note
    assert Path(layout.checkpoint_path(CASE)).read_text() == note
