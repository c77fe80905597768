"""Options shared by many commands, so that every command spells them the same way."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from ir_toolkit.home import validate_case_id
from ir_toolkit.inventory import Inventory, load_inventory, resolve_inventory_path

F = TypeVar("F", bound=Callable[..., Any])


def inventory_options(func: F) -> F:
    """``--msp NAME`` / ``--inventory PATH`` (env IRKIT_INVENTORY overrides the default path)."""
    func = click.option(
        "--inventory", "inventory_path", metavar="PATH", envvar=None,
        help="Inventory file (default: inventories/<msp>.yml, or $IRKIT_INVENTORY).",
    )(func)
    func = click.option("--msp", metavar="NAME", help="MSP name; selects inventories/NAME.yml.")(func)
    return func


def load_selected_inventory(msp: str | None, inventory_path: str | None) -> Inventory:
    path = resolve_inventory_path(msp, inventory_path)
    return load_inventory(path, msp=msp if not inventory_path else None)


def _check_case(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    return validate_case_id(value) if value is not None else None


def case_option(required: bool = True) -> Callable[[F], F]:
    return click.option(
        "--case", "case_id", metavar="ID", required=required, callback=_check_case,
        help="Case (incident) id; state lives in $IRKIT_HOME/cases/ID.",
    )


def format_option(func: F) -> F:
    return click.option(
        "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
        help="Output for people (table) or machines (json).",
    )(func)
