"""``irkit agent``: run a tenant's steps inside its network (a Celery worker), or offline from a file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from ir_toolkit.cli.options import format_option
from ir_toolkit.cli.output import emit_json
from ir_toolkit.errors import InputError


def _password(ref: str | None) -> str | None:
    """A broker password from a reference (env:NAME, file:PATH): never a value on the command line."""
    if not ref:
        return None
    from ir_toolkit.secrets.references import is_reference, parse_ref, resolve

    if not is_reference(ref):
        raise InputError("--broker-password takes a reference (env:NAME or file:PATH), never the password")
    value = resolve(parse_ref(ref))
    # the variable is not passed on: children (ssh, ansible) get a scrubbed environment anyway
    if ref.startswith("env:"):
        os.environ.pop(ref[4:], None)
    return value


def _agent_config(tenant: str, controller_key: str | None, agent_key: str | None, inventory_path: str | None,
                  drop: str | None, store: str | None, keys_passphrase: str | None) -> Any:
    from ir_toolkit.agents.agent import AgentConfig
    from ir_toolkit.agents.store import AgentStore
    from ir_toolkit.agents.worker import load_agent_key, load_verifier
    from ir_toolkit.home import irkit_home
    from ir_toolkit.inventory import load_inventory
    from ir_toolkit.secrets.keyprovider import KeyProvider

    missing = [name for name, value in (("--controller-key", controller_key), ("--agent-key", agent_key),
                                        ("--inventory", inventory_path)) if not value]
    if missing:
        raise InputError(f"irkit agent needs {', '.join(missing)} (or their IRKIT_AGENT_* variables)")
    assert controller_key and agent_key and inventory_path
    signer = load_agent_key(Path(agent_key), tenant)
    keys = KeyProvider.locked()
    if keys_passphrase:
        from ir_toolkit.secrets.references import parse_ref, resolve

        keys = KeyProvider(resolve(parse_ref(keys_passphrase)))
    home = irkit_home()
    return AgentConfig(
        tenant=tenant, signer=signer, controller=[load_verifier(controller_key)],
        inventory=load_inventory(inventory_path),
        store=AgentStore(Path(store) if store else home / "agent" / tenant / "store.sqlite", signer.name),
        publish=lambda doc: None, drop=Path(drop) if drop else home / "drop" / tenant, keys=keys,
        actor=f"{signer.name}@{os.uname().nodename}",
    )


def _common(func: Any) -> Any:
    options = [
        click.option("--tenant", envvar="IRKIT_AGENT_TENANT", metavar="T", help="The tenant this agent serves."),
        click.option("--controller-key", envvar="IRKIT_AGENT_CONTROLLER_KEY", metavar="VKEY|file:PATH",
                     help="The controller's verifier key (irkit keys show): only envelopes it signed run."),
        click.option("--agent-key", envvar="IRKIT_AGENT_KEY", metavar="FILE",
                     help="This agent's own key (irkit agent keygen; mode 0600)."),
        click.option("--inventory", "inventory_path", envvar="IRKIT_AGENT_INVENTORY", metavar="PATH",
                     help="The tenant's inventory (only this tenant is used; its credentials as references)."),
        click.option("--drop", envvar="IRKIT_AGENT_DROP", metavar="DIR",
                     help="The tenant's evidence drop (default $IRKIT_HOME/drop/<tenant>)."),
        click.option("--store", envvar="IRKIT_AGENT_STORE", metavar="FILE",
                     help="The idempotency store (default $IRKIT_HOME/agent/<tenant>/store.sqlite)."),
        click.option("--keys-passphrase", envvar="IRKIT_AGENT_KEYS_PASSPHRASE", metavar="REF",
                     help="Reference (env:NAME/file:PATH) to the passphrase of $IRKIT_HOME/keys, for steps "
                          "that need the escrow or case keys."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.group("agent", invoke_without_command=True)
@_common
@click.option("--broker", envvar="IRKIT_AGENT_BROKER", metavar="URL",
              help="The tenant's broker: rediss://HOST:PORT/DB (no login in the URL).")
@click.option("--broker-user", envvar="IRKIT_AGENT_BROKER_USER", metavar="USER", help="Broker login (Redis ACL user).")
@click.option("--broker-password", envvar="IRKIT_AGENT_BROKER_PASSWORD", metavar="REF",
              help="Reference to the broker password: env:NAME or file:PATH (never the password itself).")
@click.option("--ca", "ca_file", envvar="IRKIT_AGENT_CA", metavar="FILE", help="CA bundle for the broker's TLS.")
@click.option("--cert", "cert_file", envvar="IRKIT_AGENT_CERT", metavar="FILE", help="TLS client certificate.")
@click.option("--tls-key", "tls_key_file", envvar="IRKIT_AGENT_TLS_KEY", metavar="FILE", help="TLS client key.")
@click.option("--concurrency", type=click.IntRange(1, 256), default=4, show_default=True,
              help="Hosts of the tenant worked on at once.")
@click.option("--longest-step", type=click.IntRange(1, 7 * 86400), default=3600, show_default=True, metavar="S",
              help="The longest step deadline: time limits and the visibility timeout are above it.")
@click.option("--visibility-timeout", type=click.IntRange(2, 8 * 86400), default=None, metavar="S",
              help="Redis: redeliver an unacked step after S seconds (default: longest step + margin).")
@click.option("--restore-interval", type=click.IntRange(1, 3600), default=None, metavar="S",
              help="Redis: how often unacked steps past the visibility timeout are looked for.")
@click.option("--loglevel", default="WARNING", show_default=True, help="Celery's log level.")
@click.pass_context
def agent(ctx: click.Context, tenant: str | None, controller_key: str | None, agent_key: str | None,
          inventory_path: str | None, drop: str | None, store: str | None, keys_passphrase: str | None,
          broker: str | None, broker_user: str | None, broker_password: str | None, ca_file: str | None,
          cert_file: str | None, tls_key_file: str | None, concurrency: int, longest_step: int,
          visibility_timeout: int | None, restore_interval: int | None, loglevel: str) -> None:
    """Serve one tenant: run the controller's signed steps on the tenant's hosts (a Celery worker).

    \b
    irkit agent --tenant T --broker rediss://broker:6379/0 --broker-user agent-T \\
        --broker-password file:/etc/irkit/broker-pass --ca /etc/irkit/ca.pem \\
        --controller-key file:/etc/irkit/controller.vkey --agent-key /etc/irkit/agent.key \\
        --inventory /etc/irkit/tenant.yml

    Only envelopes signed by the controller's key, for this tenant, bound to the plan hash and its
    approvals, run; each step's signed intent is published before it acts and its signed result
    after, then the step is acked. Refusals are published as signed refusals. See docs/agents.md.
    """
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"tenant": tenant, "controller_key": controller_key, "agent_key": agent_key,
                   "inventory_path": inventory_path, "drop": drop, "store": store, "keys_passphrase": keys_passphrase}
        return
    if not tenant or not broker:
        raise InputError("irkit agent needs --tenant and --broker (or IRKIT_AGENT_TENANT, IRKIT_AGENT_BROKER)")
    from ir_toolkit.agents.celeryapp import BrokerSettings
    from ir_toolkit.agents.worker import WorkerOptions, serve

    config = _agent_config(tenant, controller_key, agent_key, inventory_path, drop, store, keys_passphrase)
    settings = BrokerSettings(url=broker, username=broker_user, password=_password(broker_password),
                              ca_file=ca_file, cert_file=cert_file, key_file=tls_key_file)
    try:
        serve(config, settings, WorkerOptions(concurrency=concurrency, longest_step_s=longest_step,
                                              visibility_timeout=visibility_timeout,
                                              restore_interval=restore_interval, loglevel=loglevel))
    except ValueError as exc:
        raise InputError(str(exc)) from None


@agent.command("keygen")
@click.option("--tenant", "tenant_opt", metavar="T", help="The tenant (or irkit agent --tenant T keygen).")
@click.option("--out", "out", metavar="FILE", required=True, help="Where to write the key (mode 0600).")
@click.option("--label", default="", help="Tells several agents of one tenant apart (in the key name).")
@click.option("--force", is_flag=True, help="Replace an existing key file.")
@format_option
@click.pass_obj
def keygen(obj: dict[str, Any] | None, tenant_opt: str | None, out: str, label: str, force: bool, fmt: str) -> None:
    """Make this agent's Ed25519 key; prints the verifier key for the inventory's `agent: key:`."""
    from ir_toolkit.agents.worker import generate_agent_key

    tenant = tenant_opt or (obj or {}).get("tenant")
    if not tenant:
        raise InputError("irkit agent keygen needs --tenant")
    signer = generate_agent_key(Path(out), tenant, label=label, force=force)
    if fmt == "json":
        emit_json({"tenant": tenant, "file": out, "vkey": signer.verifier_key()})
    else:
        click.echo(signer.verifier_key())


@agent.command("run-offline")
@click.argument("file", metavar="FILE", type=click.Path(dir_okay=False))
@click.option("--out", "out", required=True, metavar="FILE", help="The results file to write (mode 0600).")
@format_option
@click.pass_obj
def run_offline_cmd(obj: dict[str, Any] | None, file: str, out: str, fmt: str) -> None:
    """Run a steps file from `irkit plan export` (no broker): same checks, signed results to --out.

    \b
    irkit agent --tenant T --controller-key file:controller.vkey --agent-key agent.key \\
        --inventory tenant.yml run-offline steps.json --out results.json
    """
    import json

    from ir_toolkit.agents.agent import Agent
    from ir_toolkit.agents.offline import STEPS_KIND, read_bundle, run_offline
    from ir_toolkit.fsutil import write_atomic

    o = obj or {}
    tenant = o.get("tenant")
    if not tenant:
        raise InputError("irkit agent run-offline needs --tenant (irkit agent --tenant T ... run-offline FILE)")
    bundle = read_bundle(Path(file), STEPS_KIND)
    if bundle["tenant"] != tenant:
        raise InputError(f"{file} holds steps of tenant {bundle['tenant']!r}, not {tenant!r}")
    config = _agent_config(tenant, o.get("controller_key"), o.get("agent_key"), o.get("inventory_path"),
                           o.get("drop"), o.get("store"), o.get("keys_passphrase"))
    agent_ = Agent(config)
    try:
        doc = run_offline(agent_, bundle)
    finally:
        agent_.close()
        config.store.close()
    write_atomic(Path(out), (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode(), mode=0o600)
    summary = {"tenant": tenant, "file": out, "messages": len(doc["messages"]), **doc["counts"],
               "drop": str(config.drop)}
    if fmt == "json":
        emit_json(summary)
    else:
        click.echo(f"{summary['done']} steps done, {summary['refused']} refused; {len(doc['messages'])} signed "
                   f"messages in {out}; bring it and {config.drop} back to the controller (irkit results import)")
