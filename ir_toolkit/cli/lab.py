"""``irkit lab``: a fleet of real sshd hosts for rehearsal and tests (needs root)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ir_toolkit.cli.options import format_option, inventory_options, load_selected_inventory
from ir_toolkit.cli.output import emit_json, emit_table
from ir_toolkit.errors import EXIT_FAILED, EnvironmentProblem, InputError
from ir_toolkit.home import lab_dir
from ir_toolkit.inventory import load_inventory, resolve_inventory_path
from ir_toolkit.inventory.loader import INVENTORY_ENV
from ir_toolkit.inventory.model import _SLUG
from ir_toolkit.lab import reimage as _lab_reimage  # noqa: F401 - registers the `lab` reimage provider
from ir_toolkit.lab.fleet import Lab, require_root
from ir_toolkit.lab.layout import LabPaths
from ir_toolkit.lab.state import load_state


def labs_up() -> list[str]:
    """MSP names of the labs that are up in this ``$IRKIT_HOME`` (a state file in ``lab/<msp>/``), sorted."""
    try:
        dirs = sorted(d for d in lab_dir("x").parent.iterdir() if d.is_dir() and _SLUG.match(d.name))
    except OSError:
        return []
    up = []
    for d in dirs:
        try:
            if load_state(LabPaths(d).state) is None:
                continue
        except InputError:
            pass  # an unreadable state still names a lab that may be up: the user must choose
        up.append(d.name)
    return up


def _lab(msp: str | None, inventory_path: str | None, *, the_one_up: bool = False) -> Lab:
    """The lab named by ``--msp`` (no inventory needed) or by the inventory's MSP; with ``the_one_up``
    and neither given (nor ``$IRKIT_INVENTORY``), the one lab that is up in ``$IRKIT_HOME``."""
    if msp:
        if not _SLUG.match(msp):
            raise InputError(f"--msp {msp!r} is not a valid MSP name")
        return Lab(msp)
    if the_one_up and not inventory_path and not os.environ.get(INVENTORY_ENV):
        up = labs_up()
        if len(up) == 1:
            return Lab(up[0])
        if not up:
            raise InputError(f"no lab is up in {lab_dir('x').parent}: start one with `irkit lab up --msp NAME`, "
                             "or name one with --msp NAME")
        raise InputError(f"{len(up)} labs are up ({', '.join(up)}): name one with --msp NAME")
    return Lab(load_selected_inventory(None, inventory_path).msp.name)


@click.group("lab")
def lab() -> None:
    """Bring up a rehearsal fleet of real OpenSSH hosts, seeded with an MSP breach (needs root).

    \b
      irkit lab up --msp acme            materialise inventories/acme.yml
      irkit lab info --msp acme --format json
      irkit lab exec --msp acme globex-dc01 -- cat /etc/hostname
      irkit lab down --msp acme [--purge]
    """


@lab.command("up")
@inventory_options
@click.option("--hostile", "hostile", multiple=True, metavar="HOST=KIND[,KIND]",
              help="Make HOST misbehave for real (repeatable): bigfile, tarbomb, trickle, mtime, names "
                   "(see docs/lab.md, 'Hostile hosts').")
@format_option
@click.option("--no-host-firewall", is_flag=True,
              help="Boot hosts without their connection-tracking host firewall (default: an nftables table "
                   "with ct state rules, like ufw/firewalld on real servers).")
@click.option("--agents/--no-agents", "agents", default=None,
              help="Also start a TLS redis broker and one supervised `irkit agent` per tenant inside the "
                   "tenant's network (docs/lab.md, Agents); --no-agents stops them. Default: as they are.")
@click.option("--agent-visibility-timeout", type=click.IntRange(5, 86400), default=180, show_default=True,
              metavar="S", help="With --agents: Redis redelivers a dead agent's unfinished step after S seconds "
                                "(keep it above the longest step).")
def up(msp: str | None, inventory_path: str | None, hostile: tuple[str, ...], fmt: str,
       no_host_firewall: bool, agents: bool | None, agent_visibility_timeout: int) -> None:
    """Materialise an inventory as real hosts, seeded with an MSP breach (idempotent)."""
    from ir_toolkit.lab.hostile import make_hostile, parse_hostile

    require_root()
    wanted = parse_hostile(hostile)
    path = resolve_inventory_path(msp, inventory_path)
    inv = load_inventory(path, msp=msp if not inventory_path else None)
    known = {h.name for h in inv.hosts()}
    for name in wanted:
        if name not in known:
            raise InputError(f"--hostile {name}: no such host in the inventory")
    the_lab = Lab(inv.msp.name)
    result = the_lab.up(inv, path, host_firewall=not no_host_firewall, agents=agents,
                        agent_visibility_timeout=agent_visibility_timeout)
    for name, kinds in wanted.items():
        result.notes.append(f"{name}: {make_hostile(the_lab, name, kinds)}")
    total = len(result.started) + len(result.kept)
    if fmt == "json":
        emit_json({"msp": result.msp, "changed": result.changed, "hosts": total, "started": result.started,
                   "kept": result.kept, "removed": result.removed, "seconds": round(result.seconds, 2),
                   "network": result.network, "bridge": result.bridge,
                   "controller_address": result.controller_address, "notes": result.notes,
                   "directories_started": result.directories_started,
                   "broker_started": result.broker_started, "agents_started": result.agents_started})
        return
    if not result.changed:
        click.echo(f"lab {result.msp}: already up: {total} hosts running; nothing changed")
        for note in result.notes:
            click.echo(f"note: {note}")
        return
    click.echo(f"lab {result.msp}: {total} hosts up ({len(result.started)} started, {len(result.kept)} kept"
               f"{f', {len(result.removed)} removed' if result.removed else ''}) in {result.seconds:.1f} s; "
               f"controller {result.controller_address} on bridge {result.bridge} ({result.network})")
    for note in result.notes:
        click.echo(f"note: {note}")
    click.echo(f"keys, password and known_hosts: {Lab(inv.msp.name).paths.root}  "
               f"(irkit lab info --msp {inv.msp.name} --format json)")


@lab.command("down")
@inventory_options
@click.option("--purge", is_flag=True, help="Also delete keys, host keys, password and known_hosts.")
def down(msp: str | None, inventory_path: str | None, purge: bool) -> None:
    """Remove every namespace, interface, mount and process the lab made (by recorded ids)."""
    require_root()
    the_lab = _lab(msp, inventory_path)
    result = the_lab.down(purge=purge)
    if result.was_up:
        click.echo(f"lab {result.msp}: down ({result.stopped} hosts stopped, network removed)")
    else:
        click.echo(f"lab {result.msp}: not up; nothing to stop")
    if purge:
        click.echo(f"lab {result.msp}: purged {the_lab.paths.root}")
    elif the_lab.paths.root.exists():
        click.echo(f"keys kept in {the_lab.paths.root} (--purge deletes them)")


@lab.command("status")
@inventory_options
@format_option
def status(msp: str | None, inventory_path: str | None, fmt: str) -> None:
    """Per host: are its init and sshd alive (exit 1 if a host is down)."""
    require_root()
    the_lab = _lab(msp, inventory_path)
    state = the_lab.state()
    rows = the_lab.status() if state else []
    healthy = bool(rows) and all(r["ok"] for r in rows)
    if fmt == "json":
        emit_json({"msp": the_lab.msp, "up": state is not None, "healthy": healthy, "hosts": rows})
    elif state is None:
        click.echo(f"lab {the_lab.msp}: not up")
    else:
        emit_table(rows, ["tenant", "name", "address", "pid", "init", "sshd", "implant"],
                   title=f"lab {the_lab.msp}: {sum(r['ok'] for r in rows)}/{len(rows)} hosts up")
    if not healthy:
        sys.exit(EXIT_FAILED)


@lab.command("info")
@inventory_options
@format_option
def info(msp: str | None, inventory_path: str | None, fmt: str) -> None:
    """How to use the lab: keys, the leaked password, hosts and their host-key fingerprints.

    Without --msp/--inventory: the one lab that is up in $IRKIT_HOME (exit 2 if none or several).
    """
    require_root()
    data = _lab(msp, inventory_path, the_one_up=True).info()
    if fmt == "json":
        emit_json(data)
        return
    for key in ("msp", "controller_address", "network", "bridge", "responder_user", "responder_private_key",
                "msp_private_key", "msp_shared_account", "msp_shared_password_file", "known_hosts"):
        click.echo(f"{key}: {data[key]}")
    click.echo("msp_shared_password: (shown with --format json)")
    emit_table(data["hosts"], ["tenant", "name", "address", "port", "host_key_fingerprint", "pid", "running"])


@lab.command("exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@inventory_options
@click.argument("host")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_cmd(msp: str | None, inventory_path: str | None, host: str, command: tuple[str, ...]) -> None:
    """Run COMMAND on lab HOST out of band, like a console (works while the host is isolated).

    stdin, stdout and stderr pass through; the exit code is the command's. Without --msp/--inventory:
    the one lab that is up in $IRKIT_HOME (exit 2 if none or several).
    Example: irkit lab exec --msp acme globex-dc01 -- ss -tlnp
    """
    require_root()
    argv = list(command[1:] if command[:1] == ("--",) else command)
    if not argv:
        raise InputError("irkit lab exec: give a command after the host (irkit lab exec HOST -- CMD...)")
    proc = _lab(msp, inventory_path, the_one_up=True).exec(host, argv, capture=False)
    sys.exit(proc.returncode)


@lab.command("plant")
@inventory_options
@click.argument("host")
@format_option
def plant_cmd(msp: str | None, inventory_path: str | None, host: str, fmt: str) -> None:
    """Plant one trace per triage coverage category on lab HOST (docs/triage.md, Coverage).

    Out of band, like `lab exec`; missing tools get stand-in scripts inside the host only.
    Prints the planted values (PIDs, hashes) the bundle must then show.
    """
    require_root()
    from ir_toolkit.lab.traces import TRACES, plant

    try:
        values = plant(_lab(msp, inventory_path), host)
    except RuntimeError as exc:
        raise EnvironmentProblem(str(exc)) from None
    if fmt == "json":
        emit_json({"host": host, "traces": len(TRACES), "values": values})
        return
    click.echo(f"{host}: {len(TRACES)} traces planted")
    for key, value in sorted(values.items()):
        click.echo(f"  {key}={value}")


@lab.command("generate")
@click.option("--tenants", type=click.IntRange(1, 4096), required=True, help="Number of tenants.")
@click.option("--hosts-per-tenant", type=click.IntRange(1, 60000), required=True, help="Hosts in each tenant.")
@click.option("--msp", "msp_name", required=True, metavar="NAME", help="Name of the generated MSP.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="Inventory file to write.")
@click.option("--base", default="198.18.0.0/16", show_default=True, help="Network inside 198.18.0.0/15.")
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
def generate(tenants: int, hosts_per_tenant: int, msp_name: str, out: str, base: str, force: bool) -> None:
    """Write a larger inventory for scale tests (bring it up with `lab up --inventory FILE`)."""
    from ir_toolkit.lab.generate import generate_inventory, write_inventory

    data = generate_inventory(msp=msp_name, tenants=tenants, hosts_per_tenant=hosts_per_tenant, base=base)
    path = Path(out)
    write_inventory(path, data, force=force)
    inv = load_inventory(path)
    click.echo(f"{path}: MSP {inv.msp.name}, {len(inv.tenants)} tenants, {len(inv.hosts())} hosts, "
               f"controller {inv.msp.responder.controller_address}")
