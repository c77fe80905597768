"""``irkit case close``: end a case's access to the hosts (the per-case responder keys come off)."""

from __future__ import annotations

import sys

import click

from ir_toolkit.cli.frontend import CliFrontend
from ir_toolkit.cli.options import case_option, format_option, inventory_options, load_selected_inventory
from ir_toolkit.cli.run import forks_option
from ir_toolkit.errors import InputError
from ir_toolkit.run import session
from ir_toolkit.run.generated import case_close_playbook, write_generated_playbook


@click.group("case")
def case() -> None:
    """Case lifecycle."""


@case.command("close")
@inventory_options
@case_option()
@click.option("--yes", is_flag=True, help="Skip the confirmation prompt (counts as your approval).")
@click.option("--dry-run", is_flag=True, help="Stop after showing the plan; change nothing.")
@forks_option
@format_option
def close(msp: str | None, inventory_path: str | None, case_id: str, yes: bool, dry_run: bool, forks: int,
          fmt: str) -> None:
    """Close a case: remove its per-tenant responder keys from every host.

    Runs a generated playbook (one responder.remove_access step per host of each
    tenant that has a case key) through the engine, so every removal is planned,
    confirmed and recorded in the case's audit log. On each host a fresh login with
    the case key must then fail and one with the MSP's responder key must work
    (otherwise the case key is put back). Exit 0: every key removed; 1: a host
    failed; 3: incomplete (irkit resume).
    """
    from ir_toolkit.cases import CaseLayout

    inventory = load_selected_inventory(msp, inventory_path)
    layout = CaseLayout.of(case_id)
    if not layout.root.is_dir():
        raise InputError(f"no case {case_id} in this IRKIT_HOME")
    tenants = [t.name for t in inventory.tenants if layout.tenant_responder_key(t.name).with_name(
        layout.tenant_responder_key(t.name).name + ".pub").exists()]
    if not tenants:
        click.echo(f"case {case_id}: no per-tenant responder key was installed; nothing to remove")
        return
    session.start_case_logging(case_id)
    path = write_generated_playbook(case_id, "case-close", case_close_playbook(tenants=tenants))
    sys.exit(session.run_playbook(msp, inventory_path, case_id, path, frontend=CliFrontend(fmt, yes=yes),
                                  dry_run=dry_run, forks=forks, stop_if_empty=True))
