"""``irkit triage``: forensic collection into hashed, optionally encrypted bundles."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ir_toolkit import log
from ir_toolkit.cli.options import case_option, format_option, inventory_options, load_selected_inventory
from ir_toolkit.cli.output import emit
from ir_toolkit.log import printable
from ir_toolkit.errors import InputError, VerificationFailed
from ir_toolkit.home import case_dir


@click.command("triage")
@inventory_options
@case_option()
@click.option("--tenant", "tenants", multiple=True, metavar="NAME", help="Only these tenants.")
@click.option("--host", "hosts", multiple=True, metavar="NAME", help="Only these hosts.")
@click.option("--profile", default="ir_triage", show_default=True, help="Artifact profile (ir_triage, full).")
@click.option("--recipient", "recipients", multiple=True, metavar="KEY",
              help="Encrypt bundles to this X25519 public key (PEM file, or base64 of 32 bytes); repeatable.")
@click.option("--encrypt", is_flag=True, help="Encrypt bundles to the responder's escrow key (irkit keys init).")
@click.option("--allow-state-changes", is_flag=True,
              help="Also run artifacts marked modifies_state (e.g. iptables-save, which may load kernel modules).")
@click.option("--definitions", "definitions", multiple=True, metavar="DIR",
              type=click.Path(exists=True, file_okay=False),
              help="Extra artifact definitions (*.yml, optional profiles.yml) added to the built-in ones.")
@click.option("--workers", default=8, show_default=True, type=click.IntRange(1, 256),
              help="Hosts collected at the same time.")
@format_option
def triage(msp: str | None, inventory_path: str | None, case_id: str, tenants: tuple[str, ...],
           hosts: tuple[str, ...], profile: str, recipients: tuple[str, ...], encrypt: bool,
           allow_state_changes: bool, definitions: tuple[str, ...], workers: int, fmt: str) -> None:
    """Collect evidence from hosts (volatile data first) before anything is changed.

    One bundle per host under $IRKIT_HOME/cases/ID/evidence/TENANT/HOST/, each
    file hashed on the host and on receipt, the bundle's SHA-256 recorded in the
    case's signed audit log. Host keys are checked strictly against the
    inventory's known_hosts. Exit 0: every host collected without a hash
    mismatch; 1: a host failed or a file's hashes differ; 2: bad input.
    """
    from ir_toolkit.triage.crypto import load_public_key
    from ir_toolkit.triage.custody import open_audit_log
    from ir_toolkit.triage.fleet import TriageOptions, run_triage, select_hosts
    from ir_toolkit.triage.schema import load_catalog

    inv = load_selected_inventory(msp, inventory_path)
    chosen = select_hosts(inv, tenants, hosts)
    catalog = load_catalog(extra_dirs=[Path(d) for d in definitions])
    for os_name in sorted({h.os for h in chosen}):
        catalog.select(profile, os_name, allow_modifies_state=allow_state_changes)
    keys = [load_public_key(spec) for spec in recipients]
    if encrypt:
        keys.append(_escrow_public_key())
    case_path = case_dir(case_id, create=True)
    log.configure(json_path=log.run_log_path(case_path), verbosity=_verbosity())
    audit_log = open_audit_log(case_id, inv.msp.name)
    if audit_log is None:
        sys.stderr.write("irkit: warning: the audit log module is not available; "
                         "chain-of-custody records are NOT written\n")
    options = TriageOptions(profile=profile, recipients=keys, allow_modifies_state=allow_state_changes,
                            workers=workers)
    try:
        results = run_triage(inv, case_id, chosen, options, audit_log=audit_log, catalog=catalog)
    finally:
        if audit_log is not None:
            audit_log.close()
    rows = []
    for res in results:
        counts = res.counts
        rows.append({
            "tenant": res.target.tenant, "host": res.target.host, "status": res.status,
            "collected": counts.get("collected"), "hashed": counts.get("hashed"),
            "skipped": counts.get("skipped"), "failed": counts.get("failed"),
            "mismatch": counts.get("hash_mismatch"), "bytes": counts.get("bytes"),
            "seconds": round(res.duration, 1) if res.collection else None,
            "bundle": res.collection.relative(case_id) if res.collection else None,
            "bundle_sha256": (res.seal or {}).get("bundle_sha256"),
            "error": res.error, "problems": res.problems,
        })
    emit(rows, fmt, ["tenant", "host", "status", "collected", "hashed", "skipped", "failed", "mismatch",
                     "bytes", "seconds", "bundle"], title=f"triage {case_id} ({profile})")
    failed = [r for r in results if r.status == "failed"]
    mismatched = [r for r in results if r.problems]
    for res in failed:
        sys.stderr.write(f"irkit: {res.target.tenant}/{res.target.host}: {printable(res.error)}\n")
    for res in results:
        if res.status == "partial":
            why = res.error or f"{len(res.anomalies)} host anomalies (sizes, names or members it must not send)"
            sys.stderr.write(f"irkit: warning: {res.target.tenant}/{res.target.host}: partial collection: "
                             f"{printable(why)}\n")
    for res in mismatched:
        for problem in res.problems:
            sys.stderr.write(f"irkit: {res.target.tenant}/{res.target.host}: HASH MISMATCH {printable(problem)}\n")
    if failed or mismatched:
        parts = []
        if failed:
            parts.append(f"{len(failed)} of {len(results)} host(s) not collected")
        if mismatched:
            parts.append(f"{len(mismatched)} host(s) with hash mismatches")
        raise VerificationFailed("triage: " + "; ".join(parts))


def _escrow_public_key():  # type: ignore[no-untyped-def]
    try:
        from ir_toolkit.secrets import keystore
    except ImportError:
        raise InputError("--encrypt needs the responder keys (irkit keys init), which are not available") from None
    return keystore.escrow_public_key()


def _verbosity() -> int:
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx else None
    return int(root.params.get("verbose", 0)) if root is not None else 0
