"""Agents without a network: signed envelopes, the agent's refusals, replay, verify-first, and the
controller's verification and de-duplication - over celery's in-memory broker where a broker is needed.

Hosts are :class:`tests.fakes.FakePool` connections (the protocol under test is between controller and
agent; real hosts and a real redis-server are in tests/test_agents_redis.py).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from ir_toolkit.actions import base as actions_base
from ir_toolkit.actions.base import Action, ActionContext, ActionFailed, Outcome, Params, register
from ir_toolkit.agents.agent import Agent, AgentConfig
from ir_toolkit.agents.celeryapp import (
    BrokerSettings,
    key_prefix,
    make_app,
    results_queue,
    steps_queue,
)
from ir_toolkit.agents.dispatch import AgentDispatcher
from ir_toolkit.agents.envelope import (
    AgentMessage,
    Approvals,
    BadSignature,
    MalformedEnvelope,
    StepEnvelope,
    UnknownSigner,
    step_id,
)
from ir_toolkit.agents.store import AgentStore
from ir_toolkit.inventory import load_inventory
from ir_toolkit.tlog.note import Signer
from tests.fakes import FakePool, MemoryJournal

PLAN = "ab" * 32


class _P(Params):
    label: str = "x"


class AStep(Action):
    name = "agent_t.step"
    Params = _P
    applied: list[str] = []
    verified: list[str] = []

    def plan(self, ctx: ActionContext, params: _P) -> Outcome:
        return Outcome(True, "would")

    def apply(self, ctx: ActionContext, params: _P) -> Outcome:
        result = ctx.run(f"step {params.label}")
        if params.label == "slow":
            time.sleep(1.0)
        if not result.ok:
            raise ActionFailed("exit")
        AStep.applied.append(ctx.host.name)
        ctx.record("host.isolated", {"allowed": ["198.18.0.1"], "table": "irkit"})
        return Outcome(True, f"did {params.label}", {"host": ctx.host.name})

    def verify(self, ctx: ActionContext, params: _P) -> Outcome:
        AStep.verified.append(ctx.host.name)
        return Outcome(False, "checked", ok=ctx.host.name in AStep.applied)


@pytest.fixture(autouse=True)
def _actions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("IRKIT_HOME", str(tmp_path / "home"))
    register(AStep)
    AStep.applied, AStep.verified = [], []
    yield
    actions_base._REGISTRY.pop(AStep.name, None)


def _inventory(tmp: Path, agent_key: str = "", drop: str = "", broker: str = "memory://") -> Path:
    tenants = []
    for i, t in enumerate(("t1", "t2")):
        entry: dict[str, Any] = {"name": t, "hosts": [{"name": f"{t}-h{j}", "address": f"198.18.{i + 1}.{j + 10}"}
                                                      for j in range(2)]}
        if agent_key and t == "t1":
            entry["agent"] = {"broker": broker, "public_key": agent_key, "drop": drop, "result_timeout": 30}
        tenants.append(entry)
    data = {"version": 1, "msp": {"name": "acme", "responder": {"key": "file:/nonexistent/k",
                                                                  "controller_address": "198.18.0.1"}},
            "tenants": tenants}
    path = tmp / "inventory.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class World:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.controller = Signer.generate("ctl.example/irkit")
        self.agent_key = Signer.generate("irkit-agent-t1")
        self.drop = tmp / "drop"
        self.inventory = load_inventory(_inventory(tmp, self.agent_key.verifier_key(), str(self.drop)))
        self.published: list[dict[str, Any]] = []
        self.store = AgentStore(tmp / "agent" / "store.sqlite", self.agent_key.name)
        self.agent = Agent(AgentConfig(
            tenant="t1", signer=self.agent_key, controller=[self.controller.verifier()], inventory=self.inventory,
            store=self.store, publish=self.published.append, drop=self.drop,
            pool_factory=lambda inv, case: FakePool(inv, case), diary=False))  # one IRKIT_HOME for both sides

    def envelope(self, **over: Any) -> StepEnvelope:
        host = over.pop("host", "t1-h0")
        tenant = over.pop("tenant", "t1")
        item = over.pop("item", f"contain/0/{host}")
        now = int(time.time())
        fields: dict[str, Any] = dict(
            run_id="r1", case="CASE-1", tenant=tenant, phase="contain", phase_index=0, wave=1, item=item,
            step_id=step_id(PLAN, tenant, host, "agent_t.step", item), attempt=1, host=host, action="agent_t.step",
            params={"label": "go"}, requires_approval=False, destructive=False, deadline_s=30, not_before=now,
            expires_at=now + 60, plan_hash=PLAN, approvals=Approvals(1, 1), log_origin="acme/ir/CASE-1")
        fields.update(over)
        return StepEnvelope(**fields)

    def messages(self) -> list[AgentMessage]:
        return [AgentMessage.open(doc, [self.agent_key.verifier()])[0] for doc in self.published]


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


# --------------------------------------------------------------------------- envelopes


def test_envelope_round_trip_and_step_id_binding(world: World) -> None:
    env = world.envelope()
    signed = env.sign(world.controller)
    assert StepEnvelope.open(json.dumps(signed), [world.controller.verifier()]) == env
    # the id is H(plan, tenant, host, action, item): a step re-pointed at another host does not verify
    body = {k: v for k, v in signed.items() if k != "sig"}
    with pytest.raises(MalformedEnvelope, match="step_id"):
        StepEnvelope.from_body({**body, "host": "t1-h1"})


def test_tampered_and_foreign_envelopes_are_refused_by_the_parser(world: World) -> None:
    signed = world.envelope().sign(world.controller)
    tampered = {**signed, "params": {"label": "rm -rf /"}}
    with pytest.raises(BadSignature):
        StepEnvelope.open(tampered, [world.controller.verifier()])
    intruder = Signer.generate("ctl.example/irkit")  # same name, other key
    with pytest.raises(UnknownSigner):
        StepEnvelope.open(world.envelope().sign(intruder), [world.controller.verifier()])
    with pytest.raises(MalformedEnvelope, match="unknown field"):
        StepEnvelope.open(_resign({**signed, "extra": 1}, world.controller), [world.controller.verifier()])
    with pytest.raises(MalformedEnvelope, match="floats"):
        StepEnvelope.open(_resign({**signed, "params": {"label": 1.5}}, world.controller),
                          [world.controller.verifier()])
    # an agent message's signature can never pass for an envelope's (domain-separated tags)
    msg = AgentMessage(kind="intent", agent_id="a", agent_seq=1, prev_agent_hash="0" * 64, tenant="t1",
                       step_id="s", attempt=1, sent_at=1).sign(world.controller)
    with pytest.raises((BadSignature, MalformedEnvelope)):
        StepEnvelope.open({**{k: v for k, v in signed.items() if k != "sig"}, "sig": msg["sig"]},
                          [world.controller.verifier()])


def _resign(doc: dict[str, Any], signer: Signer) -> dict[str, Any]:
    from ir_toolkit.agents.envelope import STEP_TAG, _b64

    body = {k: v for k, v in doc.items() if k != "sig"}
    try:
        from ir_toolkit.agents.envelope import canonical

        data = canonical(body)
    except MalformedEnvelope:
        data = json.dumps(body, sort_keys=True).encode()
    return {**body, "sig": {"key": signer.verifier_key(), "value": _b64(signer.sign(STEP_TAG + data))}}


# --------------------------------------------------------------------------- the agent


def test_agent_runs_a_step_intent_then_result_chained(world: World) -> None:
    assert world.agent.handle(world.envelope().sign(world.controller)) == "done"
    intent, result = world.messages()
    assert (intent.kind, intent.agent_seq, intent.prev_agent_hash) == ("intent", 1, "0" * 64)
    from ir_toolkit.agents.envelope import message_hash

    assert result.kind == "result" and result.agent_seq == 2
    assert result.prev_agent_hash == message_hash(world.published[0])
    assert result.outcome["status"] == "ok" and result.outcome["changed"] is True
    # what the action wanted in the audit log travels in the result; the agent writes no log
    assert [r["action"] for r in result.records] == ["host.isolated"]
    assert AStep.applied == ["t1-h0"]


@pytest.mark.parametrize("change,code", [
    ({"tenant": "t2", "host": "t2-h0"}, "wrong_tenant"),
    ({"expires_at": int(time.time()) - 5}, "expired"),
    ({"host": "nohost"}, "unknown_host"),
    ({"requires_approval": True, "approvals": Approvals(2, 1)}, "approvals"),
    ({"destructive": True}, "mismatch"),
    ({"params": {"label": "x", "rm": True}}, "bad_params"),
])
def test_agent_refuses_with_a_signed_refusal(world: World, change: dict[str, Any], code: str) -> None:
    env = world.envelope(**change)
    assert world.agent.handle(env.sign(world.controller)) == "refused"
    (refusal,) = world.messages()
    assert refusal.kind == "refusal" and refusal.code == code and refusal.tenant == "t1"
    assert AStep.applied == []


def test_agent_refuses_tampered_and_foreign_envelopes(world: World) -> None:
    signed = world.envelope().sign(world.controller)
    assert world.agent.handle({**signed, "host": "t1-h1"}) == "refused"
    foreign = world.envelope().sign(Signer.generate("intruder"))
    assert world.agent.handle(foreign) == "refused"
    assert world.agent.handle(b"\x00not json") == "refused"
    codes = [m.code for m in world.messages()]
    assert codes == ["bad_signature", "unknown_signer", "malformed"]
    # the refusal names what the envelope claimed (unverified) and its hash, for the signed log
    first = world.messages()[0]
    assert first.claims["host"] == "t1-h1" and len(first.envelope_sha256) == 64
    assert AStep.applied == []


def test_replay_of_a_done_step_republishes_the_stored_result(world: World) -> None:
    signed = world.envelope().sign(world.controller)
    world.agent.handle(signed)
    result = world.published[-1]
    assert world.agent.handle(signed) == "republished"
    assert world.published[-1] == result and len(world.published) == 3
    assert AStep.applied == ["t1-h0"]  # not applied twice


def test_intent_without_done_takes_the_verify_first_path(world: World, tmp_path: Path) -> None:
    env = world.envelope()
    # an earlier process published the intent, applied, and died before the result
    world.store.append(lambda seq, prev: AgentMessage(
        kind="intent", agent_id=world.agent_key.name, agent_seq=seq, prev_agent_hash=prev, tenant="t1",
        step_id=env.step_id, attempt=1, sent_at=1).sign(world.agent_key),
        step_id=env.step_id, state="intent", plan_hash=PLAN, attempt=1)
    AStep.applied.append("t1-h0")  # the change is on the host already
    assert world.agent.handle(env.sign(world.controller)) == "done"
    msgs = world.messages()
    assert [m.kind for m in msgs] == ["intent", "intent", "result"]  # the first from the outbox
    assert msgs[1].verify_first and msgs[2].verify_first
    assert msgs[2].outcome["changed"] is False and "verified first" in msgs[2].outcome["summary"]
    assert AStep.applied == ["t1-h0"]  # verify said it is in place: not applied again


def test_outbox_survives_a_failed_publish(world: World) -> None:
    calls = {"n": 0}
    real = world.agent.config.publish

    def flaky(doc: dict[str, Any]) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise ConnectionError("broker gone")
        real(doc)

    world.agent.config.publish = flaky
    with pytest.raises(ConnectionError):
        world.agent.handle(world.envelope().sign(world.controller))
    assert [m.kind for m in world.messages()] == ["intent"]
    # redelivered: the committed result is published from the outbox first, then the store answers
    assert world.agent.handle(world.envelope().sign(world.controller)) == "republished"
    kinds = [m.kind for m in world.messages()]
    assert kinds[:2] == ["intent", "result"] and AStep.applied == ["t1-h0"]


# --------------------------------------------------------------------------- the controller


class Item:
    def __init__(self, host: str, tenant: str = "t1", idx: int = 0) -> None:
        self.id = f"contain/{idx}/{host}"
        self.tenant, self.host, self.action = tenant, host, "agent_t.step"
        self.phase, self.phase_index, self.step = "contain", 0, "s"
        self.requires_approval, self.destructive = False, False


def _dispatcher(world: World, journal: MemoryJournal, app: Any = None) -> AgentDispatcher:
    return AgentDispatcher(world.inventory, journal, world.controller, case="CASE-1", plan_hash=PLAN,
                           actor="tester", apps={"t1": app} if app else None)


def test_controller_records_once_and_rejects_forgeries(world: World) -> None:
    journal = MemoryJournal()
    d = _dispatcher(world, journal, app=make_app("t1", BrokerSettings("memory://")))
    world.agent.handle(world.envelope().sign(world.controller))
    intent, result = world.published
    assert d.handle("t1", intent) == "recorded"
    assert d.handle("t1", result) == "recorded"
    assert d.handle("t1", result) == "duplicate"  # the same message again
    # a re-published result of a new attempt (a redelivery) is not recorded twice
    forged = {**result, "outcome": {"status": "ok", "summary": "forged"}}
    assert d.handle("t1", forged) == "rejected"
    other = AgentMessage.from_body({k: v for k, v in result.items() if k != "sig"})
    wrong_key = Signer.generate(world.agent_key.name).sign  # noqa: F841 - a key the inventory does not pin
    assert d.handle("t1", AgentMessage(**{**other.__dict__, "agent_seq": 3}).sign(Signer.generate("x"))) == "rejected"
    actions = [r["action"] for r in journal.records]
    assert actions.count("agent.result") == 1 and actions.count("host.isolated") == 1
    assert actions.count("agent.message_rejected") == 2
    iso = journal.of("host.isolated")[0]
    assert iso["tenant"] == "t1" and iso["host"] == "t1-h0" and iso["actor"].startswith("irkit-agent-t1:")


def test_controller_sees_a_gap_in_the_agent_chain(world: World) -> None:
    journal = MemoryJournal()
    d = _dispatcher(world, journal, app=make_app("t1", BrokerSettings("memory://")))
    world.agent.handle(world.envelope().sign(world.controller))
    world.agent.handle(world.envelope(host="t1-h1", item="contain/0/t1-h1").sign(world.controller))
    for doc in world.published[:1] + world.published[2:]:  # message 2 withheld
        d.handle("t1", doc)
    gaps = journal.of("agent.chain_gap")
    assert len(gaps) == 1 and gaps[0]["params"]["expected_seq"] == 2 and gaps[0]["params"]["agent_seq"] == 3


def test_agent_records_the_controller_writes_itself_are_refused(world: World) -> None:
    journal = MemoryJournal()
    d = _dispatcher(world, journal, app=make_app("t1", BrokerSettings("memory://")))
    msg = AgentMessage(kind="result", agent_id=world.agent_key.name, agent_seq=1, prev_agent_hash="0" * 64,
                       tenant="t1", step_id="c" * 64, attempt=1, sent_at=1, host="t1-h0", item="i",
                       outcome={"status": "ok"}, records=({"action": "step.done", "params": {}},
                                                          {"action": "approval.given", "params": {}}))
    d.handle("t1", msg.sign(world.agent_key))
    assert not journal.of("step.done") and not journal.of("approval.given")
    assert len(journal.of("agent.message_rejected")) == 2


def test_evidence_is_imported_by_hash_or_the_step_fails(world: World, tmp_path: Path) -> None:
    from ir_toolkit.agents.envelope import EvidenceRef, sha256_hex
    from ir_toolkit.home import case_dir

    journal = MemoryJournal()
    d = _dispatcher(world, journal, app=make_app("t1", BrokerSettings("memory://")))
    rel = "evidence/t1/t1-h0/c1/bundle.tar"
    (world.drop / "CASE-1" / rel).parent.mkdir(parents=True)
    (world.drop / "CASE-1" / rel).write_bytes(b"bundle")
    good = EvidenceRef(rel, sha256_hex(b"bundle"), 6)

    def result(seq: int, prev: str, ref: EvidenceRef, sid: str) -> dict[str, Any]:
        return AgentMessage(kind="result", agent_id=world.agent_key.name, agent_seq=seq, prev_agent_hash=prev,
                            tenant="t1", step_id=sid, attempt=1, sent_at=1, host="t1-h0", item="i",
                            outcome={"status": "ok"}, evidence=(ref,)).sign(world.agent_key)

    from ir_toolkit.agents.envelope import message_hash

    first = result(1, "0" * 64, good, "d" * 64)
    assert d.handle("t1", first) == "recorded"
    assert (case_dir("CASE-1") / rel).read_bytes() == b"bundle"
    assert d._outcomes["d" * 64]["status"] == "ok"
    lying = result(2, message_hash(first), EvidenceRef(rel, sha256_hex(b"other"), 6), "e" * 64)
    d.handle("t1", lying)
    assert d._outcomes["e" * 64]["status"] == "failed" and "does not match" in d._outcomes["e" * 64]["error"]
    escape = result(3, "0" * 64, EvidenceRef("evidence/t2/t2-h0/x", good.sha256, 6), "f" * 64)
    d.handle("t1", escape)
    assert "outside" in d._outcomes["f" * 64]["error"]


# --------------------------------------------------------------------------- through celery's memory broker


def test_memory_broker_end_to_end_with_a_celery_worker(world: World, tmp_path: Path) -> None:
    from celery.contrib.testing.worker import start_worker

    from ir_toolkit.agents.worker import build_app

    agent_store = AgentStore(tmp_path / "agent2" / "store.sqlite", world.agent_key.name)
    cfg = AgentConfig(tenant="t1", signer=world.agent_key, controller=[world.controller.verifier()],
                      inventory=world.inventory, store=agent_store, publish=lambda doc: None, drop=world.drop,
                      pool_factory=lambda inv, case: FakePool(inv, case), diary=False)
    app, _agent = build_app(cfg, BrokerSettings("memory://"))
    journal = MemoryJournal()
    d = _dispatcher(world, journal, app=make_app("t1", BrokerSettings("memory://"))).start()
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, queues=[steps_queue("t1")],
                          shutdown_timeout=10):
            out: dict[str, Any] = {}
            threads = [threading.Thread(target=lambda h=h: out.__setitem__(h, d.run_step(
                Item(h), {"label": "go"}, step_timeout=20, wait=20, wave=1, approvals=(1, 1), gate="")))
                for h in ("t1-h0", "t1-h1")]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            # a tampered envelope put on the queue by someone without the controller's key
            bad = d.envelope(Item("t1-h0", idx=5), {"label": "x"}, step_timeout=5, wait=5, wave=1,
                             approvals=(1, 1), gate="").sign(world.controller)
            app.send_task("irkit.agent.step", args=[{**bad, "params": {"label": "evil"}}], queue=steps_queue("t1"))
            deadline = time.time() + 20
            while time.time() < deadline and not journal.of("agent.refused"):
                time.sleep(0.2)
    finally:
        d.close()
    assert out["t1-h0"]["status"] == "ok" and out["t1-h1"]["status"] == "ok"
    assert sorted(r["host"] for r in journal.of("agent.result")) == ["t1-h0", "t1-h1"]
    (refused,) = journal.of("agent.refused")
    assert refused["params"]["code"] == "bad_signature" and refused["outcome"] == "refused"
    assert sorted(AStep.applied) == ["t1-h0", "t1-h1"]


def test_key_prefix_and_queue_names_are_per_tenant() -> None:
    assert key_prefix("t1") == "irkit:t1:" and steps_queue("t1") == "irkit.t1.steps"
    assert results_queue("t1") == "irkit.t1.results"
    app = make_app("t1", BrokerSettings("redis://127.0.0.1:6379/0"), longest_step_s=600)
    conf = app.conf
    assert conf.broker_transport_options["global_keyprefix"] == "irkit:t1:"
    assert conf.broker_transport_options["visibility_timeout"] > 600 and conf.task_time_limit > 600
    assert conf.accept_content == ["json"] and conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1 and not conf.worker_enable_remote_control
    with pytest.raises(ValueError):
        make_app("T1/../x", BrokerSettings("memory://"))
    with pytest.raises(ValueError, match="login"):
        make_app("t1", BrokerSettings("redis://u:p@127.0.0.1/0", username="u", password="p"))


def test_inventory_agent_settings_refuse_secrets_and_plaintext(tmp_path: Path) -> None:
    from ir_toolkit.errors import InputError

    key = Signer.generate("irkit-agent-t1").verifier_key()
    load_inventory(_inventory(tmp_path, key, "/drop", broker="rediss://198.18.0.9:6380/0"))
    for broker, words in (("rediss://agent:secret@198.18.0.9/0", "login"),
                          ("redis://198.18.0.9:6379/0", "plaintext"), ("http://x", "rediss")):
        with pytest.raises(InputError, match=words):
            load_inventory(_inventory(tmp_path, key, "/drop", broker=broker))


def test_files_of_an_earlier_killed_attempt_travel_with_the_result(world: World) -> None:
    """An attempt that escrowed a secret and died: the next attempt's result still references the file."""
    from ir_toolkit.home import case_dir

    escrowed = case_dir("CASE-1", create=True) / "escrow" / "t1" / "t1-h0" / "root.jsonl"
    escrowed.parent.mkdir(parents=True)
    escrowed.write_text('{"type": "secret"}\n')
    world.agent.handle(world.envelope().sign(world.controller))
    result = world.messages()[-1]
    assert [e.path for e in result.evidence] == ["escrow/t1/t1-h0/root.jsonl"]
    assert (world.drop / "CASE-1" / "escrow/t1/t1-h0/root.jsonl").read_text() == '{"type": "secret"}\n'


def test_offline_runner_blocks_a_hosts_later_steps_after_a_refusal(world: World) -> None:
    from ir_toolkit.agents.offline import run_offline, steps_document

    first = world.envelope().sign(world.controller)
    later = world.envelope(item="contain/1/t1-h0").sign(world.controller)
    other = world.envelope(host="t1-h1", item="contain/0/t1-h1").sign(world.controller)
    destroy = world.envelope(host="t1-h1", item="contain/2/t1-h1", destructive=True, gate="offline")
    doc = run_offline(world.agent, steps_document("t1", "CASE-1", PLAN, [
        {**first, "params": {"label": "evil"}}, later, other, destroy.sign(world.controller)]))
    msgs = [AgentMessage.open(m, [world.agent_key.verifier()])[0] for m in doc["messages"]]
    refusals = [(m.code, m.claims.get("host") or m.host) for m in msgs if m.kind == "refusal"]
    assert ("bad_signature", "t1-h0") in refusals and ("earlier_step", "t1-h0") in refusals
    # a destructive step offline needs an ok triage.collect of its host first
    assert ("gate", "t1-h1") in refusals
    assert AStep.applied == ["t1-h1"]


def test_a_resumed_controller_knows_the_answers_and_the_chain_from_the_signed_log(world: World) -> None:
    """Resume across agents: a new dispatcher on the same (real, signed) log answers finished steps without
    sending them again, drops old messages as seen, and continues each agent's chain where it was."""
    from ir_toolkit.audit.log import AuditLog

    def open_log() -> AuditLog:
        return AuditLog.open("CASE-1", origin="acme/ir/CASE-1", signer=world.controller)

    log = open_log()
    app = make_app("t1", BrokerSettings("memory://"))
    d = _dispatcher(world, log, app=app)  # type: ignore[arg-type]
    world.agent.handle(world.envelope().sign(world.controller))
    for doc in world.published:
        assert d.handle("t1", doc) == "recorded"
    log.close()

    log = open_log()
    try:
        again = _dispatcher(world, log, app=app)  # type: ignore[arg-type]
        sent: list[Any] = []
        again.send = lambda env: sent.append(env)  # type: ignore[method-assign]
        out = again.run_step(Item("t1-h0"), {"label": "go"}, step_timeout=5, wait=5, wave=1, approvals=(1, 1),
                             gate="")
        assert out["status"] == "ok" and sent == []  # answered from the log, not sent again
        assert again.handle("t1", world.published[-1]) == "duplicate"
        world.agent.handle(world.envelope(host="t1-h1", item="contain/0/t1-h1").sign(world.controller))
        assert [again.handle("t1", doc) for doc in world.published[2:]] == ["recorded", "recorded"]
        assert not [r for r in log.verified_records() if r["action"].startswith("agent.chain")]
        # the next attempt of an unanswered step is numbered after the attempts already in the log
        env = again.envelope(Item("t1-h1", idx=9), {"label": "go"}, step_timeout=5, wait=5, wave=1,
                             approvals=(1, 1), gate="")
        assert env.attempt == 1
    finally:
        log.close()


def test_a_redelivery_while_the_step_runs_waits_for_it(world: World) -> None:
    """A step longer than the visibility timeout is delivered again while it runs: the second delivery is
    not acked early (a kill then would lose the step); it waits, then answers with the stored result."""
    signed = world.envelope(params={"label": "slow"}).sign(world.controller)
    first = threading.Thread(target=world.agent.handle, args=(signed,))
    first.start()
    time.sleep(0.3)
    assert world.agent.handle(signed) == "republished"
    first.join(10)
    assert AStep.applied == ["t1-h0"]
    assert [m.kind for m in world.messages()] == ["intent", "result", "result"]


def test_wire_params_are_exact_and_never_carry_a_secret() -> None:
    from ir_toolkit.actions.ansible import AnsibleParams
    from ir_toolkit.errors import InputError
    from ir_toolkit.playbook.plan import plan_params, wire_params
    from ir_toolkit.redaction import forget_secrets, register_secret

    params = AnsibleParams(playbook="x.yml", secret_vars={"vault": "env:VAULT_PASS"}, extra_vars={"n": 1.5})
    assert plan_params(params)["secret_vars"] == "[REDACTED]"  # fine for showing a plan, wrong on the wire
    wired = wire_params(params)
    assert wired["secret_vars"] == {"vault": "env:VAULT_PASS"} and wired["extra_vars"] == {"n": "1.5"}
    assert AnsibleParams.model_validate(wired).secret_vars == {"vault": "env:VAULT_PASS"}
    register_secret("hunter2-very-secret")
    try:
        with pytest.raises(InputError, match="secret"):
            wire_params(AnsibleParams(playbook="x.yml", extra_vars={"pw": "hunter2-very-secret"}))
    finally:
        forget_secrets()


# --------------------------------------------------------------------------- co-recipients (the controller's keys)


def _raw_b64(public: Any) -> str:
    import base64

    from cryptography.hazmat.primitives import serialization

    return base64.b64encode(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


def test_envelopes_carry_the_controllers_public_keys_signed(world: World) -> None:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    ctl_escrow, ctl_evidence = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    recipients = {"escrow": [_raw_b64(ctl_escrow.public_key())], "evidence": [_raw_b64(ctl_evidence.public_key())]}
    env = world.envelope(recipients=recipients)
    signed = env.sign(world.controller)
    assert StepEnvelope.open(signed, [world.controller.verifier()]).recipients == recipients
    # an intruder who swaps in their own key (to receive every secret the agent escrows) breaks the signature
    attacker = _raw_b64(X25519PrivateKey.generate().public_key())
    with pytest.raises(BadSignature):
        StepEnvelope.open({**signed, "recipients": {**recipients, "escrow": [attacker]}},
                          [world.controller.verifier()])
    for bad, why in (({"escrow": ["AAAA"]}, "32 bytes"), ({"escrow": ["not base64!"]}, "base64"),
                     ({"ssh": [attacker]}, "escrow/evidence"), ({"escrow": [attacker] * 9}, "at most"),
                     ({"escrow": attacker}, "at most")):
        with pytest.raises(MalformedEnvelope, match=why):
            StepEnvelope.open(_resign({**signed, "recipients": bad}, world.controller), [world.controller.verifier()])


def test_an_agent_escrows_and_seals_to_its_own_and_the_controllers_keys(signer: Any, tmp_path: Path) -> None:
    """What an agent escrows is readable by the controller with the controller's own escrow key (and by
    the agent with its own); the agent never holds the controller's private key."""
    from ir_toolkit.agents.agent import _step_keys
    from ir_toolkit.secrets import escrow as esc
    from ir_toolkit.secrets import keystore
    from ir_toolkit.secrets.keyprovider import KeyProvider
    from tests.conftest import TEST_PASSPHRASE

    controller_dir = keystore.keys_dir()  # `signer` made the controller's keys here
    agent_dir = tmp_path / "agent-keys"
    keystore.init_keys("agent passphrase", name="t1-agent", directory=agent_dir)
    from ir_toolkit.agents.dispatch import controller_recipients

    sent = controller_recipients(controller_dir)
    assert set(sent) == {"escrow", "evidence"}
    (tmp_path / "w").mkdir()
    w = World(tmp_path / "w")
    env = w.envelope(recipients=sent)
    keys = _step_keys(KeyProvider("agent passphrase", directory=agent_dir), env)
    kids = [esc.key_id(k) for k in keys.escrow_recipients()]
    assert kids == [esc.key_id(keystore.escrow_public_key(agent_dir)),
                    esc.key_id(keystore.escrow_public_key(controller_dir))]
    assert [esc.key_id(k) for k in keys.evidence_recipients()] == [
        esc.key_id(keystore.evidence_public_key(agent_dir)), esc.key_id(keystore.evidence_public_key(controller_dir))]
    envelope = esc.seal(b"new password", keys.escrow_recipients(), b"aad")
    ctl_private = keystore.load_escrow_private_key(TEST_PASSPHRASE, path=controller_dir / keystore.ESCROW_KEY)
    agent_private = keys.escrow_private_key()  # the agent's own, from its own keystore
    assert esc.open_sealed(envelope, ctl_private, b"aad") == esc.open_sealed(envelope, agent_private, b"aad") \
        == b"new password"
    # the agent's own key listed again as a co-recipient is not wrapped twice
    same = KeyProvider(None, directory=agent_dir).with_co_recipients(escrow=[keystore.escrow_public_key(agent_dir)])
    assert len(same.escrow_recipients()) == 1
    # without co-recipients (an envelope from an older controller) the agent's keys are used as before
    assert _step_keys(keys, w.envelope()) is keys
