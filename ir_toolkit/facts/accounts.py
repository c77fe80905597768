"""Local accounts on a Linux host: passwd entries, password/lock/expiry status, the account's processes.

Names, uids and homes come from the host and go into shell commands (quoted), file paths and
audit records: a parser accepts them only when they look like what ``getent`` prints for a
real account (seven ``:`` fields, a numeric uid, an absolute home, no control characters) and
fails closed otherwise. The shadow hash itself never leaves this module: only its SHA-256
(to notice that it changed) and whether it is locked.
"""

from __future__ import annotations

import hashlib
import shlex
import time
from dataclasses import dataclass
from typing import NamedTuple

from ir_toolkit.facts.base import FactError, Output, Query, integer, lines_of, no_control

_MAX_NAME = 256


class PasswdEntry(NamedTuple):
    user: str
    uid: str
    home: str


def _entry(fact: str, line: str, n: int) -> PasswdEntry:
    fields = line.split(":")
    if len(fields) != 7:
        raise FactError(fact, f"line {n}: {len(fields)} fields, a passwd entry has 7")
    user, uid, home = fields[0], fields[2], fields[5]
    if not user or len(user) > _MAX_NAME:
        raise FactError(fact, f"line {n}: empty or oversized account name")
    no_control(fact, "account name", user)
    if any(ch.isspace() for ch in user) or user.startswith(("-", "+")):
        raise FactError(fact, f"line {n}: account name {user[:60]!r} is not a valid name")
    integer(fact, f"line {n}: uid", uid)
    no_control(fact, "home directory", home)
    if not home.startswith("/") or len(home) > 4096:
        raise FactError(fact, f"line {n}: home directory {home[:60]!r} is not an absolute path")
    return PasswdEntry(user, uid, home)


def passwd_entry(user: str) -> Query[PasswdEntry | None]:
    """The account ``user`` (None when the host has no such account)."""
    fact = "accounts.passwd_entry"

    def parse(out: Output) -> PasswdEntry | None:
        if not out.ok or not out.text.strip():
            return None
        lines = [line for line in lines_of(fact, out.text.strip(), max_lines=2) if line]
        if len(lines) != 1:
            raise FactError(fact, f"{len(lines)} entries for one account")
        entry = _entry(fact, lines[0], 1)
        if entry.user != user:
            raise FactError(fact, f"asked for {user!r}, the host answered for {entry.user[:60]!r}")
        return entry

    return Query(fact, f"getent passwd {shlex.quote(user)}", parse)


def passwd_all() -> Query[list[PasswdEntry]]:
    """Every account the host's account database lists (``getent passwd``)."""
    fact = "accounts.passwd_all"

    def parse(out: Output) -> list[PasswdEntry]:
        if not out.ok:
            raise FactError(fact, f"`getent passwd` failed: {out.last_error()}")
        entries: list[PasswdEntry] = []
        seen: set[str] = set()
        for n, line in enumerate(lines_of(fact, out.text), 1):
            if not line.strip():
                continue
            entry = _entry(fact, line, n)
            if entry.user in seen:
                continue  # nsswitch may list an account from two sources: the first wins, like getpwnam
            seen.add(entry.user)
            entries.append(entry)
        return entries

    return Query(fact, "getent passwd", parse)


# ---------------------------------------------------------------------------- password / lock state

@dataclass(frozen=True)
class AccountState:
    user: str
    uid: str
    exists: bool
    locked: bool = False
    expired: bool = False
    hash_digest: str = ""      # SHA-256 of the shadow hash: compared, never shown


def account_state(user: str, today: int | None = None) -> Query[AccountState]:
    """Whether ``user`` exists, its uid, whether its password is locked and the account expired.

    ``today`` is days since the epoch (default: now) for the shadow expiry field."""
    fact = "accounts.state"
    q = shlex.quote(user)

    def parse(out: Output) -> AccountState:
        if out.exit_status == 7:
            return AccountState(user, "", False)
        if not out.ok:
            raise FactError(fact, f"cannot read the account {user}: {out.last_error()}")
        lines = lines_of(fact, out.text, max_lines=3)
        if not lines:
            raise FactError(fact, f"no uid for {user}")
        uid = lines[0].strip()
        integer(fact, "uid", uid)
        shadow = lines[1].split(":") if len(lines) > 1 else []
        if shadow and shadow[0] != user:
            raise FactError(fact, f"asked for {user!r}, the shadow entry is for {shadow[0][:60]!r}")
        if shadow and len(shadow) != 9:
            raise FactError(fact, f"the shadow entry has {len(shadow)} fields, not 9")
        pw_hash = shadow[1] if len(shadow) > 1 else ""
        expire = shadow[7].strip() if len(shadow) > 7 else ""
        if expire:
            integer(fact, "account expiry", expire, high=10**7)
        day = int(time.time() // 86400) if today is None else today
        return AccountState(user, uid, True, locked=pw_hash.startswith("!"),
                            expired=bool(expire) and int(expire) <= day,
                            hash_digest=hashlib.sha256(pw_hash.encode()).hexdigest())

    return Query(fact, f"getent passwd {q} >/dev/null || exit 7; id -u {q}; getent shadow {q}", parse)


_PERL_CHECK = ("perl -e 'my @p = getpwnam($ARGV[0]) or exit 3; my $h = $p[1]; my $pw = <STDIN>; "
               "chomp $pw; exit((defined $h && length($h) > 3 && crypt($pw, $h) eq $h) ? 0 : 1)'")


def password_matches(user: str, password: str) -> Query[bool | None]:
    """Does the host's shadow hash of ``user`` match ``password``? (on stdin, never argv; None: cannot tell)"""
    def parse(out: Output) -> bool | None:
        return out.exit_status == 0 if out.exit_status in (0, 1) else None

    return Query("accounts.password_matches", f"{_PERL_CHECK} {shlex.quote(user)}", parse,
                 stdin=(password + "\n").encode())


# ---------------------------------------------------------------------------- processes

@dataclass(frozen=True)
class Process:
    pid: int
    ppid: int
    euid: str
    ruid: str
    args: str


PROCESS_COMMAND = "ps -e -o pid= -o ppid= -o uid= -o ruid= -o args= 2>/dev/null"


def processes(user: str | None = None) -> Query[list[Process]]:
    """Every process: pid, parent, effective and real uid, command line (none when ``user`` is given
    and the host has no such account)."""
    fact = "accounts.processes"
    command = PROCESS_COMMAND if user is None else \
        f"uid=$(id -u {shlex.quote(user)} 2>/dev/null) || exit 0; {PROCESS_COMMAND}"

    def parse(out: Output) -> list[Process]:
        rows: list[Process] = []
        for n, line in enumerate(lines_of(fact, out.text, max_lines=1 << 21, max_line=1 << 20), 1):
            parts = line.split(None, 4)
            if not parts:
                continue
            if len(parts) < 4:
                raise FactError(fact, f"line {n}: {len(parts)} columns, ps prints pid ppid uid ruid args")
            pid = integer(fact, f"line {n}: pid", parts[0], high=1 << 22)
            ppid = integer(fact, f"line {n}: ppid", parts[1], high=1 << 22)
            integer(fact, f"line {n}: uid", parts[2])
            integer(fact, f"line {n}: ruid", parts[3])
            rows.append(Process(pid, ppid, parts[2], parts[3], parts[4] if len(parts) > 4 else ""))
        return rows

    return Query(fact, command, parse)


def account_pids(rows: list[Process], user: str, uid: str) -> list[int]:
    """Processes of the account (pure): owned by it (effective or real uid), its sshd session
    processes, and all their descendants; sorted. Never pid 1 or below."""
    me = tuple(f"{daemon}: {user}{sep}" for daemon in ("sshd", "sshd-session") for sep in ("@", " ["))
    seeds = {p.pid for p in rows if p.euid == uid or p.ruid == uid or p.args.startswith(me)}
    children: dict[int, list[int]] = {}
    for p in rows:
        children.setdefault(p.ppid, []).append(p.pid)
    found: set[int] = set()
    todo = list(seeds)
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo.extend(children.get(pid, []))
    return sorted(p for p in found if p > 1)
