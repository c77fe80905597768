"""Selecting hosts for a step, and cutting a phase into waves."""

from __future__ import annotations

import math

from ir_toolkit.inventory.model import Host, Inventory
from ir_toolkit.playbook.schema import Targets, Wave


def select_hosts(inventory: Inventory, targets: Targets) -> list[Host]:
    """Hosts matching every given selector, in inventory order."""
    return [
        host for host in inventory.targets()
        if (not targets.tenants or host.tenant in targets.tenants)
        and (not targets.groups or set(host.groups) & set(targets.groups))
        and (not targets.hosts or host.name in targets.hosts)
        and (not targets.os or host.os in targets.os)
    ]


def make_waves(hosts: list[Host], wave: Wave) -> list[list[Host]]:
    """Canary tenant's hosts first (a wave of their own), then batches of ``wave.size``."""
    waves: list[list[Host]] = []
    rest = hosts
    if wave.canary_tenant:
        canary = [h for h in hosts if h.tenant == wave.canary_tenant]
        rest = [h for h in hosts if h.tenant != wave.canary_tenant]
        if canary:
            waves.append(canary)
    if not rest:
        return waves
    if isinstance(wave.size, int):
        size = wave.size
    else:
        size = max(1, math.ceil(len(rest) * int(wave.size.rstrip("%")) / 100))
    waves.extend(rest[i:i + size] for i in range(0, len(rest), size))
    return waves
