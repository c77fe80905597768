"""What runs inside a lab WinRS command: cmd.exe's dispatch and a fixed set of PowerShell shapes.

This is NOT a PowerShell interpreter. The endpoint understands exactly the command shapes
irkit's Windows actions emit (listed in ``SHAPES`` and in docs/windows.md) and answers them from
the host's :class:`~ir_toolkit.lab.winrs.model.WindowsModel`; every other line fails the way
PowerShell fails on an unknown command (a ``CommandNotFoundException`` error record as CLIXML on
stderr, exit 1), and every unknown cmd.exe command the way cmd.exe fails ("is not recognized as
an internal or external command", exit 1). Nothing ever succeeds silently.

A script is a sequence of lines. ``$ErrorActionPreference = 'Stop'`` is honoured as
PowerShell does: the first error ends the script with exit 1; without it an error is written and
the script goes on, and exits 1 at the end (real powershell.exe exits 1 only when the LAST
pipeline failed; irkit's scripts always set 'Stop', where both agree). Literal arguments are PowerShell single-quoted strings
(``'it''s'``). A secret is read from stdin with ``$name = [Console]::In.ReadLine()`` and used
only through that variable.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

from ir_toolkit.lab.winrs.model import WindowsModel, nt_hash

Q = r"'((?:[^']|'')*)'"  # a single-quoted PowerShell string literal
QLIST = r"@\(((?:\s*'(?:[^']|'')*'\s*,?)*)\)"


def unquote(text: str) -> str:
    return text.replace("''", "'")


def quote(text: str) -> str:
    """A PowerShell single-quoted literal (what irkit's side uses to build the shapes)."""
    return "'" + text.replace("'", "''") + "'"


def _qlist(text: str) -> list[str]:
    return [unquote(m) for m in re.findall(Q, text)]


class PsError(Exception):
    """A PowerShell error record: ``message`` plus category and FullyQualifiedErrorId."""

    def __init__(self, command: str, message: str, category: str, error_id: str) -> None:
        super().__init__(message)
        self.command = command
        self.message = message
        self.category = category
        self.error_id = error_id


class Terminated(Exception):
    """The command was signalled (terminate / ctrl_c) or its shell was deleted."""


@dataclass
class Process:
    """One running command: its streams, its stdin, its end (what Receive reports)."""

    stdin_buf: bytearray = field(default_factory=bytearray)
    stdin_closed: bool = False
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    exit_code: int | None = None
    terminated: bool = False
    cond: threading.Condition = field(default_factory=threading.Condition)

    def write(self, data: str, err: bool = False) -> None:
        with self.cond:
            (self.stderr if err else self.stdout).extend(data.encode("utf-8"))
            self.cond.notify_all()

    def feed(self, data: bytes, end: bool) -> None:
        with self.cond:
            self.stdin_buf.extend(data)
            self.stdin_closed = self.stdin_closed or end
            self.cond.notify_all()

    def readline(self) -> str:
        with self.cond:
            while b"\n" not in self.stdin_buf and not self.stdin_closed and not self.terminated:
                self.cond.wait(1.0)
            if self.terminated:
                raise Terminated()
            line, sep, rest = bytes(self.stdin_buf).partition(b"\n")
            self.stdin_buf[:] = rest
            return line.decode("utf-8", "replace").rstrip("\r")

    def sleep(self, seconds: float) -> None:
        end = dt.datetime.now().timestamp() + seconds
        with self.cond:
            while not self.terminated:
                left = end - dt.datetime.now().timestamp()
                if left <= 0:
                    return
                self.cond.wait(min(left, 1.0))
            raise Terminated()

    def finish(self, code: int) -> None:
        with self.cond:
            if self.exit_code is None:
                self.exit_code = code
            self.cond.notify_all()

    def terminate(self) -> None:
        with self.cond:
            self.terminated = True
            self.cond.notify_all()


def clixml_error(errors: list[PsError]) -> str:
    """stderr as powershell.exe writes it when run non-interactively: ``#< CLIXML`` + error records."""
    parts = ['<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">']
    for e in errors:
        lines = [f"{e.command} : {e.message}", f"    + CategoryInfo          : {e.category}",
                 f"    + FullyQualifiedErrorId : {e.error_id}", " "]
        for line in lines:
            parts.append(f'<S S="Error">{escape(line)}_x000D__x000A_</S>')
    parts.append("</Objs>")
    return "#< CLIXML\r\n" + "".join(parts)


def not_recognized(term: str) -> PsError:
    return PsError(term, f"The term '{term}' is not recognized as the name of a cmdlet, function, script file, "
                         "or operable program. Check the spelling of the name, or if a path was included, verify "
                         "that the path is correct and try again.",
                   f"ObjectNotFound: ({term}:String) [], CommandNotFoundException", "CommandNotFoundException")


# ============================================================================ the host's side


class Host:
    """Runs commands for one authenticated user against the model (``on_firewall`` applies rules)."""

    def __init__(self, model: WindowsModel, user: str, client_address: str, *,
                 on_firewall: Callable[[], None] | None = None,
                 on_restart: Callable[[], None] | None = None) -> None:
        self.model = model
        self.user = user
        self.client_address = client_address
        self.on_firewall = on_firewall or (lambda: None)
        self.on_restart = on_restart or (lambda: None)

    # ------------------------------------------------------------------ cmd.exe
    def run(self, command_line: str, proc: Process) -> None:
        """Run a WinRS command line (what cmd.exe /c would run) to completion; sets the exit code."""
        try:
            code = self._cmd(command_line.strip(), proc)
        except Terminated:
            code = -1073741510  # STATUS_CONTROL_C_EXIT, what a signalled console process exits with
        proc.finish(code)

    def _cmd(self, line: str, proc: Process) -> int:
        words = line.split()
        if not words:
            return 0
        prog = words[0].strip('"').rsplit("\\", 1)[-1].lower()
        if prog.endswith(".exe"):
            prog = prog[:-4]
        if prog == "hostname" and len(words) == 1:
            proc.write(self.model.hostname + "\r\n")
            return 0
        if prog == "whoami" and len(words) == 1:
            proc.write(f"{self.model.hostname.lower()}\\{self.user.lower()}\r\n")
            return 0
        if prog == "powershell":
            return self._powershell(words[1:], proc)
        proc.write(f"'{words[0]}' is not recognized as an internal or external command,\r\n"
                   "operable program or batch file.\r\n", err=True)
        return 1

    def _powershell(self, args: list[str], proc: Process) -> int:
        script = None
        i = 0
        while i < len(args):
            a = args[i].lower()
            if a in ("-noprofile", "-nologo", "-noninteractive", "-nop", "-noni"):
                i += 1
            elif a in ("-executionpolicy", "-ep", "-inputformat", "-outputformat") and i + 1 < len(args):
                i += 2
            elif a in ("-encodedcommand", "-enc", "-e", "-ec") and i + 1 < len(args):
                try:
                    script = base64.b64decode(args[i + 1], validate=True).decode("utf-16-le")
                except (ValueError, UnicodeDecodeError):
                    proc.write("Cannot process the command because the value specified with -EncodedCommand "
                               "is not properly encoded. The value must be Base64 encoded.\r\n", err=True)
                    return 1
                i += 2
            else:
                # -Command text, -File, scripts on stdin: not a shape irkit sends
                proc.write(clixml_error([not_recognized(args[i])]), err=True)
                return 1
        if script is None:
            proc.write("powershell: no -EncodedCommand given (the lab endpoint runs only encoded scripts)\r\n",
                       err=True)
            return 1
        return Script(self, proc).run(script)


# ============================================================================ PowerShell shapes


class Script:
    """One PowerShell script, line by line, against the model."""

    def __init__(self, host: Host, proc: Process) -> None:
        self.host = host
        self.model = host.model
        self.proc = proc
        self.vars: dict[str, str] = {}
        self.stop = False

    def run(self, text: str) -> int:
        errors: list[PsError] = []
        failed = False
        for raw in text.replace("\r\n", "\n").split("\n"):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            m = re.fullmatch(r"exit\s+(\d+)", line)
            if m:
                self._flush(errors)
                return int(m.group(1))
            try:
                self.statement(line)
            except PsError as exc:
                errors.append(exc)
                failed = True
                if self.stop:
                    break
        self._flush(errors)
        return 1 if failed else 0

    def _flush(self, errors: list[PsError]) -> None:
        if errors:
            self.proc.write(clixml_error(errors), err=True)
            errors.clear()

    def out(self, text: str) -> None:
        self.proc.write(text + "\r\n")

    def json(self, value: Any) -> None:
        self.out(json.dumps(value, separators=(",", ":")))

    # ------------------------------------------------------------------ dispatch
    def statement(self, line: str) -> None:
        for pattern, handler in _SHAPES:
            m = pattern.fullmatch(line)
            if m:
                with self.model.lock:
                    handler(self, *m.groups())
                return
        term = line.split()[0] if line.split() else line
        raise not_recognized(term)

    def var(self, name: str) -> str:
        if name not in self.vars:
            raise PsError("ConvertTo-SecureString", "Cannot bind argument to parameter 'String' because it is null.",
                          "InvalidData: (:) [ConvertTo-SecureString], ParameterBindingValidationException",
                          "ParameterArgumentValidationErrorNullNotAllowed")
        return self.vars[name]

    def _user(self, cmd: str, name: str) -> str:
        canonical = self.model.canonical(name)
        if canonical is None:
            raise PsError(cmd, f"User {name} was not found.",
                          f"ObjectNotFound: ({name}:String) [{cmd}], UserNotFoundException",
                          f"UserNotFound,Microsoft.PowerShell.Commands.{cmd.replace('-', '')}Command")
        return canonical

    def _group(self, cmd: str, name: str) -> list[str]:
        members = self.model.group(name)
        if members is None:
            raise PsError(cmd, f"Group {name} was not found.",
                          f"ObjectNotFound: ({name}:String) [{cmd}], GroupNotFoundException",
                          f"GroupNotFound,Microsoft.PowerShell.Commands.{cmd.replace('-', '')}Command")
        return members

    def _changed(self) -> None:
        self.model.save()

    # ------------------------------------------------------------------ shapes
    def s_preference(self, name: str, value: str) -> None:
        if name == "ErrorActionPreference":
            self.stop = unquote(value[1:-1]).lower() == "stop"

    def s_read_stdin(self, name: str) -> None:
        self.vars[name] = self.proc.readline()

    def s_hostname(self) -> None:
        self.out(self.model.hostname)

    def s_whoami(self) -> None:
        self.out(f"{self.model.hostname.lower()}\\{self.host.user.lower()}")

    def s_write(self, text: str) -> None:
        self.out(unquote(text))

    def s_sleep(self, seconds: str) -> None:
        self.proc.sleep(float(seconds))

    def s_get_users(self) -> None:
        rows = []
        for name, u in self.model.state["users"].items():
            rows.append({"Name": name, "Enabled": u["enabled"], "SID": u["sid"],
                         "PasswordLastSet": u.get("password_last_set"), "Description": u.get("description", "")})
        self.json(rows)

    def s_get_members(self, group: str) -> None:
        members = self._group("Get-LocalGroupMember", unquote(group))
        rows = []
        for m in members:
            u = self.model.user(m)
            rows.append({"Name": f"{self.model.netbios}\\{m}", "ObjectClass": "User", "PrincipalSource": "Local",
                         "SID": u["sid"] if u else ""})
        self.json(rows)

    def s_remove_member(self, group: str, member: str) -> None:
        g, name = unquote(group), unquote(member)
        members = self._group("Remove-LocalGroupMember", g)
        short = name.split("\\")[-1]
        found = next((m for m in members if m.lower() == short.lower()), None)
        if found is None:
            raise PsError("Remove-LocalGroupMember", f"Member {name} was not found in group {g}.",
                          f"ObjectNotFound: ({name}:LocalPrincipal) [Remove-LocalGroupMember], MemberNotFoundException",
                          "MemberNotFound,Microsoft.PowerShell.Commands.RemoveLocalGroupMemberCommand")
        members.remove(found)
        self.model.log_event("Security", 4733, f"A member was removed from a security-enabled local group. "
                                               f"Member: {found} Group: {g} Subject: {self.host.user}")
        self._changed()

    def s_set_password(self, name: str, var: str) -> None:
        user = self._user("Set-LocalUser", unquote(name))
        password = self.var(var)
        classes = sum(any(f(c) for c in password) for f in (str.islower, str.isupper, str.isdigit,
                                                              lambda c: not c.isalnum()))
        u = self.model.state["users"][user]
        if len(password) < 14 or classes < 3 or nt_hash(password) == u["nt_hash"] or user.lower() in password.lower():
            raise PsError("Set-LocalUser", "Unable to update the password. The value provided for the new password "
                          "does not meet the length, complexity, or history requirements of the domain.",
                          "InvalidOperation: (:) [Set-LocalUser], InvalidPasswordException",
                          "InvalidPassword,Microsoft.PowerShell.Commands.SetLocalUserCommand")
        u["nt_hash"] = nt_hash(password)
        u["password_last_set"] = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
        self.model.log_event("Security", 4724, f"An attempt was made to reset an account's password. "
                                               f"Target Account Name: {user} Subject: {self.host.user}")
        self._changed()

    def s_disable_user(self, name: str) -> None:
        user = self._user("Disable-LocalUser", unquote(name))
        self.model.state["users"][user]["enabled"] = False
        self.model.log_event("Security", 4725, f"A user account was disabled. Target Account Name: {user}")
        self._changed()

    def s_quser(self) -> None:
        sessions = self.model.state["sessions"]
        if not sessions:
            raise PsError("quser.exe", "No User exists for *", "NotSpecified: (No User exists for *:String) [], "
                          "RemoteException", "NativeCommandError")
        self.out(" USERNAME              SESSIONNAME        ID  STATE   IDLE TIME  LOGON TIME")
        for s in sessions:
            logon = dt.datetime.fromisoformat(s["logon_time"]).strftime("%m/%d/%Y %I:%M %p")
            self.out(f" {s['user']:<22}{s['type']:<19}{s['id']:>2}  {s['state']:<8}{'.':>9}  {logon}")

    def s_logoff(self, session_id: str) -> None:
        sid = int(session_id)
        sessions = self.model.state["sessions"]
        found = next((s for s in sessions if s["id"] == sid), None)
        if found is None:
            raise PsError("logoff.exe", f"Could not logoff session ID {sid}, Error code 2",
                          "NotSpecified: (:String) [], RemoteException", "NativeCommandError")
        sessions.remove(found)
        self.model.state["processes"] = [p for p in self.model.state["processes"] if p.get("session") != sid]
        self.model.log_event("Security", 4634, f"An account was logged off. Account Name: {found['user']} "
                                               f"Logon Type: 10 Session: {sid}")
        self._changed()

    def s_get_processes(self) -> None:
        self.json([{"Id": p["pid"], "ProcessName": p["name"].removesuffix(".exe"), "UserName": p["user"],
                    "SessionId": p.get("session", 0), "CommandLine": p["command_line"]}
                   for p in self.model.state["processes"]])

    def s_stop_process(self, pid: str) -> None:
        procs = self.model.state["processes"]
        found = next((p for p in procs if p["pid"] == int(pid)), None)
        if found is None:
            raise PsError("Stop-Process", f"Cannot find a process with the process identifier {pid}.",
                          f"ObjectNotFound: ({pid}:Int32) [Stop-Process], ProcessCommandException",
                          "NoProcessFoundForGivenId,Microsoft.PowerShell.Commands.StopProcessCommand")
        procs.remove(found)
        self._changed()

    def s_get_fw_group(self, group: str) -> None:
        g = unquote(group)
        self.json([{"Name": r["name"], "DisplayName": r["display_name"], "Direction": r["direction"],
                    "Action": r["action"], "Enabled": "True" if r["enabled"] else "False",
                    "RemoteAddress": r["remote_address"]}
                   for r in self.model.state["firewall"] if r["group"] == g])

    def s_new_fw_rule(self, name: str, display: str, group: str, direction: str, action: str,
                      addresses: str) -> None:
        n = unquote(name)
        rules = self.model.state["firewall"]
        if any(r["name"] == n for r in rules):
            raise PsError("New-NetFirewallRule", "Cannot create a file when that file already exists.",
                          "ResourceExists: (MSFT_NetFirewallRule:root/standardcimv2/MSFT_NetFirewallRule) "
                          "[New-NetFirewallRule], CimException", "Windows System Error 183,New-NetFirewallRule")
        remote = _qlist(addresses)
        for item in remote:
            if not _valid_address(item):
                raise PsError("New-NetFirewallRule", f"The address {item} is not valid.",
                              "InvalidArgument: (MSFT_NetFirewallRule:root/standardcimv2/MSFT_NetFirewallRule) "
                              "[New-NetFirewallRule], CimException", "HRESULT 0x80070057,New-NetFirewallRule")
        rules.append({"name": n, "display_name": unquote(display), "group": unquote(group), "direction": direction,
                      "action": action, "enabled": True, "remote_address": remote, "protocol": "Any",
                      "local_port": "Any"})
        self._changed()
        self.host.on_firewall()

    def s_remove_fw_group(self, group: str) -> None:
        g = unquote(group)
        before = len(self.model.state["firewall"])
        self.model.state["firewall"] = [r for r in self.model.state["firewall"] if r["group"] != g]
        if len(self.model.state["firewall"]) == before:
            raise PsError("Remove-NetFirewallRule", f"No MSFT_NetFirewallRule objects found with property "
                          f"'DisplayGroup' equal to '{g}'.  Verify the value of the property and retry.",
                          f"ObjectNotFound: ({g}:String) [Remove-NetFirewallRule], CimJobException",
                          "CmdletizationQuery_NotFound_DisplayGroup,Remove-NetFirewallRule")
        self._changed()
        self.host.on_firewall()

    def s_get_tasks(self) -> None:
        self.json([{"TaskPath": t["path"], "TaskName": t["name"], "State": t["state"], "UserId": t["user"],
                    "Execute": t["execute"], "Arguments": t["arguments"]} for t in self.model.state["tasks"]])

    def s_get_run_key(self, path: str) -> None:
        key = unquote(path)
        values = self.model.state["run_keys"].get(key)
        if values is None:
            raise PsError("Get-ItemProperty", f"Cannot find path '{key}' because it does not exist.",
                          f"ObjectNotFound: ({key}:String) [Get-ItemProperty], ItemNotFoundException",
                          "PathNotFound,Microsoft.PowerShell.Commands.GetItemPropertyCommand")
        self.json(values)

    def s_restart_winrm(self) -> None:
        self.host.on_restart()
        self.proc.sleep(3600)  # the service (and this shell with it) goes away under the command

    # ------------------------------------------------------------------ files (triage)
    def _files(self) -> dict[str, Any]:
        return self.model.state.setdefault("files", {})

    def _put_file(self, path: str, data: bytes) -> None:
        self._files()[path.lower()] = {"path": path, "data": base64.b64encode(data).decode()}
        self._changed()

    def _file(self, cmd: str, path: str) -> bytes:
        entry = self._files().get(path.lower())
        if entry is None:
            raise PsError(cmd, f"Cannot find path '{path}' because it does not exist.",
                          f"ObjectNotFound: ({path}:String) [{cmd}], ItemNotFoundException",
                          f"PathNotFound,Microsoft.PowerShell.Commands.{cmd.replace('-', '')}Command")
        return base64.b64decode(entry["data"])

    def s_mkdir(self, path: str) -> None:
        self.model.state.setdefault("dirs", [])
        if unquote(path).lower() not in self.model.state["dirs"]:
            self.model.state["dirs"].append(unquote(path).lower())

    def s_wevtutil_epl(self, channel: str, path: str) -> None:
        name = unquote(channel)
        records = next((v for k, v in self.model.state["events"].items() if k.lower() == name.lower()), None)
        if records is None:
            raise PsError("wevtutil.exe", f"Failed to export log {name}. The specified channel could not be found.",
                          "NotSpecified: (:String) [], RemoteException", "NativeCommandError")
        # the lab writes the records as JSON lines, not the binary EVTX format (docs/windows.md)
        data = "".join(json.dumps({"Channel": name, **r}, sort_keys=True) + "\n" for r in records).encode()
        self._put_file(unquote(path), data)

    def s_reg_save(self, key: str, path: str) -> None:
        k = unquote(key).upper()
        state = self.model.state
        parts = {"HKLM\\SOFTWARE": {"run_keys": state["run_keys"], "tasks": state["tasks"]},
                 "HKLM\\SYSTEM": {"services": state["services"], "firewall": state["firewall"]},
                 "HKLM\\SAM": {"users": {n: {"rid": u["rid"], "nt_hash": u["nt_hash"], "enabled": u["enabled"]}
                                          for n, u in state["users"].items()}, "groups": state["groups"]},
                 "HKLM\\SECURITY": {"policy": "lab"}, "HKU\\.DEFAULT": {}}
        if k not in parts:
            raise PsError("reg.exe", "ERROR: The system was unable to find the specified registry key or value.",
                          "NotSpecified: (:String) [], RemoteException", "NativeCommandError")
        # the lab writes the hive's content as JSON, not the REGF hive format (docs/windows.md)
        self._put_file(unquote(path), json.dumps({"key": k, **parts[k]}, sort_keys=True, indent=1).encode())

    def s_exitcode_check(self) -> None:
        pass  # native failures already raised an error record in the lab

    def s_file_length(self, path: str) -> None:
        self.out(str(len(self._file("Get-Item", unquote(path)))))

    def s_file_hash(self, path: str) -> None:
        import hashlib

        self.out(hashlib.sha256(self._file("Get-FileHash", unquote(path))).hexdigest().upper())

    def s_file_chunk(self, path: str, offset: str, size: str, size2: str) -> None:
        data = self._file("OpenRead", unquote(path))
        n = min(int(size), 4 * 1024 * 1024)
        self.out(base64.b64encode(data[int(offset):int(offset) + n]).decode())

    def s_remove_item(self, path: str) -> None:
        prefix = unquote(path).lower().rstrip("\\")
        files = self._files()
        for k in [k for k in files if k == prefix or k.startswith(prefix + "\\")]:
            del files[k]
        self._changed()


def _valid_address(text: str) -> bool:
    try:
        if "-" in text:
            a, b = text.split("-", 1)
            return ipaddress.ip_address(a).version == ipaddress.ip_address(b).version
        ipaddress.ip_network(text, strict=False)
        return True
    except ValueError:
        return False


_J = r"\s*\|\s*ConvertTo-Json\s+-Compress(?:\s+-Depth\s+\d+)?"
_SHAPES: list[tuple[re.Pattern[str], Callable[..., None]]] = [(re.compile(p, re.IGNORECASE), h) for p, h in [
    (r"\$(ErrorActionPreference|ProgressPreference)\s*=\s*('(?:[^']|'')*')", Script.s_preference),
    (r"\$(\w+)\s*=\s*\[Console\]::In\.ReadLine\(\)", Script.s_read_stdin),
    (r"hostname(?:\.exe)?", Script.s_hostname),
    (r"whoami(?:\.exe)?", Script.s_whoami),
    (rf"Write-Output\s+{Q}", Script.s_write),
    (r"Start-Sleep\s+-Seconds\s+(\d+)", Script.s_sleep),
    (r"Get-LocalUser\s*\|\s*Select-Object\s+Name,Enabled,SID,PasswordLastSet,Description" + _J, Script.s_get_users),
    (rf"Get-LocalGroupMember\s+-Group\s+{Q}\s*\|\s*Select-Object\s+Name,ObjectClass,PrincipalSource,SID" + _J,
     Script.s_get_members),
    (rf"Remove-LocalGroupMember\s+-Group\s+{Q}\s+-Member\s+{Q}", Script.s_remove_member),
    (rf"Set-LocalUser\s+-Name\s+{Q}\s+-Password\s+\(ConvertTo-SecureString\s+-String\s+\$(\w+)\s+-AsPlainText"
     r"\s+-Force\)", Script.s_set_password),
    (rf"Disable-LocalUser\s+-Name\s+{Q}", Script.s_disable_user),
    (r"quser(?:\.exe)?", Script.s_quser),
    (r"logoff(?:\.exe)?\s+(\d+)", Script.s_logoff),
    (r"Get-CimInstance\s+-ClassName\s+Win32_Process\s*\|\s*Select-Object\s+@\{n='Id';e=\{\$_\.ProcessId\}\},"
     r"@\{n='ProcessName';e=\{\$_\.Name\}\},@\{n='UserName';e=\{\$o=Invoke-CimMethod\s+-InputObject\s+\$_\s+"
     r"-MethodName\s+GetOwner;\"\$\(\$o\.Domain\)\\\$\(\$o\.User\)\"\}\},SessionId,CommandLine" + _J,
     Script.s_get_processes),
    (r"Stop-Process\s+-Id\s+(\d+)\s+-Force", Script.s_stop_process),
    (rf"@\(Get-NetFirewallRule\s+-Group\s+{Q}\s+-ErrorAction\s+SilentlyContinue\s*\|\s*ForEach-Object\s*\{{\s*"
     r"\[pscustomobject\]@\{Name=\$_\.Name;DisplayName=\$_\.DisplayName;Direction=\[string\]\$_\.Direction;"
     r"Action=\[string\]\$_\.Action;Enabled=\[string\]\$_\.Enabled;RemoteAddress=@\(\(\$_\s*\|\s*"
     r"Get-NetFirewallAddressFilter\)\.RemoteAddress\)\}\s*\}\)" + _J, Script.s_get_fw_group),
    (rf"New-NetFirewallRule\s+-Name\s+{Q}\s+-DisplayName\s+{Q}\s+-Group\s+{Q}\s+-Direction\s+(Inbound|Outbound)"
     rf"\s+-Action\s+(Block|Allow)\s+-Profile\s+Any\s+-RemoteAddress\s+{QLIST}\s*\|\s*Out-Null",
     Script.s_new_fw_rule),
    (rf"Remove-NetFirewallRule\s+-Group\s+{Q}", Script.s_remove_fw_group),
    (r"Get-ScheduledTask\s*\|\s*Select-Object\s+TaskPath,TaskName,@\{n='State';e=\{\[string\]\$_\.State\}\},"
     r"@\{n='UserId';e=\{\$_\.Principal\.UserId\}\},@\{n='Execute';e=\{\$_\.Actions\[0\]\.Execute\}\},"
     r"@\{n='Arguments';e=\{\$_\.Actions\[0\]\.Arguments\}\}" + _J, Script.s_get_tasks),
    (rf"Get-ItemProperty\s+-Path\s+{Q}\s*\|\s*Select-Object\s+-Property\s+\*\s+-ExcludeProperty\s+PS\*" + _J,
     Script.s_get_run_key),
    (rf"New-Item\s+-ItemType\s+Directory\s+-Force\s+-Path\s+{Q}\s*\|\s*Out-Null", Script.s_mkdir),
    (rf"wevtutil(?:\.exe)?\s+epl\s+{Q}\s+{Q}\s+/ow:true", Script.s_wevtutil_epl),
    (rf"reg(?:\.exe)?\s+save\s+{Q}\s+{Q}\s+/y", Script.s_reg_save),
    (r"if\s*\(\$LASTEXITCODE\s+-ne\s+0\)\s*\{\s*exit\s+\$LASTEXITCODE\s*\}", Script.s_exitcode_check),
    (rf"\(Get-Item\s+-LiteralPath\s+{Q}\)\.Length", Script.s_file_length),
    (rf"\(Get-FileHash\s+-Algorithm\s+SHA256\s+-LiteralPath\s+{Q}\)\.Hash", Script.s_file_hash),
    (rf"\$f\s*=\s*\[IO\.File\]::OpenRead\({Q}\);\s*try\s*\{{\s*\$null\s*=\s*\$f\.Seek\((\d+),\s*'Begin'\);"
     r"\s*\$b\s*=\s*New-Object\s+byte\[\]\s+(\d+);\s*\$n\s*=\s*\$f\.Read\(\$b,\s*0,\s*(\d+)\);\s*"
     r"\[Convert\]::ToBase64String\(\$b,\s*0,\s*\$n\)\s*\}\s*finally\s*\{\s*\$f\.Close\(\)\s*\}",
     Script.s_file_chunk),
    (rf"Remove-Item\s+-LiteralPath\s+{Q}\s+-Recurse\s+-Force(?:\s+-ErrorAction\s+SilentlyContinue)?",
     Script.s_remove_item),
    (r"Restart-Service\s+-Name\s+WinRM\s+-Force", Script.s_restart_winrm),
]]

#: the documented list (docs/windows.md is generated from the same patterns' intent)
SHAPES = [p.pattern for p, _ in _SHAPES]
