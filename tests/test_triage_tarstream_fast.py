"""The bundle writer's fast tar header (triage/tarstream.py fast_header) is tarfile's, byte for byte; the
reader's fast header parse (parse_header) gives what ``tarfile.TarInfo.frombuf`` gives, for real GNU tar
headers and for mangled ones (a host chooses every byte of them)."""

from __future__ import annotations

import io
import random
import shutil
import subprocess
import tarfile

import pytest

from ir_toolkit.triage.tarstream import TarWriter, fast_header, parse_header


def info(name="files/etc/passwd", size=10, mtime=1700000000.123456789, mode=0o644, uid=0, gid=0,
         uname="root", gname="root"):
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = size, mtime, mode, uid, gid, uname, gname
    return ti


def tarfiles(ti):
    return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


@pytest.mark.parametrize("mtime", [0, 1, 0.0, 0.5, 1.5, 2.5, 1700000000.999999, 1e-7, 8.0 ** 11 - 1,
                                   1700000000, 8 ** 11 - 1, 1234567.000001, 99.99])
def test_the_same_bytes_as_tarfile_for_each_kind_of_mtime(mtime):
    ti = info(mtime=mtime)
    assert fast_header(ti) == tarfiles(ti)


def test_the_same_bytes_as_tarfile_for_random_members():
    rnd = random.Random(17)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789._-/ @+"
    for _ in range(3000):
        name = "files/" + "".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 94)))
        ti = info(name=name, size=rnd.choice([0, 1, 511, 512, 513, rnd.randrange(8 ** 11)]),
                  mtime=rnd.choice([rnd.uniform(0, 4e9), rnd.randrange(4 * 10 ** 9), round(rnd.uniform(0, 2e9), 3)]),
                  mode=rnd.randrange(0o10000), uid=rnd.randrange(8 ** 7), gid=rnd.randrange(8 ** 7),
                  uname=rnd.choice(["", "root", "a" * 32]), gname=rnd.choice(["", "wheel", "g" * 32]))
        assert fast_header(ti) == tarfiles(ti), (name, ti.size, ti.mtime)


@pytest.mark.parametrize("change", [
    {"name": "files/" + "x" * 95},                  # over 100 bytes: a pax path record
    {"name": "files/caf\u00e9"},                    # not ASCII
    {"name": "files/\udcff"},                       # a surrogate (bytes that are not UTF-8)
    {"uname": "u" * 33}, {"gname": "\u00e9"},
    {"uid": 8 ** 7}, {"gid": -1}, {"size": 8 ** 11}, {"mtime": -1.0}, {"mtime": 8.0 ** 11}, {"mtime": 8 ** 11}, {"mtime": 253402300799.0},
])
def test_anything_else_is_left_to_tarfile(change):
    ti = info(**change)
    assert fast_header(ti) is None
    if ti.size < 1000:  # and the writer then writes tarfile's header
        buf = io.BytesIO()
        TarWriter(buf).add(ti, io.BytesIO(b"x" * ti.size))
        assert buf.getvalue().startswith(tarfiles(ti))


def test_other_member_types_are_left_to_tarfile():
    ti = info()
    ti.type = tarfile.SYMTYPE
    assert fast_header(ti) is None
    ti = info()
    ti.pax_headers = {"comment": "x"}
    assert fast_header(ti) is None


def test_an_archive_written_with_it_reads_back():
    buf = io.BytesIO()
    writer = TarWriter(buf)
    members = {f"files/d/f{i}": bytes([i]) * (i * 37) for i in range(40)}
    for i, (name, data) in enumerate(members.items()):
        writer.add(info(name=name, size=len(data), mtime=1700000000 + i / 7), io.BytesIO(data))
    writer.close()
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        for i, m in enumerate(tar.getmembers()):
            assert tar.extractfile(m).read() == members[m.name]
            assert m.mtime == pytest.approx(1700000000 + i / 7, abs=1e-6)


# ----------------------------------------------------------------------------- reading: parse_header


def frombuf_outcome(parse, block):
    try:
        ti = parse(block)
    except Exception as exc:  # noqa: BLE001 - the kind of error is what is compared
        return ("error", type(exc))
    return ("ok", {k: getattr(ti, k) for k in tarfile.TarInfo.__slots__ if hasattr(ti, k)})


def tarfile_parse(block):
    return tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")


def headers_of(archive: bytes) -> list[bytes]:
    """Every header block of an archive (pax records included), found by walking it."""
    blocks, pos = [], 0
    while pos + 512 <= len(archive) and archive[pos:pos + 512] != bytes(512):
        block = archive[pos:pos + 512]
        blocks.append(block)
        size = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape").size
        pos += 512 + -(-size // 512) * 512
    return blocks


@pytest.fixture(scope="module")
def real_headers(tmp_path_factory):
    """Headers GNU tar writes as the host's tar stream does (posix format, numeric owners), for files with
    short, long (pax path) and non-UTF-8 names, an empty file, a symlink and a directory; plus tarfile's own
    ustar (a prefix field), GNU (base-256 numbers) and pax headers."""
    blocks = []
    if shutil.which("tar"):
        root = tmp_path_factory.mktemp("tree")
        (root / "a.txt").write_bytes(b"hello")
        (root / "empty").write_bytes(b"")
        deep = root / ("d" * 60) / ("e" * 60)
        deep.mkdir(parents=True)
        (deep / ("f" * 90)).write_bytes(b"x" * 700)
        (root / "caf\u00e9").write_bytes(b"1")
        (root / "link").symlink_to("a.txt")
        raw = bytes(root) + b"/\xff\xfe"
        with open(raw, "wb") as fh:
            fh.write(b"2")
        names = [b"a.txt", b"empty", str(deep.relative_to(root) / ("f" * 90)).encode(), "caf\u00e9".encode(),
                 b"link", b"\xff\xfe", str(deep.relative_to(root)).encode()]
        out = subprocess.run(["tar", "--create", "--file=-", "--format=posix", "--numeric-owner", "--no-recursion",
                              f"--directory={root}", "--null", "--verbatim-files-from", "--files-from=-"],
                             input=b"".join(n + b"\0" for n in names), capture_output=True, check=True).stdout
        blocks += headers_of(out)
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        for ti in (info(), info(name="p" * 80 + "/" + "n" * 90), info(size=8 ** 11 + 5 if fmt != tarfile.USTAR_FORMAT
                                                                          else 5, uid=8 ** 7 + 1 if fmt != tarfile.USTAR_FORMAT else 1)):
            try:
                buf = ti.tobuf(fmt, "utf-8", "surrogateescape")
            except ValueError:
                continue
            blocks += [buf[i:i + 512] for i in range(0, len(buf), 512)]
    return blocks


def test_the_same_as_frombuf_for_real_headers(real_headers):
    assert len(real_headers) >= 10
    for block in real_headers:
        assert frombuf_outcome(parse_header, block) == frombuf_outcome(tarfile_parse, block)


def _with_checksum(block: bytearray, signed: bool = False) -> bytes:
    block[148:156] = b" " * 8
    total = sum(b - 256 if signed and b > 127 else b for b in block)
    block[148:156] = b"%06o\0 " % (total & 0o777777)
    return bytes(block)


def test_the_same_as_frombuf_for_mangled_headers(real_headers):
    """Random bytes written over random places (numbers, magic, type, names, the checksum), the checksum then
    left wrong, made right, or made right only for the signed sum: parse_header and frombuf agree every time."""
    rnd = random.Random(1717)
    junk = [b"0", b"7", b"8", b"9", b" ", b"\0", b"_", b"+", b"-", b"x", b"\x80", b"\xff", b"\xe9", b"0x"]
    spots = [0, 50, 99, 100, 104, 107, 108, 116, 124, 130, 135, 136, 147, 148, 153, 155, 156, 157, 257, 262, 263,
             265, 297, 329, 336, 337, 344, 345, 400, 499, 500, 511]
    for n in range(6000):
        block = bytearray(rnd.choice(real_headers))
        for _ in range(rnd.randint(1, 4)):
            at = rnd.choice(spots) if rnd.random() < 0.8 else rnd.randrange(512)
            piece = rnd.choice(junk) * rnd.randint(1, 3)
            block[at:at + len(piece)] = piece
            del block[512:]
        mode = n % 3
        data = bytes(block) if mode == 0 else _with_checksum(block, signed=mode == 2)
        assert len(data) == 512
        assert frombuf_outcome(parse_header, data) == frombuf_outcome(tarfile_parse, data), (n, data)


def test_the_fast_path_is_taken_for_gnu_tars_file_headers(real_headers, monkeypatch):
    """The plain headers (files and their pax records) do not go to frombuf; the rest does."""
    calls = []
    real = tarfile.TarInfo.frombuf.__func__
    monkeypatch.setattr(tarfile.TarInfo, "frombuf", classmethod(lambda cls, *a: calls.append(1) or real(cls, *a)))
    plain = [b for b in real_headers[:4] if b[156:157] in (b"0", b"x") and b[257:265] == b"ustar\x0000"]
    assert plain
    for block in plain:
        parse_header(block)
    assert not calls
