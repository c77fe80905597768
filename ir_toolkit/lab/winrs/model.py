"""The Windows state a lab WinRS endpoint answers for: a small, persisted model of one host.

What a responder's PowerShell reads and changes on a breached Windows host, and nothing more:
local accounts (with NT hashes, as the SAM keeps them: no plaintext password is stored),
local groups, logon sessions, processes, services, scheduled tasks, Run keys, Windows
Defender Firewall rules and event log records. The model is a JSON file written atomically
(fsynced) after every change, so a killed endpoint comes back with the same state; a lab
"reimage" deletes it and seeds a clean one.

The breach (``seed(..., breached=True)``) is the Cloud Hopper picture on a Windows estate:
the MSP's shared local administrator with ONE password on every host, the MSP's support
account in Administrators and Remote Desktop Users with a live RDP session, a malicious
scheduled task and Run key that start a beacon, and the logon events that show it.
"""

from __future__ import annotations

import copy
import hashlib
import datetime as dt
import json
import os
import threading
from pathlib import Path
from typing import Any

from spnego._ntlm_raw.crypto import ntowfv1

from ir_toolkit.fsutil import write_atomic

ATTACKER_ADDRESS = "203.0.113.66"  # TEST-NET-3: text in seeded records only, never contacted
BEACON_PATH = r"C:\ProgramData\Microsoft\Crypto\svchost32.exe"
MALICIOUS_TASK = r"\Microsoft\Windows\Maintenance\SyncCheck"
RUN_KEY = r"HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Run"
RUN_VALUE = "SysSync"
PRIVILEGED_GROUPS = ("Administrators", "Remote Desktop Users", "Remote Management Users")
#: groups whose members may use WinRM (Windows' default WinRM SDDL)
WINRM_GROUPS = ("Administrators", "Remote Management Users")


def nt_hash(password: str) -> str:
    """The NT hash (MD4 of UTF-16LE) Windows keeps for a password, as upper-case hex."""
    return ntowfv1(password).hex().upper()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def _sid(machine: int, rid: int) -> str:
    return f"S-1-5-21-{machine}-{machine // 7 + 1000}-{machine // 13 + 2000}-{rid}"


def seed(hostname: str, *, responder_user: str, responder_password: str, shared_user: str,
         shared_password: str, msp_users: list[str], breached: bool, epoch: int) -> dict[str, Any]:
    """A fresh model: a clean Windows Server, plus the seeded breach when ``breached``."""
    machine = int(hashlib.sha256(hostname.encode()).hexdigest()[:8], 16) % 900000000 + 100000000
    when = dt.datetime.fromtimestamp(epoch, dt.timezone.utc)

    def at(hours: float) -> str:
        return (when + dt.timedelta(hours=hours)).replace(microsecond=0).isoformat()

    users: dict[str, dict[str, Any]] = {
        "Administrator": {"rid": 500, "enabled": False, "nt_hash": nt_hash(os.urandom(12).hex()),
                          "description": "Built-in account for administering the computer/domain"},
        "Guest": {"rid": 501, "enabled": False, "nt_hash": "", "description": "Built-in account for guest access"},
        responder_user: {"rid": 1000, "enabled": True, "nt_hash": nt_hash(responder_password),
                         "description": "irkit responder (break-glass)"},
    }
    groups: dict[str, list[str]] = {
        "Administrators": ["Administrator", responder_user],
        "Remote Desktop Users": [],
        "Remote Management Users": [],
        "Users": [responder_user],
        "Guests": ["Guest"],
    }
    state: dict[str, Any] = {
        "version": 1,
        "hostname": hostname,
        "machine_sid": machine,
        "next_rid": 1003,
        "next_pid": 5200,
        "users": users,
        "groups": groups,
        "sessions": [],
        "processes": [
            {"pid": 4, "ppid": 0, "name": "System", "user": "NT AUTHORITY\\SYSTEM", "command_line": ""},
            {"pid": 612, "ppid": 4, "name": "lsass.exe", "user": "NT AUTHORITY\\SYSTEM",
             "command_line": r"C:\Windows\system32\lsass.exe"},
            {"pid": 1088, "ppid": 612, "name": "svchost.exe", "user": "NT AUTHORITY\\NETWORK SERVICE",
             "command_line": r"C:\Windows\System32\svchost.exe -k NetworkService -p -s WinRM"},
        ],
        "services": [
            {"name": "WinRM", "display_name": "Windows Remote Management (WS-Management)", "status": "Running",
             "start_type": "Automatic", "path": r"C:\Windows\System32\svchost.exe -k NetworkService -p"},
            {"name": "mpssvc", "display_name": "Windows Defender Firewall", "status": "Running",
             "start_type": "Automatic", "path": r"C:\Windows\system32\svchost.exe -k LocalServiceNoNetworkFirewall -p"},
        ],
        "tasks": [
            {"path": "\\Microsoft\\Windows\\Defrag\\", "name": "ScheduledDefrag", "state": "Ready",
             "user": "SYSTEM", "execute": r"%windir%\system32\defrag.exe", "arguments": "-c -h -o -$"},
        ],
        "run_keys": {RUN_KEY: {"SecurityHealth": r"%windir%\system32\SecurityHealthSystray.exe"}},
        "firewall": [
            {"name": "WINRM-HTTPS-In-TCP", "display_name": "Windows Remote Management (HTTPS-In)",
             "group": "Windows Remote Management", "direction": "Inbound", "action": "Allow",
             "enabled": True, "remote_address": ["Any"], "protocol": "TCP", "local_port": "5986"},
        ],
        "events": {"Security": [], "System": [
            {"record_id": 1, "event_id": 6005, "time": at(0), "message": "The Event log service was started."},
        ], "Microsoft-Windows-TaskScheduler/Operational": []},
    }
    if shared_user:
        users[shared_user] = {"rid": 1001, "enabled": True, "nt_hash": nt_hash(shared_password),
                              "description": "ACME managed services local administrator"}
        groups["Administrators"].append(shared_user)
        groups["Users"].append(shared_user)
    for i, msp in enumerate(msp_users):
        users[msp] = {"rid": 1002 + i, "enabled": True, "nt_hash": nt_hash(os.urandom(12).hex()),
                      "description": "ACME MSP support"}
        state["next_rid"] = 1003 + i
        groups["Users"].append(msp)
        if breached:
            groups["Administrators"].append(msp)
            groups["Remote Desktop Users"].append(msp)
    if breached:
        intruder = msp_users[0] if msp_users else shared_user
        sec = state["events"]["Security"]
        sec += [
            {"record_id": 1001, "event_id": 4624, "time": at(1),
             "message": f"An account was successfully logged on. Logon Type: 10 Account Name: {intruder} "
                        f"Source Network Address: {ATTACKER_ADDRESS}"},
            {"record_id": 1002, "event_id": 4732, "time": at(1.1),
             "message": f"A member was added to a security-enabled local group. Member: {intruder} "
                        "Group: Administrators"},
            {"record_id": 1003, "event_id": 4698, "time": at(1.2),
             "message": f"A scheduled task was created. Task Name: {MALICIOUS_TASK}"},
        ]
        state["sessions"].append({"id": 2, "user": intruder, "type": "rdp-tcp#0", "state": "Active",
                                  "client_address": ATTACKER_ADDRESS, "logon_time": at(1)})
        state["processes"] += [
            {"pid": 4712, "ppid": 3980, "name": "explorer.exe", "user": f"{hostname}\\{intruder}",
             "command_line": r"C:\Windows\explorer.exe", "session": 2},
            {"pid": 5120, "ppid": 4712, "name": "svchost32.exe", "user": f"{hostname}\\{intruder}",
             "command_line": f"{BEACON_PATH} -c {ATTACKER_ADDRESS}:443", "session": 2},
        ]
        state["tasks"].append({"path": "\\Microsoft\\Windows\\Maintenance\\", "name": "SyncCheck",
                               "state": "Ready", "user": "SYSTEM", "execute": BEACON_PATH,
                               "arguments": f"-c {ATTACKER_ADDRESS}:443"})
        state["run_keys"][RUN_KEY][RUN_VALUE] = f"{BEACON_PATH} -q"
        state["events"]["Microsoft-Windows-TaskScheduler/Operational"].append(
            {"record_id": 77, "event_id": 106, "time": at(1.2),
             "message": f"User registered Task Scheduler task {MALICIOUS_TASK}"})
    for name, user in users.items():
        user["sid"] = _sid(machine, user["rid"])
        user["password_last_set"] = at(-2000) if name != responder_user else _now()
    return state


class WindowsModel:
    """The model of one host, persisted in ``path`` (JSON) with an NTLM user file beside it."""

    def __init__(self, path: Path, state: dict[str, Any]) -> None:
        self.path = path
        self.lock = threading.RLock()
        self.state = state
        self.user_file = path.with_name("ntlm_users")

    @classmethod
    def load(cls, path: Path) -> WindowsModel:
        model = cls(path, json.loads(path.read_text()))
        model.write_user_file()
        return model

    @classmethod
    def create(cls, path: Path, state: dict[str, Any]) -> WindowsModel:
        model = cls(path, state)
        model.save()
        return model

    # ----------------------------------------------------------------- persistence
    def save(self) -> None:
        with self.lock:
            write_atomic(self.path, json.dumps(self.state, indent=1, sort_keys=True).encode(), mode=0o600)
            self.write_user_file()

    def write_user_file(self) -> None:
        """The NTLM acceptor's credential store (smbpasswd form: NT hashes, never passwords)."""
        lines = []
        host = self.netbios
        for name, user in sorted(self.state["users"].items()):
            if not user["enabled"] or not user["nt_hash"] or not self.may_use_winrm(name):
                continue
            for principal in (name, f"{host}\\{name}"):
                lines.append(f"{principal}:{user['rid']}:{'0' * 32}:{user['nt_hash']}:[U]:LCT-0")
        write_atomic(self.user_file, ("\n".join(lines) + "\n").encode(), mode=0o600)

    # ----------------------------------------------------------------- reading
    @property
    def hostname(self) -> str:
        return str(self.state["hostname"])

    @property
    def netbios(self) -> str:
        return self.hostname.split(".")[0].upper()[:15]

    def user(self, name: str) -> dict[str, Any] | None:
        """Account by name, case-insensitively (as Windows matches account names)."""
        for key, value in self.state["users"].items():
            if key.lower() == name.lower():
                return value
        return None

    def canonical(self, name: str) -> str | None:
        for key in self.state["users"]:
            if key.lower() == name.lower():
                return key
        return None

    def group(self, name: str) -> list[str] | None:
        for key, value in self.state["groups"].items():
            if key.lower() == name.lower():
                return value
        return None

    def may_use_winrm(self, name: str) -> bool:
        members = [m.lower() for g in WINRM_GROUPS for m in (self.group(g) or [])]
        return name.lower() in members

    def check_password(self, name: str, password: str) -> str | None:
        """The canonical account name if ``password`` logs ``name`` on over WinRM, else None."""
        if "\\" in name:
            domain, _, name = name.partition("\\")
            if domain.upper() not in (self.netbios, ".", "localhost".upper()):
                return None
        with self.lock:
            user = self.user(name)
            if (user is None or not user["enabled"] or not user["nt_hash"]
                    or not self.may_use_winrm(name) or nt_hash(password) != user["nt_hash"]):
                return None
            return self.canonical(name)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self.state)

    # ----------------------------------------------------------------- events
    def log_event(self, log: str, event_id: int, message: str) -> None:
        records = self.state["events"].setdefault(log, [])
        next_id = (records[-1]["record_id"] + 1) if records else 1
        records.append({"record_id": next_id, "event_id": event_id, "time": _now(), "message": message})
