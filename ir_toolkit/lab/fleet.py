"""The lab as a whole: ``up``, ``down``, ``status``, ``info``, ``exec`` and ``reimage``.

:class:`Lab` is the one entry point the CLI, the pytest fixture and later
parts of irkit (the ``lab`` reimage provider) use. Every method that changes
anything holds the lab's lock, records intent in ``state.json`` before it
creates a resource, and removes only what is recorded.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ir_toolkit import childenv
from ir_toolkit.errors import EnvironmentProblem, InputError, VerificationFailed
from ir_toolkit.home import lab_dir
from ir_toolkit.inventory.model import Inventory
from ir_toolkit.lab import agentlab, dc, netns, procs
from ir_toolkit.lab.host import Spawner, find_init, log_tail, probe, run_in_host, write_init_script
from ir_toolkit.lab.image import build_image, image_is_current, marker_path
from ir_toolkit.lab.layout import (
    ATTACKER_ADDRESS,
    DROPPER_PATH,
    HOST_PATH,
    IMPLANT_PORT,
    MSP_ACCOUNT,
    PERSISTENCE_UNIT,
    LabPaths,
    bridge_name,
    check_path_usable,
    lab_id,
    netns_name,
    veth_name,
)
from ir_toolkit.lab.plan import LabPlan, assign_slots, plan_lab
from ir_toolkit.lab.seed import breach_is_current, breach_marker, build_breach, write_host_layer
from ir_toolkit.lab.sshkeys import (
    ensure_keypair,
    ensure_password,
    fingerprint,
    known_hosts_line,
    read_public,
    sha512_crypt,
    write_private,
)
from ir_toolkit.lab.state import HostState, LabState, load_state, locked, machine_lock, register, unregister
from ir_toolkit.lab.winrs import labhosts
from ir_toolkit.log import get_logger

REQUIRED_TOOLS = {
    "ip": "iproute2", "nsenter": "util-linux", "unshare": "util-linux", "mount": "mount",
    "umount": "mount", "pivot_root": "util-linux", "sshd": "openssh-server", "perl": "perl-base",
    "nft": "nftables",
}
ROOT_MESSAGE = "the lab needs root (network namespaces); run as root"


def _log() -> Any:
    return get_logger("irkit.lab")


def require_root() -> None:
    if os.geteuid() != 0:
        raise EnvironmentProblem(ROOT_MESSAGE)


def check_tools() -> None:
    missing = [f"{tool} ({pkg})" for tool, pkg in REQUIRED_TOOLS.items() if not shutil.which(tool, path=HOST_PATH)]
    if missing:
        raise EnvironmentProblem("the lab needs these tools: " + ", ".join(missing) + "; install them (apt-get install)")


@dataclass
class UpResult:
    msp: str
    started: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    network: str = ""
    bridge: str = ""
    controller_address: str = ""

    #: tenants whose domain controller was (re)started (docs/active-directory.md)
    directories_started: list[str] = field(default_factory=list)
    #: tenants whose agent was (re)started, and whether the broker was (docs/scaling.md)
    agents_started: list[str] = field(default_factory=list)
    broker_started: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.started or self.removed or self.directories_started or self.agents_started
                    or self.broker_started)


@dataclass
class DownResult:
    msp: str
    stopped: int = 0
    was_up: bool = False
    purged: bool = False
    kept_keys: bool = True


class Lab:
    """The lab of one MSP, in ``root`` (default ``$IRKIT_HOME/lab/<msp>``)."""

    def __init__(self, msp: str, root: Path | None = None) -> None:
        self.msp = msp
        self.paths = LabPaths((root or lab_dir(msp)).absolute())
        self.lab_id = lab_id(msp, self.paths.root)

    # ------------------------------------------------------------------ reading
    def state(self) -> LabState | None:
        return load_state(self.paths.state)

    def _require_state(self) -> LabState:
        state = self.state()
        if state is None:
            raise InputError(f"the lab of MSP {self.msp} is not up (no state in {self.paths.root}); "
                             f"run `irkit lab up --msp {self.msp}`")
        return state

    def host(self, name: str) -> HostState:
        state = self._require_state()
        if name not in state.hosts:
            names = ", ".join(sorted(state.hosts)[:8]) + (" ..." if len(state.hosts) > 8 else "")
            raise InputError(f"no host {name!r} in the lab of MSP {self.msp} (hosts: {names})")
        return state.hosts[name]

    def info(self) -> dict[str, Any]:
        """What tests and responders need to use the lab (includes the lab's shared password)."""
        state = self._require_state()
        p = self.paths
        password = p.password_file.read_text().strip() if p.password_file.exists() else None
        msp_pub = read_public(p.msp_key) if p.msp_key.exists() else None
        hosts = []
        for h in sorted(state.hosts.values(), key=lambda h: h.slot):
            pub = p.host_key(h.name).with_name("ssh_host_ed25519_key.pub")
            hosts.append({
                "tenant": h.tenant, "name": h.name, "address": h.address, "port": h.port,
                "os": h.os,
                "host_key_fingerprint": fingerprint(pub.read_text()) if pub.exists() and h.os == "linux" else None,
                "pid": h.init_pid, "netns": h.netns, "breached": h.breached, "host_firewall": h.firewall,
                "running": procs.alive(h.init_pid, h.init_start),
                **(labhosts.host_info(p, h) if h.os == "windows" else {}),
            })
        return {
            "msp": state.msp,
            "lab_id": state.lab_id,
            "lab_dir": str(p.root),
            "inventory": state.inventory,
            "msp_private_key": str(p.msp_key),
            "msp_public_key": msp_pub,
            "msp_key_fingerprint": fingerprint(msp_pub) if msp_pub else None,
            "msp_shared_account": MSP_ACCOUNT,
            "msp_shared_password": password,
            "msp_shared_password_file": str(p.password_file),
            "responder_private_key": str(p.responder_key),
            "responder_user": state.responder_user,
            "controller_address": state.controller_address,
            "network": state.network,
            "bridge": state.bridge,
            "known_hosts": str(p.known_hosts),
            "attacker_address": ATTACKER_ADDRESS,
            "implant_port": IMPLANT_PORT,
            "dropper_path": DROPPER_PATH,
            "persistence_unit": PERSISTENCE_UNIT,
            **labhosts.lab_info(p, state),
            **agentlab.info(self, state.inventory),
            "hosts": hosts,
            "directories": dc.info(self, self._inventory(state), password),
        }

    def _inventory(self, state: LabState) -> Inventory | None:
        from ir_toolkit.inventory.loader import load_inventory

        try:
            return load_inventory(state.inventory)
        except Exception:  # noqa: BLE001 - info works without it (no MSP account names then)
            return None

    def status(self) -> list[dict[str, Any]]:
        """Per host: is its init alive, is its sshd alive, is the implant alive."""
        state = self._require_state()
        rows = []
        for h in sorted(state.hosts.values(), key=lambda h: h.slot):
            up = procs.alive(h.init_pid, h.init_start)
            if h.os == "windows":
                health = {"sshd": labhosts.is_ready(self.paths, h), "implant": False}
            else:
                health = probe(h.init_pid) if up and h.init_pid else {"sshd": False, "implant": False}
            rows.append({
                "tenant": h.tenant, "name": h.name, "address": h.address, "pid": h.init_pid,
                "init": "alive" if up else "dead",
                "sshd": "alive" if health["sshd"] else "down",
                "implant": "alive" if health["implant"] else ("gone" if h.breached and h.os == "linux" else "-"),
                "ok": up and health["sshd"],
            })
        return rows

    def exec(self, host: str, argv: list[str], *, input: bytes | None = None, capture: bool = True,
             timeout: float | None = None) -> childenv.CompletedProcess[bytes]:
        """Run ``argv`` on ``host`` out of band (works when the host is network-isolated)."""
        require_root()
        h = self.host(host)
        if not procs.alive(h.init_pid, h.init_start):
            raise EnvironmentProblem(f"lab host {host} is not running; run `irkit lab up --msp {self.msp}`")
        assert h.init_pid is not None
        return run_in_host(h.init_pid, argv, input=input, capture=capture, timeout=timeout)

    # ------------------------------------------------------------------ up
    def up(self, inv: Inventory, inventory_path: Path | str, *, host_firewall: bool = True,
           agents: bool | None = None, agent_command: Any = None,
           agent_visibility_timeout: int = agentlab.agentmod.VISIBILITY_TIMEOUT) -> UpResult:
        """Make the running lab match the inventory; a second run changes nothing. With
        ``host_firewall`` (the default) every host loads a connection-tracking firewall at boot.
        ``agents``: True starts the broker and one supervised agent per tenant (``agent_command``
        builds its argv, default ``irkit agent``), False stops them, None keeps them as they are."""
        require_root()
        check_tools()
        if inv.msp.name != self.msp:
            raise InputError(f"inventory is for MSP {inv.msp.name!r}, not {self.msp!r}")
        plan = plan_lab(inv)
        check_path_usable(self.paths.root)
        self.paths.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        t0 = time.monotonic()
        with locked(self.paths.lock, f"the lab of MSP {self.msp}"):
            self._approver_keys(inv)
            result = self._up(plan, str(Path(inventory_path).absolute()), host_firewall)
            password = self.paths.password_file.read_text().strip()
            result.directories_started = dc.ensure(self, inv, plan.prefixlen, bridge_name(self.lab_id), password,
                                                   result.notes)
            if agents:
                result.broker_started, result.agents_started = agentlab.ensure(
                    self, inv, Path(inventory_path), plan, bridge_name(self.lab_id), result.notes, agent_command,
                    agent_visibility_timeout)
            elif agents is False:
                agentlab.down(self)
        result.seconds = time.monotonic() - t0
        return result

    def _approver_keys(self, inv: Inventory) -> None:
        """Key pairs for the inventory's approvers whose approval_key is a file in this lab's approvers/."""
        from ir_toolkit.lab.sshkeys import ensure_approver_key
        from ir_toolkit.secrets.references import expand_path

        folder = (self.paths.root / "approvers").absolute()
        for contact in (*inv.msp.contacts, *(c for t in inv.tenants for c in t.contacts)):
            ref = contact.approval_key or ""
            if contact.approver and ref.startswith("file:"):
                path = expand_path(ref[len("file:"):]).absolute()
                if path.parent == folder and path.suffix == ".vkey":
                    ensure_approver_key(path, contact.name)

    def _up(self, plan: LabPlan, inventory_path: str, host_firewall: bool = True) -> UpResult:
        p = self.paths
        old = self.state()
        result = UpResult(self.msp, network=str(plan.network), controller_address=plan.controller_address,
                          bridge=bridge_name(self.lab_id))
        if plan.skipped:
            result.notes.append(f"{len(plan.skipped)} Windows/WinRM hosts are not part of the lab: "
                                + ", ".join(plan.skipped[:5]) + (" ..." if len(plan.skipped) > 5 else ""))
        responder_pub, _ = ensure_keypair(p.responder_key, f"irkit-responder@{self.msp}-lab")
        msp_pub, _ = ensure_keypair(p.msp_key, f"{self.msp}-msp-shared-2019")
        password, _ = ensure_password(p.password_file)
        p.hosts.mkdir(exist_ok=True, mode=0o700)
        if plan.windows is not None:
            labhosts.ensure_files(p, self.msp)
        new_keys = set()
        for ph in plan.hosts:
            p.host_dir(ph.name).mkdir(exist_ok=True, mode=0o700)
            if ph.os == "linux" and ensure_keypair(p.host_key(ph.name), f"root@{ph.name}")[1]:
                new_keys.add(ph.name)

        epoch = old.breach_epoch if old and old.breach_epoch else (int(time.time()) // 3600 - 72) * 3600
        marker = breach_marker(msp_pub, responder_pub, password, epoch)
        layers_ok = image_is_current(p.image, responder_pub) and breach_is_current(p.breach, marker)
        bridge = bridge_name(self.lab_id)
        bridge_cidr = f"{plan.controller_address}/{plan.prefixlen}"
        bridge_ok = bool(old and old.bridge == bridge and old.bridge_status == "up"
                         and old.network == str(plan.network)
                         and netns.bridge_address(bridge) == bridge_cidr)

        previous_slots = {n: h.slot for n, h in old.hosts.items()} if old else {}
        slots = assign_slots([h.name for h in plan.hosts], previous_slots)
        desired: dict[str, HostState] = {}
        for ph in plan.hosts:
            prior = old.hosts.get(ph.name) if old else None
            desired[ph.name] = HostState(
                name=ph.name, tenant=ph.tenant, slot=slots[ph.name], address=ph.address, port=ph.port,
                netns=netns_name(self.lab_id, ph.name, slots[ph.name]),
                veth=veth_name(self.lab_id, slots[ph.name]),
                breached=prior.breached if prior else True, firewall=host_firewall, os=ph.os,
            )
        keep: dict[str, HostState] = {}
        if old and layers_ok and bridge_ok:
            for name, h in old.hosts.items():
                want = desired.get(name)
                if (want is not None and h.status == "running" and h.config() == want.config()
                        and name not in new_keys and procs.alive(h.init_pid, h.init_start)
                        and netns.netns_path(h.netns).exists() and h.init_pid
                        and self._serving(h)):
                    keep[name] = h
        stale = [h for n, h in (old.hosts.items() if old else []) if n not in keep]
        result.kept = sorted(keep)
        result.removed = sorted(n for n in (old.hosts if old else {}) if n not in desired)
        if old and not stale and len(keep) == len(desired):
            if old.inventory != inventory_path or old.responder_user != plan.responder_user:
                old.inventory, old.responder_user = inventory_path, plan.responder_user
                old.save(p.state)
            if not p.known_hosts.exists():
                self._write_known_hosts(old)
            return result

        # 1. remove what is stale (dead hosts, changed hosts, hosts gone from the inventory)
        if old:
            self._stop_hosts(old, stale)
            for h in stale:
                del old.hosts[h.name]
            if not bridge_ok:
                self._delete_bridge(old)
            old.save(p.state)

        # 2. layers (never rebuilt under a running host: keep is empty when they change)
        write_init_script(p)
        if not layers_ok:
            build_image(p.image, responder_pub)
            build_breach(p.breach, msp_public=msp_pub, responder_public=responder_pub,
                         password_hash=sha512_crypt(password), epoch=epoch, marker=marker)

        # 3. intent, then the network (one ip batch)
        to_start = [desired[n] for n in desired if n not in keep]
        state = LabState(msp=self.msp, lab_id=self.lab_id, inventory=inventory_path, network=str(plan.network),
                         controller_address=plan.controller_address, bridge=bridge,
                         responder_user=plan.responder_user,
                         bridge_status="up" if bridge_ok else "intent", breach_epoch=epoch,
                         windows=dataclasses.asdict(plan.windows) if plan.windows else None)
        state.hosts = {**keep, **{h.name: h for h in to_start}}
        lines: list[str] = []
        with machine_lock():
            if not bridge_ok:
                netns.require_free(plan.network, bridge)
            state.save(p.state)
            register(state, p.root)
            if not bridge_ok:
                lines += netns.delete_lines([], [], bridge)
                lines += netns.bridge_lines(bridge, plan.controller_address, plan.prefixlen)
            for h in to_start:
                lines += netns.host_lines(h.netns, h.veth, bridge)
            netns.ip_batch(lines)
        state.bridge_status = "up"
        note = netns.ensure_neighbour_capacity(len(state.hosts))
        if note:
            result.notes.append(note)

        # 4. hosts
        self._start_hosts(state, to_start, plan.prefixlen, msp_pub)
        result.started = sorted(h.name for h in to_start)
        return result

    def _serving(self, h: HostState) -> bool:
        """Is the host's service up (sshd, or a Windows host's WinRS endpoint)?"""
        if h.os == "windows":
            return labhosts.is_ready(self.paths, h)
        return bool(h.init_pid) and probe(h.init_pid)["sshd"]  # type: ignore[arg-type]

    def _start_hosts(self, state: LabState, hosts: list[HostState], prefixlen: int, msp_pub: str) -> None:
        p = self.paths
        msp_fp = fingerprint(msp_pub)
        windows = [h for h in hosts if h.os == "windows"]
        hosts_all, hosts = hosts, [h for h in hosts if h.os != "windows"]
        for h in windows:
            h.spawn_pid = h.init_pid = labhosts.start(p, state, h, prefixlen)
            h.spawn_start = h.init_start = procs.start_time(h.spawn_pid)
        for h in hosts:
            write_host_layer(p.host_layer(h.name), name=h.name, address=h.address, port=h.port,
                             host_key=p.host_key(h.name), breached=h.breached,
                             epoch=state.breach_epoch, msp_fingerprint=msp_fp)
        spawner = Spawner(p)
        for h in hosts:
            h.spawn_pid = spawner.start(h, prefixlen)
            h.spawn_start = procs.start_time(h.spawn_pid)
        state.save(p.state)
        failures = self._wait_ready(hosts_all)
        state.save(p.state)
        self._write_known_hosts(state)
        if failures:
            shown = "; ".join(f"{n}: {why}" for n, why in sorted(failures.items())[:3])
            raise VerificationFailed(
                f"{len(failures)} of {len(hosts_all)} lab hosts did not start ({shown}); "
                f"logs in {p.hosts}/<host>/init.log; `irkit lab down --msp {self.msp}` cleans up"
            )

    def _wait_ready(self, hosts: list[HostState]) -> dict[str, str]:
        pending = {h.name: h for h in hosts}
        failures: dict[str, str] = {}
        deadline = time.monotonic() + 30 + 0.1 * len(hosts)
        while pending and time.monotonic() < deadline:
            for name, h in list(pending.items()):
                if h.os == "windows":
                    if labhosts.is_ready(self.paths, h):
                        h.status = "running"
                        del pending[name]
                    elif not procs.alive(h.init_pid, h.init_start):
                        failures[name] = labhosts.log_tail(self.paths, name)
                        del pending[name]
                    continue
                if h.init_pid is None:
                    assert h.spawn_pid is not None
                    h.init_pid = find_init(h.spawn_pid)
                    if h.init_pid is None:
                        if not procs.alive(h.spawn_pid, h.spawn_start):
                            failures[name] = log_tail(self.paths, name)
                            del pending[name]
                        continue
                    h.init_start = procs.start_time(h.init_pid)
                if not procs.alive(h.init_pid, h.init_start):
                    failures[name] = log_tail(self.paths, name)
                    del pending[name]
                    continue
                health = probe(h.init_pid)
                if health["sshd"] and (health["implant"] or not h.breached):
                    h.status = "running"
                    del pending[name]
            if pending:
                time.sleep(0.05)
        for name, h in pending.items():
            tail = labhosts.log_tail(self.paths, name) if h.os == "windows" else log_tail(self.paths, name)
            failures[name] = "not listening in time: " + tail
        return failures

    def _write_known_hosts(self, state: LabState) -> None:
        lines = [f"# irkit lab {self.msp}: pinned host keys (written by `irkit lab up`)"]
        for h in sorted(state.hosts.values(), key=lambda h: h.slot):
            pub = self.paths.host_key(h.name).with_name("ssh_host_ed25519_key.pub")
            if pub.exists():
                lines.append(known_hosts_line(h.address, h.port, pub.read_text()))
        write_private(self.paths.known_hosts, ("\n".join(lines) + "\n").encode(), 0o644)

    # ------------------------------------------------------------------ teardown
    def _stop_hosts(self, state: LabState, hosts: list[HostState]) -> None:
        """Kill every process of ``hosts`` (by netns identity and recorded pid), delete netns + veth."""
        if not hosts:
            return
        by_inode = {}
        for h in hosts:
            ino = netns.netns_inode(h.netns)
            if ino is not None:
                by_inode[ino] = h
        members = procs.netns_members(set(by_inode))
        pids = {pid for group in members.values() for pid in group}
        for h in hosts:
            for pid, start in ((h.init_pid, h.init_start), (h.spawn_pid, h.spawn_start)):
                if pid and procs.alive(pid, start):
                    pids.add(pid)
        left = procs.kill_and_wait(pids)
        procs.reap(h.spawn_pid for h in hosts if h.spawn_pid)
        if left:
            raise EnvironmentProblem(f"lab processes did not exit after SIGKILL: {left[:10]}")
        # Deleting a namespace destroys its veth pair (asynchronously, in one batch in the
        # kernel): 200 hosts take ~0.3 s this way, ~4 s with one `link del` per veth.
        netns.ip_batch(netns.delete_lines([h.netns for h in hosts], []), force=True)
        deadline = time.monotonic() + 10
        while any(netns.link_exists(h.veth) for h in hosts) and time.monotonic() < deadline:
            time.sleep(0.02)
        netns.ip_batch(netns.delete_lines([], [h.veth for h in hosts]), force=True)
        still = [h.netns for h in hosts if netns.netns_path(h.netns).exists()]
        still += [h.veth for h in hosts if netns.link_exists(h.veth)]
        if still:
            raise EnvironmentProblem(f"could not delete lab network objects: {', '.join(still[:10])}")
        self._umount_leftovers([h.netns for h in hosts])
        for h in hosts:
            h.status = "stopped"
            for path in (self.paths.host_layer(h.name), self.paths.host_mnt(h.name)):
                shutil.rmtree(path, ignore_errors=True)
            self.paths.host_fstab(h.name).unlink(missing_ok=True)

    def _umount_leftovers(self, netns_names: list[str]) -> None:
        """Unmount anything of this lab still mounted in the controller's namespace (normally none)."""
        root = str(self.paths.root) + "/"
        ours = {str(netns.netns_path(n)) for n in netns_names}
        targets = []
        for line in Path("/proc/self/mounts").read_text().splitlines():
            target = line.split()[1].replace("\\040", " ")
            if target.startswith(root) or target in ours:
                targets.append(target)
        for target in reversed(targets):
            childenv.run(["umount", "-l", target], capture_output=True)

    def _delete_bridge(self, state: LabState) -> None:
        with machine_lock():
            netns.ip_batch(netns.delete_lines([], [], state.bridge), force=True)
        if netns.link_exists(state.bridge):
            raise EnvironmentProblem(f"could not delete the lab bridge {state.bridge}")
        state.bridge_status = "absent"

    def down(self, *, purge: bool = False) -> DownResult:
        """Remove every recorded namespace, interface, mount and process; keep keys unless ``purge``."""
        require_root()
        result = DownResult(self.msp, purged=purge, kept_keys=not purge)
        if not self.paths.root.exists():
            return result
        with locked(self.paths.lock, f"the lab of MSP {self.msp}"):
            state = self.state()
            agentlab.down(self)
            dc.down(self)
            if state is not None:
                result.was_up = True
                result.stopped = len(state.hosts)
                self._stop_hosts(state, list(state.hosts.values()))
                state.hosts = {}
                state.save(self.paths.state)
                self._delete_bridge(state)
                unregister(state.lab_id)
                self.paths.state.unlink()
            self._umount_leftovers([])
            for layer in (self.paths.image, self.paths.breach):
                for path in (layer, layer.with_name(layer.name + ".new")):
                    shutil.rmtree(path, ignore_errors=True)
                marker_path(layer).unlink(missing_ok=True)
            self.paths.init_script.unlink(missing_ok=True)
            if self.paths.hosts.exists():
                for host_dir in self.paths.hosts.iterdir():
                    for name in ("layer", "mnt"):
                        shutil.rmtree(host_dir / name, ignore_errors=True)
                    for name in ("fstab", "init.log"):
                        (host_dir / name).unlink(missing_ok=True)
            if purge:
                shutil.rmtree(self.paths.root)
        return result

    # ------------------------------------------------------------------ reimage
    def reimage(self, host: str, *, breached: bool = False, new_host_key: bool = True) -> dict[str, Any]:
        """Rebuild one host from the clean image: fresh writable layer and network stack, a new
        host key (recorded in known_hosts), no breach (unless ``breached``). Returns its info."""
        require_root()
        with locked(self.paths.lock, f"the lab of MSP {self.msp}", wait=True):
            state = self._require_state()
            self.host(host)
            h = state.hosts[host]
            if state.bridge_status != "up" or not netns.link_exists(state.bridge):
                raise EnvironmentProblem(f"the lab of MSP {self.msp} is not up; run `irkit lab up`")
            self._stop_hosts(state, [h])
            if h.os == "windows":  # a clean model (no breach) and a new certificate from the lab CA
                h.breached = breached
                labhosts.prepare_host(self.paths, state, h, reset=True, new_certificate=True)
            elif new_host_key:
                key = self.paths.host_key(h.name)
                key.unlink(missing_ok=True)
                key.with_name(key.name + ".pub").unlink(missing_ok=True)
                ensure_keypair(key, f"root@{h.name}")
            h.breached = breached
            h.status = "intent"
            h.init_pid = h.init_start = h.spawn_pid = h.spawn_start = None
            state.save(self.paths.state)
            netns.ip_batch(netns.host_lines(h.netns, h.veth, state.bridge))
            prefix = int(state.network.split("/")[1])
            self._start_hosts(state, [h], prefix, read_public(self.paths.msp_key))
            # The rebuilt host's eth0 has a new MAC: drop the controller's cached neighbour entry,
            # or connections go to the old MAC until it expires (~40 s). A real NIC keeps its MAC.
            netns.ip_batch([f"neigh flush to {h.address} dev {state.bridge}"], force=True)
        return next(x for x in self.info()["hosts"] if x["name"] == host)
