"""``irkit rotate``: credential rotation on its own (by hand, or from cron / a systemd timer).

It builds a small playbook — responder access first, then ``accounts.rotate`` —
writes it into the case (content-addressed, so ``irkit resume`` finds it again)
and runs it through the same plan -> confirm -> execute flow as ``contain``.
"""

from __future__ import annotations

import datetime as dt
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
from ir_toolkit.errors import InputError
from ir_toolkit.run import session
from ir_toolkit.run.generated import (
    ROUTINE_OVERRIDE,
    rotation_playbook,
    write_generated_playbook,
)


@click.command("rotate")
@inventory_options
@case_option(required=False)
@click.option("--tenant", "tenants", multiple=True, metavar="NAME", help="Only these tenants (repeatable).")
@click.option("--host", "hosts", multiple=True, metavar="NAME", help="Only these hosts (repeatable).")
@click.option("--account", "accounts", multiple=True, metavar="USER",
              help="Only these accounts (default: the inventory's shared accounts).")
@click.option("--due", is_flag=True,
              help="Rotate only passwords older than the inventory's policy.rotation_max_age_days (escrow dates).")
@click.option("--mode", type=click.Choice(["inventory", "rotate", "lock"]), default="inventory", show_default=True,
              help="rotate, lock + expire, or what each inventory account says.")
@click.option("--old-password", metavar="REF", default=None,
              help="Reference (env:NAME / file:PATH) to the old shared password; verify proves it dead.")
@click.option("--require-evidence", is_flag=True,
              help="Apply the evidence gate (by default routine rotation records an evidence override).")
@click.option("--yes", is_flag=True, help="Skip the confirmation prompt (needed from cron / systemd).")
@click.option("--dry-run", is_flag=True, help="Stop after showing the plan; change nothing.")
@forks_option
@format_option
def rotate(msp: str | None, inventory_path: str | None, case_id: str | None, tenants: tuple[str, ...],
           hosts: tuple[str, ...], accounts: tuple[str, ...], due: bool, mode: str, old_password: str | None,
           require_evidence: bool, yes: bool, dry_run: bool, forks: int, fmt: str) -> None:
    """Rotate shared local accounts to unique, escrowed passwords (for cron or a systemd timer).

    Every new password is encrypted to the escrow key and fsynced before it is
    set; `irkit escrow get --case CASE --host H --account A` reads it back. The
    default case is `rotation-<msp>`, so all scheduled rotations share one escrow.
    Without --due every selected account is rotated once by this run.
    """
    inventory = load_selected_inventory(msp, inventory_path)
    known_tenants = {t.name for t in inventory.tenants}
    for tenant in tenants:
        if tenant not in known_tenants:
            raise InputError(f"unknown tenant {tenant!r} (inventory has: {', '.join(sorted(known_tenants))})")
    known_hosts = {h.name for h in inventory.targets()}  # hosts and directory domains
    for host in hosts:
        if host not in known_hosts:
            raise InputError(f"unknown host {host!r}")
    if old_password is not None:
        from ir_toolkit.secrets.references import parse_ref

        parse_ref(old_password)
    case_id = case_id or f"rotation-{inventory.msp.name}"
    session.start_case_logging(case_id)
    frontend = CliFrontend(fmt, yes=yes)
    frontend.err.print(f"case {case_id}")
    since = None if due else dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    data = rotation_playbook(
        tenants=list(tenants), hosts=list(hosts), accounts=list(accounts), mode=mode,
        due_after_days=inventory.msp.policy.rotation_max_age_days if due else None, since=since,
        old_password=old_password, evidence_override=None if require_evidence else ROUTINE_OVERRIDE,
    )
    path = write_generated_playbook(case_id, "rotate", data)
    sys.exit(session.run_playbook(msp, inventory_path, case_id, path, frontend=frontend, dry_run=dry_run,
                                  forks=forks, stop_if_empty=True))
