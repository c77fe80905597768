"""The lab's per-tenant agents: one small "Linux box" per tenant inside that tenant's network.

``irkit lab up --agents`` gives each tenant a network namespace on the lab segment with an address
of the tenant's subnet (from its top, e.g. 198.18.1.254 for globex's 198.18.1.0/24), and starts in
it a supervisor (:mod:`ir_toolkit.lab.supervisor`, the lab's stand-in for systemd's
``Restart=always``) that runs the tenant's agent (``irkit agent --tenant T --broker URL ...``) and
restarts it whenever it dies. The agent dials out to the lab broker (:mod:`ir_toolkit.lab.broker`)
with its tenant's ACL user and client certificate, and reaches its tenant's hosts on the segment.

Each agent has its own directory ``agents/<tenant>/`` (0700): ``home/`` (its ``IRKIT_HOME``),
``broker/`` (its password, client certificate and key: that tenant's only), ``agent.log`` (the
supervisor's and the agent's output), ``agent.pid`` (written by the supervisor after each start).
The agent's environment is clean (``PATH``, ``LANG``, ``HOME``, ``IRKIT_HOME``): no secret is in
its argv or environment.

``lab down`` kills every process in each agent's namespace (supervisor first, then a rescan, so a
child started in between is caught too; the child also dies with its supervisor by
``PR_SET_PDEATHSIG``) and deletes the namespace: nothing is left (tested).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ir_toolkit import childenv
from ir_toolkit.errors import EnvironmentProblem
from ir_toolkit.lab import netns, procs
from ir_toolkit.lab.layout import HOST_PATH

SUPERVISOR = Path(__file__).with_name("supervisor.py")

#: builds an agent's command line: (tenant, broker url, agent dir, broker info) -> argv
AgentCommand = Callable[[str, str, Path, dict[str, Any]], list[str]]


@dataclasses.dataclass
class AgentState:
    tenant: str
    address: str
    netns: str
    veth: str
    status: str = "intent"  # intent -> running (-> stopped)
    supervisor_pid: int | None = None
    supervisor_start: int | None = None
    command: list[str] = dataclasses.field(default_factory=list)

    def config(self) -> tuple[Any, ...]:
        return (self.tenant, self.address, self.netns, self.veth, tuple(self.command))


def agent_netns(lab_id: str, tenant: str) -> str:
    return f"irk-{lab_id}-agent-{tenant}"[:200]


def agent_veth(lab_id: str, index: int) -> str:
    return f"irk{lab_id}a{index}"


def agent_dir(lab_root: Path, tenant: str) -> Path:
    return lab_root / "agents" / tenant


def _state_path(lab_root: Path) -> Path:
    return lab_root / "agents" / "state.json"


def load_agents(lab_root: Path) -> dict[str, AgentState]:
    path = _state_path(lab_root)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError:
        raise EnvironmentProblem(f"{path}: unreadable lab agent state; remove the lab by hand") from None
    return {a["tenant"]: AgentState(**a) for a in data}


def save_agents(lab_root: Path, agents: dict[str, AgentState]) -> None:
    path = _state_path(lab_root)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = json.dumps([dataclasses.asdict(a) for a in agents.values()], indent=1, sort_keys=True) + "\n"
    tmp = path.with_name(".state.json.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


#: Redis redelivers a dead agent's unacked step after this long (lab default; above the lab's longest
#: step, so a step still running is never handed out twice), looked for every RESTORE_INTERVAL s
VISIBILITY_TIMEOUT = 180
RESTORE_INTERVAL = 2


def irkit_agent_command(visibility_timeout: int = VISIBILITY_TIMEOUT,
                        restore_interval: int = RESTORE_INTERVAL) -> AgentCommand:
    """The production agent, ``irkit agent`` (ir_toolkit/agents, docs/agents.md), run by this
    interpreter, with what :func:`ir_toolkit.lab.agentlab.provision` left in its directory.
    Credentials by file reference only (never a secret in argv)."""

    def build(tenant: str, url: str, directory: Path, broker: dict[str, Any]) -> list[str]:
        files = broker["tenants"][tenant]
        return [sys.executable, "-m", "ir_toolkit", "agent", "--tenant", tenant, "--broker", url,
                "--broker-user", files["user"], "--broker-password", f"file:{files['password_file']}",
                "--ca", files["ca_file"], "--cert", files["cert_file"], "--tls-key", files["key_file"],
                "--controller-key", f"file:{directory / 'controller.vkey'}", "--agent-key", str(directory / "agent.key"),
                "--inventory", str(directory / "tenant.yml"), "--drop", str(directory / "drop"),
                "--keys-passphrase", f"file:{directory / 'keys_passphrase'}",
                "--visibility-timeout", str(visibility_timeout), "--restore-interval", str(restore_interval),
                "--loglevel", "INFO"]

    return build


def read_pidfile(lab_root: Path, tenant: str) -> dict[str, Any] | None:
    try:
        data = json.loads((agent_dir(lab_root, tenant) / "agent.pid").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def agent_pid(lab_root: Path, agent: AgentState) -> int | None:
    """The running agent's pid (as the controller sees it), or None."""
    if not procs.alive(agent.supervisor_pid, agent.supervisor_start):
        return None
    data = read_pidfile(lab_root, agent.tenant)
    if not data or data.get("supervisor") != agent.supervisor_pid:
        return None
    pid, start = data.get("pid"), data.get("start")
    return pid if isinstance(pid, int) and procs.alive(pid, start) else None


def connected(agent: AgentState, address: str, port: int) -> bool:
    """Does a process in the agent's namespace hold an established TCP connection to ``address:port``?"""
    if not agent.supervisor_pid:
        return False
    want = f"{_hex_addr(address)}:{port:04X}"
    try:
        lines = Path(f"/proc/{agent.supervisor_pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(len(p := line.split()) > 3 and p[2] == want and p[3] == "01" for line in lines)


def _hex_addr(address: str) -> str:
    return "".join(f"{int(b):02X}" for b in reversed(address.split(".")))


def ensure(lab: Any, addresses: dict[str, str], prefixlen: int, bridge: str, broker: dict[str, Any],
           command: AgentCommand, wait_connected: bool = True) -> list[str]:
    """Make one supervised agent per tenant in ``addresses`` run; returns the tenants (re)started."""
    root = lab.paths.root
    agents = load_agents(root)
    taken = {a.veth for a in agents.values()}
    desired: dict[str, AgentState] = {}
    for tenant, address in addresses.items():
        prior = agents.get(tenant)
        veth = prior.veth if prior else next(agent_veth(lab.lab_id, j) for j in range(100000)
                                             if agent_veth(lab.lab_id, j) not in taken)
        taken.add(veth)
        directory = agent_dir(root, tenant)
        desired[tenant] = AgentState(tenant, address, agent_netns(lab.lab_id, tenant), veth,
                                     command=command(tenant, broker["tenants"][tenant]["url"], directory, broker))
    keep = {}
    for name, agent in agents.items():
        want = desired.get(name)
        if (want and agent.status == "running" and agent.config() == want.config()
                and procs.alive(agent.supervisor_pid, agent.supervisor_start)
                and netns.netns_path(agent.netns).exists()):
            keep[name] = agent
    stop(lab, [a for n, a in agents.items() if n not in keep])
    agents = dict(keep)
    save_agents(root, agents)
    started = []
    for tenant, want in desired.items():
        if tenant in keep:
            continue
        directory = agent_dir(root, tenant)
        for sub in (directory, directory / "home"):
            sub.mkdir(parents=True, exist_ok=True, mode=0o700)
        agents[tenant] = want
        save_agents(root, agents)  # intent before the namespace exists
        netns.service_netns(want.netns, want.veth, bridge, f"{want.address}/{prefixlen}")
        _start(want, directory)
        save_agents(root, agents)
        started.append(tenant)
    failures = _wait(root, [agents[t] for t in started], broker if wait_connected else None)
    for tenant in started:
        if tenant not in failures:
            agents[tenant].status = "running"
    save_agents(root, agents)
    if failures:
        shown = "; ".join(f"{t}: {why}" for t, why in sorted(failures.items()))
        raise EnvironmentProblem(f"lab agents did not start ({shown}); `irkit lab down` cleans up")
    return started


def _start(agent: AgentState, directory: Path) -> None:
    nsenter = shutil.which("nsenter", path=HOST_PATH) or "nsenter"
    log = directory / "agent.log"
    (directory / "agent.pid").unlink(missing_ok=True)
    argv = [nsenter, f"--net={netns.netns_path(agent.netns)}", "--",
            sys.executable, "-I", str(SUPERVISOR), "--pidfile", str(directory / "agent.pid"), "--log", str(log),
            "--", *agent.command]
    env = {"PATH": HOST_PATH, "LANG": "C.UTF-8", "HOME": str(directory), "IRKIT_HOME": str(directory / "home")}
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    procs.no_inherit()  # no controller descriptor (e.g. a flock) lives on in the agent
    # nsenter without --fork execs the supervisor: the recorded pid is the supervisor's own
    agent.supervisor_pid = childenv.spawn(nsenter, argv, env, file_actions=actions, setsid=True)
    agent.supervisor_start = procs.start_time(agent.supervisor_pid)


def _wait(root: Path, agents: Sequence[AgentState], broker: dict[str, Any] | None, timeout: float = 240) -> dict[str, str]:
    """Until each agent runs (and, with ``broker``, holds a connection to it)."""
    failures: dict[str, str] = {}
    pending = {a.tenant: a for a in agents}
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for name, agent in list(pending.items()):
            if not procs.alive(agent.supervisor_pid, agent.supervisor_start):
                failures[name] = "supervisor exited: " + log_tail(root, name)
                del pending[name]
            elif agent_pid(root, agent) and (broker is None or connected(agent, broker["address"], broker["port"])):
                del pending[name]
        if pending:
            time.sleep(0.1)
    for name in pending:
        failures[name] = "not connected to the broker in time: " + log_tail(root, name)
    return failures


def log_tail(root: Path, tenant: str, lines: int = 3) -> str:
    try:
        text = (agent_dir(root, tenant) / "agent.log").read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:])[:400] or "(empty log)"


def stop(lab: Any, agents: list[AgentState]) -> None:
    """Kill every process of ``agents`` (supervisors first, then whatever is left in their namespaces),
    delete their namespaces and veths."""
    if not agents:
        return
    inodes = {ino for a in agents if (ino := netns.netns_inode(a.netns)) is not None}
    sups = {a.supervisor_pid for a in agents if a.supervisor_pid and procs.alive(a.supervisor_pid, a.supervisor_start)}
    left = procs.kill_and_wait(sups)
    for _ in range(5):  # a child started just before its supervisor died is caught by the rescan
        members = {pid for group in procs.netns_members(inodes).values() for pid in group
                   if not procs.is_zombie(pid)}
        if not members:
            break
        left += procs.kill_and_wait(members)
    procs.reap(a.supervisor_pid for a in agents if a.supervisor_pid)
    if left:
        raise EnvironmentProblem(f"lab agent processes did not exit after SIGKILL: {sorted(set(left))[:10]}")
    netns.ip_batch(netns.delete_lines([a.netns for a in agents], []), force=True)
    deadline = time.monotonic() + 10
    while any(netns.link_exists(a.veth) for a in agents) and time.monotonic() < deadline:
        time.sleep(0.02)
    netns.ip_batch(netns.delete_lines([], [a.veth for a in agents]), force=True)
    still = [a.netns for a in agents if netns.netns_path(a.netns).exists()]
    if still:
        raise EnvironmentProblem(f"could not delete lab agent namespaces: {', '.join(still[:10])}")
    for a in agents:
        a.status = "stopped"
        (agent_dir(lab.paths.root, a.tenant) / "agent.pid").unlink(missing_ok=True)


def down(lab: Any) -> int:
    agents = load_agents(lab.paths.root)
    stop(lab, list(agents.values()))
    if agents:
        save_agents(lab.paths.root, {})
    return len(agents)


def info(lab: Any) -> list[dict[str, Any]]:
    root = lab.paths.root
    out = []
    for name, agent in sorted(load_agents(root).items()):
        data = read_pidfile(root, name) or {}
        pid = agent_pid(root, agent)
        out.append({
            "tenant": name, "pid": pid, "running": pid is not None, "address": agent.address,
            "netns": agent.netns, "supervisor_pid": agent.supervisor_pid,
            "restarts": data.get("restarts", 0) if pid else None,
            "home": str(agent_dir(root, name) / "home"), "log": str(agent_dir(root, name) / "agent.log"),
        })
    return out
