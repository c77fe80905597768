"""The listing parser's per-record function (triage/remote.py ``_file_stat``) gives, for every record a host can
send, what the plain regex-per-field version it replaced gave: the same FileStat, the same problem text.

The reference below is that version, kept as the specification: hostile sizes, ids, modes and times (non-ASCII
digits, signs, underscores, 20 digits, spaces) must be refused exactly as before."""

from __future__ import annotations

import random
import re

from ir_toolkit.triage import remote
from ir_toolkit.triage.remote import MAX_SIZE, FileStat, canonical_path, iso_time

_UINT = re.compile(r"[0-9]{1,19}")
_MODE = re.compile(r"[0-7]{1,6}")
_DECIMAL_TIME = re.compile(r"-?[0-9]{1,12}(?:\.[0-9]{1,9})?")


def _int(text, limit=MAX_SIZE):
    if not _UINT.fullmatch(text) or int(text) > limit:
        return 0
    return int(text)


def reference(rec):
    ftype, name, size, atime, mtime, ctime, btime, uid, gid, user, group, mode, quoted, dev, ino = rec
    kind = "symlink" if ftype == "symbolic link" else "file" if ftype.startswith("regular") else "other"
    target = None
    if kind == "symlink":
        prefix = name + " -> "
        target = quoted[len(prefix):] if quoted.startswith(prefix) else quoted
    problems = []
    if not canonical_path(name):
        problems.append("path is not canonical (., .., // or a trailing /)")
    if not _UINT.fullmatch(size) or int(size) > MAX_SIZE:
        problems.append(f"invalid size {size[:40]!r}")
    for label, value in (("uid", uid), ("gid", gid)):
        if not _UINT.fullmatch(value) or int(value) > 0xFFFFFFFF:
            problems.append(f"invalid {label} {value[:40]!r}")
    if not _MODE.fullmatch(mode):
        problems.append(f"invalid mode {mode[:40]!r}")
    accessed, modified, changed = iso_time(atime), iso_time(mtime), iso_time(ctime)
    for label, value, iso in (("mtime", mtime, modified), ("atime", atime, accessed), ("ctime", ctime, changed)):
        if iso is None and value.strip() and value.strip() not in ("-", "?", "0"):
            problems.append(f"invalid {label} {value[:40]!r}")
    return FileStat(
        kind=kind, path=name, size=_int(size, MAX_SIZE),
        accessed=accessed, modified=modified, changed=changed, born=iso_time(btime),
        uid=_int(uid, 0xFFFFFFFF), gid=_int(gid, 0xFFFFFFFF), owner=user, group=group,
        mode=mode.zfill(4) if _MODE.fullmatch(mode) else "0000",
        link_target=target, modified_epoch=mtime if _DECIMAL_TIME.fullmatch(mtime.strip()) else "0",
        device=_int(dev, MAX_SIZE), inode=_int(ino, MAX_SIZE),
        problem="host reported " + "; ".join(problems) if problems else None,
    )


GOOD = ["regular file", "/etc/passwd", "1234", "1795703171.073054876", "1795703171.073054876",
        "1795703171.073054876", "-", "0", "0", "root", "root", "644", "'/etc/passwd'", "2049", "131"]

NUMBERS = ["0", "7", "1234", "4294967295", "4294967296", "9223372036854775807", "9223372036854775808",
           "9999999999999999999", "10000000000000000000", "", " 1", "1 ", "+1", "-1", "1_0", "0x10", "\u0661\u0662",
           "\u00b2", "１２", "1.5", "01", "00000000000000000001", "\x00", "1\n"]
TIMES = ["1795703171.073054876", "0", "0.000000000", "-", "?", "", " 17 ", "-1.5", "1e9", "253402300799",
         "253402300800", "-62135596800", "-62135596801", "17957031710000", "1.1234567890", "1.", ".5", "\u0661.5",
         "1795703171.073054876\n", "nan", "1_000"]
MODES = ["644", "0644", "4755", "777777", "7777777", "8", "", "-1", "\u0661", "64 ", "0o644"]
NAMES = ["/etc/passwd", "/", "//etc", "/etc/../x", "/etc/./x", "/etc/", "etc", "/a\udcff", "/a\x00b", "/a -> b"]
TYPES = ["regular file", "regular empty file", "symbolic link", "directory", "fifo", ""]


def test_the_same_as_the_reference_for_hostile_fields():
    rnd = random.Random(1725)
    pools = {0: TYPES, 1: NAMES, 2: NUMBERS, 3: TIMES, 4: TIMES, 5: TIMES, 6: TIMES, 7: NUMBERS, 8: NUMBERS,
             11: MODES, 13: NUMBERS, 14: NUMBERS}
    checked = 0
    for n in range(20000):
        rec = list(GOOD)
        for _ in range(rnd.randint(0, 4)):
            i = rnd.choice(list(pools))
            rec[i] = rnd.choice(pools[i])
        if rnd.random() < 0.3:
            rec[12] = rec[1] + " -> " + rnd.choice(["x", "", " -> y"]) if rnd.random() < 0.7 else "'" + rec[1] + "'"
        got, want = remote._file_stat(rec), reference(rec)
        assert got == want, (n, rec)
        checked += got.problem is not None
    assert checked > 5000  # the hostile branches were exercised, not only the good record


def test_a_listing_parses_the_same():
    out = ("\0".join(GOOD) + "\0").encode() * 3
    assert remote.parse_stat(out) == [reference(GOOD)] * 3


def reference_listing(output):
    """The whole-listing parser before the one-regex-per-record fast path: split, then every record field by
    field."""
    fields = output.decode("utf-8", "surrogateescape").split("\0")
    if fields and fields[-1] == "":
        fields.pop()
    return [reference(fields[i:i + 15]) for i in range(0, len(fields) - 15 + 1, 15)]


PLAIN_TIMES = ["1795703171.073054876", "1.000000000", "99999999999.999999999", "100000000000.000000000",
               "0.000000000", "0", "-", "01795703171.073054876", "1795703171.07305487", "1795703171.0730548760"]
PLAIN_NAMES = ["/etc/passwd", "/", "/.a", "/..a", "/...", "/a/.b/..c", "/.", "/..", "/a/.", "/a/..", "/a//b",
               "/a/", "//a", "/a\udcff\u00e9", "/a b/c\td", "/a\n", "/ -> /x"]
PLAIN_NUMBERS = ["0", "999999999", "1000000000", "4294967295", "999999999999999999", "1000000000000000000",
                 "01", "\u0661"]


def _hostile_listing(rnd):
    records = []
    pools = {0: TYPES, 1: NAMES + PLAIN_NAMES, 2: NUMBERS + PLAIN_NUMBERS, 3: TIMES + PLAIN_TIMES,
             4: TIMES + PLAIN_TIMES, 5: TIMES + PLAIN_TIMES, 6: TIMES + PLAIN_TIMES, 7: NUMBERS + PLAIN_NUMBERS,
             8: NUMBERS + PLAIN_NUMBERS, 9: ["root", "", "r\udcffx", " "], 10: ["root", "", "\t"],
             11: MODES, 13: NUMBERS + PLAIN_NUMBERS, 14: NUMBERS + PLAIN_NUMBERS}
    for _ in range(rnd.randint(0, 12)):
        rec = list(GOOD)
        rec[6] = rnd.choice(["-", "0.000000000", "1795703171.073054876"])
        for _ in range(rnd.choice([0, 0, 1, 2, 4])):
            i = rnd.choice(list(pools))
            rec[i] = rnd.choice(pools[i])
        if rnd.random() < 0.3:
            rec[0] = "symbolic link"
            rec[12] = rec[1] + " -> " + rnd.choice(["x", "", " -> y", "\udcff"]) if rnd.random() < 0.7 else rec[1]
        records.append(rec)
    data = "".join("\0".join(r) + "\0" for r in records).encode("utf-8", "surrogateescape")
    cut = rnd.random()
    if cut < 0.2:      # a listing cut anywhere (a field or record short)
        data = data[:rnd.randint(0, len(data))]
    elif cut < 0.3:    # a NUL too many or too few somewhere: every record after it misaligned
        at = rnd.randint(0, len(data))
        data = data[:at] + (b"\0" if rnd.random() < 0.5 else b"") + data[at + 1:]
    elif cut < 0.35:   # bytes that are not UTF-8, and a last record without its final NUL
        data = data.replace(b"root", b"r\xff\xfe", 1).rstrip(b"\0")
    return data


def test_a_hostile_listing_parses_as_field_by_field():
    """The fast path (one regex per plain record) takes only records the field-by-field parse finds nothing wrong
    with, gives them the same FileStat, and keeps every record boundary where the split puts it."""
    rnd = random.Random(4711)
    fast = 0
    for n in range(4000):
        data = _hostile_listing(rnd)
        got, want = remote.parse_stat(data), reference_listing(data)
        assert got == want, (n, data)
        fast += remote._PLAIN_RECORD.match(data.decode("utf-8", "surrogateescape")) is not None
    assert fast > 500  # the fast path was taken (for a listing's first record, at least), not only the fallback


def test_a_plain_record_is_not_taken_as_plain_when_any_field_is_off():
    base = "\0".join(["regular file", "/etc/passwd", "1234", "1795703171.073054876", "1795703171.073054876",
                      "1795703171.073054876", "-", "0", "0", "root", "root", "644", "/etc/passwd", "2049", "131"])
    assert remote._PLAIN_RECORD.fullmatch(base + "\0")
    for i, bad in [(1, "/etc/../passwd"), (1, "/etc/"), (2, "1" * 19), (3, "0.000000000"), (3, "1795703171.07305487"),
                   (3, "100000000000.000000000"), (7, "4294967296"), (11, "8"), (13, "1" * 19), (0, "directory")]:
        rec = base.split("\0")
        rec[i] = bad
        assert not remote._PLAIN_RECORD.fullmatch("\0".join(rec) + "\0"), (i, bad)
        assert remote.parse_stat(("\0".join(rec) + "\0").encode()) == [reference(rec)]
