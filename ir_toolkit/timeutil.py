"""The one timestamp format (ground floor: standard library only).

Every point in time irkit writes into a record or a metadata file is :func:`stamp`: RFC 3339,
UTC, microseconds, ``Z`` — the audit log's format (signed records carry it; it never changes).
File and id names use :func:`file_stamp` (no separators a file system or a shell would mind).
"""

from __future__ import annotations

import datetime as _dt


def utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def stamp(when: _dt.datetime | None = None) -> str:
    """``2026-12-01T11:30:00.123456Z`` (``when`` converted to UTC; default: now)."""
    moment = utc_now() if when is None else when.astimezone(_dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_stamp(text: str) -> _dt.datetime:
    """A :func:`stamp` (or any RFC 3339 time with ``Z`` or an offset) as an aware datetime."""
    return _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def file_stamp(when: _dt.datetime | None = None) -> str:
    """``20261201T113000Z``: for file names and ids."""
    moment = utc_now() if when is None else when.astimezone(_dt.timezone.utc)
    return moment.strftime("%Y%m%dT%H%M%SZ")
