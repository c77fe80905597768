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
import math
import re
import tarfile
from collections.abc import Iterator
from typing import IO, Any

BLOCK = 512
RECORD = 20 * BLOCK
CHUNK = 1 << 20
#: Largest pax/GNU extended header accepted (a host decides what it sends; the reader holds it in memory).
MAX_EXTENDED_HEADER = 1 << 20
#: Largest data of a non-regular member (directories, links, devices carry none) skipped over.
MAX_OTHER_DATA = 1 << 20
#: Largest member size accepted from a header (2^63 - 1: what a pax size can carry).
MAX_SIZE = (1 << 63) - 1
#: Modification times are clamped to 0 .. 9999-12-31 (what every tool can represent).
MAX_MTIME = 253402300799
_ZERO = bytes(BLOCK)
_ENCODING = "utf-8"
_ERRORS = "surrogateescape"


class TarFormatError(Exception):
    """The stream is not a valid tar archive (bad header checksum, truncated member)."""


class ShortRead(TarFormatError):
    """A source delivered fewer bytes than the member size announced."""


class SourceFailed(ShortRead):
    """The source of a member broke (or ended early) after its header was written.

    The writer has completed the member with ``padded`` zero bytes so that the archive
    stays readable; ``cause`` is the source's exception (None: it just ended early).
    """

    def __init__(self, message: str, *, padded: int, cause: BaseException | None) -> None:
        super().__init__(message)
        self.padded = padded
        self.cause = cause


_PAX_NAME = b"././@PaxHeader".ljust(100, b"\0")
_ZERO8 = b"0000000\0"
_ZERO12 = b"00000000000\0"
_EMPTY8 = b"\0" * 8
_MAX7, _MAX11 = 8 ** 7, 8 ** 11


_MAGIC_SUM = sum(tarfile.POSIX_MAGIC)
_ZERO100 = bytes(100)
_ZERO183 = bytes(183)  # devmajor, devminor, prefix and the block's last 12 bytes


def _ustar(name: bytes, mode: int, uid: int, gid: int, size: int, mtime: int, kind: bytes,
           uname: bytes, gname: bytes) -> bytes:
    """One ustar header block, byte for byte as :meth:`tarfile.TarInfo.tobuf` builds it. The checksum is summed
    over the fields that are not constant (the constant ones - the checksum field's 8 spaces, the magic - are
    added as numbers; the rest of the block is zeros)."""
    numbers = b"%07o\0%07o\0%07o\0%011o\0%011o\0" % (mode, uid, gid, size, mtime)
    chksum = sum(name) + sum(numbers) + 256 + kind[0] + _MAGIC_SUM + sum(uname) + sum(gname)
    return b"".join((name.ljust(100, b"\0"), numbers, b"%06o\0 " % chksum, kind, _ZERO100, tarfile.POSIX_MAGIC,
                     uname.ljust(32, b"\0"), gname.ljust(32, b"\0"), _ZERO183))


def fast_header(info: tarfile.TarInfo) -> bytes | None:
    """``info.tobuf(PAX_FORMAT)`` for the members a bundle writes (a regular file: ASCII names that fit ustar,
    ids and size in range, a float mtime carried in a pax record), in a fraction of tarfile's time; None for
    anything else (the caller then asks tarfile). tests/test_triage_tarstream_fast.py checks it is the same
    bytes as tarfile's for every kind of input it accepts."""
    if info.type != tarfile.REGTYPE or info.linkname or info.pax_headers:
        return None
    try:
        name, uname, gname = info.name.encode("ascii"), info.uname.encode("ascii"), info.gname.encode("ascii")
    except UnicodeEncodeError:
        return None
    size, mtime, uid, gid = info.size, info.mtime, info.uid, info.gid
    if (len(name) > 100 or len(uname) > 32 or len(gname) > 32 or type(uid) is not int or type(gid) is not int
            or type(size) is not int or not 0 <= uid < _MAX7 or not 0 <= gid < _MAX7 or not 0 <= size < _MAX11):
        return None
    if type(mtime) is int:
        if not 0 <= mtime < _MAX11:
            return None
        return _ustar(name, info.mode & 0o7777, uid, gid, size, mtime, tarfile.REGTYPE, uname, gname)
    if type(mtime) is not float or not 0 <= round(mtime) < _MAX11:
        return None
    value = str(mtime).encode("ascii")
    length = len(value) + 8       # "mtime", ' ', '=', '\n' and the value; then the length's own digits:
    width = previous = 0          # the fixed point, as tarfile finds it
    while True:
        width = length + len(str(previous))
        if width == previous:
            break
        previous = width
    record = b"%d mtime=%s\n" % (width, value)
    pax = _ustar(b"././@PaxHeader", 0, 0, 0, len(record), 0, tarfile.XHDTYPE, b"", b"")
    return (pax + record.ljust(BLOCK, b"\0") +
            _ustar(name, info.mode & 0o7777, uid, gid, size, round(mtime), tarfile.REGTYPE, uname, gname))


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
        self._write(fast_header(info) or info.tobuf(tarfile.PAX_FORMAT, _ENCODING, _ERRORS))
        left = info.size
        while left > 0:
            try:
                chunk = source.read(min(CHUNK, left))
            except Exception as exc:  # noqa: BLE001 - re-raised below, after the archive is made whole
                self._zeros(left)
                raise SourceFailed(f"{info.name}: source failed {left} bytes early: {exc}", padded=left,
                                   cause=exc) from exc
            if not chunk:
                self._zeros(left)
                raise SourceFailed(f"{info.name}: source ended {left} bytes early", padded=left, cause=None)
            self._write(chunk)
            left -= len(chunk)
        remainder = info.size % BLOCK
        if remainder:
            self._write(bytes(BLOCK - remainder))

    def add_data(self, info: tarfile.TarInfo, data: bytes) -> None:
        """Write ``info`` and ``data`` (exactly ``info.size`` bytes) as one piece: the bytes :meth:`add` writes."""
        if len(data) != info.size:
            raise ValueError(f"{info.name}: {len(data)} bytes of data for a member of {info.size}")
        header = fast_header(info) or info.tobuf(tarfile.PAX_FORMAT, _ENCODING, _ERRORS)
        remainder = info.size % BLOCK
        self._write(b"".join((header, data, _ZERO[:BLOCK - remainder] if remainder else b"")))

    def _zeros(self, count: int) -> None:
        """Complete a member whose source broke (bounded by the size its header announced)."""
        block = bytes(min(CHUNK, count))
        while count > 0:
            piece = block[:count]
            self._write(piece)
            count -= len(piece)
        remainder = self.offset % BLOCK
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


_DECIMAL = re.compile(r"[0-9]{1,19}")
_TIME = re.compile(r"-?[0-9]{1,20}(\.[0-9]{0,9}[0-9]*)?")


def clamp_mtime(value: float) -> float:
    """A host-supplied modification time made safe for archives and ``os.utime`` (finite, 0..9999 AD)."""
    if not math.isfinite(value):
        return 0.0
    return min(max(value, 0.0), float(MAX_MTIME))


def _pax_int(key: str, text: str, limit: int) -> int:
    if not _DECIMAL.fullmatch(text) or int(text) > limit:
        raise TarFormatError(f"pax header {key}={text[:40]!r}: not a number in 0..{limit}")
    return int(text)


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
        if b"\0" in record:
            raise TarFormatError("pax header record contains a NUL byte")
        records[key.decode(_ENCODING, _ERRORS)] = value.decode(_ENCODING, _ERRORS)
        pos += length
    return records


def _apply_pax(info: tarfile.TarInfo, pax: dict[str, str]) -> None:
    if "path" in pax:
        info.name = pax["path"]
    if "linkpath" in pax:
        info.linkname = pax["linkpath"]
    if "size" in pax:
        info.size = _pax_int("size", pax["size"], MAX_SIZE)
    for key in ("uid", "gid"):
        if key in pax:
            setattr(info, key, _pax_int(key, pax[key], (1 << 32) - 1))
    if "mtime" in pax:
        text = pax["mtime"]
        if not _TIME.fullmatch(text):
            raise TarFormatError(f"pax header mtime={text[:40]!r}: not a decimal time")
        info.mtime = clamp_mtime(float(text))
    for key in ("uname", "gname"):
        if key in pax:
            setattr(info, key, pax[key])
    info.pax_headers = pax


_USTAR_MAGIC = tarfile.POSIX_MAGIC  # b"ustar\x0000"
#: mode, uid, gid, size, mtime, checksum and type of the headers GNU tar writes for files and their pax records
_PLAIN_NUMBERS = re.compile(rb"[0-7]{7}\0[0-7]{7}\0[0-7]{7}\0[0-7]{11}\0[0-7]{11}\0[0-7]{6}\0 [0x]")
_PLAIN_DEVICES = re.compile(rb"(?:[0-7]{7}\0|\0{8}){2}")


def _nts(raw: bytes) -> str:
    end = raw.find(b"\0")
    return (raw if end < 0 else raw[:end]).decode(_ENCODING, _ERRORS)


def parse_header(block: bytes) -> tarfile.TarInfo:
    """``tarfile.TarInfo.frombuf(block)``, the same object (or the same error), with a fast path for the plain
    headers GNU tar writes for a regular file and its pax record: ustar magic, every number plain octal
    digits, the unsigned checksum right. Anything else - base-256 numbers, other types, a checksum only the
    signed sum matches, a malformed field - goes to ``frombuf`` itself. tests/test_triage_tarstream_fast.py
    checks both give the same result over real and mangled headers."""
    if (block[257:265] != _USTAR_MAGIC or len(block) != BLOCK or _PLAIN_NUMBERS.fullmatch(block, 100, 157) is None
            or _PLAIN_DEVICES.fullmatch(block, 329, 345) is None):
        return tarfile.TarInfo.frombuf(block, _ENCODING, _ERRORS)
    chksum = int(block[148:154], 8)
    if chksum != 256 + sum(block) - sum(block[148:156]):
        return tarfile.TarInfo.frombuf(block, _ENCODING, _ERRORS)
    info = tarfile.TarInfo()
    info.name = _nts(block[0:100])
    info.mode = int(block[100:107], 8)
    info.uid = int(block[108:115], 8)
    info.gid = int(block[116:123], 8)
    info.size = int(block[124:135], 8)
    info.mtime = int(block[136:147], 8)
    info.chksum = chksum
    info.type = block[156:157]
    info.linkname = _nts(block[157:257])
    info.uname = _nts(block[265:297])
    info.gname = _nts(block[297:329])
    info.devmajor = int(block[329:336], 8) if block[329] else 0
    info.devminor = int(block[337:344], 8) if block[337] else 0
    prefix = _nts(block[345:500])
    if prefix:  # neither a file nor a pax record is one of GNU's types that keep the name as it is
        info.name = prefix + "/" + info.name
    return info


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
            info = parse_header(block)
        except tarfile.HeaderError as exc:
            raise TarFormatError(f"bad tar header: {exc}") from None
        if not 0 <= info.size <= MAX_SIZE:
            raise TarFormatError(f"member {info.name[:80]!r}: invalid size {info.size}")
        if not isinstance(info.mtime, (int, float)) or not math.isfinite(info.mtime):
            info.mtime = 0
        padded = -(-info.size // BLOCK) * BLOCK
        if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                         tarfile.GNUTYPE_LONGLINK):
            if info.size > MAX_EXTENDED_HEADER:
                raise TarFormatError(f"extended header of {info.size} bytes (more than {MAX_EXTENDED_HEADER})")
            data = _read_exact(source, padded)
            if len(data) < padded:
                raise TarFormatError("archive ends inside an extended header")
            if info.type == tarfile.GNUTYPE_LONGNAME:
                raw = data[:info.size].rstrip(b"\0")
                if b"\0" in raw:
                    raise TarFormatError("GNU long name contains a NUL byte")
                longname = raw.decode(_ENCODING, _ERRORS)
            elif info.type == tarfile.GNUTYPE_LONGLINK:
                pass
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
        info.mtime = clamp_mtime(float(info.mtime))
        if info.type not in tarfile.REGULAR_TYPES:
            padded = 0 if info.type in (tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE) else padded
            if padded > MAX_OTHER_DATA:
                raise TarFormatError(f"non-file member {info.name[:80]!r} carries {info.size} bytes of data")
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
