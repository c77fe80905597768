"""The lab network: one bridge in the controller's namespace, one netns + veth per host.

All ``ip`` work is batched (``ip -batch -``): one process creates every
namespace and veth pair of a 200-host lab. Addresses inside a host are set by
the host's own init (it already runs in the namespace).
"""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path

from ir_toolkit import childenv
from ir_toolkit.errors import EnvironmentProblem, InputError
from ir_toolkit.lab.layout import NETNS_DIR
from ir_toolkit.lab.state import registered
from ir_toolkit.log import get_logger

_log = get_logger("irkit.lab")


def ip_batch(lines: list[str], *, force: bool = False) -> None:
    """Run ``ip`` commands in one process; an error names the failing command."""
    if not lines:
        return
    argv = ["ip", "-force", "-batch", "-"] if force else ["ip", "-batch", "-"]
    try:
        proc = childenv.run(argv, input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        raise EnvironmentProblem("`ip` (iproute2) is not installed") from None
    if proc.returncode != 0 and not force:
        detail = " ".join(proc.stderr.split())[:300] or f"exit {proc.returncode}"
        raise EnvironmentProblem(f"ip -batch failed: {detail}")
    if proc.returncode != 0:
        _log.debug("ip -force -batch reported errors", stderr=proc.stderr[-2000:])


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def netns_inode(name: str) -> int | None:
    try:
        return os.stat(netns_path(name)).st_ino
    except (FileNotFoundError, NotADirectoryError):
        return None


def bridge_address(name: str) -> str | None:
    """``addr/prefix`` of the bridge's IPv4 address, or None."""
    if not link_exists(name):
        return None
    proc = childenv.run(["ip", "-j", "-4", "addr", "show", "dev", name], capture_output=True, text=True)
    try:
        for link in json.loads(proc.stdout or "[]"):
            for info in link.get("addr_info", []):
                return f"{info['local']}/{info['prefixlen']}"
    except ValueError:
        return None
    return None


def bridge_lines(bridge: str, controller: str, prefixlen: int) -> list[str]:
    return [
        f"link add name {bridge} type bridge",
        f"link set dev {bridge} addrgenmode none",
        f"addr add {controller}/{prefixlen} dev {bridge}",
        f"link set dev {bridge} up",
    ]


def host_lines(netns: str, veth: str, bridge: str) -> list[str]:
    """Create the namespace and a veth pair whose inner end is ``eth0`` in it."""
    return [
        f"netns add {netns}",
        f"link add name {veth} type veth peer name eth0 netns {netns}",
        f"link set dev {veth} addrgenmode none",
        f"link set dev {veth} master {bridge} up",
    ]


def delete_lines(netns: list[str], veths: list[str], bridge: str | None = None) -> list[str]:
    """Delete what exists of the given names (recorded names only)."""
    lines = [f"link del dev {v}" for v in veths if link_exists(v)]
    lines += [f"netns del {n}" for n in netns if netns_path(n).exists()]
    if bridge and link_exists(bridge):
        lines.append(f"link del dev {bridge}")
    return lines


def conflicts(network: ipaddress.IPv4Network, own_bridge: str) -> str | None:
    """Why ``network`` cannot be used here (an overlapping address or route), or None."""
    seen: list[tuple[str, ipaddress.IPv4Network]] = []
    addrs = childenv.run(["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True)
    routes = childenv.run(["ip", "-j", "-4", "route", "show", "table", "all"], capture_output=True, text=True)
    try:
        for link in json.loads(addrs.stdout or "[]"):
            for info in link.get("addr_info", []):
                net = ipaddress.ip_network(f"{info['local']}/{info['prefixlen']}", strict=False)
                seen.append((link.get("ifname", "?"), net))
        for route in json.loads(routes.stdout or "[]"):
            dst = route.get("dst", "default")
            if dst == "default" or route.get("type") in ("local", "broadcast"):
                continue
            seen.append((route.get("dev", "?"), ipaddress.ip_network(dst, strict=False)))
    except (ValueError, KeyError):
        pass
    for dev, net in seen:
        if dev != own_bridge and isinstance(net, ipaddress.IPv4Network) and net.overlaps(network):
            owner = next((r for r in registered() if r.get("bridge") == dev), None)
            who = (f"the lab of MSP {owner['msp']} (state in {owner['lab_dir']})" if owner
                   else f"interface {dev}")
            return f"{net} on {dev} overlaps this lab's network {network}: it is used by {who}"
    return None


def require_free(network: ipaddress.IPv4Network, own_bridge: str) -> None:
    reason = conflicts(network, own_bridge)
    if reason:
        raise InputError(f"another lab or network already uses these addresses: {reason}; "
                         "bring that lab down first (irkit lab down)")


def ensure_neighbour_capacity(hosts: int) -> str | None:
    """Raise the kernel ARP table limits when a big lab would overflow them (never lowers them)."""
    want = 3 * hosts + 256  # an entry each way per host, plus the machine's own
    base = Path("/proc/sys/net/ipv4/neigh/default")
    try:
        current = int((base / "gc_thresh3").read_text())
    except (OSError, ValueError):
        return None
    if current >= want:
        return None
    for name, value in (("gc_thresh3", want), ("gc_thresh2", want // 2), ("gc_thresh1", want // 8)):
        try:
            old = int((base / name).read_text())
            if value > old:
                (base / name).write_text(str(value))
        except (OSError, ValueError):
            return None
    return f"raised net.ipv4.neigh.default.gc_thresh3 from {current} to {want} for {hosts} hosts"


def stable_mac(name: str) -> str:
    """A locally administered unicast MAC derived from ``name``: a service namespace made again
    (broker restart) keeps its MAC, so neighbours' ARP entries stay right."""
    import hashlib

    digest = hashlib.sha256(name.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def service_netns(name: str, veth: str, bridge: str, cidr: str) -> None:
    """A namespace for a lab service (broker, agent) on the bridge: ``eth0`` with ``cidr`` and a
    stable MAC, no IPv6. Reused as it is when it already exists, attached to ``bridge``, with ``cidr``."""
    attached = Path(f"/sys/class/net/{veth}/master")
    if netns_path(name).exists() and attached.exists() and attached.resolve().name == bridge:
        proc = childenv.run(["ip", "-n", name, "-j", "-4", "addr", "show", "dev", "eth0"], capture_output=True,
                            text=True)
        try:
            have = {f"{i['local']}/{i['prefixlen']}" for link in json.loads(proc.stdout or "[]")
                    for i in link.get("addr_info", [])}
        except (ValueError, KeyError):
            have = set()
        if have == {cidr}:
            return
    ip_batch(delete_lines([name], [veth]), force=True)
    ip_batch(host_lines(name, veth, bridge))
    for args in (["link", "set", "eth0", "addrgenmode", "none"], ["link", "set", "eth0", "address", stable_mac(name)],
                 ["addr", "replace", cidr, "dev", "eth0"], ["link", "set", "eth0", "up"], ["link", "set", "lo", "up"]):
        proc = childenv.run(["ip", "-n", name, *args], capture_output=True, text=True)
        if proc.returncode != 0:
            raise EnvironmentProblem(f"ip -n {name} {' '.join(args)}: {proc.stderr.strip()[:200]}")
