"""Finding 10 (security review): malformed host metadata aborted a host's collection and lost its volatile evidence.

Ported from security-pocs/poc_collect.py §2-4 and poc_negsize.py. Every host-supplied number and string is
validated at the parser; a per-file anomaly is a per-file failure and the collection is sealed (`partial`).
"""

from __future__ import annotations

import json
import tarfile

import pytest

from hostile_host import END, FakeHost, digest, file_selection, member, stat_record, tar_member, target
from ir_toolkit.triage import remote, tarstream
from ir_toolkit.triage.collector import collect_host
from ir_toolkit.triage.verify import verify_collection


def _manifest(result):
    return json.loads((result.collection.path / "manifest.json").read_text())


def _check_sealed_with_volatile(result):
    manifest = _manifest(result)
    assert result.collection is not None and not result.collection.path.name.endswith(".partial")
    assert {o["artifact"]: o["status"] for o in manifest["outputs"]}["linux.live.processes"] == "collected"
    assert verify_collection("POC", result.collection, records=None).ok
    return {f["source_path"]: f for f in manifest["files"]}


def test_unrequested_member_is_not_stored(irkit_home):
    host = FakeHost(stats=stat_record("/etc/hostname", 3), hashes=digest(b"abc") + b"  /etc/hostname\0",
                    tar=member("etc/shadow-not-requested", b"xyz") + member("etc/hostname", b"abc") + END)
    result = collect_host(host, target("unrequested"), file_selection(["/etc/hostname"]))
    files = _check_sealed_with_volatile(result)
    assert "/etc/shadow-not-requested" not in files
    assert files["/etc/hostname"]["status"] == "collected"
    assert result.status == "partial" and any("not asked for" in a for a in result.anomalies)
    with tarfile.open(result.collection.bundle_path) as tar:
        assert "files/etc/shadow-not-requested" not in tar.getnames()


def test_duplicate_member_is_stored_once(irkit_home):
    one = member("etc/hostname", b"abc")
    host = FakeHost(stats=stat_record("/etc/hostname", 3), hashes=digest(b"abc") + b"  /etc/hostname\0",
                    tar=one + member("etc/hostname", b"EVIL") + END)
    result = collect_host(host, target("duplicate"), file_selection(["/etc/hostname"]))
    files = _check_sealed_with_volatile(result)
    assert files["/etc/hostname"]["status"] == "collected"
    assert any("sent twice" in a for a in result.anomalies)


@pytest.mark.parametrize("mtime", ["inf", "nan", "-inf", "1e300", "99999999999999999999"])
def test_non_finite_or_huge_mtime(irkit_home, mtime):
    host = FakeHost(stats=stat_record("/etc/hostname", 3, mtime=mtime), hashes=digest(b"abc") + b"  /etc/hostname\0",
                    tar=member("etc/hostname", b"abc") + END)
    result = collect_host(host, target("mtime"), file_selection(["/etc/hostname"]))
    files = _check_sealed_with_volatile(result)
    entry = files["/etc/hostname"]
    assert entry["status"] == "failed" and "invalid mtime" in entry["reason"]


@pytest.mark.parametrize("field,value", [("size", "-5"), ("size", "1" * 30), ("size", "abc"),
                                         ("uid", "-1"), ("uid", "99999999999"), ("mode", "9z")])
def test_invalid_numbers_fail_the_file_only(irkit_home, field, value):
    args = {"size": 3, "uid": "0", "mode": "644"}
    args[field] = value
    other = stat_record("/etc/ok", 3, ino=2)
    host = FakeHost(stats=stat_record("/etc/x", args["size"], uid=args["uid"], mode=args["mode"]) + other,
                    hashes=digest(b"abc") + b"  /etc/x\0" + digest(b"abc") + b"  /etc/ok\0",
                    tar=member("etc/x", b"abc") + member("etc/ok", b"abc") + END)
    result = collect_host(host, target("numbers"), file_selection(["/etc/x", "/etc/ok"]))
    files = _check_sealed_with_volatile(result)
    assert files["/etc/x"]["status"] == "failed" and f"invalid {field}" in files["/etc/x"]["reason"]
    assert files["/etc/ok"]["status"] == "collected"


def test_negative_pax_size_is_a_format_error(irkit_home):
    """poc_negsize: a pax `size=-5` used to desynchronise the parser."""
    info = tarfile.TarInfo("etc/x")
    info.size = 0
    info.pax_headers = {"size": "-5"}
    with pytest.raises(tarstream.TarFormatError, match="size"):
        list(tarstream.iter_members(__import__("io").BytesIO(info.tobuf(tarfile.PAX_FORMAT) + END)))
    m1 = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    streams = iter([m1 + b"\0" * 5 + member("etc/y", b"abc") + END,  # what tar sends for [x, y]
                    member("etc/y", b"abc") + END])                     # ... and for [y] after the restart
    host = FakeHost(stats=stat_record("/etc/x", 0, ino=1) + stat_record("/etc/y", 3, ino=2),
                    hashes=digest(b"") + b"  /etc/x\0" + digest(b"abc") + b"  /etc/y\0",
                    tar=lambda: next(streams))
    result = collect_host(host, target("negsize"), file_selection(["/etc/x", "/etc/y"]))
    files = _check_sealed_with_volatile(result)
    assert files["/etc/x"]["status"] == "failed"
    assert files["/etc/y"]["status"] == "collected", "the stream was restarted without the file it broke at"
    assert result.status == "partial"


@pytest.mark.parametrize("pax", [{"mtime": "inf"}, {"mtime": "1e300"}, {"uid": "-3"}, {"size": "18446744073709551616"}])
def test_pax_numbers_are_validated(pax):
    import io

    blob = tar_member("etc/x", b"", pax=pax) + END
    if pax.get("mtime") == "1e300":
        with pytest.raises(tarstream.TarFormatError):
            list(tarstream.iter_members(io.BytesIO(blob)))
        return
    with pytest.raises(tarstream.TarFormatError):
        list(tarstream.iter_members(io.BytesIO(blob)))


def test_bad_hash_and_bad_utf8_paths(irkit_home):
    raw = b"/etc/caf\xe9"  # latin-1 name: not UTF-8
    path = remote.decode_path(raw)
    host = FakeHost(stats=stat_record(path, 3), hashes=b"Z" * 64 + b"  " + raw + b"\0",
                    tar=member(path.lstrip("/"), b"abc") + END)
    result = collect_host(host, target("hash"), file_selection(["/etc/caf"]))
    files = _check_sealed_with_volatile(result)
    (entry,) = files.values()
    assert entry["source_path_hex"] == raw.hex()
    assert entry["status"] == "failed" and "no hash" in entry["reason"]


def test_non_canonical_paths_are_refused(irkit_home):
    host = FakeHost(stats=stat_record("/etc/motd", 3, ino=1) + stat_record("/etc/./motd", 3, ino=2)
                    + stat_record("/etc//motd2", 3, ino=3),
                    hashes=digest(b"abc") + b"  /etc/motd\0",
                    tar=member("etc/motd", b"abc") + member("etc/./motd", b"abc") + END)
    result = collect_host(host, target("canon"), file_selection(["/etc/motd"]))
    files = _check_sealed_with_volatile(result)
    assert files["/etc/motd"]["status"] == "collected"
    assert files["/etc/./motd"]["status"] == "failed" and "canonical" in files["/etc/./motd"]["reason"]
    assert files["/etc//motd2"]["status"] == "failed"


def test_symlinks_are_in_the_manifest_and_counted_once_per_artifact_in_the_log(irkit_home):
    """A listing's symlinks: each one in the manifest (recorded, its target, never followed or copied); the
    collection log carries one count per artifact, not a record per link (hundreds on a real host)."""
    links = [f"/etc/alt/l{i}" for i in range(40)]
    stats = stat_record("/etc/hostname", 3) + b"".join(
        stat_record(p, 7, kind="symbolic link", ino=100 + i).replace(
            remote.encode_path(f"'{p}'"), remote.encode_path(f"{p} -> /evil/{i}")) for i, p in enumerate(links))
    host = FakeHost(stats=stats, hashes=digest(b"abc") + b"  /etc/hostname\0",
                    tar=member("etc/hostname", b"abc") + END)
    result = collect_host(host, target("links"), file_selection(["/etc"]))
    files = _check_sealed_with_volatile(result)
    for i, p in enumerate(links):
        assert files[p]["status"] == "recorded" and files[p]["archive_path"] is None
        assert files[p]["link_target"] == f"/evil/{i}"
    with tarfile.open(result.collection.bundle_path) as tar:
        names = tar.getnames()
        log = [json.loads(line) for line in tar.extractfile("collection.log").read().splitlines()]
    assert not any(n.startswith("files/etc/alt") for n in names)
    counted = [r for r in log if r["event"].startswith("symlinks recorded")]
    assert [(r["artifact"], r["count"]) for r in counted] == [("linux.test.files", 40)]
    assert not any("/etc/alt/" in json.dumps(r) for r in log)
