"""``irkit audit report``, ``irkit audit export`` and ``irkit audit verify-export``: what was done,
per tenant, for people (HTML, Markdown), machines (JSON), SIEMs (OCSF, JSONL) and clients'
auditors (a tenant export with Merkle proofs that verifies with only the log's public key)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ir_toolkit.cli.options import case_option, inventory_options, load_selected_inventory
from ir_toolkit.cli.output import console
from ir_toolkit.errors import InputError, VerificationFailed
from ir_toolkit.fsutil import write_atomic

_TRUST_OPTIONS = [
    click.option("--key", "keys", multiple=True, metavar="VKEY",
                 help="Verifier key to trust (repeatable); default: the responder keys in $IRKIT_HOME/keys."),
    click.option("--checkpoint", "checkpoints", multiple=True, metavar="FILE",
                 help="External checkpoint (a witness's or the client's copy) that anchors the log; repeatable."),
    click.option("--witness-key", "witness_keys", multiple=True, metavar="VKEY",
                 help="Require the external checkpoints to be cosigned by this witness; repeatable."),
]


def _trust_options(func):
    for option in reversed(_TRUST_OPTIONS):
        func = option(func)
    return func


def _write(out: str | None, data: bytes) -> str:
    if out in (None, "-"):
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return "-"
    path = Path(out)
    if path.is_dir():
        raise InputError(f"--out {out}: is a directory (give a file name)")
    try:
        write_atomic(path, data, mode=0o600)
    except FileNotFoundError:
        raise InputError(f"--out {out}: the directory {path.parent} does not exist") from None
    return str(path)


@click.command("report")
@case_option()
@click.option("--tenant", metavar="T", help="Only this tenant: nothing of any other tenant is in the report.")
@click.option("--format", "fmt", type=click.Choice(["html", "md", "json"]), default="html", show_default=True,
              help="Self-contained HTML page, Markdown, or the JSON model.")
@click.option("--out", "out", metavar="FILE",
              help="Write here ('-' for stdout); default $IRKIT_HOME/cases/ID/reports/report[-T].<format>.")
@inventory_options
@_trust_options
def report(case_id: str, tenant: str | None, fmt: str, out: str | None, msp: str | None,
           inventory_path: str | None, keys: tuple[str, ...], checkpoints: tuple[str, ...],
           witness_keys: tuple[str, ...]) -> None:
    """Write the post-incident report of a case (or of one tenant) from the signed audit log.

    The report starts with the verification verdict (valid or not and why, the checkpoint it is
    anchored to, witness cosignatures, the verifier key fingerprint), then a timeline of the run
    (phases and waves per tenant, failures and time-outs marked), then per tenant: hosts,
    directory accounts, what was revoked, rotated, isolated and reimaged, failures with reasons,
    approvals, evidence bundles with their SHA-256 and custody, and a short statement for the
    client. With --tenant it contains nothing of other tenants. --msp/--inventory add host
    addresses and tenant display names from the inventory (they are not in the log).

    The report is written even when the log does not verify (the verdict says INVALID); the
    exit code is then 1.
    """
    from ir_toolkit.audit.report import render
    from ir_toolkit.audit.review import build_review
    from ir_toolkit.home import case_dir

    addresses, names = {}, {}
    if msp or inventory_path:
        inventory = load_selected_inventory(msp, inventory_path)
        addresses = {h.name: str(h.address) for h in inventory.hosts() if tenant is None or h.tenant == tenant}
        names = {t.name: t.display_name for t in inventory.tenants if t.display_name and (tenant in (None, t.name))}
    review = build_review(case_id, tenant=tenant, keys=keys or None, checkpoints=checkpoints or None,
                          witness_keys=witness_keys or None, addresses=addresses, tenant_names=names)
    data = render(review, fmt).encode("utf-8")
    if out is None:
        directory = case_dir(case_id) / "reports"
        directory.mkdir(mode=0o700, exist_ok=True)
        out = str(directory / f"report{'-' + tenant if tenant else ''}.{fmt}")
    where = _write(out, data)
    verification = review["verification"]
    if where != "-":
        console(stderr=True).print(f"report written: {where}", highlight=False, markup=False)
    if not verification["ok"]:
        raise VerificationFailed(f"audit log of case {case_id} is INVALID: {verification['reason']} "
                                 f"(the report says so)")
