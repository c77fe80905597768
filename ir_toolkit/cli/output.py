"""Rendering results for people (rich tables) and machines (JSON)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ir_toolkit.log import printable


def safe(value: Any) -> str:
    """A value (often host-derived) for a rich markup string: controls escaped, markup escaped, redacted."""
    return escape(printable(value))


def console(stderr: bool = False) -> Console:
    import shutil

    width = None if sys.stdout.isatty() else max(shutil.get_terminal_size((160, 24)).columns, 160)
    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=width)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def emit_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str | None = None) -> None:
    table = Table(title=title, header_style="bold")
    for column in columns:
        table.add_column(column)
    for row in rows:
        # Text cells: a value is never read as rich markup, and controls become visible escapes.
        table.add_row(*(Text("" if row.get(c) is None else printable(row.get(c))) for c in columns))
    console().print(table)


def emit(rows: Sequence[dict[str, Any]], fmt: str, columns: Sequence[str], title: str | None = None) -> None:
    if fmt == "json":
        emit_json(list(rows))
    else:
        emit_table(rows, columns, title)
