"""The clean OS image every lab host boots from (the bottom overlay layer).

It is built from the controller's own Debian system, but only from parts that
carry no controller secret or personal setting:

* ``/usr`` is not copied: hosts bind-mount the controller's ``/usr`` read-only;
* ``/etc`` is a whitelist copy (name service, PAM, ld.so, alternatives, cron,
  systemd, ssh client config ...), with accounts reduced to system accounts,
  every password locked, no SSH host key, an empty ``profile.d`` and plain
  Debian shell rc files;
* ``/root`` and ``/home`` start empty apart from Debian's stock dot files and the
  responder's key in ``/root/.ssh/authorized_keys`` (a provisioned image);
* ``/dev`` holds the few device nodes sshd and shells need.
"""

from __future__ import annotations

import datetime as _dt
import grp
import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

from ir_toolkit.errors import EnvironmentProblem

IMAGE_VERSION = 3


def marker_path(dest: Path) -> Path:
    """A layer's marker lives next to it (a file inside would show up in every host)."""
    return dest.with_name(dest.name + ".json")

ETC_WHITELIST = (
    "adduser.conf", "alternatives", "bindresvport.blacklist", "ca-certificates.conf",
    "cron.d", "cron.daily", "cron.hourly", "cron.monthly", "cron.weekly", "crontab",
    "debian_version", "default", "deluser.conf", "ethertypes", "gai.conf", "host.conf",
    "init.d", "inputrc", "iproute2", "issue", "issue.net", "ld.so.cache", "ld.so.conf",
    "ld.so.conf.d", "locale.alias", "locale.gen", "localtime", "login.defs", "logrotate.d",
    "magic", "magic.mime", "mime.types", "netconfig", "networks", "nftables.conf",
    "nsswitch.conf", "os-release", "pam.conf", "pam.d", "perl", "protocols", "rc0.d", "rc1.d",
    "rc2.d", "rc3.d", "rc4.d", "rc5.d", "rc6.d", "rcS.d", "rpc", "security", "services",
    "shells", "sysctl.conf", "sysctl.d", "systemd", "terminfo", "timezone", "xattr.conf",
)
ETC_GLOBS = ("python3*",)
SSH_CLIENT_FILES = ("moduli", "ssh_config", "ssh_config.d")
DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9), "tty": (5, 0)}
DEV_LINKS = {"ptmx": "pts/ptmx", "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0",
             "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"}
TOP_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")

BASHRC = """\
# ~/.bashrc: executed by bash(1) for non-login shells (Debian stock, lab image).
[ -z "$PS1" ] && return
HISTCONTROL=ignoreboth
shopt -s histappend checkwinsize
PS1='${debian_chroot:+($debian_chroot)}\\u@\\h:\\w\\$ '
"""
PROFILE = """\
# ~/.profile: executed by Bourne-compatible login shells (Debian stock, lab image).
if [ "$BASH" ]; then
  if [ -f ~/.bashrc ]; then
    . ~/.bashrc
  fi
fi
mesg n 2> /dev/null || true
"""
SYSTEM_BASHRC = """\
# System-wide .bashrc file for interactive bash(1) shells (lab image).
[ -z "$PS1" ] && return
shopt -s checkwinsize
PS1='${debian_chroot:+($debian_chroot)}\\u@\\h:\\w\\$ '
"""
SYSTEM_PROFILE = """\
# /etc/profile: system-wide .profile file for the Bourne shell (lab image).
if [ "$(id -u)" -eq 0 ]; then
  PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
else
  PATH="/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games"
fi
export PATH
if [ "${PS1-}" ]; then
  if [ "${BASH-}" ] && [ "$BASH" != "/bin/sh" ]; then
    [ -f /etc/bash.bashrc ] && . /etc/bash.bashrc
  else
    if [ "$(id -u)" -eq 0 ]; then PS1='# '; else PS1='$ '; fi
  fi
fi
if [ -d /etc/profile.d ]; then
  for i in /etc/profile.d/*.sh; do
    [ -r "$i" ] && . "$i"
  done
  unset i
fi
"""


def _gid(name: str, default: int = 0) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return default


def _write(path: Path, text: str | bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode() if isinstance(text, str) else text
    path.write_bytes(data)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def _mkdir(path: Path, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def _copy_entry(src: Path, dst: Path) -> None:
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        shutil.copytree(src, dst, symlinks=True, ignore_dangling_symlinks=True,
                        ignore=lambda d, names: [n for n in names if _special(Path(d) / n)])
    elif src.is_file():
        shutil.copy2(src, dst)


def _special(path: Path) -> bool:
    try:
        mode = path.lstat().st_mode
    except OSError:
        return True
    return not (stat.S_ISDIR(mode) or stat.S_ISREG(mode) or stat.S_ISLNK(mode))


def system_accounts(src: Path = Path("/etc")) -> tuple[list[list[str]], list[list[str]]]:
    """(passwd rows, group rows) of the controller's system accounts (uid < 1000 or nobody)."""
    users = [line.split(":") for line in (src / "passwd").read_text().splitlines() if line.count(":") == 6]
    users = [u for u in users if int(u[2]) < 1000 or int(u[2]) == 65534]
    names = {u[0] for u in users}
    if "sshd" not in names:  # sshd's privilege-separation user
        used = {int(u[2]) for u in users}
        uid = next(i for i in range(100, 1000) if i not in used)
        users.append(["sshd", "x", str(uid), "65534", "", "/run/sshd", "/usr/sbin/nologin"])
        names.add("sshd")
    groups = [line.split(":") for line in (src / "group").read_text().splitlines() if line.count(":") == 3]
    groups = [g for g in groups if int(g[2]) < 1000 or int(g[2]) == 65534]
    for g in groups:
        g[1] = "x"
        g[3] = ",".join(m for m in g[3].split(",") if m in names)
    for u in users:
        u[1] = "x"
    return users, groups


def account_files(users: list[list[str]], groups: list[list[str]],
                  hashes: dict[str, str] | None = None) -> dict[str, tuple[str, int, int]]:
    """passwd/group/shadow/gshadow text, mode and group for ``users``/``groups``."""
    hashes = hashes or {}
    day = (_dt.date.today() - _dt.date(1970, 1, 1)).days
    shadow_gid = _gid("shadow")
    return {
        "passwd": ("".join(":".join(u) + "\n" for u in users), 0o644, 0),
        "group": ("".join(":".join(g) + "\n" for g in groups), 0o644, 0),
        "shadow": ("".join(f"{u[0]}:{hashes.get(u[0], '*')}:{day}:0:99999:7:::\n" for u in users), 0o640, shadow_gid),
        "gshadow": ("".join(f"{g[0]}:*::{g[3]}\n" for g in groups), 0o640, shadow_gid),
    }


def image_is_current(dest: Path, responder_public: str) -> bool:
    try:
        marker = json.loads(marker_path(dest).read_text())
    except (OSError, ValueError):
        return False
    return marker == _marker(responder_public)


def _marker(responder_public: str) -> dict[str, object]:
    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()  # code changes rebuild the image
    return {"version": IMAGE_VERSION, "responder": responder_public, "code": code}


def build_image(dest: Path, responder_public: str) -> None:
    """(Re)build the clean image at ``dest`` (replaced whole; never while a host uses it)."""
    tmp = dest.with_name(dest.name + ".new")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        _build(tmp, responder_public)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise EnvironmentProblem(f"cannot build the lab image in {dest}: {exc}") from None
    marker_path(dest).unlink(missing_ok=True)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    _write(marker_path(dest), json.dumps(_marker(responder_public)), 0o600)


def _build(root: Path, responder_public: str) -> None:
    _mkdir(root)
    for name in ("usr", "proc", "sys", "mnt", "opt", "srv", "media", "boot", "home", "etc", "var", "run"):
        _mkdir(root / name)
    _mkdir(root / "tmp", 0o1777)
    for name in TOP_LINKS:
        src = Path("/") / name
        if src.is_symlink():
            os.symlink(os.readlink(src), root / name)
        elif src.is_dir():
            _mkdir(root / name)  # not merged-/usr: bind-mounted read-only like /usr
    _build_dev(root / "dev")
    _build_etc(root / "etc")
    _build_var(root)
    _build_run(root / "run")
    _mkdir(root / "root", 0o700)
    _write(root / "root/.bashrc", BASHRC)
    _write(root / "root/.profile", PROFILE)
    _mkdir(root / "root/.ssh", 0o700)
    _write(root / "root/.ssh/authorized_keys", responder_public + "\n", 0o600)


def bind_dirs() -> list[str]:
    """Top-level system directories that must be bind-mounted read-only into hosts."""
    dirs = ["usr"]
    for name in TOP_LINKS:
        src = Path("/") / name
        if src.is_dir() and not src.is_symlink():
            dirs.append(name)
    return dirs


def _build_dev(dev: Path) -> None:
    _mkdir(dev)
    for name, (major, minor) in DEVICES.items():
        os.mknod(dev / name, stat.S_IFCHR | 0o666, os.makedev(major, minor))
        os.chmod(dev / name, 0o666)
    for name, target in DEV_LINKS.items():
        os.symlink(target, dev / name)
    _mkdir(dev / "pts")
    _mkdir(dev / "shm", 0o1777)


def _build_etc(etc: Path) -> None:
    src = Path("/etc")
    names = list(ETC_WHITELIST)
    for pattern in ETC_GLOBS:
        names += sorted(p.name for p in src.glob(pattern))
    for name in names:
        if (src / name).exists() or (src / name).is_symlink():
            _copy_entry(src / name, etc / name)
    _mkdir(etc / "ssh")
    for name in SSH_CLIENT_FILES:
        if (src / "ssh" / name).exists():
            _copy_entry(src / "ssh" / name, etc / "ssh" / name)
    _mkdir(etc / "ssh/sshd_config.d")
    _mkdir(etc / "profile.d")
    _mkdir(etc / "skel")
    _write(etc / "skel/.bashrc", BASHRC)
    _write(etc / "skel/.profile", PROFILE)
    _write(etc / "bash.bashrc", SYSTEM_BASHRC)
    _write(etc / "profile", SYSTEM_PROFILE)
    _write(etc / "environment", "")
    _write(etc / "resolv.conf", "# lab host: no DNS\n")
    _write(etc / "fstab", "# lab host: file systems are mounted by the lab's init\n")
    _mkdir(etc / "sudoers.d", 0o750)
    if not (etc / "mtab").exists():
        os.symlink("../proc/self/mounts", etc / "mtab")
    users, groups = system_accounts(src)
    for name, (text, mode, gid) in account_files(users, groups).items():
        _write(etc / name, text, mode, 0, gid)


def _build_var(root: Path) -> None:
    var = root / "var"
    utmp = _gid("utmp")
    for name in ("lib", "cache", "backups", "local", "opt", "mail", "spool", "spool/cron", "empty"):
        _mkdir(var / name)
    _mkdir(var / "tmp", 0o1777)
    _mkdir(var / "spool/cron/crontabs", 0o1730, 0, _gid("crontab"))
    _mkdir(var / "log")
    _write(var / "log/wtmp", b"", 0o664, 0, utmp)
    _write(var / "log/btmp", b"", 0o660, 0, utmp)
    _write(var / "log/lastlog", b"", 0o664, 0, utmp)
    _write(var / "log/auth.log", b"", 0o640, 0, _gid("adm"))
    os.symlink("/run", var / "run")
    os.symlink("/run/lock", var / "lock")


def _build_run(run: Path) -> None:
    _mkdir(run / "sshd", 0o755)
    _mkdir(run / "lock", 0o1777)
    _write(run / "utmp", b"", 0o664, 0, _gid("utmp"))
