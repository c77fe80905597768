"""The bundle writer's fast tar header (triage/tarstream.py fast_header) is tarfile's, byte for byte."""

from __future__ import annotations

import io
import random
import tarfile

import pytest

from ir_toolkit.triage.tarstream import TarWriter, fast_header


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
