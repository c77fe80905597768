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
