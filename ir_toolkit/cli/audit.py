"""``irkit audit``: verify, show, checkpoint and witness the signed audit log."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import click
from rich.markup import escape

from ir_toolkit.cli.options import case_option, format_option
from ir_toolkit.cli.output import console, emit, emit_json
from ir_toolkit.errors import InputError, VerificationFailed


@click.group("audit")
def audit() -> None:
    """Verify and review the signed, tamper-evident audit log of a case."""


@audit.command("verify")
@case_option()
@click.option("--checkpoint", "checkpoints", multiple=True, metavar="FILE",
              help="External checkpoint (a witness's or a saved copy) that anchors the log; repeatable.")
@click.option("--key", "keys", multiple=True, metavar="VKEY",
              help="Verifier key to trust (name+keyid+key, or @FILE holding one), repeatable; default: the log "
                   "keys the --witness-dir witness pinned, else the responder's current key in $IRKIT_HOME/keys "
                   "and its signed rotation chain (self-attested: a file next to the log).")
@click.option("--witness-key", "witness_keys", multiple=True, metavar="VKEY",
              help="Require every --checkpoint to be cosigned by this witness; repeatable.")
@click.option("--witness-dir", type=click.Path(path_type=Path), metavar="DIR",
              help="A witness's state directory: its latest cosigned checkpoint of this log anchors it "
                   "(truncation or rollback below it fails) and its pinned log keys are trusted.")
@click.option("--require-anchor", is_flag=True,
              help="Fail (exit 1) unless an external checkpoint or witness anchors the log (for auditors, CI "
                   "and scheduled runs).")
@click.option("--evidence-dir", type=click.Path(path_type=Path), metavar="DIR",
              help="Where fork evidence goes (default: the case's audit/forks/).")
@format_option
def verify(case_id: str, checkpoints: tuple[str, ...], keys: tuple[str, ...], witness_keys: tuple[str, ...],
           witness_dir: Path | None, require_anchor: bool, evidence_dir: Path | None, fmt: str) -> None:
    """Verify every record, the hash chain, the Merkle tree and the signed checkpoints.

    Exit 0 when valid (an unanchored tail is reported, not hidden), 1 when
    invalid (naming the first bad record and why), 2 on usage errors. A VALID
    verdict names what it is anchored to; without --key, --checkpoint or
    --witness-dir it is self-attested (it rests on key files next to the log).
    """
    from ir_toolkit.audit.verify import verify_case

    result = verify_case(case_id, checkpoint_file=list(checkpoints) or None, key=list(keys) or None,
                         witness_keys=list(witness_keys) or None, witness_dir=witness_dir,
                         require_anchor=require_anchor, evidence_dir=evidence_dir)
    if fmt == "json":
        emit_json(result.to_dict())
    else:
        out = console()
        status = ("[green]VALID[/green]" + (" (self-attested)" if result.self_attested else "")
                  if result.ok else "[red]INVALID[/red]")
        out.print(f"case {case_id} ({escape(result.origin or 'unknown origin')}): {status}")
        out.print(f"  records:   {result.size}, root {result.root}")
        signers = sorted({c['signed_by'] for c in result.checkpoints if c['signed_by'] and c['matches_records']})
        out.print(f"  signed:    through seq {result.signed_size} by {escape(', '.join(signers) or 'no valid key')}")
        out.print(f"  trusted:   {escape(', '.join(result.trusted_keys))}")
        out.print(f"  anchored to: {escape(result.anchor_text())}", soft_wrap=True)
        if result.anchored_size:
            cosigners = sorted({w for c in result.checkpoints if c['external'] for w in c['cosigned_by']})
            extra = f" (cosigned by {', '.join(cosigners)})" if cosigners else ""
            out.print(f"  anchored:  through seq {result.anchored_size} by external checkpoint(s){escape(extra)}")
        for note in result.notes:
            out.print(f"  [yellow]{escape(note)}[/yellow]", soft_wrap=True)
        for problem in result.problems:
            out.print(f"  [red]problem[/red]: {escape(problem.line())}", soft_wrap=True)
        if result.evidence_dir:
            out.print(f"  evidence written to {escape(result.evidence_dir)}")
    if not result.ok:
        raise VerificationFailed(result.summary())


@audit.command("show")
@case_option()
@click.option("--tenant", metavar="T", help="Only records of this tenant.")
@click.option("--host", metavar="H", help="Only records of this host.")
@click.option("--action", metavar="A", help="Only this action (shell-style pattern, e.g. 'step.*').")
@format_option
def show(case_id: str, tenant: str | None, host: str | None, action: str | None, fmt: str) -> None:
    """Show audit records (unverified: run `irkit audit verify` to check them)."""
    from ir_toolkit.audit.layout import log_path
    from ir_toolkit.audit.log import iter_records

    if not log_path(case_id).exists():
        raise InputError(f"case {case_id} has no audit log")
    rows = []
    for record in iter_records(case_id):
        if tenant is not None and record.get("tenant") != tenant:
            continue
        if host is not None and record.get("host") != host:
            continue
        if action is not None and not fnmatch.fnmatchcase(str(record.get("action")), action):
            continue
        rows.append(record)
    if fmt == "json":
        emit_json(rows)
        return
    table = [{**r, "params": _short(r.get("params"))} for r in rows]
    emit(table, "table", ["seq", "ts", "tenant", "host", "actor", "action", "outcome", "params"],
         title=f"audit log of case {case_id} ({len(rows)} records)")


def _short(params: object, limit: int = 80) -> str:
    text = json.dumps(params, separators=(",", ":"), sort_keys=True) if params else ""
    return text if len(text) <= limit else text[: limit - 3] + "..."


@audit.command("checkpoint")
@case_option()
@click.option("--sign", is_flag=True,
              help="Open the log with the signing key first: recover a crashed writer's tail and sign it.")
@click.option("--output", "-o", type=click.Path(path_type=Path), metavar="FILE", help="Also write it to FILE.")
def checkpoint(case_id: str, sign: bool, output: Path | None) -> None:
    """Print the latest signed checkpoint, for pinning outside this machine."""
    from ir_toolkit.audit.layout import checkpoint_path, log_path

    if not log_path(case_id).exists():
        raise InputError(f"case {case_id} has no audit log")
    if sign:
        from ir_toolkit.audit.log import AuditLog
        from ir_toolkit.secrets.keystore import get_passphrase, load_signing_key

        log = AuditLog.open(case_id, signer=load_signing_key(get_passphrase()))
        try:
            text = log.checkpoint()
        finally:
            log.close()
    else:
        try:
            text = checkpoint_path(case_id).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InputError(f"case {case_id} has no signed checkpoint (try --sign)") from None
    if output is not None:
        output.write_text(text)
    click.echo(text, nl=False)


@audit.command("witness")
@case_option(required=False)
@click.option("--witness-dir", metavar="DIR", help="The witness's own key and state ($IRKIT_WITNESS_DIR).")
@click.option("--log-key", "log_keys", multiple=True, metavar="VKEY",
              help="Pin the log's verifier key (needed the first time a log is witnessed).")
@click.option("--init", "do_init", is_flag=True, help="Create the witness key (passphrase: $IRKIT_WITNESS_PASSPHRASE).")
@click.option("--name", metavar="NAME", help="Witness key name for --init (default <host>/irkit-witness).")
@format_option
def witness(case_id: str | None, witness_dir: str | None, log_keys: tuple[str, ...], do_init: bool,
            name: str | None, fmt: str) -> None:
    """Cosign a case's latest checkpoint as a witness (a second person or machine).

    The witness verifies the log with its pinned log key, checks that the new
    checkpoint is an append-only extension of the last one it cosigned, and only
    then cosigns. It refuses (exit 1) a smaller or inconsistent tree and writes
    both checkpoints out as evidence. Keep the witness directory off the
    responder's machine; `irkit audit verify --checkpoint` uses its files.
    """
    from ir_toolkit.audit.witness import Witness, witness_case, witness_passphrase
    from ir_toolkit.audit.witness import witness_dir as resolve_dir

    directory = resolve_dir(witness_dir)
    out = console()
    if do_init:
        vkey = Witness.init(directory, witness_passphrase(), name=name)
        if fmt == "json" and case_id is None:
            emit_json({"witness_key": vkey, "directory": str(directory)})
        else:
            out.print(f"created witness key in {directory}: {vkey}")
    if case_id is None:
        if not do_init:
            vkey = Witness.verifier_key(directory)
            if fmt == "json":
                emit_json({"witness_key": vkey, "directory": str(directory)})
            else:
                out.print(f"witness key: {vkey}")
        return
    the_witness = Witness.load(directory, witness_passphrase())
    info = witness_case(the_witness, case_id, log_keys=list(log_keys))
    if fmt == "json":
        emit_json(info)
        return
    out.print(f"cosigned {info['origin']} at size {info['size']} (previously {info['previous_size']})")
    out.print(f"  witness key: {info['witness_key']}")
    out.print(f"  saved:       {info['saved']}")
    out.print(f"  case copy:   {info['case_copy']}")
    click.echo(info["cosigned"], nl=False)


from ir_toolkit.cli import audit_review as _review  # noqa: E402 - report/export commands live there

for _command in (_review.report, _review.export, _review.verify_export):
    audit.add_command(_command)
