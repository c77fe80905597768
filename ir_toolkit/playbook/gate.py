"""The evidence gate: no destructive step on a host before the evidence of what it destroys is sealed.

Each destructive action declares what it destroys (``Action.destroys``, actions/base.py) and the
gate requires the matching evidence, collected, verified (re-hashed against its seal) and recorded
in the case's signed audit log (triage/status.py):

============  ===========================================  ===================================
destroys      e.g.                                         requires
============  ===========================================  ===================================
network       host.isolate (live flows, sockets, peers)    a volatile snapshot or a full bundle
credentials   ssh_keys.revoke, accounts.rotate/deprivilege, a full bundle
              directory.*, ansible.playbook (files)
everything    host.reimage                                  a full bundle
============  ===========================================  ===================================

So a host whose full bundle is unusable (a hostile host that lies about its hashes) is still
isolated on its volatile snapshot, while its credential changes are refused. A tenant's directory
pseudo-host passes with its directory evidence (docs/active-directory.md). The engine applies the
gate to every ``destructive`` step - on by default: an :class:`~ir_toolkit.playbook.engine.Engine`
built without an explicit gate uses :func:`evidence_gate` for the plan's case. A refused step names
the missing evidence kind; it runs anyway only with a written ``evidence_override`` reason, which
the engine records (``gate.override``) first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from ir_toolkit.actions.base import DESTROYS_CREDENTIALS, DESTROYS_EVERYTHING, DESTROYS_NETWORK
from ir_toolkit.triage.status import FULL, KIND_TEXT, VOLATILE

#: the evidence kind each destruction class needs
REQUIRED_KIND: dict[str, str] = {
    DESTROYS_NETWORK: VOLATILE,
    DESTROYS_CREDENTIALS: FULL,
    DESTROYS_EVERYTHING: FULL,
}
#: what each class destroys, for refusals and docs
DESTROYS_TEXT: dict[str, str] = {
    DESTROYS_NETWORK: "live network state",
    DESTROYS_CREDENTIALS: "credentials and files",
    DESTROYS_EVERYTHING: "everything on the host",
}


def required_kind(destroys: str | None) -> str:
    """The evidence kind a destruction class needs (an undeclared class needs the full bundle)."""
    return REQUIRED_KIND.get(destroys or DESTROYS_CREDENTIALS, FULL)


@dataclass(frozen=True)
class GateDecision:
    """The gate's answer for one host and one destruction class (truthy when the step may run)."""

    ok: bool
    #: the evidence kind required (``volatile`` or ``full``)
    needs: str
    destroys: str
    #: the one-line reason (what is missing, or what passed)
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok

    @property
    def needs_text(self) -> str:
        """``volatile snapshot`` (or a full bundle) / ``full evidence bundle``."""
        return (f"{KIND_TEXT[VOLATILE]} (or a {KIND_TEXT[FULL]})" if self.needs == VOLATILE
                else KIND_TEXT[FULL])


#: gate(tenant, host, destroys) -> the decision
EvidenceGate = Callable[[str, str, str], GateDecision]


def _directory_ready(case_id: str, tenant: str, host: str) -> bool:
    """A tenant's directory pseudo-host passes with its directory evidence (docs/active-directory.md)."""
    from ir_toolkit.actions.directory import evidence_files, evidence_ready

    return bool(evidence_files(case_id, tenant, host)) and evidence_ready(case_id, tenant, host)[0]


def evidence_gate(case_id: str) -> EvidenceGate:
    """A host passes for a destruction class when it has the matching evidence, collected, matching its
    seal and with a custody record in the signed audit log.

    A pass is remembered per (host, evidence kind) for the rest of the run (the bundle is re-hashed
    once); a full bundle that passed also opens the classes that need only a snapshot.
    """
    from ir_toolkit.triage.status import host_evidence_status

    passed: set[tuple[str, str, str]] = set()
    lock = threading.Lock()

    def gate(tenant: str, host: str, destroys: str | None = None) -> GateDecision:
        destroys = destroys or DESTROYS_CREDENTIALS
        needs = required_kind(destroys)
        accepted = (VOLATILE, FULL) if needs == VOLATILE else (FULL,)
        with lock:
            if any((tenant, host, kind) in passed for kind in accepted):
                return GateDecision(True, needs, destroys, "passed earlier in this run")
        status = host_evidence_status(case_id, tenant, host, rehash=True, kind=needs)
        if status.ready:
            with lock:
                passed.add((tenant, host, status.kind or needs))
            return GateDecision(True, needs, destroys, status.reason)
        if _directory_ready(case_id, tenant, host):
            with lock:
                passed.add((tenant, host, FULL))
            return GateDecision(True, needs, destroys, "directory evidence collected")
        return GateDecision(False, needs, destroys, status.reason)

    return gate


def refusal(host: str, step_action: str, decision: GateDecision) -> str:
    """The operator's one line for a refused step: what it destroys and which evidence is missing."""
    return (f"refused: no verified evidence for {host}: {step_action} destroys "
            f"{DESTROYS_TEXT.get(decision.destroys, decision.destroys)} and needs a {decision.needs_text} "
            f"({decision.reason}); collect it first or set evidence_override: <reason> on the step")
