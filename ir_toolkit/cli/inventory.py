"""``irkit inventory``: validate and list MSP inventories."""

from __future__ import annotations

import click

from ir_toolkit.cli.options import format_option, inventory_options, load_selected_inventory
from ir_toolkit.cli.output import console, emit
from ir_toolkit.inventory import load_inventory


@click.group("inventory")
def inventory() -> None:
    """Check and list the MSP inventory (MSP -> tenants -> hosts)."""


@inventory.command("validate")
@click.argument("file", type=click.Path(dir_okay=False))
def validate_cmd(file: str) -> None:
    """Validate an inventory FILE; errors name file, line and field (exit 2)."""
    inv = load_inventory(file)
    console().print(
        f"{file}: ok: MSP {inv.msp.name}, {len(inv.tenants)} tenants, {len(inv.hosts())} hosts"
    )


@inventory.command("list")
@inventory_options
@click.option("--tenant", "tenants", multiple=True, metavar="NAME", help="Only these tenants.")
@format_option
def list_cmd(msp: str | None, inventory_path: str | None, tenants: tuple[str, ...], fmt: str) -> None:
    """List the hosts of every tenant."""
    inv = load_selected_inventory(msp, inventory_path)
    rows = [
        {
            "tenant": host.tenant,
            "name": host.name,
            "address": host.address,
            "port": host.port,
            "os": host.os,
            "transport": host.transport,
            "groups": ",".join(host.groups) if fmt == "table" else list(host.groups),
        }
        for host in inv.hosts()
        if not tenants or host.tenant in tenants
    ]
    emit(rows, fmt, ["tenant", "name", "address", "port", "os", "transport", "groups"],
         title=f"{inv.msp.display_name or inv.msp.name}: {len(rows)} hosts")


@inventory.command("export")
@inventory_options
@click.option("--format", "fmt", type=click.Choice(["ansible"]), default="ansible", show_default=True,
              help="Inventory format to write (ansible: YAML inventory, groups per tenant and per group).")
@click.option("--tenant", "tenants", multiple=True, metavar="NAME", help="Only these tenants.")
@click.option("--out", "out", metavar="FILE", type=click.Path(dir_okay=False),
              help="Write to FILE instead of standard output.")
def export_cmd(msp: str | None, inventory_path: str | None, fmt: str, tenants: tuple[str, ...],
               out: str | None) -> None:
    """Export the inventory for another tool.

    `--format ansible` writes a YAML inventory that `ansible-inventory -i FILE --list`
    accepts: groups `tenant_<name>`, `group_<name>` and `os_<name>`, each host with its
    address and port, and ssh pinned to the MSP's known_hosts (StrictHostKeyChecking=yes).
    No secret is written: Ansible gets credentials from irkit at run time.
    """
    from ir_toolkit.errors import InputError
    from ir_toolkit.inventory.ansible import ansible_inventory, dump

    inv = load_selected_inventory(msp, inventory_path)
    known = {t.name for t in inv.tenants}
    for name in tenants:
        if name not in known:
            raise InputError(f"no tenant {name!r} in the inventory of {inv.msp.name}")
    hosts = [h for h in inv.hosts() if not tenants or h.tenant in tenants]
    text = dump(ansible_inventory(inv, hosts=hosts))
    if out:
        from pathlib import Path

        from ir_toolkit.fsutil import write_atomic

        write_atomic(Path(out), text.encode(), mode=0o644)
        console().print(f"wrote {out}: {len(hosts)} hosts")
    else:
        click.echo(text, nl=False)
