"""The controller's side of agent-served tenants: sign and send steps, verify and record the answers.

The engine hands a step of a tenant whose inventory entry has ``agent:`` to
:meth:`AgentDispatcher.run_step` instead of running it; the call signs a
:class:`~ir_toolkit.agents.envelope.StepEnvelope`, puts it on the tenant's steps queue and waits
for the agent's signed result, so the engine's waves and phase barriers hold across local and
agent tenants alike. One consumer thread per tenant reads the results queue and, per message:

1. verifies the agent's signature (the key pinned in the inventory) and that the message is the
   tenant's own; checks the agent's chain (``agent_seq``/``prev_agent_hash``): a gap or a fork is
   recorded (``agent.chain_gap``/``agent.chain_conflict``), a message seen before is dropped;
2. de-duplicates on ``step_id``: the first result of a step is recorded, later ones (redeliveries,
   re-published stored results) only answer a waiting step;
3. imports the evidence the result references from the tenant's drop, checking size and SHA-256,
   into the case's own evidence tree (so the controller's evidence gate checks it as usual);
4. appends the action's records and ``agent.result`` (or ``agent.intent``/``agent.refused``) to the
   case's signed audit log - the controller is its only writer - and only then acks the message.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ir_toolkit.agents.celeryapp import BrokerSettings, make_app, queue_of, results_queue, steps_queue
from ir_toolkit.agents.envelope import (
    AgentMessage,
    Approvals,
    EnvelopeError,
    StepEnvelope,
    document_hash,
    step_id,
    verifier,
)
from ir_toolkit.audit import events
from ir_toolkit.cases import CaseLayout
from ir_toolkit.errors import InputError
from ir_toolkit.inventory.model import AgentAccess, Inventory
from ir_toolkit.log import get_logger
from ir_toolkit.tlog.note import Signer, Verifier

_log = get_logger("dispatch")
#: the agent may not write these through its records (the controller writes its own)
_CONTROLLER_ONLY = ("step.", "run.", "agent.", "approval.", "audit.", "tenant.", "gate.", "host.timed_out")
#: agent records whose params name files the step left (checked against the imported evidence)
AGENT_RECORDS = (events.AGENT_INTENT, events.AGENT_RESULT, events.AGENT_REFUSED)


def agent_verifier(access: AgentAccess) -> Verifier:
    text = access.public_key
    if text.startswith("file:"):
        from ir_toolkit.secrets.references import expand_path

        path = expand_path(text[5:])
        try:
            text = path.read_text(encoding="utf-8").strip().splitlines()[0].strip()
        except (OSError, IndexError) as exc:
            raise InputError(f"agent key {path}: cannot read ({exc})") from None
    try:
        return verifier(text)
    except EnvelopeError as exc:
        raise InputError(f"agent key: {exc}") from None


def broker_settings(access: AgentAccess) -> BrokerSettings:
    assert access.broker is not None
    password = None
    if access.password:
        from ir_toolkit.secrets.references import parse_ref, resolve

        password = resolve(parse_ref(access.password))
    return BrokerSettings(url=access.broker, username=access.user, password=password, ca_file=access.ca_file,
                          cert_file=access.cert_file, key_file=access.key_file)


@dataclass
class _Tenant:
    name: str
    access: AgentAccess
    key: Verifier
    app: Any
    thread: threading.Thread | None = None


@dataclass
class _Chain:
    seq: int = 0
    head: str = "0" * 64
    seen: set[str] = field(default_factory=set)


def controller_recipients(directory: Any = None) -> dict[str, list[str]]:
    """This controller's escrow and evidence public keys (no passphrase needed), as envelopes carry them;
    a key the keystore does not have is left out."""
    import base64

    from cryptography.hazmat.primitives import serialization

    from ir_toolkit.errors import InputError
    from ir_toolkit.secrets import keystore

    out: dict[str, list[str]] = {}
    for kind, load in (("escrow", keystore.escrow_public_key), ("evidence", keystore.evidence_public_key)):
        try:
            key = load(directory)
        except InputError:
            continue
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        out[kind] = [base64.b64encode(raw).decode("ascii")]
    return out


class AgentDispatcher:
    """Sends one run's steps to agents and is the one place their answers enter the audit log."""

    def __init__(self, inventory: Inventory, journal: Any, signer: Signer, *, case: str, plan_hash: str,
                 actor: str, log_origin: str = "", apps: dict[str, Any] | None = None,
                 longest_step_s: float = 3600.0, clock: Any = time.time,
                 drops: dict[str, str] | None = None, recipients: dict[str, list[str]] | None = None) -> None:
        self.inventory = inventory
        #: the controller's escrow and evidence public keys, sent in every envelope (what agents escrow
        #: or collect is encrypted to them too, so the controller reads it with its own keys)
        self.recipients = controller_recipients() if recipients is None else dict(recipients)
        self.journal = journal
        self.signer = signer
        self.case = case
        self.plan_hash = plan_hash
        self.actor = actor
        self.log_origin = log_origin or getattr(journal, "origin", "") or f"{inventory.msp.name}/ir/{case}"
        self.clock = clock
        self.run_id = uuid.uuid4().hex
        #: tenant -> where its evidence drop is (overrides the inventory's agent.drop: an offline import)
        self._drops = dict(drops or {})
        self._tenants: dict[str, _Tenant] = {}
        for tenant in inventory.tenants:
            if tenant.agent is None:
                continue
            if tenant.agent.offline or tenant.agent.broker is None:
                self._tenants[tenant.name] = _Tenant(tenant.name, tenant.agent, agent_verifier(tenant.agent), None)
                continue
            app = (apps or {}).get(tenant.name) or make_app(
                tenant.name, broker_settings(tenant.agent), longest_step_s=longest_step_s,
                visibility_timeout=tenant.agent.visibility_timeout, name=f"irkit-controller-{tenant.name}")
            self._tenants[tenant.name] = _Tenant(tenant.name, tenant.agent, agent_verifier(tenant.agent), app)
        self._cond = threading.Condition()
        #: step_id -> the recorded outcome of its first result (or a refusal of the attempt waited for)
        self._outcomes: dict[str, dict[str, Any]] = {}
        self._refusals: dict[tuple[str, int], dict[str, Any]] = {}
        self._chains: dict[str, _Chain] = {}
        self._attempts: dict[str, int] = {}
        #: step ids whose first result is appended (answered once it is durable)
        self._pending: set[str] = set()
        #: case-relative path -> (sha256, size) imported from a drop in this run
        self._imported: dict[str, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._log_lock = threading.Lock()
        self._local = threading.local()
        self.counters: dict[str, int] = {"results": 0, "duplicates": 0, "intents": 0, "refusals": 0, "rejected": 0}
        self._load_history()

    # ---- lifecycle

    def serves(self, tenant: str) -> bool:
        return tenant in self._tenants

    def offline(self, tenant: str) -> bool:
        t = self._tenants.get(tenant)
        return t is not None and t.app is None

    @property
    def tenants(self) -> list[str]:
        return sorted(self._tenants)

    def start(self) -> AgentDispatcher:
        for t in self._tenants.values():
            if t.app is None:
                continue
            t.thread = threading.Thread(target=self._consume, args=(t,), name=f"irkit-results-{t.name}",
                                        daemon=True)
            t.thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for t in self._tenants.values():
            if t.thread is not None:
                t.thread.join(timeout=5)

    def __enter__(self) -> AgentDispatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _load_history(self) -> None:
        """Resume: the chains and first results already in the signed log (``verified_records``)."""
        reader = getattr(self.journal, "verified_records", None)
        if reader is None:
            return
        for record in reader(AGENT_RECORDS):
            params = record.get("params") or {}
            agent_id, seq, digest = params.get("agent_id"), params.get("agent_seq"), params.get("message_sha256")
            if isinstance(agent_id, str) and isinstance(seq, int) and isinstance(digest, str):
                chain = self._chains.setdefault(agent_id, _Chain())
                chain.seen.add(digest)
                if seq > chain.seq:
                    chain.seq, chain.head = seq, digest
            sid = params.get("step_id")
            if record.get("action") == events.AGENT_RESULT and isinstance(sid, str) and sid not in self._outcomes:
                outcome = params.get("outcome")
                if isinstance(outcome, dict):
                    self._outcomes[sid] = outcome
            if record.get("action") in (events.AGENT_INTENT, events.AGENT_RESULT) and isinstance(sid, str):
                attempt = params.get("attempt")
                if isinstance(attempt, int):
                    self._attempts[sid] = max(self._attempts.get(sid, 0), attempt)

    # ---- sending

    def envelope(self, item: Any, params: dict[str, Any], *, step_timeout: float, wait: float, wave: int,
                 approvals: tuple[int, int], gate: str) -> StepEnvelope:
        sid = step_id(self.plan_hash, item.tenant, item.host, item.action, item.id)
        with self._cond:
            attempt = self._attempts.get(sid, 0) + 1
            self._attempts[sid] = attempt
        now = int(self.clock())
        size = int(getattr(self.journal, "size", 0) or 0)
        return StepEnvelope(
            run_id=self.run_id, case=self.case, tenant=item.tenant, phase=item.phase,
            phase_index=item.phase_index, wave=wave, item=item.id, step_id=sid, attempt=attempt, host=item.host,
            action=item.action, params=params, requires_approval=bool(item.requires_approval),
            destructive=bool(item.destructive), deadline_s=max(1, int(step_timeout)), not_before=now,
            expires_at=now + max(1, int(wait)), plan_hash=self.plan_hash,
            approvals=Approvals(required=approvals[1], count=approvals[0], log_size=size), log_origin=self.log_origin,
            gate=gate, recipients=self.recipients)

    def send(self, env: StepEnvelope) -> dict[str, Any]:
        from ir_toolkit.agents.celeryapp import STEP_TASK

        tenant = self._tenants[env.tenant]
        signed = env.sign(self.signer)
        tenant.app.send_task(STEP_TASK, args=[signed], queue=steps_queue(env.tenant),
                             retry=True, retry_policy={"max_retries": 10, "interval_start": 0.5,
                                                       "interval_step": 1.0, "interval_max": 5.0})
        return signed

    def run_step(self, item: Any, params: dict[str, Any], *, step_timeout: float, wait: float, wave: int,
                 approvals: tuple[int, int], gate: str) -> dict[str, Any]:
        """Send the step to its tenant's agent and wait (up to ``wait`` s) for its recorded outcome."""
        sid = step_id(self.plan_hash, item.tenant, item.host, item.action, item.id)
        with self._cond:
            known = self._outcomes.get(sid)
        if known is not None:  # answered before (a resumed run, or a result that came before we asked)
            return {**known, "attempts": known.get("attempts", 1)}
        access = self._tenants[item.tenant].access
        wait = max(1.0, min(wait, float(access.result_timeout)))
        env = self.envelope(item, params, step_timeout=min(step_timeout, wait), wait=wait, wave=wave,
                            approvals=approvals, gate=gate)
        try:
            self.send(env)
        except Exception as exc:  # noqa: BLE001 - the broker is down: the step did not start
            return {"status": "failed", "error": f"could not send the step to tenant {item.tenant}'s broker: "
                                                 f"{type(exc).__name__}: {exc}", "kind": "unreachable"}
        end = time.monotonic() + wait
        with self._cond:
            while True:
                if sid in self._outcomes:
                    return dict(self._outcomes[sid])
                refusal = self._refusals.get((sid, env.attempt))
                if refusal is not None:
                    return {"status": "failed", "error": f"refused by the agent of {item.tenant}: "
                                                         f"{refusal['code']}: {refusal['reason']}", "kind": "refused"}
                left = end - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    return {"status": "timed_out", "kind": "timed_out",
                            "error": f"no result from the agent of tenant {item.tenant} within {wait:g}s"}
                self._cond.wait(min(left, 1.0))

    # ---- receiving

    def _consume(self, tenant: _Tenant) -> None:
        queue = queue_of(tenant.app, results_queue(tenant.name))
        backoff = 0.5
        while not self._stop.is_set():
            try:
                with tenant.app.connection_for_read() as conn:
                    with conn.Consumer([queue], callbacks=[lambda body, msg: self._on_message(tenant, body, msg)],
                                       accept=["json"], prefetch_count=16):
                        backoff = 0.5
                        while not self._stop.is_set():
                            try:
                                conn.drain_events(timeout=0.5)
                            except TimeoutError:
                                continue
                            except OSError as exc:
                                if "timed out" in str(exc):
                                    continue
                                raise
            except Exception as exc:  # noqa: BLE001 - the broker went away: reconnect, results wait in the queue
                if self._stop.is_set():
                    return
                _log.warning("dispatch.broker_lost", tenant=tenant.name, error=f"{type(exc).__name__}: {exc}")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def _on_message(self, tenant: _Tenant, body: Any, message: Any) -> None:
        try:
            self.handle(tenant.name, body)
        except OSError:
            # the log could not be written: do not ack, the message comes back (and the run stops anyway)
            message.requeue()
            raise
        message.ack()

    def handle(self, tenant: str, body: Any) -> str:
        """Verify, de-duplicate and record one message from ``tenant``'s results queue; returns what was
        done with it (``recorded``, ``duplicate``, ``rejected``) once its records are durable.

        Records are appended under one lock (the log's order), made durable outside it - so the consumers
        of many tenants share fsyncs (the log's group commit) - and only then is a waiting step answered."""
        answer: list[tuple[str, Any]] = []
        self._local.wrote = 0
        what = self._handle(tenant, body, answer)
        sync = getattr(self.journal, "sync", None)
        if sync is not None and self._local.wrote:
            sync()
        if answer:
            with self._cond:
                for kind, (key, value) in answer:
                    (self._outcomes if kind == "outcome" else self._refusals)[key] = value
                self._cond.notify_all()
        return what

    def _handle(self, tenant: str, body: Any, answer: list[tuple[str, Any]]) -> str:
        t = self._tenants[tenant]
        try:
            msg, digest = AgentMessage.open(body, [t.key])
        except EnvelopeError as exc:
            return self._reject(tenant, body, exc.code, str(exc))
        if msg.tenant != tenant:
            return self._reject(tenant, body, "wrong_tenant", f"message of tenant {msg.tenant!r} on {tenant}'s queue")
        with self._log_lock:
            chain = self._chains.setdefault(msg.agent_id, _Chain())
            if digest in chain.seen:
                self.counters["duplicates"] += 1
                self._answer(msg)  # a re-published result may still answer a waiting (resumed) step
                return "duplicate"
            if msg.agent_seq <= chain.seq or (msg.agent_seq == chain.seq + 1 and msg.prev_agent_hash != chain.head):
                self._write(events.AGENT_CHAIN_CONFLICT, tenant, msg.host or None, {
                    "agent_id": msg.agent_id, "agent_seq": msg.agent_seq, "expected_seq": chain.seq + 1,
                    "message_sha256": digest}, "failed")
            elif msg.agent_seq > chain.seq + 1:
                self._write(events.AGENT_CHAIN_GAP, tenant, msg.host or None, {
                    "agent_id": msg.agent_id, "agent_seq": msg.agent_seq, "expected_seq": chain.seq + 1,
                    "message_sha256": digest}, "failed")
            chain.seen.add(digest)
            if msg.agent_seq > chain.seq:
                chain.seq, chain.head = msg.agent_seq, digest
            base = {"step_id": msg.step_id, "item": msg.item, "attempt": msg.attempt, "agent_id": msg.agent_id,
                    "agent_seq": msg.agent_seq, "prev_agent_hash": msg.prev_agent_hash, "message_sha256": digest}
            if msg.kind == "intent":
                self.counters["intents"] += 1
                self._write(events.AGENT_INTENT, tenant, msg.host, {**base, "verify_first": msg.verify_first},
                            "intent")
                return "recorded"
            if msg.kind == "refusal":
                self.counters["refusals"] += 1
                self._write(events.AGENT_REFUSED, tenant, msg.host or None, {
                    **base, "code": msg.code, "reason": msg.reason, "envelope_sha256": msg.envelope_sha256,
                    "claims": dict(msg.claims)}, "refused")
                answer.append(("refusal", ((msg.step_id, msg.attempt), {"code": msg.code, "reason": msg.reason})))
                return "recorded"
            # a result
            with self._cond:
                first = msg.step_id not in self._outcomes and msg.step_id not in self._pending
            if not first:
                self.counters["duplicates"] += 1
                self._write(events.AGENT_RESULT, tenant, msg.host, {**base, "duplicate": True,
                                                                    "status": str(msg.outcome.get("status"))},
                            "duplicate")
                return "duplicate"
            outcome = self._result_outcome(msg)
            problem = self._import_evidence(tenant, msg)
            if problem:
                outcome = {"status": "failed", "error": problem, "kind": "evidence", "attempts": 1}
            else:
                self._write_records(tenant, msg)
            self._write(events.AGENT_RESULT, tenant, msg.host, {
                **base, "outcome": outcome, "status": outcome["status"], "started": msg.started,
                "finished": msg.finished, "host_key_fp": msg.host_key_fp,
                "evidence": [e.to_json() for e in msg.evidence], "verify_first": msg.verify_first},
                "ok" if outcome["status"] == "ok" else "failed")
            self.counters["results"] += 1
            self._pending.add(msg.step_id)
            answer.append(("outcome", (msg.step_id, outcome)))
            return "recorded"

    def outcome(self, sid: str) -> dict[str, Any] | None:
        """The recorded outcome of step ``sid`` (its first result), if any."""
        with self._cond:
            found = self._outcomes.get(sid)
            return dict(found) if found is not None else None

    def _answer(self, msg: AgentMessage) -> None:
        with self._cond:
            self._cond.notify_all()

    def _result_outcome(self, msg: AgentMessage) -> dict[str, Any]:
        o = msg.outcome
        status = o.get("status")
        if status not in ("ok", "failed", "timed_out"):
            return {"status": "failed", "error": f"agent result with status {status!r}", "attempts": 1}
        out: dict[str, Any] = {"status": status, "changed": bool(o.get("changed")),
                               "summary": str(o.get("summary", ""))[:2000], "verify": str(o.get("verify", ""))[:2000],
                               "attempts": o.get("attempts", 1) if isinstance(o.get("attempts"), int) else 1}
        for key in ("error", "kind"):
            if o.get(key):
                out[key] = str(o[key])[:2000]
        if isinstance(o.get("details"), dict):
            out["details"] = o["details"]
        return out

    def _reject(self, tenant: str, body: Any, code: str, reason: str) -> str:
        self.counters["rejected"] += 1
        with self._log_lock:
            self._write(events.AGENT_MESSAGE_REJECTED, tenant, None, {
                "code": code, "reason": reason[:500], "message_sha256": document_hash(body)}, "refused")
        return "rejected"

    def _write(self, action: str, tenant: str, host: str | None, params: dict[str, Any], outcome: str,
               actor: str | None = None) -> int:
        """Append (durable at the end of :meth:`handle`, before the message is acked or answers a step)."""
        append = getattr(self.journal, "append", None) or self.journal.append_durable
        self._local.wrote = getattr(self._local, "wrote", 0) + 1
        return int(append(action=action, actor=actor or self.actor, tenant=tenant, host=host, params=params,
                          outcome=outcome))

    def _write_records(self, tenant: str, msg: AgentMessage) -> None:
        """The action's own records (custody, escrow, isolation, ...), for the message's tenant and host."""
        for record in msg.records:
            action = str(record.get("action", ""))
            if action not in events.EVENTS or action.startswith(_CONTROLLER_ONLY):
                self._write(events.AGENT_MESSAGE_REJECTED, tenant, msg.host, {
                    "code": "record_refused", "reason": f"the agent may not write {action[:80]!r} records",
                    "message_sha256": ""}, "refused")
                continue
            raw = record.get("params")
            params: dict[str, Any] = raw if isinstance(raw, dict) else {}
            outcome = str(record.get("outcome", "ok"))
            if outcome not in events.EVENTS[action].outcomes:
                outcome = "failed"
            actor = f"{msg.agent_id}:{str(record.get('actor', ''))[:80]}"
            self._write(action, tenant, msg.host, {**params, "agent_id": msg.agent_id}, outcome, actor=actor)

    def _import_evidence(self, tenant: str, msg: AgentMessage) -> str:
        """Copy each referenced file from the drop into the case, checking size and SHA-256; '' if all ok."""
        if not msg.evidence:
            return ""
        access = self._tenants[tenant].access
        from ir_toolkit.secrets.references import expand_path

        drop = expand_path(self._drops.get(tenant, access.drop)) / self.case
        root = CaseLayout.of(self.case).root
        allowed = [Path("evidence") / tenant / msg.host, Path("escrow") / tenant / msg.host]
        for ref in msg.evidence:
            rel = Path(ref.path)
            if rel.is_absolute() or ".." in rel.parts or not any(rel.parts[:3] == a.parts for a in allowed):
                return f"evidence path {ref.path!r} is outside {tenant}/{msg.host}'s evidence and escrow"
            src, dst = drop / rel, root / rel
            if self._imported.get(ref.path) == (ref.sha256, ref.size) and dst.exists():
                continue  # referenced again by a later step of the host: already here
            try:
                fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError as exc:
                return f"evidence {ref.path} is not in the drop ({exc.strerror})"
            digest = hashlib.sha256()
            dst.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = dst.with_name(dst.name + f".import-{os.getpid()}")
            size = 0
            try:
                with os.fdopen(fd, "rb") as fin, open(tmp, "wb") as fout:
                    while size <= ref.size:
                        chunk = fin.read(min(1 << 20, ref.size + 1 - size))
                        if not chunk:
                            break
                        size += len(chunk)
                        digest.update(chunk)
                        fout.write(chunk)
                    fout.flush()
                    os.fsync(fout.fileno())
                if size != ref.size or digest.hexdigest() != ref.sha256:
                    tmp.unlink(missing_ok=True)
                    return f"evidence {ref.path} in the drop does not match its reference (size or SHA-256)"
                os.chmod(tmp, 0o600)
                os.replace(tmp, dst)
                self._imported[ref.path] = (ref.sha256, ref.size)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                return f"evidence {ref.path}: {exc.strerror or exc}"
        return ""
