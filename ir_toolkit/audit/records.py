"""Audit records: one RFC 8785 (JCS) canonical JSON object per line.

A record::

    {"action":"credential.revoked","actor":"dana@ctl","case":"IR-1","host":"web01",
     "outcome":"ok","params":{...},"prev":"<64 hex>","seq":42,"tenant":"globex",
     "ts":"2026-05-01T12:00:00.123456Z","v":1}

* ``seq`` counts from 1; record ``seq`` is leaf ``seq - 1`` of the Merkle tree.
* ``prev`` is the hex leaf hash SHA-256(0x00 || line) of record ``seq - 1``
  (64 zeros for seq 1), so a streaming verifier names the first bad record.
* ``tenant`` and ``host`` are omitted when not given; ``params`` is always an object.
* No floats (JCS number formatting is a classic source of disagreement), no
  integers outside +-(2^53-1), no duplicate keys, nothing but the canonical bytes.

Reserved actions written by the log itself start with ``audit.``.

Encoding uses the C ``json`` encoder with sorted keys and compact separators,
which equals RFC 8785 for the values allowed here whenever the text is ASCII;
otherwise (key order by UTF-16 code units can differ) the ``rfc8785`` package
is authoritative. The verifier accepts a line only if re-encoding its parsed
value gives exactly the same bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import rfc8785

from ir_toolkit.canonical import canonical_json
from ir_toolkit.timeutil import stamp

from ir_toolkit.redaction import redact, redact_text

VERSION = 1
GENESIS_PREV = "0" * 64
MAX_SAFE_INT = 2**53 - 1

# Actions the log writes itself.
ACTION_CREATED = "audit.log_created"
ACTION_RECOVERED = "audit.recovered"
ACTION_KEY_ROTATED = "audit.key_rotated"
ACTION_KEY_ACTIVATED = "audit.key_activated"
RESERVED_PREFIX = "audit."

REQUIRED_FIELDS = frozenset({"v", "seq", "ts", "case", "actor", "action", "params", "outcome", "prev"})
OPTIONAL_FIELDS = frozenset({"tenant", "host"})
ALL_FIELDS = REQUIRED_FIELDS | OPTIONAL_FIELDS

TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class RecordError(ValueError):
    """A line that is not a valid canonical record; ``str()`` is the reason."""


def now_ts() -> str:
    """RFC 3339 UTC with microseconds and a ``Z`` (:func:`ir_toolkit.timeutil.stamp`)."""
    return stamp()


# --------------------------------------------------------------------------- encoding


def _check_value(value: Any, where: str) -> Any:
    """Reject floats and other non-JSON values; return a plain JSON value."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            raise TypeError(f"audit record field {where}: integer {value} is outside +-(2^53-1)")
        return int(value)
    if isinstance(value, float):
        raise TypeError(f"audit record field {where}: floats are not allowed (use an int or a string)")
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"audit record field {where}: keys must be strings, not {type(k).__name__}")
            out[k] = _check_value(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [_check_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"audit record field {where}: {type(value).__name__} is not a JSON value")


def canonical(obj: Any) -> bytes:
    """RFC 8785 bytes of ``obj`` (already checked: no floats, safe ints, str keys)."""
    return canonical_json(obj)


def build_record(
    *, seq: int, prev: str, case: str, action: str, actor: str, tenant: str | None = None,
    host: str | None = None, params: Mapping[str, Any] | None = None, outcome: str = "ok",
    ts: str | None = None,
) -> dict[str, Any]:
    """The record dict, redacted and checked (raises TypeError for floats etc.)."""
    for name, value in (("action", action), ("actor", actor), ("outcome", outcome)):
        if not isinstance(value, str) or not value:
            raise TypeError(f"audit record field {name} must be a non-empty string")
    for name, value in (("tenant", tenant), ("host", host)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"audit record field {name} must be a string")
    if params is not None and not isinstance(params, Mapping):
        raise TypeError("audit record params must be a mapping")
    clean_params = _check_value(redact(dict(params or {})), "params")
    record: dict[str, Any] = {
        "v": VERSION, "seq": seq, "ts": ts or now_ts(), "case": case,
        "actor": redact_text(actor), "action": action, "params": clean_params,
        "outcome": redact_text(outcome), "prev": prev,
    }
    if tenant is not None:
        record["tenant"] = redact_text(tenant)
    if host is not None:
        record["host"] = redact_text(host)
    return record


def encode_record(record: Mapping[str, Any]) -> bytes:
    """Canonical line bytes (without the newline)."""
    return canonical(record)


# --------------------------------------------------------------------------- decoding


def _no_float(text: str) -> Any:
    raise RecordError(f"float {text} is not allowed")


def _no_constant(text: str) -> Any:
    raise RecordError(f"{text} is not allowed")


def _safe_int(text: str) -> int:
    value = int(text)
    if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
        raise RecordError(f"integer {text} is outside +-(2^53-1)")
    return value


def _pairs_no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise RecordError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _diagnose(line: bytes) -> str:
    """Why a line that parsed is not canonical (slow path, only for bad lines)."""
    try:
        obj = json.loads(line.decode("utf-8"), parse_float=_no_float, parse_constant=_no_constant,
                         parse_int=_safe_int, object_pairs_hook=_pairs_no_duplicates)
    except RecordError as exc:
        return str(exc)
    except ValueError as exc:
        return f"not JSON: {exc}"
    try:
        expected = rfc8785.dumps(obj)
    except rfc8785.CanonicalizationError as exc:
        return f"cannot be canonicalised: {exc}"
    if expected != line:
        return "not RFC 8785 canonical JSON (key order, whitespace, escapes or number form differ)"
    return "not canonical"


_DECODER = json.JSONDecoder(parse_float=_no_float, parse_constant=_no_constant, parse_int=_safe_int)
_SCAN = _DECODER.scan_once
_ENCODE = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def decode_line(line: bytes) -> dict[str, Any]:
    """Parse one record line (without its newline); raise :class:`RecordError` if not canonical.

    The fast path parses with the C scanner and re-encodes with the C encoder
    (equal to RFC 8785 for ASCII text); other lines use the ``rfc8785`` package.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise RecordError("not valid UTF-8") from None
    try:
        obj, end = _SCAN(text, 0)
    except RecordError as exc:
        raise RecordError(str(exc)) from None
    except StopIteration:
        raise RecordError("not JSON") from None
    except ValueError as exc:
        raise RecordError(f"not JSON: {exc.args[0] if exc.args else exc}") from None
    if end != len(text):
        raise RecordError(_diagnose(line))
    if type(obj) is not dict:
        raise RecordError("not a JSON object")
    if text.isascii():
        try:
            again = _ENCODE(obj)
        except ValueError:
            again = None
        if again != text:
            raise RecordError(_diagnose(line))
    else:
        try:
            again_bytes = rfc8785.dumps(obj)
        except rfc8785.CanonicalizationError as exc:
            raise RecordError(f"cannot be canonicalised: {exc}") from None
        if again_bytes != line:
            raise RecordError(_diagnose(line))
    return obj


_STR = str
_TS_MATCH = TS_RE.match
_HEX_MATCH = _HEX64.match


def check_fields(obj: dict[str, Any], *, seq: int, case: str | None) -> None:
    """Schema of a v1 record (types, version, sequence number, case)."""
    # Fast path: one expression for the common, valid record; any doubt goes to the checks below.
    try:
        if (
            obj.keys() <= ALL_FIELDS
            and obj["seq"] == seq and type(obj["seq"]) is int
            and obj["v"] == VERSION and type(obj["v"]) is int
            and (case is None or obj["case"] == case) and type(obj["case"]) is _STR and obj["case"]
            and type(obj["actor"]) is _STR and obj["actor"]
            and type(obj["action"]) is _STR and obj["action"]
            and type(obj["outcome"]) is _STR and obj["outcome"]
            and type(obj["params"]) is dict
            and type(obj.get("tenant", "")) is _STR and type(obj.get("host", "")) is _STR
            and type(obj["ts"]) is _STR and _TS_MATCH(obj["ts"])
            and type(obj["prev"]) is _STR and len(obj["prev"]) == 64 and _HEX_MATCH(obj["prev"])
        ):
            return
    except KeyError:
        pass
    _check_fields_slow(obj, seq=seq, case=case)


def _check_fields_slow(obj: dict[str, Any], *, seq: int, case: str | None) -> None:
    """Schema of a v1 record (types, version, sequence number, case)."""
    keys = obj.keys()
    if not REQUIRED_FIELDS <= keys:
        missing = sorted(REQUIRED_FIELDS - keys)
        raise RecordError(f"missing field(s) {', '.join(missing)}")
    if not keys <= ALL_FIELDS:
        extra = sorted(keys - ALL_FIELDS)
        raise RecordError(f"unknown field(s) {', '.join(extra)}")
    if obj["v"] != VERSION or type(obj["v"]) is not int:
        raise RecordError(f"unsupported record version {obj['v']!r}")
    got = obj["seq"]
    if type(got) is not int:
        raise RecordError("seq is not an integer")
    if got != seq:
        if got > seq:
            raise RecordError(f"expected seq {seq}, found seq {got}: record {seq} is missing (deleted) "
                              "or records are out of order")
        raise RecordError(f"expected seq {seq}, found seq {got}: records are duplicated or out of order")
    ts = obj["ts"]
    if type(ts) is not str or not TS_RE.match(ts):
        raise RecordError("ts is not an RFC 3339 UTC timestamp")
    if case is not None and obj["case"] != case:
        raise RecordError(f"record belongs to case {obj['case']!r}, not {case!r}")
    for name in ("case", "actor", "action", "outcome"):
        if type(obj[name]) is not str or not obj[name]:
            raise RecordError(f"{name} is not a non-empty string")
    for name in ("tenant", "host"):
        if name in obj and type(obj[name]) is not str:
            raise RecordError(f"{name} is not a string")
    if type(obj["params"]) is not dict:
        raise RecordError("params is not an object")
    prev = obj["prev"]
    if type(prev) is not str or len(prev) != 64 or not _HEX64.match(prev):
        raise RecordError("prev is not 64 lowercase hex digits")
