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
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(path, data, mode=0o600)
    except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        raise InputError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None
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


@click.command("export")
@case_option()
@click.option("--tenant", metavar="T", help="The tenant to export (required for --format bundle).")
@click.option("--format", "fmt", type=click.Choice(["bundle", "ocsf", "jsonl"]), default="bundle",
              show_default=True,
              help="bundle: a client-verifiable directory (records, proofs, signed manifest, verifier); "
                   "ocsf: OCSF 1.8 events, one per line; jsonl: the raw records, one per line.")
@click.option("--out", "out", metavar="DIR|FILE",
              help="bundle: the directory to create (must be new or empty); ocsf/jsonl: a file (default stdout).")
@click.option("--since", "since", multiple=True, type=click.Path(path_type=Path), metavar="FILE",
              help="bundle: a checkpoint the client already holds; the export proves it is consistent.")
@click.option("--key", "keys", multiple=True, metavar="VKEY", help="Verifier key to trust when checking the log.")
def export(case_id: str, tenant: str | None, fmt: str, out: str | None, since: tuple[Path, ...],
           keys: tuple[str, ...]) -> None:
    """Export a case's audit records: for a client's auditor (bundle) or for a SIEM (ocsf, jsonl).

    A bundle holds one tenant's records with RFC 6962 inclusion proofs against the signed (and,
    where a witness cosigned it, witnessed) checkpoint, consistency proofs from earlier checkpoints,
    a manifest of the tenant's leaf indices signed with the log key, and verify_export.py, which
    checks it all with only the public key (`irkit audit verify-export DIR --key VKEY`). No record
    of another tenant is in it. Making one needs the signing key (the manifest is signed).
    """
    if fmt == "bundle":
        from ir_toolkit.audit.export import build_export
        from ir_toolkit.secrets.keystore import get_passphrase, load_signing_key

        if not tenant or not out:
            raise InputError("a bundle export needs --tenant T and --out DIR")
        info = build_export(case_id, tenant, Path(out), load_signing_key(get_passphrase()), since=since,
                            keys=keys or None)
        out_console = console()
        out_console.print(f"exported {info['records']} records of tenant {tenant} from {info['origin']} "
                          f"(tree size {info['tree_size']}) to {info['directory']}", markup=False, highlight=False)
        out_console.print(f"  client check: python3 {info['directory']}/verify_export.py {info['directory']} "
                          f"--key '{info['verifier_key']}'", markup=False, highlight=False, soft_wrap=True)
        return
    from ir_toolkit.audit.ocsf import export_lines

    data = b"".join(line.encode("utf-8") + b"\n" for line in export_lines(case_id, fmt, tenant=tenant))
    where = _write(out, data)
    if where != "-":
        console(stderr=True).print(f"{fmt} export written: {where}", markup=False, highlight=False)


@click.command("verify-export")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--key", "keys", multiple=True, required=True, metavar="VKEY",
              help="The log's verifier key, obtained out of band (repeatable).")
@click.option("--checkpoint", metavar="FILE", help="A checkpoint of this log you saved earlier.")
@click.option("--witness-key", "witness_keys", multiple=True, metavar="VKEY",
              help="Require a cosignature by this witness (repeatable).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def verify_export(directory: Path, keys: tuple[str, ...], checkpoint: str | None, witness_keys: tuple[str, ...],
                  fmt: str) -> None:
    """Check a tenant export with only the public key (what the client runs; exit 0 ok, 1 failed).

    The same code ships in the export as verify_export.py, runnable without irkit.
    """
    from ir_toolkit.audit.clientverify import Unusable
    from ir_toolkit.audit.clientverify import verify_export as check
    from ir_toolkit.cli.output import emit_json

    try:
        result = check(directory, list(keys), checkpoint=checkpoint, witness_keys=list(witness_keys))
    except Unusable as exc:
        raise InputError(str(exc)) from None
    if fmt == "json":
        emit_json(result)
    else:
        out = console()
        status = "VERIFIED" if result["ok"] else "FAILED"
        out.print(f"{status}: tenant {result.get('tenant')}, {result.get('records', 0)} records in "
                  f"{result.get('origin')} (tree size {result.get('tree_size')}, root {result.get('root')})",
                  markup=False, highlight=False, soft_wrap=True)
        for key, fp in zip(result.get("signed_by", []), result.get("key_fingerprints", []), strict=False):
            out.print(f"  signed by: {key} ({fp})", markup=False, highlight=False, soft_wrap=True)
        for w in result.get("cosigned_by", []):
            out.print(f"  cosigned by: {w}", markup=False, highlight=False, soft_wrap=True)
        if result.get("consistent_with"):
            out.print(f"  consistent with your checkpoint of size {result['consistent_with']}", markup=False)
        for problem in result["problems"]:
            out.print(f"  problem: {problem}", markup=False, highlight=False, soft_wrap=True)
    if not result["ok"]:
        raise VerificationFailed(f"export {directory} does NOT verify: {result['problems'][0]}")
