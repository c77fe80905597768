"""Decode login records (utmp/wtmp/btmp and lastlog) on the controller, from the raw bytes a host sent.

The host is hostile: its ``last`` may be trojaned, or missing, and the bytes may be crafted. This parser
reads only fixed-size records (glibc's Linux layout, little-endian as on x86-64 and arm64), checks every
field, never trusts a length from the data, escapes every non-printable character (no terminal escape
sequence survives) and reports a record it cannot accept as ``INVALID`` with the reason instead of
dropping it. A ``.gz`` copy is inflated with a hard cap (a compression bomb stops at the cap).
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import struct
import zlib

UTMP = struct.Struct("<hxxi32s4s32s256shhii i16s20s".replace(" ", ""))
LASTLOG = struct.Struct("<i32s256s")
TYPES = {0: "EMPTY", 1: "RUN_LVL", 2: "BOOT_TIME", 3: "NEW_TIME", 4: "OLD_TIME", 5: "INIT_PROCESS",
         6: "LOGIN_PROCESS", 7: "USER_PROCESS", 8: "DEAD_PROCESS", 9: "ACCOUNTING"}
MAX_INFLATED = 256 * 1024 * 1024
MAX_TIME = 2**31 - 1

assert UTMP.size == 384 and LASTLOG.size == 292


def _text(raw: bytes, field: str) -> str:
    """A NUL-padded C string field, escaped: printable ASCII as is, everything else as \\xNN. Bytes after the
    terminator are legal (stale data) but worth showing: they follow a literal ``\\0``, never silently dropped."""
    value, nul, rest = raw.partition(b"\0")
    text = _escape(value)
    if nul and rest.strip(b"\0"):
        text += "\\0" + _escape(rest.rstrip(b"\0"))
    return text


def _escape(value: bytes) -> str:
    return "".join(chr(b) if 0x21 <= b <= 0x7E and b != 0x5C else f"\\x{b:02x}" for b in value)


def _time(sec: int, usec: int) -> str:
    if not 0 <= sec <= MAX_TIME:
        raise ValueError(f"time {sec} out of range")
    if not 0 <= usec <= 999_999:
        raise ValueError(f"microseconds {usec} out of range")
    stamp = _dt.datetime.fromtimestamp(sec, tz=_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{usec:06d}Z"


def _address(raw: bytes) -> str:
    if not raw.strip(b"\0"):
        return "-"
    if not raw[4:].strip(b"\0"):
        return str(ipaddress.IPv4Address(raw[:4]))
    return str(ipaddress.IPv6Address(raw))


def decode_utmp(data: bytes) -> str:
    """One line per 384-byte record of a utmp/wtmp/btmp file."""
    lines = [f"# irkit utmp decoding: {len(data)} bytes, {len(data) // UTMP.size} records of {UTMP.size} bytes"]
    for index in range(len(data) // UTMP.size):
        record = data[index * UTMP.size:(index + 1) * UTMP.size]
        (ut_type, pid, line, ut_id, user, host, e_term, e_exit, session, sec, usec,
         addr, _unused) = UTMP.unpack(record)
        try:
            if ut_type not in TYPES:
                raise ValueError(f"type {ut_type} unknown")
            if pid < 0:
                raise ValueError(f"pid {pid} negative")
            when = _time(sec, usec)
            lines.append(
                f"{index}\ttype={TYPES[ut_type]}\tpid={pid}\tuser={_text(user, 'user')}\tline={_text(line, 'line')}"
                f"\tid={_text(ut_id, 'id')}\thost={_text(host, 'host')}\taddr={_address(addr)}\tsession={session}"
                f"\texit={e_term},{e_exit}\ttime={when}")
        except ValueError as exc:
            lines.append(f"{index}\tINVALID ({exc})\traw={record.hex()}")
    rest = len(data) % UTMP.size
    if rest:
        lines.append(f"# INVALID: {rest} trailing bytes (not a whole record): {data[-rest:][:64].hex()}")
    return "\n".join(lines) + "\n"


def decode_lastlog(data: bytes) -> str:
    """One line per non-empty 292-byte lastlog record (the record number is the uid)."""
    lines = [f"# irkit lastlog decoding: {len(data)} bytes, records of {LASTLOG.size} bytes indexed by uid"]
    for uid in range(len(data) // LASTLOG.size):
        record = data[uid * LASTLOG.size:(uid + 1) * LASTLOG.size]
        if not record.strip(b"\0"):
            continue
        sec, line, host = LASTLOG.unpack(record)
        try:
            when = _time(sec, 0)
            lines.append(f"uid={uid}\tline={_text(line, 'line')}\thost={_text(host, 'host')}\ttime={when}")
        except ValueError as exc:
            lines.append(f"uid={uid}\tINVALID ({exc})\traw={record.hex()}")
    rest = len(data) % LASTLOG.size
    if rest:
        lines.append(f"# INVALID: {rest} trailing bytes (not a whole record)")
    return "\n".join(lines) + "\n"


def inflate(data: bytes, cap: int = MAX_INFLATED) -> tuple[bytes, str | None]:
    """Inflate a gzip member with a hard cap; returns the bytes and a problem (None if whole)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, cap)
    except zlib.error as exc:
        return b"", f"not valid gzip: {exc}"
    if inflater.unconsumed_tail:
        return out, f"inflated data over {cap} bytes: decoded the first {cap}"
    return out, None


def kind_for(path: str) -> str | None:
    """Which decoder fits a login-record file by its name: ``utmp`` (utmp, wtmp, btmp), ``lastlog`` or None."""
    name = path.rsplit("/", 1)[-1]
    if name.startswith(("wtmp", "btmp", "utmp")):
        return "utmp"
    if name == "lastlog" or name.startswith("lastlog."):
        return "lastlog"
    return None


def decode(path: str, data: bytes, kind: str) -> str:
    """Decode the raw bytes of ``path`` (``kind`` utmp or lastlog); ``.gz`` copies are inflated first."""
    note = ""
    if path.endswith(".gz"):
        data, problem = inflate(data)
        if problem:
            note = f"# {problem}\n"
    body = decode_lastlog(data) if kind == "lastlog" else decode_utmp(data)
    return note + body
