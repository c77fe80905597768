"""``irkit escrow``: the encrypted store of every secret irkit set (list states; get one secret)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ir_toolkit.cli.options import case_option, format_option
from ir_toolkit.cli.output import console, emit
from ir_toolkit.errors import InputError
from ir_toolkit.home import case_dir
from ir_toolkit.secrets import escrow as esc

LIST_COLUMNS = ("tenant", "host", "account", "state", "id", "created", "updated", "note")


@click.group("escrow")
def escrow() -> None:
    """Read the escrow of new secrets (encrypted to recipient keys)."""


def _store(case_id: str) -> esc.Escrow:
    if not case_dir(case_id).is_dir():
        raise InputError(f"no case {case_id} in {case_dir(case_id).parent}")
    return esc.Escrow(case_id)


@escrow.command("list")
@case_option()
@click.option("--tenant", default=None, metavar="NAME", help="Only this tenant.")
@click.option("--host", default=None, metavar="NAME", help="Only this host.")
@click.option("--account", default=None, metavar="NAME", help="Only this account.")
@click.option("--all", "show_all", is_flag=True, help="Every entry, not only the newest per account.")
@format_option
def list_cmd(case_id: str, tenant: str | None, host: str | None, account: str | None, show_all: bool,
             fmt: str) -> None:
    """List escrowed secrets and their states (never the secrets).

    By default one row per (tenant, host, account): its newest entry. States:
    pending (escrowed, maybe not applied yet), applied, verified (a fresh login
    with it worked), rolled_back (never on the host).
    """
    entries = _store(case_id).entries(tenant=tenant, host=host, account=account)
    if not show_all:
        newest: dict[tuple[str, str, str], esc.EscrowEntry] = {}
        for entry in entries:
            key = (entry.tenant, entry.host, entry.account)
            if key not in newest or (entry.created, entry.seq) >= (newest[key].created, newest[key].seq):
                newest[key] = entry
        entries = list(newest.values())
    entries.sort(key=lambda e: (e.tenant, e.host, e.account, e.created, e.seq))
    rows = [e.summary() for e in entries]
    if fmt == "table" and not rows:
        console(stderr=True).print(f"case {case_id}: the escrow is empty")
        return
    emit(rows, fmt, LIST_COLUMNS, title=f"escrow — case {case_id}")


def _private_key(key_file: str | None) -> Any:
    """The responder's escrow key (``irkit keys init``), or another recipient's key file."""
    from ir_toolkit.secrets.keystore import get_passphrase, load_escrow_private_key

    if key_file is None:
        return load_escrow_private_key(get_passphrase())
    path = Path(key_file)
    try:
        head = path.read_bytes()[:400]
    except OSError as exc:
        raise InputError(f"--key {path}: cannot read: {exc.strerror}") from None
    if head.lstrip().startswith(b"{"):
        try:
            json.loads(path.read_text())
        except ValueError:
            raise InputError(f"--key {path}: not a key file") from None
        return load_escrow_private_key(get_passphrase(), path=path)
    passphrase = get_passphrase(what=str(path)) if esc.is_encrypted_key_file(path) else None
    return esc.load_private_key_file(path, passphrase)


def _choose(store: esc.Escrow, tenant: str | None, host: str, account: str, entry_id: str | None) -> esc.EscrowEntry:
    entries = store.entries(tenant=tenant, host=host, account=account)
    if not entries:
        raise InputError(f"case {store.case_id}: no escrowed secret for host {host!r} account {account!r}"
                         + (f" in tenant {tenant!r}" if tenant else ""))
    tenants = sorted({e.tenant for e in entries})
    if len(tenants) > 1:
        raise InputError(f"host {host!r} exists in several tenants ({', '.join(tenants)}): add --tenant")
    if entry_id:
        for entry in entries:
            if entry.id == entry_id:
                return entry
        raise InputError(f"case {store.case_id}: no entry {entry_id} for {host}/{account}")
    ordered = esc.newest_first(entries)
    for entry in ordered:
        if entry.state == esc.VERIFIED:
            return entry
    unsettled = [e for e in ordered if e.state in esc.UNSETTLED]
    if unsettled:
        raise InputError(f"{host}/{account}: no verified secret; entry {unsettled[0].id} is {unsettled[0].state} "
                         f"(run `irkit resume --case {store.case_id}` to reconcile, or pick it with --entry)")
    raise InputError(f"{host}/{account}: every escrowed secret was rolled back (none is on the host)")


@escrow.command("get")
@case_option()
@click.option("--host", default=None, metavar="NAME", help="Host name as in the inventory.")
@click.option("--domain", default=None, metavar="DNS",
              help="A directory account's domain (tenant directory: DNS name), instead of --host.")
@click.option("--account", required=True, metavar="NAME", help="Account name, e.g. mspadmin or a sAMAccountName.")
@click.option("--tenant", default=None, metavar="NAME", help="Tenant (needed only if the host name is ambiguous).")
@click.option("--entry", "entry_id", default=None, metavar="ID", help="A specific entry (default: the newest verified).")
@click.option("--key", "key_file", default=None, metavar="FILE",
              help="Decrypt with this recipient private key (default: the escrow key from `irkit keys init`).")
@click.option("--unaudited", is_flag=True,
              help="Print the secret even when the read cannot be recorded in the audit log right now (e.g. a "
                   "running contain holds it): the read is queued and recorded the next time the log is opened.")
def get(case_id: str, host: str | None, domain: str | None, account: str, tenant: str | None, entry_id: str | None,
        key_file: str | None, unaudited: bool) -> None:
    """Decrypt and print one secret (the current one: newest verified).

    A host account: --host NAME; a directory account (Active Directory): --domain DNS (e.g.
    --tenant globex --domain globex.lab --account acme-admin).

    The read is recorded in the case's audit log (escrow.read) before the secret
    is printed. When that is impossible the secret is not printed (exit 2) unless
    --unaudited: then the read is queued (signed-key MAC) and recorded the next
    time irkit opens the log.
    """
    if bool(host) == bool(domain):
        raise InputError("name exactly one of --host NAME or --domain DNS")
    host = host or str(domain).lower()
    store = _store(case_id)
    entry = _choose(store, tenant, host, account, entry_id)
    secret = entry.decrypt(_private_key(key_file))
    problem = _audit_read(case_id, entry)
    if problem is not None:
        if not unaudited:
            raise InputError(f"the secret was not printed: its read cannot be recorded in the audit log of case "
                             f"{case_id} ({problem}); retry, or pass --unaudited (the read is then queued and "
                             "recorded the next time the log is opened)")
        console(stderr=True).print(f"[yellow]note:[/] {_queue_read(case_id, entry, problem)}")
    sys.stdout.write(secret + "\n")


def _read_params(entry: esc.EscrowEntry) -> dict[str, Any]:
    return {"account": entry.account, "entry": entry.id, "state": entry.state}


def _audit_read(case_id: str, entry: esc.EscrowEntry) -> str | None:
    """Record who read which secret; the reason when it could not be recorded."""
    try:
        from ir_toolkit.run.session import journal_actor, open_journal

        journal = open_journal(case_id, entry.msp)
        try:
            journal.append_durable(action="escrow.read", actor=journal_actor(), tenant=entry.tenant, host=entry.host,
                                   params=_read_params(entry))
        finally:
            journal.close()
    except Exception as exc:  # noqa: BLE001 - any failure to record: the caller refuses or queues
        return str(exc) or type(exc).__name__
    return None


def _queue_read(case_id: str, entry: esc.EscrowEntry, problem: str) -> str:
    """Queue the read for the next opening of the log (``--unaudited``)."""
    try:
        from ir_toolkit.audit.log import queue_record
        from ir_toolkit.run.session import journal_actor
        from ir_toolkit.secrets.keystore import get_passphrase, load_signing_key

        queue_record(case_id, load_signing_key(get_passphrase()), action="escrow.read", actor=journal_actor(),
                     tenant=entry.tenant, host=entry.host,
                     params={**_read_params(entry), "unaudited": True, "why": problem})
    except Exception as exc:  # noqa: BLE001 - --unaudited: the operator chose to read regardless
        return f"this read is NOT in the audit log and could not be queued ({exc})"
    return f"this read is not in the audit log yet ({problem}): queued, recorded the next time the log is opened"
