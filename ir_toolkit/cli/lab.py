"""``irkit lab``: a fleet of real sshd hosts for rehearsal and tests."""

from __future__ import annotations

import click

from ir_toolkit.cli.options import not_implemented


@click.group("lab")
def lab() -> None:
    """Bring up a rehearsal fleet of real OpenSSH hosts (needs root)."""


@lab.command("up")
def up(**_: object) -> None:
    """Materialise an inventory as real hosts, seeded with an MSP breach."""
    not_implemented("lab up", 3)
