"""The Windows hosts of a lab: what :class:`ir_toolkit.lab.fleet.Lab` does for them.

Lab-wide files (beside the Linux ones): ``winrm_ca.pem`` / ``winrm_ca.key`` (the lab's WinRM
CA), ``windows_shared_password`` (the leaked shared local admin password, the same on every
Windows host), ``windows_responder_password`` (irkit's own Windows account, what the
inventory's ``msp.responder.windows.password: file:...`` points at). Per host: see
:mod:`ir_toolkit.lab.winrs.host`. A Windows host is a network namespace (made by the lab's
usual ``ip`` batch) with its address set and the WinRS endpoint running in it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ir_toolkit import childenv
from ir_toolkit.errors import EnvironmentProblem
from ir_toolkit.lab import procs
from ir_toolkit.lab.layout import HOST_PATH, LabPaths
from ir_toolkit.lab.netns import netns_path
from ir_toolkit.lab.state import HostState, LabState
from ir_toolkit.lab.winrs import ca
from ir_toolkit.lab.winrs import host as winrs_host


def ca_cert(p: LabPaths) -> Path:
    return p.root / "winrm_ca.pem"


def ca_key(p: LabPaths) -> Path:
    return p.root / "winrm_ca.key"


def shared_password_file(p: LabPaths) -> Path:
    return p.root / "windows_shared_password"


def responder_password_file(p: LabPaths) -> Path:
    return p.root / "windows_responder_password"


def directory(p: LabPaths, name: str) -> Path:
    return winrs_host.host_dir(p.hosts, name)


def _ensure(path: Path) -> str:
    """The lab password in ``path`` (0600, registered for redaction), made once to satisfy Windows
    complexity rules (upper, lower, digit and symbol)."""
    import secrets
    import string

    from ir_toolkit.lab.sshkeys import write_private
    from ir_toolkit.redaction import register_secret

    if path.exists():
        value = path.read_text().strip()
    else:
        alphabet = string.ascii_letters + string.digits
        value = "".join(secrets.choice(alphabet) for _ in range(16)) + "-Aa1"
        write_private(path, (value + "\n").encode(), 0o600)
    register_secret(value)
    return value


def ensure_files(p: LabPaths, msp: str) -> None:
    ca.ensure_ca(ca_cert(p), ca_key(p), msp)
    _ensure(shared_password_file(p))
    _ensure(responder_password_file(p))


def shared_password(p: LabPaths) -> str:
    return _ensure(shared_password_file(p))


def responder_password(p: LabPaths) -> str:
    return _ensure(responder_password_file(p))


def prepare_host(p: LabPaths, state: LabState, h: HostState, *, reset: bool = False,
                 new_certificate: bool = False) -> str:
    win = state.windows or {}
    return winrs_host.prepare(directory(p, h.name), ca_cert=ca_cert(p), ca_key=ca_key(p), name=h.name,
                              address=h.address, responder_user=win.get("responder_user", "irkit-responder"),
                              responder_password=responder_password(p), shared_user=win.get("shared_user", ""),
                              shared_password=shared_password(p), msp_users=list(win.get("msp_users", [])),
                              breached=h.breached, epoch=state.breach_epoch, reset=reset,
                              new_certificate=new_certificate)


def start(p: LabPaths, state: LabState, h: HostState, prefixlen: int) -> int:
    """Address the host's namespace and start its endpoint there; returns the endpoint's pid."""
    prepare_host(p, state, h)
    ns = netns_path(h.netns)
    lines = "link set dev lo up\n" f"addr replace {h.address}/{prefixlen} dev eth0\n" "link set dev eth0 up\n"
    proc = childenv.run(["ip", "-n", h.netns, "-batch", "-"], input=lines.encode(), capture_output=True, timeout=60)
    if proc.returncode != 0:
        raise EnvironmentProblem(f"{h.name}: cannot address its namespace: {proc.stderr.decode(errors='replace')[:200]}")
    nsenter = shutil.which("nsenter", path=HOST_PATH)
    if nsenter is None:
        raise EnvironmentProblem("`nsenter` (util-linux) is not installed")
    d = directory(p, h.name)
    return winrs_host.spawn(d, winrs_host.serve_argv(d, h.address, h.port, netns_file=ns, nsenter=nsenter))


def is_ready(p: LabPaths, h: HostState) -> bool:
    return winrs_host.ready(directory(p, h.name), h.init_pid) and procs.alive(h.init_pid, h.init_start)


def log_tail(p: LabPaths, name: str) -> str:
    return winrs_host.log_tail(directory(p, name))


def host_info(p: LabPaths, h: HostState) -> dict[str, Any]:
    cert = directory(p, h.name) / "winrm.crt"
    return {"os": "windows", "winrm_port": h.port, "winrm_scheme": "https",
            "certificate_sha256": winrs_host.certificate_fingerprint(cert) if cert.exists() else None}


def lab_info(p: LabPaths, state: LabState) -> dict[str, Any]:
    if not any(h.os == "windows" for h in state.hosts.values()):
        return {}
    win = state.windows or {}
    return {"winrm_ca_file": str(ca_cert(p)), "windows_shared_account": win.get("shared_user") or None,
            "windows_shared_password": shared_password(p),
            "windows_shared_password_file": str(shared_password_file(p)),
            "windows_msp_accounts": list(win.get("msp_users", [])),
            "windows_responder_user": win.get("responder_user"),
            "windows_responder_password_file": str(responder_password_file(p))}
