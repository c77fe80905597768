"""A member written whole (``BundleWriter.add_stream`` for members up to ``SMALL_MEMBER``: read, hashed and written
in one piece) gives the archive exactly the bytes, digest and failure the streamed path gives - for sources that
trickle, end early, break, or give more than asked (a host's tar stream is behind every one of them)."""

from __future__ import annotations

import hashlib
import io
import os
import random
import tarfile

import pytest

from ir_toolkit.triage import bundle as bundle_mod
from ir_toolkit.triage import tarstream
from ir_toolkit.triage.bundle import SMALL_MEMBER, BundleWriter, IncompleteMember, MemberMeta
from ir_toolkit.triage.transfer import HashingReader


class Source(io.RawIOBase):
    """``data`` in pieces of at most ``piece`` bytes; after ``fail_after`` bytes it raises (or ends)."""

    def __init__(self, data: bytes, *, piece: int = 1 << 30, fail_after: int | None = None, error=None,
                 extra: int = 0) -> None:
        self.data, self.piece, self.fail_after, self.error, self.extra = data, piece, fail_after, error, extra
        self.pos = 0

    def readable(self):
        return True

    def read(self, size=-1):
        if self.fail_after is not None and self.pos >= self.fail_after:
            if self.error is not None:
                raise self.error
            return b""
        limit = len(self.data) if self.fail_after is None else min(len(self.data), self.fail_after)
        n = min(size, self.piece, limit - self.pos) + self.extra
        chunk = self.data[self.pos:self.pos + n]
        self.pos += len(chunk)
        return chunk


def streamed(members):
    """The archive bytes and per-member outcome of the streamed path (TarWriter.add through a HashingReader)."""
    out = io.BytesIO()
    writer = tarstream.TarWriter(out)
    outcomes = []
    for name, size, source, meta in members:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, meta.mtime, meta.mode
        info.uid, info.gid, info.uname, info.gname = meta.uid, meta.gid, meta.uname, meta.gname
        reader = HashingReader(source)
        try:
            writer.add(info, reader)
        except tarstream.SourceFailed as exc:
            sha = reader.sha.copy()
            sha.update(bytes(exc.padded))
            outcomes.append(("incomplete", sha.hexdigest(), reader.count, exc.padded, type(exc.cause).__name__))
            continue
        outcomes.append(("ok", reader.sha.hexdigest()))
    return out.getvalue(), outcomes


def written(tmp_path, members):
    writer = BundleWriter(tmp_path / "c", None)
    outcomes = []
    for name, size, source, meta in members:
        try:
            outcomes.append(("ok", writer.add_stream(name, size, source, meta)))
        except IncompleteMember as exc:
            outcomes.append(("incomplete", exc.digest, exc.received, exc.padded, type(exc.cause).__name__))
            assert writer.members[name] == exc.digest
    writer._hasher.drain()
    writer._raw.flush()
    blob = (writer.partial_dir / "bundle.tar").read_bytes()
    writer._raw.close()
    return blob, outcomes


SIZES = [0, 1, 511, 512, 513, 10_000, SMALL_MEMBER - 1, SMALL_MEMBER, SMALL_MEMBER + 1]


def cases(rnd):
    members = []
    for i, size in enumerate(SIZES):
        data = rnd.randbytes(size)
        meta = MemberMeta(mtime=rnd.choice([0.0, 1_600_000_000.0, 1_600_000_000.123456]), mode=0o644, uid=i,
                          gname=rnd.choice(["", "root", "staff"]))
        small = rnd.randint(1, 700) if size <= 10_000 else rnd.randint(30_000, 70_000)
        kinds = [dict(), dict(piece=small), dict(piece=4096)]
        if size:
            cut = rnd.randint(0, size - 1)
            kinds += [dict(fail_after=cut), dict(fail_after=cut, error=OSError("connection reset")),
                      dict(fail_after=cut, piece=small, error=tarstream.TarFormatError("ends inside"))]
        for n, kind in enumerate(kinds):
            members.append((f"files/m{i}-{n}", size, kind, data, meta))
    return members


def test_a_member_written_whole_is_the_streamed_member_byte_for_byte(tmp_path):
    rnd = random.Random(17)
    members = cases(rnd)
    want_blob, want = streamed([(name, size, Source(data, **kind), meta) for name, size, kind, data, meta in members])
    got_blob, got = written(tmp_path, [(name, size, Source(data, **kind), meta)
                                       for name, size, kind, data, meta in members])
    assert got == want
    assert got_blob == want_blob
    assert sum(o[0] == "incomplete" for o in got) > 10  # broken sources were exercised, not only good ones
    # and the archive reads back: every member where it belongs, the broken ones completed with zeros
    names = [info.name for info, _ in tarstream.iter_members(io.BytesIO(got_blob + bytes(1024)))]
    assert names == [m[0] for m in members]


def test_a_source_giving_more_than_asked_cannot_lengthen_its_member(tmp_path):
    data = os.urandom(5000)
    blob, outcomes = written(tmp_path, [("files/x", 3000, Source(data, extra=700), MemberMeta()),
                                        ("files/y", 10, Source(b"0123456789"), MemberMeta())])
    assert outcomes[0] == ("ok", hashlib.sha256(data[:3000]).hexdigest())
    got = {info.name: r.read() for info, r in tarstream.iter_members(io.BytesIO(blob + bytes(1024)))}
    assert got == {"files/x": data[:3000], "files/y": b"0123456789"}


def test_an_interrupt_while_reading_a_small_member_writes_nothing_of_it(tmp_path):
    class Interrupted(Source):
        def read(self, size=-1):
            raise KeyboardInterrupt

    writer = BundleWriter(tmp_path / "c", None)
    with pytest.raises(KeyboardInterrupt):
        writer.add_stream("files/x", 100, Interrupted(b""), MemberMeta())
    assert "files/x" not in writer.members
    writer.abort()


def test_add_data_refuses_data_of_another_length():
    writer = tarstream.TarWriter(io.BytesIO())
    info = tarfile.TarInfo("x")
    info.size = 5
    with pytest.raises(ValueError):
        writer.add_data(info, b"1234")
    assert bundle_mod._read_whole(io.BytesIO(b"abc"), 5) == (b"abc", bundle_mod._ENDED)
