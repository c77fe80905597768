"""``irkit keys``: the responder's signing and escrow keys."""

from __future__ import annotations

import click

from ir_toolkit.cli.options import format_option
from ir_toolkit.cli.output import emit_json
from ir_toolkit.errors import InputError
from ir_toolkit.home import case_dir, irkit_home, keys_dir, validate_case_id


@click.group("keys")
def keys() -> None:
    """Create and manage the responder's keys (audit signing, escrow)."""


@keys.command("init")
@click.option("--name", metavar="NAME", help="Key name in signed notes (default: <host>/irkit-responder).")
@click.option("--force", is_flag=True, help="Replace existing keys (the old ones move to keys/retired/).")
@click.option("--if-missing", is_flag=True, help="Do nothing (exit 0) when keys already exist.")
@click.option("--evidence-key", "evidence_only", is_flag=True,
              help="Only add the evidence key pair to existing keys that lack it.")
@format_option
def init(name: str | None, force: bool, if_missing: bool, evidence_only: bool, fmt: str) -> None:
    """Create the signing key, the escrow key and the evidence key in $IRKIT_HOME/keys.

    The passphrase comes from $IRKIT_KEY_PASSPHRASE or a hidden prompt. The evidence
    key (bundles are encrypted to it) is separate from the escrow key, so whoever reads
    evidence need not be able to decrypt escrowed passwords; $IRKIT_EVIDENCE_PASSPHRASE
    gives it a passphrase of its own.
    """
    from ir_toolkit.secrets.keystore import (
        EVIDENCE_PUB,
        evidence_passphrase,
        get_passphrase,
        init_evidence_key,
        init_keys,
        keys_exist,
        show_keys,
    )

    if evidence_only:
        if not keys_exist():
            raise InputError(f"no responder keys in {keys_dir()}: run `irkit keys init` first")
        if (keys_dir() / EVIDENCE_PUB).exists():
            raise InputError(f"an evidence key already exists in {keys_dir()}")
        public = init_evidence_key(evidence_passphrase(get_passphrase(confirm=True)))
        if fmt == "json":
            emit_json({"created": True, "evidence_public_key": public})
        else:
            click.echo(f"created the evidence key in {keys_dir()}: {public}")
        return
    if keys_exist() and not force:
        if if_missing:
            info = show_keys()
            if fmt == "json":
                emit_json({"created": False, **info})
            else:
                click.echo(f"keys already exist in {info['directory']}; verifier key: {info['verifier_key']}")
            return
        raise InputError(f"responder keys already exist in {keys_dir()}: use --force to replace them "
                         "(or --if-missing to keep them)")
    info = init_keys(get_passphrase(confirm=True), name=name, force=force)
    if fmt == "json":
        emit_json({"created": True, **info})
        return
    click.echo(f"created responder keys in {info['directory']}")
    click.echo(f"  audit signing key:  {info['verifier_key']}")
    click.echo(f"  escrow public key:  {info['escrow_public_key']}")
    click.echo(f"  evidence public key: {info['evidence_public_key']}")
    if info.get("retired"):
        click.echo(f"  previous keys kept in {info['retired']}")
    click.echo("Give the verifier key to the client and auditors out of band: `irkit audit verify --key` pins it.")


@keys.command("show")
@format_option
def show(fmt: str) -> None:
    """Show the public keys (verifier key string, escrow public key); no passphrase needed."""
    from ir_toolkit.secrets.keystore import show_keys

    info = show_keys()
    if fmt == "json":
        emit_json(info)
        return
    click.echo(f"keys in {info['directory']}")
    click.echo(f"  name:               {info['name']}")
    click.echo(f"  audit verifier key: {info['verifier_key']}")
    click.echo(f"  escrow public key:  {info['escrow_public_key']} (X25519)")
    kdf = info["kdf"]
    click.echo(f"  encrypted with:     scrypt N=2^{kdf.get('log2n')} r={kdf.get('r')} p={kdf.get('p')} + AES-256-GCM")
    for vkey in info["retired_verifier_keys"]:
        click.echo(f"  retired/pending:    {vkey}")
    if info["pending_rotation"]:
        click.echo("  a key rotation is in progress: finish it with `irkit keys rotate`")


@keys.command("rotate")
@click.option("--case", "cases", multiple=True, metavar="ID",
              help="Case whose audit log moves to the new key (repeatable). The rotation record is signed by "
                   "the old key in each log.")
@click.option("--name", metavar="NAME", help="Name of the new key (default: the current name).")
@format_option
def rotate(cases: tuple[str, ...], name: str | None, fmt: str) -> None:
    """Replace the audit signing key; the old private key is destroyed.

    Every case given with --case records the rotation in its audit log (signed by
    the old key), so verifiers accept the new key from that point on. Cases not
    given keep the old key and cannot be appended to afterwards.
    """
    from ir_toolkit.audit.log import AuditLog, log_key_schedule, system_actor
    from ir_toolkit.secrets.keystore import finish_rotation, get_passphrase, load_signing_key, pending_signing_key

    for case_id in cases:
        validate_case_id(case_id)
        if not (case_dir(case_id) / "audit").is_dir():
            raise InputError(f"case {case_id} has no audit log")
    passphrase = get_passphrase()
    old = load_signing_key(passphrase)
    new = pending_signing_key(passphrase, name=name)
    rotated = []
    for case_id in cases:
        schedule = log_key_schedule(case_id)
        current = schedule.current
        if current is not None and current.vkey == new.verifier_key():
            rotated.append({"case": case_id, "status": "already rotated"})
            continue
        log = AuditLog.open(case_id, signer=old)
        try:
            log.rotate_key(new, actor=system_actor())
        finally:
            log.close()
        rotated.append({"case": case_id, "status": "rotated"})
    info = finish_rotation()
    left = []
    cases_root = irkit_home() / "cases"
    if cases_root.is_dir():
        for path in sorted(cases_root.iterdir()):
            if (path / "audit" / "log.jsonl").exists() and path.name not in cases:
                current = log_key_schedule(path.name).current
                if current is not None and current.vkey == info["old_verifier_key"]:
                    left.append(path.name)
    if fmt == "json":
        emit_json({**info, "cases": rotated, "cases_left_on_old_key": left})
        return
    click.echo(f"new audit signing key: {info['verifier_key']}")
    click.echo(f"old key retired (public key kept, private key destroyed): {info['old_verifier_key']}")
    for row in rotated:
        click.echo(f"  case {row['case']}: {row['status']}")
    for case_id in left:
        click.echo(f"  case {case_id}: still signed by the old key (closed for appending)")
