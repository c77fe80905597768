"""The one way irkit starts an external program: with an allow-listed environment.

irkit runs with secrets in its own environment: ``IRKIT_KEY_PASSPHRASE`` unlocks the
audit signing key and the escrow key (so every escrowed password), and ``env:``
references in the inventory point at further variables (a BMC password, the leaked
shared password). A child process inherits the environment unless told otherwise;
a provisioning tool may log it, hand it to hooks or ship it off-box, and
``/proc/PID/environ`` keeps it for the child's lifetime (security review §5).

So every program irkit runs (the reimage ``command`` provider, the audit-scan
workers, the lab's tools) is started through :func:`popen` or :func:`run` here,
whose environment is built by :func:`child_env`: only :data:`ALLOWED` variables of
irkit's own environment, plus what the caller passes explicitly. A caller's value
that is a registered secret, or a name that looks like a passphrase, is refused.
``tests/test_security_f05_child_env.py`` checks that no other module calls
:mod:`subprocess` or ``os.posix_spawn`` directly.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

#: variables passed through from irkit's environment (none of them carries a secret)
ALLOWED = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "TZ", "HOME", "USER", "LOGNAME", "TMPDIR",
           "TERM", "NO_COLOR")
#: further variables our own Python workers need to import irkit the same way
PYTHON = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHASHSEED", "PYTHONDONTWRITEBYTECODE")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_FORBIDDEN_NAME = re.compile(r"PASSPHRASE|PASSWORD|TOKEN|PRIVATE_KEY", re.IGNORECASE)


class UnsafeChildEnvironment(ValueError):
    """A caller tried to put a secret into a child's environment."""


def child_env(extra: Mapping[str, str] | None = None, *, python: bool = False,
              base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child process: allow-listed variables of ``base`` (default:
    ``os.environ``), the Python ones too when ``python``, then ``extra``."""
    source = os.environ if base is None else base
    names = ALLOWED + (PYTHON if python else ())
    env = {name: source[name] for name in names if name in source}
    env.setdefault("PATH", DEFAULT_PATH)
    if extra:
        from ir_toolkit.redaction import redact_text

        for name, value in extra.items():
            value = str(value)
            if _FORBIDDEN_NAME.search(name):
                raise UnsafeChildEnvironment(f"refusing to pass {name} to a child process")
            if value and redact_text(value) != value:
                raise UnsafeChildEnvironment(f"refusing to pass a secret value in {name} to a child process")
            env[name] = value
    return env


def popen(argv: Sequence[str], *, env: Mapping[str, str] | None = None, python: bool = False,
          inherit: bool = True, **kwargs: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen`` with :func:`child_env` (``env`` are the extra variables; with
    ``inherit=False`` nothing at all comes from irkit's environment)."""
    return subprocess.Popen(list(argv), env=child_env(env, python=python, base=None if inherit else {}), **kwargs)


def run(argv: Sequence[str], *, env: Mapping[str, str] | None = None, python: bool = False,
        inherit: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run`` with :func:`child_env` (``env`` are the extra variables; with
    ``inherit=False`` nothing at all comes from irkit's environment)."""
    return subprocess.run(list(argv), env=child_env(env, python=python, base=None if inherit else {}), **kwargs)


def spawn(path: str, argv: Sequence[str], env: Mapping[str, str], **kwargs: Any) -> int:
    """``os.posix_spawn`` with exactly ``env`` checked by :func:`child_env` (nothing inherited)."""
    return os.posix_spawn(path, list(argv), child_env(env, base={}), **kwargs)


TimeoutExpired = subprocess.TimeoutExpired
SubprocessError = subprocess.SubprocessError
PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
STDOUT = subprocess.STDOUT
CompletedProcess = subprocess.CompletedProcess
Popen = subprocess.Popen
