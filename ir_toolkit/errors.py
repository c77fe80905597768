"""Errors that end a command with a one-line message and a documented exit code.

Exit codes (see docs/exit-codes.md):

==== ==========================================================================
0    success: every targeted host reached the requested end state
1    the command ran but something is not as it should be (a host failed,
     verification found tampering, a login that must work did not)
2    bad input or usage: malformed inventory/playbook, unknown option,
     missing key, wrong passphrase, refused by a safety gate
3    interrupted or incomplete: the run stopped early (Ctrl-C, a wave's
     max_fail_percentage); ``irkit resume`` finishes it
4    environment problem: a needed tool or privilege is missing (e.g. the
     lab needs root), disk full
130  interrupted by Ctrl-C before any state was written
==== ==========================================================================
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3
EXIT_ENVIRONMENT = 4
EXIT_INTERRUPTED = 130


class IrkitError(Exception):
    """Base class: ``str(err)`` is the one-line message shown to the user."""

    exit_code: int = EXIT_FAILED

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class InputError(IrkitError):
    """Bad user input: a malformed file, an unknown name, a bad option value."""

    exit_code = EXIT_USAGE


class FileInputError(InputError):
    """Bad input located in a file: rendered as ``FILE:LINE: FIELD: message``."""

    def __init__(self, path: str, line: int | None, field: str | None, message: str) -> None:
        self.path = path
        self.line = line
        self.field = field
        self.detail = message
        where = path if line is None else f"{path}:{line}"
        text = f"{where}: {field}: {message}" if field else f"{where}: {message}"
        super().__init__(text)


class NotImplementedYet(InputError):
    """A command that a later milestone fills in."""


class EnvironmentProblem(IrkitError):
    """A missing tool, privilege or resource on this machine."""

    exit_code = EXIT_ENVIRONMENT


class VerificationFailed(IrkitError):
    """Something that must hold does not (tampering, a failed check)."""

    exit_code = EXIT_FAILED


class Incomplete(IrkitError):
    """The run stopped before finishing; ``irkit resume`` completes it."""

    exit_code = EXIT_INCOMPLETE
