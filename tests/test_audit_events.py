"""Record names are declared once (audit/events.py): every name written in ir_toolkit/ is there."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from ir_toolkit.audit.events import EVENTS

PKG = Path(__file__).resolve().parents[1] / "ir_toolkit"
NAME = re.compile(r"^[a-z_]+\.[a-z_.]+$")
WRITERS = {"_record", "record", "append", "append_durable", "_append_internal", "queue_record"}


def _written_names() -> dict[str, str]:
    found: dict[str, str] = {}
    for path in PKG.rglob("*.py"):
        if path.name == "events.py" or "lab" in path.relative_to(PKG).parts[:1]:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) \
                    and isinstance(node.value.value, str) and NAME.match(node.value.value) \
                    and any(isinstance(t, ast.Name) and re.match(r"^((RECORD|ACTION)_[A-Z_]+|[A-Z_]+_ACTION)$", t.id)
                            for t in node.targets):
                found[node.value.value] = str(path)
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name not in WRITERS:
                continue
            candidates = [kw.value for kw in node.keywords if kw.arg == "action"]
            candidates += [a for a in node.args[:2]]
            for arg in candidates:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and NAME.match(arg.value):
                    found[arg.value] = str(path)
    return found


def test_every_record_name_written_is_declared() -> None:
    from ir_toolkit.actions.base import registry

    steps = set(registry())  # step (action) names such as host.reimage are not record names
    written = {name: where for name, where in _written_names().items() if name not in steps}
    assert len(written) > 30
    missing = {name: where for name, where in written.items() if name not in EVENTS}
    assert missing == {}


def test_the_ocsf_mapping_covers_declared_names_only() -> None:
    from ir_toolkit.audit import ocsf

    mapped = [n for n in vars(ocsf).values() if isinstance(n, dict) for n in n if isinstance(n, str) and NAME.match(n)]
    assert mapped and set(mapped) - set(EVENTS) == set()
