"""The evidence gate: no destructive step on a host before its evidence is collected, verified and recorded.

The engine applies it to every step whose action is ``destructive`` - on by default:
an :class:`~ir_toolkit.playbook.engine.Engine` built without an explicit gate uses
:func:`evidence_gate` for the plan's case. A step passes anyway only with a written
``evidence_override`` reason, which the engine records (``gate.override``) first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

#: gate(tenant, host) -> True when the host's evidence is ready
EvidenceGate = Callable[[str, str], bool]


def _directory_ready(case_id: str, tenant: str, host: str) -> bool:
    """A tenant's directory pseudo-host passes with its directory evidence (docs/active-directory.md)."""
    from ir_toolkit.actions.directory import evidence_files, evidence_ready

    return bool(evidence_files(case_id, tenant, host)) and evidence_ready(case_id, tenant, host)[0]


def evidence_gate(case_id: str) -> EvidenceGate:
    """A host passes when its evidence bundle is collected, matches its seal and has a custody record.

    A passing host is remembered for the rest of the run (the bundle is re-hashed once).
    """
    from ir_toolkit.triage.status import host_evidence_status

    passed: set[tuple[str, str]] = set()
    lock = threading.Lock()

    def gate(tenant: str, host: str) -> bool:
        with lock:
            if (tenant, host) in passed:
                return True
        if host_evidence_status(case_id, tenant, host, rehash=True).ready or _directory_ready(case_id, tenant, host):
            with lock:
                passed.add((tenant, host))
            return True
        return False

    return gate
