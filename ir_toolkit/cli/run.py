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


@click.group("plan", invoke_without_command=True)
@inventory_options
@case_option(required=False)
@click.option("--playbook", metavar="FILE",
              help="Playbook to plan: a file, or a shipped playbook's name (e.g. msp-breach-containment).")
@forks_option
@format_option
@click.pass_context
def plan(ctx: click.Context, msp: str | None, inventory_path: str | None, case_id: str | None, playbook: str | None,
         forks: int, fmt: str) -> None:
    """Inspect every targeted host and write a deterministic, content-hashed plan (changes nothing).

    `irkit plan export --tenant T` writes an offline tenant's signed steps to a file (docs/agents.md).
    """
    if ctx.invoked_subcommand is not None:
        return
    if not case_id or not playbook:
        raise click.UsageError("irkit plan needs --case and --playbook")
    session.start_case_logging(case_id)
    the_plan, _, _, _ = session.make_plan(msp, inventory_path, str(resolve_playbook(playbook, CONTAINMENT)),
                                          case_id, forks=forks,
                                          frontend=CliFrontend(fmt))
    show_plan(the_plan, fmt)


@plan.command("export")
@case_option()
@click.option("--tenant", required=True, metavar="T", help="The offline tenant whose steps to export.")
@click.option("--out", "out", required=True, metavar="FILE", help="The steps file to write (mode 0600).")
@click.option("--plan", "plan_file", metavar="PLAN", help="The plan (default: the case's current one).")
@click.option("--valid-hours", type=click.FloatRange(1, 24 * 90), default=168, show_default=True,
              help="The envelopes expire after this (the agent refuses them later).")
@format_option
def export(case_id: str, tenant: str, out: str, plan_file: str | None, valid_hours: float, fmt: str) -> None:
    """Sign the tenant's unfinished steps into a file for `irkit agent run-offline` (no broker needed)."""
    from ir_toolkit.cli.output import emit_json
    from ir_toolkit.run.offline import export_steps

    session.start_case_logging(case_id)
    summary = export_steps(case_id, tenant, Path(out), plan_file=plan_file, valid_hours=valid_hours)
    if fmt == "json":
        emit_json(summary)
    else:
        console().print(f"{summary['envelopes']} signed steps of tenant {tenant} in {out} "
                        f"(sha256 {summary['sha256'][:16]}); run them with `irkit agent run-offline {out}`")


@click.group("results")
def results() -> None:
    """Results of offline agents (docs/agents.md)."""


@results.command("import")
@click.argument("file", metavar="FILE", type=click.Path(dir_okay=False))
@case_option()
@click.option("--drop", metavar="DIR", help="Where the agent's evidence drop was copied (default: agent.drop).")
@format_option
def import_(file: str, case_id: str, drop: str | None, fmt: str) -> None:
    """Verify an offline agent's signed results and record them in the case's audit log."""
    from ir_toolkit.cli.output import emit_json
    from ir_toolkit.run.offline import import_results

    session.start_case_logging(case_id)
    summary = import_results(case_id, Path(file), drop=drop)
    if fmt == "json":
        emit_json(summary)
    else:
        console().print(f"tenant {summary['tenant']}: {summary['recorded']} messages recorded, "
                        f"{summary['duplicate']} duplicates, {summary['rejected']} rejected; "
                        f"{summary['steps_done']} steps done (irkit resume --case {case_id} runs the rest)")
    if summary["rejected"]:
        sys.exit(1)


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
