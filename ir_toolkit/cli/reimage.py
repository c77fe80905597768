"""``irkit reimage``: reinstall hosts (after their evidence is verified), re-key, re-provision, verify.

The flow is the playbook ``playbooks/reimage.yml`` (or ``--playbook FILE``): this
command copies it into the case with every step targeted at the named hosts and
the options filled in, then runs it through the same plan -> confirm -> execute
flow as ``contain`` (``irkit resume`` finds the copy again).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

from ir_toolkit.cli.frontend import CliFrontend
from ir_toolkit.cli.options import (
    case_option,
    format_option,
    inventory_options,
    load_selected_inventory,
)
from ir_toolkit.cli.run import forks_option
from ir_toolkit.errors import FileInputError, InputError
from ir_toolkit.run import session
from ir_toolkit.run.generated import reimage_playbook, write_generated_playbook
from ir_toolkit.run.shipped import REIMAGE, resolve_playbook
from ir_toolkit.yamlfile import load

DEFAULT_PLAYBOOK = "playbooks/reimage.yml"


def default_playbook() -> Path:
    """``playbooks/reimage.yml`` in the working directory if there is one, else the shipped one."""
    return resolve_playbook(DEFAULT_PLAYBOOK, REIMAGE)


@click.command("reimage")
@inventory_options
@case_option()
@click.option("--hosts", "hosts", multiple=True, required=True, metavar="NAME",
              help="Host to reimage (repeatable: --hosts A --hosts B).")
@click.option("--image-url", metavar="URL", default=None,
              help="Install image for virtual media (redfish providers), http(s)://, nfs:// or cifs://.")
@click.option("--reason", metavar="TEXT", default=None, help="Why these hosts are reimaged (in the audit log).")
@click.option("--old-password", metavar="REF", default=None,
              help="Reference (env:NAME / file:PATH) to the leaked shared password; verification proves it dead.")
@click.option("--host-key", "host_keys", multiple=True, metavar="HOST=SHA256:...",
              help="The reinstalled HOST's new SSH host key fingerprint, confirmed out of band (repeatable); "
                   "needed when the provider (redfish, command) reports none.")
@click.option("--accept-first-key", is_flag=True,
              help="Trust the first key a reinstalled host offers when nobody confirmed it (TOFU; recorded "
                   "as such in the audit log). Avoid.")
@click.option("--evidence-override", metavar="REASON", default=None,
              help="Reimage even without verified evidence (the reason is an audit record). Avoid.")
@click.option("--playbook", metavar="FILE", default=None,
              help=f"Reimage playbook to use as the template (default: {DEFAULT_PLAYBOOK}).")
@click.option("--yes", is_flag=True, help="Skip the confirmation prompt (counts as your approval).")
@click.option("--dry-run", is_flag=True, help="Stop after showing the plan; change nothing.")
@forks_option
@format_option
def reimage(msp: str | None, inventory_path: str | None, case_id: str, hosts: tuple[str, ...],
            image_url: str | None, reason: str | None, old_password: str | None, host_keys: tuple[str, ...],
            accept_first_key: bool, evidence_override: str | None,
            playbook: str | None, yes: bool, dry_run: bool, forks: int, fmt: str) -> None:
    """Reimage hosts (after their evidence is verified), re-key and re-provision them.

    Per host: the evidence gate (no reimage before the host's triage bundle is
    verified), the reinstall through the host's bmc provider, the new host key
    accepted only because irkit reimaged the host in this case (pinned in the
    case's known_hosts, old and new fingerprints in the audit log), the per-case
    responder key, unique escrowed passwords for the local admin accounts, the
    MSP's keys revoked, and a check that no breach trace is left. The reimage
    step requires approval: --yes (or the prompt) counts as yours. Never more
    than one domain controller per tenant at once.

    Exit 0: every host reimaged and verified clean; 1: a host failed or was
    refused (e.g. no evidence); 2: bad input; 3: incomplete (irkit resume).
    """
    inventory = load_selected_inventory(msp, inventory_path)
    by_name = {h.name: h for h in inventory.hosts()}
    chosen = list(dict.fromkeys(hosts))
    for name in chosen:
        host = by_name.get(name)
        if host is None:
            raise InputError(f"unknown host {name!r}")
        if host.bmc is None:
            raise InputError(f"host {name} has no bmc: section in the inventory; it cannot be reimaged")
        if host.os != "linux":
            raise InputError(f"host {name}: reimaging {host.os} hosts is not supported yet "
                             "(re-provisioning needs SSH)")
    if old_password is not None:
        from ir_toolkit.secrets.references import parse_ref

        parse_ref(old_password)
    confirmed: dict[str, str] = {}
    for item in host_keys:
        name, sep, fp = item.partition("=")
        if not sep or name not in chosen or not re.fullmatch(r"SHA256:[A-Za-z0-9+/]{43}", fp):
            raise InputError(f"--host-key {item!r}: use HOST=SHA256:<43 base64 characters> for a host given "
                             "with --hosts")
        confirmed[name] = fp
    if evidence_override is not None and not evidence_override.strip():
        raise InputError("--evidence-override needs a written reason")
    if image_url is not None and image_url.split("://", 1)[0] not in ("http", "https", "nfs", "cifs", "smb"):
        raise InputError(f"--image-url {image_url!r}: use an http(s)://, nfs:// or cifs:// URL")
    template_path = resolve_playbook(playbook, REIMAGE) if playbook else default_playbook()
    template = load(template_path, what="playbook")
    if not isinstance(template, dict):
        raise FileInputError(str(template_path), None, None, "a playbook is a mapping with name: and phases:")
    from ir_toolkit.actions.base import registry

    destructive = {name for name, variants in registry().items() if any(cls.destructive for cls in variants)}
    data = reimage_playbook(template, hosts=chosen, image_url=image_url, reason=reason, old_password=old_password,
                            evidence_override=evidence_override, destructive=destructive,
                            host_keys=confirmed, accept_first_key=accept_first_key)
    session.start_case_logging(case_id)
    frontend = CliFrontend(fmt, yes=yes)
    frontend.err.print(f"case {case_id}")
    path = write_generated_playbook(case_id, "reimage", data)
    sys.exit(session.run_playbook(msp, inventory_path, case_id, path, frontend=frontend, dry_run=dry_run,
                                  forks=forks, stop_if_empty=True))
