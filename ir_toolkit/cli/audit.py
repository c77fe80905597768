"""``irkit audit``: verify, show and report the signed audit log."""

from __future__ import annotations

import click

from ir_toolkit.cli.options import case_option, not_implemented


@click.group("audit")
def audit() -> None:
    """Verify and review the signed, tamper-evident audit log of a case."""


@audit.command("verify")
@case_option()
def verify(**_: object) -> None:
    """Verify every record, the Merkle tree and the signed checkpoints."""
    not_implemented("audit verify", 4)


@audit.command("show")
@case_option()
def show(**_: object) -> None:
    """Show audit records."""
    not_implemented("audit show", 4)


@audit.command("report")
@case_option()
def report(**_: object) -> None:
    """Write a per-tenant report of what was done."""
    not_implemented("audit report", 4)
