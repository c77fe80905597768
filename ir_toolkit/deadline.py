"""One deadline object, passed everywhere: probes, streams and sleeps take what is left.

A :class:`Deadline` is a point on the ``time.monotonic()`` clock plus an optional
cancel event. ``child(limit)`` gives a nested deadline that never outlives its parent
(a step inside a host budget inside a run); ``sleep`` waits at most what is left and
wakes at once when the deadline is cancelled (a watchdog or Ctrl-C). Ground floor:
imports only the standard library.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Deadline:
    """``at`` is a ``time.monotonic()`` value; ``cancelled`` is shared with every child."""

    at: float
    cancelled: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)

    @classmethod
    def after(cls, seconds: float, *, cancelled: threading.Event | None = None) -> Deadline:
        return cls(time.monotonic() + seconds, cancelled or threading.Event())

    def remaining(self) -> float:
        """Seconds left (0 when cancelled; may be negative when passed)."""
        if self.cancelled.is_set():
            return 0.0
        return self.at - time.monotonic()

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0

    def child(self, limit: float | None) -> Deadline:
        """A deadline ``limit`` seconds from now, capped by this one (same cancel event)."""
        if limit is None:
            return self
        return Deadline(min(self.at, time.monotonic() + limit), self.cancelled)

    def cap(self, limit: float | None) -> float:
        """``limit`` (or what is left, when None) capped by what is left; may be <= 0."""
        left = self.remaining()
        return left if limit is None else min(limit, left)

    def sleep(self, seconds: float) -> bool:
        """Sleep ``seconds`` or until the deadline or a cancel; True if the full pause elapsed."""
        pause = min(seconds, self.remaining())
        if pause <= 0:
            return False
        return not self.cancelled.wait(pause) and pause >= seconds

    def cancel(self) -> None:
        self.cancelled.set()


NEVER = Deadline(float("inf"))
