"""Finding 11 (security review): a host could make its sealed, verified bundle impossible to extract.

Ported from security-pocs/poc_collect.py §5-6 (path aliasing, a huge mtime). Bundles are built with the
real BundleWriter exactly as an older collector (or a forged host) could have sealed them.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ir_toolkit.triage.bundle import BundleWriter, MemberMeta
from ir_toolkit.triage.extract import extract_collection
from ir_toolkit.triage.verify import verify_collection


def _bundle(tmp_path, members, recipients=None):
    writer = BundleWriter(tmp_path / "ev" / "t" / "h" / "C1", recipients)
    files = []
    for name, data, meta in members:
        sha = writer.add_bytes(name, data, meta)
        files.append({"source_path": "/" + name.split("/", 1)[1], "archive_path": name, "sha256_received": sha,
                      "status": "collected"})
    manifest = {"format": "irkit-evidence-manifest/1", "files": files, "outputs": []}
    return writer.finish(manifest, b"{}\n", {"case": "C", "tenant": "t", "host": "h", "collection_id": "C1"})


def test_aliasing_member_names_do_not_crash_extraction(tmp_path):
    coll = _bundle(tmp_path, [("files/etc/motd", b"abc", MemberMeta()), ("files/etc/./motd", b"evil", MemberMeta()),
                              ("files/etc/other", b"x", MemberMeta())])
    assert verify_collection("C", coll, records=None).ok
    result = extract_collection(coll, tmp_path / "out")
    assert (tmp_path / "out/files/etc/motd").read_bytes() == b"abc"
    assert (tmp_path / "out/files/etc/other").read_bytes() == b"x", "extraction went on after the alias"
    assert any("files/etc/./motd" in p for p in result.problems)


def test_huge_mtime_does_not_crash_extraction(tmp_path):
    coll = _bundle(tmp_path, [("files/etc/motd", b"abc", MemberMeta(mtime=1e300)),
                              ("files/etc/x", b"y", MemberMeta(mtime=float("inf")))])
    result = extract_collection(coll, tmp_path / "out")
    assert (tmp_path / "out/files/etc/motd").read_bytes() == b"abc"
    assert result.members >= 2


def test_extracted_files_are_read_only_and_never_executable(tmp_path):
    coll = _bundle(tmp_path, [("files/tmp/dropper", b"#!/bin/sh\n", MemberMeta(mode=0o4777))])
    extract_collection(coll, tmp_path / "out")
    mode = stat.S_IMODE(os.stat(tmp_path / "out/files/tmp/dropper").st_mode)
    assert mode == 0o400


def test_raw_gives_the_decrypted_tar(tmp_path):
    from ir_toolkit.triage.extract import decrypt_raw

    key = X25519PrivateKey.generate()
    coll = _bundle(tmp_path, [("files/etc/motd", b"abc", MemberMeta()), ("files/etc/./motd", b"evil", MemberMeta())],
                   recipients=[key.public_key()])
    out = tmp_path / "raw.tar"
    size = decrypt_raw(coll, out, identities=[key])
    assert size == out.stat().st_size and stat.S_IMODE(out.stat().st_mode) == 0o600
    with tarfile.open(out) as tar:
        assert "files/etc/./motd" in tar.getnames()
        assert tar.extractfile("files/etc/motd").read() == b"abc"
    assert hashlib.sha256(out.read_bytes()).hexdigest()


def test_unsafe_member_names_are_problems_not_a_stop(tmp_path):
    coll = _bundle(tmp_path, [("files/../../escape", b"x", MemberMeta()), ("files/etc/ok", b"ok", MemberMeta())])
    result = extract_collection(coll, tmp_path / "out")
    assert (tmp_path / "out/files/etc/ok").read_bytes() == b"ok"
    assert not (tmp_path / "escape").exists() and not (tmp_path.parent / "escape").exists()
    assert any("unsafe name" in p for p in result.problems)
