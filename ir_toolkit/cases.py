"""Every path of one case, in one place (ground floor: imports only :mod:`ir_toolkit.home`).

``$IRKIT_HOME/cases/<case-id>/``::

    audit/                       signed, append-only audit log and checkpoints (see audit/layout.py)
    journal/plan-<hash16>.json   plans (content-addressed; ``irkit resume`` reloads them)
    evidence/<tenant>/<host>/    triage bundles
    escrow/                      encrypted secrets
    playbooks/<kind>-<hash>.yml  generated playbooks (rotate, isolate, reimage, triage)
    keys/responder_ed25519       the case's own responder key (installed by responder.ensure_access)
    known_hosts                  the case's host-key pins (written only by audited acceptances)
    logs/<stamp>-<pid>.jsonl     one structured log per run
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ir_toolkit.home import case_dir

RESPONDER_KEY_NAME = "responder_ed25519"


@dataclass(frozen=True)
class CaseLayout:
    """The directory layout of one case. ``CaseLayout.of(case_id)`` validates the id."""

    case_id: str
    root: Path

    @classmethod
    def of(cls, case_id: str, *, create: bool = False) -> CaseLayout:
        return cls(case_id, case_dir(case_id, create=create))

    @property
    def audit(self) -> Path:
        return self.root / "audit"

    @property
    def journal(self) -> Path:
        return self.root / "journal"

    def plan_file(self, plan_hash: str) -> Path:
        return self.journal / f"plan-{plan_hash[:16]}.json"

    @property
    def evidence(self) -> Path:
        return self.root / "evidence"

    @property
    def escrow(self) -> Path:
        return self.root / "escrow"

    @property
    def playbooks(self) -> Path:
        return self.root / "playbooks"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def responder_key(self) -> Path:
        """The case-wide responder key of earlier versions (read only; new keys are per tenant)."""
        return self.keys / RESPONDER_KEY_NAME

    def tenant_responder_key(self, tenant: str) -> Path:
        """The case's responder key for one tenant (encrypted at rest; never valid for another tenant)."""
        return self.keys / f"responder_{tenant}_ed25519"

    @property
    def known_hosts(self) -> Path:
        """The case's own pins (written only by audited acceptances, e.g. after a reimage); they override."""
        return self.root / "known_hosts"
