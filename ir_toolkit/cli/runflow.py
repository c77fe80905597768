"""The plan -> approve -> execute flow shared by ``plan``, ``apply``, ``resume``, ``contain``, ``rotate``."""

from __future__ import annotations

import datetime as dt
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import click

from ir_toolkit import log
from ir_toolkit.cli.output import console, emit_json
from ir_toolkit.cli.progress import RunDisplay
from ir_toolkit.errors import EXIT_FAILED, EXIT_INCOMPLETE, EXIT_OK, InputError
from ir_toolkit.home import case_dir
from ir_toolkit.inventory import Inventory, load_inventory, resolve_inventory_path
from ir_toolkit.playbook.approvals import valid_approvals
from ir_toolkit.playbook.engine import Engine, EngineOptions, RunSummary, build_plan
from ir_toolkit.playbook.fleet import Fleet
from ir_toolkit.playbook.journal import journal_state, plan_path_for
from ir_toolkit.playbook.plan import Plan, file_sha256, load_plan
from ir_toolkit.playbook.schema import LoadedPlaybook, load_playbook
from ir_toolkit.transports.ssh import Timeouts


def new_case_id() -> str:
    return "IR-" + dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")


def start_case_logging(case_id: str, verbosity: int = 0) -> Path:
    path = log.run_log_path(case_dir(case_id, create=True))
    log.configure(json_path=path, verbosity=verbosity)
    return path


def open_journal(case_id: str, msp: str) -> Any:
    """The case's audit log, opened for writing with the responder's signing key."""
    from ir_toolkit.audit.log import AuditLog
    from ir_toolkit.secrets.keystore import get_passphrase, load_signing_key

    signer = load_signing_key(get_passphrase())
    return AuditLog.open(case_id, origin=f"{msp}/ir/{case_id}", signer=signer)


def evidence_gate(case_id: str) -> Any:
    """A host passes when its evidence bundle is collected, matches its seal and has a custody record.

    A passing host is remembered for the rest of the run (the bundle is re-hashed once).
    """
    from ir_toolkit.triage.status import host_evidence_status

    passed: set[tuple[str, str]] = set()
    lock = threading.Lock()

    def gate(tenant: str, host: str) -> bool:
        with lock:
            if (tenant, host) in passed:
                return True
        if host_evidence_status(case_id, tenant, host, rehash=True).ready:
            with lock:
                passed.add((tenant, host))
            return True
        return False

    return gate


def make_fleet(inventory: Inventory, case_id: str, loaded: LoadedPlaybook) -> Fleet:
    """A fleet whose connect/banner/auth deadlines come from the playbook's defaults."""
    limit = loaded.playbook.defaults.connect_timeout
    return Fleet(inventory, case_id, timeouts=Timeouts(connect=limit, banner=limit, auth=max(limit, 15.0),
                                                        command=loaded.playbook.defaults.timeout))


def make_plan(msp: str | None, inventory_path: str | None, playbook_path: str, case_id: str, *,
              forks: int, quiet: bool = False, keep_fleet: bool = False
              ) -> tuple[Plan, LoadedPlaybook, Inventory, Fleet | None]:
    """Plan a playbook; with ``keep_fleet`` the open connections are returned for the apply that follows."""
    path = resolve_inventory_path(msp, inventory_path)
    inventory = load_inventory(path, msp=msp if not inventory_path else None)
    loaded = load_playbook(playbook_path)
    fleet = make_fleet(inventory, case_id, loaded)
    status = console(stderr=True)
    with status.status(f"planning {loaded.playbook.name} on {len(inventory.hosts())} hosts...") if not quiet and sys.stderr.isatty() else _Null():
        plan = build_plan(loaded, inventory, str(path), case_id, fleet, forks=forks)
    plan.save()
    if not keep_fleet:
        fleet.close()
        return plan, loaded, inventory, None
    return plan, loaded, inventory, fleet


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


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


def show_plan(plan: Plan, fmt: str = "table") -> None:
    if fmt == "json":
        emit_json({**plan.body(), "hash": plan.hash, "path": str(plan.path())})
        return
    from rich.table import Table

    table = Table(title=f"plan {plan.hash[:16]} — case {plan.case}", header_style="bold")
    for col in ("phase", "step", "tenant", "hosts", "would change", "no change", "unknown", "approval"):
        table.add_column(col)
    rows: dict[tuple[int, int, str], Counter[str]] = {}
    names: dict[tuple[int, int], tuple[str, str, bool]] = {}
    for item in plan.items:
        key = (item.phase_index, item.step_index, item.tenant)
        changed = item.change.get("changed")
        rows.setdefault(key, Counter())["change" if changed else "same" if changed is False else "unknown"] += 1
        names[(item.phase_index, item.step_index)] = (item.phase, item.step, item.requires_approval)
    for (pi, si, tenant), c in sorted(rows.items()):
        phase, step, approval = names[(pi, si)]
        table.add_row(phase, step, tenant, str(sum(c.values())), str(c["change"]), str(c["same"]),
                      str(c["unknown"]), "required" if approval else "")
    out = console()
    out.print(table)
    unknown = [i for i in plan.items if i.change.get("changed") is None]
    for item in unknown[:10]:
        out.print(f"  [yellow]{item.host}[/]: {item.change.get('summary')}")
    if len(unknown) > 10:
        out.print(f"  ... and {len(unknown) - 10} more hosts whose state is unknown")
    out.print(f"plan saved: {plan.path()}")


def print_summary(summary: RunSummary, fmt: str = "table") -> None:
    table = summary.per_tenant()
    if fmt == "json":
        emit_json({
            "tenants": {t: {s: c[s] for s in ("ok", "failed", "timed_out", "skipped")} for t, c in table.items()},
            "hosts": {h: r.__dict__ for h, r in summary.hosts.items()},
            "incomplete": summary.incomplete, "reason": summary.reason, "ok": summary.all_ok,
        })
        return
    from rich.table import Table

    out = console()
    t = Table(title="summary", header_style="bold")
    for col in ("tenant", "hosts", "ok", "failed", "timed out", "skipped", "changed"):
        t.add_column(col)
    changed: Counter[str] = Counter()
    for r in summary.hosts.values():
        changed[r.tenant] += r.changed
    for tenant in sorted(table):
        c = table[tenant]
        t.add_row(tenant, str(sum(c.values())), str(c["ok"]), str(c["failed"]), str(c["timed_out"]),
                  str(c["skipped"]), str(changed[tenant]))
    out.print(t)
    for r in sorted(summary.hosts.values(), key=lambda r: (r.tenant, r.host)):
        if r.status != "ok":
            out.print(f"  {r.tenant}/{r.host}: {r.status}: {r.message}")
    total_changed = sum(changed.values())
    if summary.all_ok and total_changed == 0:
        out.print("nothing changed: every host was already in the playbook's end state")
    if summary.incomplete:
        out.print(f"[bold yellow]incomplete:[/] {summary.reason}")


def exit_code(summary: RunSummary) -> int:
    if summary.incomplete:
        return EXIT_INCOMPLETE
    return EXIT_OK if summary.all_ok else EXIT_FAILED


def execute(plan: Plan, loaded: LoadedPlaybook, inventory: Inventory, *, forks: int, responder_confirmed: bool,
            finished: set[str] | None = None, approval_wait: float = 0.0, fmt: str = "table",
            fleet: Fleet | None = None) -> int:
    """Run a plan with approvals, the evidence gate and live progress; return the exit code."""
    journal = open_journal(plan.case, inventory.msp.name)
    try:
        approvals = _gather_approvals(plan, inventory, journal, responder_confirmed, approval_wait)
        fleet = fleet or make_fleet(inventory, plan.case, loaded)
        options = EngineOptions(forks=forks, finished=finished or set(), approvals=approvals,
                                evidence_gate=evidence_gate(plan.case))
        with RunDisplay() as display:
            engine = Engine(plan, loaded, inventory, journal, fleet, options, on_event=display)
            summary = _run_interruptible(engine)
    finally:
        journal.close()
    print_summary(summary, fmt)
    if summary.incomplete:
        console(stderr=True).print(f"finish with: irkit resume --case {plan.case}")
    return exit_code(summary)


def _run_interruptible(engine: Engine) -> RunSummary:
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
        what = "interrupt" if signum == signal.SIGINT else "terminate"
        note = "finishing the running steps, then stopping" if presses[0] == 1 else "still finishing the running steps"
        console(stderr=True).print(f"{what}: {note}; `irkit resume` completes the run")

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


def _gather_approvals(plan: Plan, inventory: Inventory, journal: Any, responder_confirmed: bool,
                      wait: float) -> dict[str, int]:
    needs = {i.tenant for i in plan.items if i.requires_approval}
    deadline = time.monotonic() + wait
    while True:
        found, problems = valid_approvals(plan, inventory)
        counts = {t: len(found.get(t, ())) + (1 if responder_confirmed else 0) for t in plan.tenants()}
        missing = {t: inventory.tenant(t).approvals_required - counts[t] for t in needs
                   if counts[t] < inventory.tenant(t).approvals_required}
        if not missing or time.monotonic() >= deadline:
            break
        console(stderr=True).print(
            "waiting for approvals: " + ", ".join(f"{t} needs {n} more" for t, n in sorted(missing.items()))
            + f" (irkit approve {plan.path()} --as NAME)")
        time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
    for problem in problems:
        console(stderr=True).print(f"[yellow]ignored approval:[/] {problem}")
    if responder_confirmed:
        journal.append_durable(action="approval.given", actor=journal_actor(), params={
            "plan": plan.hash, "approver": journal_actor(), "kind": "responder confirmation"})
    for tenant, names in sorted(found.items()):
        for name in sorted(names):
            journal.append_durable(action="approval.given", actor=name, tenant=tenant,
                                   params={"plan": plan.hash, "approver": name, "kind": "signed approval"})
    return counts


def journal_actor() -> str:
    from ir_toolkit.playbook.engine import actor_name

    return actor_name()


def resume_case(case_id: str, *, forks: int, retry_failed: bool, fmt: str) -> int:
    from ir_toolkit.audit.log import iter_records

    state = journal_state(iter_records(case_id))
    if state.plan_hash is None:
        raise InputError(f"case {case_id}: no run to resume")
    plan = load_plan(plan_path_for(case_id, state.plan_hash))
    loaded, inventory = load_plan_context(plan)
    finished = state.finished - (state.failed if retry_failed else set())
    todo = [i for i in plan.items if i.id not in finished]
    if not todo:
        console().print(f"case {case_id}: plan {plan.hash[:16]} is complete; nothing to resume")
        return EXIT_OK
    console(stderr=True).print(f"resuming plan {plan.hash[:16]}: {len(todo)} of {len(plan.items)} steps left")
    return execute(plan, loaded, inventory, forks=forks, responder_confirmed=True, finished=finished, fmt=fmt)


def confirm(plan: Plan, yes: bool) -> bool:
    """The responder's confirmation; counts as one approval."""
    if yes:
        return True
    if not sys.stdin.isatty():
        raise InputError("refusing to apply without confirmation: run on a terminal or pass --yes")
    return click.confirm(f"Apply plan {plan.hash[:16]} ({len(plan.items)} steps)?", default=False)
