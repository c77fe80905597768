"""The collector against a real OpenSSH sshd on 127.0.0.1 (needs root to start sshd).

Collection reads files that the tests create in a temp directory; the live
commands used (ps) only read. The built-in process artifacts are exercised in a
private PID namespace so that only the test's own processes are inspected.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ir_toolkit.triage import collector as collector_mod
from ir_toolkit.triage.bundle import BundleWriter
from ir_toolkit.triage.collector import HostTarget, collect_host
from ir_toolkit.triage.extract import extract_collection
from ir_toolkit.triage.remote import command_for
from ir_toolkit.triage.schema import load_catalog
from ir_toolkit.triage.status import host_evidence_status
from ir_toolkit.triage.verify import verify_collection
from triage_helpers import make_evidence_tree, start_sshd, write_definitions

pytestmark = [pytest.mark.lab, pytest.mark.skipif(os.geteuid() != 0, reason="starting sshd needs root")]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture
def conn(sshd):
    connection = sshd.connect()
    yield connection
    connection.close()


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "host"
    return root, make_evidence_tree(root), load_catalog(extra_dirs=[write_definitions(tmp_path / "defs", root)])


TARGET = HostTarget(case="CASE-1", msp="acme", tenant="globex", host="web01", address="127.0.0.1")


def manifest_of(collection) -> dict:
    return json.loads((collection.path / "manifest.json").read_bytes())


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_collects_traces_hashed_twice_with_metadata(irkit_home, conn, tree):
    root, paths, catalog = tree
    result = collect_host(conn, TARGET, catalog.select("t", "linux"))
    assert result.status == "complete" and not result.problems
    manifest = manifest_of(result.collection)
    files = {e["source_path"]: e for e in manifest["files"]}
    with tarfile.open(result.collection.bundle_path) as bundle:
        for key in ("auth_log", "cron", "unit", "history", "dropper"):
            entry = files[str(paths[key])]
            assert entry["status"] == "collected", key
            assert entry["sha256_host"] == entry["sha256_received"] == sha(paths[key])
            member = bundle.getmember(entry["archive_path"])
            assert bundle.extractfile(member).read() == paths[key].read_bytes()
            assert abs(member.mtime - paths[key].stat().st_mtime) < 1e-3, "mtime preserved in the archive"
        names = bundle.getnames()
    cron = files[str(paths["cron"])]
    assert cron["times"]["modified"].startswith("2020-09-13T12:26:40.1234")
    assert set(cron["times"]) == {"modified", "accessed", "changed", "born"}
    assert (cron["owner"], cron["group"], cron["mode"], cron["uid"]) == ("root", "root", "0644", 0)
    assert files[str(paths["dropper"])]["mode"] == "0755"
    # A symlink is recorded with its target and never followed out of scope.
    link = files[str(paths["link"])]
    assert link["status"] == "recorded" and link["link_target"] == "/etc/passwd"
    assert not any(n.endswith("/etc/passwd") for n in names)
    # Over the cap: listed with the reason, in the manifest and the collection log.
    big = files[str(paths["big"])]
    assert big["status"] == "skipped" and "max_file_size 102400" in big["reason"]
    log = [json.loads(line) for line in
           tarfile.open(result.collection.bundle_path).extractfile("collection.log").read().splitlines()]
    assert any(r["event"] == "skipped: over size cap" and r["path"] == str(paths["big"]) for r in log)
    assert any(r["event"] == "not present on host" and r["path"].endswith("ld.so.preload") for r in log)
    assert any(r.get("reason") == "tool not found on host" and r["artifact"] == "linux.t.missing_tool" for r in log)
    # Not executable: not copied by the executable rule, but hashed by the hash rule.
    notes = files[str(paths["notes"])]
    assert notes["status"] == "hashed" and notes["sha256_host"] == sha(paths["notes"])
    assert notes["archive_path"] is None
    outputs = {o["artifact"]: o for o in manifest["outputs"]}
    assert outputs["linux.t.ps"]["exit_status"] == 0
    assert outputs["linux.t.missing_tool"]["exit_status"] == 127
    for key in ("case", "tenant", "host", "collector", "started", "finished"):
        assert manifest[key]
    assert manifest["collector"]["transfer"] == "tar"
    assert verify_collection("CASE-1", result.collection, records=None).ok


def test_sftp_transfer_gives_the_same_evidence(irkit_home, conn, tree):
    _, paths, catalog = tree
    result = collect_host(conn, TARGET, catalog.select("t", "linux"), transfer="sftp")
    files = {e["source_path"]: e for e in manifest_of(result.collection)["files"]}
    assert files[str(paths["dropper"])]["sha256_received"] == sha(paths["dropper"])
    assert result.status == "complete"


def test_host_without_tar_falls_back_to_sftp(irkit_home, conn, tree, monkeypatch):
    from ir_toolkit.triage import remote

    _, paths, catalog = tree
    monkeypatch.setattr(remote, "PREFLIGHT_COMMAND", "echo tar")  # the host reports tar missing
    result = collect_host(conn, TARGET, catalog.select("t", "linux"))
    manifest = manifest_of(result.collection)
    assert manifest["collector"]["transfer"] == "sftp" and result.status == "complete"
    files = {e["source_path"]: e for e in manifest["files"]}
    assert files[str(paths["cron"])]["sha256_received"] == sha(paths["cron"])


def test_file_changed_between_hash_and_copy_is_copied_again(irkit_home, conn, tree, monkeypatch):
    _, paths, catalog = tree
    original = collector_mod.HostCollector._hash_on_host

    def hash_then_rewrite(self, todo):
        original(self, todo)
        data = paths["auth_log"].read_bytes()
        paths["auth_log"].write_bytes(data.replace(b"sshd", b"SSHD", 1))  # changed in place after the hash

    monkeypatch.setattr(collector_mod.HostCollector, "_hash_on_host", hash_then_rewrite)
    result = collect_host(conn, TARGET, catalog.select("t", "linux"))
    entry = {e["source_path"]: e for e in manifest_of(result.collection)["files"]}[str(paths["auth_log"])]
    assert entry["status"] == "collected"
    assert entry["archive_path"].startswith("retry/")
    assert entry["sha256_host"] == entry["sha256_received"] == sha(paths["auth_log"])
    assert entry["first_attempt"]["sha256_host"] != entry["first_attempt"]["sha256_received"]
    assert "copied again" in entry["note"]
    assert result.status == "complete"
    assert verify_collection("CASE-1", result.collection, records=None).ok


def test_file_that_grows_after_listing_keeps_the_listed_bytes(irkit_home, conn, tree, monkeypatch):
    """A log appended to after the listing: the bytes stored never exceed the listed size (finding 4),
    and those bytes are exactly what the host hashed, so nothing is lost and nothing is an anomaly."""
    _, paths, catalog = tree
    listed = paths["auth_log"].read_bytes()
    original = collector_mod.HostCollector._hash_on_host

    def hash_then_append(self, todo):
        original(self, todo)
        with open(paths["auth_log"], "a") as fh:  # the log grows after the host hashed it
            fh.write("Nov 26 03:15:00 web01 sshd[901]: Accepted password for mspadmin from 203.0.113.66\n")

    monkeypatch.setattr(collector_mod.HostCollector, "_hash_on_host", hash_then_append)
    result = collect_host(conn, TARGET, catalog.select("t", "linux"))
    entry = {e["source_path"]: e for e in manifest_of(result.collection)["files"]}[str(paths["auth_log"])]
    assert entry["status"] == "collected" and entry["received_size"] == len(listed)
    assert entry["sha256_received"] == entry["sha256_host"] == hashlib.sha256(listed).hexdigest()
    assert "first" in entry["note"]
    assert result.status == "complete", result.anomalies


def test_bytes_corrupted_in_transit_fail_loudly(irkit_home, conn, tree, monkeypatch):
    _, paths, catalog = tree
    original = BundleWriter.add_stream

    class Corrupting:
        def __init__(self, stream):
            self.stream, self.done = stream, False

        def read(self, n=-1):
            data = self.stream.read(n)
            if data and not self.done:
                self.done = True
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            return data

    def corrupt(self, name, size, stream, meta=None):
        if name.endswith("/dropper"):
            stream = Corrupting(stream)
        return original(self, name, size, stream, *(m for m in [meta] if m is not None))

    monkeypatch.setattr(BundleWriter, "add_stream", corrupt)
    result = collect_host(conn, TARGET, catalog.select("t", "linux"))
    entry = {e["source_path"]: e for e in manifest_of(result.collection)["files"]}[str(paths["dropper"])]
    assert entry["status"] == "hash_mismatch"
    assert entry["sha256_host"] == sha(paths["dropper"]) != entry["sha256_received"]
    assert result.status == "complete_with_errors"
    assert result.problems and str(paths["dropper"]) in result.problems[0]
    report = verify_collection("CASE-1", result.collection, records=None)
    assert any("hash mismatch" in w for w in report.warnings)
    status = host_evidence_status("CASE-1", "globex", "web01", records=[])
    assert not status.ready and "hash mismatches" in status.reason


def test_encrypted_collection_extracts_only_with_recipient_key(irkit_home, conn, tree, tmp_path):
    _, paths, catalog = tree
    key = X25519PrivateKey.generate()
    result = collect_host(conn, TARGET, catalog.select("t", "linux"), recipients=[key.public_key()])
    coll = result.collection
    assert coll.encrypted and result.seal["recipients"]
    assert paths["history"].read_bytes() not in coll.bundle_path.read_bytes()
    out = tmp_path / "out"
    assert not extract_collection(coll, out, identities=[key]).problems
    got = out / "files" / str(paths["history"]).lstrip("/")
    assert got.read_bytes() == paths["history"].read_bytes()
    assert abs(got.stat().st_mtime - paths["history"].stat().st_mtime) < 1e-3


def test_builtin_process_artifacts_hash_a_deleted_binary(tmp_path):
    """linux.live.process_hashes / deleted_binaries, run as written, in a private PID namespace."""
    catalog = load_catalog()
    hashes = command_for(catalog.artifacts["linux.live.process_hashes"])
    deleted = command_for(catalog.artifacts["linux.live.deleted_binaries"])
    implant = tmp_path / "implant"
    shutil.copy("/bin/sleep", implant)
    script = (f"{implant} 60 & pid=$!; sleep 0.2; rm -f {implant}; "
              f"({hashes}) > {tmp_path}/hashes.txt; ({deleted}) > {tmp_path}/deleted.tar; echo $pid")
    run = subprocess.run(["unshare", "--pid", "--fork", "--mount", "--mount-proc", "sh", "-c", script],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    pid = run.stdout.split()[-1]
    want = sha(Path("/bin/sleep"))
    rows = [line.split("\t") for line in (tmp_path / "hashes.txt").read_text().splitlines()[1:]]
    row = next(r for r in rows if r[0] == pid)
    assert row[1] == want and row[2] == f"{implant} (deleted)"
    with tarfile.open(tmp_path / "deleted.tar") as tar:
        assert hashlib.sha256(tar.extractfile(f"{pid}/exe").read()).hexdigest() == want


def test_batched_commands_give_the_same_evidence_as_commands_run_alone(irkit_home, conn, tree):
    """Over real OpenSSH: the `t` profile's command artifacts in one channel and one channel each."""
    _, _, catalog = tree
    selection = catalog.select("t", "linux")
    assert sum(a.collector == "command" for a in selection.artifacts) >= 2
    batched = collect_host(conn, TARGET, selection)
    alone = collect_host(conn, TARGET, selection, batch_commands=False)
    got = {}
    for result in (batched, alone):
        assert not result.anomalies
        outputs = {o["artifact"]: o for o in manifest_of(result.collection)["outputs"] if o["kind"] == "command"}
        with tarfile.open(result.collection.bundle_path) as bundle:
            got[result is batched] = {
                name: (o["exit_status"], o["status"], "transit" in o,
                       None if name.endswith(".ps") else bundle.extractfile(o["archive_path"]).read())
                for name, o in outputs.items()}
    assert {k: v[:2] + v[3:] for k, v in got[True].items()} == {k: v[:2] + v[3:] for k, v in got[False].items()}
    assert all(v[2] for v in got[True].values()) and not any(v[2] for v in got[False].values())
    # the file artifacts' listings came in the batch too: the same files, metadata, statuses and hashes
    keep = ("status", "size", "mode", "owner", "sha256_host", "sha256_received", "kind", "link_target",
            "artifacts", "reason")
    # (the first collection's reads may move a file's access time: compare the modification time)
    files = [{e["source_path"]: {**{k: e.get(k) for k in keep}, "modified": (e.get("times") or {}).get("modified")}
              for e in manifest_of(r.collection)["files"]} for r in (batched, alone)]
    assert files[0] == files[1] and len(files[0]) > 5
    assert [a["name"] for a in manifest_of(batched.collection)["artifacts"]] == \
        [a["name"] for a in manifest_of(alone.collection)["artifacts"]]
    assert verify_collection("CASE-1", batched.collection, records=None).ok


def test_evidence_streams_use_aes_gcm_with_openssh(conn):
    """The transport offers AES-GCM first: no per-packet HMAC (paramiko checks it byte by byte in Python)."""
    transport = conn.client.get_transport()
    assert transport.remote_cipher == transport.local_cipher == "aes128-gcm@openssh.com"
    assert "aes128-ctr" in type(transport)._preferred_ciphers  # the others remain, after it
