"""``irkit triage``: forensic collection into hashed, optionally encrypted bundles."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from ir_toolkit import log
from ir_toolkit.cli.frontend import CliFrontend
from ir_toolkit.cli.options import case_option, format_option, inventory_options, load_selected_inventory
from ir_toolkit.cli.output import emit
from ir_toolkit.log import printable
from ir_toolkit.errors import VerificationFailed
from ir_toolkit.home import case_dir


@click.command("triage")
@inventory_options
@case_option()
@click.option("--tenant", "tenants", multiple=True, metavar="NAME", help="Only these tenants.")
@click.option("--host", "hosts", multiple=True, metavar="NAME", help="Only these hosts.")
@click.option("--profile", default="ir_triage", show_default=True, help="Artifact profile (ir_triage, full).")
@click.option("--recipient", "recipients", multiple=True, metavar="KEY",
              help="Encrypt bundles to this X25519 public key (PEM file, or base64 of 32 bytes); repeatable.")
@click.option("--encrypt", is_flag=True, help="Encrypt bundles to the responder's evidence key (irkit keys init; not the escrow key).")
@click.option("--allow-state-changes", is_flag=True,
              help="Also run artifacts marked modifies_state (e.g. iptables-save, which may load kernel modules).")
@click.option("--definitions", "definitions", multiple=True, metavar="DIR",
              type=click.Path(exists=True, file_okay=False),
              help="Extra artifact definitions (*.yml, optional profiles.yml) added to the built-in ones.")
@click.option("--workers", default=8, show_default=True, type=click.IntRange(1, 256),
              help="Hosts collected at the same time.")
@click.option("--host-timeout", default=None, type=click.FloatRange(1, 86400), metavar="SECONDS",
              help="Seconds one host's collection may take in all (default 3600): a host that stalls or "
                   "trickles ends there as timed_out, what was collected sealed as partial.")
@click.option("--transfer", default="tar", show_default=True, type=click.Choice(["tar", "sftp"]),
              help="How files come over (sftp: the host's sftp-server, for hosts without GNU tar).")
@format_option
def triage(msp: str | None, inventory_path: str | None, case_id: str, tenants: tuple[str, ...],
           hosts: tuple[str, ...], profile: str, recipients: tuple[str, ...], encrypt: bool,
           allow_state_changes: bool, definitions: tuple[str, ...], workers: int, host_timeout: float | None,
           transfer: str, fmt: str) -> None:
    """Collect evidence from hosts (volatile data first) before anything is changed.

    One bundle per host under $IRKIT_HOME/cases/ID/evidence/TENANT/HOST/, each
    file hashed on the host and on receipt, the bundle's SHA-256 recorded in the
    case's signed audit log. Host keys are checked strictly against the
    inventory's known_hosts. Runs as a generated `triage.collect` playbook through
    the engine (plan, deadlines, `irkit resume`). Exit 0: every host collected
    without a hash mismatch (a host that lied is sealed `partial`, with a
    warning); 1: a host failed, timed out (partial evidence sealed) or a file's
    hashes differ; 2: bad input; 3: interrupted (irkit resume).
    """
    from ir_toolkit.run import session
    from ir_toolkit.run.generated import select_hosts, triage_playbook, write_generated_playbook
    from ir_toolkit.triage.crypto import load_public_key
    from ir_toolkit.triage.schema import load_catalog

    inv = load_selected_inventory(msp, inventory_path)
    chosen = select_hosts(inv, tenants, hosts)
    catalog = load_catalog(extra_dirs=[Path(d) for d in definitions])
    for os_name in sorted({h.os for h in chosen}):
        catalog.select(profile, os_name, allow_modifies_state=allow_state_changes)
    for spec in recipients:
        load_public_key(spec)  # bad keys fail here, before a case directory is made
    if encrypt:
        _evidence_public_key()
    case_path = case_dir(case_id, create=True)
    log.configure(json_path=log.run_log_path(case_path), verbosity=_verbosity())
    data = triage_playbook(tenants=list(tenants), hosts=list(hosts), profile=profile, encrypt=encrypt,
                           recipients=list(recipients), allow_state_changes=allow_state_changes,
                           definitions=list(definitions), host_timeout=host_timeout, transfer=transfer)
    path = write_generated_playbook(case_id, "triage", data)
    frontend = TriageFrontend(fmt, case_id=case_id, profile=profile, hosts=chosen)
    code = session.run_playbook(msp, inventory_path, case_id, path, frontend=frontend, dry_run=False,
                                forks=workers)
    frontend.finish(code)


class TriageFrontend(CliFrontend):
    """``irkit triage``'s view of the run: no plan table or prompt, one row per host at the end."""

    def __init__(self, fmt: str, *, case_id: str, profile: str, hosts: list[Any]) -> None:
        super().__init__(fmt, yes=True)
        self.case_id = case_id
        self.profile = profile
        self.hosts = hosts
        self.details: dict[str, dict[str, Any]] = {}
        self.ended: dict[str, dict[str, Any]] = {}
        self.planned: set[str] = set()

    def show_plan(self, plan: Any, *, dry_run: bool) -> None:
        self.planned = {item.host for item in plan.items}

    def show_summary(self, summary: Any) -> None:
        return None

    def event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "step.done" and data.get("action") == "triage.collect":
            self.details[data["host"]] = dict(data.get("details") or {})
        elif kind == "host.done":
            self.ended[data["host"]] = data
        super().event(kind, data)

    def finish(self, code: int) -> None:
        rows: list[dict[str, Any]] = []
        failed: list[tuple[dict[str, Any], str]] = []
        mismatched: list[tuple[dict[str, Any], list[str]]] = []
        for host in self.hosts:
            row: dict[str, Any] = {"tenant": host.tenant, "host": host.name}
            details = self.details.get(host.name)
            ended = self.ended.get(host.name, {})
            if host.name not in self.planned:
                error = f"no triage action for {host.os} hosts over {host.transport} yet"
            elif details is None:
                status = ended.get("status") or "not run"
                message = ended.get("message") or status
                error = f"{ended['kind']}: {message}" if ended.get("kind") else message
            else:
                error = None
            if error is not None:
                row.update(status="failed", error=error)
                failed.append((row, error))
            else:
                assert details is not None
                counts = details.get("counts") or {}
                row.update(status=details.get("status"), collected=counts.get("collected"),
                           hashed=counts.get("hashed"), skipped=counts.get("skipped"), failed=counts.get("failed"),
                           mismatch=counts.get("hash_mismatch"), bytes=counts.get("bytes"),
                           seconds=details.get("seconds"), bundle=details.get("bundle"),
                           bundle_sha256=details.get("bundle_sha256"), error=None,
                           problems=details.get("problems") or [])
                if row["problems"]:
                    mismatched.append((row, row["problems"]))
                if row["status"] == "partial":
                    sys.stderr.write(f"irkit: warning: {host.tenant}/{host.name}: partial collection: "
                                     f"{details.get('anomalies', 0)} host anomalies\n")
            rows.append(row)
        emit(rows, self.fmt, ["tenant", "host", "status", "collected", "hashed", "skipped", "failed", "mismatch",
                              "bytes", "seconds", "bundle"], title=f"triage {self.case_id} ({self.profile})")
        for row, error in failed:
            sys.stderr.write(f"irkit: {row['tenant']}/{row['host']}: {printable(error)}\n")
        for row, problems in mismatched:
            for problem in problems:
                sys.stderr.write(f"irkit: {row['tenant']}/{row['host']}: HASH MISMATCH {printable(problem)}\n")
        if failed or mismatched:
            parts = []
            if failed:
                parts.append(f"{len(failed)} of {len(rows)} host(s) not collected")
            if mismatched:
                parts.append(f"{len(mismatched)} host(s) with hash mismatches")
            raise VerificationFailed("triage: " + "; ".join(parts))
        if code != 0:
            sys.exit(code)


def _evidence_public_key() -> Any:
    from ir_toolkit.secrets import keystore

    return keystore.evidence_public_key()


def _verbosity() -> int:
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx else None
    return int(root.params.get("verbose", 0)) if root is not None else 0
