"""Canonical JSON (ground floor): the bytes that get hashed, signed or authenticated.

:func:`canonical_json` is RFC 8785 (JCS) for the values irkit signs — no floats, safe integers,
string keys — the audit log's record form. :func:`sorted_compact` is the older form that the
keystore and escrow files authenticate as AEAD associated data (sorted keys, no spaces, non-ASCII
escaped); it differs from JCS only for non-ASCII text and stays byte-for-byte what existing files
were sealed with. Nothing else in irkit builds hashed or authenticated JSON by hand.
"""

from __future__ import annotations

import json
from typing import Any

import rfc8785


def canonical_json(obj: Any) -> bytes:
    """RFC 8785 bytes of ``obj`` (callers check it first: no floats, safe ints, str keys)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    if text.isascii():
        return text.encode("ascii")
    return rfc8785.dumps(obj)


def sorted_compact(obj: Any) -> bytes:
    """Sorted keys, ``,``/``:`` separators, ASCII escapes: the keystore's and escrow's authenticated form."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
