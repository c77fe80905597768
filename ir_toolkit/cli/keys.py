"""``irkit keys``: the responder's signing and escrow keys."""

from __future__ import annotations

import click

from ir_toolkit.cli.options import not_implemented


@click.group("keys")
def keys() -> None:
    """Create and manage the responder's keys (audit signing, escrow)."""


@keys.command("init")
def init(**_: object) -> None:
    """Create the signing key and the escrow key in $IRKIT_HOME/keys."""
    not_implemented("keys init", 4)
