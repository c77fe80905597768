"""``irkit contain``: the MSP-breach containment run (plan, confirm, apply)."""

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
from ir_toolkit.run import session
from ir_toolkit.run.shipped import CONTAINMENT, resolve_playbook

DEFAULT_PLAYBOOK = "playbooks/msp-breach-containment.yml"  # the shipped one (package data)


@click.command("contain")
@inventory_options
@case_option(required=False)
@click.option("--playbook", metavar="FILE", default=None,
              help=f"Playbook to run: a file, or a shipped playbook's name (default: {DEFAULT_PLAYBOOK}, shipped "
                   "with irkit; a file at that path overrides it).")
@click.option("--yes", is_flag=True, help="Skip the confirmation prompt (counts as your approval).")
@click.option("--dry-run", is_flag=True, help="Stop after showing the plan; change nothing.")
@click.option("--approval-wait", type=float, default=0, show_default=True, metavar="SECONDS",
              help="Wait this long for other approvers' signatures.")
@forks_option
@format_option
def contain(msp: str | None, inventory_path: str | None, case_id: str | None, playbook: str | None, yes: bool,
            dry_run: bool, approval_wait: float, forks: int, fmt: str) -> None:
    """Contain an MSP breach across every tenant: preserve evidence, isolate,
    revoke the MSP's shared keys, rotate shared accounts, verify.

    Makes a plan (shown), asks for confirmation (or --yes), then applies it.
    A new case id is made when --case is not given.
    """
    load_selected_inventory(msp, inventory_path)  # bad input fails before a case directory is made
    case_id = case_id or session.new_case_id()
    session.start_case_logging(case_id)
    frontend = CliFrontend(fmt, yes=yes)
    frontend.err.print(f"case {case_id}")
    path = resolve_playbook(playbook or DEFAULT_PLAYBOOK, CONTAINMENT)
    sys.exit(session.run_playbook(msp, inventory_path, case_id, path, frontend=frontend, dry_run=dry_run,
                                  forks=forks, approval_wait=approval_wait))
