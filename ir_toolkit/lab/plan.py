"""From an inventory to a lab plan: which hosts, which addresses, which network.

The controller address (``msp.responder.controller_address``) sits on the lab
bridge; every host gets its inventory address with the bridge's prefix, so
hosts of all tenants share one layer-2 segment (cross-tenant traffic is real
until an isolation action cuts it). The bridge prefix is the smallest network
that holds the controller, every host and every tenant subnet (acme:
198.18.0.0/21), so a second lab can run beside it in another part of
198.18.0.0/15. Nothing outside 198.18.0.0/15 is ever used.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ir_toolkit.errors import InputError
from ir_toolkit.inventory.model import Inventory
from ir_toolkit.lab.layout import LAB_RANGE, MAX_SLOT


@dataclass(frozen=True)
class PlannedHost:
    name: str
    tenant: str
    address: str
    port: int
    os: str = "linux"


@dataclass(frozen=True)
class WindowsPlan:
    """What the lab's WinRS endpoints are seeded with (from the inventory)."""

    responder_user: str
    shared_user: str
    msp_users: tuple[str, ...]


@dataclass(frozen=True)
class LabPlan:
    msp: str
    controller_address: str
    network: ipaddress.IPv4Network
    responder_user: str
    hosts: tuple[PlannedHost, ...]
    skipped: tuple[str, ...]  # inventory hosts the lab does not build
    windows: WindowsPlan | None = None

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen


def _lab_address(text: str, what: str) -> ipaddress.IPv4Address:
    addr = ipaddress.ip_address(text)
    if not isinstance(addr, ipaddress.IPv4Address) or addr not in LAB_RANGE:
        raise InputError(f"{what} {text} is outside {LAB_RANGE}: the lab only uses that range")
    return addr


def covering_network(points: list[ipaddress.IPv4Address],
                     nets: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """Smallest network inside 198.18.0.0/15 holding ``points`` (none of them its network or
    broadcast address) and ``nets``."""
    first = points[0]
    for prefix in range(30, LAB_RANGE.prefixlen - 1, -1):
        net = ipaddress.ip_network(f"{first}/{prefix}", strict=False)
        if all(p in net and p not in (net.network_address, net.broadcast_address) for p in points) and all(
            n.subnet_of(net) for n in nets
        ):
            return net
    raise InputError(f"the lab's addresses do not fit in one network inside {LAB_RANGE}")


def plan_lab(inv: Inventory) -> LabPlan:
    """Check that the inventory can be a lab and compute its network."""
    controller = _lab_address(inv.msp.responder.controller_address, "msp.responder.controller_address")
    hosts: list[PlannedHost] = []
    skipped: list[str] = []
    subnets: list[ipaddress.IPv4Network] = []
    for tenant in inv.tenants:
        lab_hosts = [h for h in tenant.hosts if (h.os, h.transport) in (("linux", "ssh"), ("windows", "winrm"))]
        skipped += [h.name for h in tenant.hosts if h not in lab_hosts]
        if tenant.subnet and lab_hosts:
            net = ipaddress.ip_network(tenant.subnet)
            if not isinstance(net, ipaddress.IPv4Network) or not net.subnet_of(LAB_RANGE):
                raise InputError(f"tenant {tenant.name}: subnet {tenant.subnet} is outside {LAB_RANGE}")
            subnets.append(net)
        for host in lab_hosts:
            addr = _lab_address(host.address, f"host {host.name}: address")
            if addr == controller:
                raise InputError(f"host {host.name} has the controller's address {addr}")
            hosts.append(PlannedHost(host.name, tenant.name, str(addr), int(host.port or 22), host.os))
    windows = None
    if any(h.os == "windows" for h in hosts):
        access = inv.msp.responder.windows
        if access is None or access.scheme != "https":
            raise InputError("the inventory has Windows hosts: the lab needs msp.responder.windows "
                             "(user, password: file:..., ca_file) with scheme https")
        accounts = [a for a in inv.msp.shared_credentials.accounts if a.os == "windows"]
        shared = next((a.user for a in accounts if a.action in ("rotate", "lock")), "")
        windows = WindowsPlan(access.user, shared, tuple(a.user for a in accounts if a.action == "deprivilege"))
    if not hosts:
        raise InputError(f"inventory of MSP {inv.msp.name} has no Linux/SSH or Windows/WinRM host for the lab")
    if len(hosts) > MAX_SLOT + 1:
        raise InputError(f"a lab holds at most {MAX_SLOT + 1} hosts")
    from ir_toolkit.lab.dc import dc_addresses

    dcs = [_lab_address(a, "domain controller address") for a in dc_addresses(inv)]
    taken = {controller, *(ipaddress.IPv4Address(h.address) for h in hosts)}
    if any(a in taken for a in dcs):
        raise InputError("a domain controller address is also a lab host's or the controller's address")
    network = covering_network([controller] + [ipaddress.IPv4Address(h.address) for h in hosts] + dcs, subnets)
    return LabPlan(
        msp=inv.msp.name,
        controller_address=str(controller),
        network=network,
        responder_user=inv.msp.responder.user,
        hosts=tuple(hosts),
        skipped=tuple(skipped),
        windows=windows,
    )


def assign_slots(names: list[str], previous: dict[str, int]) -> dict[str, int]:
    """Stable slot numbers (veth names) per host: keep recorded ones, give new hosts free ones."""
    slots = {n: previous[n] for n in names if n in previous}
    used = set(slots.values())
    free = (s for s in range(MAX_SLOT + 1) if s not in used)
    for name in names:
        if name not in slots:
            slots[name] = next(free)
    return slots
