"""#17: fewer exec channels and fresh logins per host without a weaker proof.

* a step's facts (``ActionContext.step_facts``): a fact read twice is asked once - but never across a
  command (``ctx.run`` forgets every answer: a read-back after a change is a new read); ``ctx.prefetch``
  asks independent facts in ONE framed command, and a forged batch answers nothing;
* proofs of responder access (``AccessProofs``): a fresh login of this phase stands for a later one
  only in a ``verify``, when no command ran on the host since (``ctx.run`` forgets every proof) and no
  step changed the host by other means (a change of an action that is not ``reuses_facts`` forgets
  them); the verify says whose proof it took.

The engine runs unchanged over the fakes (tests/fakes.py); the lab tests prove the real actions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from ir_toolkit.actions import base as actions_base
from ir_toolkit.actions import support
from ir_toolkit.actions.base import AccessProofs, Action, ActionContext, Outcome, Params, register
from ir_toolkit.deadline import Deadline
from ir_toolkit.facts.base import Query
from ir_toolkit.facts.batch import FactMemo
from ir_toolkit.inventory import load_inventory
from ir_toolkit.playbook.engine import Engine, EngineOptions, build_plan
from ir_toolkit.playbook.schema import load_playbook
from ir_toolkit.transports.base import CommandResult
from tests.fakes import FakeConnection, FakePool, MemoryJournal

# --------------------------------------------------------------------------- step facts


def _fact(name: str, command: str) -> Query[str]:
    return Query(name, command, lambda out: out.text)


class Host:
    """A fake host that answers `echo X` and runs batches through /bin/sh like a real one."""

    def __init__(self, forge: bool = False) -> None:
        self.commands: list[str] = []
        self.forge = forge

    def __call__(self, conn: FakeConnection, command: str, stdin: bytes | None) -> CommandResult:
        import subprocess

        self.commands.append(command)
        if command.startswith("exec /bin/sh -c "):
            proc = subprocess.run(["/bin/sh", "-c", command], capture_output=True, timeout=20)
            out = proc.stdout
            if self.forge:  # a host that adds a frame of its own
                out = out.replace(b" end ", b" 9 0 3\nxyz\n#" + out.split(b" ", 1)[0][1:] + b" end ", 1)
            return CommandResult(proc.returncode, out, proc.stderr)
        if command.startswith("echo "):
            return CommandResult(0, command[5:].encode() + b"\n", b"")
        return CommandResult(0, b"", b"")


def _ctx(tmp_path: Path, script: Any, memo: bool = True) -> ActionContext:
    inv = load_inventory(_inventory(tmp_path))
    host = inv.hosts()[0]
    conn = FakeConnection(host.name, script)
    return ActionContext(host, inv, "UNIT", conn, Deadline.after(30), step_facts=FactMemo() if memo else None)


def test_a_fact_read_twice_is_asked_once_until_a_command_runs(tmp_path):
    host = Host()
    ctx = _ctx(tmp_path, host)
    assert ctx.fact(_fact("a", "echo a")) == "a\n"
    assert ctx.fact(_fact("a", "echo a")) == "a\n"
    assert host.commands == ["echo a"]
    ctx.run("touch /changed")  # anything may have changed: the next read goes to the host
    assert ctx.fact(_fact("a", "echo a")) == "a\n"
    assert host.commands == ["echo a", "touch /changed", "echo a"]


def test_without_a_step_memo_every_read_goes_to_the_host(tmp_path):
    host = Host()
    ctx = _ctx(tmp_path, host, memo=False)
    ctx.prefetch([_fact("a", "echo a"), _fact("b", "echo b")])
    ctx.fact(_fact("a", "echo a"))
    ctx.fact(_fact("a", "echo a"))
    assert host.commands == ["echo a", "echo a"]


def test_facts_with_stdin_are_never_kept(tmp_path):
    host = Host()
    ctx = _ctx(tmp_path, host)
    secret = Query("s", "echo s", lambda out: out.text, stdin=b"user:secret\n")
    ctx.fact(secret)
    ctx.fact(secret)
    assert host.commands == ["echo s", "echo s"]


def test_prefetch_asks_independent_facts_in_one_command(tmp_path):
    host = Host()
    ctx = _ctx(tmp_path, host)
    ctx.prefetch([_fact("a", "echo a"), _fact("b", "printf 'two\\nlines\\n'"), _fact("c", "exit 3")])
    assert len(host.commands) == 1 and host.commands[0].startswith("exec /bin/sh -c ")
    assert ctx.fact(_fact("a", "echo a")) == "a\n"
    assert ctx.fact(_fact("b", "printf 'two\\nlines\\n'")) == "two\nlines\n"
    assert ctx.fact(Query("c", "exit 3", lambda out: out.exit_status)) == 3
    assert len(host.commands) == 1
    ctx.run("true")
    ctx.fact(_fact("a", "echo a"))
    assert host.commands[-1] == "echo a"


def test_a_forged_batch_answers_nothing_and_each_fact_is_asked_alone(tmp_path):
    host = Host(forge=True)
    ctx = _ctx(tmp_path, host)
    ctx.prefetch([_fact("a", "echo a"), _fact("b", "echo b")])
    assert ctx.step_facts is not None and ctx.step_facts.batch_refused
    assert ctx.fact(_fact("a", "echo a")) == "a\n" and ctx.fact(_fact("b", "echo b")) == "b\n"
    assert host.commands[1:] == ["echo a", "echo b"]


def test_planning_keeps_its_own_memo(tmp_path):
    host = Host()
    ctx = _ctx(tmp_path, host)
    import dataclasses

    plan_ctx = dataclasses.replace(ctx, planning=True, step_facts=None, memo=None)
    plan_ctx.prefetch([_fact("a", "echo a"), _fact("b", "echo b")])
    assert host.commands == []  # planning prefetches through the engine's FactMemo, not here


# --------------------------------------------------------------------------- proofs of access in the engine


class ProofParams(Params):
    change: bool = False
    #: run a (read-only, for all irkit knows: possibly changing) command in apply
    run: bool = False


class TProve(Action):
    """apply: a fresh login proof recorded (as support.proven_login does); changes the host if told."""

    name = "t.prove"
    Params = ProofParams

    def plan(self, ctx: ActionContext, params: ProofParams) -> Outcome:
        return Outcome(params.change, "plan")

    def apply(self, ctx: ActionContext, params: ProofParams) -> Outcome:
        ctx.run(f"apply {self.name}")
        assert ctx.proofs is not None and not ctx.proofs.reusable  # apply never takes an earlier proof
        ctx.proofs.record("root", "SHA256:case")
        return Outcome(params.change, "applied", verified=True)

    def verify(self, ctx: ActionContext, params: ProofParams) -> Outcome:
        return Outcome(False, "unused")


class TCheck(Action):
    """verify: takes an earlier proof if the engine allows it (as responder_access(reuse=True) does)."""

    name = "t.check"
    Params = ProofParams

    def plan(self, ctx: ActionContext, params: ProofParams) -> Outcome:
        return Outcome(params.change, "plan")

    def apply(self, ctx: ActionContext, params: ProofParams) -> Outcome:
        assert ctx.proofs is not None and ctx.proofs.find("root", ["SHA256:case"]) is None
        if params.run:
            ctx.run("sha256sum /etc/passwd")
        return Outcome(params.change, "applied")

    def verify(self, ctx: ActionContext, params: ProofParams) -> Outcome:
        assert ctx.proofs is not None
        found = ctx.proofs.find("root", ["SHA256:other", "SHA256:case"])
        if found is None:
            ctx.run("fresh login")
            ctx.proofs.record("root", "SHA256:case")
        return Outcome(False, f"reused {found}" if found else "logged in")


class TRunProve(TProve):
    """All its changes go through ctx.run (reuses_facts): a proof made after its last command survives
    its own change; ``run`` puts one more command after the proof."""

    name = "t.run_prove"
    reuses_facts = True

    def apply(self, ctx: ActionContext, params: ProofParams) -> Outcome:
        ctx.run("change the host")
        assert ctx.proofs is not None
        ctx.proofs.record("root", "SHA256:case")
        if params.run:
            ctx.run("disarm something")
        return Outcome(params.change, "applied")

    def verify(self, ctx: ActionContext, params: ProofParams) -> Outcome:
        return TCheck.verify(self, ctx, params)  # type: ignore[arg-type]


TEST_ACTIONS = (TProve, TCheck, TRunProve)


@pytest.fixture(autouse=True)
def _actions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("IRKIT_HOME", str(tmp_path / "home"))
    for cls in TEST_ACTIONS:
        register(cls)
    yield
    for cls in TEST_ACTIONS:
        actions_base._REGISTRY.pop(cls.name, None)


def _inventory(tmp: Path) -> Path:
    data = {"version": 1,
            "msp": {"name": "acme", "responder": {"key": "file:/nonexistent/responder",
                                                  "controller_address": "198.18.0.1"}},
            "tenants": [{"name": "t1", "hosts": [{"name": "h1", "address": "198.18.1.10"}]}]}
    path = tmp / "inventory.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _run(tmp: Path, phases: list[dict[str, Any]]) -> tuple[MemoryJournal, list[str]]:
    inv_path = _inventory(tmp)
    pb = tmp / "playbook.yml"
    pb.write_text(yaml.safe_dump({"version": 1, "name": "unit", "defaults": {"retries": 0}, "phases": phases}))
    inventory, loaded = load_inventory(inv_path), load_playbook(pb)
    commands: list[str] = []

    def script(conn: FakeConnection, command: str, stdin: bytes | None) -> CommandResult:
        commands.append(command)
        return CommandResult(0, b"", b"")

    plan = build_plan(loaded, inventory, str(inv_path), "UNIT", FakePool(inventory, "UNIT", script))
    commands.clear()
    journal = MemoryJournal()
    Engine(plan, loaded, inventory, journal, FakePool(inventory, "UNIT", script), EngineOptions(forks=2)).run()
    return journal, commands


def _verdicts(journal: MemoryJournal) -> list[str]:
    return [r["params"].get("verify", r["params"].get("error", "")) for r in journal.records
            if r["action"] == "step.done"]


def _steps(*specs: tuple[Any, ...]) -> list[dict[str, Any]]:
    return [{"name": f"s{i}", "action": spec[0], "params": {"change": spec[1], "run": len(spec) > 2 and spec[2]}}
            for i, spec in enumerate(specs)]


def test_a_verify_reuses_the_proof_of_an_unchanged_phase(tmp_path):
    journal, commands = _run(tmp_path, [{"name": "verify", "steps": _steps(("t.prove", False), ("t.check", False),
                                                                           ("t.check", False))}])
    verdicts = _verdicts(journal)
    assert verdicts[1] == verdicts[2] == "reused verify/0/h1"  # the proving step's item id
    assert commands.count("fresh login") == 0


def test_no_proof_survives_a_change(tmp_path):
    # the proving step itself changed the host: its proof is forgotten; a later step that changes the host
    # (t.check with change) makes its own proof, and forgets earlier ones too
    journal, commands = _run(tmp_path, [{"name": "p", "steps": _steps(("t.prove", True), ("t.check", False),
                                                                      ("t.prove", False), ("t.check", True),
                                                                      ("t.check", False))}])
    verdicts = _verdicts(journal)
    assert verdicts[1] == "logged in"  # s0 changed the host after... its own proof: not reused
    assert verdicts[3] == "logged in"  # this step's apply changed the host: its verify logs in
    assert verdicts[4] == "reused p/3/h1"  # the proof made after the last change
    assert commands.count("fresh login") == 2


def test_any_command_after_a_proof_forgets_it(tmp_path):
    journal, commands = _run(tmp_path, [{"name": "v", "steps": _steps(("t.prove", False), ("t.check", False, True),
                                                                      ("t.check", False))}])
    verdicts = _verdicts(journal)
    assert verdicts[1] == "logged in"  # its own apply ran a command after the proof
    assert verdicts[2] == "reused v/1/h1"


def test_a_proof_made_after_the_last_command_of_a_change_stands_for_its_verify(tmp_path):
    journal, commands = _run(tmp_path, [{"name": "r", "steps": _steps(("t.run_prove", True), ("t.run_prove", True, True),
                                                                      ("t.prove", True), ("t.check", False))}])
    verdicts = _verdicts(journal)
    assert verdicts[0] == "reused r/0/h1"  # changed through ctx.run only, proven after its last command
    assert verdicts[1] == "logged in"  # a command ran after its proof
    # t.prove may change the host other than by ctx.run: its change forgets even its own proof
    assert verdicts[3] == "logged in"
    assert commands.count("fresh login") == 2


def test_no_proof_crosses_a_phase(tmp_path):
    journal, commands = _run(tmp_path, [{"name": "a", "steps": _steps(("t.prove", False))},
                                        {"name": "b", "steps": _steps(("t.check", False))}])
    assert _verdicts(journal)[1] == "logged in" and commands.count("fresh login") == 1


# --------------------------------------------------------------------------- responder_access


class _Keys:
    def __init__(self, keys: list[Any]) -> None:
        self._keys = keys

    def keys(self, host: Any = None) -> list[Any]:
        return self._keys


def test_responder_access_logs_in_unless_a_proof_may_stand(tmp_path, monkeypatch):
    import io

    import paramiko
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pem = Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                     serialization.NoEncryption()).decode()
    pkey = paramiko.Ed25519Key.from_private_key(io.StringIO(pem))
    logins: list[str] = []

    def fake_login(endpoint: Any, k: Any, deadline: Any) -> bool:
        logins.append(endpoint.user)
        return True

    monkeypatch.setattr(support, "fresh_login", fake_login)
    proofs = AccessProofs()
    proofs.step = "verify/access/h1"
    ctx = _ctx(tmp_path, Host())
    import dataclasses

    ctx = dataclasses.replace(ctx, pool=_Keys([pkey]), proofs=proofs)  # type: ignore[arg-type]
    assert support.responder_access(ctx, reuse=True).reused_from is None and logins == ["root"]  # nothing to reuse
    proofs.reusable = True
    own = support.responder_access(ctx, reuse=True)
    assert own.ok and own.own and "this step made" in own.note() and logins == ["root"]
    proofs.step = "verify/isolate/h1"  # the next step of the phase
    got = support.responder_access(ctx, reuse=True)
    assert got.ok and not got.own and got.reused_from == "verify/access/h1" and "verify/access/h1" in got.note()
    assert logins == ["root"]
    ctx.run("true")  # any command forgets the proof
    assert support.responder_access(ctx, reuse=True).reused_from is None and logins == ["root", "root"]
    assert support.responder_access_works(ctx) and logins == ["root", "root", "root"]  # apply's: always made
    proofs.forget()
    assert support.responder_access(ctx, reuse=True).reused_from is None and len(logins) == 4


# --------------------------------------------------------------------------- a change and its read-back in one


def test_run_then_read_runs_the_change_then_reads_back_in_one_command(tmp_path):
    host = Host()
    ctx = _ctx(tmp_path, host)
    assert ctx.fact(_fact("a", "echo a")) == "a\n"  # an answer from before the change is forgotten
    result = ctx.run_then_read("echo changed; exit 3", [_fact("a", "echo a"), _fact("b", "echo b")])
    assert (result.exit_status, result.stdout) == (3, b"changed\n")
    assert len(host.commands) == 2 and host.commands[1].startswith("exec /bin/sh -c ")
    # the read-backs are this step's answers (after the change) until the next command
    assert ctx.fact(_fact("a", "echo a")) == "a\n" and ctx.fact(_fact("b", "echo b")) == "b\n"
    assert len(host.commands) == 2
    ctx.run("touch /changed")
    assert ctx.fact(_fact("b", "echo b")) == "b\n"
    assert host.commands[-1] == "echo b"


def test_run_then_read_forgets_proofs_like_run(tmp_path):
    ctx = _ctx(tmp_path, Host())
    proofs = AccessProofs()
    proofs.reusable = True
    proofs.record("root", "SHA256:x")
    object.__setattr__(ctx, "proofs", proofs)
    ctx.run_then_read("true", [_fact("a", "echo a")])
    assert proofs.find("root", ["SHA256:x"]) is None


def test_run_then_read_with_a_forged_answer_runs_the_change_again_alone(tmp_path):
    """A host that adds a frame of its own: nothing of the answer is believed - the change (idempotent by
    contract) runs again alone and each fact is asked alone when read."""
    host = Host(forge=True)
    ctx = _ctx(tmp_path, host)
    result = ctx.run_then_read("echo changed", [_fact("a", "echo a")])
    assert host.commands[1:] == ["echo changed"]
    assert result.stdout == b"changed\n"
    assert ctx.fact(_fact("a", "echo a")) == "a\n"
    assert host.commands[2:] == ["echo a"]


def test_run_then_read_without_a_step_memo_is_a_plain_run(tmp_path):
    host = Host()
    ctx = _ctx(tmp_path, host, memo=False)
    ctx.run_then_read("echo changed", [_fact("a", "echo a")])
    assert host.commands == ["echo changed"]
