"""A minimal streaming tar reader and writer (POSIX/pax), for speed.

The standard library's ``tarfile`` stream mode (``r|``/``w|``) re-joins and
re-slices its buffers on every read and write; moving evidence through it
capped transfers at about a quarter of what the SSH channel delivers. Here
headers are still built and parsed by ``tarfile.TarInfo`` (``tobuf`` /
``frombuf``), but member data goes straight from the source to the sink in
large chunks. Output is a standard POSIX (pax) archive that GNU tar and
``tarfile`` read.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from typing import IO, Any

BLOCK = 512
RECORD = 20 * BLOCK
CHUNK = 1 << 20
_ZERO = bytes(BLOCK)
_ENCODING = "utf-8"
_ERRORS = "surrogateescape"


class TarFormatError(Exception):
    """The stream is not a valid tar archive (bad header checksum, truncated member)."""


class ShortRead(TarFormatError):
    """A source delivered fewer bytes than the member size announced."""


class TarWriter:
    """Append members to a stream; :meth:`close` writes the end-of-archive blocks."""

    def __init__(self, sink: IO[bytes]) -> None:
        self.sink = sink
        self.offset = 0

    def _write(self, data: bytes | memoryview) -> None:
        self.sink.write(data)
        self.offset += len(data)

    def add(self, info: tarfile.TarInfo, source: IO[bytes]) -> None:
        """Write ``info`` and exactly ``info.size`` bytes read from ``source``."""
        self._write(info.tobuf(tarfile.PAX_FORMAT, _ENCODING, _ERRORS))
        left = info.size
        while left > 0:
            chunk = source.read(min(CHUNK, left))
            if not chunk:
                raise ShortRead(f"{info.name}: source ended {left} bytes early")
            self._write(chunk)
            left -= len(chunk)
        remainder = info.size % BLOCK
        if remainder:
            self._write(bytes(BLOCK - remainder))

    def close(self) -> None:
        self._write(_ZERO * 2)
        remainder = self.offset % RECORD
        if remainder:
            self._write(bytes(RECORD - remainder))


class MemberReader(io.RawIOBase):
    """The data of one member; reads never go past it."""

    def __init__(self, source: IO[bytes], size: int, name: str) -> None:
        self._source = source
        self._left = size
        self._name = name

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        if self._left <= 0:
            return b""
        want = self._left if size is None or size < 0 else min(size, self._left)
        data = self._source.read(want)
        if not data:
            raise TarFormatError(f"archive ends inside member {self._name}")
        self._left -= len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def skip(self) -> None:
        while self._left > 0:
            self.read(CHUNK)


def _read_exact(source: IO[bytes], size: int) -> bytes:
    data = source.read(size)
    while len(data) < size:
        more = source.read(size - len(data))
        if not more:
            break
        data += more
    return data


def _parse_pax(data: bytes) -> dict[str, str]:
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(data[pos:space])
        except ValueError:
            raise TarFormatError("malformed pax header") from None
        if length <= 0 or pos + length > len(data):
            raise TarFormatError("malformed pax header")
        record = data[space + 1:pos + length - 1]
        key, _, value = record.partition(b"=")
        records[key.decode(_ENCODING, _ERRORS)] = value.decode(_ENCODING, _ERRORS)
        pos += length
    return records


def _apply_pax(info: tarfile.TarInfo, pax: dict[str, str]) -> None:
    if "path" in pax:
        info.name = pax["path"]
    if "linkpath" in pax:
        info.linkname = pax["linkpath"]
    for key in ("size", "uid", "gid"):
        if key in pax:
            setattr(info, key, int(pax[key]))
    if "mtime" in pax:
        info.mtime = float(pax["mtime"])
    for key in ("uname", "gname"):
        if key in pax:
            setattr(info, key, pax[key])
    info.pax_headers = pax


def iter_members(source: IO[bytes]) -> Iterator[tuple[tarfile.TarInfo, MemberReader]]:
    """Yield ``(info, data)`` per member; unread data is skipped before the next header."""
    pax: dict[str, str] = {}
    longname: str | None = None
    while True:
        block = _read_exact(source, BLOCK)
        if not block:
            raise TarFormatError("archive ends without its end-of-archive blocks")
        if len(block) < BLOCK:
            raise TarFormatError("archive ends inside a header")
        if block == _ZERO:
            return
        try:
            info = tarfile.TarInfo.frombuf(block, _ENCODING, _ERRORS)
        except tarfile.HeaderError as exc:
            raise TarFormatError(f"bad tar header: {exc}") from None
        padded = -(-info.size // BLOCK) * BLOCK
        if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME):
            data = _read_exact(source, padded)
            if len(data) < padded:
                raise TarFormatError("archive ends inside an extended header")
            if info.type == tarfile.GNUTYPE_LONGNAME:
                longname = data[:info.size].rstrip(b"\0").decode(_ENCODING, _ERRORS)
            elif info.type != tarfile.XGLTYPE:
                pax = _parse_pax(data[:info.size])
            continue
        if longname is not None:
            info.name = longname
            longname = None
        if pax:
            _apply_pax(info, pax)
            pax = {}
            padded = -(-info.size // BLOCK) * BLOCK
        if info.type not in tarfile.REGULAR_TYPES:
            padded = 0 if info.type in (tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE) else padded
            reader = MemberReader(source, padded, info.name)
            yield info, MemberReader(source, 0, info.name)
            reader.skip()
            continue
        reader = MemberReader(source, info.size, info.name)
        yield info, reader
        reader.skip()
        rest = padded - info.size
        if rest and len(_read_exact(source, rest)) < rest:
            raise TarFormatError(f"archive ends in the padding of {info.name}")
