"""Offline tenants on the controller: export a tenant's signed steps, import its agent's signed results.

``irkit plan export --tenant T`` and ``irkit results import FILE`` (docs/agents.md, "Offline tenants").
Both open the case's audit log for writing with the responder's key: the export records the approvals
it relies on and ``agent.exported``; the import goes through the dispatcher's one verification path,
then writes one ``step.done`` per item whose result it recorded, so ``irkit resume`` and the report see
those steps as finished.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ir_toolkit.audit import events
from ir_toolkit.errors import InputError
from ir_toolkit.fsutil import write_atomic
from ir_toolkit.playbook.journal import journal_state, plan_path_for
from ir_toolkit.playbook.plan import Plan, load_plan, wire_params
from ir_toolkit.run.session import (
    QuietFrontend,
    gather_approvals,
    journal_actor,
    load_plan_context,
    open_journal,
)
from ir_toolkit.secrets.keyprovider import KeyProvider

_STATE = ("run.start", "run.end", "step.start", "step.done", "step.skipped")


def _latest_plan(case_id: str, plan_file: str | None, journal: Any) -> Plan:
    if plan_file:
        return load_plan(plan_file)
    state = journal_state(journal.verified_records(_STATE))
    if state.plan_hash:
        return load_plan(plan_path_for(case_id, state.plan_hash))
    from ir_toolkit.cases import CaseLayout

    plans = sorted(CaseLayout.of(case_id).journal.glob("plan-*.json"), key=lambda p: p.stat().st_mtime)
    if not plans:
        raise InputError(f"case {case_id}: no plan to export (make one with irkit plan, or give --plan)")
    return load_plan(plans[-1])


def export_steps(case_id: str, tenant: str, out: Path, *, plan_file: str | None = None,
                 valid_hours: float = 168.0) -> dict[str, Any]:
    """Sign the tenant's unfinished steps of the case's plan into ``out``; returns a summary."""
    from ir_toolkit.agents.dispatch import AgentDispatcher
    from ir_toolkit.agents.offline import OFFLINE_GATE, steps_document

    from ir_toolkit.audit.log import AuditLog

    keys = KeyProvider.unlock()
    if _log_exists(case_id):
        journal = AuditLog.open(case_id, signer=keys.signer())
    else:
        first = _latest_plan(case_id, plan_file, _NoLog())
        journal = open_journal(case_id, first.msp, keys)
    try:
        plan = _latest_plan(case_id, plan_file, journal)
        loaded, inventory = load_plan_context(plan)
        try:
            inventory.tenant(tenant)
        except KeyError:
            raise InputError(f"tenant {tenant!r} is not in the plan's inventory") from None
        items = [i for i in plan.items if i.tenant == tenant]
        if not items:
            raise InputError(f"plan {plan.hash[:16]} has no steps for tenant {tenant}")
        finished = journal_state(journal.verified_records(_STATE), plan.hash).finished
        approvals = gather_approvals(plan, inventory, journal, True, 0.0, QuietFrontend())
        if inventory.tenant(tenant).agent is None:
            raise InputError(f"tenant {tenant} has no agent: settings (give it agent: {{offline: true, public_key: "
                             "..., drop: ...}} in the inventory)")
        dispatcher = AgentDispatcher(inventory, journal, keys.signer(), case=case_id, plan_hash=plan.hash,
                                     actor=journal_actor())
        envelopes = []
        needed = inventory.tenant(tenant).approvals_required
        for item in sorted(items, key=lambda i: (i.phase_index, i.step_index, i.host)):
            if item.id in finished:
                continue
            step = loaded.playbook.phases[item.phase_index].steps[item.step_index]
            from ir_toolkit.actions.base import action_for

            host = next((h for h in inventory.targets() if h.name == item.host), None)
            cls = action_for(item.action, host) if host is not None else None
            if cls is None:
                continue
            params = wire_params(loaded.step_params(item.phase_index, item.step_index, cls))
            gate = "" if not item.destructive else (f"override: {step.evidence_override}" if step.evidence_override
                                                    else OFFLINE_GATE)
            env = dispatcher.envelope(item, params, step_timeout=loaded.playbook.step_timeout(step),
                                      wait=valid_hours * 3600, wave=1, approvals=(approvals.get(tenant, 0), needed),
                                      gate=gate)
            envelopes.append(env.sign(keys.signer()))
        data = (json.dumps(steps_document(tenant, case_id, plan.hash, envelopes), indent=1, sort_keys=True)
                + "\n").encode()
        write_atomic(out, data, mode=0o600)
        digest = hashlib.sha256(data).hexdigest()
        journal.append_durable(action=events.AGENT_EXPORTED, actor=journal_actor(), tenant=tenant, params={
            "plan": plan.hash, "envelopes": len(envelopes), "file": str(out), "file_sha256": digest,
            "valid_hours": str(valid_hours)})
        journal.checkpoint()
        return {"tenant": tenant, "case": case_id, "plan": plan.hash, "envelopes": len(envelopes), "file": str(out),
                "sha256": digest}
    finally:
        journal.close()


class _NoLog:
    def verified_records(self, actions: Any = None) -> list[dict[str, Any]]:
        return []


def _log_exists(case_id: str) -> bool:
    from ir_toolkit.audit.layout import log_path

    return log_path(case_id).exists()


def import_results(case_id: str, path: Path, *, drop: str | None = None) -> dict[str, Any]:
    """Verify and record an offline agent's results file; write ``step.done`` for each answered item."""
    from ir_toolkit.agents.dispatch import AgentDispatcher
    from ir_toolkit.agents.envelope import step_id
    from ir_toolkit.agents.offline import RESULTS_KIND, read_bundle
    from ir_toolkit.audit.log import AuditLog

    bundle = read_bundle(path, RESULTS_KIND)
    tenant = bundle["tenant"]
    if not _log_exists(case_id):
        raise InputError(f"case {case_id}: no audit log (export the steps from this case first)")
    keys = KeyProvider.unlock()
    journal = AuditLog.open(case_id, signer=keys.signer())
    try:
        plan = _latest_plan(case_id, None, journal)
        loaded, inventory = load_plan_context(plan)
        try:
            access = inventory.tenant(tenant).agent
        except KeyError:
            raise InputError(f"{path}: tenant {tenant!r} is not in the plan's inventory") from None
        if access is None:
            raise InputError(f"{path}: tenant {tenant} has no agent: settings in the inventory")
        dispatcher = AgentDispatcher(inventory, journal, keys.signer(), case=case_id, plan_hash=plan.hash,
                                     actor=journal_actor(), drops={tenant: drop} if drop else None)
        seen = dict.fromkeys(("recorded", "duplicate", "rejected"), 0)
        for doc in bundle["messages"]:
            seen[dispatcher.handle(tenant, doc)] += 1
        state = journal_state(journal.verified_records(_STATE), plan.hash)
        if state.plan_hash != plan.hash or state.run_ended:
            journal.append_durable(action=events.RUN_START, actor=journal_actor(), params={
                "plan": plan.hash, "playbook": loaded.playbook.name, "resumed": True})
        done = 0
        for item in plan.items:
            if item.tenant != tenant or item.id in state.finished:
                continue
            outcome = dispatcher.outcome(step_id(plan.hash, item.tenant, item.host, item.action, item.id))
            if outcome is None:
                continue
            status = str(outcome.get("status")) if outcome.get("status") in ("ok", "failed", "timed_out") else "failed"
            fields = {k: outcome[k] for k in ("changed", "summary", "verify", "details", "attempts", "error", "kind")
                      if k in outcome}
            journal.append_durable(action=events.STEP_DONE, actor=journal_actor(), tenant=item.tenant, host=item.host,
                                   params={"item": item.id, "step_action": item.action, **fields}, outcome=status)
            done += 1
        journal.append_durable(action=events.AGENT_IMPORTED, actor=journal_actor(), tenant=tenant, params={
            "plan": plan.hash, "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "steps_done": done,
            **seen})
        journal.checkpoint()
        return {"tenant": tenant, "case": case_id, "plan": plan.hash, "steps_done": done, **seen}
    finally:
        journal.close()
