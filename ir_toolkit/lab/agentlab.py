"""``irkit lab up --agents``: the lab broker plus one supervised agent per tenant, and the inventory
whose tenants they serve (docs/lab.md "Agents", docs/scaling.md).

Addresses (all inside the lab's bridge network, so inside 198.18.0.0/15): the broker takes the first
free address after the controller's that is in no tenant's subnet (acme: 198.18.0.2); each tenant's
agent the highest free address of the tenant's subnet (acme's globex: 198.18.1.254), or, for a
tenant without a subnet, the highest free one of the network outside every subnet.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from ir_toolkit import childenv
from ir_toolkit.errors import EnvironmentProblem, InputError
from ir_toolkit.home import irkit_home
from ir_toolkit.inventory.model import Inventory
from ir_toolkit.lab.layout import HOST_PATH
from ir_toolkit.lab.sshkeys import write_private
from ir_toolkit.lab import agents as agentmod
from ir_toolkit.lab import broker as brokermod
from ir_toolkit.lab.plan import LabPlan

AGENT_INVENTORY = "agents-inventory.yml"


def attached(veth: str, bridge: str) -> bool:
    """Is ``veth`` a port of ``bridge`` (a recreated bridge leaves old ports detached)?"""
    try:
        return Path(f"/sys/class/net/{veth}/master").resolve().name == bridge
    except OSError:
        return False


def addresses(inv: Inventory, plan: LabPlan) -> tuple[str, dict[str, str]]:
    """(broker address, {tenant: agent address})."""
    from ir_toolkit.lab.dc import dc_addresses

    network = plan.network
    taken = {ipaddress.IPv4Address(plan.controller_address)}
    taken |= {ipaddress.IPv4Address(h.address) for h in plan.hosts}
    taken |= {ipaddress.IPv4Address(a) for a in dc_addresses(inv)}
    subnets = [n for t in inv.tenants if t.subnet
               for n in [ipaddress.ip_network(str(t.subnet))] if isinstance(n, ipaddress.IPv4Network)]
    broker = brokermod.pick_address(network, taken, avoid=subnets)
    lab_tenants = {h.tenant for h in plan.hosts}
    out = {}
    for tenant in inv.tenants:
        if tenant.name not in lab_tenants:
            continue
        subnet = ipaddress.ip_network(str(tenant.subnet)) if tenant.subnet else None
        if isinstance(subnet, ipaddress.IPv4Network) and subnet.subnet_of(network):
            out[tenant.name] = brokermod.pick_address(network, taken, subnet, from_top=True)
        else:
            out[tenant.name] = brokermod.pick_address(network, taken, from_top=True, avoid=subnets)
    return broker, out


def _expand(value: Any, home: str) -> Any:
    if isinstance(value, str):
        return value.replace("${IRKIT_HOME}", home)
    if isinstance(value, dict):
        return {k: _expand(v, home) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, home) for v in value]
    return value


def controller_vkey() -> str:
    """The controller's audit verifier key (``$IRKIT_HOME/keys/signing.vkey``): the only signer whose
    envelopes the lab's agents run."""
    path = irkit_home() / "keys" / "signing.vkey"
    try:
        return path.read_text().strip()
    except OSError:
        raise InputError(f"lab agents run only the controller's signed steps, and there is no controller key "
                         f"({path}); run `irkit keys init` first") from None


def _agent_key(directory: Path, tenant: str) -> str:
    """The agent's Ed25519 key (``irkit agent keygen``, made once); returns its verifier key."""
    key = directory / "agent.key"
    vkey = directory / "agent.vkey"
    if key.exists() and vkey.exists():
        return vkey.read_text().strip()
    key.unlink(missing_ok=True)
    proc = childenv.run([sys.executable, "-m", "ir_toolkit", "agent", "keygen", "--tenant", tenant, "--out", str(key),
                         "--format", "json"], capture_output=True, text=True, timeout=120, inherit=False,
                        env={"PATH": HOST_PATH, "LANG": "C.UTF-8", "IRKIT_HOME": str(directory / "home")})
    try:
        value = str(json.loads(proc.stdout)["vkey"])
    except (ValueError, KeyError, TypeError):
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        raise EnvironmentProblem(f"irkit agent keygen for tenant {tenant} failed: {detail[0][:300]}") from None
    write_private(vkey, (value + "\n").encode(), 0o644)
    return value


def _agent_keystore(directory: Path, name: str) -> None:
    """The agent's own irkit keys (``home/keys``: escrow and case responder keys of the steps it runs),
    sealed with a passphrase the lab makes and keeps in ``keys_passphrase`` (0600); the agent gets it
    as a file reference (``--keys-passphrase file:...``), never in argv or its environment."""
    from ir_toolkit.lab.sshkeys import generate_password
    from ir_toolkit.secrets.keystore import init_keys, keys_exist

    pw_file = directory / "keys_passphrase"
    if not pw_file.exists():
        write_private(pw_file, (generate_password(32) + "\n").encode())
    keys = directory / "home" / "keys"
    if not keys_exist(keys):
        init_keys(pw_file.read_text().strip(), name=name, directory=keys)


def provision(lab: Any, inventory_path: Path, agent_addresses: dict[str, str], broker: dict[str, Any],
              visibility_timeout: int) -> Path:
    """Each agent's files (key, the controller's verifier key, its tenant's inventory, drop) and the
    controller's inventory of agent-served tenants; returns that inventory's path."""
    vkey = controller_vkey()
    raw = yaml.safe_load(Path(inventory_path).read_text())
    home = str(irkit_home())
    variant = json.loads(json.dumps(raw))
    for tenant in variant["tenants"]:
        name = tenant["name"]
        if name not in agent_addresses:
            continue
        directory = agentmod.agent_dir(lab.paths.root, name)
        for sub in (directory, directory / "home", directory / "drop"):
            sub.mkdir(parents=True, exist_ok=True, mode=0o700)
        public = _agent_key(directory, name)
        _agent_keystore(directory, f"{lab.msp}-agent-{name}")
        write_private(directory / "controller.vkey", (vkey + "\n").encode(), 0o644)
        # the agent's own inventory: its tenant only, paths resolved (its IRKIT_HOME is its own), and the
        # agent's address as the controller's, since it is what reaches (and must stay allowed on) the hosts
        own = _expand(json.loads(json.dumps(raw)), home)
        own["tenants"] = [t for t in own["tenants"] if t["name"] == name]
        for t in own["tenants"]:
            t.pop("agent", None)
        own["msp"].setdefault("responder", {})["controller_address"] = agent_addresses[name]
        write_private(directory / "tenant.yml",
                      ("# written by `irkit lab up --agents`: the inventory of tenant " + name + "'s lab agent\n"
                       + yaml.safe_dump(own, sort_keys=False)).encode(), 0o600)
        ctl = broker["controller"]
        tenant["agent"] = {
            "broker": broker["url"], "user": ctl["user"], "password": f"file:{ctl['password_file']}",
            "ca_file": ctl["ca_file"], "cert_file": ctl["cert_file"], "key_file": ctl["key_file"],
            "public_key": public, "drop": str(directory / "drop"), "visibility_timeout": visibility_timeout,
        }
    out = lab.paths.root / AGENT_INVENTORY
    header = (f"# written by `irkit lab up --agents` from {inventory_path}: the same inventory, each tenant served\n"
              "# by its lab agent (docs/lab.md, Agents). `irkit contain --inventory THIS_FILE` goes through them.\n")
    write_private(out, (header + yaml.safe_dump(variant, sort_keys=False)).encode(), 0o600)
    return out


def _fingerprint(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.exists() else ""


def ensure(lab: Any, inv: Inventory, inventory_path: Path, plan: LabPlan, bridge: str, notes: list[str],
           command: agentmod.AgentCommand | None = None,
           visibility_timeout: int = agentmod.VISIBILITY_TIMEOUT) -> tuple[bool, list[str]]:
    """Broker, agents and the agents' inventory; returns (broker started, tenants whose agent started)."""
    broker_address, agent_addresses = addresses(inv, plan)
    old = brokermod.load_broker(lab.paths.root)
    if old and not attached(old.veth, bridge):
        old.status = "stale"
        brokermod.save_broker(lab.paths.root, old)
    state, broker_started = brokermod.ensure(lab, broker_address, sorted(agent_addresses), plan.prefixlen, bridge)
    for agent in agentmod.load_agents(lab.paths.root).values():
        if not attached(agent.veth, bridge):
            agentmod.stop(lab, [agent])
    broker = brokermod.info(lab)
    assert broker is not None
    if command is None:
        before = {t: _fingerprint(agentmod.agent_dir(lab.paths.root, t) / "controller.vkey") for t in agent_addresses}
        provision(lab, inventory_path, agent_addresses, broker, visibility_timeout)
        changed = [t for t in agent_addresses
                   if before[t] and before[t] != _fingerprint(agentmod.agent_dir(lab.paths.root, t) / "controller.vkey")]
        if changed:  # a new controller key (keys rotate / init --force): the agents must load it
            agentmod.stop(lab, [a for t, a in agentmod.load_agents(lab.paths.root).items() if t in changed])
        command = agentmod.irkit_agent_command(visibility_timeout)
    started = agentmod.ensure(lab, agent_addresses, plan.prefixlen, bridge, broker, command)
    if broker_started:
        notes.append(f"broker started: {brokermod.url(state)} (TLS, lab CA {broker['ca_file']})")
    if started:
        notes.append(f"agents started for: {', '.join(started)}")
    return broker_started, started


def down(lab: Any) -> None:
    agentmod.down(lab)
    brokermod.stop(lab)
    (lab.paths.root / AGENT_INVENTORY).unlink(missing_ok=True)


def info(lab: Any, inventory: str) -> dict[str, Any]:
    """``broker`` and ``agents`` for ``lab info`` (None and [] without ``--agents``); with agents up,
    ``inventory`` is the one whose tenants they serve."""
    agents = agentmod.info(lab)
    out: dict[str, Any] = {"broker": brokermod.info(lab), "agents": agents}
    variant = lab.paths.root / AGENT_INVENTORY
    if agents and variant.exists():
        out["inventory"] = str(variant)
        out["source_inventory"] = inventory
    return out
