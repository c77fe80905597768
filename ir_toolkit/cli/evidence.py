"""``irkit evidence``: list, verify and extract triage bundles."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from ir_toolkit.cli.options import case_option, format_option
from ir_toolkit.cli.output import emit
from ir_toolkit.log import printable
from ir_toolkit.errors import InputError, VerificationFailed


@click.group("evidence")
def evidence() -> None:
    """Work with evidence bundles and their chain of custody."""


def _identity_option(func: Any) -> Any:
    return click.option(
        "--identity", "identities", multiple=True, metavar="FILE", type=click.Path(dir_okay=False),
        help="X25519 private key (PEM) of a recipient, to read encrypted bundles; repeatable. "
             "Default: the responder's escrow key when a bundle is encrypted to it.",
    )(func)


@evidence.command("list")
@case_option()
@click.option("--tenant", default=None, metavar="NAME", help="Only this tenant.")
@click.option("--host", default=None, metavar="NAME", help="Only this host.")
@format_option
def list_cmd(case_id: str, tenant: str | None, host: str | None, fmt: str) -> None:
    """List the bundles of a case: volatile snapshots (taken before isolation) and full triage bundles."""
    from ir_toolkit.triage.bundle import PARTIAL, list_collections
    from ir_toolkit.triage.custody import custody_records, find_record, seal_kind

    try:
        records = custody_records(case_id)
    except InputError:          # no trusted key here: custody cannot be shown, the list still can
        records = None
    rows = []
    for coll in list_collections(case_id, tenant=tenant, host=host, include_partial=True):
        if coll.id.endswith(PARTIAL):
            rows.append({"tenant": coll.tenant, "host": coll.host, "collection": coll.id,
                         "status": "incomplete (never sealed)", "bundle": coll.relative(case_id)})
            continue
        try:
            seal = coll.seal()
        except VerificationFailed as exc:
            rows.append({"tenant": coll.tenant, "host": coll.host, "collection": coll.id,
                         "status": f"unreadable: {exc}", "bundle": coll.relative(case_id)})
            continue
        counts = seal.get("counts", {})
        custody = "unchecked" if records is None else ("recorded" if find_record(records, coll) else "missing")
        rows.append({
            "tenant": coll.tenant, "host": coll.host, "collection": coll.id, "kind": seal_kind(seal),
            "status": seal.get("status"), "profile": seal.get("profile"), "files": counts.get("collected"), "size": seal.get("bundle_size"),
            "encrypted": "yes" if seal.get("encrypted") else "no", "custody": custody,
            "finished": seal.get("finished"), "bundle": coll.relative(case_id) + "/" + str(seal.get("bundle_file")),
            "bundle_sha256": seal.get("bundle_sha256"), "manifest_sha256": seal.get("manifest_sha256"),
            "recipients": seal.get("recipients"),
        })
    if not rows and fmt != "json":
        sys.stderr.write(f"irkit: case {case_id}: no evidence bundles\n")
        return
    emit(rows, fmt, ["tenant", "host", "collection", "kind", "status", "files", "size", "encrypted", "custody",
                     "finished"],
         title=f"evidence {case_id}")


@evidence.command("verify")
@case_option()
@click.option("--tenant", default=None, metavar="NAME", help="Only this tenant.")
@click.option("--host", default=None, metavar="NAME", help="Only this host.")
@_identity_option
@click.option("--no-custody", is_flag=True,
              help="Check the bundles alone, without the audit log's chain of custody (a missing log is "
                   "otherwise a failure).")
@click.option("--key", "log_keys", multiple=True, metavar="VKEY",
              help="Audit log verifier key to trust (as for `irkit audit verify --key`); repeatable.")
@format_option
def verify(case_id: str, tenant: str | None, host: str | None, identities: tuple[str, ...], no_custody: bool,
           log_keys: tuple[str, ...], fmt: str) -> None:
    """Re-hash every bundle against its manifest, its seal and the audit log.

    The custody records are taken only from the verified, signed part of the
    case's audit log. Exit 0 when everything matches, 1 naming each file that
    does not (a missing audit log fails unless --no-custody).
    """
    from ir_toolkit.triage.bundle import list_collections
    from ir_toolkit.triage.verify import verify_case

    keys = _load_identities(identities, list_collections(case_id, tenant=tenant, host=host))
    reports = verify_case(case_id, identities=keys, tenant=tenant, host=host, custody=not no_custody,
                          key=list(log_keys) or None)
    rows = [r.row(case_id) for r in reports]
    emit(rows, fmt, ["tenant", "host", "collection", "kind", "result", "members", "contents", "custody"],
         title=f"evidence verify {case_id}")
    for report in reports:
        for warning in report.warnings:
            sys.stderr.write(f"irkit: warning: {report.tenant}/{report.host}/{report.collection.id}: {printable(warning)}\n")
        for problem in report.problems:
            sys.stderr.write(f"irkit: FAILED {report.tenant}/{report.host}/{report.collection.id}: {printable(problem)}\n")
    bad = [r for r in reports if not r.ok]
    if bad:
        first = bad[0]
        more = sum(len(r.problems) for r in bad) - 1
        raise VerificationFailed(
            f"evidence verification failed: {first.tenant}/{first.host}: {first.problems[0]}"
            + (f" (and {more} more problem(s))" if more else "")
        )


@evidence.command("extract")
@case_option()
@click.option("--host", required=True, metavar="NAME", help="Host whose bundle to extract.")
@click.option("--tenant", default=None, metavar="NAME", help="Tenant of the host (if names repeat).")
@click.option("--collection", "collection_id", default=None, metavar="ID", help="A given collection (default: latest).")
@click.option("--out", required=True, type=click.Path(), help="Empty or new directory (with --raw: a new .tar file).")
@click.option("--raw", is_flag=True, help="Write the decrypted tar archive as it is, without unpacking it.")
@_identity_option
def extract(case_id: str, host: str, tenant: str | None, collection_id: str | None, out: str,
            raw: bool, identities: tuple[str, ...]) -> None:
    """Extract (and decrypt) a host's bundle, checking every file against the manifest.

    Files are written read-only (0400) and never executable. With --raw the decrypted
    tar is written to OUT unchanged (authenticated to its end), for other tools.
    """
    from ir_toolkit.triage.bundle import latest_collection, list_collections
    from ir_toolkit.triage.extract import extract_collection

    if collection_id is not None:
        matches = [c for c in list_collections(case_id, tenant=tenant, host=host) if c.id == collection_id]
        if not matches:
            raise InputError(f"case {case_id}: no collection {collection_id!r} for host {host!r}")
        coll = matches[0]
    else:
        coll = latest_collection(case_id, host, tenant=tenant)
    keys = _load_identities(identities, [coll])
    if coll.encrypted and not keys:
        raise InputError(f"{coll.relative(case_id)} is encrypted: give --identity FILE "
                         "(the X25519 private key of one of its recipients)")
    if raw:
        from ir_toolkit.triage.extract import decrypt_raw

        target = Path(out)
        if target.exists():
            raise InputError(f"{out} exists: --raw writes a new file")
        size = decrypt_raw(coll, target, identities=keys)
        sys.stdout.write(f"wrote the {'decrypted ' if coll.encrypted else ''}tar of {coll.relative(case_id)} "
                         f"to {out} ({size} bytes)\n")
        return
    if Path(out).exists() and not Path(out).is_dir():
        raise InputError(f"{out} exists and is not a directory")
    result = extract_collection(coll, Path(out), identities=keys)
    sys.stdout.write(f"extracted {result.members} members of {coll.relative(case_id)} to {out}\n")
    if result.problems:
        for problem in result.problems:
            sys.stderr.write(f"irkit: FAILED {printable(problem)}\n")
        raise VerificationFailed(f"extracted, but {len(result.problems)} file(s) do not match the manifest: "
                                 f"{result.problems[0]}")


def _load_identities(paths: tuple[str, ...], collections: list[Any]) -> list[Any]:
    """Keys from ``--identity``; else the responder's evidence key if an encrypted bundle lists it as
    recipient (the escrow key only for bundles made before the evidence key existed)."""
    from ir_toolkit.triage.crypto import fingerprint, load_private_key

    if paths:
        import os

        passphrase = os.environ.get("IRKIT_KEY_PASSPHRASE")
        return [load_private_key(Path(p), passphrase) for p in paths]
    wanted: set[str] = set()
    for coll in collections:
        if coll.encrypted:
            try:
                wanted.update(coll.seal().get("recipients", []))
            except VerificationFailed:
                continue
    if not wanted:
        return []
    from ir_toolkit.secrets import keystore

    try:
        if fingerprint(keystore.evidence_public_key()) in wanted:
            return [keystore.load_evidence_private_key()]
    except InputError:
        pass
    try:
        public = keystore.escrow_public_key()
    except InputError:
        return []
    if fingerprint(public) not in wanted:
        return []
    return [keystore.load_escrow_private_key()]  # a bundle encrypted before the evidence key existed
