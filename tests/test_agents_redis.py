"""Agents over a real broker: Debian's redis-server on loopback (a random port, no persistence).

* every key of a tenant carries its ``global_keyprefix`` (queues, ``unacked``, ``unacked_index``,
  bindings), and a per-tenant ACL user cannot read another tenant's keys;
* (lab) a real ``irkit agent`` process killed -9 mid-step: the step is redelivered after the
  visibility timeout and finished once; the case log has one ``step.done`` per item and verifies;
  a tampered envelope is refused and the refusal is in the signed log.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ir_toolkit.agents.celeryapp import (
    STEP_TASK,
    BrokerSettings,
    make_app,
    publish,
    queue_of,
    results_queue,
    steps_queue,
)

REDIS = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(REDIS is None, reason="needs Debian's redis-server (apt-get install redis-server)")

ACL_RULES = ["resetchannels", "-@all", "+@read", "+@write", "+@list", "+@hash", "+@set", "+@sortedset", "+@string",
             "+@keyspace", "+@transaction", "+@connection", "+@scripting", "-@dangerous", "+info"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self, port: int, proc: subprocess.Popen[bytes]) -> None:
        self.port = port
        self.proc = proc

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **kw: object):  # type: ignore[no-untyped-def]
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, **kw)  # type: ignore[arg-type]

    def add_user(self, name: str, password: str, pattern: str) -> None:
        assert self.client().acl_setuser(name, enabled=True, passwords=[f"+{password}"], keys=[pattern],
                                         reset_channels=True, categories=[r for r in ACL_RULES[1:]
                                                                          if r.startswith(("+@", "-@"))],
                                         commands=["+info"])


def start_redis(directory: Path) -> RedisServer:
    directory.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    proc = subprocess.Popen([REDIS or "redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                             "--appendonly", "no", "--dir", str(directory), "--protected-mode", "yes"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = RedisServer(port, proc)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            if server.client().ping():
                return server
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("redis-server did not start")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path / "redis")
    try:
        yield server
    finally:
        server.proc.terminate()
        try:
            server.proc.wait(10)
        except subprocess.TimeoutExpired:
            server.proc.kill()


def test_every_key_carries_the_tenant_prefix(redis_server: RedisServer) -> None:
    app = make_app("t1", BrokerSettings(redis_server.url), longest_step_s=60, visibility_timeout=1,
                   restore_interval=1)
    app.send_task(STEP_TASK, args=[{"step": 1}], queue=steps_queue("t1"))
    app.send_task(STEP_TASK, args=[{"step": 2}], queue=steps_queue("t1"))
    publish(app, results_queue("t1"), {"result": 1})
    got = []
    with app.connection_for_read() as conn:
        with conn.Consumer([queue_of(app, steps_queue("t1"))], callbacks=[lambda b, m: got.append(m)],
                           accept=["json"], prefetch_count=1):
            conn.drain_events(timeout=5)
        keys = {k.decode(): redis_server.client().type(k).decode() for k in redis_server.client().keys("*")}
        assert got and keys["irkit:t1:unacked"] == "hash" and keys["irkit:t1:unacked_index"] == "zset"
        assert keys["irkit:t1:irkit.t1.steps"] == "list" and keys["irkit:t1:irkit.t1.results"] == "list"
        assert "irkit:t1:_kombu.binding.irkit.t1" in keys
        assert all(k.startswith("irkit:t1:") for k in keys), keys
        # the in-flight step's full body is in the tenant's own unacked hash
        assert len(redis_server.client().hvals("irkit:t1:unacked")) == 1


def test_a_tenants_acl_user_cannot_read_another_tenants_queue(redis_server: RedisServer) -> None:
    import redis

    redis_server.add_user("agent-t1", "pw-one-1", "~irkit:t1:*")
    redis_server.add_user("agent-t2", "pw-two-2", "~irkit:t2:*")
    a1 = make_app("t1", BrokerSettings(redis_server.url, username="agent-t1", password="pw-one-1"),
                  visibility_timeout=1, restore_interval=1)
    a1.send_task(STEP_TASK, args=[{"secret-ish": "t1 step"}], queue=steps_queue("t1"))
    with a1.connection_for_read() as conn:  # one in flight, unacked
        with conn.Consumer([queue_of(a1, steps_queue("t1"))], callbacks=[lambda b, m: None], accept=["json"],
                           prefetch_count=1):
            conn.drain_events(timeout=5)
    t2 = redis_server.client(username="agent-t2", password="pw-two-2")
    for attempt in (lambda: t2.lrange("irkit:t1:irkit.t1.steps", 0, -1), lambda: t2.hgetall("irkit:t1:unacked"),
                    lambda: t2.hgetall("unacked"), lambda: t2.keys("*"), lambda: t2.publish("irkit:t1:x", "y")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()
    # through kombu too: tenant t2's agent pointed at t1's queue gets NOPERM, never a message
    spy = make_app("t1", BrokerSettings(redis_server.url, username="agent-t2", password="pw-two-2"))
    with pytest.raises(Exception, match="(?i)permission"):
        with spy.connection_for_read() as conn:
            with conn.Consumer([queue_of(spy, steps_queue("t1"))], callbacks=[lambda b, m: None],
                               accept=["json"]):
                conn.drain_events(timeout=3)
    # t1's own agent can still restore its unacked step after the visibility timeout and consume it
    time.sleep(1.5)
    with a1.connection_for_read() as conn:
        conn.default_channel.qos.restore_visible(num=10, interval=1)
    assert redis_server.client().llen("irkit:t1:irkit.t1.steps") == 1


# --------------------------------------------------------------------------- a real agent process, real hosts

KILL_PLAYBOOK = """\
version: 1
name: agents-kill
defaults: {timeout: 60, retries: 0, host_timeout: 300, connect_timeout: 10}
phases:
  - name: slow
    steps:
      - name: slow marker
        action: command.run
        params:
          command: "sleep 6 && echo once >> /var/tmp/irkit-agent-count && touch /var/tmp/irkit-agent-done"
          creates: /var/tmp/irkit-agent-done
  - name: write
    steps:
      - name: write marker
        action: file.write
        params: {path: /var/tmp/irkit-agent-marker, content: "through the agent\\n", mode: "0600"}
"""


def _expand(value: object, home: str) -> object:
    if isinstance(value, str):
        return value.replace("${IRKIT_HOME}", home)
    if isinstance(value, dict):
        return {k: _expand(v, home) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, home) for v in value]
    return value


class AgentProcess:
    """``irkit agent`` as a separate process (its own IRKIT_HOME), restartable after kill -9."""

    def __init__(self, home: Path, args: list[str], env: dict[str, str] | None = None) -> None:
        self.home, self.args, self.extra_env = home, args, dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = home / "agent.log"

    def start(self) -> None:
        import sys

        env = {k: v for k, v in os.environ.items() if not k.startswith("IRKIT_")}
        env["IRKIT_HOME"] = str(self.home)
        env.update(self.extra_env)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([str(Path(sys.executable).with_name("irkit")), "agent", *self.args],
                                         env=env, stdout=out, stderr=subprocess.STDOUT)

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, 9)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _case_records(home: str, case: str) -> list[dict]:
    from ir_toolkit.audit.log import iter_records

    old = os.environ.get("IRKIT_HOME")
    os.environ["IRKIT_HOME"] = home
    try:
        return list(iter_records(case))
    except Exception:  # noqa: BLE001 - read while the controller writes: try again later
        return []
    finally:
        if old is None:
            os.environ.pop("IRKIT_HOME", None)
        else:
            os.environ["IRKIT_HOME"] = old


@pytest.mark.lab
@pytest.mark.slow
def test_agent_killed_mid_step_finishes_once_and_refusals_are_logged(lab, redis_server, tmp_path):
    import json

    import yaml

    from containment_helpers import home as in_home
    from containment_helpers import irkit, keyed_env
    from ir_toolkit.agents.envelope import Approvals, StepEnvelope, step_id
    from ir_toolkit.tlog.note import Signer

    env = keyed_env(lab)
    lab_home = str(lab.home)
    inventory = yaml.safe_load(Path(lab.inventory_path).read_text())
    tenant = inventory["tenants"][0]["name"]
    served = [h["name"] for h in inventory["tenants"][0]["hosts"]]
    everyone = [h["name"] for t in inventory["tenants"] for h in t["hosts"]]
    for name in everyone:
        lab.exec(name, "rm -f /var/tmp/irkit-agent-count /var/tmp/irkit-agent-done /var/tmp/irkit-agent-marker")

    # the agent: its own home and key, an inventory of its tenant only
    agent_home = tmp_path / "agent-home"
    agent_home.mkdir()
    key_file = agent_home / "agent.key"
    proc = irkit({**env, "IRKIT_HOME": str(agent_home)}, "agent", "keygen", "--tenant", tenant,
                 "--out", str(key_file), "--format", "json", check=0)
    agent_vkey = json.loads(proc.stdout)["vkey"]
    own = dict(_expand(inventory, lab_home))  # type: ignore[arg-type]
    own["tenants"] = [t for t in own["tenants"] if t["name"] == tenant]
    agent_inventory = agent_home / "tenant.yml"
    agent_inventory.write_text(yaml.safe_dump(own, sort_keys=False))
    with in_home(env):
        from ir_toolkit.secrets.keystore import get_passphrase, load_signing_key

        controller = load_signing_key(get_passphrase())
    (agent_home / "controller.vkey").write_text(controller.verifier_key() + "\n")
    drop = agent_home / "drop"
    agent = AgentProcess(agent_home, [
        "--tenant", tenant, "--broker", redis_server.url, "--controller-key", f"file:{agent_home}/controller.vkey",
        "--agent-key", str(key_file), "--inventory", str(agent_inventory), "--drop", str(drop),
        "--visibility-timeout", "5", "--restore-interval", "1", "--concurrency", "4", "--loglevel", "INFO"])

    # the controller's variant inventory: this tenant is served by the agent
    variant = json.loads(json.dumps(inventory))
    variant["tenants"][0]["agent"] = {"broker": redis_server.url, "public_key": agent_vkey, "drop": str(drop),
                                      "result_timeout": 240, "visibility_timeout": 5}
    variant_path = Path(lab_home) / "agents-variant.yml"
    variant_path.write_text(yaml.safe_dump(variant, sort_keys=False))
    playbook = tmp_path / "agents-kill.yml"
    playbook.write_text(KILL_PLAYBOOK)

    agent.start()
    case = "AGENT-KILL-1"
    controller_proc = subprocess.Popen(
        [str(Path(__import__("sys").executable).with_name("irkit")), "contain", "--inventory", str(variant_path),
         "--playbook", str(playbook), "--case", case, "--yes", "--format", "json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1])
    try:
        # a tampered and a foreign envelope on the tenant's queue (someone with broker access, no key)
        now = int(time.time())
        plan = "cd" * 32
        env_ok = StepEnvelope(
            run_id="intruder", case=case, tenant=tenant, phase="slow", phase_index=0, wave=1, item="x/0/" + served[0],
            step_id=step_id(plan, tenant, served[0], "command.run", "x/0/" + served[0]), attempt=1, host=served[0],
            action="command.run", params={"command": "touch /var/tmp/irkit-agent-evil"}, requires_approval=False,
            destructive=False, deadline_s=10, not_before=now, expires_at=now + 300, plan_hash=plan,
            approvals=Approvals(1, 1), log_origin="x")
        tampered = {**env_ok.sign(controller), "params": {"command": "touch /var/tmp/irkit-agent-evil2"}}
        foreign = env_ok.sign(Signer.generate(controller.name))
        injector = make_app(tenant, BrokerSettings(redis_server.url))
        for doc in (tampered, foreign):
            injector.send_task(STEP_TASK, args=[doc], queue=steps_queue(tenant))

        # kill -9 the agent while it runs the slow step (after its intent is in the controller's log)
        deadline = time.time() + 120
        while time.time() < deadline:
            intents = [r for r in _case_records(lab_home, case) if r["action"] == "agent.intent"]
            if intents:
                break
            assert controller_proc.poll() is None, controller_proc.communicate()
            time.sleep(0.3)
        assert intents, "the agent never started a step"
        time.sleep(1.0)
        agent.kill9()
        time.sleep(1.0)
        agent.start()  # as its supervisor would
        out, err = controller_proc.communicate(timeout=300)
    finally:
        if controller_proc.poll() is None:
            controller_proc.kill()
        agent.stop()
    assert controller_proc.returncode == 0, f"stdout:{out.decode()}\nstderr:{err.decode()}\n" \
                                            f"agent log:{agent.log.read_text()[-3000:]}"
    summary = json.loads(out)
    assert summary["ok"] is True

    records = _case_records(lab_home, case)
    done = [r["params"]["item"] for r in records if r["action"] == "step.done"]
    assert len(done) == 2 * len(everyone) and len(set(done)) == len(done)  # exactly one step.done per item
    assert all(r["outcome"] == "ok" for r in records if r["action"] == "step.done")
    results = [r for r in records if r["action"] == "agent.result" and not r["params"].get("duplicate")]
    assert sorted({r["host"] for r in results}) == sorted(served)
    assert len({r["params"]["step_id"] for r in results}) == len(results) == 2 * len(served)
    # the killed step was redelivered and taken up again, verify first
    assert any(r["params"].get("verify_first") for r in records if r["action"] == "agent.intent")
    refused = {r["params"]["code"] for r in records if r["action"] == "agent.refused"}
    assert {"bad_signature", "unknown_signer"} <= refused
    assert not [r for r in records if r["action"] in ("agent.chain_gap", "agent.chain_conflict")]
    irkit(env, "audit", "verify", "--case", case, check=0)
    for name in everyone:
        assert lab.exec(name, "cat /var/tmp/irkit-agent-marker").stdout == b"through the agent\n"
        assert lab.exec(name, "test -e /var/tmp/irkit-agent-done").returncode == 0
        assert lab.exec(name, "test -e /var/tmp/irkit-agent-evil -o -e /var/tmp/irkit-agent-evil2").returncode != 0


OFFLINE_PLAYBOOK = """\
version: 1
name: agents-offline
defaults: {timeout: 60, retries: 0, host_timeout: 300, connect_timeout: 10}
phases:
  - name: write
    steps:
      - name: write marker
        action: file.write
        params: {path: /var/tmp/irkit-offline-marker, content: "by file\\n", mode: "0600"}
      - name: check marker
        action: file.check
        params: {path: /var/tmp/irkit-offline-marker, contains: "by file"}
"""


@pytest.mark.lab
def test_offline_tenant_export_run_import(lab, tmp_path):
    """No broker: a run holds the offline tenant; export its signed steps, run them with `irkit agent
    run-offline`, import the signed results: a tampered envelope in the file is refused (and its host's
    later step too), the refusals are in the signed log, the other host's steps are done once."""
    import json

    import yaml

    from containment_helpers import home as in_home
    from containment_helpers import irkit, keyed_env

    env = keyed_env(lab)
    lab_home = str(lab.home)
    inventory = yaml.safe_load(Path(lab.inventory_path).read_text())
    tenant = inventory["tenants"][0]["name"]
    served = [h["name"] for h in inventory["tenants"][0]["hosts"]]
    everyone = [h["name"] for t in inventory["tenants"] for h in t["hosts"]]
    for name in everyone:
        lab.exec(name, "rm -f /var/tmp/irkit-offline-marker")
    agent_home = tmp_path / "offline-agent"
    agent_home.mkdir()
    agent_env = {k: v for k, v in env.items() if not k.startswith("IRKIT_")}
    agent_env["IRKIT_HOME"] = str(agent_home)
    key_file = agent_home / "agent.key"
    vkey = json.loads(irkit(agent_env, "agent", "keygen", "--tenant", tenant, "--out", str(key_file),
                            "--format", "json", check=0).stdout)["vkey"]
    own = dict(_expand(inventory, lab_home))  # type: ignore[arg-type]
    own["tenants"] = [t for t in own["tenants"] if t["name"] == tenant]
    (agent_home / "tenant.yml").write_text(yaml.safe_dump(own, sort_keys=False))
    with in_home(env):
        from ir_toolkit.secrets.keystore import signing_verifier

        (agent_home / "controller.vkey").write_text(signing_verifier().vkey + "\n")
    drop = agent_home / "drop"
    variant = json.loads(json.dumps(inventory))
    variant["tenants"][0]["agent"] = {"offline": True, "public_key": vkey, "drop": str(drop)}
    variant_path = Path(lab_home) / "agents-offline.yml"
    variant_path.write_text(yaml.safe_dump(variant, sort_keys=False))
    playbook = tmp_path / "offline.yml"
    playbook.write_text(OFFLINE_PLAYBOOK)
    case = "AGENT-OFFLINE-1"

    # a run now holds the offline tenant (its steps stay pending) and does the rest
    proc = irkit(env, "contain", "--inventory", str(variant_path), "--playbook", str(playbook), "--case", case,
                 "--yes", "--format", "json", check=3)
    for name in served:
        assert lab.exec(name, "test -e /var/tmp/irkit-offline-marker").returncode != 0
    steps = tmp_path / "steps.json"
    summary = json.loads(irkit(env, "plan", "export", "--case", case, "--tenant", tenant, "--out", str(steps),
                               "--format", "json", check=0).stdout)
    assert summary["envelopes"] == 2 * len(served)
    bundle = json.loads(steps.read_text())
    bundle["envelopes"][0]["params"]["content"] = "tampered\n"  # someone edits the file on the way
    steps.write_text(json.dumps(bundle))
    results = tmp_path / "results.json"
    agent_args = ["agent", "--tenant", tenant, "--controller-key", f"file:{agent_home}/controller.vkey",
                  "--agent-key", str(key_file), "--inventory", str(agent_home / "tenant.yml"), "--drop", str(drop)]
    proc = irkit(agent_env, *agent_args, "run-offline", str(steps), "--out", str(results), "--format", "json",
                 check=0)
    ran = json.loads(proc.stdout)
    assert ran["refused"] >= 1
    proc = irkit(env, "results", "import", str(results), "--case", case, "--format", "json", check=0)
    imported = json.loads(proc.stdout)
    assert imported["rejected"] == 0 and imported["steps_done"] == 2 * len(served) - 2
    records = _case_records(lab_home, case)
    refused = [r for r in records if r["action"] == "agent.refused"]
    assert {r["params"]["code"] for r in refused} == {"bad_signature", "earlier_step"}
    # the tampered step (the first host's write) was refused; that host's later step too; the rest ran
    first = bundle["envelopes"][0]["host"]
    for name in served:
        has = lab.exec(name, "cat /var/tmp/irkit-offline-marker")
        assert (has.returncode == 0) == (name != first), name
        if name != first:
            assert has.stdout == b"by file\n"
    assert lab.exec(first, "grep -q tampered /var/tmp/irkit-offline-marker").returncode != 0
    irkit(env, "audit", "verify", "--case", case, check=0)
    done = [r["params"]["item"] for r in records if r["action"] == "step.done"]
    assert len(done) == len(set(done)) == len(everyone) * 2 - 2  # the tampered host's two steps stay pending
    # a resume runs the local tenants' nothing-left and holds the offline tenant's pending steps again
    irkit(env, "resume", "--case", case, check=3)


@pytest.mark.lab
@pytest.mark.slow
def test_containment_through_an_agent_with_a_kill(lab_factory, redis_server, tmp_path):
    """The shipped containment playbook with one tenant served by a real agent process (killed -9 once
    during the run, restarted): same end state as local (MSP key and old password dead, the new escrowed
    passwords - escrowed on the agent, decrypted on the controller - log in, evidence verified by the
    controller's gate and `irkit evidence verify`), one step.done per item, the audit log verifies."""
    import json
    import sys

    import yaml

    from containment_helpers import PASSPHRASE, contain_playbook, escrow_get, irkit, key_login, keyed_env, \
        password_login

    lab = lab_factory("agt")
    env = keyed_env(lab)
    lab_home = str(lab.home)
    info = lab.info
    inventory = yaml.safe_load(Path(lab.inventory_path).read_text())
    tenant = inventory["tenants"][0]["name"]
    served = {h["name"] for h in inventory["tenants"][0]["hosts"]}

    agent_home = tmp_path / "agent-home"
    (agent_home / "keys").mkdir(parents=True)
    for name in ("escrow.key", "escrow.pub", "evidence.pub"):  # never the signing key
        shutil.copy2(Path(lab_home) / "keys" / name, agent_home / "keys" / name)
    key_file = agent_home / "agent.key"
    agent_env = {"IRKIT_HOME": str(agent_home), "PATH": os.environ["PATH"]}
    vkey = json.loads(irkit(agent_env, "agent", "keygen", "--tenant", tenant, "--out", str(key_file),
                            "--format", "json", check=0).stdout)["vkey"]
    own = dict(_expand(inventory, lab_home))  # type: ignore[arg-type]
    own["tenants"] = [t for t in own["tenants"] if t["name"] == tenant]
    (agent_home / "tenant.yml").write_text(yaml.safe_dump(own, sort_keys=False))
    from containment_helpers import home as in_home

    with in_home(env):
        from ir_toolkit.secrets.keystore import signing_verifier

        (agent_home / "controller.vkey").write_text(signing_verifier().vkey + "\n")
    drop = agent_home / "drop"
    agent = AgentProcess(agent_home, [
        "--tenant", tenant, "--broker", redis_server.url, "--controller-key", f"file:{agent_home}/controller.vkey",
        "--agent-key", str(key_file), "--inventory", str(agent_home / "tenant.yml"), "--drop", str(drop),
        "--keys-passphrase", "env:AGENT_KEYS_PASSPHRASE", "--visibility-timeout", "20", "--restore-interval", "1",
        "--longest-step", "200"],
        env={"AGENT_KEYS_PASSPHRASE": PASSPHRASE, "IRKIT_INSECURE_TEST_SCRYPT_LOG2N": "10"})
    variant = json.loads(json.dumps(inventory))
    variant["tenants"][0]["agent"] = {"broker": redis_server.url, "public_key": vkey, "drop": str(drop),
                                      "result_timeout": 600, "visibility_timeout": 20}
    variant_path = Path(lab_home) / "agents-variant.yml"
    variant_path.write_text(yaml.safe_dump(variant, sort_keys=False))
    playbook = contain_playbook(lab, tmp_path / "contain.yml")
    # file: references in step parameters are read where the step runs - on the agent, whose
    # $IRKIT_HOME is its own: the lab's files by their full path (the agent runs on this machine)
    playbook.write_text(playbook.read_text().replace("${IRKIT_HOME}", lab_home))
    case = "AGENT-CONTAIN-1"
    agent.start()
    controller = subprocess.Popen(
        [str(Path(sys.executable).with_name("irkit")), "contain", "--inventory", str(variant_path), "--playbook",
         str(playbook), "--case", case, "--yes", "--format", "json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1])
    try:
        deadline = time.time() + 600
        killed = False
        while time.time() < deadline and controller.poll() is None:
            intents = [r for r in _case_records(lab_home, case) if r["action"] == "agent.intent"]
            if not killed and len(intents) >= 4:  # a few steps in: kill -9, the supervisor restarts it
                agent.kill9()
                time.sleep(1)
                agent.start()
                killed = True
            time.sleep(0.5)
        out, err = controller.communicate(timeout=900)
    finally:
        if controller.poll() is None:
            controller.kill()
        agent.stop()
    assert killed
    assert controller.returncode == 0, f"{out.decode()[-3000:]}\n{err.decode()[-3000:]}\n" \
                                       f"{agent.log.read_text()[-4000:]}"
    result = json.loads(out)
    assert result["ok"] is True, result

    records = _case_records(lab_home, case)
    done = [r["params"]["item"] for r in records if r["action"] == "step.done"]
    assert len(done) == len(set(done)) and all(r["outcome"] == "ok" for r in records if r["action"] == "step.done")
    plan_items = {r["params"]["item"] for r in records if r["action"] == "step.start"}
    assert set(done) == plan_items
    assert {r["host"] for r in records if r["action"] == "agent.result"} == served
    assert {r["host"] for r in records if r["action"] == "evidence.collected"} >= served
    irkit(env, "audit", "verify", "--case", case, check=0)
    irkit(env, "evidence", "verify", "--case", case, check=0)
    for host in info["hosts"]:
        assert not key_login(lab, host, "root", info["msp_private_key"]), host["name"]
        assert not password_login(lab, host, "mspadmin", info["msp_shared_password"]), host["name"]
        new = escrow_get(env, case, host["name"])
        assert len(new) == 24 and password_login(lab, host, "mspadmin", new), host["name"]
        assert key_login(lab, host, "root", info["responder_private_key"]), host["name"]
