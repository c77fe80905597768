"""The shell commands triage sends to a Linux host, and parsers for what comes back.

Everything here is pure: build a command string, parse bytes. The commands use
only POSIX ``sh`` and GNU findutils/coreutils/tar, which every mainstream Linux
distribution ships; they write nothing on the host (no staging copies).

* :func:`enumerate_command` - ``find -P`` (never follows symlinks) + ``stat``:
  type, path, size, MACB times with nanoseconds, owner, mode, link target.
* :func:`HASH_COMMAND` - ``sha256sum -z`` over a NUL-separated list on stdin.
* :func:`TAR_COMMAND` - a POSIX tar stream of a NUL-separated list on stdin,
  with ``O_NOATIME`` reads (``--atime-preserve=system``).
"""

from __future__ import annotations

import datetime as _dt
import functools
import posixpath
import re
import shlex
from dataclasses import dataclass

from ir_toolkit.triage.schema import USER_HOME, Artifact

# A fixed, system-only PATH: tools are found where the distribution put them.
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ENV_PREFIX = f"PATH={SAFE_PATH} LC_ALL=C QUOTING_STYLE=literal"
ABSENT_MARK = "irkit-absent: "

_STAT_FIELDS = ("%F", "%n", "%s", "%.9X", "%.9Y", "%.9Z", "%.9W", "%u", "%g", "%U", "%G", "%a", "%N", "%d", "%i")
STAT_FORMAT = "\\0".join(_STAT_FIELDS) + "\\0"
_NFIELDS = len(_STAT_FIELDS)

HOMES_COMMAND = (
    f"{ENV_PREFIX} sh -c '(getent passwd 2>/dev/null || cat /etc/passwd) | cut -d: -f6 | sort -u'"
)
# Tools the file collectors need (GNU findutils/coreutils/tar); prints the missing ones.
REQUIRED_TOOLS = ("find", "stat", "xargs", "sha256sum", "tar", "head", "tee")
# ... and the ones a compressed output needs (without them it comes over uncompressed)
COMPRESS_TOOLS = ("gzip", "awk")
PREFLIGHT_COMMAND = (
    f"{ENV_PREFIX} sh -c 'for t in {' '.join(REQUIRED_TOOLS + COMPRESS_TOOLS)}; do "
    "command -v \"$t\" >/dev/null 2>&1 || echo \"$t\"; done'"
)
HASH_COMMAND = f"{ENV_PREFIX} xargs -0 -r sha256sum -z --"
#: ``--pax-option=delete=...``: no atime/ctime/mtime records, so a plain file is one ustar header, not also a pax
#: header and its record block (the controller takes a file's times from the listing, never from the stream;
#: a long or non-ASCII name or a huge size still gets its pax record): half the headers to parse, 1 KiB less a file
TAR_COMMAND = (
    f"{ENV_PREFIX} tar --create --file=- --format=posix --pax-option=delete=atime,delete=ctime,delete=mtime "
    "--numeric-owner --atime-preserve=system --no-recursion --directory=/ --null --verbatim-files-from "
    "--files-from=-"
)
PSEUDO_FSTYPES = ("proc", "sysfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs",
                  "bpf", "pstore", "configfs", "fusectl", "mqueue", "hugetlbfs", "autofs", "binfmt_misc")

# A bracket expression stays active only when it holds nothing but these (no quotes, spaces, `;` ...).
_BRACKET = re.compile(r"\[!?[A-Za-z0-9._-]+\]")
_GLOB_SPECIAL = re.compile(r"([\\*?\[])")


def glob_escape(text: str) -> str:
    """Make ``text`` (e.g. a home directory the host reported) literal inside a :func:`shell_glob` pattern."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def glob_unescape(pattern: str) -> str:
    """The pattern as the shell prints it when nothing matched (backslash escapes removed)."""
    if "\\" not in pattern:  # nothing escaped (most roots): no regex call
        return pattern
    return re.sub(r"\\(.)", r"\1", pattern)


@functools.lru_cache(maxsize=16384)
def shell_glob(pattern: str) -> str:
    """Quote ``pattern`` for ``sh`` so that only ``*``, ``?`` and safe ``[...]`` stay active.

    Every other character is quoted; ``\\x`` (see :func:`glob_escape`) is the literal ``x``.
    (Pure, so cached: every host of a run asks for the same patterns.)
    """
    out: list[str] = []
    literal = ""
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            literal += pattern[i + 1]
            i += 2
            continue
        if char in "*?":
            if literal:
                out.append(shlex.quote(literal))
                literal = ""
            out.append(char)
            i += 1
            continue
        if char == "[":
            match = _BRACKET.match(pattern, i)
            if match:
                if literal:
                    out.append(shlex.quote(literal))
                    literal = ""
                out.append(match.group(0))
                i = match.end()
                continue
        literal += char
        i += 1
    if literal:
        out.append(shlex.quote(literal))
    return "".join(out) or "''"


def expand_roots(artifact: Artifact, homes: list[str]) -> list[tuple[str, bool]]:
    """The artifact's paths with ``%user_home%`` expanded: ``(path, from_home)`` pairs."""
    roots: dict[str, bool] = {}
    globbing = artifact.collector in ("glob", "hash")
    bases: tuple[str, ...] | None = None
    for path in artifact.paths:
        if path.startswith(USER_HOME):
            rest = path[len(USER_HOME):]
            if bases is None:
                bases = _home_bases(tuple(homes), globbing)
            tail = posixpath.normpath("/" + rest.lstrip("/")) if rest.strip("/") else ""
            for base in bases:
                roots.setdefault((base + tail) or "/", True)
        else:
            roots[path] = False
    return list(roots.items())


@functools.lru_cache(maxsize=256)
def _home_bases(homes: tuple[str, ...], globbing: bool) -> tuple[str, ...]:
    """Each home as the base an artifact's ``%user_home%`` path is put on (normalized, no trailing ``/``; for
    glob collectors its glob characters escaped). Once per host's list of homes, not per home and artifact path
    (cached: the same list for every artifact of a collection, and often for every host of a run)."""
    bases = []
    for home in homes:
        # The home comes from the host: for glob collectors its glob characters are escaped so
        # only the artifact's own pattern part can match anything (and nothing becomes shell code).
        base = posixpath.normpath(home) if home != "/" else ""
        base = base.rstrip("/") if base != "/" else ""
        bases.append(glob_escape(base) if globbing else base)
    return tuple(bases)


def enumerate_command(artifact: Artifact, roots: list[str], *, glob: bool) -> str:
    """Shell command listing the files (and symlinks) an artifact selects, with stat metadata.

    Roots that do not exist are reported on stderr as ``irkit-absent: PATH`` lines.
    """
    quoted = [shell_glob(r) if glob else shlex.quote(r) for r in roots]
    expr: list[str] = []
    if artifact.max_depth is not None:
        expr += ["-maxdepth", str(artifact.max_depth)]
    if artifact.xdev:
        expr.append("-xdev")
    prune = [f"-path {shlex.quote(p)}" for p in artifact.exclude]
    prune += [f"-fstype {t}" for t in artifact.exclude_fstypes]
    if prune:
        expr += ["\\(", " -o ".join(prune), "\\)", "-prune", "-o"]
    if artifact.executable or artifact.perm:
        expr += ["-type", "f"]
    else:
        expr += ["\\(", "-type", "f", "-o", "-type", "l", "\\)"]
    if artifact.name_patterns:
        expr += ["\\(", " -o ".join(f"-name {shlex.quote(p)}" for p in artifact.name_patterns), "\\)"]
    if artifact.executable:
        expr += ["-perm", "/111"]
    if artifact.perm:
        expr += ["-perm", artifact.perm]
    expr += ["-exec", "stat", "--printf", shlex.quote(STAT_FORMAT), "{}", "+"]
    script = (
        "set --; for p in " + " ".join(quoted) + "; do "
        'if [ -e "$p" ] || [ -L "$p" ]; then set -- "$@" "$p"; '
        f"else printf '{ABSENT_MARK}%s\\n' \"$p\" >&2; fi; done; "
        '[ $# -eq 0 ] || find -P "$@" ' + " ".join(expr)
    )
    return f"{ENV_PREFIX} sh -c {shlex.quote(script)}"


def command_for(artifact: Artifact, *, compress: bool = False) -> str:
    """The remote command line for a ``command`` artifact (run by ``sh`` with a fixed PATH).

    ``compress`` (an artifact with ``compress: gzip``, on a host that has the tools): the output goes through
    ``gzip -1`` on the host (see :data:`COMPRESS_WRAPPER`); with sections, through :data:`SECTION_AWK`
    (the tagged lines plain after the compressed rest, then the :data:`SECTION_TRAILER` line).
    """
    assert artifact.command is not None
    if not compress or artifact.compress is None:
        return f"{ENV_PREFIX} sh -c {shlex.quote(artifact.command)}"
    if not artifact.sections:
        return (f"{ENV_PREFIX} sh -c {shlex.quote(COMPRESS_WRAPPER.replace('@PIPE@', GZIP))} sh "
                f"{shlex.quote(artifact.command)}")
    pipe = 'awk -v T="$2" "$3"'
    return (f"{ENV_PREFIX} sh -c {shlex.quote(COMPRESS_WRAPPER.replace('@PIPE@', pipe))} sh "
            f"{shlex.quote(artifact.command)} {shlex.quote(' '.join(sorted(artifact.sections)))} "
            f"{shlex.quote(SECTION_AWK)}")


#: the host's compressor: fast (about 0.13 s of host CPU for a 25 MB bodyfile, 9x smaller); gzip is on every
#: Linux host (zstd is not)
GZIP = "gzip -1 -c"
#: runs the artifact's command (``$1``) into ``@PIPE@``, whose output is the channel's stdout, and exits with the
#: command's own status (POSIX sh has no pipefail): fd 3 carries the status out of the pipeline
COMPRESS_WRAPPER = ('exec 4>&1; st=$( { { sh -c "$1" 3>&- 4>&-; echo $? >&3; } | @PIPE@ >&4 3>&- 4>&-; } 3>&1 ); '
                    'exit "${st:-1}"')
#: routes a command's output on the host, exactly as ``collector.SectionSplitter`` does on the controller: a line
#: whose first tab is within its first 34 bytes and whose text before it is a declared tag (``T``) is a section
#: line, held in memory until the end; every other line goes to ``gzip``. At the end the section lines follow the
#: compressed stream, plain, then one trailer line with their length in bytes (C locale: length() counts bytes)
SECTION_AWK = (
    'BEGIN { n = split(T, a, " "); for (i = 1; i <= n; i++) tag[a[i] "\\t"] = 1; z = "' + GZIP + '"; '
    'printf "" | z }\n'
    '{ t = index(substr($0, 1, 34), "\\t"); if (t > 1 && (substr($0, 1, t) in tag)) { s[++k] = $0; '
    'm += length($0) + 1; next }; print | z }\n'
    'END { close(z); for (i = 1; i <= k; i++) print s[i]; printf "irkit-sections %d\\n", m }\n'
)
#: the last line of a compressed output with sections: the length of the plain section lines before it
SECTION_TRAILER = re.compile(rb"irkit-sections ([0-9]{1,15})\n\Z")


@dataclass(frozen=True)
class FileStat:
    """Metadata of one path as ``stat`` saw it on the host, before anything read it."""

    kind: str  # file | symlink | other
    path: str
    size: int
    accessed: str | None
    modified: str | None
    changed: str | None
    born: str | None
    uid: int
    gid: int
    owner: str
    group: str
    mode: str
    link_target: str | None
    modified_epoch: str = "0"
    device: int = 0
    inode: int = 0
    #: why this record cannot be trusted (invalid number, non-canonical path); the file is then not copied
    problem: str | None = None

    @property
    def mtime(self) -> float:
        """Modification time as a float, finite and clamped (for archive headers; the manifest keeps nanoseconds)."""
        return clamp_mtime(_epoch(self.modified_epoch))

    def times(self) -> dict[str, str | None]:
        return {"modified": self.modified, "accessed": self.accessed, "changed": self.changed, "born": self.born}


_DECIMAL_TIME = re.compile(r"-?[0-9]{1,12}(?:\.[0-9]{1,9})?")
_UINT = re.compile(r"[0-9]{1,19}")
_MODE = re.compile(r"[0-7]{1,6}")
MAX_SIZE = (1 << 63) - 1
_MIN_EPOCH, _MAX_EPOCH = -62135596800, 253402300799  # 0001-01-01 .. 9999-12-31


def clamp_mtime(value: float) -> float:
    if value != value or value in (float("inf"), float("-inf")):
        return 0.0
    return min(max(value, 0.0), float(_MAX_EPOCH))


def _epoch(text: str) -> float:
    if not _DECIMAL_TIME.fullmatch(text.strip()):
        return 0.0
    return float(text)


def canonical_path(path: str) -> bool:
    """An absolute path without ``.``/``..`` components, empty components or a trailing ``/``."""
    if not path.startswith("/") or path.startswith("//") or "\0" in path:
        return False
    return path == "/" or posixpath.normpath(path) == path


def iso_time(epoch: str) -> str | None:
    """``1795703171.073054876`` -> ``2026-11-26T14:26:11.073054876Z``; 0, ``-`` or ``?`` -> None."""
    text = epoch.strip()
    if not text or text[0] in "-?" or not _DECIMAL_TIME.fullmatch(text):
        return None
    sec, _, frac = text.partition(".")
    seconds = int(sec)
    if seconds == 0 and not frac.strip("0"):
        return None
    if not _MIN_EPOCH <= seconds <= _MAX_EPOCH:
        return None
    frac = (frac + "000000000")[:9]
    stamp = _utc_seconds(seconds)
    return None if stamp is None else f"{stamp}.{frac}Z"


@functools.lru_cache(maxsize=8192)
def _utc_seconds(seconds: int) -> str | None:
    """``YYYY-MM-DDTHH:MM:SS`` of an epoch second (cached: a listing's files share many times - one package
    install, one boot - and a host's ~1,500 files have ~6,000 of them)."""
    try:
        return _dt.datetime.fromtimestamp(seconds, tz=_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    except (OverflowError, ValueError, OSError):
        return None


def decode_path(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def encode_path(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


def parse_stat(output: bytes) -> list[FileStat]:
    """Parse :data:`STAT_FORMAT` records (NUL-separated, 15 fields each).

    The records a real host prints (a regular file or symlink, a canonical path, plain decimal numbers in range,
    times with 9 fraction digits) are matched by one regular expression each (:data:`_PLAIN_RECORD`, C-level
    checks of every field at once); any other record - whatever a hostile host makes of any field - goes to
    :func:`_file_stat` field by field. Both give the same FileStat (tests/test_triage_stat_parse.py compares
    them over mangled listings)."""
    # one decode of the whole output: the same strings as decoding field by field (a NUL byte is never inside a
    # UTF-8 sequence, and surrogateescape maps each undecodable byte on its own)
    text = decode_path(output)
    result: list[FileStat] = []
    append = result.append
    match = _PLAIN_RECORD.match
    seconds: dict[str, str | None] = {}  # epoch seconds -> "YYYY-MM-DDTHH:MM:SS", once per distinct second
    pos, end = 0, len(text)
    while pos < end:
        m = match(text, pos)
        if m is None:
            # not a plain record: its 15 fields (as the split of the whole output would give them), checked one
            # by one
            p = pos
            for _ in range(_NFIELDS):
                q = text.find("\0", p)
                if q < 0:
                    break
                p = q + 1
            else:
                append(_file_stat(text[pos:p - 1].split("\0")))
                pos = p
                continue
            rest = text[pos:].split("\0")  # fewer than 15 NULs left: at most one record, without its last NUL
            if rest[-1] == "":
                rest.pop()
            if len(rest) == _NFIELDS:
                append(_file_stat(rest))
            break
        (ftype, name, size, a_s, a_f, m_s, m_f, c_s, c_f, b_s, b_f, uid, gid, user, group, mode, quoted, dev,
         ino) = m.groups()
        stamps = []
        for sec in (a_s, m_s, c_s, b_s):
            if sec is None:
                stamps.append(None)
                continue
            day = seconds.get(sec)
            if day is None:
                day = seconds[sec] = _utc_seconds(int(sec))
            stamps.append(day)
        target = None
        if ftype == "symbolic link":
            kind = "symlink"
            prefix = name + " -> "
            target = quoted[len(prefix):] if quoted.startswith(prefix) else quoted
        else:
            kind = "file"
        append(FileStat(
            kind=kind, path=name, size=int(size),
            accessed=f"{stamps[0]}.{a_f}Z", modified=f"{stamps[1]}.{m_f}Z", changed=f"{stamps[2]}.{c_f}Z",
            born=None if b_s is None else f"{stamps[3]}.{b_f}Z",
            uid=int(uid), gid=int(gid), owner=user, group=group, mode=mode.zfill(4), link_target=target,
            modified_epoch=f"{m_s}.{m_f}", device=int(dev), inode=int(ino), problem=None))
        pos = m.end()
    return result


#: a time as stat's ``%.9X`` prints it that :func:`iso_time` turns into a time as it is: 1 to 11 digits (at most
#: 5138 AD, within 9999 AD), not 0, and 9 fraction digits
_PLAIN_TIME = r"([1-9][0-9]{0,10})\.([0-9]{9})"
#: a path component that is neither empty nor ``.`` nor ``..``
_PLAIN_COMPONENT = r"(?:[^/\0.][^/\0]*|\.[^/\0.][^/\0]*|\.\.[^/\0]+)"
#: one :data:`STAT_FORMAT` record for which :func:`_file_stat` finds no problem and every field is used as it
#: is: a regular file or symlink; a canonical path (what :func:`canonical_path` accepts); size, device and inode
#: of at most 18 digits and ids of at most 9 (all within their limits); plain times (birth also ``0`` or ``-``:
#: unknown); an octal mode
_PLAIN_RECORD = re.compile(
    r"(regular file|regular empty file|symbolic link)\0"
    r"(/(?:" + _PLAIN_COMPONENT + r"(?:/" + _PLAIN_COMPONENT + r")*)?)\0"
    r"([0-9]{1,18})\0" + _PLAIN_TIME + r"\0" + _PLAIN_TIME + r"\0" + _PLAIN_TIME + r"\0"
    r"(?:" + _PLAIN_TIME + r"|0\.000000000|0|-)\0"
    r"([0-9]{1,9})\0([0-9]{1,9})\0([^\0]*)\0([^\0]*)\0([0-7]{1,6})\0([^\0]*)\0([0-9]{1,18})\0([0-9]{1,18})\0")


#: ``find -printf`` fields of a walk listing line (see :func:`parse_walk_listing`), the path last
WALK_LISTING_FIELDS = ("%y", "%s", "%A@", "%T@", "%C@", "%B@", "%U", "%G", "%u", "%g", "%m", "%D", "%i", "%p")
WALK_LISTING_FORMAT = "\\t".join(WALK_LISTING_FIELDS) + "\\n"
#: what the walk prints instead of a record whose path holds a newline (the listing is then not used)
WALK_LISTING_UNSAFE = "unsafe-name"
_WALK_TYPES = {"f": "regular file", "l": "symbolic link", "d": "directory"}
_FIND_TIME = re.compile(r"(-?[0-9]{1,12})(?:\.([0-9]{1,10}))?")


def _find_time(text: str) -> str | None:
    """find's ``%T@`` (``1796123341.3226448350``, 10 fraction digits) as stat's ``%.9Y``; None if not a time."""
    match = _FIND_TIME.fullmatch(text)
    if match is None:
        return None
    return match[1] + "." + ((match[2] or "") + "000000000")[:9]


def parse_walk_listing(output: bytes) -> list[FileStat] | None:
    """Records of a walk's listing section: one line per file, :data:`WALK_LISTING_FIELDS` separated by tabs.

    The file system walk (``linux.files.bodyfile``) prints these for the files another artifact wants (SUID/SGID),
    so that artifact needs no walk of its own. The path is the last field (a tab in it is kept); a path with a
    newline cannot be listed by lines, and the walk prints :data:`WALK_LISTING_UNSAFE` for it instead. Any line
    that is not a complete record (that marker included) makes the whole listing unusable: None, and the
    artifact enumerates the file system itself, so no file is lost to a crafted name.
    """
    result: list[FileStat] = []
    nfields = len(WALK_LISTING_FIELDS)
    for line in output.split(b"\n"):
        if not line:
            continue
        rec = decode_path(line).split("\t", nfields - 1)
        if len(rec) != nfields or rec[0] not in _WALK_TYPES:
            return None
        kind, size, atime, mtime, ctime, btime, uid, gid, user, group, mode, dev, ino, path = rec
        times = [_find_time(t) for t in (atime, mtime, ctime)]
        if None in times:
            return None
        birth = _find_time(btime) or "-"
        result.append(_file_stat([_WALK_TYPES[kind], path, size, *times, birth, uid, gid, user, group, mode,
                                  path, dev, ino]))
    return result


def _uint(text: str) -> bool:
    """``_UINT.fullmatch(text)`` (1-19 ASCII digits), without the regex call (this runs ~9 times a record)."""
    return 0 < len(text) <= 19 and text.isascii() and text.isdigit()


def _file_stat(rec: list[str]) -> FileStat:
    ftype, name, size, atime, mtime, ctime, btime, uid, gid, user, group, mode, quoted, dev, ino = rec
    kind = "symlink" if ftype == "symbolic link" else "file" if ftype.startswith("regular") else "other"
    target = None
    if kind == "symlink":
        prefix = name + " -> "
        target = quoted[len(prefix):] if quoted.startswith(prefix) else quoted
    problems = []
    if not canonical_path(name):
        problems.append("path is not canonical (., .., // or a trailing /)")
    size_n = int(size) if _uint(size) else -1
    if not 0 <= size_n <= MAX_SIZE:
        problems.append(f"invalid size {size[:40]!r}")
        size_n = 0
    uid_n = int(uid) if _uint(uid) else -1
    if not 0 <= uid_n <= 0xFFFFFFFF:
        problems.append(f"invalid uid {uid[:40]!r}")
        uid_n = 0
    gid_n = int(gid) if _uint(gid) else -1
    if not 0 <= gid_n <= 0xFFFFFFFF:
        problems.append(f"invalid gid {gid[:40]!r}")
        gid_n = 0
    mode_ok = _MODE.fullmatch(mode) is not None
    if not mode_ok:
        problems.append(f"invalid mode {mode[:40]!r}")
    accessed, modified, changed = iso_time(atime), iso_time(mtime), iso_time(ctime)
    if accessed is None or modified is None or changed is None:
        for label, value, iso in (("mtime", mtime, modified), ("atime", atime, accessed), ("ctime", ctime, changed)):
            if iso is None and value.strip() and value.strip() not in ("-", "?", "0"):
                problems.append(f"invalid {label} {value[:40]!r}")
    # iso_time gives a time only for text that is a decimal time (stripped): then mtime is one as it is
    modified_epoch = mtime if modified is not None or _DECIMAL_TIME.fullmatch(mtime.strip()) else "0"
    return FileStat(
        kind=kind, path=name, size=size_n,
        accessed=accessed, modified=modified, changed=changed, born=iso_time(btime),
        uid=uid_n, gid=gid_n, owner=user, group=group,
        mode=mode.zfill(4) if mode_ok else "0000",
        link_target=target, modified_epoch=modified_epoch,
        device=int(dev) if _uint(dev) and int(dev) <= MAX_SIZE else 0,
        inode=int(ino) if _uint(ino) and int(ino) <= MAX_SIZE else 0,
        problem="host reported " + "; ".join(problems) if problems else None,
    )


def _int(text: str, limit: int = MAX_SIZE) -> int:
    if not _UINT.fullmatch(text) or int(text) > limit:
        return 0
    return int(text)


def parse_hashes(output: bytes) -> dict[str, str]:
    """Parse ``sha256sum -z`` output: path -> hex digest."""
    result: dict[str, str] = {}
    for record in output.split(b"\0"):
        if len(record) > 66 and record[64:66] == b"  " and _HEX64.fullmatch(record[:64]):
            result[decode_path(record[66:])] = record[:64].decode("ascii")
    return result


_HEX64 = re.compile(rb"[0-9a-f]{64}")


_TOOL_ERR = re.compile(r"^(?:find|sha256sum|tar|stat|xargs): (?:'(?P<q>.*)'|(?P<p>[^:]+)): (?P<why>.+)$")


def parse_errors(stderr: bytes, *, relative: bool = False) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """Split tool stderr into ``(path, reason)`` errors, absent roots and other lines.

    With ``relative`` (tar's member names) a leading ``/`` is restored.
    """
    errors: list[tuple[str, str]] = []
    absent: list[str] = []
    other: list[str] = []
    for line in decode_path(stderr).splitlines():
        if not line.strip():
            continue
        if line.startswith(ABSENT_MARK):
            absent.append(line[len(ABSENT_MARK):])
            continue
        match = _TOOL_ERR.match(line)
        if match:
            path = match["q"] if match["q"] is not None else match["p"]
            if relative and not path.startswith("/"):
                path = "/" + path
            errors.append((path, match["why"]))
        else:
            other.append(line)
    return errors, absent, other
