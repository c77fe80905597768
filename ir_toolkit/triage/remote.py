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
PREFLIGHT_COMMAND = (
    f"{ENV_PREFIX} sh -c 'for t in {' '.join(REQUIRED_TOOLS)}; do "
    "command -v \"$t\" >/dev/null 2>&1 || echo \"$t\"; done'"
)
HASH_COMMAND = f"{ENV_PREFIX} xargs -0 -r sha256sum -z --"
TAR_COMMAND = (
    f"{ENV_PREFIX} tar --create --file=- --format=posix --numeric-owner --atime-preserve=system "
    "--no-recursion --directory=/ --null --verbatim-files-from --files-from=-"
)
PSEUDO_FSTYPES = ("proc", "sysfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs",
                  "bpf", "pstore", "configfs", "fusectl", "mqueue", "hugetlbfs", "autofs", "binfmt_misc")

_BRACKET = re.compile(r"\[!?\]?[^\]'\"`$\\]*\]")


def shell_glob(pattern: str) -> str:
    """Quote ``pattern`` for ``sh`` so that only ``*``, ``?`` and ``[...]`` stay active."""
    out: list[str] = []
    literal = ""
    i = 0
    while i < len(pattern):
        char = pattern[i]
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
    for path in artifact.paths:
        if path.startswith(USER_HOME):
            rest = path[len(USER_HOME):]
            for home in homes:
                expanded = posixpath.normpath(home.rstrip("/") + rest) if home != "/" else posixpath.normpath(rest)
                roots.setdefault(expanded, True)
        else:
            roots[path] = False
    return list(roots.items())


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


def command_for(artifact: Artifact) -> str:
    """The remote command line for a ``command`` artifact (run by ``sh`` with a fixed PATH)."""
    assert artifact.command is not None
    return f"{ENV_PREFIX} sh -c {shlex.quote(artifact.command)}"


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

    @property
    def mtime(self) -> float:
        """Modification time as a float (for archive headers; the manifest keeps nanoseconds)."""
        return _epoch(self.modified_epoch)

    def times(self) -> dict[str, str | None]:
        return {"modified": self.modified, "accessed": self.accessed, "changed": self.changed, "born": self.born}


def _epoch(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


def iso_time(epoch: str) -> str | None:
    """``1795703171.073054876`` -> ``2026-11-26T14:26:11.073054876Z``; 0, ``-`` or ``?`` -> None."""
    text = epoch.strip()
    if not text or text[0] in "-?":
        return None
    sec, _, frac = text.partition(".")
    try:
        seconds = int(sec)
    except ValueError:
        return None
    if seconds == 0 and not frac.strip("0"):
        return None
    frac = (frac + "000000000")[:9]
    stamp = _dt.datetime.fromtimestamp(seconds, tz=_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{frac}Z"


def decode_path(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def encode_path(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


def parse_stat(output: bytes) -> list[FileStat]:
    """Parse :data:`STAT_FORMAT` records (NUL-separated, 15 fields each)."""
    fields = output.split(b"\0")
    if fields and fields[-1] == b"":
        fields.pop()
    result: list[FileStat] = []
    for i in range(0, len(fields) - _NFIELDS + 1, _NFIELDS):
        rec = [decode_path(f) for f in fields[i:i + _NFIELDS]]
        ftype, name, size, atime, mtime, ctime, btime, uid, gid, user, group, mode, quoted, dev, ino = rec
        kind = "symlink" if ftype == "symbolic link" else "file" if ftype.startswith("regular") else "other"
        target = None
        if kind == "symlink":
            prefix = name + " -> "
            target = quoted[len(prefix):] if quoted.startswith(prefix) else quoted
        result.append(FileStat(
            kind=kind, path=name, size=int(size or 0),
            accessed=iso_time(atime), modified=iso_time(mtime), changed=iso_time(ctime), born=iso_time(btime),
            uid=int(uid or 0), gid=int(gid or 0), owner=user, group=group, mode=mode.zfill(4),
            link_target=target, modified_epoch=mtime, device=_int(dev), inode=_int(ino),
        ))
    return result


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0


def parse_hashes(output: bytes) -> dict[str, str]:
    """Parse ``sha256sum -z`` output: path -> hex digest."""
    result: dict[str, str] = {}
    for record in output.split(b"\0"):
        if len(record) > 66 and record[64:66] == b"  ":
            result[decode_path(record[66:])] = record[:64].decode("ascii")
    return result


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
