"""The application service: plan -> approvals -> execute -> resume, for every command that runs a playbook.

``plan``, ``apply``, ``resume``, ``contain``, ``rotate``, ``isolate`` and ``reimage`` all
come through here. Nothing in ``run/`` prints or prompts: progress and notices are
*events* (``frontend.event(kind, data)``, kinds listed below) that the caller renders, and
the responder's confirmation is ``frontend.confirm(plan)``. The CLI's renderer is
``ir_toolkit.cli.frontend.CliFrontend``.

Events (besides the engine's own ``phase.start``, ``phase.end``, ``host.done``, ``step.done``, ``stopped``,
``planned``, and ``figures`` / ``host.isolated`` / ``host.contained`` for the time to isolation and to full
containment, playbook/milestones.py):

``planning``          {"playbook": name, "hosts": n}          before hosts are inspected
``planning.done``     {}                                      after (also on failure)
``approvals.waiting`` {"missing": {tenant: n}, "plan_path": p}
``approval.ignored``  {"problem": text}
``run.begin``         {"plan": hash}                          the engine starts (live display on)
``run.finish``        {}                                      the engine stopped (live display off)
``signal``            {"signal": "interrupt"|"terminate", "presses": n}
``dry_run``           {}                                      nothing was changed
``no_match``          {}                                      the plan has no steps
``incomplete``        {"case": id}                            the run can be finished by resume
``resume.complete``   {"case": id, "plan": hash}              nothing left to resume
``resume.start``      {"plan": hash, "todo": n, "total": m}
"""

from __future__ import annotations

import datetime as dt
import signal
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from ir_toolkit import log
from ir_toolkit.errors import EXIT_FAILED, EXIT_INCOMPLETE, EXIT_OK, InputError
from ir_toolkit.home import case_dir
from ir_toolkit.inventory import Inventory, load_inventory, resolve_inventory_path
from ir_toolkit.playbook.approvals import valid_approvals
from ir_toolkit.playbook.engine import Engine, EngineOptions, RunSummary, actor_name, build_plan
from ir_toolkit.playbook.journal import journal_state, plan_path_for
from ir_toolkit.playbook.plan import Plan, file_sha256, load_plan
from ir_toolkit.playbook.schema import LoadedPlaybook, load_playbook
from ir_toolkit.secrets.keyprovider import KeyProvider
from ir_toolkit.transports.base import Timeouts
from ir_toolkit.transports.pool import ConnectionPool


class Frontend(Protocol):
    """What a caller of the service supplies: an event sink, the plan view, the confirmation, the summary."""

    def event(self, kind: str, data: dict[str, Any]) -> None: ...

    def show_plan(self, plan: Plan, *, dry_run: bool) -> None: ...

    def confirm(self, plan: Plan) -> bool: ...

    def show_summary(self, summary: RunSummary) -> None: ...


class QuietFrontend:
    """A frontend that shows nothing, records the events and confirms only when told to (tests, embedding)."""

    def __init__(self, *, yes: bool = False) -> None:
        self.yes = yes
        self.events: list[tuple[str, dict[str, Any]]] = []

    def event(self, kind: str, data: dict[str, Any]) -> None:
        self.events.append((kind, data))

    def show_plan(self, plan: Plan, *, dry_run: bool) -> None:
        return None

    def confirm(self, plan: Plan) -> bool:
        return self.yes

    def show_summary(self, summary: RunSummary) -> None:
        return None


def new_case_id() -> str:
    return "IR-" + dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")


def start_case_logging(case_id: str, verbosity: int = 0) -> Path:
    path = log.run_log_path(case_dir(case_id, create=True))
    log.configure(json_path=path, verbosity=verbosity)
    return path


def open_journal(case_id: str, msp: str, keys: KeyProvider | None = None) -> Any:
    """The case's audit log, opened for writing with the responder's signing key."""
    from ir_toolkit.audit.log import AuditLog

    keys = keys or KeyProvider.unlock()
    return AuditLog.open(case_id, origin=f"{msp}/ir/{case_id}", signer=keys.signer())


def journal_actor() -> str:
    return actor_name()


def make_pool(inventory: Inventory, case_id: str, loaded: LoadedPlaybook) -> ConnectionPool:
    """A pool whose connect/banner/auth deadlines come from the playbook's defaults."""
    limit = loaded.playbook.defaults.connect_timeout
    return ConnectionPool(inventory, case_id, timeouts=Timeouts(connect=limit, banner=limit, auth=max(limit, 15.0),
                                                                command=loaded.playbook.defaults.timeout))


def _noop(kind: str, data: dict[str, Any]) -> None:
    return None


def make_plan(msp: str | None, inventory_path: str | None, playbook_path: str, case_id: str, *,
              forks: int, keep_pool: bool = False, frontend: Frontend | None = None, preview: bool = True,
              inspect_unread: bool = True) -> tuple[Plan, LoadedPlaybook, Inventory, ConnectionPool | None]:
    """Plan a playbook; with ``keep_pool`` the open connections are returned for the apply that follows.

    ``inspect_unread`` False (``--yes``): when nobody reads the plan before it runs - no preview, and no
    tenant of the plan needs another approver's signature (``approvals_required`` 1) - the hosts are not
    inspected at plan time (each step reads its host when it runs; see ``build_plan``'s ``inspect``)."""
    emit = frontend.event if frontend is not None else _noop
    path = resolve_inventory_path(msp, inventory_path)
    inventory = load_inventory(path, msp=msp if not inventory_path else None)
    loaded = load_playbook(playbook_path)
    pool = make_pool(inventory, case_id, loaded)
    emit("planning", {"playbook": loaded.playbook.name, "hosts": len(inventory.hosts())})
    read_by_others = any(t.approvals_required > 1 for t in inventory.tenants)
    inspect = preview or inspect_unread or read_by_others
    try:
        plan = build_plan(loaded, inventory, str(path), case_id, pool, forks=forks, preview=preview,
                          inspect=inspect)
    finally:
        emit("planning.done", {})
    plan.save()
    if not keep_pool:
        pool.close()
        return plan, loaded, inventory, None
    return plan, loaded, inventory, pool


def load_plan_context(plan: Plan) -> tuple[LoadedPlaybook, Inventory]:
    """Reload the playbook and inventory a plan was made from, refusing if either changed."""
    for what, path, digest in (("playbook", plan.playbook_path, plan.playbook_sha256),
                               ("inventory", plan.inventory_path, plan.inventory_sha256)):
        try:
            current = file_sha256(Path(path))
        except OSError:
            raise InputError(f"{what} {path} of plan {plan.hash[:16]} is missing") from None
        if current != digest:
            raise InputError(f"{what} {path} changed since plan {plan.hash[:16]} was made; make a new plan")
    return load_playbook(plan.playbook_path), load_inventory(plan.inventory_path)


def exit_code(summary: RunSummary) -> int:
    if summary.incomplete:
        return EXIT_INCOMPLETE
    return EXIT_OK if summary.all_ok else EXIT_FAILED


def run_playbook(msp: str | None, inventory_path: str | None, case_id: str, playbook: str | Path, *,
                 frontend: Frontend, dry_run: bool, forks: int, approval_wait: float = 0.0,
                 stop_if_empty: bool = False) -> int:
    """Plan, show, confirm and execute a playbook; return the exit code.

    ``stop_if_empty``: a plan without steps ends with ``no_match`` instead of an empty run.
    """
    # previews (Ansible --check) only when someone reads the plan: a dry run or a confirmation prompt
    preview = dry_run or not getattr(frontend, "yes", False)
    # nobody reads the plan before it runs (--yes, no co-approver): the hosts are read by the steps themselves
    plan, loaded, inventory, pool = make_plan(msp, inventory_path, str(playbook), case_id, forks=forks,
                                              keep_pool=not dry_run, frontend=frontend, preview=preview,
                                              inspect_unread=preview)
    frontend.show_plan(plan, dry_run=dry_run)
    if dry_run or pool is None:
        frontend.event("dry_run", {})
        return EXIT_OK
    if stop_if_empty and not plan.items:
        pool.close()
        frontend.event("no_match", {})
        return EXIT_OK
    if not frontend.confirm(plan):
        pool.close()
        return EXIT_OK
    return execute(plan, loaded, inventory, forks=forks, responder_confirmed=True, approval_wait=approval_wait,
                   frontend=frontend, pool=pool)


def execute(plan: Plan, loaded: LoadedPlaybook, inventory: Inventory, *, forks: int, responder_confirmed: bool,
            frontend: Frontend, finished: set[str] | None = None, approval_wait: float = 0.0,
            pool: ConnectionPool | None = None) -> int:
    """Run a plan with approvals, the evidence gate and live progress events; return the exit code.

    The passphrase is asked for once, here on the main thread; the engine's workers get the
    unlocked keys in their action context and never prompt.
    """
    keys = KeyProvider.unlock()
    journal = open_journal(plan.case, inventory.msp.name, keys)
    try:
        approvals = gather_approvals(plan, inventory, journal, responder_confirmed, approval_wait, frontend)
        pool = pool or make_pool(inventory, plan.case, loaded)
        pool.case_key_passphrase = keys.case_key_passphrase(plan.case)  # the case keys are encrypted at rest
        pool.reload_keys()
        # the evidence gate is the engine's own (on by default); approvals are verified here
        options = EngineOptions(forks=forks, finished=finished or set(), approvals=approvals, keys=keys)
        dispatcher = agent_dispatcher(plan, loaded, inventory, journal, keys)
        options.remote = dispatcher
        frontend.event("run.begin", {"plan": plan.hash})
        try:
            engine = Engine(plan, loaded, inventory, journal, pool, options, on_event=frontend.event)
            summary = run_interruptible(engine, frontend)
        finally:
            if dispatcher is not None:
                dispatcher.close()
            frontend.event("run.finish", {})
    finally:
        journal.close()
    frontend.show_summary(summary)
    if summary.incomplete:
        frontend.event("incomplete", {"case": plan.case})
    return exit_code(summary)


def agent_dispatcher(plan: Plan, loaded: LoadedPlaybook, inventory: Inventory, journal: Any,
                     keys: KeyProvider) -> Any:
    """The controller's side for the plan's agent-served tenants (docs/agents.md), started; None if none."""
    served = {t.name for t in inventory.tenants if t.agent is not None} & set(plan.tenants())
    if not served:
        return None
    from ir_toolkit.agents.dispatch import AgentDispatcher

    longest = max([loaded.playbook.step_timeout(step) for phase in loaded.playbook.phases for step in phase.steps]
                  or [loaded.playbook.defaults.timeout])
    try:
        return AgentDispatcher(inventory, journal, keys.signer(), case=plan.case, plan_hash=plan.hash,
                               actor=journal_actor(), longest_step_s=longest).start()
    except ValueError as exc:
        raise InputError(f"agent settings: {exc}") from None


def run_interruptible(engine: Engine, frontend: Frontend) -> RunSummary:
    """Run the engine; Ctrl-C or SIGTERM stop it between steps, leaving a resumable journal.

    The engine runs in a thread and the main thread only waits on an Event: signal
    handlers (not KeyboardInterrupt, which can corrupt ``Thread.join`` state) ask the
    engine to stop; the steps already running finish and are recorded.
    """
    result: dict[str, RunSummary] = {}
    error: list[BaseException] = []
    done = threading.Event()
    presses = [0]

    def target() -> None:
        try:
            result["summary"] = engine.run()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            error.append(exc)
        finally:
            done.set()

    def stop(signum: int, _frame: object) -> None:
        presses[0] += 1
        engine.cancel()
        frontend.event("signal", {"signal": "interrupt" if signum == signal.SIGINT else "terminate",
                                  "presses": presses[0]})

    thread = threading.Thread(target=target, name="irkit-engine", daemon=True)
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        thread.start()
        while not done.wait(0.2):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if error:
        raise error[0]
    return result["summary"]


def gather_approvals(plan: Plan, inventory: Inventory, journal: Any, responder_confirmed: bool,
                     wait: float, frontend: Frontend) -> dict[str, int]:
    """Count valid approvals per tenant (waiting up to ``wait`` s for missing ones) and record them."""
    needs = {i.tenant for i in plan.items if i.requires_approval}
    deadline = time.monotonic() + wait
    while True:
        responder = journal.signer.public if responder_confirmed and journal.signer is not None else None
        found, problems = valid_approvals(plan, inventory, responder_key=responder)
        counts = {t: len(found.get(t, ())) + (1 if responder_confirmed else 0) for t in plan.tenants()}
        missing = {t: inventory.tenant(t).approvals_required - counts[t] for t in needs
                   if counts[t] < inventory.tenant(t).approvals_required}
        if not missing or time.monotonic() >= deadline:
            break
        frontend.event("approvals.waiting", {"missing": missing, "plan_path": str(plan.path())})
        time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
    for problem in problems:
        frontend.event("approval.ignored", {"problem": problem})
    if responder_confirmed:
        journal.append_durable(action="approval.given", actor=journal_actor(), params={
            "plan": plan.hash, "approver": journal_actor(), "kind": "responder confirmation"})
    for tenant, names in sorted(found.items()):
        for name in sorted(names):
            journal.append_durable(action="approval.given", actor=name, tenant=tenant,
                                   params={"plan": plan.hash, "approver": name, "kind": "signed approval"})
    return counts


_JOURNAL_ACTIONS = ("run.start", "run.end", "step.start", "step.done", "step.skipped")


def resume_case(case_id: str, *, forks: int, retry_failed: bool, frontend: Frontend) -> int:
    """Finish the unfinished steps of the case's last plan; return the exit code.

    What is finished comes only from the verified, signed journal: the log is opened with the key
    first (recovery runs; records appended without the key are flagged and never count)."""
    from ir_toolkit.audit.layout import log_path
    from ir_toolkit.audit.log import AuditLog
    from ir_toolkit.secrets.keystore import get_passphrase, load_signing_key

    if not log_path(case_id).exists():
        raise InputError(f"case {case_id}: no run to resume")
    journal = AuditLog.open(case_id, signer=load_signing_key(get_passphrase()))
    try:
        state = journal_state(journal.verified_records(_JOURNAL_ACTIONS))
        if state.plan_hash is None:
            raise InputError(f"case {case_id}: no run to resume")
        plan = load_plan(plan_path_for(case_id, state.plan_hash))
        loaded, inventory = load_plan_context(plan)
        finished = state.finished - (state.failed if retry_failed else set())
        todo = [i for i in plan.items if i.id not in finished]
        if not todo:
            frontend.event("resume.complete", {"case": case_id, "plan": plan.hash})
            return EXIT_OK
        frontend.event("resume.start", {"plan": plan.hash, "todo": len(todo), "total": len(plan.items)})
        return execute(plan, loaded, inventory, forks=forks, responder_confirmed=True, finished=finished,
                       frontend=frontend)
    finally:
        journal.close()
