"""``irkit plan``, ``approve``, ``apply`` and ``resume``: plan -> approve -> execute, and finishing runs."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ir_toolkit.cli.frontend import CliFrontend, confirm, show_plan
from ir_toolkit.cli.options import case_option, format_option, inventory_options
from ir_toolkit.cli.output import console
from ir_toolkit.errors import EXIT_OK
from ir_toolkit.playbook.engine import DEFAULT_FORKS
from ir_toolkit.playbook.plan import load_plan
from ir_toolkit.run import session
from ir_toolkit.run.shipped import CONTAINMENT, resolve_playbook


def forks_option(func):  # type: ignore[no-untyped-def]
    return click.option("--forks", type=click.IntRange(1, 2000), default=DEFAULT_FORKS, show_default=True,
                        help="Hosts worked on at once.")(func)


@click.command("plan")
@inventory_options
@case_option()
@click.option("--playbook", metavar="FILE", required=True,
              help="Playbook to plan: a file, or a shipped playbook's name (e.g. msp-breach-containment).")
@forks_option
@format_option
def plan(msp: str | None, inventory_path: str | None, case_id: str, playbook: str, forks: int, fmt: str) -> None:
    """Inspect every targeted host and write a deterministic, content-hashed plan (changes nothing)."""
    session.start_case_logging(case_id)
    the_plan, _, _, _ = session.make_plan(msp, inventory_path, str(resolve_playbook(playbook, CONTAINMENT)),
                                          case_id, forks=forks,
                                          frontend=CliFrontend(fmt))
    show_plan(the_plan, fmt)


@click.command("approve")
@click.argument("plan_file", metavar="PLAN", type=click.Path(dir_okay=False))
@click.option("--as", "approver", metavar="NAME", required=True, help="Your name as in the inventory's contacts.")
@click.option("--key", "key_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="Your own Ed25519 approver key (PEM or OpenSSH; passphrase: $IRKIT_APPROVER_PASSPHRASE or a "
                   "prompt) whose public key the inventory pins as your approval_key. Default: the signing key "
                   "of `irkit keys init` in this $IRKIT_HOME.")
def approve(plan_file: str, approver: str, key_file: str | None) -> None:
    """Sign an approval of PLAN (bound to its hash) with your key.

    It counts only if the inventory pins that key as your approval_key; a
    signature with the responder's own key is the responder's confirmation
    and never counts twice.
    """
    from ir_toolkit.playbook.approvals import load_approver_signer, write_approval
    from ir_toolkit.secrets.keystore import get_passphrase, load_signing_key

    the_plan = load_plan(plan_file)
    signer = (load_approver_signer(Path(key_file), approver) if key_file
              else load_signing_key(get_passphrase()))
    path = write_approval(the_plan, Path(plan_file), approver, signer)
    console().print(f"approved plan {the_plan.hash[:16]} as {approver}: {path}")


@click.command("apply")
@click.argument("plan_file", metavar="PLAN", type=click.Path(dir_okay=False))
@click.option("--yes", is_flag=True, help="Skip the confirmation prompt (counts as your approval).")
@click.option("--approval-wait", type=float, default=0, show_default=True, metavar="SECONDS",
              help="Wait this long for other approvers' signatures.")
@forks_option
@format_option
def apply(plan_file: str, yes: bool, approval_wait: float, forks: int, fmt: str) -> None:
    """Execute exactly the steps of PLAN (refused if its playbook or inventory changed)."""
    the_plan = load_plan(plan_file)
    session.start_case_logging(the_plan.case)
    loaded, inventory = session.load_plan_context(the_plan)
    if not confirm(the_plan, yes):
        sys.exit(EXIT_OK)
    sys.exit(session.execute(the_plan, loaded, inventory, forks=forks, responder_confirmed=True,
                             approval_wait=approval_wait, frontend=CliFrontend(fmt, yes=yes)))


@click.command("resume")
@case_option()
@click.option("--retry-failed", is_flag=True, help="Also run again the steps that failed.")
@forks_option
@format_option
def resume(case_id: str, retry_failed: bool, forks: int, fmt: str) -> None:
    """Finish the unfinished steps of an interrupted run (Ctrl-C, crash, kill -9)."""
    session.start_case_logging(case_id)
    sys.exit(session.resume_case(case_id, forks=forks, retry_failed=retry_failed, frontend=CliFrontend(fmt)))
