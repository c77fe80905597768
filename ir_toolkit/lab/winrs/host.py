"""A lab Windows host: its files, how its WinRM endpoint is started in its network namespace.

Per host, under ``hosts/<name>/winrs/``: ``model.json`` (the Windows state), ``ntlm_users``
(NT hashes for the NTLM acceptor), ``winrm.crt``/``winrm.key`` (issued by the lab CA),
``ready`` (the endpoint's pid once it listens) and ``endpoint.log``. The endpoint is
``python -m ir_toolkit.lab.winrs serve`` entered into the host's netns with ``nsenter --net``
(no fork: the recorded pid IS the endpoint), with a clean environment.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import ir_toolkit
from ir_toolkit import childenv
from ir_toolkit.lab.winrs import ca
from ir_toolkit.lab.winrs.model import WindowsModel, seed

DIR = "winrs"


def host_dir(hosts_root: Path, name: str) -> Path:
    return hosts_root / name / DIR


def prepare(directory: Path, *, ca_cert: Path, ca_key: Path, name: str, address: str, responder_user: str,
            responder_password: str, shared_user: str, shared_password: str, msp_users: list[str],
            breached: bool, epoch: int, reset: bool = False, new_certificate: bool = False) -> str:
    """Create (or with ``reset``, re-seed) the host's model; issue its certificate if missing or asked.
    Returns the certificate's SHA-256 fingerprint."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    model_path = directory / "model.json"
    if reset or not model_path.exists():
        WindowsModel.create(model_path, seed(name, responder_user=responder_user,
                                             responder_password=responder_password, shared_user=shared_user,
                                             shared_password=shared_password, msp_users=msp_users,
                                             breached=breached, epoch=epoch))
    cert, key = directory / "winrm.crt", directory / "winrm.key"
    if new_certificate or not cert.exists() or not key.exists():
        return ca.issue(ca_cert, ca_key, name, address, cert, key)
    return certificate_fingerprint(cert)


def certificate_fingerprint(cert: Path) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    return x509.load_pem_x509_certificate(cert.read_bytes()).fingerprint(hashes.SHA256()).hex()


def serve_argv(directory: Path, address: str, port: int, *, netns_file: Path | None, nsenter: str | None,
               firewall: bool = True) -> list[str]:
    argv = [sys.executable, "-m", "ir_toolkit.lab.winrs", "serve", "--dir", str(directory), "--address", address,
            "--port", str(port), "--ready-file", str(directory / "ready")]
    if not firewall:
        argv.append("--no-firewall")
    if netns_file is not None:
        assert nsenter is not None
        argv = [nsenter, f"--net={netns_file}", "--", *argv]
    return argv


def serve_env() -> dict[str, str]:
    package_root = str(Path(ir_toolkit.__file__).resolve().parent.parent)
    return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
            "PYTHONPATH": package_root, "PYTHONDONTWRITEBYTECODE": "1"}


def spawn(directory: Path, argv: list[str]) -> int:
    """Start the endpoint (new session, stdout/stderr to ``endpoint.log``); returns its pid."""
    (directory / "ready").unlink(missing_ok=True)
    log = str(directory / "endpoint.log")
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    return childenv.spawn(argv[0], argv, serve_env(), file_actions=actions, setsid=True)


def ready(directory: Path, pid: int | None) -> bool:
    """The endpoint wrote its ready file (it listens) and it is the recorded process."""
    try:
        return pid is not None and int((directory / "ready").read_text().split()[0]) == pid
    except (OSError, ValueError, IndexError):
        return False


def log_tail(directory: Path, lines: int = 3) -> str:
    try:
        text = (directory / "endpoint.log").read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"


def port_open(address: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False
