"""Time to isolation and time to full containment: the run's first-class figures (docs/containment.md).

Measured by the engine from the start of the run (``run.start``):

* a host is **isolated** when its first step that destroys live network state (``host.isolate``,
  ``Action.destroys == "network"``) finished ok - the moment its ``host.isolated`` record is in the
  signed log. *Time to isolation* is the time to the last planned host isolated.
* a host is **fully contained** when the first run of every destructive step planned for it
  (isolation, then the credential and file changes: MSP keys revoked, accounts deprivileged and
  rotated, the directory's MSP accounts and krbtgt, sshd hardening; a reimage when planned) finished
  ok. Later repeats of the same action (the ``verify`` phase) prove the end state and do not count.
  *Time to full containment* is the time to the last planned host contained.

Both are given overall and per tenant, with how many of the planned hosts got there (a host that
failed or was held is not counted, and the figure is then marked ``complete: false``). On
``irkit resume`` the clock starts at the resumed run, and steps finished earlier are not counted.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Milestones:
    """Thread-safe record of when each host was isolated and fully contained (seconds since run start)."""

    #: host -> tenant, for every host with an isolation step (network class) in the run
    isolating: dict[str, str] = field(default_factory=dict)
    #: host -> tenant, for every host with a destructive step in the run
    containing: dict[str, str] = field(default_factory=dict)
    isolated_at: dict[str, float] = field(default_factory=dict)
    contained_at: dict[str, float] = field(default_factory=dict)
    #: host -> the plan item ids whose completion makes it fully contained (those not yet done)
    pending: dict[str, set[str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def plan(self, host: str, tenant: str, item_id: str, *, isolates: bool) -> None:
        """A destructive item the run will execute (the first of its action on the host)."""
        with self._lock:
            self.containing[host] = tenant
            self.pending.setdefault(host, set()).add(item_id)
            if isolates:
                self.isolating[host] = tenant

    def done(self, host: str, item_id: str, seconds: float, *, isolates: bool) -> tuple[bool, bool]:
        """An item finished ok at ``seconds``: (host newly isolated, host newly fully contained)."""
        newly_isolated = newly_contained = False
        with self._lock:
            if isolates and host in self.isolating and host not in self.isolated_at:
                self.isolated_at[host] = seconds
                newly_isolated = True
            todo = self.pending.get(host)
            if todo is not None and item_id in todo:
                todo.discard(item_id)
                if not todo and host not in self.contained_at:
                    self.contained_at[host] = seconds
                    newly_contained = True
        return newly_isolated, newly_contained

    @staticmethod
    def _figure(planned: dict[str, str], reached: dict[str, float], tenant: str | None) -> dict[str, Any]:
        hosts = [h for h, t in planned.items() if tenant is None or t == tenant]
        times = sorted(reached[h] for h in hosts if h in reached)
        return {
            "hosts": len(hosts), "reached": len(times), "complete": bool(hosts) and len(times) == len(hosts),
            "first_s": round(times[0], 3) if times else None, "last_s": round(times[-1], 3) if times else None,
        }

    def figures(self) -> dict[str, Any]:
        """``{"isolation": {...}, "containment": {...}, "tenants": {tenant: {"isolation": ..., ...}}}``.

        Each figure: ``hosts`` planned, ``reached`` so far, ``complete``, ``first_s`` and ``last_s``
        (seconds from run start; ``last_s`` of a complete figure is the time to isolation / full containment).
        """
        with self._lock:
            tenants = sorted(set(self.isolating.values()) | set(self.containing.values()))
            return {
                "isolation": self._figure(self.isolating, self.isolated_at, None),
                "containment": self._figure(self.containing, self.contained_at, None),
                "tenants": {t: {"isolation": self._figure(self.isolating, self.isolated_at, t),
                                "containment": self._figure(self.containing, self.contained_at, t)}
                            for t in tenants},
            }


def _ms(figure: dict[str, Any]) -> int | None:
    """The figure in whole milliseconds (audit records hold no floats), None unless complete."""
    return int(round(figure["last_s"] * 1000)) if figure["complete"] else None


def _audit_figures(iso: dict[str, Any], full: dict[str, Any]) -> dict[str, Any]:
    return {"time_to_isolation_ms": _ms(iso), "time_to_full_containment_ms": _ms(full),
            "isolated": f"{iso['reached']}/{iso['hosts']}", "contained": f"{full['reached']}/{full['hosts']}"}


def audit_params(figures: dict[str, Any]) -> dict[str, Any]:
    """The ``run.end`` params of the figures: overall, and per tenant in ``tenant_figures``.

    ``time_to_isolation_ms`` / ``time_to_full_containment_ms``: milliseconds from ``run.start``, null
    unless every planned host got there; ``isolated`` / ``contained``: ``reached/planned`` hosts.
    """
    return {**_audit_figures(figures["isolation"], figures["containment"]),
            "tenant_figures": {t: _audit_figures(f["isolation"], f["containment"])
                               for t, f in figures["tenants"].items()}}


def describe(figure: dict[str, Any], what: str) -> str:
    """One line: ``time to isolation 9.3 s (18/18 hosts, first 4.1 s)``; incomplete figures say so."""
    if not figure["hosts"]:
        return f"time to {what}: no host to {'isolate' if what == 'isolation' else 'contain'}"
    if not figure["reached"]:
        return f"time to {what}: - (0/{figure['hosts']} hosts)"
    head = f"time to {what} {figure['last_s']:.1f} s" if figure["complete"] else \
        f"time to {what}: not reached ({figure['reached']}/{figure['hosts']} hosts, last at {figure['last_s']:.1f} s)"
    if figure["complete"]:
        return f"{head} ({figure['reached']}/{figure['hosts']} hosts, first {figure['first_s']:.1f} s)"
    return head
