"""The engine: run a plan across every tenant with waves, deadlines, retries and a resumable journal.

Phases are fleet-wide barriers (all evidence is preserved before anything is
isolated). Within a phase, hosts run in waves on a bounded worker pool; each
host runs its steps in order over its one connection, within a
per-host budget that spans the whole run (``defaults.host_timeout``; every step,
probe, stream and sleep takes what is left of it), enforced by a wave watchdog that
marks an overrunning host ``timed_out`` and closes its connection so the barrier
moves on. Every step's intent is written durably to the audit log
before it runs and its result after, so ``irkit resume`` can finish exactly the
steps that did not finish.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import resource
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ir_toolkit.actions.base import (
    DESTROYS_CREDENTIALS,
    DESTROYS_NETWORK,
    Action,
    AccessProofs,
    ActionContext,
    ActionFailed,
    Outcome,
    action_for,
)
from ir_toolkit.actor import system_actor
from ir_toolkit.audit import events
from ir_toolkit.audit.journal import Journal, JournalReadOnly, ReadOnlyJournal
from ir_toolkit.deadline import Deadline
from ir_toolkit.errors import InputError
from ir_toolkit.facts.batch import FactMemo
from ir_toolkit.inventory.model import Host, Inventory
from ir_toolkit.log import get_logger
from ir_toolkit.playbook.gate import EvidenceGate, GateDecision, evidence_gate, refusal, required_kind
from ir_toolkit.playbook.milestones import Milestones, audit_params
from ir_toolkit.playbook.plan import Plan, PlanItem, file_sha256, item_id, plan_params, wire_params
from ir_toolkit.playbook.schema import LoadedPlaybook, Phase
from ir_toolkit.playbook.targets import make_waves, select_hosts
from ir_toolkit.secrets.keyprovider import KeyProvider
from ir_toolkit.transports.base import TIMED_OUT, TransportError
from ir_toolkit.transports.pool import ConnectionPool
from ir_toolkit.transports.retry import RetryPolicy, transient

# Host / step statuses.
OK = "ok"
FAILED = "failed"
TIMED_OUT_STATUS = "timed_out"
SKIPPED = "skipped"
STATUSES = (OK, FAILED, TIMED_OUT_STATUS, SKIPPED)

DEFAULT_FORKS = 100
_log = get_logger("engine")


EventSink = Callable[[str, dict[str, Any]], None]


class RemoteSteps(Protocol):
    """Runs the steps of agent-served tenants (``ir_toolkit.agents.dispatch.AgentDispatcher``): the engine
    hands it a step and gets back the outcome its agent reported, already recorded in the audit log."""

    def serves(self, tenant: str) -> bool: ...

    def offline(self, tenant: str) -> bool: ...

    def run_step(self, item: PlanItem, params: dict[str, Any], *, step_timeout: float, wait: float, wave: int,
                 approvals: tuple[int, int], gate: str) -> dict[str, Any]: ...


def raise_fd_limit() -> None:
    """Hundreds of concurrent connections need more than the default 1024 descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class HostResult:
    host: str
    tenant: str
    status: str = OK
    changed: int = 0
    message: str = ""


@dataclass
class RunSummary:
    hosts: dict[str, HostResult] = field(default_factory=dict)
    incomplete: bool = False
    reason: str = ""
    #: what steps reported for people to act on (``Outcome.details["report"]``), e.g. the privileged sweep's
    findings: list[dict[str, Any]] = field(default_factory=list)
    #: time to isolation and to full containment (playbook/milestones.py)
    milestones: Milestones = field(default_factory=Milestones)

    def figures(self) -> dict[str, Any]:
        return self.milestones.figures()

    def per_tenant(self) -> dict[str, Counter[str]]:
        table: dict[str, Counter[str]] = {}
        for result in self.hosts.values():
            table.setdefault(result.tenant, Counter())[result.status] += 1
        return table

    @property
    def all_ok(self) -> bool:
        return not self.incomplete and all(r.status == OK for r in self.hosts.values())


def actor_name() -> str:
    """Who runs irkit (:func:`ir_toolkit.actor.system_actor`)."""
    return system_actor()


# --------------------------------------------------------------------------- planning


#: the prediction of an item that was not inspected (``inspect=False``)
NOT_INSPECTED = ("not inspected: nobody reads this plan before it runs (--yes); the step reads the host when it "
                 "runs (irkit plan or --dry-run shows what would change)")


def build_plan(loaded: LoadedPlaybook, inventory: Inventory, inventory_path: str, case_id: str, pool: ConnectionPool,
               *, forks: int = DEFAULT_FORKS, on_event: EventSink | None = None, actor: str | None = None,
               preview: bool = True, inspect: bool = True) -> Plan:
    """Inspect every targeted host with each step's ``plan`` and return the (unsaved) plan.

    ``preview`` False (``contain --yes``: nobody reads the plan before it runs) lets actions skip
    costly previews that change nothing (Ansible's check mode); their items say so.

    ``inspect`` False (``--yes`` and no tenant needs another approver's signature on this plan): no host
    is asked anything; every item says :data:`NOT_INSPECTED` (``changed`` None, ``inspected`` False). The
    items, their parameters and the plan's hash are the same as with inspection; every step reads the
    host's state itself when it runs (apply is idempotent and decides from what it reads then).

    Actions plan with a read-only journal and locked keys: a plan that tries to write the
    audit log gets its item marked unknown (``error: plan_wrote``), and nothing is written.
    """
    raise_fd_limit()
    playbook = loaded.playbook
    rows: list[tuple[PlanItem, Action, Any]] = []
    per_host: dict[str, list[int]] = {}
    for pi, phase in enumerate(playbook.phases):
        for si, step in enumerate(phase.steps):
            for host in select_hosts(inventory, step.targets):
                action_cls = action_for(step.action, host)
                if action_cls is None:
                    continue
                params = loaded.step_params(pi, si, action_cls)
                item = PlanItem(
                    id=item_id(phase.name, si, host.name), phase=phase.name, phase_index=pi, step=step.name,
                    step_index=si, tenant=host.tenant, host=host.name, action=step.action,
                    params=plan_params(params), requires_approval=step.requires_approval,
                    destructive=action_cls.destructive,
                )
                per_host.setdefault(host.name, []).append(len(rows))
                rows.append((item, action_cls(), params))
    hosts = {h.name: h for h in inventory.targets()}
    changes: dict[int, dict[str, Any]] = {}
    journal = ReadOnlyJournal()
    keys = KeyProvider.locked()
    who = actor or actor_name()

    def inspect_host(host_name: str) -> None:
        host = hosts[host_name]
        if not inspect:
            for row in per_host[host_name]:
                changes[row] = {"changed": None, "summary": NOT_INSPECTED, "inspected": False}
            if on_event:
                on_event("planned", {"host": host_name, "tenant": host.tenant})
            return
        if inventory.tenant(host.tenant).agent is not None:  # unreachable from here: its agent acts at run time
            for row in per_host[host_name]:
                changes[row] = {"changed": None, "summary": "served by the tenant's agent (inspected when it runs)"}
            return
        deadline = Deadline.after(playbook.defaults.host_timeout)
        try:
            conn = pool.connection(host, deadline.at)
        except TransportError as exc:
            for row in per_host[host_name]:
                changes[row] = {"changed": None, "summary": f"unknown: {exc}", "error": exc.kind}
            return
        #: (action variant, params it plans with) -> the first row planning it on this host: a step
        #: repeated later (the verify phase) would inspect the same, unchanged state again
        first: dict[tuple[str, str], int] = {}
        same_as: dict[int, int] = {}
        #: the host's answers while it is planned (nothing changes meanwhile): a fact two steps read is
        #: asked once, and the facts the steps name in ``plan_facts`` are asked in one command first
        facts = FactMemo()
        todo: list[tuple[int, ActionContext]] = []
        for row in per_host[host_name]:
            item, action, params = rows[row]
            memo = (f"{type(action).__module__}.{type(action).__qualname__}",
                    json.dumps(params.model_dump(mode="json", exclude=set(action.plan_ignores)), sort_keys=True,
                               default=str))
            if memo in first:
                same_as[row] = first[memo]
                continue
            first[memo] = row
            step = playbook.phases[item.phase_index].steps[item.step_index]
            todo.append((row, ActionContext(host, inventory, case_id, conn,
                                            deadline.child(playbook.step_timeout(step)), journal=journal, pool=pool,
                                            actor=who, keys=keys, planning=True, preview=preview, memo=facts)))
        wanted: list[Any] = []
        for row, ctx in todo:
            try:
                wanted.extend(rows[row][1].plan_facts(ctx, rows[row][2]))
            except (ActionFailed, ValueError):
                pass  # the step's plan says why
        if wanted:
            ctx = todo[0][1]
            try:
                facts.prefetch(ctx, wanted, timeout=max(1.0, min(60.0, ctx.remaining())))
            except TransportError:
                pass  # each fact is asked alone below, and fails there with its own message
            if facts.batch_refused:
                _log.debug("plan.batch_refused", host=host_name, reason=facts.batch_refused[:200])
        for row, ctx in todo:
            item, action, params = rows[row]
            try:
                outcome = action.plan(ctx, params)
                changes[row] = {"changed": outcome.changed, "summary": outcome.summary}
                if outcome.changed and isinstance(outcome.details.get("diff"), str) and outcome.details["diff"]:
                    changes[row]["diff"] = outcome.details["diff"][:4000]  # e.g. Ansible's --check --diff
            except (TransportError, ActionFailed) as exc:
                changes[row] = {"changed": None, "summary": f"unknown: {exc}",
                                "error": getattr(exc, "kind", "failed")}
            except JournalReadOnly as exc:
                changes[row] = {"changed": None, "summary": f"unknown: {exc}", "error": "plan_wrote"}
        for row, earlier in same_as.items():
            changes[row] = dict(changes[earlier])
        if on_event:
            on_event("planned", {"host": host_name, "tenant": host.tenant})

    if not inspect:
        for host_name in per_host:
            inspect_host(host_name)
    else:
        with ThreadPoolExecutor(max_workers=max(1, min(forks, len(per_host) or 1))) as executor:
            list(executor.map(inspect_host, list(per_host)))
    items = [dataclasses.replace(item, change=changes.get(row, {})) for row, (item, _, _) in enumerate(rows)]
    return Plan(
        case=case_id, msp=inventory.msp.name,
        playbook_path=str(loaded.path), playbook_sha256=file_sha256(loaded.path),
        inventory_path=str(inventory_path), inventory_sha256=file_sha256(Path(inventory_path)),
        items=items,
    )


# --------------------------------------------------------------------------- execution


@dataclass
class EngineOptions:
    forks: int = DEFAULT_FORKS
    actor: str = field(default_factory=actor_name)
    #: ids of items already finished (resume)
    finished: set[str] = field(default_factory=set)
    #: tenant -> approvals in hand (the responder's own confirmation counts as one)
    approvals: dict[str, int] = field(default_factory=dict)
    #: the destructive-step gate; None = the default, the case's evidence (see playbook/gate.py)
    evidence_gate: EvidenceGate | None = None
    #: the responder's keys, unlocked once by the run service (locked: public keys only)
    keys: KeyProvider = field(default_factory=KeyProvider.locked)
    #: agent-served tenants' steps go here instead of running locally (docs/agents.md)
    remote: RemoteSteps | None = None


class Engine:
    """Execute one plan. Create, then call :meth:`run`; :meth:`cancel` stops between steps."""

    def __init__(self, plan: Plan, loaded: LoadedPlaybook, inventory: Inventory, journal: Journal, pool: ConnectionPool,
                 options: EngineOptions | None = None, on_event: EventSink | None = None) -> None:
        self.plan = plan
        self.loaded = loaded
        self.playbook = loaded.playbook
        self.inventory = inventory
        self.journal = journal
        self.pool = pool
        self.options = options or EngineOptions()
        #: on by default: destructive steps need the host's verified evidence (or an audited override)
        self.gate: EvidenceGate = self.options.evidence_gate or evidence_gate(plan.case)
        self.on_event = on_event or (lambda kind, data: None)
        self._cancel = threading.Event()
        self._hosts = {h.name: h for h in inventory.targets()}
        self.summary = RunSummary()
        self._tenant_stopped: set[str] = set()
        #: hosts held back (missing approvals, a safety stop): their steps stay pending for `resume`
        self._held: set[str] = set()
        #: a wave went over max_fail_percentage: no further waves or phases
        self._stopped = False
        #: set when the journal's disk filled up; the run stops and the error is raised at the end
        self.disk_full: OSError | None = None
        self._actions: dict[str, Action] = {}
        #: host -> the transport failure kind that ended it (for the host.done event)
        self._kinds: dict[str, str] = {}
        #: per host: (phase index, its proofs of responder access in that phase) - see AccessProofs
        self._proofs: dict[str, tuple[int, AccessProofs]] = {}
        self._lock = threading.Lock()
        #: host -> the deadline of its current phase (what is left of its budget when the phase began)
        self._deadlines: dict[str, Deadline] = {}
        #: host -> seconds of its budget used by earlier phases (phases do not reset the budget)
        self._used: dict[str, float] = {}
        #: hosts the wave watchdog gave up on (their late results are ignored)
        self._abandoned: set[str] = set()
        #: seconds past a host's budget before the watchdog steps in
        self.watchdog_grace = 5.0
        #: host -> its wave (1-based) in the current phase; recorded with each step (the report's timeline)
        self._wave_of: dict[str, int] = {}
        #: the run's start (monotonic): time to isolation and to full containment count from here
        self._t0 = time.monotonic()

    def cancel(self) -> None:
        self._cancel.set()

    def _action(self, name: str, host: Host) -> Action:
        cls = action_for(name, host)
        if cls is None:
            raise ActionFailed(f"no {name!r} action for {host.os} hosts over {host.transport}")
        key = f"{cls.__module__}.{cls.__qualname__}"
        if key not in self._actions:
            self._actions[key] = cls()
        return self._actions[key]

    def _record(self, action: str, item: PlanItem | None = None, *, host: str | None = None, tenant: str | None = None,
                params: dict | None = None, outcome: str = "ok") -> None:
        fields = {**({"item": item.id, "step_action": item.action} if item else {}), **(params or {})}
        if item is not None and item.host in self._wave_of:
            fields.setdefault("wave", self._wave_of[item.host])
        where = {"tenant": item.tenant if item else tenant, "host": item.host if item else host}
        seq = self.journal.append_durable(action=action, actor=self.options.actor, params=fields, outcome=outcome,
                                          **where)
        level = "debug" if action == "step.start" else "info" if outcome in ("ok", "intent") else "warning"
        getattr(_log, level)(action, seq=seq, outcome=outcome, **where, **fields)

    def _isolates(self, action_name: str, host_name: str) -> bool:
        host = self._hosts.get(host_name)
        cls = action_for(action_name, host) if host is not None else None
        return cls is not None and cls.destructive and cls.destroys == DESTROYS_NETWORK

    def _plan_milestones(self) -> None:
        """Which items make each host isolated / fully contained: the first run of each destructive action."""
        seen: set[tuple[str, str]] = set()
        for item in sorted(self.plan.items, key=lambda i: (i.phase_index, i.step_index)):
            if not item.destructive or (item.host, item.action) in seen:
                continue
            seen.add((item.host, item.action))
            if item.id not in self.options.finished:
                self.summary.milestones.plan(item.host, item.tenant, item.id,
                                             isolates=self._isolates(item.action, item.host))

    def _milestone(self, host: Host, item: PlanItem) -> None:
        if not item.destructive:
            return
        seconds = time.monotonic() - self._t0
        isolated, contained = self.summary.milestones.done(host.name, item.id, seconds,
                                                           isolates=self._isolates(item.action, host.name))
        if isolated:
            self.on_event("host.isolated", {"host": host.name, "tenant": host.tenant, "seconds": seconds})
        if contained:
            self.on_event("host.contained", {"host": host.name, "tenant": host.tenant, "seconds": seconds})

    def run(self) -> RunSummary:
        raise_fd_limit()
        self._t0 = time.monotonic()
        for item in self.plan.items:
            self.summary.hosts.setdefault(item.host, HostResult(item.host, item.tenant))
        self._plan_milestones()
        self.on_event("figures", self.summary.figures())
        self._record(events.RUN_START, params={"plan": self.plan.hash, "playbook": self.playbook.name,
                                          "resumed": bool(self.options.finished)})
        try:
            for pi, phase in enumerate(self.playbook.phases):
                if self._cancel.is_set() or self._stopped:
                    break
                self._run_phase(pi, phase)
        finally:
            status = "incomplete" if (self.summary.incomplete or self._cancel.is_set()) else "done"
            if self._cancel.is_set() and not self.summary.incomplete:
                self.summary.incomplete, self.summary.reason = True, "interrupted"
            counts = Counter(r.status for r in self.summary.hosts.values())
            self.pool.close()
            if self.disk_full is None:
                self._record(events.RUN_END, params={"plan": self.plan.hash, "status": status, **dict(counts),
                                                     **audit_params(self.summary.figures())},
                             outcome="ok" if self.summary.all_ok else status if status == "incomplete" else "failed")
                self.journal.checkpoint()
        if self.disk_full is not None:
            raise self.disk_full
        return self.summary

    def _run_phase(self, pi: int, phase: Phase) -> None:
        items_by_host: dict[str, list[PlanItem]] = {}
        for item in self.plan.items:
            if item.phase_index == pi:
                items_by_host.setdefault(item.host, []).append(item)
        hosts = [self._hosts[name] for name in items_by_host if name in self._hosts]
        runnable = [h for h in hosts if self.summary.hosts[h.name].status == OK]
        for host in hosts:
            if host not in runnable and host.name not in self._held:
                self._skip(items_by_host[host.name], f"host already {self.summary.hosts[host.name].status}")
        waves = make_waves(runnable, phase.wave)
        self.on_event("phase.start", {"phase": phase.name, "hosts": len(runnable), "waves": len(waves)})
        for wi, wave in enumerate(waves):
            if self._cancel.is_set():
                return
            for host in wave:
                if host.tenant in self._tenant_stopped:
                    self._hold(host, f"not started: tenant {host.tenant} went over tenant_max_fail_percentage")
            wave = [h for h in wave if h.tenant not in self._tenant_stopped]
            self._wave_of.update((h.name, wi + 1) for h in wave)
            results = self._run_wave(phase, wave, items_by_host)
            failed = sum(1 for s in results.values() if s in (FAILED, TIMED_OUT_STATUS))
            if wave and failed * 100 / len(wave) > phase.max_fail_percentage:
                self._stopped = True
                self.summary.incomplete = True
                self.summary.reason = (f"phase {phase.name} wave {wi + 1}: {failed}/{len(wave)} hosts failed, over "
                                       f"max_fail_percentage {phase.max_fail_percentage:g}")
                self._record(events.RUN_STOPPED, params={"phase": phase.name, "wave": wi + 1, "reason": self.summary.reason},
                             outcome="stopped")
                self.on_event("stopped", {"reason": self.summary.reason})
                for later in waves[wi + 1:]:
                    for host in later:
                        self._hold(host, "not started: the run stopped (max_fail_percentage)")
                return
            self._check_tenants(phase, hosts)
        self.on_event("phase.end", {"phase": phase.name, "figures": self.summary.figures()})

    def _check_tenants(self, phase: Phase, hosts: list[Host]) -> None:
        by_tenant: dict[str, list[str]] = {}
        for host in hosts:
            by_tenant.setdefault(host.tenant, []).append(self.summary.hosts[host.name].status)
        for tenant, statuses in by_tenant.items():
            bad = sum(1 for s in statuses if s in (FAILED, TIMED_OUT_STATUS))
            if tenant not in self._tenant_stopped and bad * 100 / len(statuses) > phase.tenant_max_fail_percentage:
                self._tenant_stopped.add(tenant)
                self._record(events.TENANT_STOPPED, tenant=tenant, outcome="stopped",
                             params={"phase": phase.name, "failed": bad, "hosts": len(statuses)})

    def _run_wave(self, phase: Phase, wave: list[Host], items_by_host: dict[str, list[PlanItem]]) -> dict[str, str]:
        limits = {group: threading.Semaphore(n) for group, n in phase.max_concurrent.items()}
        tenant_limits: dict[tuple[str, str], threading.Semaphore] = {}
        lock = threading.Lock()

        def guarded(host: Host) -> str:
            sems = []
            for group in host.groups:
                if group in limits:
                    with lock:
                        sem = tenant_limits.setdefault((host.tenant, group),
                                                       threading.Semaphore(phase.max_concurrent[group]))
                    sems.append(sem)
            for sem in sems:
                sem.acquire()
            try:
                return self._run_host(host, items_by_host[host.name])
            finally:
                for sem in sems:
                    sem.release()

        results: dict[str, str] = {}
        workers = max(1, min(self.options.forks, len(wave) or 1))
        executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="irkit-host")
        abandoned = False
        try:
            futures: dict[Future[str], Host] = {executor.submit(guarded, host): host for host in wave}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=min(0.5, self.watchdog_grace), return_when=FIRST_COMPLETED)
                for fut in list(pending):  # the wave watchdog: a host past its budget does not hold the barrier
                    host = futures[fut]
                    if self._overran(host):
                        pending.discard(fut)
                        results[host.name] = TIMED_OUT_STATUS
                        abandoned = True
                for fut in done:
                    host = futures[fut]
                    try:
                        results[host.name] = fut.result()
                    except OSError as exc:
                        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                            self._set(host, FAILED, f"internal error: {type(exc).__name__}: {exc}")
                        else:  # the journal cannot be written: stop everything, resume later
                            self._set(host, FAILED, "disk full: the journal could not be written")
                            self.disk_full = exc
                            self.cancel()
                        results[host.name] = FAILED
                    except Exception as exc:  # noqa: BLE001 - a bug in one action must not stop the fleet
                        self._set(host, FAILED, f"internal error: {type(exc).__name__}: {exc}")
                        results[host.name] = FAILED
        finally:
            # an abandoned worker may still be blocked in a call that ignores its deadline: do not wait for it
            executor.shutdown(wait=not abandoned, cancel_futures=abandoned)
        return results

    def _host_deadline(self, host: Host) -> Deadline:
        """What is left of the host's budget for the whole run: ``defaults.host_timeout`` of its own working
        time, summed over phases (time spent waiting at phase barriers for other hosts is not counted)."""
        with self._lock:
            left = self.playbook.defaults.host_timeout - self._used.get(host.name, 0.0)
            deadline = self._deadlines[host.name] = Deadline.after(left)
            return deadline

    def _overran(self, host: Host) -> bool:
        """Watchdog: past the budget (and a grace for well-behaved code to time out by itself), the host is
        ``timed_out``: its deadline is cancelled (sleeps wake, commands refuse) and its connection closed
        (blocked reads fail), and the wave moves on without it."""
        with self._lock:
            deadline = self._deadlines.get(host.name)
            if deadline is None or host.name in self._abandoned or deadline.at + self.watchdog_grace > time.monotonic():
                return False
            self._abandoned.add(host.name)
        deadline.cancel()
        try:
            self.pool.drop(host)
        except Exception:  # noqa: BLE001 - closing a wedged connection must not stop the run
            pass
        message = (f"{host.name}: over its host budget ({self.playbook.defaults.host_timeout:g}s); the watchdog "
                   "closed its connection")
        self._record(events.HOST_TIMED_OUT, host=host.name, tenant=host.tenant, outcome=TIMED_OUT_STATUS,
                     params={"reason": message, "host_timeout": str(self.playbook.defaults.host_timeout)})
        result = self.summary.hosts[host.name]
        result.status, result.message = TIMED_OUT_STATUS, message
        self.on_event("host.done", {"host": host.name, "tenant": host.tenant, "status": TIMED_OUT_STATUS,
                                    "message": message, "kind": TIMED_OUT})
        return True

    def _hold(self, host: Host, reason: str) -> None:
        """Leave a host's steps pending (not skipped): ``irkit resume`` runs them later."""
        self._held.add(host.name)
        self.summary.incomplete = True
        self._set(host, SKIPPED, reason)

    def _failed(self, action: Action, item: PlanItem, error: str) -> None:
        """The action's own record of a failed step (e.g. triage's ``evidence.collection_failed``)."""
        action.on_failed(self.journal, self.options.actor, item.tenant, item.host, error)

    def _set(self, host: Host, status: str, message: str = "") -> None:
        if host.name in self._abandoned:
            return  # the watchdog already marked it timed_out; a late worker does not overwrite that
        result = self.summary.hosts[host.name]
        result.status, result.message = status, message
        self.on_event("host.done", {"host": host.name, "tenant": host.tenant, "status": status, "message": message,
                                    "kind": self._kinds.get(host.name) if status != OK else None})

    def _skip(self, items: Iterable[PlanItem], reason: str) -> None:
        for item in items:
            if item.id not in self.options.finished:
                self._record(events.STEP_SKIPPED, item, params={"reason": reason}, outcome="skipped")

    def _run_host(self, host: Host, items: list[PlanItem]) -> str:
        started = time.monotonic()
        try:
            return self._run_host_items(host, items, self._host_deadline(host))
        finally:
            with self._lock:
                self._used[host.name] = self._used.get(host.name, 0.0) + time.monotonic() - started
                # not working any more: the watchdog must not judge the host, queued for a worker in a
                # later phase, by this phase's deadline (the next phase gives it a fresh one)
                self._deadlines.pop(host.name, None)

    def _run_host_items(self, host: Host, items: list[PlanItem], deadline: Deadline) -> str:
        todo = [item for item in items if item.id not in self.options.finished]
        if not todo:
            self.on_event("host.done", {"host": host.name, "tenant": host.tenant, "status": OK, "message": "already done"})
            return OK
        for index, item in enumerate(todo):
            if self._cancel.is_set() or host.name in self._abandoned:
                return self.summary.hosts[host.name].status
            status, message = self._run_item(host, item, deadline)
            if status != OK:
                self._set(host, status, message)
                if host.name in self._held:
                    return status  # not skipped: pending until the approvals arrive
                self._skip(todo[index + 1:], f"earlier step {item.id} {status}")
                return status
        self._set(host, OK, self.summary.hosts[host.name].message)
        return OK

    def _run_item(self, host: Host, item: PlanItem, deadline: Deadline) -> tuple[str, str]:
        step = self.playbook.phases[item.phase_index].steps[item.step_index]
        action = self._action(item.action, host)
        params = self.loaded.step_params(item.phase_index, item.step_index, type(action))
        if item.requires_approval:
            needed = self.inventory.tenant(host.tenant).approvals_required
            have = self.options.approvals.get(host.tenant, 0)
            if have < needed:
                msg = f"awaiting approval: {have} of {needed} approvals for tenant {host.tenant}"
                self._record(events.STEP_REFUSED, item, params={"reason": msg}, outcome="refused")
                self._held.add(host.name)
                self.summary.incomplete = True
                self.summary.reason = "steps await approvals (irkit approve PLAN --as NAME, then irkit resume)"
                return SKIPPED, msg
        remote = self.options.remote
        if remote is not None and remote.serves(host.tenant) and remote.offline(host.tenant):
            msg = (f"offline tenant {host.tenant}: its steps go by file (irkit plan export --tenant {host.tenant}, "
                   "then irkit results import)")
            self._record(events.STEP_REFUSED, item, params={"reason": msg}, outcome="refused")
            self._held.add(host.name)
            self.summary.incomplete = True
            return SKIPPED, msg
        if action.destructive:
            destroys = action.destroys or DESTROYS_CREDENTIALS
            decision = self.gate(host.tenant, host.name, destroys)
            if not isinstance(decision, GateDecision):  # a plain predicate (tests, embedders)
                decision = GateDecision(bool(decision), required_kind(destroys), destroys,
                                        "the run's evidence gate said no")
            if not decision:
                gate_params = {"destroys": decision.destroys, "needs": decision.needs}
                if not step.evidence_override:
                    msg = refusal(host.name, item.action, decision)
                    self._record(events.STEP_REFUSED, item, params={"reason": msg, **gate_params},
                                 outcome="refused")
                    return FAILED, msg
                self._record(events.GATE_OVERRIDE, item, params={"reason": step.evidence_override, **gate_params})
        retries = self.playbook.step_retries(step)
        timeout = self.playbook.step_timeout(step)
        self._record(events.STEP_START, item, outcome="intent")
        if remote is not None and remote.serves(host.tenant):
            gate = ""
            if action.destructive:  # the gate above passed, or its override was recorded
                gate = "evidence" if decision else f"override: {step.evidence_override}"
            return self._run_remote(remote, host, item, params, timeout, deadline, gate)
        attempt = 0
        proofs = self._host_proofs(host, item)
        while True:
            attempt += 1
            step_deadline = deadline.child(timeout)
            try:
                conn = self.pool.connection(host, step_deadline.at)
                ctx = ActionContext(host, self.inventory, self.plan.case, conn, step_deadline, journal=self.journal,
                                    pool=self.pool, actor=self.options.actor, keys=self.options.keys,
                                    step_facts=FactMemo() if action.reuses_facts else None, proofs=proofs)
                proofs.reusable = False
                try:
                    applied: Outcome = action.apply(ctx, params)
                    if applied.changed and not action.reuses_facts:
                        # a change that may not have gone through ctx.run (which forgets the proofs itself):
                        # what was proven before it proves nothing about after it
                        proofs.forget()
                    # a proof of access still known was made after the last command that could change the host
                    proofs.reusable = True
                    verdict: Outcome = applied if applied.verified else action.verify(ctx, params)
                finally:
                    proofs.reusable = False
                if not verdict.ok:
                    raise ActionFailed(f"verify failed: {verdict.summary}")
            except TransportError as exc:
                proofs.forget()  # a failed step may have changed anything
                status = TIMED_OUT_STATUS if exc.kind == TIMED_OUT else FAILED
                if transient(exc) and action.retry_safe and attempt <= retries and not deadline.expired:
                    self.pool.drop(host)
                    deadline.sleep(RetryPolicy(retries, base=0.25, jitter=False).pause(attempt))
                    continue
                self.pool.drop(host)
                self._record(events.STEP_DONE, item, params={"error": str(exc), "kind": exc.kind, "attempts": attempt},
                             outcome=status)
                self._failed(action, item, f"{exc.kind}: {exc}")
                self._kinds[host.name] = exc.kind
                return status, str(exc)
            except ActionFailed as exc:
                proofs.forget()
                self._record(events.STEP_DONE, item, params={"error": str(exc), "attempts": attempt}, outcome=FAILED)
                self._failed(action, item, str(exc))
                return FAILED, str(exc)
            self._record(events.STEP_DONE, item, outcome=OK, params={
                "changed": applied.changed, "summary": applied.summary, "verify": verdict.summary,
                "details": applied.details, "attempts": attempt})
            if applied.changed:
                self.summary.hosts[host.name].changed += 1
            self._milestone(host, item)
            for line in applied.details.get("report", []) if isinstance(applied.details, dict) else []:
                self.summary.findings.append({"tenant": host.tenant, "host": host.name, "step": item.step,
                                              "finding": str(line)})
            self.on_event("step.done", {"host": host.name, "tenant": host.tenant, "item": item.id,
                                        "action": item.action, "details": applied.details,
                                        "changed": applied.changed, "summary": applied.summary})
            return OK, ""

    def _host_proofs(self, host: Host, item: PlanItem) -> AccessProofs:
        """The host's proofs of responder access in ``item``'s phase (a new phase starts with none)."""
        with self._lock:
            known = self._proofs.get(host.name)
            if known is None or known[0] != item.phase_index:
                known = (item.phase_index, AccessProofs())
                self._proofs[host.name] = known
        proofs = known[1]
        proofs.step = item.id
        return proofs

    def _run_remote(self, remote: RemoteSteps, host: Host, item: PlanItem, params: Any, timeout: float,
                    deadline: Deadline, gate: str) -> tuple[str, str]:
        """The step on the tenant's agent: wait for its outcome (within the host's budget), record it."""
        needed = self.inventory.tenant(host.tenant).approvals_required
        try:
            wired = wire_params(params)
        except InputError as exc:
            self._record(events.STEP_DONE, item, params={"error": str(exc)}, outcome=FAILED)
            return FAILED, str(exc)
        result = remote.run_step(item, wired, step_timeout=min(timeout, deadline.remaining()),
                                 wait=max(1.0, deadline.remaining()), wave=self._wave_of.get(host.name, 1),
                                 approvals=(self.options.approvals.get(host.tenant, 0), needed), gate=gate)
        status = result.get("status")
        status = status if status in (OK, FAILED, TIMED_OUT_STATUS) else FAILED
        fields = {k: result[k] for k in ("changed", "summary", "verify", "details", "attempts", "error", "kind")
                  if k in result}
        self._record(events.STEP_DONE, item, params=fields, outcome=status)
        if status != OK:
            if result.get("kind"):
                self._kinds[host.name] = str(result["kind"])
            return status, str(result.get("error", status))
        raw = result.get("details")
        details: dict[str, Any] = raw if isinstance(raw, dict) else {}
        if result.get("changed"):
            self.summary.hosts[host.name].changed += 1
        for line in details.get("report", []) if isinstance(details.get("report"), list) else []:
            self.summary.findings.append({"tenant": host.tenant, "host": host.name, "step": item.step,
                                          "finding": str(line)})
        self.on_event("step.done", {"host": host.name, "tenant": host.tenant, "item": item.id, "action": item.action,
                                    "details": details, "changed": bool(result.get("changed")),
                                    "summary": str(result.get("summary", ""))})
        return OK, ""
