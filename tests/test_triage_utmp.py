"""The controller-side login-record decoder against crafted (hostile) input."""

from __future__ import annotations

import gzip
import struct

from ir_toolkit.triage import utmp


def record(ut_type=7, pid=4242, line=b"pts/9", ut_id=b"ts/9", user=b"irkrot", host=b"198.18.254.11",
           sec=1772504500, usec=5, addr=bytes([198, 18, 254, 11]) + bytes(12)) -> bytes:
    return utmp.UTMP.pack(ut_type, pid, line, ut_id, user, host, 0, 0, 0, sec, usec, addr, bytes(20))


def test_a_wtmp_record_decodes_every_field():
    text = utmp.decode("/var/log/wtmp.1", record(), "utmp")
    line = text.splitlines()[1]
    assert "type=USER_PROCESS" in line and "pid=4242" in line and "user=irkrot" in line
    assert "host=198.18.254.11" in line and "addr=198.18.254.11" in line
    assert "time=2026-03-03T02:21:40.000005Z" in line


def test_escape_sequences_and_bad_fields_are_neutralised_not_dropped():
    evil = record(user=b"\x1b]0;owned\x07\x1b[2Jroot", host=b"a\nb\\c")
    bad_type = record(ut_type=99)
    bad_time = record(sec=-5)
    bad_usec = record(usec=5_000_000)
    text = utmp.decode("/var/log/wtmp", evil + bad_type + bad_time + bad_usec + b"\x1b[31mX", "utmp")
    assert "\x1b" not in text and "\x07" not in text
    lines = text.splitlines()
    assert "user=\\x1b]0;owned\\x07\\x1b[2Jroot" in lines[1]
    assert "host=a\\x0ab\\x5cc" in lines[1]          # a newline cannot forge a record line
    assert lines[2].startswith("1\tINVALID (type 99 unknown)")
    assert lines[3].startswith("2\tINVALID (time -5 out of range)")
    assert lines[4].startswith("3\tINVALID (microseconds 5000000 out of range)")
    assert lines[5].startswith("# INVALID: 6 trailing bytes")
    assert len(lines) == 6


def test_ipv6_address_and_stale_bytes_after_the_terminator():
    addr = bytes.fromhex("20010db8000000000000000000000066")
    line = utmp.decode("/run/utmp", record(addr=addr, user=b"bob\0old"), "utmp").splitlines()[1]
    assert "addr=2001:db8::66" in line and "user=bob\\0old" in line


def test_lastlog_records_by_uid():
    data = bytes(utmp.LASTLOG.size * 1001) + struct.pack("<i32s256s", 1772504500, b"pts/7", b"198.18.254.12")
    text = utmp.decode("/var/log/lastlog", data, "lastlog")
    assert text.splitlines()[1] == "uid=1001\tline=pts/7\thost=198.18.254.12\ttime=2026-03-03T02:21:40.000000Z"
    assert len(text.splitlines()) == 2


def test_gzip_copies_and_a_compression_bomb_stop_at_the_cap():
    assert "user=irkrot" in utmp.decode("/var/log/wtmp.1.gz", gzip.compress(record()), "utmp")
    bomb = gzip.compress(bytes(8 * 1024 * 1024))
    data, problem = utmp.inflate(bomb, cap=1024 * 1024)
    assert len(data) == 1024 * 1024 and "over 1048576 bytes" in problem
    assert utmp.inflate(b"not gzip")[1].startswith("not valid gzip")


def test_kind_by_file_name():
    assert utmp.kind_for("/var/log/wtmp.1") == "utmp" and utmp.kind_for("/var/log/btmp") == "utmp"
    assert utmp.kind_for("/run/utmp") == "utmp" and utmp.kind_for("/var/log/lastlog") == "lastlog"
    assert utmp.kind_for("/var/log/faillog") is None
