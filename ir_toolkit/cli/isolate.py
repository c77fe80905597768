"""``irkit isolate``: network isolation with nftables (irkit's own table), and its exact release."""

from __future__ import annotations

import sys

import click

from ir_toolkit.cli.frontend import CliFrontend
from ir_toolkit.cli.options import (
    case_option,
    format_option,
    inventory_options,
    load_selected_inventory,
)
from ir_toolkit.cli.run import forks_option
from ir_toolkit.errors import InputError
from ir_toolkit.run import session
from ir_toolkit.run.generated import isolation_playbook, write_generated_playbook


@click.command("isolate")
@inventory_options
@case_option()
@click.option("--host", "hosts", multiple=True, metavar="NAME", help="Hosts to isolate (repeatable).")
@click.option("--tenant", "tenants", multiple=True, metavar="NAME",
              help="Hosts of these tenants (repeatable; with --host, hosts must match both).")
@click.option("--release", is_flag=True, help="Undo the isolation, restoring the previous ruleset exactly.")
@click.option("--allow", "allow", multiple=True, metavar="NET",
              help="Also keep this address/network reachable (besides the controller and allow_from).")
@click.option("--evidence-override", metavar="REASON", default=None,
              help="Isolate even where no evidence was collected yet (recorded in the audit log).")
@click.option("--yes", is_flag=True, help="Skip the confirmation prompt (counts as your approval).")
@click.option("--dry-run", is_flag=True, help="Stop after showing the plan; change nothing.")
@forks_option
@format_option
def isolate(msp: str | None, inventory_path: str | None, case_id: str, hosts: tuple[str, ...],
            tenants: tuple[str, ...], release: bool, allow: tuple[str, ...], evidence_override: str | None,
            yes: bool, dry_run: bool, forks: int, fmt: str) -> None:
    """Cut hosts off the network except for the responder's controller.

    Only loopback, msp.responder.controller_address, msp.responder.allow_from
    and --allow stay reachable; live sessions of every other peer are ended
    (sockets destroyed, conntrack entries deleted), the responders' survive. Isolation is gated on
    collected evidence like every destructive step (or --evidence-override).
    --release removes irkit's table and checks the ruleset is as before.
    """
    if not hosts and not tenants:
        raise InputError("name the hosts to isolate with --host NAME or --tenant NAME")
    inventory = load_selected_inventory(msp, inventory_path)
    known_hosts = {h.name for h in inventory.hosts()}
    for host in hosts:
        if host not in known_hosts:
            raise InputError(f"unknown host {host!r}")
    known_tenants = {t.name for t in inventory.tenants}
    for tenant in tenants:
        if tenant not in known_tenants:
            raise InputError(f"unknown tenant {tenant!r}")
    if release and (allow or evidence_override):
        raise InputError("--allow and --evidence-override do not apply to --release")
    import ipaddress

    for item in allow:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise InputError(f"--allow {item!r}: not an address or network") from None
    session.start_case_logging(case_id)
    data = isolation_playbook(tenants=list(tenants), hosts=list(hosts), release=release, allow=list(allow),
                              evidence_override=evidence_override)
    path = write_generated_playbook(case_id, "release" if release else "isolate", data)
    sys.exit(session.run_playbook(msp, inventory_path, case_id, path, frontend=CliFrontend(fmt, yes=yes),
                                  dry_run=dry_run, forks=forks, stop_if_empty=True))
