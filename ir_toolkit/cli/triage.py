"""``irkit triage``: forensic collection into hashed, optionally encrypted bundles."""

from __future__ import annotations

import click

from ir_toolkit.cli.options import case_option, inventory_options, not_implemented


@click.command("triage")
@inventory_options
@case_option()
@click.option("--tenant", "tenants", multiple=True, metavar="NAME", help="Only these tenants.")
@click.option("--host", "hosts", multiple=True, metavar="NAME", help="Only these hosts.")
@click.option("--profile", default="ir_triage", show_default=True, help="Artifact profile.")
def triage(**_: object) -> None:
    """Collect evidence from hosts (volatile data first) before anything is changed."""
    not_implemented("triage", 7)
