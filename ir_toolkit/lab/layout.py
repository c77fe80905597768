"""Where a lab keeps its files, and how its kernel objects are named.

Everything of one lab lives under ``$IRKIT_HOME/lab/<msp>/`` (see
:func:`ir_toolkit.home.lab_dir`)::

    state.json               what exists (written BEFORE each resource is made)
    .lock                    flock: one up/down/reimage at a time
    known_hosts              pinned host keys of every lab host (OpenSSH format)
    responder_ed25519[.pub]  irkit's own responder key (root on every host)
    msp_shared_ed25519[.pub] the MSP's leaked shared key (seeded on every host)
    msp_shared_password      the leaked shared ``mspadmin`` password (0600)
    init.sh                  the PID 1 of every lab host
    image/                   lower layer: a clean, provisioned OS image
    breach/                  lower layer: the seeded MSP compromise
    hosts/<name>/            per host: host key, lower layer, fstab, mount point, log

Kernel objects get names derived from a short hash of the MSP name and the lab
directory, so two labs (another MSP, or the same MSP under another
``$IRKIT_HOME``) never share a name: bridge ``irk<id>br``, root-side veth
``irk<id>h<slot>`` (both within IFNAMSIZ, 15 characters) and network namespace
``irk-<id>-<host>``.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

ATTACKER_ADDRESS = "203.0.113.66"
"""The attacker's address in seeded logs and histories (TEST-NET-3: text only, never contacted)."""
IMPLANT_PORT = 4444
DROPPER_PATH = "/tmp/.kworkerd"
IMPLANT_BANNER = b"kworkerd 2.1 ready\n"
IMPLANT_PIDFILE = "/run/.kworkerd.pid"
SSHD_PIDFILE = "/run/sshd.pid"
PERSISTENCE_UNIT = "kworker-sync.service"
MSP_ACCOUNT = "mspadmin"
MSP_UID = 1001
LAB_RANGE = ipaddress.ip_network("198.18.0.0/15")
IFNAMSIZ = 15
MAX_SLOT = 99999
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NETNS_DIR = Path("/run/netns")
REGISTRY_DIR = Path("/run/irkit/labs")
"""Machine-wide list of running labs (tmpfs: gone at reboot, like the labs)."""


def lab_id(msp: str, root: Path) -> str:
    """Six hex digits naming this lab's kernel objects."""
    text = f"{msp}\0{root.resolve()}"
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def bridge_name(lid: str) -> str:
    return f"irk{lid}br"


def veth_name(lid: str, slot: int) -> str:
    if not 0 <= slot <= MAX_SLOT:
        raise ValueError(f"host slot {slot} out of range")
    return f"irk{lid}h{slot}"


def netns_name(lid: str, host: str, slot: int) -> str:
    return f"irk-{lid}-{host}" if len(host) <= 64 else f"irk-{lid}-h{slot}"


@dataclass(frozen=True)
class LabPaths:
    """The files of one lab (nothing is created by constructing this)."""

    root: Path

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    @property
    def responder_key(self) -> Path:
        return self.root / "responder_ed25519"

    @property
    def msp_key(self) -> Path:
        return self.root / "msp_shared_ed25519"

    @property
    def password_file(self) -> Path:
        return self.root / "msp_shared_password"

    @property
    def init_script(self) -> Path:
        return self.root / "init.sh"

    @property
    def image(self) -> Path:
        return self.root / "image"

    @property
    def breach(self) -> Path:
        return self.root / "breach"

    @property
    def hosts(self) -> Path:
        return self.root / "hosts"

    def host_dir(self, name: str) -> Path:
        return self.hosts / name

    def host_key(self, name: str) -> Path:
        return self.host_dir(name) / "ssh_host_ed25519_key"

    def host_layer(self, name: str) -> Path:
        return self.host_dir(name) / "layer"

    def host_fstab(self, name: str) -> Path:
        return self.host_dir(name) / "fstab"

    def host_mnt(self, name: str) -> Path:
        return self.host_dir(name) / "mnt"

    def host_log(self, name: str) -> Path:
        return self.host_dir(name) / "init.log"


def check_path_usable(root: Path) -> None:
    """Overlay and fstab syntax cannot carry some characters in paths."""
    from ir_toolkit.errors import EnvironmentProblem

    bad = set(str(root.resolve())) & set(",:\\ \t\n=")
    if bad:
        raise EnvironmentProblem(
            f"the lab directory {root} contains {''.join(sorted(bad))!r}, which overlay mounts "
            "cannot use; set IRKIT_HOME to a plain path"
        )
