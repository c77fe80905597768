"""#17: host.isolate in fewer exec channels (snapshot + watchdog + ``nft -f -`` in one command; the watchdog's
disarm and the read-back of flows and table in one framed command) keeps every safety net, on a real lab host:

* applied through a step's memo, the watchdog really is disarmed by the merged command (the table is still
  loaded after the watchdog's time) and the read-back is what the host has;
* a fresh login that fails after the table is loaded: the table is removed and the watchdog disarmed;
* nft refusing the ruleset: nothing loaded, the watchdog disarmed, the same message as before;
* a host whose framed answer is forged: the disarm runs again alone and the facts are read one by one;
* an update (another allow-list over irkit's table: the load command without the snapshot) keeps the first
  snapshot, and release restores the ruleset byte for byte.
"""

from __future__ import annotations

import time

import pytest
from containment_helpers import home, keyed_env

from ir_toolkit.actions import isolation
from ir_toolkit.actions.base import AccessProofs, ActionContext, ActionFailed
from ir_toolkit.actions.isolation import WATCHDOG_MARK, IsolateHost, IsolateParams
from ir_toolkit.deadline import Deadline
from ir_toolkit.facts.batch import FactMemo
from tests.fakes import MemoryJournal

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def isom(lab_factory):
    return lab_factory("isom", tenants=1, hosts_per_tenant=2)


@pytest.fixture(scope="module")
def env(isom):
    return keyed_env(isom)


class _Session:
    def __init__(self, lab, env, name: str) -> None:
        from ir_toolkit.inventory import load_inventory
        from ir_toolkit.transports.pool import ConnectionPool

        self.lab, self.name = lab, name
        with home(env):
            self.inventory = load_inventory(lab.inventory_path)
            self.fleet = ConnectionPool(self.inventory, None)
            self.host = self.inventory.host(name)
            self.conn = self.fleet.connection(self.host, time.monotonic() + 30)
        self.journal = MemoryJournal()

    def ctx(self) -> ActionContext:
        return ActionContext(self.host, self.inventory, "ISO-M", self.conn, Deadline.after(60), journal=self.journal,
                             pool=self.fleet, step_facts=FactMemo(), proofs=AccessProofs())

    def loaded(self) -> bool:
        return self.conn.run("nft list table inet irkit_isolation").ok

    def watchdog_alive(self, pid: int) -> bool:
        out = self.conn.run(f"tr '\\0' ' ' < /proc/{pid}/cmdline 2>/dev/null").text
        return WATCHDOG_MARK in out

    def close(self) -> None:
        self.conn.run("nft delete table inet irkit_isolation 2>/dev/null; true")
        self.fleet.close()


@pytest.fixture
def session(isom, env):
    s = _Session(isom, env, isom.info["hosts"][0]["name"])
    try:
        yield s
    finally:
        s.close()


def _spy(monkeypatch) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = {"armed": [], "disarmed": []}
    load, disarm = IsolateHost._load, IsolateHost._disarm

    def spy_load(self, ctx, script, snapshot, seconds):  # type: ignore[no-untyped-def]
        digest, pid = load(self, ctx, script, snapshot, seconds)
        seen["armed"].append(pid)
        return digest, pid

    def spy_disarm(self, ctx, pid):  # type: ignore[no-untyped-def]
        seen["disarmed"].append(pid)
        return disarm(self, ctx, pid)

    monkeypatch.setattr(IsolateHost, "_load", spy_load)
    monkeypatch.setattr(IsolateHost, "_disarm", spy_disarm)
    return seen


def test_merged_disarm_really_disarms_and_the_read_back_is_the_hosts(session, monkeypatch):
    seen = _spy(monkeypatch)
    outcome = IsolateHost().apply(session.ctx(), IsolateParams(watchdog_seconds=10))
    assert outcome.changed and outcome.verified, outcome
    [pid] = seen["armed"]
    assert seen["disarmed"] == []  # disarmed inside the merged read-back command, not alone
    assert not session.watchdog_alive(pid)
    time.sleep(11)
    assert session.loaded(), "the watchdog fired: the merged command did not disarm it"
    assert [r["action"] for r in session.journal.records] == ["host.isolated"]


def test_fresh_login_failure_removes_the_table_and_disarms_the_watchdog(session, monkeypatch):
    seen = _spy(monkeypatch)
    monkeypatch.setattr(isolation, "responder_access_works", lambda ctx: False)
    with pytest.raises(ActionFailed, match="after isolating, a fresh login from the controller failed; "
                                           "isolation removed"):
        IsolateHost().apply(session.ctx(), IsolateParams(watchdog_seconds=30))
    [pid] = seen["armed"]
    assert seen["disarmed"] == [pid]
    assert not session.loaded()
    assert not session.watchdog_alive(pid)
    assert [r["action"] for r in session.journal.records] == ["host.isolation_rolled_back"]


def test_nft_refusing_the_ruleset_loads_nothing_and_disarms_the_watchdog(session, monkeypatch):
    seen = _spy(monkeypatch)
    monkeypatch.setattr(isolation, "ruleset", lambda allowed, case: ("table inet irkit_isolation {\n  bogus\n}\n",
                                                                     "0" * 16))
    with pytest.raises(ActionFailed, match="^nft refused the isolation ruleset: "):
        IsolateHost().apply(session.ctx(), IsolateParams(watchdog_seconds=30))
    assert seen["armed"] == [] and len(seen["disarmed"]) == 1
    assert not session.loaded()
    assert not session.watchdog_alive(seen["disarmed"][0])


def test_a_forged_framed_answer_runs_the_disarm_again_alone(session, monkeypatch):
    """The host adds a frame of its own to the merged answer: nothing of it is believed; the disarm is run
    alone and the table and flows are read one by one (the outcome is as without the merge)."""
    seen = _spy(monkeypatch)
    commands: list[str] = []
    real_run = type(session.conn).run

    def forging_run(conn, command, **kwargs):  # type: ignore[no-untyped-def]
        commands.append(command)
        result = real_run(conn, command, **kwargs)
        if command.startswith("exec /bin/sh -c ") and "case $(cat /proc/" in command:
            tag = result.stdout.split(b" ", 1)[0]
            result = type(result)(result.exit_status, result.stdout.replace(
                b" end ", b" 9 0 3\nxyz\n" + tag + b" end ", 1), result.stderr)
        return result

    monkeypatch.setattr(type(session.conn), "run", forging_run)
    outcome = IsolateHost().apply(session.ctx(), IsolateParams(watchdog_seconds=10))
    assert outcome.changed and outcome.verified, outcome
    [pid] = seen["armed"]
    assert not session.watchdog_alive(pid)
    assert any(c.startswith("case $(cat /proc/") for c in commands), "the disarm was not run again alone"
    assert "nft list table inet irkit_isolation 2>/dev/null" in commands
    time.sleep(11)
    assert session.loaded()


def test_update_keeps_the_first_snapshot_and_release_restores_exactly(session, monkeypatch):
    """Isolated, then isolated again with another allow-list (the load command without the snapshot): the
    table is replaced, the snapshot of the ruleset before the FIRST isolation stands, and release restores
    it byte for byte."""
    from ir_toolkit.actions.isolation import ReleaseHost, ReleaseParams

    before = session.conn.run("nft -s list ruleset").stdout
    session.conn.run("rm -rf /var/lib/irkit/isolation")
    first = IsolateHost().apply(session.ctx(), IsolateParams(watchdog_seconds=10))
    snapshot = session.conn.run("sha256sum < /var/lib/irkit/isolation/before.nft").text.split()[0]
    assert first.details["ruleset_before_sha256"] == snapshot
    second = IsolateHost().apply(session.ctx(), IsolateParams(watchdog_seconds=10, allow=["192.0.2.0/24"]))
    assert second.changed and second.verified, second
    assert second.details["spec"] != first.details["spec"]
    assert second.details["ruleset_before_sha256"] == snapshot  # not taken again over irkit's own table
    assert "192.0.2.0/24" in session.conn.run("nft list table inet irkit_isolation").text
    time.sleep(11)
    assert session.loaded(), "the second watchdog was not disarmed"
    released = ReleaseHost().apply(session.ctx(), ReleaseParams())
    assert released.changed and "exactly" in released.summary, released
    assert session.conn.run("nft -s list ruleset").stdout == before
