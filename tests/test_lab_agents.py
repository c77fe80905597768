"""The lab's broker and agents (`irkit lab up --agents`, docs/lab.md "Agents", docs/scaling.md).

Real parts: Debian's redis-server (TLS only, ACL users, lab CA), Celery workers in per-tenant
network namespaces under the lab's supervisor. The worker here is tests/agentlab_worker.py (the
settings an irkit agent uses) so these tests check the lab's broker, ACLs and supervision on
their own; the protocol tests with `irkit agent` are the agents' own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.lab, pytest.mark.slow]

redis = pytest.importorskip("redis")

WORKER = Path(__file__).with_name("agentlab_worker.py")
VISIBILITY = 6.0


def stub_command(tenant: str, url: str, directory: Path, broker: dict) -> list[str]:
    files = broker["tenants"][tenant]
    return [sys.executable, str(WORKER), "worker", "--tenant", tenant, "--broker", url, "--user", files["user"],
            "--password-file", files["password_file"], "--ca", files["ca_file"], "--cert", files["cert_file"],
            "--key", files["key_file"], "--visibility", str(VISIBILITY)]


def client(broker: dict, tenant: str | None, **kwargs) -> "redis.Redis":
    files = broker["tenants"][tenant] if tenant else broker["controller"]
    return redis.Redis(host=broker["address"], port=broker["port"], username=files["user"],
                       password=Path(files["password_file"]).read_text().strip(), ssl=True,
                       ssl_ca_certs=files["ca_file"], ssl_certfile=files["cert_file"], ssl_keyfile=files["key_file"],
                       socket_timeout=10, **kwargs)


def send(broker: dict, tenant: str, marker_dir: Path, step: str, sleep: float = 0.0, timeout: float = 120) -> None:
    """Queue one step for ``tenant`` as the controller (kombu retries while the broker is down)."""
    files = broker["controller"]
    subprocess.run([sys.executable, str(WORKER), "send", "--tenant", tenant, "--broker", broker["url"],
                    "--user", files["user"], "--password-file", files["password_file"], "--ca", files["ca_file"], "--cert", files["cert_file"],
                    "--key", files["key_file"], "--marker-dir", str(marker_dir), "--step", step,
                    "--sleep", str(sleep)], check=True, timeout=timeout, capture_output=True)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def agent_lab(lab_factory):
    from ir_toolkit.inventory import load_inventory

    if not shutil.which("redis-server"):
        pytest.skip("needs redis-server (apt-get install redis-server)")
    handle = lab_factory("agentlab", tenants=2, hosts_per_tenant=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IRKIT_HOME", str(handle.home))
        inv = load_inventory(handle.inventory_path)

        def up():
            return handle.lab.up(inv, handle.inventory_path, agents=True, agent_command=stub_command)

        result = up()
        assert result.broker_started and result.agents_started == ["t001", "t002"]
        handle.up_agents = up
        handle.refresh()
        yield handle


def agent_info(handle, tenant: str) -> dict:
    return next(a for a in handle.refresh()["agents"] if a["tenant"] == tenant)


def test_lab_info_lists_broker_and_agents(agent_lab):
    info = agent_lab.info
    broker = info["broker"]
    assert broker["url"] == f"rediss://{broker['address']}:6380/0" and broker["controller"]["user"] == "irkit-controller"
    assert broker["running"] and isinstance(broker["pid"], int)
    assert Path(f"/proc/{broker['pid']}/comm").read_text().startswith("redis-server")
    import ipaddress

    net = ipaddress.ip_network(info["network"])
    assert ipaddress.ip_address(broker["address"]) in net
    agents = {a["tenant"]: a for a in info["agents"]}
    assert sorted(agents) == ["t001", "t002"]
    for tenant, a in agents.items():
        assert a["running"] and isinstance(a["pid"], int) and a["pid"] != a["supervisor_pid"]
        assert ipaddress.ip_address(a["address"]) in net
        # the agent runs in its own network namespace, not the controller's
        assert os.stat(f"/proc/{a['pid']}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
        assert os.stat(f"/proc/{a['pid']}/ns/net").st_ino == os.stat(f"/run/netns/{a['netns']}").st_ino
        # nothing secret in its argv or environment
        password = Path(broker["tenants"][tenant]["password_file"]).read_text().strip()
        for pid in (a["pid"], a["supervisor_pid"]):
            assert password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
            assert password.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
        assert broker["tenants"][tenant]["key_prefix"] == f"irkit:{tenant}:"
    # secrets are 0600, the ACL file holds only hashes and no process argv carries a password
    lab_dir = Path(info["lab_dir"])
    acl = (lab_dir / "broker" / "users.acl").read_text()
    for path in [lab_dir / "broker" / "users.acl", lab_dir / "broker" / "redis.conf",
                 Path(broker["controller"]["password_file"]), Path(broker["controller"]["key_file"])]:
        assert path.stat().st_mode & 0o077 == 0, path
    for files in [broker["controller"], *broker["tenants"].values()]:
        pw = Path(files["password_file"]).read_text().strip()
        assert pw not in acl
        assert pw.encode() not in Path(f"/proc/{broker['pid']}/cmdline").read_bytes()
        assert pw.encode() not in Path(f"/proc/{broker['pid']}/environ").read_bytes()
    # the CLI shows the same
    proc = agent_lab.irkit("lab", "info", "--inventory", str(agent_lab.inventory_path), "--format", "json")
    data = json.loads(proc.stdout)
    assert data["broker"]["pid"] == broker["pid"] and {a["tenant"] for a in data["agents"]} == {"t001", "t002"}


def test_a_step_queued_by_the_controller_runs_in_the_tenants_agent(agent_lab, tmp_path):
    tmp_path.chmod(0o777)
    broker = agent_lab.info["broker"]
    send(broker, "t001", tmp_path, "hello")
    wait_for(lambda: (tmp_path / "hello.done").exists(), 60, "the step to finish")
    ran_in = int((tmp_path / "hello.done").read_text())
    ns = os.stat(f"/proc/{ran_in}/ns/net").st_ino
    assert ns == os.stat(f"/run/netns/{agent_info(agent_lab, 't001')['netns']}").st_ino


def test_one_tenant_cannot_reach_another_tenants_queue_or_unacked_hash(agent_lab, tmp_path):
    tmp_path.chmod(0o777)
    broker = agent_lab.info["broker"]
    send(broker, "t001", tmp_path, "inflight", sleep=8)
    wait_for(lambda: list(tmp_path.glob("inflight.[0-9]*")), 60, "the step to start")
    ctl = client(broker, None)
    tags = ctl.hkeys("irkit:t001:unacked")
    assert tags, "the running step is in t001's unacked hash (kombu's redelivery record)"
    body = ctl.hget("irkit:t001:unacked", tags[0])
    assert b"inflight" in body
    other = client(broker, "t002")
    own = client(broker, "t001")
    refused = [
        ("HKEYS", "irkit:t001:unacked"), ("HGET", "irkit:t001:unacked", tags[0]),
        ("HDEL", "irkit:t001:unacked", tags[0]), ("ZRANGE", "irkit:t001:unacked_index", "0", "-1"),
        ("LPUSH", "irkit:t001:steps.t001", "forged"), ("BRPOP", "irkit:t001:steps.t001", "1"),
        ("RPOP", "irkit:t001:steps.t001"), ("SMEMBERS", "irkit:t001:_kombu.binding.steps.t001"),
        ("HKEYS", "unacked"), ("LPUSH", "steps.t001", "x"),  # the unprefixed (shared) keys
        ("SET", "irkit:t001:unacked_mutex", "x"),
        ("PUBLISH", "irkit:t001:/0.celery.pidbox", "x"),
        ("EVALSHA", "0" * 40, "1", "irkit:t001:unacked"),
    ]
    for cmd in refused:
        with pytest.raises(redis.exceptions.NoPermissionError):
            other.execute_command(*cmd)
    # dangerous and administrative commands are refused to every agent user
    for cmd in (("FLUSHALL",), ("KEYS", "*"), ("CONFIG", "GET", "*"), ("ACL", "LIST"), ("SCAN", "0"),
                ("MONITOR",), ("CLIENT", "LIST"), ("EVAL", "return 1", "0"), ("SHUTDOWN",)):
        for c in (other, own):
            with pytest.raises(redis.exceptions.NoPermissionError):
                c.execute_command(*cmd)
    with pytest.raises(redis.exceptions.ResponseError):  # off in redis.conf, before any ACL check
        other.execute_command("DEBUG", "SLEEP", "0")
    # a Lua script cannot reach another tenant's keys either
    sha = other.script_load("return redis.call('hkeys', KEYS[1])")
    with pytest.raises(redis.exceptions.ResponseError, match="(?i)permission|access"):
        other.evalsha(sha, 1, "irkit:t001:unacked")
    # its own prefix works
    assert other.hkeys("irkit:t002:unacked") == []
    assert own.hkeys("irkit:t001:unacked") == tags
    wait_for(lambda: (tmp_path / "inflight.done").exists(), 60, "the step to finish")


def _tls_ctx(broker: dict, *, ca: bool = True, cert: bool = True) -> ssl.SSLContext:
    files = broker["controller"]
    ctx = ssl.create_default_context(cafile=files["ca_file"] if ca else None)
    if cert:
        ctx.load_cert_chain(files["cert_file"], files["key_file"])
    return ctx


def _hello(broker: dict, ctx: ssl.SSLContext, payload: bytes) -> bytes:
    with socket.create_connection((broker["address"], broker["port"]), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=broker["address"]) as tls:
            tls.sendall(payload)
            return tls.recv(4096)


def test_broker_is_tls_only_and_refuses_clients_without_the_lab_ca_or_a_client_cert(agent_lab):
    broker = agent_lab.info["broker"]
    # no plaintext listener at all
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((broker["address"], 6379), timeout=5)
    # plaintext on the TLS port gets no RESP answer
    with socket.create_connection((broker["address"], broker["port"]), timeout=5) as s:
        s.sendall(b"PING\r\n")
        s.settimeout(5)
        try:
            answer = s.recv(100)
        except (ConnectionResetError, TimeoutError):
            answer = b""
        assert not answer.startswith(b"+PONG")
    # a client that trusts only the system CAs refuses the lab broker's certificate
    with pytest.raises(ssl.SSLCertVerificationError):
        _hello(broker, _tls_ctx(broker, ca=False), b"PING\r\n")
    # without a client certificate the broker refuses the handshake
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        answer = _hello(broker, _tls_ctx(broker, cert=False), b"PING\r\n")
        if not answer:
            raise ConnectionResetError("closed")
    # with both, the default user is off and a wrong password is refused
    ctx = _tls_ctx(broker)
    assert _hello(broker, ctx, b"PING\r\n").startswith(b"-NOAUTH")
    assert b"WRONGPASS" in _hello(broker, ctx, b"AUTH default x\r\n") or b"-ERR" in _hello(
        broker, ctx, b"AUTH default x\r\n")
    assert b"WRONGPASS" in _hello(broker, ctx, b"AUTH irkit-agent-t001 not-the-password\r\n")
    assert b"WRONGPASS" in _hello(broker, ctx, b"AUTH irkit-controller not-the-password\r\n")


def test_supervisor_restarts_a_killed_agent_and_the_unfinished_step_is_redelivered(agent_lab, tmp_path):
    tmp_path.chmod(0o777)
    broker = agent_lab.info["broker"]
    before = agent_info(agent_lab, "t002")
    send(broker, "t002", tmp_path, "killed", sleep=4)
    first = wait_for(lambda: list(tmp_path.glob("killed.[0-9]*")), 60, "the step to start")
    os.kill(before["pid"], signal.SIGKILL)
    after = wait_for(lambda: (a := agent_info(agent_lab, "t002"))["running"] and a["pid"] != before["pid"] and a,
                     30, "the supervisor to restart the agent")
    assert after["supervisor_pid"] == before["supervisor_pid"] and after["restarts"] == before["restarts"] + 1
    log = Path(after["log"]).read_text()
    assert f"pid {before['pid']} exited (signal 9)" in log
    # the step's message is back on t002's queue after the visibility timeout and finishes
    wait_for(lambda: (tmp_path / "killed.done").exists(), 90, "the redelivered step to finish")
    runs = sorted(tmp_path.glob("killed.[0-9]*"))
    assert len(runs) >= 2 or first[0].name != f"killed.{(tmp_path / 'killed.done').read_text()}", runs
    assert client(broker, None).hkeys("irkit:t002:unacked") == []


def test_broker_down_for_a_while_then_back(agent_lab, tmp_path):
    tmp_path.chmod(0o777)
    broker = agent_lab.info["broker"]
    agents_before = {a["tenant"]: a["pid"] for a in agent_lab.info["agents"]}
    client(broker, None).rpush("irkit:t001:kept-across-restart", "queued before the outage")
    os.kill(broker["pid"], signal.SIGKILL)
    time.sleep(5)
    assert not agent_lab.refresh()["broker"]["running"]
    # the controller queues a step while the broker is down: its publish waits and retries
    import threading

    errors: list[BaseException] = []

    def queue() -> None:
        try:
            send(broker, "t001", tmp_path, "outage", timeout=180)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    thread = threading.Thread(target=queue)
    thread.start()
    time.sleep(3)
    result = agent_lab.up_agents()  # brings the broker back (same address, users and CA)
    assert result.broker_started and result.agents_started == []
    thread.join(180)
    assert not errors, errors
    wait_for(lambda: (tmp_path / "outage.done").exists(), 120, "the agent to reconnect and run the step")
    info = agent_lab.refresh()
    # the same agent processes reconnected (no restart needed)
    assert {a["tenant"]: a["pid"] for a in info["agents"]} == agents_before
    assert info["broker"]["pid"] != broker["pid"]
    # what was queued before the broker died is still there (append-only file in the lab directory)
    assert client(broker, None).lrange("irkit:t001:kept-across-restart", 0, -1) == [b"queued before the outage"]


def test_lab_down_stops_broker_supervisors_and_agents(agent_lab):
    from conftest import lab_leftovers

    info = agent_lab.refresh()
    pids = [info["broker"]["pid"]] + [p for a in info["agents"] for p in (a["pid"], a["supervisor_pid"])]
    agent_lab.down()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] in "ZX"
    assert lab_leftovers(info["lab_id"], Path(info["lab_dir"])) == []


# --------------------------------------------------------------------------- the real `irkit agent`, through the CLI

SMALL_PLAYBOOK = """\
version: 1
name: lab-agents
defaults: {timeout: 60, retries: 0, host_timeout: 300, connect_timeout: 10}
phases:
  - name: slow
    steps:
      - name: slow marker
        action: command.run
        params:
          command: "sleep 8 && echo once >> /var/tmp/irkit-labagent-count && touch /var/tmp/irkit-labagent-done"
          creates: /var/tmp/irkit-labagent-done
  - name: write
    steps:
      - name: write marker
        action: file.write
        params: {path: /var/tmp/irkit-labagent-marker, content: "through the lab agent\\n", mode: "0600"}
"""


def _records(env: dict, case: str) -> list[dict]:
    from containment_helpers import home as in_home

    from ir_toolkit.audit.log import iter_records

    with in_home(env):
        try:
            return list(iter_records(case))
        except Exception:  # noqa: BLE001 - read while the controller writes
            return []


def test_lab_up_agents_runs_irkit_agents_and_contain_goes_through_them_with_one_killed(lab_factory, tmp_path):
    """`irkit lab up --agents` with the real `irkit agent`: lab info names the agents' inventory, a
    run through it reaches every host via the agents, one agent is killed -9 mid-step and restarted
    by its supervisor, and the log has exactly one step.done per item and verifies."""
    from containment_helpers import irkit, keyed_env

    from ir_toolkit.inventory import load_inventory

    handle = lab_factory("agentcli", tenants=2, hosts_per_tenant=1)
    env = keyed_env(handle)  # the controller's keys first: agents pin its verifier key
    irkit(env, "lab", "up", "--inventory", str(handle.inventory_path), "--agents", "--agent-visibility-timeout",
          "12", check=0, timeout=600)
    info = json.loads(irkit(env, "lab", "info", "--inventory", str(handle.inventory_path), "--format", "json",
                            check=0).stdout)
    assert info["inventory"].endswith("/agents-inventory.yml") and info["source_inventory"] == str(handle.inventory_path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IRKIT_HOME", str(handle.home))
        served = load_inventory(info["inventory"])
    agents = {a["tenant"]: a for a in info["agents"]}
    for tenant in served.tenants:
        assert tenant.agent is not None and tenant.agent.broker == info["broker"]["url"]
        assert tenant.agent.user == "irkit-controller" and tenant.agent.password.startswith("file:")
        a = agents[tenant.name]
        cmdline = Path(f"/proc/{a['pid']}/cmdline").read_bytes().split(b"\0")
        assert b"agent" in cmdline and cmdline[cmdline.index(b"--tenant") + 1] == tenant.name.encode()
    again = irkit(env, "lab", "up", "--inventory", str(handle.inventory_path), "--agents",
                  "--agent-visibility-timeout", "12", check=0)
    assert "nothing changed" in again.stdout
    assert {a["tenant"]: a["pid"] for a in json.loads(irkit(env, "lab", "info", "--inventory",
            str(handle.inventory_path), "--format", "json", check=0).stdout)["agents"]} == \
        {t: a["pid"] for t, a in agents.items()}

    hosts = [h.name for h in served.hosts()]
    for name in hosts:
        handle.exec(name, "rm -f /var/tmp/irkit-labagent-*")
    playbook = tmp_path / "lab-agents.yml"
    playbook.write_text(SMALL_PLAYBOOK)
    case = "LABAGENTS-1"
    controller = subprocess.Popen(
        [str(Path(sys.executable).with_name("irkit")), "contain", "--inventory", info["inventory"], "--playbook",
         str(playbook), "--case", case, "--yes", "--format", "json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1])
    try:
        victim = served.tenants[0].name
        wait_for(lambda: any(r["action"] == "agent.intent" and r.get("tenant") == victim
                             for r in _records(env, case)), 240, "the first agent's intent", interval=0.5)
        time.sleep(1.0)
        os.kill(agents[victim]["pid"], signal.SIGKILL)
        out, err = controller.communicate(timeout=600)
    finally:
        if controller.poll() is None:
            controller.kill()
            controller.wait()
    after = {a["tenant"]: a for a in json.loads(irkit(env, "lab", "info", "--inventory", str(handle.inventory_path),
                                                          "--format", "json", check=0).stdout)["agents"]}
    log = Path(agents[victim]["log"]).read_text()
    assert controller.returncode == 0, f"{out.decode()}\n{err.decode()}\nagent log:\n{log[-3000:]}"
    assert after[victim]["pid"] != agents[victim]["pid"] and after[victim]["restarts"] >= 1
    assert f"pid {agents[victim]['pid']} exited (signal 9)" in log
    records = _records(env, case)
    done = [r["params"]["item"] for r in records if r["action"] == "step.done"]
    assert len(done) == 2 * len(hosts) and len(set(done)) == len(done), done  # one step.done per item
    assert all(r["outcome"] == "ok" for r in records if r["action"] == "step.done")
    assert {r["host"] for r in records if r["action"] == "agent.result"} == set(hosts)  # every host via an agent
    irkit(env, "audit", "verify", "--case", case, check=0)
    for name in hosts:
        assert handle.exec(name, "cat /var/tmp/irkit-labagent-marker").stdout == b"through the lab agent\n"
    handle.down()
    assert lab_leftovers_of(info) == []


def lab_leftovers_of(info: dict) -> list[str]:
    from conftest import lab_leftovers

    return lab_leftovers(info["lab_id"], Path(info["lab_dir"]))
