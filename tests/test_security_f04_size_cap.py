"""Finding 4 (security review): host-controlled sizes bypassed max_file_size and could fill the controller's disk.

Ported from security-pocs/poc_collect.py §1 and poc_stall.py §1; plus the per-host/per-case quota and
the free-space floor that keeps the audit log and the escrow writable when evidence fills up.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from hostile_host import END, FakeHost, GenReader, digest, file_selection, member, stat_record, tar_member, target
from ir_toolkit.triage.collector import collect_host
from ir_toolkit.triage.verify import verify_collection


def _manifest(result):
    return json.loads((result.collection.path / "manifest.json").read_text())


def _files(result):
    return {f["source_path"]: f for f in _manifest(result)["files"]}


def test_tar_member_larger_than_stat_size_is_not_stored(irkit_home):
    big = 64 << 20
    sent = {"bytes": 0}

    def big_tar():
        yield tar_member("etc/hostname", size=big)
        for _ in range(big >> 20):
            sent["bytes"] += 1 << 20
            yield b"A" * (1 << 20)
        yield END

    host = FakeHost(stats=stat_record("/etc/hostname", 10), hashes=b"1" * 64 + b"  /etc/hostname\0",
                    tar=lambda: GenReader(big_tar()))
    result = collect_host(host, target("cap-bypass"), file_selection(["/etc/hostname"], cap=1024))
    entry = _files(result)["/etc/hostname"]
    assert entry["status"] == "failed" and "listed as 10 bytes" in entry["reason"]
    assert entry.get("received_size", 0) <= 10, "never more than min(cap, stat size) stored"
    assert os.path.getsize(result.collection.bundle_path) < 64 << 10, "the 64 MiB member was not stored"
    assert sent["bytes"] <= 8 << 20, "the stream was stopped, not read to its end"
    assert result.status == "partial" and result.anomalies
    assert verify_collection("POC", result.collection, records=None).ok


def test_retry_never_zero_pads(irkit_home):
    """poc_stall §1: a 10-byte reply used to make the controller write 200 MiB of local zeros."""
    size = 200 << 20

    class TeeHost(FakeHost):
        def respond(self, cmd):
            if "tee /dev/fd/3" in cmd:
                return f"{size}\n".encode(), b"", 0
            return super().respond(cmd)

    host = TeeHost(stats=stat_record("/etc/x", 3), hashes=b"1" * 64 + b"  /etc/x\0", tar=member("etc/x", b"abc") + END)
    start = time.monotonic()
    result = collect_host(host, target(), file_selection(["/etc/x"], cap=1024, with_command=False))
    assert os.path.getsize(result.collection.bundle_path) < 64 << 10
    entry = _files(result)["/etc/x"]
    assert entry["status"] == "hash_mismatch"
    assert entry["received_size"] <= 3 and entry["first_attempt"]["size"] <= 3
    assert time.monotonic() - start < 30


def test_member_within_listed_size_but_over_cap_is_capped(irkit_home):
    """stat lies low (2 bytes) but within cap; the tar member carries 3000: only 2 bytes are stored."""
    data = b"x" * 3000
    host = FakeHost(stats=stat_record("/etc/y", 2), hashes=digest(data) + b"  /etc/y\0", tar=member("etc/y", data) + END)
    result = collect_host(host, target(), file_selection(["/etc/y"], cap=1024, with_command=False))
    entry = _files(result)["/etc/y"]
    assert entry["received_size"] <= 2 and entry["first_attempt"]["size"] <= 2
    assert entry["status"] == "hash_mismatch" and result.status != "complete"


def test_skipped_file_is_not_accepted_from_the_stream(irkit_home):
    """A path SKIPPED for being over the cap must not be stored when the host sends it anyway."""
    host = FakeHost(stats=stat_record("/etc/big", 5000, ino=1) + stat_record("/etc/ok", 3, ino=2),
                    hashes=digest(b"abc") + b"  /etc/ok\0",
                    tar=member("etc/big", b"B" * 5000) + member("etc/ok", b"abc") + END)
    result = collect_host(host, target(), file_selection(["/etc/big", "/etc/ok"], cap=1024, with_command=False))
    files = _files(result)
    assert files["/etc/big"]["status"] == "skipped" and files["/etc/big"]["archive_path"] is None
    assert files["/etc/ok"]["status"] == "collected"
    assert result.status == "partial"


def test_host_quota_stops_storing_and_seals_partial(irkit_home):
    from ir_toolkit.triage.bundle import EvidenceLimits

    paths = [f"/etc/f{i}" for i in range(10)]
    data = b"z" * 1000
    host = FakeHost(stats=b"".join(stat_record(p, len(data), ino=i + 1) for i, p in enumerate(paths)),
                    hashes=b"".join(digest(data) + b"  " + p.encode() + b"\0" for p in paths),
                    tar=b"".join(member(p.lstrip("/"), data) for p in paths) + END)
    limits = EvidenceLimits(host_quota=3 * (1000 + 4096) + 100, case_quota=1 << 40, min_free=0)
    result = collect_host(host, target(), file_selection(paths, cap=4096, with_command=False), limits=limits)
    files = _files(result)
    stored = [p for p in paths if files[p]["status"] == "collected"]
    assert len(stored) == 3
    assert all("quota" in files[p]["reason"] for p in paths if p not in stored)
    assert result.status == "partial" and _manifest(result)["partial"]["quota"]


def test_case_quota_counts_other_hosts(irkit_home):
    from ir_toolkit.triage.bundle import EvidenceLimits

    data = b"q" * 2000
    limits = EvidenceLimits(host_quota=1 << 40, case_quota=2 * (2000 + 4096) + 3000, min_free=0)
    got = []
    for name in ("a", "b", "c"):
        host = FakeHost(stats=stat_record("/etc/x", len(data)), hashes=digest(data) + b"  /etc/x\0",
                        tar=member("etc/x", data) + END)
        got.append(collect_host(host, target(name), file_selection(["/etc/x"], cap=4096, with_command=False),
                                limits=limits))
    assert [r.status for r in got][:2] == ["complete", "complete"]
    assert got[2].status == "partial" and "case evidence quota" in _files(got[2])["/etc/x"]["reason"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_free_space_floor_keeps_audit_log_and_escrow_writable(tmp_path, monkeypatch, signer):
    """A small real file system: evidence stops at the floor; the audit log and escrow can still be written."""
    from ir_toolkit.audit.log import AuditLog
    from ir_toolkit.home import case_dir
    from ir_toolkit.triage.bundle import EvidenceLimits

    home = os.environ["IRKIT_HOME"]
    evidence = case_dir("POC") / "evidence"
    evidence.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "irkit-test-f04", str(case_dir("POC"))], check=True)
    try:
        big = 6 << 20
        paths = [f"/var/f{i}" for i in range(6)]
        chunk = b"D" * big
        host = FakeHost(stats=b"".join(stat_record(p, big, ino=i + 1) for i, p in enumerate(paths)),
                        hashes=b"".join(digest(chunk) + b"  " + p.encode() + b"\0" for p in paths),
                        tar=lambda: GenReader([member(p.lstrip("/"), chunk) for p in paths] + [END]))
        limits = EvidenceLimits(host_quota=1 << 40, case_quota=1 << 40, min_free=8 << 20)
        result = collect_host(host, target(), file_selection(paths, cap=64 << 20, with_command=False), limits=limits)
        files = _files(result)
        assert any(files[p]["status"] == "collected" for p in paths)
        assert any("free space floor" in files[p].get("reason", "") for p in paths)
        assert result.status == "partial"
        free = os.statvfs(case_dir("POC")).f_bavail * os.statvfs(case_dir("POC")).f_frsize
        assert free >= 4 << 20, "evidence left the headroom"
        log = AuditLog.open("POC", origin="acme/ir/POC", signer=signer)
        for i in range(50):
            log.append_durable(action="escrow.read", actor="t", params={"n": i, "pad": "p" * 2000})
        log.close()
        with open(case_dir("POC") / "escrow-probe", "wb") as fh:
            fh.write(b"e" * (1 << 20))
            os.fsync(fh.fileno())
    finally:
        subprocess.run(["umount", "-l", str(case_dir("POC"))], check=False)
    assert home
