"""``irkit evidence``: list, verify and extract triage bundles."""

from __future__ import annotations

import click

from ir_toolkit.cli.options import case_option, not_implemented


@click.group("evidence")
def evidence() -> None:
    """Work with evidence bundles and their chain of custody."""


@evidence.command("list")
@case_option()
def list_cmd(**_: object) -> None:
    """List the bundles of a case."""
    not_implemented("evidence list", 7)


@evidence.command("verify")
@case_option()
def verify(**_: object) -> None:
    """Re-hash every bundle against its manifest and the audit log."""
    not_implemented("evidence verify", 7)


@evidence.command("extract")
@case_option()
@click.option("--host", required=True)
@click.option("--out", required=True, type=click.Path(file_okay=False))
def extract(**_: object) -> None:
    """Extract (and decrypt) a host's bundle."""
    not_implemented("evidence extract", 7)
