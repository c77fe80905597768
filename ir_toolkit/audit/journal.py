"""What writers of the audit log expose to the engine and the actions (:class:`Journal`).

``ir_toolkit.audit.log.AuditLog`` implements it. During planning the engine hands
actions a :class:`ReadOnlyJournal`, so "plan changes nothing" is enforced: an append
raises :class:`JournalReadOnly` (a bug in the action, reported on the plan item).
"""

from __future__ import annotations

from typing import Any, Protocol


class Journal(Protocol):
    def append_durable(self, *, action: str, actor: str, tenant: str | None = None, host: str | None = None,
                       params: dict[str, Any] | None = None, outcome: str = "ok") -> int: ...

    def checkpoint(self) -> str: ...


class JournalReadOnly(RuntimeError):
    """Something tried to write the audit log while planning (plans change nothing)."""


class ReadOnlyJournal:
    """The journal actions see while planning: every write raises :class:`JournalReadOnly`."""

    def append_durable(self, *, action: str, actor: str, tenant: str | None = None, host: str | None = None,
                       params: dict[str, Any] | None = None, outcome: str = "ok") -> int:
        raise JournalReadOnly(f"plan tried to write the audit record {action!r}: planning changes nothing")

    def checkpoint(self) -> str:
        raise JournalReadOnly("plan tried to checkpoint the audit log: planning changes nothing")
