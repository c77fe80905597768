"""The evidence gate by destruction class, and time to isolation / full containment, without root or hosts.

Real evidence bundles (BundleWriter), real custody records in a real signed audit log, the real gate
(playbook/gate.py) and the real engine over FakeConnections. Runnable as ``nobody`` (README, Development):
    runuser -u nobody -- .venv/bin/python -m pytest -m "not lab" -k engine -p no:cacheprovider \
        --basetemp=/tmp/irkit-nobody-pytest

The attack: a hostile host whose full bundle has hash mismatches (it lies about its hashes) used to keep
itself un-isolated (the gate refused isolation for want of a usable bundle). Now its volatile snapshot
opens isolation, while its credential changes stay refused unless overridden.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ir_toolkit.actions import base as actions_base
from ir_toolkit.actions.base import (
    DESTROYS_CREDENTIALS,
    DESTROYS_EVERYTHING,
    DESTROYS_NETWORK,
    register,
)
from ir_toolkit.audit.log import AuditLog
from ir_toolkit.audit.records import build_record
from ir_toolkit.playbook.engine import EngineOptions
from ir_toolkit.playbook.gate import evidence_gate, required_kind
from ir_toolkit.playbook.milestones import Milestones, audit_params, describe
from ir_toolkit.triage.bundle import BundleWriter, MemberMeta, host_dir
from ir_toolkit.triage.custody import record_custody
from ir_toolkit.triage.status import host_evidence_status
from tests.test_engine_unit import _Step, hosts, inventory_file, playbook_file, run, statuses

CASE = "UNIT"  # the case the engine unit harness plans and runs


class TIsolate(_Step):
    name = "t.isolate"
    destructive = True
    destroys = DESTROYS_NETWORK


class TRotate(_Step):
    name = "t.rotate"
    destructive = True
    destroys = DESTROYS_CREDENTIALS


class TReimage(_Step):
    name = "t.reimage"
    destructive = True
    destroys = DESTROYS_EVERYTHING


class TUndeclared(_Step):
    name = "t.undeclared"
    destructive = True  # no destroys: treated as credentials/files (full bundle)


ACTIONS = (TIsolate, TRotate, TReimage, TUndeclared)


@pytest.fixture(autouse=True)
def gate_actions():
    for cls in ACTIONS:
        register(cls)
    yield
    for cls in ACTIONS:
        variants = actions_base._REGISTRY.get(cls.name, [])
        if cls in variants:
            variants.remove(cls)
        if not variants:
            actions_base._REGISTRY.pop(cls.name, None)


@pytest.fixture
def keys(tmp_path, monkeypatch):
    from ir_toolkit.secrets import keystore

    monkeypatch.setenv("IRKIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("IRKIT_KEY_PASSPHRASE", "unit passphrase")
    monkeypatch.setenv(keystore.TEST_SCRYPT_ENV, "10")
    keystore.init_keys("unit passphrase", name="ctl/irkit-responder")
    return keystore.load_signing_key("unit passphrase")


def seal_bundle(tenant: str, host: str, cid: str, kind: str, *, mismatches: int = 0):
    """A sealed bundle as the collector writes it: a volatile snapshot (command output) or a full one."""
    writer = BundleWriter(host_dir(CASE, tenant, host) / cid)
    if kind == "volatile":
        name, data = "live/processes.txt", b"PID CMD\n1 init\n4242 /tmp/.x/beacon 198.18.9.9:8443\n"
    else:
        name, data = "files/etc/passwd", b"root:x:0:0::/root:/bin/sh\n"
    digest = writer.add_bytes(name, data, MemberMeta())
    counts = {"collected": 1, **({"hash_mismatch": mismatches} if mismatches else {})}
    manifest = {"files": [], "outputs": [{"archive_path": name, "sha256_received": digest, "status": "collected"}]}
    return writer.finish(manifest, b"", {
        "case": CASE, "tenant": tenant, "host": host, "collection_id": cid,
        "profile": "volatile" if kind == "volatile" else "ir_triage", "kind": kind,
        "status": "complete" if not mismatches else "complete_with_errors", "counts": counts})


def evidence(signer, bundles: list[tuple[str, str, str, str, int]]) -> None:
    """Seal each (tenant, host, id, kind, mismatches) and record its custody in the case's signed log."""
    with AuditLog.open(CASE, origin=f"acme/ir/{CASE}", signer=signer) as log:
        for tenant, host, cid, kind, mismatches in bundles:
            coll = seal_bundle(tenant, host, cid, kind, mismatches=mismatches)
            record_custody(log, CASE, coll, coll.seal(), who="unit")


PHASES = [
    {"name": "isolate", "steps": [{"name": "isolate", "action": "t.isolate"}]},
    {"name": "rotate", "steps": [{"name": "rotate", "action": "t.rotate"}]},
    {"name": "verify", "steps": [{"name": "still isolated", "action": "t.isolate"},
                                 {"name": "still rotated", "action": "t.rotate"}]},
]


def world(tmp_path: Path, signer) -> tuple[Path, Path]:
    """globex-h0: snapshot + honest full bundle; h1 (the liar): snapshot + a full bundle with hash mismatches;
    h2: only a snapshot; h3: nothing."""
    inv = inventory_file(tmp_path, {"globex": hosts("globex", 4)})
    evidence(signer, [
        ("globex", "globex-h0", "20261201T100000Z-aaaaaa", "volatile", 0),
        ("globex", "globex-h0", "20261201T100100Z-aaaaab", "full", 0),
        ("globex", "globex-h1", "20261201T100000Z-bbbbba", "volatile", 0),
        ("globex", "globex-h1", "20261201T100100Z-bbbbbb", "full", 3),
        ("globex", "globex-h2", "20261201T100000Z-cccccc", "volatile", 0),
    ])
    return inv, playbook_file(tmp_path, PHASES)


def test_required_evidence_by_destruction_class():
    assert required_kind(DESTROYS_NETWORK) == "volatile"
    assert required_kind(DESTROYS_CREDENTIALS) == "full"
    assert required_kind(DESTROYS_EVERYTHING) == "full"
    assert required_kind(None) == "full"  # an undeclared destructive action needs the full bundle


def test_status_by_kind_from_real_bundles_and_signed_custody(tmp_path, keys):
    world(tmp_path, keys)
    # a snapshot opens the volatile kind only; a full bundle opens both
    assert host_evidence_status(CASE, "globex", "globex-h2", kind="volatile").ready
    only = host_evidence_status(CASE, "globex", "globex-h2", kind="full")
    assert not only.ready and "only a volatile snapshot" in only.reason and "full evidence bundle" in only.reason
    full = host_evidence_status(CASE, "globex", "globex-h0", kind="full")
    assert full.ready and full.kind == "full"
    # the newest collection wins for the volatile kind (h0's full bundle stands for a snapshot too)
    assert host_evidence_status(CASE, "globex", "globex-h0", kind="volatile").kind == "full"
    # the liar: its full bundle has hash mismatches; its snapshot is fine
    liar = host_evidence_status(CASE, "globex", "globex-h1", kind="full")
    assert not liar.ready and "hash mismatches" in liar.reason
    assert host_evidence_status(CASE, "globex", "globex-h1", kind="volatile").kind == "volatile"


def test_a_snapshot_relabelled_as_full_on_disk_does_not_open_credential_changes(tmp_path, keys):
    """seal.json is not signed: someone who edits it to call a snapshot full meets the signed custody record."""
    world(tmp_path, keys)
    (coll,) = host_dir(CASE, "globex", "globex-h2").iterdir()
    seal = json.loads((coll / "seal.json").read_text())
    (coll / "seal.json").write_text(json.dumps({**seal, "kind": "full"}))
    status = host_evidence_status(CASE, "globex", "globex-h2", kind="full")
    assert not status.ready and "recorded as a volatile snapshot" in status.reason
    gate = evidence_gate(CASE)
    assert not gate("globex", "globex-h2", DESTROYS_CREDENTIALS)


def test_engine_isolates_the_liar_on_its_snapshot_and_refuses_its_credential_changes(tmp_path, keys):
    inv, pb = world(tmp_path, keys)
    summary, journal, _, _ = run(tmp_path, inv, pb, options=EngineOptions(forks=4))  # the real, default gate
    assert statuses(summary) == {"globex-h0": "ok", "globex-h1": "failed", "globex-h2": "failed",
                                 "globex-h3": "failed"}
    done = {(r["host"], r["params"]["item"].split("/")[0]) for r in journal.of("step.done") if r["outcome"] == "ok"}
    # isolated: the honest host, the liar and the snapshot-only host; not the host without evidence
    assert {h for h, phase in done if phase == "isolate"} == {"globex-h0", "globex-h1", "globex-h2"}
    assert {h for h, phase in done if phase == "rotate"} == {"globex-h0"}
    refused = {r["host"]: r["params"] for r in journal.of("step.refused")}
    assert refused["globex-h3"]["needs"] == "volatile" and refused["globex-h3"]["destroys"] == "network"
    for host in ("globex-h1", "globex-h2"):
        assert refused[host]["needs"] == "full" and refused[host]["destroys"] == "credentials"
        assert refused[host]["item"].startswith("rotate/")
    assert "needs a full evidence bundle" in refused["globex-h1"]["reason"]
    assert "hash mismatches" in refused["globex-h1"]["reason"]
    assert "needs a volatile snapshot" in refused["globex-h3"]["reason"]
    assert summary.hosts["globex-h1"].message.startswith("refused: no verified evidence for globex-h1")
    # the figures: 3 of 4 planned hosts isolated, 1 of 4 fully contained, both in run.end
    figures = summary.figures()
    assert figures["isolation"]["hosts"] == 4 and figures["isolation"]["reached"] == 3
    assert not figures["isolation"]["complete"]
    assert figures["containment"]["reached"] == 1
    (end,) = journal.of("run.end")
    assert end["params"]["isolated"] == "3/4" and end["params"]["contained"] == "1/4"
    assert end["params"]["time_to_isolation_ms"] is None  # not every planned host got there
    assert end["params"]["tenant_figures"]["globex"]["isolated"] == "3/4"


def test_an_audited_override_lets_the_liars_credential_change_run(tmp_path, keys):
    inv, _ = world(tmp_path, keys)
    pb = playbook_file(tmp_path, [
        {"name": "isolate", "steps": [{"name": "isolate", "action": "t.isolate", "targets": {"hosts": ["globex-h1"]}}]},
        {"name": "rotate", "steps": [{"name": "rotate", "action": "t.rotate", "targets": {"hosts": ["globex-h1"]},
                                      "evidence_override": "the host lies about hashes; rotate anyway, IC approved"}]},
    ])
    summary, journal, _, _ = run(tmp_path, inv, pb, options=EngineOptions(forks=2))
    assert summary.all_ok, summary.hosts
    (override,) = journal.of("gate.override")
    assert override["host"] == "globex-h1" and override["params"]["needs"] == "full"
    assert override["params"]["destroys"] == "credentials"
    assert not journal.of("step.refused")


def test_reimage_and_undeclared_destructive_steps_need_the_full_bundle(tmp_path, keys):
    inv, _ = world(tmp_path, keys)
    pb = playbook_file(tmp_path, [
        {"name": "reimage", "steps": [{"name": "reimage", "action": "t.reimage"}]},
        {"name": "other", "steps": [{"name": "undeclared", "action": "t.undeclared"}]},
    ])
    summary, journal, _, _ = run(tmp_path, inv, pb, options=EngineOptions(forks=4))
    assert statuses(summary) == {"globex-h0": "ok", "globex-h1": "failed", "globex-h2": "failed",
                                 "globex-h3": "failed"}
    assert {r["params"]["needs"] for r in journal.of("step.refused")} == {"full"}
    assert {r["params"]["destroys"] for r in journal.of("step.refused")} == {"everything"}


def test_time_to_isolation_and_full_containment_are_measured_from_run_start(tmp_path, keys):
    inv = inventory_file(tmp_path, {"globex": hosts("globex", 2), "initech": hosts("initech", 1)})
    pb = playbook_file(tmp_path, PHASES)
    events: list[tuple[str, dict]] = []

    def hook(engine):
        engine.on_event = lambda kind, data: events.append((kind, data))

    summary, journal, _, _ = run(tmp_path, inv, pb, options=EngineOptions(forks=4, evidence_gate=lambda t, h, d: True),
                                 engine_hook=hook)
    assert summary.all_ok
    figures = summary.figures()
    iso, full = figures["isolation"], figures["containment"]
    assert iso["complete"] and iso["hosts"] == 3 and full["complete"] and full["hosts"] == 3
    assert 0 <= iso["first_s"] <= iso["last_s"] <= full["last_s"]
    assert set(figures["tenants"]) == {"globex", "initech"}
    assert figures["tenants"]["initech"]["isolation"]["hosts"] == 1
    # the verify phase repeats isolate/rotate: it proves, it does not move the figures
    isolated_events = [d for k, d in events if k == "host.isolated"]
    contained_events = [d for k, d in events if k == "host.contained"]
    assert sorted(d["host"] for d in isolated_events) == ["globex-h0", "globex-h1", "initech-h0"]
    assert len(contained_events) == 3
    rotate_done = max(r_seq for r_seq, r in enumerate(journal.records)
                      if r["action"] == "step.done" and r["params"]["item"].startswith("rotate/"))
    verify_start = min(r_seq for r_seq, r in enumerate(journal.records)
                       if r["action"] == "step.start" and r["params"]["item"].startswith("verify/"))
    assert rotate_done < verify_start
    assert events[0][0] == "figures" and events[0][1]["isolation"]["hosts"] == 3
    (end,) = journal.of("run.end")
    assert end["params"]["time_to_isolation_ms"] == round(iso["last_s"] * 1000)
    assert end["params"]["time_to_full_containment_ms"] == round(full["last_s"] * 1000)
    assert end["params"]["isolated"] == "3/3"
    # what the engine writes is a valid signed-log record (no floats: milliseconds)
    build_record(seq=1, prev="0" * 64, case=CASE, action="run.end", actor="unit", params=end["params"])
    assert "time to isolation" in describe(iso, "isolation")


def test_milestones_count_the_first_run_of_each_destructive_action_only():
    m = Milestones()
    m.plan("h", "t", "isolate/0/h", isolates=True)
    m.plan("h", "t", "rotate/0/h", isolates=False)
    assert m.done("h", "isolate/0/h", 1.5, isolates=True) == (True, False)
    assert m.done("h", "verify/0/h", 2.0, isolates=True) == (False, False)  # a repeat: not planned here
    assert m.done("h", "rotate/0/h", 3.0, isolates=False) == (False, True)
    figures = m.figures()
    assert figures["isolation"]["last_s"] == 1.5 and figures["containment"]["last_s"] == 3.0
    params = audit_params(figures)
    assert params["time_to_isolation_ms"] == 1500 and params["time_to_full_containment_ms"] == 3000


class TCounted(_Step):
    """Counts its plans; ``verify_ok`` is a parameter plan does not read."""

    name = "t.counted"
    plan_ignores = ("verify_ok",)
    plans: list[str] = []

    def plan(self, ctx, params):
        TCounted.plans.append(ctx.host.name)
        return super().plan(ctx, params)


def test_planning_reuses_the_prediction_of_a_repeated_step_on_the_same_host(tmp_path, monkeypatch):
    """The verify phase repeats earlier steps: their predictions are the same (plans change nothing), so each
    distinct (action, params) is inspected once per host - the plan is the same as with every step inspected."""
    monkeypatch.setenv("IRKIT_HOME", str(tmp_path / "home"))
    register(TCounted)
    try:
        TCounted.plans = []
        inv = inventory_file(tmp_path, {"globex": hosts("globex", 2)})
        pb = playbook_file(tmp_path, [
            {"name": "do", "steps": [{"name": "a", "action": "t.counted", "params": {"label": "a"}}]},
            {"name": "verify", "steps": [
                {"name": "a again", "action": "t.counted", "params": {"label": "a", "verify_ok": False}},
                {"name": "b", "action": "t.counted", "params": {"label": "b"}}]},
        ])
        _, _, plan, _ = run(tmp_path, inv, pb, options=EngineOptions(forks=2, evidence_gate=lambda t, h, d: True))
        assert sorted(TCounted.plans) == ["globex-h0", "globex-h0", "globex-h1", "globex-h1"]  # a and b, not a again
        by = {(i.host, i.step): i.change for i in plan.items}
        assert by[("globex-h0", "a again")] == by[("globex-h0", "a")] == {"changed": True, "summary": "would a"}
        assert by[("globex-h0", "b")]["summary"] == "would b"
    finally:
        actions_base._REGISTRY.pop("t.counted", None)



def test_a_generated_case_key_is_used_without_decrypting_it_and_a_file_is_decrypted_once(tmp_path, monkeypatch):
    """The access phase's cost: the bcrypt KDF of the case key (~0.25 s of CPU) once per key file, not per host;
    a key irkit has just generated is never decrypted from the file at all."""
    from ir_toolkit.actions import responder
    from ir_toolkit.inventory import load_inventory
    from ir_toolkit.transports import pool as pool_mod

    monkeypatch.setenv("IRKIT_HOME", str(tmp_path / "home"))
    inventory = load_inventory(inventory_file(tmp_path, {"globex": hosts("globex", 1)}))
    pool = pool_mod.ConnectionPool(inventory, CASE)
    decrypted: list[str] = []
    real = pool_mod.load_private_key
    monkeypatch.setattr(pool_mod, "load_private_key", lambda path, pw=None: decrypted.append(str(path)) or real(path, pw))
    path, created = responder.ensure_case_key(CASE, "globex", "case pass", remember=pool.remember_key)
    assert created
    key = pool.private_key(path, "case pass")
    assert decrypted == [] and key.get_base64() == responder.public_line(path).split()[1]
    # the same key from the file (another process, a resume): decrypted once, then from memory
    other = pool_mod.ConnectionPool(inventory, CASE)
    assert other.private_key(path, "case pass").get_base64() == key.get_base64()
    assert other.private_key(path, "case pass") is other.private_key(path, "case pass")
    assert decrypted == [str(path)]
    assert responder.ensure_case_key(CASE, "globex", "case pass", remember=pool.remember_key) == (path, False)
