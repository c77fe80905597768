"""The CLI's renderer of the run service's events (``ir_toolkit.run.session``): plans, progress, notices."""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

import click

from ir_toolkit.cli.output import console, emit_json, safe
from ir_toolkit.cli.progress import RunDisplay
from ir_toolkit.errors import InputError
from ir_toolkit.playbook.engine import RunSummary
from ir_toolkit.playbook.milestones import describe
from ir_toolkit.playbook.plan import Plan


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
    unread = [i for i in plan.items if i.change.get("inspected") is False]
    if unread:
        out.print(f"  {len(unread)} host steps not inspected (--yes): each step reads its host when it runs")
    unknown = [i for i in plan.items if i.change.get("changed") is None and i.change.get("inspected") is not False]
    for item in unknown[:10]:
        out.print(f"  [yellow]{safe(item.host)}[/]: {safe(item.change.get('summary'))}")
    if len(unknown) > 10:
        out.print(f"  ... and {len(unknown) - 10} more hosts whose state is unknown")
    diffs = [i for i in plan.items if i.change.get("diff")]
    if diffs:
        from rich.text import Text

        shown: set[str] = set()
        out.print(f"would change ({len(diffs)} host steps with a diff; identical diffs shown once):")
        for item in diffs:
            diff = item.change["diff"]
            if diff in shown or len(shown) >= 5:
                continue
            shown.add(diff)
            same = sum(1 for i in diffs if i.change["diff"] == diff and i.step_index == item.step_index)
            out.print(Text(f"  {item.step} on {item.host}" + (f" (and {same - 1} more hosts)" if same > 1 else "")
                           + ":", style="bold"))
            for line in diff.splitlines()[:40]:
                clean = "".join(ch if ch.isprintable() else "?" for ch in line)
                style = "green" if clean.startswith("+") else "red" if clean.startswith("-") else None
                out.print(Text("    " + clean, style=style or ""))
    out.print(f"plan saved: {plan.path()}")


def print_summary(summary: RunSummary, fmt: str = "table") -> None:
    table = summary.per_tenant()
    figures = summary.figures()
    if fmt == "json":
        emit_json({
            "tenants": {t: {s: c[s] for s in ("ok", "failed", "timed_out", "skipped")} for t, c in table.items()},
            "hosts": {h: r.__dict__ for h, r in summary.hosts.items()},
            "incomplete": summary.incomplete, "reason": summary.reason, "ok": summary.all_ok,
            "findings": summary.findings,
            # time to isolation / full containment (seconds from run start; playbook/milestones.py)
            "figures": figures,
        })
        return
    from rich.table import Table

    out = console()
    t = Table(title="summary", header_style="bold")
    for col in ("tenant", "hosts", "ok", "failed", "timed out", "skipped", "changed", "isolated at",
                "contained at"):
        t.add_column(col)
    changed: Counter[str] = Counter()
    for r in summary.hosts.values():
        changed[r.tenant] += r.changed
    for tenant in sorted(table):
        c = table[tenant]
        tf = figures["tenants"].get(tenant, {})
        t.add_row(tenant, str(sum(c.values())), str(c["ok"]), str(c["failed"]), str(c["timed_out"]),
                  str(c["skipped"]), str(changed[tenant]), _at(tf.get("isolation")), _at(tf.get("containment")))
    out.print(t)
    if figures["isolation"]["hosts"] or figures["containment"]["hosts"]:
        out.print(describe(figures["isolation"], "isolation") + "; "
                  + describe(figures["containment"], "full containment"))
    for r in sorted(summary.hosts.values(), key=lambda r: (r.tenant, r.host)):
        if r.status != "ok":
            # the message can carry host output (stderr): escaped and redacted, never read as markup
            out.print(f"  {safe(r.tenant)}/{safe(r.host)}: {safe(r.status)}: {safe(r.message)}")
    if summary.findings:
        out.print("[bold]findings:[/]")
        for f in summary.findings:
            out.print(f"  {safe(f['tenant'])}/{safe(f['host'])}: {safe(f['finding'])}")
    total_changed = sum(changed.values())
    if summary.all_ok and total_changed == 0:
        out.print("nothing changed: every host was already in the playbook's end state")
    if summary.incomplete:
        out.print(f"[bold yellow]incomplete:[/] {safe(summary.reason)}")


def _at(figure: dict[str, Any] | None) -> str:
    """A tenant's time to isolation / full containment: ``9.3 s``, ``3/4 by 9.3 s`` or empty."""
    if not figure or not figure["hosts"]:
        return ""
    if not figure["reached"]:
        return f"0/{figure['hosts']}"
    return (f"{figure['last_s']:.1f} s" if figure["complete"]
            else f"{figure['reached']}/{figure['hosts']} by {figure['last_s']:.1f} s")


def confirm(plan: Plan, yes: bool) -> bool:
    """The responder's confirmation; counts as one approval."""
    if yes:
        return True
    if not sys.stdin.isatty():
        raise InputError("refusing to apply without confirmation: run on a terminal or pass --yes")
    return click.confirm(f"Apply plan {plan.hash[:16]} ({len(plan.items)} steps)?", default=False)


class CliFrontend:
    """Renders ``run.session`` events on the terminal (rich) or as plain lines; JSON results on stdout."""

    def __init__(self, fmt: str = "table", *, yes: bool = False, quiet: bool = False) -> None:
        self.fmt = fmt
        self.yes = yes
        self.quiet = quiet
        self.err = console(stderr=True)
        self._status: Any = None
        self._display: RunDisplay | None = None

    # -- the Frontend protocol
    def show_plan(self, plan: Plan, *, dry_run: bool) -> None:
        if self.fmt == "table" or dry_run:
            show_plan(plan, self.fmt)

    def confirm(self, plan: Plan) -> bool:
        return confirm(plan, self.yes)

    def show_summary(self, summary: RunSummary) -> None:
        print_summary(summary, self.fmt)

    def event(self, kind: str, data: dict[str, Any]) -> None:
        if self._display is not None and kind not in ("run.finish", "signal"):
            self._display(kind, data)
            return
        if kind == "planning":
            if not self.quiet and sys.stderr.isatty():
                self._status = self.err.status(f"planning {data['playbook']} on {data['hosts']} hosts...")
                self._status.__enter__()
        elif kind == "planning.done":
            if self._status is not None:
                self._status.__exit__(None, None, None)
                self._status = None
        elif kind == "run.begin":
            self._display = RunDisplay()
            self._display.__enter__()
        elif kind == "run.finish":
            if self._display is not None:
                display, self._display = self._display, None
                display.__exit__(None, None, None)
        elif kind == "signal":
            note = ("finishing the running steps, then stopping" if data["presses"] == 1
                    else "still finishing the running steps")
            self.err.print(f"{data['signal']}: {note}; `irkit resume` completes the run")
        elif kind == "approvals.waiting":
            self.err.print("waiting for approvals: "
                           + ", ".join(f"{t} needs {n} more" for t, n in sorted(data["missing"].items()))
                           + f" (irkit approve {data['plan_path']} --as NAME)")
        elif kind == "approval.ignored":
            self.err.print(f"[yellow]ignored approval:[/] {safe(data['problem'])}")
        elif kind == "dry_run":
            self.err.print("dry run: nothing was changed")
        elif kind == "no_match":
            self.err.print("no host matches: nothing to do")
        elif kind == "incomplete":
            self.err.print(f"finish with: irkit resume --case {data['case']}")
        elif kind == "resume.complete":
            console().print(f"case {data['case']}: plan {data['plan'][:16]} is complete; nothing to resume")
        elif kind == "resume.start":
            self.err.print(f"resuming plan {data['plan'][:16]}: {data['todo']} of {data['total']} steps left")
