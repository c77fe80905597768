"""Windows host facts over WinRM: local users, local group members, sessions (``quser``), processes.

PowerShell prints JSON (``ConvertTo-Json -Compress``); a single object is unwrapped by PowerShell
and accepted as a one-item list, anything else that is not a list of objects fails closed, and so
does a name with control characters (it would reach audit records and terminals).
"""

from __future__ import annotations

import json
import re
from typing import Any

from ir_toolkit.facts.base import FactError, Output, Query, integer, lines_of, no_control
from ir_toolkit.transports.winrm import ps_quote

STOP = "$ErrorActionPreference = 'Stop'\n"
_MAX_JSON = 16 * 1024 * 1024


def json_list(text: str, fact: str = "windows.json") -> list[dict[str, Any]]:
    """ConvertTo-Json output: one object (PowerShell unwraps single-item arrays) or a list; '' is []."""
    text = text.strip()
    if not text:
        return []
    if len(text) > _MAX_JSON:
        raise FactError(fact, f"{len(text)} bytes of JSON (limit {_MAX_JSON})")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise FactError(fact, "the host returned unreadable JSON") from None
    if isinstance(value, dict):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise FactError(fact, "the host returned unexpected JSON")
    return value


def _ok(fact: str, out: Output) -> str:
    if not out.ok:
        raise FactError(fact, f"the command failed on the host: {out.last_error()}")
    return out.text


def _name(fact: str, value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 512:
        raise FactError(fact, f"an entry without a valid Name ({str(value)[:60]!r})")
    return no_control(fact, "name", value)


def local_users() -> Query[dict[str, dict[str, Any]]]:
    """Local users by lower-case name (Name, Enabled, SID, PasswordLastSet, Description)."""
    fact = "windows.local_users"

    def parse(out: Output) -> dict[str, dict[str, Any]]:
        users: dict[str, dict[str, Any]] = {}
        for entry in json_list(_ok(fact, out), fact):
            name = _name(fact, entry.get("Name")).lower()
            if name in users:
                raise FactError(fact, f"two local users named {name!r}")
            users[name] = entry
        return users

    return Query(fact, STOP + "Get-LocalUser | Select-Object Name,Enabled,SID,PasswordLastSet,Description | "
                 "ConvertTo-Json -Compress", parse)


def group_members(group: str) -> Query[list[str]]:
    """Short names (``HOST\\name`` -> ``name``) of a local group's members."""
    fact = "windows.group_members"

    def parse(out: Output) -> list[str]:
        return [_name(fact, m.get("Name")).split("\\")[-1] for m in json_list(_ok(fact, out), fact)]

    return Query(fact, STOP + f"Get-LocalGroupMember -Group {ps_quote(group)} | Select-Object "
                 "Name,ObjectClass,PrincipalSource,SID | ConvertTo-Json -Compress", parse)


_QUSER = re.compile(r"^\s*>?(?P<user>\S+)\s+(?:(?P<session>\S+)\s+)?(?P<id>\d+)\s+(?P<state>\S+)")


def parse_quser(text: str, fact: str = "windows.sessions") -> list[tuple[str, int]]:
    """(user, session id) rows of ``quser`` output (a disconnected session has no SESSIONNAME)."""
    rows = []
    for line in lines_of(fact, text, max_lines=10_000, max_line=4096)[1:]:
        m = _QUSER.match(line)
        if m:
            rows.append((no_control(fact, "user", m.group("user")),
                         integer(fact, "session id", m.group("id"), high=1 << 20)))
    return rows


def sessions() -> Query[list[tuple[str, int]]]:
    """Interactive sessions: (user, session id); none when quser says no user is logged on."""
    fact = "windows.sessions"

    def parse(out: Output) -> list[tuple[str, int]]:
        if not out.ok:
            if b"No User exists" in out.stderr:
                return []
            raise FactError(fact, f"quser failed: {out.stderr.decode(errors='replace')[:200]}")
        return parse_quser(out.text, fact)

    return Query(fact, STOP + "quser", parse)


def processes() -> Query[list[tuple[int, str]]]:
    """Every process: (pid, owner's short user name, '' when unknown)."""
    fact = "windows.processes"

    def parse(out: Output) -> list[tuple[int, str]]:
        rows = []
        for p in json_list(_ok(fact, out), fact):
            pid = p.get("Id")
            if not isinstance(pid, int) or isinstance(pid, bool) or not 0 <= pid < 1 << 32:
                raise FactError(fact, f"a process id {str(pid)[:40]!r} that is not one")
            owner = p.get("UserName") or ""
            rows.append((pid, no_control(fact, "user", str(owner)).split("\\")[-1]))
        return rows

    return Query(fact, STOP + "Get-CimInstance -ClassName Win32_Process | Select-Object "
                 "@{n='Id';e={$_.ProcessId}},@{n='ProcessName';e={$_.Name}},@{n='UserName';e={$o=Invoke-CimMethod "
                 "-InputObject $_ -MethodName GetOwner;\"$($o.Domain)\\$($o.User)\"}},SessionId,CommandLine | "
                 "ConvertTo-Json -Compress", parse)


def privileged_memberships(members: dict[str, list[str]], accounts: list[str]) -> dict[str, list[str]]:
    """Pure: account -> the privileged groups (of ``members``: group -> member names) it is in."""
    lowered = {g: {m.lower() for m in ms} for g, ms in members.items()}
    return {a: [g for g, ms in lowered.items() if a.lower() in ms] for a in accounts}
