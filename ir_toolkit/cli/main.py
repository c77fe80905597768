"""The ``irkit`` entry point: the command tree and the error boundary.

Every error a user can cause ends as one line on stderr and a documented
exit code (see :mod:`ir_toolkit.errors`); tracebacks go only to the run log.
"""

from __future__ import annotations

import errno
import sys

import click

from ir_toolkit import __version__, log
from ir_toolkit.cli.agent import agent
from ir_toolkit.cli.audit import audit
from ir_toolkit.cli.case import case
from ir_toolkit.cli.contain import contain
from ir_toolkit.cli.escrow import escrow
from ir_toolkit.cli.evidence import evidence
from ir_toolkit.cli.inventory import inventory
from ir_toolkit.cli.isolate import isolate
from ir_toolkit.cli.keys import keys
from ir_toolkit.cli.lab import lab
from ir_toolkit.cli.reimage import reimage
from ir_toolkit.cli.rotate import rotate
from ir_toolkit.cli.run import apply, approve, plan, results, resume
from ir_toolkit.cli.triage import triage
from ir_toolkit.errors import (
    EXIT_ENVIRONMENT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    IrkitError,
)


class _Ordered(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(cls=_Ordered, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="irkit")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """irkit: incident response for managed service providers.

    When attackers hold an MSP's shared admin credentials, irkit preserves
    evidence, revokes the shared credentials, rotates them to unique escrowed
    secrets, isolates and reimages hosts across every tenant, and records every
    step in a signed, tamper-evident audit log.

    \b
    Typical use:
      irkit inventory validate inventories/acme.yml
      irkit contain --msp acme --case IR-2026-001
      irkit audit verify --case IR-2026-001

    State lives in $IRKIT_HOME (default ./irkit-cases). Exit codes: 0 ok,
    1 failed/invalid, 2 bad input, 3 incomplete (run `irkit resume`),
    4 environment (missing root/tool, disk full), 130 interrupted.
    """
    log.configure(verbosity=verbose)


for command in (
    contain, rotate, triage, isolate, reimage, plan, approve, apply, resume,
    audit, escrow, evidence, inventory, keys, lab, case, agent, results,
):
    cli.add_command(command)


def _fail(message: str, code: int) -> None:
    # Error texts can carry host output (stderr, paths): redacted and escaped like every console line.
    from ir_toolkit.log import printable

    sys.stderr.write(f"irkit: error: {printable(message)}\n")
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI with the error boundary."""
    try:
        rv = cli.main(args=argv, prog_name="irkit", standalone_mode=False)
        # With standalone_mode=False click returns the code of ctx.exit(n) / Exit(n) instead of exiting.
        if isinstance(rv, int) and rv:
            sys.exit(rv)
    except IrkitError as exc:
        _fail(str(exc), exc.exit_code)
    except click.exceptions.Abort:
        _fail("interrupted", EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        _fail("interrupted (Ctrl-C); `irkit resume --case ID` finishes an interrupted run", EXIT_INTERRUPTED)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        msg = exc.format_message()
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        _fail(msg + hint, exc.exit_code if exc.exit_code != 1 else EXIT_FAILED)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f" writing {exc.filename}" if exc.filename else " writing irkit's state ($IRKIT_HOME)"
            _fail(f"disk full{where}: free space, then run the command again "
                  "(`irkit resume --case ID` finishes an interrupted run)", EXIT_ENVIRONMENT)
        if exc.errno == errno.EPIPE:
            sys.exit(0)
        _fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), EXIT_FAILED)
    except Exception as exc:  # noqa: BLE001 - last line of defence: no tracebacks for users
        log.get_logger("irkit").error("internal error", exc_info=True)
        _fail(f"internal error: {type(exc).__name__}: {exc} (please report; details in the run log)", 70)
    else:
        sys.exit(0)


__all__ = ["EXIT_USAGE", "cli", "main"]
