"""Redaction: make sure no secret value reaches a log, an audit record or a screen.

Three nets, applied recursively to every mapping, sequence and string:

1. fields whose *name* says secret (``password``, ``private_key``, ``token`` ...)
   are replaced whole, whatever their value;
2. strings that *look* like a secret (PEM private keys, OpenSSH private keys)
   are replaced whatever the field is called;
3. values registered at run time with :func:`register_secret` (a freshly
   generated password, a decrypted passphrase) are cut out of any string.

A *reference* to a secret (``env:NAME``, ``file:/path``, ``escrow:...``) is not a
secret and is kept, so logs still say which secret was used.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any

REDACTED = "[REDACTED]"

_SECRET_KEY = re.compile(
    r"(pass(word|wd|phrase)?|secret|token|private[_-]?key|api[_-]?key|credential|"
    r"auth[_-]?key|session[_-]?key|cookie|otp)",
    re.IGNORECASE,
)
# Keys that contain a secret-ish word but hold no secret.
_SAFE_KEY = re.compile(
    r"(_ref|_reference|_file|_path|_fingerprint|_id|_env|_state|_age|_policy|_count|_length)$",
    re.IGNORECASE,
)
_PEM_PRIVATE = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(-----END [A-Z0-9 ]*PRIVATE KEY-----\n?|\Z)",
    re.DOTALL,
)
_REFERENCE = re.compile(r"^(env|file|escrow):\S+$")

_lock = threading.Lock()
_registered: set[str] = set()
_MIN_REGISTERED = 4
#: (the registered values longest first, the shortest one's length), rebuilt when a value is added:
#: every string of every log event and audit record is redacted, and a run registers a password per
#: host and account (sorting them on every call cost more than the searches at 200 hosts)
_ordered: tuple[tuple[str, ...], int] = ((), 0)


def _reorder() -> None:
    """Rebuild :data:`_ordered` (the caller holds :data:`_lock`); replaced whole, never changed in place."""
    global _ordered
    values = tuple(sorted(_registered, key=len, reverse=True))
    _ordered = (values, len(values[-1]) if values else 0)


def register_secret(value: str | bytes) -> None:
    """Remember a secret value so that it is cut out of anything redacted later."""
    if isinstance(value, bytes):
        try:
            value = value.decode()
        except UnicodeDecodeError:
            return
    if len(value) >= _MIN_REGISTERED:
        with _lock:
            if value not in _registered:
                _registered.add(value)
                _reorder()


def forget_secrets() -> None:
    """Forget all registered values (tests, and the end of a run)."""
    with _lock:
        _registered.clear()
        _reorder()


def is_secret_key(key: str) -> bool:
    """True when a field named ``key`` holds secret material by its name."""
    return bool(_SECRET_KEY.search(key)) and not _SAFE_KEY.search(key)


def redact_text(text: str) -> str:
    """Redact secret-looking content and registered secret values inside ``text``."""
    if "PRIVATE KEY-----" in text:
        text = _PEM_PRIVATE.sub(REDACTED, text)
    values, shortest = _ordered  # one consistent snapshot
    if values and len(text) >= shortest:
        for value in values:
            if value in text:
                text = text.replace(value, REDACTED)
    return text


def redact(value: Any, *, key: str | None = None) -> Any:
    """Return a copy of ``value`` with every secret replaced by ``[REDACTED]``."""
    if key is not None and is_secret_key(key):
        if value is None or value == "" or isinstance(value, bool):
            return value
        if isinstance(value, str) and _REFERENCE.match(value):
            return value
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bytes):
        return redact_text(value.decode("utf-8", "replace"))
    if isinstance(value, Mapping):
        return {k: redact(v, key=str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [redact(v) for v in value]
    return value


def redaction_processor(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: redact every field of the event."""
    return {k: redact(v, key=k) for k, v in event_dict.items()}
