"""``irkit escrow``: the encrypted store of every secret irkit set."""

from __future__ import annotations

import click

from ir_toolkit.cli.options import case_option, not_implemented


@click.group("escrow")
def escrow() -> None:
    """Read the escrow of new secrets (encrypted to recipient keys)."""


@escrow.command("list")
@case_option()
def list_cmd(**_: object) -> None:
    """List escrowed secrets and their states (never the secrets)."""
    not_implemented("escrow list", 6)


@escrow.command("get")
@case_option()
@click.option("--host", required=True)
@click.option("--account", required=True)
def get(**_: object) -> None:
    """Decrypt and print one secret."""
    not_implemented("escrow get", 6)
