"""Secret references: how inventories, playbooks and BMC settings name a secret.

A reference is one of::

    env:NAME                 the value of an environment variable
    file:PATH                the contents of a file (``~`` and ``${IRKIT_HOME}`` expand)
    escrow:TENANT/HOST/ACCOUNT   a secret in the current case's escrow

Anything else in a secret field is a plaintext secret and is refused.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ir_toolkit.errors import InputError
from ir_toolkit.redaction import register_secret

SCHEMES = ("env", "file", "escrow")
_REF = re.compile(r"^(?P<scheme>env|file|escrow):(?P<target>\S.*)$")


@dataclass(frozen=True)
class SecretRef:
    scheme: str
    target: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.target}"

    @property
    def path(self) -> Path:
        """For ``file:`` references: the expanded path."""
        if self.scheme != "file":
            raise InputError(f"secret reference {self} is not a file reference")
        return expand_path(self.target)


def expand_path(text: str) -> Path:
    """Expand ``~``, ``$IRKIT_HOME`` (default ./irkit-cases) and other env vars in a path."""
    from ir_toolkit.home import irkit_home

    env = dict(os.environ)
    env.setdefault("IRKIT_HOME", str(irkit_home()))
    expanded = re.sub(
        r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), m.group(0)), text
    )
    return Path(expanded).expanduser()


def is_reference(text: str) -> bool:
    return bool(_REF.match(text))


def parse_ref(text: str) -> SecretRef:
    """Parse a reference, or raise :class:`InputError` naming the accepted forms."""
    match = _REF.match(text.strip()) if isinstance(text, str) else None
    if not match:
        raise InputError(
            "plaintext secret where a reference belongs: use env:NAME, file:PATH or "
            "escrow:TENANT/HOST/ACCOUNT"
        )
    return SecretRef(match["scheme"], match["target"].strip())


def resolve(ref: SecretRef) -> str:
    """Return the secret value a reference points to (``env:`` and ``file:``).

    The value is registered for redaction before it is returned. ``escrow:``
    references are resolved by :mod:`ir_toolkit.secrets.escrow`, which needs a case.
    """
    if ref.scheme == "env":
        value = os.environ.get(ref.target)
        if value is None:
            raise InputError(f"secret reference {ref}: environment variable {ref.target} is not set")
    elif ref.scheme == "file":
        try:
            value = ref.path.read_text().rstrip("\n")
        except OSError as exc:
            raise InputError(f"secret reference {ref}: cannot read {ref.path}: {exc.strerror}") from None
    else:
        raise InputError(f"secret reference {ref}: escrow references need a case (use --case)")
    register_secret(value)
    return value
