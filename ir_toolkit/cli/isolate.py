"""``irkit isolate``: network isolation with nftables, reversible."""

from __future__ import annotations

import click

from ir_toolkit.cli.options import case_option, inventory_options, not_implemented


@click.command("isolate")
@inventory_options
@case_option()
@click.option("--host", "hosts", multiple=True, metavar="NAME", help="Hosts to isolate.")
@click.option("--release", is_flag=True, help="Undo the isolation, restoring the previous state.")
def isolate(**_: object) -> None:
    """Cut hosts off the network except for the responder's controller."""
    not_implemented("isolate", 6)
