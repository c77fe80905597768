"""The one retry policy: exponential backoff with jitter, bounded by attempts and by a deadline.

"Transient" has one meaning: ``TransportError.transient`` (kinds ``transient`` - a dropped
banner, a reset, a channel that would not open - and ``unreachable`` - a lost
connection): a retry may help. Who retries what:

* the engine retries a whole step (apply + verify) after a transient failure, only if
  the action is ``retry_safe``, at most ``retries`` times (playbook), over a fresh
  connection;
* the pool, opening a connection, retries only kind ``transient`` (``connect_retryable``):
  an unreachable host is left to the step policy, so one down host costs one reconnect,
  not two nested loops;
* login probes retry transient failures within their step's deadline.

Every pause is ``deadline.sleep``: it never outlasts the deadline and wakes when the
deadline is cancelled (the wave watchdog).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ir_toolkit.deadline import Deadline
from ir_toolkit.transports.base import TIMED_OUT, TRANSIENT, TransportError

T = TypeVar("T")


def transient(exc: BaseException) -> bool:
    """A retry may help."""
    return isinstance(exc, TransportError) and exc.transient


def connect_retryable(exc: BaseException) -> bool:
    """While opening a connection: only ``transient`` (sshd MaxStartups drops, resets)."""
    return isinstance(exc, TransportError) and exc.kind == TRANSIENT


@dataclass(frozen=True)
class RetryPolicy:
    #: retries after the first try
    retries: int
    base: float = 0.2
    cap: float = 5.0
    jitter: bool = True

    def pause(self, attempt: int) -> float:
        """The pause before retry number ``attempt`` (1-based)."""
        pause = min(self.base * 2 ** attempt, self.cap)
        return pause * (0.5 + random.random()) if self.jitter else pause

    def call(self, func: Callable[[], T], deadline: Deadline, *,
             retry_if: Callable[[BaseException], bool] = transient, what: str = "") -> T:
        """``func()``, retried per this policy while ``retry_if(error)`` and the deadline allows."""
        attempt = 0
        while True:
            try:
                return func()
            except TransportError as exc:
                if not retry_if(exc) or attempt >= self.retries:
                    raise
                last = exc
            attempt += 1
            pause = self.pause(attempt)
            if deadline.remaining() <= pause or not deadline.sleep(pause):
                raise TransportError(TIMED_OUT, f"{what + ': ' if what else ''}deadline reached while retrying: {last}")
