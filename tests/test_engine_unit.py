"""The engine's decisions without root or hosts: a FakeConnection pool, an in-memory journal, test actions.

Run unprivileged (README, Development):
    runuser -u nobody -- .venv/bin/python -m pytest -m "not lab" -k engine -p no:cacheprovider --basetemp=/tmp/irkit-nobody-pytest
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from ir_toolkit.actions import base as actions_base
from ir_toolkit.actions.base import Action, ActionContext, ActionFailed, Outcome, Params, register
from ir_toolkit.facts.base import Query
from ir_toolkit.inventory import load_inventory
from ir_toolkit.playbook.engine import NOT_INSPECTED, Engine, EngineOptions, build_plan
from ir_toolkit.playbook.schema import load_playbook
from ir_toolkit.transports.base import TIMED_OUT, TRANSIENT, CommandResult, TransportError
from tests.fakes import FakeConnection, FakePool, MemoryJournal

# --------------------------------------------------------------------------- test actions


class StepParams(Params):
    label: str = "x"
    verify_ok: bool = True


class _Step(Action):
    Params = StepParams

    def plan(self, ctx: ActionContext, params: StepParams) -> Outcome:
        return Outcome(True, f"would {params.label}")

    def apply(self, ctx: ActionContext, params: StepParams) -> Outcome:
        result = ctx.run(f"{self.name} {params.label}")
        if not result.ok:
            raise ActionFailed(f"{params.label} exited {result.exit_status}")
        return Outcome(True, f"did {params.label}", {"host": ctx.host.name})

    def verify(self, ctx: ActionContext, params: StepParams) -> Outcome:
        return Outcome(False, "checked", ok=params.verify_ok)


class TStep(_Step):
    name = "t.step"


class TDestroy(_Step):
    name = "t.destroy"
    destructive = True


class TOnce(_Step):
    name = "t.once"
    retry_safe = False


class TWritesInPlan(_Step):
    name = "t.plan_writes"

    def plan(self, ctx: ActionContext, params: StepParams) -> Outcome:
        ctx.record("sneaky.change", {"what": "a plan must not write"})
        return Outcome(True, "wrote during planning")


class TLinux(_Step):
    name = "t.os"
    os = ("linux",)
    connection_kinds = ("ssh",)

    def plan(self, ctx: ActionContext, params: StepParams) -> Outcome:
        return Outcome(True, "linux variant")


class TWindows(_Step):
    name = "t.os"
    os = ("windows",)
    connection_kinds = ("winrm",)

    def plan(self, ctx: ActionContext, params: StepParams) -> Outcome:
        return Outcome(True, "windows variant")


class TFacts(_Step):
    """Plans from two facts, one of them named in ``plan_facts`` (prefetched), one read only by ``plan``."""

    name = "t.facts"

    def plan_facts(self, ctx: ActionContext, params: StepParams) -> list[Any]:
        return [Query("t.a", "echo fact-a", lambda out: out.text), Query("t.b", "echo fact-b", lambda out: out.text)]

    def plan(self, ctx: ActionContext, params: StepParams) -> Outcome:
        a = ctx.fact(Query("t.a", "echo fact-a", lambda out: out.text))
        c = ctx.fact(Query("t.c", "echo fact-c", lambda out: out.text))
        return Outcome(True, f"{params.label}: {a.strip()} {c.strip()}")


TEST_ACTIONS = (TStep, TDestroy, TOnce, TWritesInPlan, TLinux, TWindows, TFacts)


@pytest.fixture(autouse=True)
def test_actions():
    for cls in TEST_ACTIONS:
        register(cls)
    yield
    for cls in TEST_ACTIONS:
        variants = actions_base._REGISTRY.get(cls.name, [])
        if cls in variants:
            variants.remove(cls)
        if not variants:
            actions_base._REGISTRY.pop(cls.name, None)


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("IRKIT_HOME", str(tmp_path / "home"))
    return tmp_path


# --------------------------------------------------------------------------- a world of fake hosts


def inventory_file(tmp: Path, tenants: dict[str, list[dict[str, Any]]], approvals: dict[str, int] | None = None) -> Path:
    data = {
        "version": 1,
        "msp": {"name": "acme", "shared_credentials": {"accounts": [{"user": "mspadmin"}]},
                "responder": {"key": "file:/nonexistent/responder", "controller_address": "198.18.0.1"}},
        "tenants": [{"name": t, "approvals_required": (approvals or {}).get(t, 1),
                     "hosts": [{"address": f"198.18.{i + 1}.{j + 10}", **h} for j, h in enumerate(hosts)]}
                    for i, (t, hosts) in enumerate(tenants.items())],
    }
    path = tmp / "inventory.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def playbook_file(tmp: Path, phases: list[dict[str, Any]], defaults: dict[str, Any] | None = None) -> Path:
    path = tmp / "playbook.yml"
    path.write_text(yaml.safe_dump({"version": 1, "name": "unit", "defaults": defaults or {"retries": 0},
                                    "phases": phases}, sort_keys=False))
    return path


def hosts(tenant: str, n: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"name": f"{tenant}-h{i}", **extra} for i in range(n)]


class Tracker:
    """Records who ran what, when, and how many ran at once (overall and per key)."""

    def __init__(self, pause: float = 0.0) -> None:
        self.lock = threading.Lock()
        self.log: list[tuple[str, str]] = []
        self.active: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.pause = pause

    def __call__(self, conn: FakeConnection, command: str, stdin: bytes | None) -> CommandResult:
        host = conn.endpoint.name
        keys = ["all", host.split("-")[0]]
        with self.lock:
            self.log.append((host, command))
            for k in keys:
                self.active[k] += 1
                self.peak[k] = max(self.peak[k], self.active[k])
        try:
            if self.pause:
                time.sleep(self.pause)
            return CommandResult(0, b"", b"")
        finally:
            with self.lock:
                for k in keys:
                    self.active[k] -= 1


def run(tmp: Path, inv: Path, pb: Path, script: Any = None, *, options: EngineOptions | None = None,
        journal: MemoryJournal | None = None, unreachable: set[str] | None = None,
        engine_hook: Any = None) -> tuple[Any, MemoryJournal, Any, FakePool]:
    inventory = load_inventory(inv)
    loaded = load_playbook(pb)
    plan_pool = FakePool(inventory, "UNIT", script or Tracker(), unreachable=unreachable)
    plan = build_plan(loaded, inventory, str(inv), "UNIT", plan_pool)
    pool = FakePool(inventory, "UNIT", script or Tracker(), unreachable=unreachable)
    journal = journal if journal is not None else MemoryJournal()
    engine = Engine(plan, loaded, inventory, journal, pool, options or EngineOptions(forks=20))
    if engine_hook:
        engine_hook(engine)
    return engine.run(), journal, plan, pool


def statuses(summary: Any) -> dict[str, str]:
    return {h: r.status for h, r in summary.hosts.items()}


# --------------------------------------------------------------------------- tests


def test_engine_runs_phases_as_barriers_over_one_connection_per_host(home: Path) -> None:
    inv = inventory_file(home, {"globex": hosts("globex", 3), "initech": hosts("initech", 2)})
    pb = playbook_file(home, [
        {"name": "one", "steps": [{"name": "a", "action": "t.step", "params": {"label": "a"}}]},
        {"name": "two", "steps": [{"name": "b", "action": "t.step", "params": {"label": "b"}},
                                  {"name": "c", "action": "t.step", "params": {"label": "c"}}]},
    ])
    tracker = Tracker()
    summary, journal, plan, pool = run(home, inv, pb, tracker)
    assert summary.all_ok and set(statuses(summary).values()) == {"ok"}
    labels = [cmd.split()[1] for _, cmd in tracker.log]
    assert labels.index("b") > max(i for i, lab in enumerate(labels) if lab == "a")  # phase barrier
    per_host = {h: [c.split()[1] for hh, c in tracker.log if hh == h] for h in statuses(summary)}
    assert all(seq == ["a", "b", "c"] for seq in per_host.values())
    assert len(pool.opened) == 5  # one connection per host, reused across steps and phases
    assert len(journal.of("step.done")) == 15 and journal.of("run.end")[0]["outcome"] == "ok"
    assert journal.checkpoints == 1


def test_engine_canary_tenant_runs_alone_first(home: Path) -> None:
    inv = inventory_file(home, {"globex": hosts("globex", 3), "initech": hosts("initech", 3)})
    pb = playbook_file(home, [{"name": "p", "wave": {"canary_tenant": "initech"},
                               "steps": [{"name": "a", "action": "t.step"}]}])
    tracker = Tracker(pause=0.05)
    summary, journal, _, _ = run(home, inv, pb, tracker)
    assert summary.all_ok
    order = [h.split("-")[0] for h, _ in tracker.log]
    assert order[:3] == ["initech"] * 3 and order[3:] == ["globex"] * 3
    waves = [r["params"].get("wave") for r in journal.of("step.start")]
    if any(w is not None for w in waves):  # the engine records each step's wave
        assert len(set(waves)) == 2


def test_engine_wave_size_bounds_hosts_at_once(home: Path) -> None:
    inv = inventory_file(home, {"globex": hosts("globex", 6)})
    pb = playbook_file(home, [{"name": "p", "wave": {"size": 2}, "steps": [{"name": "a", "action": "t.step"}]}])
    tracker = Tracker(pause=0.05)
    summary, _, _, _ = run(home, inv, pb, tracker)
    assert summary.all_ok and tracker.peak["all"] == 2


def test_engine_max_fail_percentage_stops_the_run_and_holds_later_waves(home: Path) -> None:
    inv = inventory_file(home, {"globex": hosts("globex", 6)})
    pb = playbook_file(home, [{"name": "p", "wave": {"size": 2}, "max_fail_percentage": 40,
                               "steps": [{"name": "a", "action": "t.step"}]},
                              {"name": "later", "steps": [{"name": "b", "action": "t.step"}]}])

    def script(conn: FakeConnection, command: str, stdin: bytes | None) -> CommandResult:
        return CommandResult(1 if conn.endpoint.name == "globex-h0" else 0, b"", b"")

    summary, journal, plan, _ = run(home, inv, pb, script)
    st = statuses(summary)
    assert st["globex-h0"] == "failed" and st["globex-h1"] == "ok"  # first wave: 1 of 2 failed > 40 %
    assert all(st[f"globex-h{i}"] == "skipped" for i in range(2, 6))
    assert summary.incomplete and "max_fail_percentage 40" in summary.reason
    assert journal.of("run.stopped") and not [r for r in journal.of("step.start") if r["host"] >= "globex-h2"]
    # held, not skipped: the later waves' steps stay pending for `irkit resume`
    assert not [r for r in journal.of("step.skipped") if r["host"] in ("globex-h2", "globex-h5")]


def test_engine_tenant_max_fail_holds_only_that_tenant(home: Path) -> None:
    inv = inventory_file(home, {"globex": hosts("globex", 4), "initech": hosts("initech", 4)})
    pb = playbook_file(home, [{"name": "p", "wave": {"size": 4}, "tenant_max_fail_percentage": 25,
                               "steps": [{"name": "a", "action": "t.step"}]}])
    failing = {"globex-h0", "globex-h1"}

    def script(conn: FakeConnection, command: str, stdin: bytes | None) -> CommandResult:
        return CommandResult(1 if conn.endpoint.name in failing else 0, b"", b"")

    summary, journal, _, _ = run(home, inv, pb, script)
    st = statuses(summary)
    # wave 1 = globex h0-h3: two fail (50 % > 25 %) -> globex stopped; initech (wave 2) runs on
    assert st["globex-h0"] == st["globex-h1"] == "failed"
    assert all(st[f"initech-h{i}"] == "ok" for i in range(4))
    stopped = journal.of("tenant.stopped")
    assert [r["tenant"] for r in stopped] == ["globex"]


def test_engine_tenant_stop_holds_the_tenants_later_waves(home: Path) -> None:
    inv = inventory_file(home, {"globex": hosts("globex", 4), "initech": hosts("initech", 2)})
    pb = playbook_file(home, [{"name": "p", "wave": {"size": 2}, "tenant_max_fail_percentage": 10,
                               "steps": [{"name": "a", "action": "t.step"}]}])

    def script(conn: FakeConnection, command: str, stdin: bytes | None) -> CommandResult:
        return CommandResult(1 if conn.endpoint.name == "globex-h0" else 0, b"", b"")

    summary, journal, _, _ = run(home, inv, pb, script)
    st = statuses(summary)
    assert st["globex-h0"] == "failed"
    assert st["globex-h2"] == st["globex-h3"] == "skipped"  # later globex waves held
    assert "tenant globex" in summary.hosts["globex-h2"].message
    assert st["initech-h0"] == st["initech-h1"] == "ok"
    assert summary.incomplete


def test_engine_max_concurrent_limits_a_group_per_tenant(home: Path) -> None:
    inv = inventory_file(home, {"globex": hosts("globex", 4, groups=["dc"]), "initech": hosts("initech", 4, groups=["dc"])})
    pb = playbook_file(home, [{"name": "p", "max_concurrent": {"dc": 1}, "steps": [{"name": "a", "action": "t.step"}]}])
    tracker = Tracker(pause=0.05)
    summary, _, _, _ = run(home, inv, pb, tracker)
    assert summary.all_ok
    assert tracker.peak["globex"] == 1 and tracker.peak["initech"] == 1
    assert tracker.peak["all"] == 2  # one per tenant, tenants in parallel


def test_engine_approval_required_holds_the_host_until_approved(home: Path) -> None:
    inv = inventory_file(home, {"globex": hosts("globex", 2)}, approvals={"globex": 2})
    pb = playbook_file(home, [{"name": "p", "steps": [
        {"name": "a", "action": "t.step", "params": {"label": "a"}},
        {"name": "wipe", "action": "t.step", "params": {"label": "w"}, "requires_approval": True}]}])
    tracker = Tracker()
    summary, journal, _, _ = run(home, inv, pb, tracker, options=EngineOptions(approvals={"globex": 1}))
    assert statuses(summary) == {"globex-h0": "skipped", "globex-h1": "skipped"}
    assert summary.incomplete and "await approvals" in summary.reason
    refused = journal.of("step.refused")
    assert len(refused) == 2 and "1 of 2 approvals" in refused[0]["params"]["reason"]
    assert not [c for _, c in tracker.log if c.endswith(" w")]
    # with both approvals the same plan runs the step
    tracker2 = Tracker()
    summary2, _, _, _ = run(home, inv, pb, tracker2, options=EngineOptions(approvals={"globex": 2}))
    assert summary2.all_ok and [c for _, c in tracker2.log if c.endswith(" w")]


def test_engine_evidence_gate_refuses_destructive_steps_without_evidence(home: Path) -> None:
    inv = inventory_file(home, {"globex": hosts("globex", 2)})
    pb = playbook_file(home, [{"name": "p", "steps": [{"name": "d", "action": "t.destroy"}]}])
    tracker = Tracker()
    gate = lambda tenant, host, destroys: host == "globex-h1"  # noqa: E731 - only h1 has verified evidence
    summary, journal, _, _ = run(home, inv, pb, tracker, options=EngineOptions(evidence_gate=gate))
    st = statuses(summary)
    assert st == {"globex-h0": "failed", "globex-h1": "ok"}
    assert "no verified evidence for globex-h0" in summary.hosts["globex-h0"].message
    assert [r["host"] for r in journal.of("step.refused")] == ["globex-h0"]
    assert [h for h, _ in tracker.log] == ["globex-h1"]  # nothing ran on the refused host


def test_engine_evidence_override_is_audited(home: Path) -> None:
    inv = inventory_file(home, {"globex": hosts("globex", 1)})
    pb = playbook_file(home, [{"name": "p", "steps": [
        {"name": "d", "action": "t.destroy", "evidence_override": "honeypot, no evidence value"}]}])
    summary, journal, _, _ = run(home, inv, pb, options=EngineOptions(evidence_gate=lambda t, h, d: False))
    assert summary.all_ok
    override = journal.of("gate.override")
    assert len(override) == 1 and override[0]["params"]["reason"] == "honeypot, no evidence value"
    seqs = {r["action"]: r["seq"] for r in journal.records}
    assert seqs["gate.override"] < seqs["step.start"] < seqs["step.done"]


def test_engine_gate_ignores_non_destructive_steps(home: Path) -> None:
    inv = inventory_file(home, {"globex": hosts("globex", 1)})
    pb = playbook_file(home, [{"name": "p", "steps": [{"name": "a", "action": "t.step"}]}])
    summary, journal, _, _ = run(home, inv, pb, options=EngineOptions(evidence_gate=lambda t, h, d: False))
    assert summary.all_ok and not journal.of("step.refused")


def test_engine_retries_transient_failures_then_succeeds(home: Path) -> None:
    inv = inventory_file(home, {"globex": hosts("globex", 1)})
    pb = playbook_file(home, [{"name": "p", "steps": [{"name": "a", "action": "t.step", "retries": 2}]}])
    calls = []

    def script(conn: FakeConnection, command: str, stdin: bytes | None) -> CommandResult:
        calls.append(command)
        if len(calls) < 3:
            conn.close()
            raise TransportError(TRANSIENT, "connection reset")
        return CommandResult(0, b"", b"")

    summary, journal, _, pool = run(home, inv, pb, script)
    assert summary.all_ok and len(calls) == 3
    assert journal.of("step.done")[0]["params"]["attempts"] == 3
    assert len(pool.opened) == 3  # the dropped connection is reopened for each retry
    assert len(journal.of("step.start")) == 1  # one intent, one result


def test_engine_gives_up_after_the_step_retries(home: Path) -> None:
    inv = inventory_file(home, {"globex": hosts("globex", 1)})
    pb = playbook_file(home, [{"name": "p", "steps": [{"name": "a", "action": "t.step", "retries": 1},
                                                      {"name": "b", "action": "t.step"}]}])

    def script(conn: FakeConnection, command: str, stdin: bytes | None) -> CommandResult:
        raise TransportError(TRANSIENT, "connection reset")

    summary, journal, _, _ = run(home, inv, pb, script)
    assert statuses(summary) == {"globex-h0": "failed"}
    done = journal.of("step.done")
    assert done[0]["params"]["attempts"] == 2 and done[0]["outcome"] == "failed"
    assert journal.of("step.skipped")[0]["params"]["reason"].startswith("earlier step")


def test_engine_never_retries_a_step_that_is_not_retry_safe(home: Path) -> None:
    inv = inventory_file(home, {"globex": hosts("globex", 1)})
    pb = playbook_file(home, [{"name": "p", "steps": [{"name": "once", "action": "t.once", "retries": 3}]}])
    calls = []

    def script(conn: FakeConnection, command: str, stdin: bytes | None) -> CommandResult:
        calls.append(command)
        raise TransportError(TRANSIENT, "connection reset")

    summary, journal, _, _ = run(home, inv, pb, script)
    assert len(calls) == 1 and statuses(summary) == {"globex-h0": "failed"}
    assert journal.of("step.done")[0]["params"]["attempts"] == 1


def test_engine_verify_failure_fails_the_step(home: Path) -> None:
    inv = inventory_file(home, {"globex": hosts("globex", 1)})
    pb = playbook_file(home, [{"name": "p", "steps": [{"name": "a", "action": "t.step",
                                                       "params": {"verify_ok": False}}]}])
    summary, journal, _, _ = run(home, inv, pb)
    assert statuses(summary) == {"globex-h0": "failed"}
    assert "verify failed" in summary.hosts["globex-h0"].message


def test_engine_unreachable_host_fails_alone(home: Path) -> None:
    inv = inventory_file(home, {"globex": hosts("globex", 3)})
    pb = playbook_file(home, [{"name": "p", "steps": [{"name": "a", "action": "t.step"}]}])
    summary, journal, plan, _ = run(home, inv, pb, unreachable={"globex-h1"})
    assert statuses(summary) == {"globex-h0": "ok", "globex-h1": "failed", "globex-h2": "ok"}
    unknown = [i for i in plan.items if i.host == "globex-h1"]
    assert unknown[0].change["changed"] is None and unknown[0].change["error"] == "unreachable"


def test_engine_cancel_stops_between_steps_and_resume_finishes(home: Path) -> None:
    inv = inventory_file(home, {"globex": hosts("globex", 1)})
    pb = playbook_file(home, [{"name": "p", "steps": [{"name": f"s{i}", "action": "t.step",
                                                       "params": {"label": f"s{i}"}} for i in range(4)]}])
    engines: list[Engine] = []
    ran: list[str] = []

    def script(conn: FakeConnection, command: str, stdin: bytes | None) -> CommandResult:
        ran.append(command.split()[1])
        if command.endswith("s1"):
            engines[0].cancel()  # Ctrl-C while s1 runs: s1 finishes and is recorded, s2/s3 stay pending
        return CommandResult(0, b"", b"")

    summary, journal, plan, _ = run(home, inv, pb, script, engine_hook=engines.append)
    assert ran == ["s0", "s1"] and summary.incomplete and summary.reason == "interrupted"
    assert journal.of("run.end")[0]["params"]["status"] == "incomplete"
    finished = {r["params"]["item"] for r in journal.of("step.done") if r["outcome"] == "ok"}
    assert len(finished) == 2
    # resume: the finished items are passed in; only the rest run
    ran.clear()
    inventory = load_inventory(inv)
    engine = Engine(plan, load_playbook(pb), inventory, MemoryJournal(), FakePool(inventory, "UNIT", script),
                    EngineOptions(finished=finished))
    engines[0] = engine
    assert engine.run().all_ok and ran == ["s2", "s3"]


def test_engine_disk_full_stops_the_run_and_raises(home: Path) -> None:
    inv = inventory_file(home, {"globex": hosts("globex", 4)})
    pb = playbook_file(home, [{"name": "p", "wave": {"size": 1}, "steps": [{"name": "a", "action": "t.step"}]}])
    journal = MemoryJournal(fail_after=4)  # run.start + h0's start/done + h1's start; then ENOSPC
    with pytest.raises(OSError) as exc:
        run(home, inv, pb, journal=journal)
    assert exc.value.errno == 28
    assert not journal.of("run.end")  # nothing more could be written
    assert [r["host"] for r in journal.of("step.done")] == ["globex-h0"]


def test_engine_step_timeout_marks_a_hung_host_timed_out(home: Path) -> None:
    inv = inventory_file(home, {"globex": hosts("globex", 2)})
    pb = playbook_file(home, [{"name": "p", "steps": [{"name": "a", "action": "t.step", "timeout": 0.5}]}])

    def script(conn: FakeConnection, command: str, stdin: bytes | None) -> CommandResult:
        if conn.endpoint.name == "globex-h0":
            conn.hang()
        return CommandResult(0, b"", b"")

    started = time.monotonic()
    summary, journal, _, _ = run(home, inv, pb, script)
    assert time.monotonic() - started < 5
    assert statuses(summary) == {"globex-h0": "timed_out", "globex-h1": "ok"}
    assert journal.of("step.done", "globex-h0")[0]["outcome"] == TIMED_OUT


def test_engine_host_budget_caps_every_step(home: Path) -> None:
    inv = inventory_file(home, {"globex": hosts("globex", 1)})
    pb = playbook_file(home, [{"name": "p", "steps": [{"name": f"s{i}", "action": "t.step", "timeout": 30,
                                                       "params": {"label": f"s{i}"}} for i in range(3)]}],
                       defaults={"retries": 0, "host_timeout": 1})

    def script(conn: FakeConnection, command: str, stdin: bytes | None) -> CommandResult:
        if command.endswith("s1"):
            conn.hang()  # would take the step's 30 s; the host has 1 s in all
        return CommandResult(0, b"", b"")

    started = time.monotonic()
    summary, journal, _, _ = run(home, inv, pb, script)
    assert time.monotonic() - started < 5
    assert statuses(summary) == {"globex-h0": "timed_out"}


def test_engine_plan_changes_nothing_and_a_writing_plan_is_caught(home: Path) -> None:
    inv = inventory_file(home, {"globex": hosts("globex", 2)})
    pb = playbook_file(home, [{"name": "p", "steps": [{"name": "a", "action": "t.plan_writes"},
                                                      {"name": "b", "action": "t.step"}]}])
    inventory = load_inventory(inv)
    tracker = Tracker()
    plan = build_plan(load_playbook(pb), inventory, str(inv), "UNIT", FakePool(inventory, "UNIT", tracker))
    sneaky = [i for i in plan.items if i.action == "t.plan_writes"]
    assert all(i.change["error"] == "plan_wrote" and i.change["changed"] is None for i in sneaky)
    assert all(i.change["changed"] is True for i in plan.items if i.action == "t.step")
    assert tracker.log == []  # planning ran no command through these actions
    with pytest.raises(Exception):
        plan.items[0].change = {}  # plan items are frozen


def test_engine_resolves_one_step_name_per_os_and_transport(home: Path) -> None:
    inv = inventory_file(home, {"globex": [{"name": "lin1"}, {"name": "win1", "os": "windows"}]})
    pb = playbook_file(home, [{"name": "p", "steps": [{"name": "a", "action": "t.os"}]}])
    inventory = load_inventory(inv)
    plan = build_plan(load_playbook(pb), inventory, str(inv), "UNIT", FakePool(inventory, "UNIT"))
    assert {i.host: i.change["summary"] for i in plan.items} == {"lin1": "linux variant", "win1": "windows variant"}
    summary, journal, _, _ = run(home, inv, pb)
    assert summary.all_ok and len(journal.of("step.done")) == 2


def test_engine_outcomes_are_frozen() -> None:
    outcome = Outcome(True, "x")
    with pytest.raises(Exception):
        outcome.changed = False  # type: ignore[misc]


def test_engine_evidence_gate_is_on_by_default(home: Path) -> None:
    inv = inventory_file(home, {"globex": hosts("globex", 1)})
    pb = playbook_file(home, [{"name": "p", "steps": [{"name": "d", "action": "t.destroy"}]}])
    tracker = Tracker()
    summary, journal, _, _ = run(home, inv, pb, tracker, options=EngineOptions())  # no gate given
    assert statuses(summary) == {"globex-h0": "failed"} and tracker.log == []
    assert "no verified evidence" in journal.of("step.refused")[0]["params"]["reason"]


def test_engine_host_budget_spans_the_whole_run(home: Path) -> None:
    inv = inventory_file(home, {"globex": hosts("globex", 1)})
    pb = playbook_file(home, [{"name": f"p{i}", "steps": [{"name": "a", "action": "t.step",
                                                           "params": {"label": f"p{i}"}}]} for i in range(2)],
                       defaults={"retries": 0, "host_timeout": 1.0, "timeout": 30})

    def script(conn: FakeConnection, command: str, stdin: bytes | None) -> CommandResult:
        conn.work(0.7)  # each phase's step fits in 1 s, both together do not
        return CommandResult(0, b"", b"")

    summary, journal, _, _ = run(home, inv, pb, script)
    assert statuses(summary) == {"globex-h0": "timed_out"}
    done = journal.of("step.done")
    assert [r["outcome"] for r in done] == ["ok", "timed_out"]


def test_engine_a_host_waiting_for_a_worker_is_not_timed_out(home: Path) -> None:
    """The budget counts a host's own working time: a host queued behind others (forks) in a later phase
    is not charged for the wait, and the watchdog does not judge it by its previous phase's deadline
    (at 1,000 hosts, 198 hosts queued for the full triage were marked timed_out that way)."""
    inv = inventory_file(home, {"globex": hosts("globex", 4)})
    pb = playbook_file(home, [{"name": "one", "steps": [{"name": "a", "action": "t.step", "params": {"label": "a"}}]},
                              {"name": "two", "steps": [{"name": "b", "action": "t.step", "params": {"label": "b"}}]}],
                       defaults={"retries": 0, "host_timeout": 1.0, "timeout": 30})

    def script(conn: FakeConnection, command: str, stdin: bytes | None) -> CommandResult:
        if command.endswith(" b"):
            conn.work(0.6)  # within each host's own budget; the last host waits 1.8 s for its turn
        return CommandResult(0, b"", b"")

    def fast_watchdog(engine: Engine) -> None:
        engine.watchdog_grace = 0.2

    summary, journal, _, _ = run(home, inv, pb, script, options=EngineOptions(forks=1), engine_hook=fast_watchdog)
    assert statuses(summary) == {f"globex-h{i}": "ok" for i in range(4)}
    assert journal.of("host.timed_out") == []


def test_engine_wave_watchdog_closes_an_overrunning_host_and_moves_on(home: Path) -> None:
    inv = inventory_file(home, {"globex": hosts("globex", 2)})
    pb = playbook_file(home, [{"name": "one", "steps": [{"name": "a", "action": "t.step", "params": {"label": "a"}}]},
                              {"name": "two", "steps": [{"name": "b", "action": "t.step", "params": {"label": "b"}}]}],
                       defaults={"retries": 0, "host_timeout": 1.0, "timeout": 30})
    closed: list[bool] = []

    def script(conn: FakeConnection, command: str, stdin: bytes | None) -> CommandResult:
        if conn.endpoint.name == "globex-h0" and command.endswith(" a"):
            conn.wedge(3.0)  # ignores its deadline and the close
            closed.append(not conn.alive)
        return CommandResult(0, b"", b"")

    def fast_watchdog(engine: Engine) -> None:
        engine.watchdog_grace = 0.2

    started = time.monotonic()
    summary, journal, _, _ = run(home, inv, pb, script, engine_hook=fast_watchdog)
    elapsed = time.monotonic() - started
    assert elapsed < 2.8, elapsed  # the barrier did not wait for the wedged call (3 s)
    assert statuses(summary) == {"globex-h0": "timed_out", "globex-h1": "ok"}
    assert "watchdog closed its connection" in summary.hosts["globex-h0"].message
    assert [r["host"] for r in journal.of("host.timed_out")] == ["globex-h0"]
    assert [r["host"] for r in journal.of("step.done") if r["params"]["item"].startswith("two/")] == ["globex-h1"]
    time.sleep(3.5)
    assert closed == [True]  # its connection had been closed under it
    assert summary.hosts["globex-h0"].status == "timed_out"  # the late worker did not overwrite it


def _facts_script(conn: Any, command: str, stdin: bytes | None) -> CommandResult:
    """A host that answers the t.facts facts, alone or in one batch (run by the local /bin/sh)."""
    import subprocess

    proc = subprocess.run(["/bin/sh", "-c", command], capture_output=True, timeout=30)
    return CommandResult(proc.returncode, proc.stdout, proc.stderr)


def test_engine_plan_asks_each_fact_once_and_prefetches_in_one_command(home: Path) -> None:
    inv = inventory_file(home, {"globex": hosts("globex", 2)})
    # the same step twice (a verify phase) and another step reading the same facts with other params
    pb = playbook_file(home, [{"name": "p", "steps": [{"name": "a", "action": "t.facts"},
                                                      {"name": "b", "action": "t.facts", "params": {"label": "y"}}]},
                              {"name": "v", "steps": [{"name": "a", "action": "t.facts"}]}])
    inventory = load_inventory(inv)
    log: list[tuple[str, str]] = []

    def script(conn: Any, command: str, stdin: bytes | None) -> CommandResult:
        log.append((conn.endpoint.name, command))
        return _facts_script(conn, command, stdin)

    plan = build_plan(load_playbook(pb), inventory, str(inv), "UNIT", FakePool(inventory, "UNIT", script))
    assert {i.change["summary"] for i in plan.items if i.step == "a"} == {"x: fact-a fact-c"}
    assert {i.change["summary"] for i in plan.items if i.step == "b"} == {"y: fact-a fact-c"}
    for host in ("globex-h0", "globex-h1"):
        mine = [c for h, c in log if h == host]
        assert len(mine) == 2, mine  # one batch (a, b) + c alone; nothing asked twice
        assert mine[0].startswith("exec /bin/sh -c ") and mine[1] == "echo fact-c"


def test_engine_plan_reads_each_fact_alone_when_the_batch_is_mangled(home: Path) -> None:
    inv = inventory_file(home, {"globex": hosts("globex", 1)})
    pb = playbook_file(home, [{"name": "p", "steps": [{"name": "a", "action": "t.facts"}]}])
    inventory = load_inventory(inv)
    log: list[str] = []

    def script(conn: Any, command: str, stdin: bytes | None) -> CommandResult:
        log.append(command)
        result = _facts_script(conn, command, stdin)
        if command.startswith("exec /bin/sh"):  # a lying host: a forged extra frame at the end
            return CommandResult(0, result.stdout + result.stdout[:60], b"")
        return result

    plan = build_plan(load_playbook(pb), inventory, str(inv), "UNIT", FakePool(inventory, "UNIT", script))
    assert plan.items[0].change["summary"] == "x: fact-a fact-c"
    assert log[1:] == ["echo fact-a", "echo fact-c"]


def test_engine_plan_without_inspection_asks_no_host(home: Path) -> None:
    inv = inventory_file(home, {"globex": hosts("globex", 2), "initech": hosts("initech", 1)})
    pb = playbook_file(home, [{"name": "p", "steps": [{"name": "a", "action": "t.facts"},
                                                      {"name": "b", "action": "t.destroy"}]}])
    inventory = load_inventory(inv)
    pool = FakePool(inventory, "UNIT", Tracker(), unreachable={"initech-h0"})
    events: list[str] = []
    plan = build_plan(load_playbook(pb), inventory, str(inv), "UNIT", pool, preview=False, inspect=False,
                      on_event=lambda kind, data: events.append(data["host"]))
    assert pool.opened == [] and sorted(events) == ["globex-h0", "globex-h1", "initech-h0"]
    assert all(i.change == {"changed": None, "summary": NOT_INSPECTED, "inspected": False} for i in plan.items)
    inspected = build_plan(load_playbook(pb), inventory, str(inv), "UNIT", FakePool(inventory, "UNIT", _facts_script))
    # the same items (ids, steps, params, approvals): only the predictions differ
    strip = [(i.id, i.step, i.params, i.requires_approval, i.destructive) for i in plan.items]
    assert strip == [(i.id, i.step, i.params, i.requires_approval, i.destructive) for i in inspected.items]
    summary, journal, _, _ = run(home, inv, pb, unreachable={"initech-h0"})
    assert statuses(summary)["initech-h0"] == "failed"  # found when its step runs, as before


def test_make_plan_inspects_under_yes_only_when_another_approver_reads_the_plan(home: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from ir_toolkit.run import session

    pb = playbook_file(home, [{"name": "p", "steps": [{"name": "a", "action": "t.step"}]}])
    seen: list[bool] = []
    real = session.build_plan

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs["inspect"])
        return real(*args, **kwargs)

    monkeypatch.setattr(session, "build_plan", spy)
    monkeypatch.setattr(session, "make_pool", lambda inventory, case_id, loaded: FakePool(inventory, case_id))
    for approvals in ({"globex": 1}, {"globex": 2}):
        inv = inventory_file(home, {"globex": hosts("globex", 1)}, approvals=approvals)
        for preview, unread in ((True, True), (True, False), (False, True), (False, False)):
            session.make_plan(None, str(inv), str(pb), "UNIT", forks=2, preview=preview, inspect_unread=unread)
    assert seen == [True, True, True, False, True, True, True, True]


def test_a_plan_changed_in_place_gets_its_new_hash():
    """#17: the plan's hash is remembered (RFC 8785 of a 200-host plan is ~0.1 s a time), never stale."""
    import dataclasses

    from ir_toolkit.playbook.plan import Plan, PlanItem

    item = PlanItem(id="i1", phase="p", phase_index=0, step="s", step_index=0, tenant="t", host="h",
                    action="a", params={"x": 1.5}, requires_approval=False, destructive=False, change={})
    plan = Plan(case="C", msp="m", playbook_path="p.yml", playbook_sha256="0" * 64, inventory_path="i.yml",
                inventory_sha256="1" * 64, items=[item])
    first = plan.hash
    assert plan.hash == first and plan._hash_memo is not None
    plan.items.append(dataclasses.replace(item, id="i2"))
    second = plan.hash
    assert second != first
    plan.items[1].change["k"] = "v"
    assert plan.hash != second
    fresh = Plan(case="C", msp="m", playbook_path="p.yml", playbook_sha256="0" * 64, inventory_path="i.yml",
                 inventory_sha256="1" * 64, items=list(plan.items))
    assert fresh.hash == plan.hash
