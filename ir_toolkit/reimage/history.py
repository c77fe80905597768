"""Audit-history queries over irkit's own reimages: "already reimaged", "finish the re-keying".

Only records of the verified, signed audit log count (``audit.log.signed_records``): these
records decide whether a host was reimaged by irkit in this case and whether its changed host
key may be accepted.
"""

from __future__ import annotations

from typing import Any

from ir_toolkit.audit.log import signed_records

RECORD_START = "reimage.start"
RECORD_PROVIDER = "reimage.provider"
RECORD_DONE = "reimage.done"
RECORD_KEY_ACCEPTED = "host_key.accepted"
RECORD_KEY_REFUSED = "host_key.refused"


def host_records(case_id: str, tenant: str, host: str, actions: tuple[str, ...]) -> list[dict[str, Any]]:
    """This host's records of the given actions in the verified, signed audit log, oldest first.

    Never a record appended without the key (``audit.log.signed_records``): these
    records decide "already reimaged" and "accept the reinstalled host's key".
    """
    return [r for r in signed_records(case_id, actions=tuple(actions), tenant=tenant, host=host) or []
            if r.get("host") == host and r.get("tenant") == tenant]


def last_reimage(case_id: str, tenant: str, host: str) -> dict[str, Any] | None:
    """The newest ``reimage.done`` record of the host in this case (the host irkit reimaged), or None."""
    done = [r for r in host_records(case_id, tenant, host, (RECORD_DONE,)) if r.get("outcome") == "ok"]
    return done[-1] if done else None


def unfinished_reimage(case_id: str, tenant: str, host: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(``reimage.start``, ``reimage.provider``) of a reimage whose provider finished (ok) but that never
    reached ``reimage.done`` ok: the host was reinstalled, the re-keying is what is left."""
    start: dict[str, Any] | None = None
    pending: tuple[dict[str, Any], dict[str, Any]] | None = None
    for record in host_records(case_id, tenant, host, (RECORD_START, RECORD_PROVIDER, RECORD_DONE)):
        action, ok = record.get("action"), record.get("outcome") == "ok"
        if action == RECORD_START:
            start, pending = record, None
        elif action == RECORD_PROVIDER:
            pending = (start, record) if ok and start is not None else None
        elif action == RECORD_DONE and ok:
            pending = None
    return pending
