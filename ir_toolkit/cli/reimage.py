"""``irkit reimage``: orchestrated reinstall through BMCs or provisioning systems."""

from __future__ import annotations

import click

from ir_toolkit.cli.options import case_option, inventory_options, not_implemented


@click.command("reimage")
@inventory_options
@case_option()
@click.option("--hosts", "hosts", multiple=True, metavar="NAME", help="Hosts to reimage.")
def reimage(**_: object) -> None:
    """Reimage hosts (after their evidence is verified), re-key and re-provision them."""
    not_implemented("reimage", 8)
