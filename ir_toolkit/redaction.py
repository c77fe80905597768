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

import ahocorasick_rs

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
#: registered values not yet in the automaton are searched one by one, at most this many
_RECENT_MAX = 64


class _Matcher:
    """A snapshot of the registered values: an Aho-Corasick automaton over most of them (one pass over a
    string in Rust, whatever their number) and the few registered since it was built (searched one by one).

    Every string of every log event and audit record is redacted and a run registers a password per host
    and account, so searching each value in turn made a redaction cost O(hosts): at 1,000 registered values
    ~41 us for a short string and ~0.5 ms for 10 KB (measured), in every phase after the rotation.
    Replaced whole, never changed in place (readers take one consistent snapshot without the lock).
    """

    __slots__ = ("automaton", "bulk", "recent", "shortest")

    def __init__(self, bulk: tuple[str, ...], recent: tuple[str, ...], *,
                 automaton: Any = None, shortest: int | None = None) -> None:
        self.bulk = bulk
        self.recent = recent
        if automaton is None and bulk:
            automaton = ahocorasick_rs.AhoCorasick(list(bulk), matchkind=ahocorasick_rs.MatchKind.Standard)
        self.automaton = automaton
        if shortest is None:
            values = bulk + recent
            shortest = min(map(len, values)) if values else 0
        self.shortest = shortest

    def adding(self, value: str) -> _Matcher:
        """A new snapshot with ``value``: the automaton is kept, and rebuilt only every :data:`_RECENT_MAX`
        values (~10 ms at 2,000)."""
        shortest = min(self.shortest, len(value)) if self.shortest else len(value)
        if len(self.recent) < _RECENT_MAX:
            return _Matcher(self.bulk, self.recent + (value,), automaton=self.automaton, shortest=shortest)
        return _Matcher(self.bulk + self.recent + (value,), (), shortest=shortest)

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Every occurrence of every value in ``text`` (overlapping ones too), as (start, end)."""
        found: list[tuple[int, int]] = []
        if self.automaton is not None:
            found.extend((start, end) for _, start, end in
                         self.automaton.find_matches_as_indexes(text, overlapping=True))
        for value in self.recent:
            start = text.find(value)
            while start >= 0:
                found.append((start, start + len(value)))
                start = text.find(value, start + 1)
        return found


_matcher = _Matcher((), ())


def _cut(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` with the union of ``spans`` replaced: overlapping secrets are cut out whole, each merged
    stretch once."""
    spans.sort()
    out: list[str] = []
    pos = 0
    cur_start, cur_end = spans[0]
    for start, end in spans[1:]:
        if start <= cur_end:
            cur_end = max(cur_end, end)
            continue
        out += (text[pos:cur_start], REDACTED)
        pos, (cur_start, cur_end) = cur_end, (start, end)
    out += (text[pos:cur_start], REDACTED, text[cur_end:])
    return "".join(out)


def register_secret(value: str | bytes) -> None:
    """Remember a secret value so that it is cut out of anything redacted later."""
    global _matcher
    if isinstance(value, bytes):
        try:
            value = value.decode()
        except UnicodeDecodeError:
            return
    if len(value) >= _MIN_REGISTERED:
        with _lock:
            if value not in _registered:
                _registered.add(value)
                _matcher = _matcher.adding(value)


def forget_secrets() -> None:
    """Forget all registered values (tests, and the end of a run)."""
    global _matcher
    with _lock:
        _registered.clear()
        _matcher = _Matcher((), ())


def is_secret_key(key: str) -> bool:
    """True when a field named ``key`` holds secret material by its name."""
    return bool(_SECRET_KEY.search(key)) and not _SAFE_KEY.search(key)


def redact_text(text: str) -> str:
    """Redact secret-looking content and registered secret values inside ``text``."""
    if "PRIVATE KEY-----" in text:
        text = _PEM_PRIVATE.sub(REDACTED, text)
    matcher = _matcher  # one consistent snapshot
    if matcher.shortest and len(text) >= matcher.shortest:
        spans = matcher.spans(text)
        if spans:
            text = _cut(text, spans)
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
