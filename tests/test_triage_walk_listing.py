"""One walk per host: a hash artifact listed by the walk's section (``listed_by``) instead of a find of its own.

Unit tests of the listing parser and the definition checks, then the collector against a real OpenSSH sshd on
127.0.0.1 (root): a walk-like command artifact lists SUID/SGID files of a temp tree; the listed artifact hashes
them without running any command of its own, and falls back to its own find when the listing cannot be trusted
(a path with a newline, which a line-based listing cannot carry, is then still hashed).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
from pathlib import Path

import pytest

from ir_toolkit.errors import InputError
from ir_toolkit.triage import remote
from ir_toolkit.triage.collector import HostTarget, collect_host
from ir_toolkit.triage.schema import load_catalog

LINE = ("f\t43917\t1796123341.3226448350\t1796123341.0000000000\t1796123341.3226448351\t-1.-000000010\t0\t42\t"
        "root\tshadow\t2755\t2049\t1234\t/usr/sbin/unix chkpwd\twith\ttabs\n")


def test_listing_line_becomes_the_stat_record_the_find_would_give():
    [st] = remote.parse_walk_listing(LINE.encode())
    assert st.kind == "file" and st.path == "/usr/sbin/unix chkpwd\twith\ttabs"
    assert (st.size, st.uid, st.gid, st.owner, st.group, st.mode) == (43917, 0, 42, "root", "shadow", "2755")
    assert (st.device, st.inode) == (2049, 1234)
    assert st.accessed == "2026-12-01T11:09:01.322644835Z"  # find's 10 fraction digits cut to stat's 9
    assert st.changed == "2026-12-01T11:09:01.322644835Z"
    assert st.born is None and st.problem is None
    assert st.modified_epoch == "1796123341.000000000"


@pytest.mark.parametrize("bad", [
    b"unsafe-name\n",                               # the walk's marker for a path with a newline
    LINE.encode() + b"b\n",                         # the tail of a path broken by a newline
    LINE.replace("1796123341.3226448350", "x").encode(),
    LINE.replace("f\t", "z\t", 1).encode(),
    b"f\t1\t2\n",
])
def test_a_listing_with_any_incomplete_line_is_not_used(bad):
    assert remote.parse_walk_listing(LINE.encode() + bad) is None


def test_hostile_values_in_a_listing_are_marked_not_trusted():
    [st] = remote.parse_walk_listing(LINE.replace("\t0\t42\t", "\t99999999999\t42\t").replace(
        "/usr/sbin/unix", "/usr/../etc/x").encode())
    assert st.problem and "uid" in st.problem and "canonical" in st.problem


def test_shipped_suid_sgid_is_listed_by_the_one_walk():
    catalog = load_catalog()
    suid = catalog.artifacts["linux.files.suid_sgid"]
    walk = catalog.artifacts["linux.files.bodyfile"]
    assert suid.listed_by == "linux.files.bodyfile#suid" and "suid" in walk.sections
    assert "-perm /6000" in walk.command and "unsafe-name" in walk.command
    assert walk.command.count("find / \\(") == 1, "one walk of the file systems (and a -maxdepth 0 probe)"
    assert "-nouser" in walk.command and "$ku -nouser" in walk.command, "NSS asked only for unknown ids"


def _defs(tmp_path: Path, body: str) -> Path:
    d = tmp_path / "defs"
    d.mkdir(exist_ok=True)
    (d / "w.yml").write_text(body)
    (d / "profiles.yml").write_text("version: 1\nprofiles:\n  - {name: w, description: w, artifacts: ['linux.w.*']}\n")
    return d


@pytest.mark.parametrize("listed_by, order, why", [
    ("linux.w.nowalk#suid", 60, "no linux command artifact"),
    ("linux.w.walk#other", 60, "with a section 'other'"),
    ("linux.w.walk#suid", 5, "must run before"),
])
def test_listed_by_must_name_an_earlier_walk_section(tmp_path, listed_by, order, why):
    body = f"""version: 1
artifacts:
  - {{name: linux.w.walk, description: walk, os: linux, collector: command, order: 10, command: "true",
      sections: {{suid: suid.txt}}}}
  - {{name: linux.w.hashed, description: hashed, os: linux, collector: hash, order: {order}, paths: [/tmp],
      listed_by: "{listed_by}"}}
"""
    with pytest.raises(InputError, match=why):
        load_catalog(extra_dirs=[_defs(tmp_path, body)])


def test_listed_by_is_only_for_hash_artifacts(tmp_path):
    body = """version: 1
artifacts:
  - {name: linux.w.walk, description: walk, os: linux, collector: command, order: 10, command: "true",
      sections: {suid: suid.txt}}
  - {name: linux.w.copied, description: c, os: linux, collector: glob, order: 60, paths: [/tmp],
      listed_by: "linux.w.walk#suid"}
"""
    with pytest.raises(InputError, match="only for hash artifacts"):
        load_catalog(extra_dirs=[_defs(tmp_path, body)])


# ---------------------------------------------------------------- against a real sshd (root)

lab = pytest.mark.skipif(os.geteuid() != 0, reason="starting sshd needs root")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    from triage_helpers import start_sshd

    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


class Recording:
    """The connection, with the commands it ran."""

    def __init__(self, conn) -> None:
        self._conn = conn
        self.commands: list[str] = []

    def run(self, command, **kwargs):
        self.commands.append(command)
        return self._conn.run(command, **kwargs)

    def exec_stream(self, command, **kwargs):
        self.commands.append(command)
        return self._conn.exec_stream(command, **kwargs)

    def __getattr__(self, name):
        return getattr(self._conn, name)


def _walk_defs(tmp_path: Path, root: Path, compress: str | None = None) -> Path:
    fmt = remote.WALK_LISTING_FORMAT
    walk = (f"NL='\n'; find {shlex.quote(str(root))} -printf '0|%p\\n' , \\( -type f -perm /6000 \\( -path \"*$NL*\" "
            f"-printf 'suid\\tunsafe-name\\n' -o -printf 'suid\\t{fmt}' \\) \\)")
    body = {"version": 1, "artifacts": [
        {"name": "linux.w.walk", "description": "walk", "os": "linux", "collector": "command", "order": 10,
         "command": walk, "output": "walk.txt", "sections": {"suid": "suid.txt"},
         **({"compress": compress} if compress else {})},
        {"name": "linux.w.suid", "description": "suid", "os": "linux", "collector": "hash", "order": 60,
         "perm": "/6000", "paths": [str(root)], "listed_by": "linux.w.walk#suid"},
    ]}
    return _defs(tmp_path, json.dumps(body))


def _tree(root: Path, names: list[str]) -> dict[str, str]:
    root.mkdir(parents=True)
    (root / "plain").write_bytes(b"not suid")
    digests = {}
    for i, name in enumerate(names):
        path = root / name
        shutil.copy("/bin/true", path)
        with open(path, "ab") as f:
            f.write(str(i).encode())
        path.chmod(0o4755 if i % 2 == 0 else 0o2755)
        digests[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def _collect(sshd, tmp_path, root, compress=None):
    catalog = load_catalog(extra_dirs=[_walk_defs(tmp_path, root, compress)])
    conn = Recording(sshd.connect())
    try:
        result = collect_host(conn, HostTarget(case="CASE-W", msp="m", tenant="t", host="h", address="127.0.0.1"),
                              catalog.select("w", "linux"))
    finally:
        conn.close()
    manifest = json.loads((result.collection.path / "manifest.json").read_bytes())
    return result, manifest, conn.commands


@lab
@pytest.mark.lab
@pytest.mark.parametrize("compress", [None, "gzip"])  # gzip: the walk's sections split off on the host
def test_listed_files_are_hashed_without_a_walk_of_their_own(irkit_home, sshd, tmp_path, compress):
    root = tmp_path / "host"
    digests = _tree(root, ["su-a", "sg-b", "su c\twith tab"])
    result, manifest, commands = _collect(sshd, tmp_path, root, compress)
    assert result.status == "complete", result
    files = {e["source_path"]: e for e in manifest["files"]}
    assert set(files) == set(digests)
    for path, digest in digests.items():
        assert files[path]["status"] == "hashed" and files[path]["sha256_host"] == digest, files[path]
        assert files[path]["mode"] in ("4755", "2755") and files[path]["times"]["modified"]
    art = {a["name"]: a for a in manifest["artifacts"]}["linux.w.suid"]
    assert art["listed_by"] == "linux.w.walk#suid" and art["files"] == 3
    assert not any("find -P" in c for c in commands), "the listed artifact ran no find of its own"


@lab
@pytest.mark.lab
@pytest.mark.parametrize("compress", [None, "gzip"])
def test_a_newline_in_a_suid_path_falls_back_to_its_own_find(irkit_home, sshd, tmp_path, compress):
    root = tmp_path / "host"
    digests = _tree(root, ["su-a", "evil\nname"])
    result, manifest, commands = _collect(sshd, tmp_path, root, compress)
    files = {e["source_path"]: e for e in manifest["files"]}
    assert set(files) == set(digests), "the file with a newline in its name is not lost"
    assert all(files[p]["sha256_host"] == d for p, d in digests.items())
    art = {a["name"]: a for a in manifest["artifacts"]}["linux.w.suid"]
    assert "listed_by" not in art
    assert any("find -P" in c for c in commands)
