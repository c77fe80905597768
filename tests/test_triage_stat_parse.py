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
