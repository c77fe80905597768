"""Reading the run journal (the case's audit log) back: what is finished, what to resume."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ir_toolkit.cases import CaseLayout
from ir_toolkit.errors import InputError


@dataclass
class JournalState:
    plan_hash: str | None = None
    finished: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    started: set[str] = field(default_factory=set)
    run_ended: bool = False


def journal_state(records: Iterable[dict[str, Any]], plan_hash: str | None = None) -> JournalState:
    """Fold the records of a case into the state of its latest run (or of ``plan_hash``)."""
    state = JournalState(plan_hash=plan_hash)
    for record in records:
        action = record.get("action")
        params = record.get("params") or {}
        if action == "run.start":
            if plan_hash is None or params.get("plan") == plan_hash:
                if state.plan_hash != params.get("plan"):
                    state = JournalState(plan_hash=params.get("plan"))
                state.run_ended = False
            continue
        if state.plan_hash is None:
            continue
        item = params.get("item")
        if action == "step.start" and item:
            state.started.add(item)
        elif action == "step.done" and item:
            state.finished.add(item)
            if record.get("outcome") != "ok":
                state.failed.add(item)
            else:
                state.failed.discard(item)
        elif action == "step.skipped" and item:
            state.finished.add(item)
        elif action == "run.end" and params.get("plan") == state.plan_hash:
            state.run_ended = params.get("status") == "done"
    return state


def plan_path_for(case_id: str, plan_hash: str) -> Any:
    path = CaseLayout.of(case_id).plan_file(plan_hash)
    if not path.exists():
        raise InputError(f"case {case_id}: plan {plan_hash[:16]} named in the journal is missing ({path})")
    return path
