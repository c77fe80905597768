"""What a tenant's agent does with one step envelope (independent of Celery, so it is testable alone).

Per message (scale-out memo §1.5.3):

1. verify the controller's signature (pinned key) before looking at anything else; refuse an envelope
   for another tenant, one that expired or is early, a host or action it does not serve, approvals
   short of what its own inventory requires, a destructive step without the controller's gate;
2. look the step up in the idempotency store: ``done`` -> publish the stored signed result again;
   ``intent`` without ``done`` -> the verify-first path (``verify`` before ``apply``);
3. publish a signed ``intent``, then act with irkit's own actions over the agent's own connections,
   within the envelope's deadline; what the action would write to the audit log is collected and
   carried in the result (the controller is the only writer of the case's signed log; the agent's
   own diary, signed with its key, only serves the actions' checks on the agent);
4. copy the files under the host's evidence/escrow directories to the tenant's drop, referenced by
   SHA-256 and size (all of them: an earlier, killed attempt's escrow entries travel too);
5. publish the signed ``result``; only then does the worker ack the step.

A refusal is a signed ``refusal`` message, so the controller records it in the signed log.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ir_toolkit.actions.base import ActionContext, ActionFailed, Outcome, action_for
from ir_toolkit.agents.envelope import (
    AgentMessage,
    EnvelopeError,
    EvidenceRef,
    StepEnvelope,
    claimed_fields,
    document_hash,
    load_document,
)
from ir_toolkit.agents.store import DONE, INTENT, AgentStore
from ir_toolkit.cases import CaseLayout
from ir_toolkit.deadline import Deadline
from ir_toolkit.inventory.model import Host, Inventory
from ir_toolkit.log import get_logger
from ir_toolkit.secrets.keyprovider import KeyProvider
from ir_toolkit.tlog.note import Signer, Verifier
from ir_toolkit.transports.base import TIMED_OUT, Timeouts, TransportError
from ir_toolkit.transports.pool import ConnectionPool

_log = get_logger("agent")
#: an envelope dated this far in the future is refused (clock skew allowance)
MAX_SKEW = 300
#: the agent's own audit records must be ones irkit declares, and never the controller's step records
_CONTROLLER_ONLY = ("step.", "run.", "agent.", "approval.", "audit.", "tenant.", "gate.", "host.timed_out")



def _step_keys(keys: KeyProvider, env: StepEnvelope) -> KeyProvider:
    """The agent's keys, plus the controller's public keys from the (verified) envelope as co-recipients."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    def load(kind: str) -> list[Any]:
        return [X25519PublicKey.from_public_bytes(base64.b64decode(k)) for k in env.recipients.get(kind, [])]

    if not env.recipients:
        return keys
    return keys.with_co_recipients(escrow=load("escrow"), evidence=load("evidence"))

class CollectingJournal:
    """The journal actions see on an agent: records are kept (in order) for the result message; the
    controller appends them to the case's signed log, the log of record.

    ``local`` is the agent's own diary of the case (an irkit audit log in the agent's ``$IRKIT_HOME``,
    signed with the agent's key): records go there too, so an action's own checks on the agent (e.g.
    triage's "is this bundle's custody recorded?") find them. Returned sequence numbers are the diary's
    (or 1, 2, ... without one)."""

    def __init__(self, local: Any = None) -> None:
        self.records: list[dict[str, Any]] = []
        self.local = local
        self._lock = threading.Lock()

    def append_durable(self, *, action: str, actor: str, tenant: str | None = None, host: str | None = None,
                       params: dict[str, Any] | None = None, outcome: str = "ok") -> int:
        from ir_toolkit.redaction import redact

        clean = redact(_jsonable(params or {}))
        seq = None
        if self.local is not None:
            seq = self.local.append_durable(action=action, actor=actor, tenant=tenant, host=host, params=clean,
                                            outcome=outcome)
        with self._lock:
            self.records.append({"action": action, "actor": actor, "tenant": tenant, "host": host,
                                 "params": clean, "outcome": outcome})
            return int(seq) if seq is not None else len(self.records)

    def checkpoint(self) -> str:
        return ""


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


class Refused(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class AgentConfig:
    tenant: str
    #: the agent's own key (its verifier key is pinned in the controller's inventory)
    signer: Signer
    #: the controller's verifier key(s)
    controller: list[Verifier]
    #: the agent's inventory, restricted to its tenant
    inventory: Inventory
    store: AgentStore
    #: puts a signed message on the tenant's results queue (raises if the broker did not take it)
    publish: Callable[[dict[str, Any]], None]
    #: the tenant's evidence drop (the controller reads evidence from it by hash)
    drop: Path
    keys: KeyProvider = field(default_factory=KeyProvider.locked)
    timeouts: Timeouts = field(default_factory=Timeouts)
    actor: str = "irkit-agent"
    clock: Callable[[], float] = time.time
    #: (inventory, case) -> the pool the agent connects with (tests pass a fake one)
    pool_factory: Callable[[Inventory, str], ConnectionPool] | None = None
    #: keep the agent's own signed diary of each case (its actions' own checks read it)
    diary: bool = True

    @property
    def agent_id(self) -> str:
        return self.signer.name


def restrict_inventory(inventory: Inventory, tenant: str) -> Inventory:
    """The agent's view: only its own tenant (another tenant's hosts are refused, not run)."""
    try:
        own = inventory.tenant(tenant)
    except KeyError:
        from ir_toolkit.errors import InputError

        raise InputError(f"the agent's inventory has no tenant {tenant!r}") from None
    return inventory.model_copy(update={"tenants": [own]})


class Agent:
    """One agent process's step handler. :meth:`handle` is called once per delivered message."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.inventory = restrict_inventory(config.inventory, config.tenant)
        self._hosts: dict[str, Host] = {h.name: h for h in self.inventory.targets()}
        self._running: set[str] = set()
        self._lock = threading.Lock()
        self._idle = threading.Condition()
        #: sign, commit and publish one message at a time: the queue holds the chain in order
        self._send_lock = threading.RLock()
        self._pools: dict[str, ConnectionPool] = {}
        self._actions: dict[str, Any] = {}
        self._diaries: dict[str, Any] = {}
        #: path -> (size, mtime_ns, sha256) of files already copied to the drop
        self._hashes: dict[str, tuple[int, int, str]] = {}

    # ---- messages

    def flush_outbox(self) -> int:
        """Publish messages committed but not yet published (the agent died in between); in order."""
        count = 0
        with self._send_lock:
            for doc in self.config.store.unpublished():
                self.config.publish(doc)
                self.config.store.mark_published(doc)
                count += 1
        return count

    def _send(self, build: Callable[[int, str], AgentMessage], **state: Any) -> dict[str, Any]:
        signer = self.config.signer
        with self._send_lock:
            self.flush_outbox()
            doc = self.config.store.append(lambda seq, prev: build(seq, prev).sign(signer), **state)
            self.config.publish(doc)
            self.config.store.mark_published(doc)
        return doc

    def _now(self) -> int:
        return int(self.config.clock())

    def refuse(self, raw: Any, code: str, reason: str, env: StepEnvelope | None = None) -> dict[str, Any]:
        claims = claimed_fields(raw) if env is None else {}
        _log.warning("agent.refused", code=code, reason=reason, tenant=self.config.tenant)
        return self._send(lambda seq, prev: AgentMessage(
            kind="refusal", agent_id=self.config.agent_id, agent_seq=seq, prev_agent_hash=prev,
            tenant=self.config.tenant, step_id=env.step_id if env else claims.get("step_id", ""),
            attempt=env.attempt if env else 0, sent_at=self._now(), host=env.host if env else "",
            item=env.item if env else "", plan_hash=env.plan_hash if env else "",
            run_id=env.run_id if env else "", code=code, reason=reason[:500],
            envelope_sha256=document_hash(raw), claims=claims))

    # ---- one delivery

    def handle(self, raw: Any) -> str:
        """Process one delivered envelope; returns what happened (``done``, ``refused``, ``republished``,
        ``running``). Raises only if a message could not be published (the delivery is then not acked)."""
        self.flush_outbox()
        try:
            doc = load_document(raw)
            env = StepEnvelope.open(doc, self.config.controller)
        except EnvelopeError as exc:
            self.refuse(raw, exc.code, str(exc))
            return "refused"
        try:
            host, action, params = self._admit(env)
        except Refused as exc:
            self.refuse(raw, exc.code, exc.reason, env)
            return "refused"
        with self._idle:
            # redelivered while this process still runs it (a step longer than the visibility timeout):
            # wait for that run instead of acking this delivery early, so a kill now still redelivers it
            while env.step_id in self._running:
                if not self._idle.wait(timeout=max(1.0, env.expires_at - self.config.clock())):
                    return "running"
            state, stored = self.config.store.step(env.step_id)
            if state == DONE and stored is not None:
                self.config.publish(stored)  # the same signed result again; the controller de-duplicates
                return "republished"
            self._running.add(env.step_id)
        try:
            self._run(env, host, action, params, verify_first=state == INTENT)
        finally:
            with self._idle:
                self._running.discard(env.step_id)
                self._idle.notify_all()
        return "done"

    def _admit(self, env: StepEnvelope) -> tuple[Host, Any, Any]:
        cfg = self.config
        if env.tenant != cfg.tenant:
            raise Refused("wrong_tenant", f"step for tenant {env.tenant!r} sent to the agent of {cfg.tenant!r}")
        now = cfg.clock()
        if env.expired(now):
            raise Refused("expired", f"envelope expired {int(now - env.expires_at)}s ago")
        if env.not_before > now + MAX_SKEW:
            raise Refused("early", "envelope is not valid yet (clock skew?)")
        host = self._hosts.get(env.host)
        if host is None:
            raise Refused("unknown_host", f"host {env.host!r} is not in tenant {cfg.tenant}'s inventory")
        cls = action_for(env.action, host)
        if cls is None:
            raise Refused("unknown_action", f"no {env.action!r} action for {host.os} hosts over {host.transport}")
        if cls.destructive != env.destructive:
            raise Refused("mismatch", f"{env.action} is {'' if cls.destructive else 'not '}destructive here")
        if env.requires_approval:
            needed = max(env.approvals.required, self.inventory.tenant(cfg.tenant).approvals_required)
            if env.approvals.count < needed:
                raise Refused("approvals", f"{env.approvals.count} of {needed} approvals")
        if cls.destructive and not env.gate:
            raise Refused("gate", "destructive step without the controller's evidence gate")
        try:
            params = cls.Params.model_validate(env.params)
        except ValidationError as exc:
            raise Refused("bad_params", f"parameters: {exc.errors()[0].get('msg', exc)}") from None
        key = f"{cls.__module__}.{cls.__qualname__}"
        with self._lock:
            action = self._actions.setdefault(key, cls())
        return host, action, params

    def _diary(self, case: str) -> Any:
        """The agent's own signed diary of ``case`` (opened once per case; None when disabled)."""
        if not self.config.diary:
            return None
        with self._lock:
            log = self._diaries.get(case)
            if log is None:
                from ir_toolkit.audit.log import AuditLog

                log = AuditLog.open(case, origin=f"{self.config.agent_id}/ir/{case}", signer=self.config.signer)
                self._diaries[case] = log
            return log

    def _pool(self, case: str) -> ConnectionPool:
        with self._lock:
            pool = self._pools.get(case)
            if pool is None:
                make = self.config.pool_factory
                pool = make(self.inventory, case) if make else ConnectionPool(self.inventory, case,
                                                                              timeouts=self.config.timeouts)
                self._pools[case] = pool
                pool.case_key_passphrase = self.config.keys.case_key_passphrase(case)
            return pool

    def _run(self, env: StepEnvelope, host: Host, action: Any, params: Any, *, verify_first: bool) -> None:
        cfg = self.config
        self._send(lambda seq, prev: AgentMessage(
            kind="intent", agent_id=cfg.agent_id, agent_seq=seq, prev_agent_hash=prev, tenant=cfg.tenant,
            step_id=env.step_id, attempt=env.attempt, sent_at=self._now(), host=env.host, item=env.item,
            plan_hash=env.plan_hash, run_id=env.run_id, verify_first=verify_first),
            step_id=env.step_id, state=INTENT, plan_hash=env.plan_hash, attempt=env.attempt)
        started = self._now()
        journal = CollectingJournal(self._diary(env.case))
        outcome, host_key = self._act(env, host, action, params, journal, verify_first)
        if outcome["status"] != "ok":
            try:
                action.on_failed(journal, cfg.actor, host.tenant, host.name, outcome.get("error", ""))
            except Exception:  # noqa: BLE001 - the failure record is best effort; the result says it failed
                pass
        evidence = self._drop(env.case, host)
        records = tuple(r for r in journal.records if not str(r["action"]).startswith(_CONTROLLER_ONLY))
        self._send(lambda seq, prev: AgentMessage(
            kind="result", agent_id=cfg.agent_id, agent_seq=seq, prev_agent_hash=prev, tenant=cfg.tenant,
            step_id=env.step_id, attempt=env.attempt, sent_at=self._now(), host=env.host, item=env.item,
            plan_hash=env.plan_hash, run_id=env.run_id, outcome=outcome, started=started,
            finished=self._now(), host_key_fp=host_key, evidence=evidence, records=records,
            verify_first=verify_first),
            step_id=env.step_id, state=DONE, plan_hash=env.plan_hash, attempt=env.attempt)

    def _act(self, env: StepEnvelope, host: Host, action: Any, params: Any, journal: CollectingJournal,
             verify_first: bool) -> tuple[dict[str, Any], str]:
        left = min(float(env.deadline_s), env.expires_at - self.config.clock())
        deadline = Deadline.after(max(1.0, left))
        pool = self._pool(env.case)
        host_key = ""
        try:
            conn = pool.connection(host, deadline.at)
            host_key = str(getattr(conn, "host_key_fingerprint", "") or "")
            ctx = ActionContext(host, self.inventory, env.case, conn, deadline, journal=journal, pool=pool,
                                actor=self.config.actor, keys=_step_keys(self.config.keys, env))
            if verify_first:
                first: Outcome = action.verify(ctx, params)
                if first.ok:
                    return _outcome("ok", changed=False, summary="already in place (verified first after an "
                                    "unfinished attempt)", verify=first.summary), host_key
            applied: Outcome = action.apply(ctx, params)
            verdict: Outcome = applied if applied.verified else action.verify(ctx, params)
            if not verdict.ok:
                raise ActionFailed(f"verify failed: {verdict.summary}")
        except TransportError as exc:
            pool.drop(host)
            return _outcome("timed_out" if exc.kind == TIMED_OUT else "failed", error=str(exc), kind=exc.kind), host_key
        except ActionFailed as exc:
            return _outcome("failed", error=str(exc)), host_key
        except Exception as exc:  # noqa: BLE001 - a bug in one action is a failed step, not a dead agent
            _log.exception("agent.action_error", host=host.name, action=env.action)
            return _outcome("failed", error=f"internal error: {type(exc).__name__}: {exc}"), host_key
        return _outcome("ok", changed=applied.changed, summary=applied.summary, verify=verdict.summary,
                        details=_jsonable(applied.details)), host_key

    def _drop(self, case: str, host: Host) -> tuple[EvidenceRef, ...]:
        """Every file under the host's evidence/escrow directories, in ``drop/<case>/<path>``, by hash.

        All of them, not only this attempt's: an attempt that died after escrowing or sealing left files
        a later attempt does not change, and the controller must still get them (it skips what it has)."""
        root = CaseLayout.of(case).root
        refs = []
        for rel, (size, mtime) in sorted(_snapshot(case, host).items()):
            src = root / rel
            dst = self.config.drop / case / rel
            cached = self._hashes.get(str(src))
            if cached is not None and cached[:2] == (size, mtime) and dst.exists() and dst.stat().st_size == size:
                refs.append(EvidenceRef(rel, cached[2], size))
                continue
            dst.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            digest = hashlib.sha256()
            tmp = dst.with_name(dst.name + f".tmp-{os.getpid()}")
            copied = 0
            with open(src, "rb") as fin, open(tmp, "wb") as fout:
                for chunk in iter(lambda: fin.read(1 << 20), b""):
                    digest.update(chunk)
                    fout.write(chunk)
                    copied += len(chunk)
                fout.flush()
                os.fsync(fout.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, dst)
            self._hashes[str(src)] = (size, mtime, digest.hexdigest())
            refs.append(EvidenceRef(rel, digest.hexdigest(), copied))
        return tuple(refs)

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        for log in self._diaries.values():
            log.close()


def _outcome(status: str, *, changed: bool = False, summary: str = "", verify: str = "", details: Any = None,
             error: str = "", kind: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"status": status, "changed": changed, "summary": summary, "verify": verify,
                           "attempts": 1}
    if details:
        out["details"] = details
    if error:
        out["error"] = error[:2000]
    if kind:
        out["kind"] = kind
    return out


def host_dirs(case: str, host: Host) -> list[Path]:
    """Where a step leaves files for ``host`` (evidence bundles, directory evidence, escrow entries)."""
    layout = CaseLayout.of(case)
    return [layout.evidence / host.tenant / host.name, layout.escrow / host.tenant / host.name]


def _snapshot(case: str, host: Host) -> dict[str, tuple[int, int]]:
    root = CaseLayout.of(case).root
    out: dict[str, tuple[int, int]] = {}
    for top in host_dirs(case, host):
        if not top.is_dir():
            continue
        for dirpath, _dirs, files in os.walk(top):
            for name in files:
                path = Path(dirpath) / name
                try:
                    st = path.lstat()
                except OSError:
                    continue
                if path.is_symlink() or not path.is_file() or ".tmp" in name:
                    continue
                out[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out
