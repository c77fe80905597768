"""The one-way house, checked from the code: no package-level import cycle, and the layer rules.

Imports are read with ``ast`` (top-level and function-level ``import``/``from``, plus
string constants naming ``ir_toolkit.*`` modules, which catch ``importlib`` loading).
A unit is a subpackage (``ir_toolkit/audit``) or a ground module (``ir_toolkit/log.py``).
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "ir_toolkit"


def _unit(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "ir_toolkit" else None


def _imports() -> list[tuple[str, str, str]]:
    """(importing module, its unit, imported name) for every irkit or third-party import."""
    found: list[tuple[str, str, str]] = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        unit = _unit(module) or ""
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and node.value.startswith("ir_toolkit.") and " " not in node.value:
                names = [node.value]
            found.extend((module, unit, name) for name in names)
    return found


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for _module, unit, name in _imports():
        target = _unit(name)
        if unit and target and target != unit:
            edges.setdefault(unit, set()).add(target)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for node in sorted(set(edges) | {t for ts in edges.values() for t in ts}):
        if node not in index:
            visit(node)
    return out


def test_no_package_level_import_cycle() -> None:
    assert _cycles(_graph()) == []


def _offenders(predicate) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted({f"{module} imports {name}" for module, unit, name in _imports() if predicate(module, unit, name)})


def test_click_and_rich_only_in_cli() -> None:
    assert _offenders(lambda m, u, n: n.split(".")[0] in ("click", "rich") and u != "cli") == []


def test_transports_import_no_higher_layer() -> None:
    assert _offenders(lambda m, u, n: u == "transports"
                      and _unit(n) in ("playbook", "actions", "triage", "lab", "run", "cli")) == []


def test_actions_import_no_cli_run_engine_or_lab() -> None:
    assert _offenders(lambda m, u, n: u == "actions"
                      and (_unit(n) in ("cli", "run", "lab") or n.startswith("ir_toolkit.playbook"))) == []


def test_facts_import_no_action_engine_cli_or_lab() -> None:
    """facts/ sits beside transports/: commands and pure parsers, no actions, engine, run, CLI or lab."""
    assert _offenders(lambda m, u, n: u == "facts"
                      and _unit(n) in ("actions", "playbook", "run", "cli", "lab", "triage", "reimage")) == []


def test_reimage_providers_import_no_action_engine_cli_or_lab() -> None:
    assert _offenders(lambda m, u, n: u == "reimage"
                      and _unit(n) in ("actions", "playbook", "run", "cli", "lab", "triage")) == []


def test_only_the_lab_and_its_cli_group_import_the_lab() -> None:
    assert _offenders(lambda m, u, n: _unit(n) == "lab" and u != "lab" and m != "ir_toolkit.cli.lab") == []


def test_run_layer_renders_nothing() -> None:
    assert _offenders(lambda m, u, n: u == "run" and (_unit(n) == "cli" or n.split(".")[0] in ("click", "rich"))) == []


def test_agents_sit_below_the_engine() -> None:
    """agents/ uses actions, transports, audit, secrets (never cli/run/playbook/lab); only cli/ and run/
    drive it (the engine reaches it through its RemoteSteps hook, not an import)."""
    assert _offenders(lambda m, u, n: u == "agents" and _unit(n) in ("cli", "run", "playbook", "lab")) == []
    assert _offenders(lambda m, u, n: _unit(n) == "agents" and u not in ("agents", "cli", "run")) == []
