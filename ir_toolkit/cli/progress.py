"""Live progress for engine runs: rich bars and a per-tenant table on a terminal, plain lines otherwise.

Time to isolation and to full containment are shown as they happen (hosts isolated / contained of
those planned, and when the last one got there; playbook/milestones.py).
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ir_toolkit.cli.output import console, safe


class RunDisplay:
    """Receives engine events (``on_event``) and shows them."""

    def __init__(self, *, tty: bool | None = None) -> None:
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.lock = threading.Lock()
        self.tenants: dict[str, Counter[str]] = {}
        self.console = console(stderr=True)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=self.console)
        self.task: Any = None
        self.live: Live | None = None
        #: the engine's figures (planned hosts per tenant), then updated by host.isolated / host.contained
        self.figures: dict[str, Any] = {}
        self.reached: dict[str, Counter[str]] = {"isolation": Counter(), "containment": Counter()}
        self.last: dict[str, float] = {}

    def __enter__(self) -> RunDisplay:
        if self.tty:
            self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.update(self._render())
            self.live.__exit__(None, None, None)

    def _render(self) -> Group:
        table = Table(title=None, header_style="bold", box=None)
        for col in ("tenant", "ok", "failed", "timed_out", "skipped", "isolated", "contained"):
            table.add_column(col, justify="left" if col == "tenant" else "right")
        for tenant in sorted(self.tenants):
            c = self.tenants[tenant]
            table.add_row(safe(tenant), str(c["ok"]), str(c["failed"]), str(c["timed_out"]), str(c["skipped"]),
                          self._count("isolation", tenant), self._count("containment", tenant))
        return Group(self.progress, table, self.milestone_line())

    def _planned(self, what: str, tenant: str | None = None) -> int:
        if tenant is None:
            return int(self.figures.get(what, {}).get("hosts", 0))
        return int(self.figures.get("tenants", {}).get(tenant, {}).get(what, {}).get("hosts", 0))

    def _count(self, what: str, tenant: str) -> str:
        planned = self._planned(what, tenant)
        return f"{self.reached[what][tenant]}/{planned}" if planned else ""

    def milestone_line(self) -> str:
        """``isolated 12/18 hosts (last at 9.3 s) · fully contained 0/18``; empty without isolation steps."""
        parts = []
        for what, label in (("isolation", "isolated"), ("containment", "fully contained")):
            planned = self._planned(what)
            if not planned:
                continue
            done = sum(self.reached[what].values())
            when = f" (last at {self.last[what]:.1f} s)" if what in self.last else ""
            if done == planned and what in self.last:
                when = f": time to {'isolation' if what == 'isolation' else 'full containment'} {self.last[what]:.1f} s"
            parts.append(f"{label} {done}/{planned} hosts{when}")
        return " · ".join(parts)

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        with self.lock:
            if kind == "phase.start":
                if self.task is not None:
                    self.progress.update(self.task, visible=True)
                self.task = self.progress.add_task(f"phase {safe(data['phase'])}", total=data["hosts"])
                self.tenants = {}
                if not self.tty:
                    self.console.print(f"phase {safe(data['phase'])}: {data['hosts']} hosts in {data['waves']} wave(s)")
            elif kind == "host.done":
                if self.task is not None:
                    self.progress.advance(self.task)
                self.tenants.setdefault(data["tenant"], Counter())[data["status"]] += 1
                if not self.tty and (data["status"] != "ok" or data.get("message")):
                    # host-derived text (stderr in a failure message): escaped, redacted like the run log
                    msg = f": {safe(data['message'])}" if data.get("message") else ""
                    self.console.print(f"  {safe(data['tenant'])}/{safe(data['host'])}: {safe(data['status'])}{msg}")
            elif kind == "figures":
                self.figures = data
            elif kind in ("host.isolated", "host.contained"):
                what = "isolation" if kind == "host.isolated" else "containment"
                self.reached[what][data["tenant"]] += 1
                self.last[what] = float(data["seconds"])
                if not self.tty and sum(self.reached[what].values()) == self._planned(what):
                    self.console.print(self.milestone_line())
            elif kind == "stopped":
                self.console.print(f"[bold red]stopped:[/] {safe(data['reason'])}")
            if self.live is not None:
                self.live.update(self._render())
