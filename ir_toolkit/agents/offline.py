"""Tenants with no path to any broker: the same signed envelopes and messages, carried as files.

``irkit plan export --tenant T`` writes a steps file (the controller's signed envelopes, in plan
order); ``irkit agent run-offline FILE`` runs it with the same :class:`~ir_toolkit.agents.agent.Agent`
(same verification, store, chain and drop) and writes a results file of the agent's signed
messages; ``irkit results import FILE`` feeds them through the controller's same verification path
(:meth:`~ir_toolkit.agents.dispatch.AgentDispatcher.handle`). The file wrappers are not trusted:
every envelope and message in them is verified on its own.

Offline, the controller's evidence gate cannot look at the host before the agent collected its
evidence, so a destructive step is exported with ``gate: offline`` and the agent runs it only after
a ``triage.collect`` step of the same host finished ``ok`` (in this file or before, in its store).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ir_toolkit.agents.agent import Agent
from ir_toolkit.agents.envelope import AgentMessage, EnvelopeError, StepEnvelope, claimed_fields, load_document
from ir_toolkit.errors import InputError

STEPS_KIND = "irkit.offline-steps"
RESULTS_KIND = "irkit.offline-results"
OFFLINE_GATE = "offline"
#: an offline file can hold a tenant's whole plan
MAX_FILE = 256 * 1024 * 1024


def read_bundle(path: Path, kind: str) -> dict[str, Any]:
    try:
        size = path.stat().st_size
        if size > MAX_FILE:
            raise InputError(f"{path}: {size} bytes is over the {MAX_FILE} limit")
        doc = json.loads(path.read_bytes())
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise InputError(f"{path}: not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("kind") != kind or doc.get("v") != 1:
        raise InputError(f"{path}: not an irkit {kind} file")
    items = doc.get("envelopes" if kind == STEPS_KIND else "messages")
    if not isinstance(items, list) or not isinstance(doc.get("tenant"), str):
        raise InputError(f"{path}: malformed {kind} file")
    return doc


def steps_document(tenant: str, case: str, plan_hash: str, envelopes: list[dict[str, Any]]) -> dict[str, Any]:
    return {"kind": STEPS_KIND, "v": 1, "tenant": tenant, "case": case, "plan_hash": plan_hash,
            "envelopes": envelopes}


def run_offline(agent: Agent, bundle: dict[str, Any]) -> dict[str, Any]:
    """Run a steps file's envelopes in order; return the results document (the agent's signed messages).

    ``agent.config.publish`` is replaced by collection into the document. A host whose step did not end
    ``ok`` (or was refused, also as an unverifiable envelope naming it) gets no further steps: each is
    answered with a signed refusal ``earlier_step``."""
    messages: list[dict[str, Any]] = []
    agent.config.publish = messages.append
    agent.flush_outbox()
    failed: dict[str, str] = {}
    evidence_ok: set[str] = set()
    counts = {"done": 0, "refused": 0, "republished": 0}
    for raw in bundle["envelopes"]:
        try:
            env = StepEnvelope.open(load_document(raw) if not isinstance(raw, dict) else raw, agent.config.controller)
        except EnvelopeError:
            env = None  # refused below, by the same path as a queue delivery
            claimed = claimed_fields(raw).get("host")
            if claimed:  # its host gets no later steps either (the step before them did not run)
                failed.setdefault(claimed, "refused")
        if env is not None and env.host in failed:
            agent.refuse(raw, "earlier_step", f"an earlier step of {env.host} ended {failed[env.host]}", env)
            counts["refused"] += 1
            continue
        if env is not None and env.destructive and env.gate == OFFLINE_GATE and env.host not in evidence_ok:
            agent.refuse(raw, "gate", f"no triage.collect of {env.host} ended ok before this destructive step", env)
            failed[env.host] = "refused"
            counts["refused"] += 1
            continue
        before = len(messages)
        what = agent.handle(raw)
        counts[what] = counts.get(what, 0) + 1
        if env is None:
            continue
        status = _last_status(messages[before:], env.step_id, agent)
        if status != "ok":
            failed[env.host] = status or "refused"
        elif env.action == "triage.collect":
            evidence_ok.add(env.host)
    return {"kind": RESULTS_KIND, "v": 1, "tenant": agent.config.tenant, "agent_id": agent.config.agent_id,
            "messages": messages, "counts": counts}


def _last_status(new: list[dict[str, Any]], sid: str, agent: Agent) -> str:
    for doc in reversed(new):
        try:
            msg, _ = AgentMessage.open(doc, [agent.config.signer.verifier()])
        except EnvelopeError:
            continue
        if msg.step_id == sid and msg.kind == "result":
            return str(msg.outcome.get("status", ""))
        if msg.step_id == sid and msg.kind == "refusal":
            return "refused"
    return ""
