"""``irkit lab up --agents``: the lab broker plus one supervised agent per tenant, and the inventory
whose tenants they serve (docs/lab.md "Agents", docs/scaling.md).

Addresses (all inside the lab's bridge network, so inside 198.18.0.0/15): the broker takes the first
free address after the controller's that is in no tenant's subnet (acme: 198.18.0.2); each tenant's
agent the highest free address of the tenant's subnet (acme's globex: 198.18.1.254), or, for a
tenant without a subnet, the highest free one of the network outside every subnet.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from ir_toolkit.inventory.model import Inventory
from ir_toolkit.lab import agents as agentmod
from ir_toolkit.lab import broker as brokermod
from ir_toolkit.lab.plan import LabPlan

AGENT_INVENTORY = "agents-inventory.yml"


def attached(veth: str, bridge: str) -> bool:
    """Is ``veth`` a port of ``bridge`` (a recreated bridge leaves old ports detached)?"""
    try:
        return Path(f"/sys/class/net/{veth}/master").resolve().name == bridge
    except OSError:
        return False


def addresses(inv: Inventory, plan: LabPlan) -> tuple[str, dict[str, str]]:
    """(broker address, {tenant: agent address})."""
    from ir_toolkit.lab.dc import dc_addresses

    network = plan.network
    taken = {ipaddress.IPv4Address(plan.controller_address)}
    taken |= {ipaddress.IPv4Address(h.address) for h in plan.hosts}
    taken |= {ipaddress.IPv4Address(a) for a in dc_addresses(inv)}
    subnets = [n for t in inv.tenants if t.subnet
               for n in [ipaddress.ip_network(str(t.subnet))] if isinstance(n, ipaddress.IPv4Network)]
    broker = brokermod.pick_address(network, taken, avoid=subnets)
    lab_tenants = {h.tenant for h in plan.hosts}
    out = {}
    for tenant in inv.tenants:
        if tenant.name not in lab_tenants:
            continue
        subnet = ipaddress.ip_network(str(tenant.subnet)) if tenant.subnet else None
        if isinstance(subnet, ipaddress.IPv4Network) and subnet.subnet_of(network):
            out[tenant.name] = brokermod.pick_address(network, taken, subnet, from_top=True)
        else:
            out[tenant.name] = brokermod.pick_address(network, taken, from_top=True, avoid=subnets)
    return broker, out


def ensure(lab: Any, inv: Inventory, inventory_path: Path, plan: LabPlan, bridge: str, notes: list[str],
           command: agentmod.AgentCommand | None = None) -> tuple[bool, list[str]]:
    """Broker, agents and the agents' inventory; returns (broker started, tenants whose agent started)."""
    broker_address, agent_addresses = addresses(inv, plan)
    old = brokermod.load_broker(lab.paths.root)
    if old and not attached(old.veth, bridge):
        old.status = "stale"
        brokermod.save_broker(lab.paths.root, old)
    state, broker_started = brokermod.ensure(lab, broker_address, sorted(agent_addresses), plan.prefixlen, bridge)
    for agent in agentmod.load_agents(lab.paths.root).values():
        if not attached(agent.veth, bridge):
            agentmod.stop(lab, [agent])
    broker = brokermod.info(lab)
    assert broker is not None
    started = agentmod.ensure(lab, agent_addresses, plan.prefixlen, bridge, broker,
                              command or agentmod.irkit_agent_command)
    if broker_started:
        notes.append(f"broker started: {brokermod.url(state)} (TLS, lab CA {broker['ca_file']})")
    if started:
        notes.append(f"agents started for: {', '.join(started)}")
    return broker_started, started


def down(lab: Any) -> None:
    agentmod.down(lab)
    brokermod.stop(lab)


def info(lab: Any, inventory: str) -> dict[str, Any]:
    """``broker`` and ``agents`` for ``lab info`` (None and [] without ``--agents``)."""
    return {"broker": brokermod.info(lab), "agents": agentmod.info(lab)}
