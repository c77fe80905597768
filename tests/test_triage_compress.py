"""Outputs the host compresses (``compress: gzip``, issue 17): the bodyfile comes over gzip-compressed and is kept
as the bytes received; its sections are split off on the host and stay plain.

Unit tests (the host's routing against the controller's SectionSplitter, run by the local ``sh``/``awk``/``gzip``;
the trailer parser against hostile endings; the definition checks), then the collector against a real OpenSSH
sshd on 127.0.0.1 (root): the stored member, its hash, verify and extract; a host without gzip; a host that lies
about the framing; an output over its cap. Nothing on the controller decompresses an output (so no decompression
bomb can reach it); the tests that read one decompress it with a bound.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import shlex
import subprocess
import zlib
from pathlib import Path

import pytest

from ir_toolkit.triage import remote
from ir_toolkit.triage.collector import HostTarget, collect_host, split_sections, unframe_sections
from ir_toolkit.triage.schema import Artifact, load_catalog

TAGS = {"hidden": "hidden.txt", "suid": "suid.txt", "attr": "attr.txt", "a_very_long_tag_of_32_characters": "l.txt"}


def bounded_gunzip(data: bytes, limit: int = 1 << 28) -> bytes:
    """Decompress at most ``limit`` bytes (a test never inflates a bomb either)."""
    out = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, limit)
    assert len(out) < limit, "decompressed output over the test's bound"
    return out


def host_run(artifact: Artifact) -> subprocess.CompletedProcess:
    """The compressed command line as a host runs it (the local sh, awk and gzip, C locale)."""
    return subprocess.run(["sh", "-c", remote.command_for(artifact, compress=True)], capture_output=True, timeout=60)


def walk_artifact(command: str, sections: dict[str, str] | None = None) -> Artifact:
    return Artifact(name="linux.t.walk", description="walk", os="linux", collector="command", command=command,
                    compress="gzip", sections=TAGS if sections is None else sections)


def printf_command(data: bytes) -> str:
    """A command that prints exactly ``data`` (octal escapes: any byte)."""
    return "printf " + shlex.quote("".join(f"\\{b:03o}" for b in data))


def hostile_lines(seed: int) -> bytes:
    rng = random.Random(seed)
    pieces = [b"0|/usr/bin/ls|12|-rwxr-xr-x|0|0|1234|1.0|2.0|3.0|0", b"hidden\t/home/a/.x", b"hiddenish\t/y",
              b"suid\tf\t1\t2\t3\t4\t0\t0\t0\troot\troot\t4755\t1\t2\t/usr/bin/su", b"attr\t----i---- /z",
              b"\thidden\t/tab-first", b"HIDDEN\t/upper", b"hidden", b"hidden \t/space", b"0|/a\tb|1",
              b"a_very_long_tag_of_32_characters\t/l", b"a_very_long_tag_of_32_characters_\t/longer",
              b"x" * 33 + b"\t/tab-at-34", b"0|/bad\xff\xfe\x80utf8|1", b"attr\t\t\t", b""]
    lines = [rng.choice(pieces) + (b"" if rng.random() < 0.7 else bytes(rng.randrange(1, 256) for _ in range(5))
                                   .replace(b"\n", b"").replace(b"\0", b""))
             for _ in range(rng.randrange(1, 60))]
    return b"\n".join(lines) + b"\n"


def unframe_bytes(data: bytes) -> tuple[bytes, bytes] | None:
    frame = unframe_sections(io.BytesIO(data), len(data))
    if frame is None:
        return None
    body, tail = frame
    return data[:body], data[body:body + tail]


# ---------------------------------------------------------------- the host's routing = the controller's

@pytest.mark.parametrize("seed", range(12))
def test_host_routing_matches_the_controller_splitter(seed):
    data = hostile_lines(seed)
    proc = host_run(walk_artifact(printf_command(data)))
    assert proc.returncode == 0, proc.stderr
    body, tail = unframe_bytes(proc.stdout)
    main, parts = split_sections(data, TAGS)
    assert bounded_gunzip(body) == main
    untagged, tail_parts = split_sections(tail, TAGS)
    assert untagged == b"" and tail_parts == parts


def test_exit_status_and_stderr_are_the_commands_own():
    proc = host_run(walk_artifact("printf '0|/a\\nhidden\\t/.b\\n'; echo oops >&2; exit 3"))
    assert proc.returncode == 3 and proc.stderr == b"oops\n"
    body, tail = unframe_bytes(proc.stdout)
    assert bounded_gunzip(body) == b"0|/a\n" and tail == b"hidden\t/.b\n"
    plain = Artifact(name="linux.t.p", description="p", os="linux", collector="command", compress="gzip",
                     command="seq 3; exit 5")
    proc = host_run(plain)
    assert proc.returncode == 5 and bounded_gunzip(proc.stdout) == b"1\n2\n3\n"


def test_no_output_is_still_a_gzip_stream_and_a_trailer():
    proc = host_run(walk_artifact("true"))
    body, tail = unframe_bytes(proc.stdout)
    assert body[:2] == b"\x1f\x8b" and bounded_gunzip(body) == b"" and tail == b""


def test_a_last_line_without_newline_is_terminated():
    proc = host_run(walk_artifact("printf '0|/a\\nhidden\\t/.b'"))
    body, tail = unframe_bytes(proc.stdout)
    assert bounded_gunzip(body) == b"0|/a\n" and tail == b"hidden\t/.b\n"


# ---------------------------------------------------------------- the trailer (the host chooses every byte)

@pytest.mark.parametrize("data, expected", [
    (b"GZ" + b"sec\n" + b"irkit-sections 4\n", (2, 4)),
    (b"GZirkit-sections 0\n", (2, 0)),
    (b"irkit-sections 0\n", (0, 0)),
    (b"sec\nirkit-sections 4\n", (0, 4)),
])
def test_trailer_divides_the_stream(data, expected):
    assert unframe_sections(io.BytesIO(data), len(data)) == expected


@pytest.mark.parametrize("data", [
    b"", b"GZ", b"GZirkit-sections 3\n",                 # claims more than there is before it
    b"GZirkit-sections 99999999999999999999\n",           # too many digits
    b"GZirkit-sections -1\n", b"GZirkit-sections 1", b"GZirkit-sections 1\n\n", b"GZirkit-sections \n",
    b"GZirkit-sections 0x1\n", b"GZirkit-sections 1 \n", b"x" * 1000,
])
def test_a_missing_or_lying_trailer_is_refused(data):
    assert unframe_sections(io.BytesIO(data), len(data)) is None


# ---------------------------------------------------------------- definitions

def test_compress_only_for_linux_command_artifacts():
    with pytest.raises(ValueError, match="only for command artifacts"):
        Artifact(name="linux.t.f", description="f", os="linux", collector="file", paths=["/etc/x"], compress="gzip")
    with pytest.raises(ValueError, match="only for Linux"):
        Artifact(name="windows.t.c", description="c", os="windows", collector="command", command="dir",
                 compress="gzip")
    with pytest.raises(ValueError, match="its own file name"):
        Artifact(name="linux.t.c", description="c", os="linux", collector="command", command="true",
                 output="x.txt", compress="gzip", sections={"a": "x.txt.gz"})
    with pytest.raises(ValueError):
        Artifact(name="linux.t.c", description="c", os="linux", collector="command", command="true",
                 compress="zstd")


def test_shipped_bodyfile_is_compressed_and_its_lists_are_not():
    catalog = load_catalog()
    walk = catalog.artifacts["linux.files.bodyfile"]
    assert walk.compress == "gzip" and walk.compressed_name == "bodyfile.txt.gz" and "suid" in walk.sections
    assert catalog.artifacts["linux.live.process_strings"].compress == "gzip"
    assert {"gzip", "awk"} <= set(remote.COMPRESS_TOOLS)
    # a profile that only runs commands still checks for the tools when one of them compresses
    assert any(a.compress for a in catalog.select("ir_triage", "linux").artifacts)


# ---------------------------------------------------------------- against a real sshd (root)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="starting sshd needs root")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    from triage_helpers import start_sshd

    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


def _defs(tmp_path: Path, artifacts: list[dict]) -> Path:
    d = tmp_path / "defs"
    d.mkdir(exist_ok=True)
    (d / "t.yml").write_text(json.dumps({"version": 1, "artifacts": artifacts}))
    (d / "profiles.yml").write_text(json.dumps({"version": 1, "profiles": [
        {"name": "z", "description": "z", "artifacts": ["linux.z.*"]}]}))
    return d


def _walk_def(command: str, **extra) -> dict:
    return {"name": "linux.z.walk", "description": "walk", "os": "linux", "collector": "command", "order": 10,
            "command": command, "output": "walk.txt", "compress": "gzip",
            "sections": {"hidden": "hidden.txt", "suid": "suid.txt"}, **extra}


def _collect(sshd, tmp_path, artifacts, **kwargs):
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from ir_toolkit.triage.extract import extract_collection
    from ir_toolkit.triage.verify import verify_collection

    catalog = load_catalog(extra_dirs=[_defs(tmp_path, artifacts)])
    key = X25519PrivateKey.generate()
    conn = sshd.connect()
    try:
        result = collect_host(conn, HostTarget(case="CASE-Z", msp="m", tenant="t", host="h", address="127.0.0.1"),
                              catalog.select("z", "linux"), recipients=[key.public_key()], **kwargs)
    finally:
        conn.close()
    report = verify_collection("CASE-Z", result.collection, records=None, identities=[key])
    assert report.ok and report.contents_checked, report.problems
    out = tmp_path / "x"
    extracted = extract_collection(result.collection, out, identities=[key])
    assert not extracted.problems, extracted.problems
    manifest = json.loads((out / "manifest.json").read_bytes())
    return result, manifest, out


def _tree_walk(root: Path) -> str:
    root.mkdir(parents=True)
    for i in range(300):
        (root / f"f{i:03d}").write_text("x")
    (root / ".hidden").write_text("h")
    return (f"find {shlex.quote(str(root))} -printf '0|%p|%s\\n' , -name '.*' -printf 'hidden\\t%p\\n'; "
            "echo walk-stderr >&2")


@needs_root
@pytest.mark.lab
def test_compressed_output_is_stored_as_received_and_verifies(irkit_home, sshd, tmp_path):
    root = tmp_path / "host"
    command = _tree_walk(root)
    result, manifest, out = _collect(sshd, tmp_path, [_walk_def(command)])
    assert result.status == "complete", result
    outputs = {o["archive_path"]: o for o in manifest["outputs"]}
    main = outputs["live/walk.txt.gz"]
    stored = (out / "live/walk.txt.gz").read_bytes()
    # the manifest's hash is of the compressed bytes as the host produced them; nothing re-compressed
    assert main["encoding"] == "gzip" and main["size"] == len(stored)
    assert main["sha256_received"] == hashlib.sha256(stored).hexdigest() != main["sha256_stream"]
    assert main["stream_size"] > main["size"] and main["sections_size"] > 0
    plain = subprocess.run(["sh", "-c", command], capture_output=True, check=True).stdout
    expected_main, expected_parts = split_sections(plain, {"hidden": "hidden.txt", "suid": "suid.txt"})
    assert bounded_gunzip(stored) == expected_main and len(expected_main) > 10 * len(stored) // 2
    assert (out / "live/hidden.txt").read_bytes() == expected_parts["hidden"] == f"{root}/.hidden\n".encode()
    assert outputs["live/hidden.txt"]["kind"] == "section" and (out / "live/suid.txt").read_bytes() == b""
    assert (out / "live/walk.txt.stderr").read_bytes() == b"walk-stderr\n"
    assert "live/walk.txt" not in outputs and "live/walk.txt.untagged" not in outputs
    # what a responder does with it (docs/triage.md): gunzip the member
    assert gzip.decompress(stored) == expected_main


@needs_root
@pytest.mark.lab
def test_a_host_without_gzip_sends_it_uncompressed(irkit_home, sshd, tmp_path, monkeypatch):
    monkeypatch.setattr(remote, "PREFLIGHT_COMMAND", "echo gzip")  # the host reports gzip missing
    command = _tree_walk(tmp_path / "host")
    result, manifest, out = _collect(sshd, tmp_path, [_walk_def(command)])
    outputs = {o["archive_path"]: o for o in manifest["outputs"]}
    assert result.status == "complete" and "live/walk.txt.gz" not in outputs
    assert "encoding" not in outputs["live/walk.txt"] and (out / "live/walk.txt").read_bytes().startswith(b"0|")
    assert (out / "live/hidden.txt").read_bytes().endswith(b"/.hidden\n")
    log = (out / "collection.log").read_text()
    assert "outputs the host would compress come over uncompressed" in log


GZ = b"\x1f\x8b\x08" + b"z" * 20


@needs_root
@pytest.mark.lab
@pytest.mark.parametrize("stream, why, members", [
    # a length past the start of the stream, no trailer at all: stored whole, as received
    (b"not gzip\nhidden\t/x\nirkit-sections 999999\n", "section trailer", {"walk.txt.gz": None}),
    (GZ + b" and no trailer", "section trailer", {"walk.txt.gz": None}),
    # a valid division, but what comes before the sections is not gzip
    (b"plain text\nhidden\t/.x\nirkit-sections 11\n", "not a gzip stream",
     {"walk.txt.gz": b"plain text\n", "hidden.txt": b"/.x\n", "suid.txt": b""}),
    # untagged lines among the section lines are kept in their own member
    (GZ + b"forged\nhidden\t/.y\nirkit-sections 18\n", "untagged lines",
     {"walk.txt.gz": GZ, "hidden.txt": b"/.y\n", "suid.txt": b"", "walk.txt.untagged": b"forged\n"}),
])
def test_a_host_lying_about_the_framing_is_recorded_and_nothing_is_lost(irkit_home, sshd, tmp_path, monkeypatch,
                                                                        stream, why, members):
    real = remote.command_for

    def lying(artifact, *, compress=False):
        if artifact.name == "linux.z.walk" and compress:
            return printf_command(stream)
        return real(artifact, compress=compress)

    monkeypatch.setattr(remote, "command_for", lying)
    result, manifest, out = _collect(sshd, tmp_path, [_walk_def("true")])
    assert result.status == "partial" and any(why in a for a in result.anomalies), result.anomalies
    outputs = {o["archive_path"]: o for o in manifest["outputs"]}
    assert set(outputs) == {f"live/{name}" for name in members}
    for name, data in members.items():
        assert (out / "live" / name).read_bytes() == (stream if data is None else data), name
    main = outputs["live/walk.txt.gz"]
    assert hashlib.sha256(stream).hexdigest() in (main["sha256_received"], main.get("sha256_stream"))


@needs_root
@pytest.mark.lab
def test_compressed_output_over_its_cap_is_truncated_whole(irkit_home, sshd, tmp_path):
    command = "head -c 3000000 /dev/urandom | od -An -tx1; printf 'hidden\\t/.late\\n'"
    result, manifest, out = _collect(sshd, tmp_path, [_walk_def(command, max_file_size="64k")])
    main = {o["archive_path"]: o for o in manifest["outputs"]}["live/walk.txt.gz"]
    assert main["status"] == "truncated" and main["size"] == 65536 and "sections" in main["reason"]
    assert (out / "live/walk.txt.gz").read_bytes()[:2] == b"\x1f\x8b"
    with pytest.raises((EOFError, zlib.error)):
        gzip.decompress((out / "live/walk.txt.gz").read_bytes())  # a truncated stream: its first part reads
    assert len(zlib.decompressobj(16 + zlib.MAX_WBITS).decompress((out / "live/walk.txt.gz").read_bytes())) > 65536
    assert "live/hidden.txt" not in {o["archive_path"] for o in manifest["outputs"]}
