"""Shared pytest configuration."""

from __future__ import annotations

import os

import pytest


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # "No tests collected" must fail CI, not pass it.
    if exitstatus == 5:
        session.exitstatus = 1


@pytest.fixture
def irkit_home(tmp_path, monkeypatch):
    """A private $IRKIT_HOME for one test."""
    home = tmp_path / "irkit-home"
    home.mkdir()
    monkeypatch.setenv("IRKIT_HOME", str(home))
    return home


def is_root() -> bool:
    return os.geteuid() == 0


TEST_PASSPHRASE = "test passphrase"


@pytest.fixture
def signer(irkit_home, monkeypatch):
    """Responder keys in a private $IRKIT_HOME (cheap scrypt: tests only) and the loaded signing key."""
    from ir_toolkit.secrets import keystore

    monkeypatch.setenv("IRKIT_KEY_PASSPHRASE", TEST_PASSPHRASE)
    monkeypatch.setenv(keystore.TEST_SCRYPT_ENV, "10")
    keystore.init_keys(TEST_PASSPHRASE, name="acme-ctl/irkit-responder")
    return keystore.load_signing_key(TEST_PASSPHRASE)


# --------------------------------------------------------------------------- the lab
# Session-scoped fixture `lab`: a small real-sshd lab (MSP "labtest", 2 tenants x 2 hosts,
# 198.19.0.0/16, controller 198.19.0.1 unless another lab holds that block) in a private
# IRKIT_HOME. `lab_factory` makes further small labs for destructive tests. See docs/lab.md.

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

LAB_TEST_OWNER = "owner.json"


@dataclasses.dataclass
class LabHandle:
    """A running lab: ``inventory_path``, ``home`` (its IRKIT_HOME), ``info`` (``lab info`` JSON)."""

    msp: str
    inventory_path: Path
    home: Path
    info: dict

    @property
    def lab(self):
        from ir_toolkit.lab import Lab

        return Lab(self.msp, self.home / "lab" / self.msp)

    def exec(self, host: str, cmd: str, stdin: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run ``sh -c cmd`` on ``host`` out of band (same code as ``irkit lab exec``); bytes out."""
        return self.lab.exec(host, ["/bin/sh", "-c", cmd], input=stdin, timeout=timeout)

    def irkit(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run the irkit CLI with this lab's IRKIT_HOME (text output)."""
        return run_irkit(self.home, *args, timeout=timeout)

    def refresh(self) -> dict:
        """Re-read ``lab info`` (e.g. after a reimage changed host keys)."""
        proc = self.irkit("lab", "info", "--inventory", str(self.inventory_path), "--format", "json")
        assert proc.returncode == 0, proc.stderr
        self.info = json.loads(proc.stdout)
        return self.info

    def down(self) -> None:
        proc = self.irkit("lab", "down", "--inventory", str(self.inventory_path), "--purge")
        assert proc.returncode == 0, proc.stderr


def run_irkit(home: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "IRKIT_HOME": str(home)}
    env.pop("IRKIT_INVENTORY", None)
    return subprocess.run([sys.executable, "-m", "ir_toolkit", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=Path(__file__).resolve().parents[1])


def lab_leftovers(lab_id: str, lab_dir: Path) -> list[str]:
    """Everything of a lab that still exists on the machine."""
    left = []
    if Path("/run/netns").exists():
        left += [f"netns {n}" for n in os.listdir("/run/netns") if n.startswith(f"irk-{lab_id}-")]
    left += [f"link {n}" for n in os.listdir("/sys/class/net") if n.startswith(f"irk{lab_id}")]
    for line in Path("/proc/self/mounts").read_text().splitlines():
        target = line.split()[1]
        if str(lab_dir) in target or f"irk-{lab_id}-" in target:
            left.append(f"mount {target}")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            status = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if status[status.rfind(")") + 2] in "ZX":
            continue
        if str(lab_dir) in cmdline or f"irk-{lab_id}-" in cmdline:
            left.append(f"process {pid} {cmdline[:80]}")
    return left


def _lab_skip_reason() -> str | None:
    import shutil

    if not is_root():
        return "the lab needs root (network namespaces)"
    for tool in ("ip", "nsenter", "unshare", "pivot_root", "perl"):
        if not shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin"):
            return f"the lab needs `{tool}`"
    if not os.path.exists("/usr/sbin/sshd"):
        return "the lab needs openssh-server (/usr/sbin/sshd)"
    return None


def _reap_orphan_test_labs() -> None:
    """Bring down test labs whose pytest session died (owner pid gone) without tearing down."""
    from ir_toolkit.lab import Lab, procs
    from ir_toolkit.lab.state import registered

    for entry in registered():
        lab_dir = Path(entry.get("lab_dir", ""))
        owner_file = lab_dir.parent.parent / LAB_TEST_OWNER
        try:
            owner = json.loads(owner_file.read_text())
        except (OSError, ValueError):
            continue  # not a test lab (or nothing left to go by)
        if procs.alive(owner.get("pid"), owner.get("start")):
            continue
        try:
            Lab(entry["msp"], lab_dir).down(purge=True)
        except Exception:  # noqa: BLE001 - best effort; a conflict later says what is left
            pass


class LabFactory:
    """Makes small labs in private IRKIT_HOMEs inside 198.19.0.0/16 (one free /22 block each)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.handles: list[LabHandle] = []

    def __call__(self, msp: str, *, tenants: int = 2, hosts_per_tenant: int = 2,
                 blocks: range = range(0, 256, 4), hostile: dict[str, str] | None = None,
                 up_args: tuple[str, ...] = (), directories: int = 0,
                 windows_per_tenant: int = 0) -> LabHandle:
        """``hostile``: host name -> kinds (``"bigfile,trickle"``), see ir_toolkit/lab/hostile.py;
        ``up_args``: further ``irkit lab up`` options (e.g. ``--no-host-firewall``);
        ``directories``: the first N tenants get a Samba AD DC (docs/active-directory.md);
        ``windows_per_tenant``: Windows hosts (WinRS endpoints) per tenant besides the Linux ones."""
        from ir_toolkit.lab import procs
        from ir_toolkit.lab.generate import generate_inventory, write_inventory
        from ir_toolkit.lab.netns import conflicts
        import ipaddress

        home = self.base / f"{msp}-home"
        home.mkdir(parents=True, exist_ok=True)
        (home / LAB_TEST_OWNER).write_text(json.dumps({"pid": os.getpid(), "start": procs.start_time(os.getpid())}))
        inventory = home / f"{msp}.yml"
        last = ""
        for block in blocks:
            net = ipaddress.ip_network(f"198.19.{block}.0/22")
            if conflicts(net, own_bridge=""):
                continue
            data = generate_inventory(msp=msp, tenants=tenants, hosts_per_tenant=hosts_per_tenant, base=str(net),
                                      directories=directories, windows_per_tenant=windows_per_tenant)
            write_inventory(inventory, data, force=True)
            extra = [a for name, kinds in (hostile or {}).items() for a in ("--hostile", f"{name}={kinds}")]
            proc = run_irkit(home, "lab", "up", "--inventory", str(inventory), *extra, *up_args)
            if proc.returncode == 0:
                handle = LabHandle(msp, inventory, home, {})
                self.handles.append(handle)
                handle.refresh()
                return handle
            last = proc.stderr.strip()
            run_irkit(home, "lab", "down", "--inventory", str(inventory), "--purge")
            if "already uses these addresses" not in last:
                break
        pytest.fail(f"lab {msp} did not come up: {last or 'no free 198.19.x.0/22 block'}")

    def close(self) -> None:
        for handle in reversed(self.handles):
            run_irkit(handle.home, "lab", "down", "--inventory", str(handle.inventory_path), "--purge")
        self.handles.clear()


@pytest.fixture(scope="session")
def lab_factory(tmp_path_factory):
    """``lab_factory(msp, tenants=2, hosts_per_tenant=2) -> LabHandle`` (torn down at session end;
    ``handle.down()`` earlier). Skips when not root."""
    reason = _lab_skip_reason()
    if reason:
        pytest.skip(reason)
    _reap_orphan_test_labs()
    factory = LabFactory(tmp_path_factory.mktemp("labs"))
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="session")
def lab(lab_factory):
    """The shared test lab: MSP ``labtest``, 2 tenants x 2 hosts in 198.19.0.0/16 (see docs/lab.md)."""
    return lab_factory("labtest")
