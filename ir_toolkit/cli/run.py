"""``irkit plan``, ``approve``, ``apply`` and ``resume``: the engine's commands."""

from __future__ import annotations

import click

from ir_toolkit.cli.options import case_option, inventory_options, not_implemented


@click.command("plan")
@inventory_options
@case_option()
@click.option("--playbook", metavar="FILE", required=True, help="Playbook to plan.")
def plan(**_: object) -> None:
    """Write a deterministic, content-hashed plan of what a playbook would change."""
    not_implemented("plan", 5)


@click.command("approve")
@click.argument("plan_file", metavar="PLAN")
@click.option("--as", "approver", metavar="NAME", required=True, help="Approver name.")
def approve(**_: object) -> None:
    """Sign an approval bound to a plan's hash."""
    not_implemented("approve", 5)


@click.command("apply")
@click.argument("plan_file", metavar="PLAN")
def apply(**_: object) -> None:
    """Execute exactly the steps of a plan."""
    not_implemented("apply", 5)


@click.command("resume")
@case_option()
def resume(**_: object) -> None:
    """Finish the unfinished steps of an interrupted run."""
    not_implemented("resume", 5)
