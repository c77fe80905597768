"""Live progress for engine runs: rich bars and a per-tenant table on a terminal, plain lines otherwise."""

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
        for col in ("tenant", "ok", "failed", "timed_out", "skipped"):
            table.add_column(col, justify="left" if col == "tenant" else "right")
        for tenant in sorted(self.tenants):
            c = self.tenants[tenant]
            table.add_row(safe(tenant), str(c["ok"]), str(c["failed"]), str(c["timed_out"]), str(c["skipped"]))
        return Group(self.progress, table)

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
            elif kind == "stopped":
                self.console.print(f"[bold red]stopped:[/] {safe(data['reason'])}")
            if self.live is not None:
                self.live.update(self._render())
