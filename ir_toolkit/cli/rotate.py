"""``irkit rotate``: scheduled credential rotation with escrow."""

from __future__ import annotations

import click

from ir_toolkit.cli.options import case_option, inventory_options, not_implemented


@click.command("rotate")
@inventory_options
@case_option(required=False)
@click.option("--tenant", "tenants", multiple=True, metavar="NAME", help="Only these tenants.")
@click.option("--due", is_flag=True, help="Rotate only credentials older than the policy age.")
def rotate(**_: object) -> None:
    """Rotate shared local accounts to unique, escrowed passwords (for cron or a systemd timer)."""
    not_implemented("rotate", 6)
