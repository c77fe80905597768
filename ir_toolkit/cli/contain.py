"""``irkit contain``: the MSP-breach containment run (plan, confirm, apply)."""

from __future__ import annotations

import click

from ir_toolkit.cli.options import case_option, inventory_options, not_implemented


@click.command("contain")
@inventory_options
@case_option(required=False)
@click.option("--playbook", metavar="FILE", help="Playbook (default: playbooks/msp-breach-containment.yml).")
@click.option("--yes", is_flag=True, help="Skip the confirmation prompt (counts as your approval).")
@click.option("--dry-run", is_flag=True, help="Stop after showing the plan; change nothing.")
def contain(**_: object) -> None:
    """Contain an MSP breach across every tenant: preserve evidence, isolate,
    revoke the MSP's shared keys, rotate shared accounts, verify."""
    not_implemented("contain", 6)
