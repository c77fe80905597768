"""One lab host: its PID 1 (``init.sh``), how it is started, entered and checked.

A host is started as::

    nsenter --net=/run/netns/<netns> -- unshare --mount --uts --ipc --pid --fork \\
        --propagation private -- /bin/sh init.sh NAME MNT FSTAB ADDR/PREFIX BREACHED FIREWALL

``unshare`` (in the controller's PID namespace) forks the host's PID 1, the
init script below. It mounts a private tmpfs for the writable layer, mounts
the overlay root (``breach:host:image`` lower layers) and read-only ``/usr``
from a per-host fstab, sets the hostname and address, ``pivot_root``\\ s into
the new root (the controller's file systems are then detached), loads the
host firewall (:data:`HOST_FIREWALL`, unless the lab runs without one), starts
``sshd`` and, on a breached host, the implant from the ``/tmp`` dropper, and
reaps children forever. Every mount lives in the host's own mount namespace,
so everything disappears when its processes die.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ir_toolkit import childenv
from ir_toolkit.errors import EnvironmentProblem
from ir_toolkit.lab import procs
from ir_toolkit.lab.image import bind_dirs
from ir_toolkit.lab.layout import DROPPER_PATH, HOST_PATH, IMPLANT_PIDFILE, SSHD_PIDFILE, LabPaths
from ir_toolkit.lab.netns import netns_path
from ir_toolkit.lab.sshkeys import write_private
from ir_toolkit.lab.state import HostState

#: The lab hosts' own firewall, loaded at boot like ufw, firewalld or docker on a real server: policy
#: accept, but with ``ct state`` rules, so every flow is tracked by conntrack from its first packet.
#: Without any such rule a network namespace tracks nothing, and a flow that predates irkit's isolation
#: table then dies by accident; with it, only a correct isolation ends the flow (security review §6).
HOST_FIREWALL = """\
table inet filter {
  comment "lab host firewall (stands in for ufw/firewalld): connections are tracked"
  chain input {
    type filter hook input priority filter; policy accept;
    ct state established,related accept
    ct state invalid drop
    iif "lo" accept
    meta l4proto { icmp, ipv6-icmp } accept
    tcp dport 22 accept
  }
}
"""

INIT_SCRIPT = f"""\
#!/bin/sh
# PID 1 of an irkit lab host (see ir_toolkit/lab/host.py). Arguments:
#   NAME MNT FSTAB ADDR/PREFIX BREACHED(0|1) FIREWALL(0|1)
set -eu
name=$1 mnt=$2 fstab=$3 cidr=$4 breached=$5 firewall=${{6:-1}}
read -r hostpid _rest < /proc/self/stat
echo "irkit-lab-init: $name starting (controller pid $hostpid)"
mount -t tmpfs -o mode=0755,size=512m irklab-rw "$mnt"
mkdir "$mnt/upper" "$mnt/work" "$mnt/root"
mount --all --fstab "$fstab"
echo "$name" > /proc/sys/kernel/hostname
for f in all default eth0 lo; do
  echo 1 > /proc/sys/net/ipv6/conf/$f/disable_ipv6 2>/dev/null || true
done
printf 'link set dev lo up\\naddr replace %s dev eth0\\nlink set dev eth0 up\\n' "$cidr" | ip -batch -
cd "$mnt/root"
pivot_root . mnt
cd /
umount -l /mnt
export PATH={HOST_PATH} HOME=/root LANG=C.UTF-8
if [ "$firewall" = 1 ]; then
  nft -f - <<'IRKIT_HOST_FIREWALL'
{HOST_FIREWALL}IRKIT_HOST_FIREWALL
fi
/usr/sbin/sshd -D -E /var/log/sshd.log </dev/null >/dev/null 2>&1 &
if [ "$breached" = 1 ] && [ -x {DROPPER_PATH} ]; then
  (cd /tmp && exec {DROPPER_PATH}) </dev/null >/dev/null 2>&1 &
fi
echo "irkit-lab-init: $name ready"
exec </dev/null >/dev/null 2>&1
set +e
while :; do wait; sleep 5; done
"""


def write_init_script(paths: LabPaths) -> None:
    if not paths.init_script.exists() or paths.init_script.read_text() != INIT_SCRIPT:
        write_private(paths.init_script, INIT_SCRIPT.encode(), 0o755)


def _fstab_path(path: Path | str) -> str:
    return str(path).replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011")


def fstab(paths: LabPaths, host: HostState) -> str:
    """The host's mounts, in order (all inside its own mount namespace)."""
    mnt = paths.host_mnt(host.name)
    root = mnt / "root"
    lowers = ([str(paths.breach)] if host.breached else []) + [str(paths.host_layer(host.name)), str(paths.image)]
    opts = f"lowerdir={':'.join(lowers)},upperdir={mnt}/upper,workdir={mnt}/work"
    lines = [f"irklab-root {_fstab_path(root)} overlay {_fstab_path(opts)} 0 0"]
    lines += [f"/{d} {_fstab_path(root / d)} none bind,ro 0 0" for d in bind_dirs()]
    lines += [
        f"proc {_fstab_path(root / 'proc')} proc nosuid,nodev,noexec 0 0",
        f"sysfs {_fstab_path(root / 'sys')} sysfs ro,nosuid,nodev,noexec 0 0",
        f"devpts {_fstab_path(root / 'dev/pts')} devpts newinstance,ptmxmode=0666,mode=0620 0 0",
    ]
    return "\n".join(lines) + "\n"


class Spawner:
    """Starts host inits (``posix_spawn``, new session, clean environment)."""

    def __init__(self, paths: LabPaths) -> None:
        self.paths = paths
        tools = {}
        for tool in ("nsenter", "unshare"):
            found = shutil.which(tool, path=HOST_PATH)
            if not found:
                raise EnvironmentProblem(f"`{tool}` (util-linux) is not installed")
            tools[tool] = found
        self.nsenter = tools["nsenter"]
        self.unshare = tools["unshare"]
        self.env = {"PATH": HOST_PATH, "LANG": "C.UTF-8"}

    def start(self, host: HostState, prefixlen: int) -> int:
        """Start ``host``; returns the pid of its ``unshare`` process."""
        mnt = self.paths.host_mnt(host.name)
        mnt.mkdir(parents=True, exist_ok=True)
        fstab_file = self.paths.host_fstab(host.name)
        fstab_file.write_text(fstab(self.paths, host))
        argv = [
            self.nsenter, f"--net={netns_path(host.netns)}", "--",
            self.unshare, "--mount", "--uts", "--ipc", "--pid", "--fork", "--propagation", "private", "--",
            "/bin/sh", str(self.paths.init_script), host.name[:64], str(mnt), str(fstab_file),
            f"{host.address}/{prefixlen}", "1" if host.breached else "0", "1" if host.firewall else "0",
        ]
        log = str(self.paths.host_log(host.name))
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ]
        procs.no_inherit()  # no controller descriptor (e.g. a flock) lives on in the host
        return childenv.spawn(self.nsenter, argv, self.env, file_actions=actions, setsid=True)


def find_init(spawn_pid: int) -> int | None:
    """The host's PID 1 (the only child of its unshare process)."""
    kids = procs.children(spawn_pid)
    return kids[0] if kids else None


def _alive_by_pidfile(root: Path, pidfile: str) -> bool:
    try:
        nspid = int((root / pidfile.lstrip("/")).read_text().split()[0])
        stat = (root / "proc" / str(nspid) / "stat").read_text()
    except (OSError, ValueError, IndexError):
        return False
    return stat[stat.rfind(")") + 2:][:1] not in ("Z", "X", "")


def probe(init_pid: int) -> dict[str, bool]:
    """Cheap health check through ``/proc/PID/root``: has the host pivoted into its own root, and
    are sshd and the implant alive (their pid files point at live processes in the host)?

    sshd writes its pid file only after it listens; the implant likewise. (Reading
    ``/proc/PID/net/tcp`` would be exact but costs ~10 ms per host.)
    """
    root = Path(f"/proc/{init_pid}/root")
    try:
        pivoted = os.stat(root).st_dev != os.stat("/").st_dev
    except OSError:
        pivoted = False
    if not pivoted:
        return {"root": False, "sshd": False, "implant": False}
    return {"root": True, "sshd": _alive_by_pidfile(root, SSHD_PIDFILE),
            "implant": _alive_by_pidfile(root, IMPLANT_PIDFILE)}


def log_tail(paths: LabPaths, name: str, lines: int = 3) -> str:
    try:
        text = paths.host_log(name).read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"


def exec_env() -> dict[str, str]:
    """The environment of a command run in a host: nothing from the controller's."""
    return {"PATH": HOST_PATH, "HOME": "/root", "USER": "root", "LOGNAME": "root", "SHELL": "/bin/bash",
            "LANG": "C.UTF-8", "TERM": os.environ.get("TERM", "dumb")}


def exec_argv(init_pid: int, argv: list[str]) -> list[str]:
    nsenter = shutil.which("nsenter", path=HOST_PATH) or "nsenter"
    return [nsenter, "--target", str(init_pid), "--all", "--root", "--wd", "--", *argv]


def run_in_host(init_pid: int, argv: list[str], *, input: bytes | None = None, capture: bool = True,
                timeout: float | None = None) -> childenv.CompletedProcess[bytes]:
    """Run ``argv`` inside a host (all its namespaces, its root), like a console."""
    return childenv.run(
        exec_argv(init_pid, argv), input=input, env=exec_env(), inherit=False, timeout=timeout,
        stdout=childenv.PIPE if capture else None, stderr=childenv.PIPE if capture else None,
    )
