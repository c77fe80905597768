"""``triage.collect``: forensic collection as an engine step, so evidence is preserved before anything changes.

Runs the triage collector over the engine's own connection to the host, seals
the bundle under the case's evidence tree and writes the chain-of-custody record
(bundle and manifest SHA-256, and the evidence kind) to the audit log. The
profile's kind decides what the bundle is: ``profile: volatile`` is the snapshot
taken before isolation (``kind: volatile``), the others are full bundles (the
evidence gate, playbook/gate.py). Idempotent: a host whose evidence of that kind
is already collected, verified and recorded in this case is not collected again
(a full bundle also stands for a snapshot; ``force: true`` collects anew).
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

from ir_toolkit.actions.base import Action, ActionContext, ActionFailed, Outcome, Params, register
from ir_toolkit.audit.journal import Journal
from ir_toolkit.secrets.escrow import unique_recipients
from ir_toolkit.transports.base import TIMED_OUT, TransportError
from ir_toolkit.triage.collector import HostTarget, collect_host
from ir_toolkit.triage.crypto import load_public_key
from ir_toolkit.triage.custody import record_custody, record_failure
from ir_toolkit.triage.schema import Catalog, builtin_catalog, extended_catalog
from ir_toolkit.triage.status import host_evidence_status


def catalog(definitions: list[str] | tuple[str, ...] = ()) -> Catalog:
    """The shipped artifact catalogue, plus ``definitions`` directories (``irkit triage --definitions``)."""
    return extended_catalog(tuple(definitions)) if definitions else builtin_catalog()


class TriageParams(Params):
    profile: str = "ir_triage"
    #: encrypt the bundle to the responder's escrow key (irkit keys init)
    encrypt: bool = False
    #: run artifacts marked modifies_state (they change the host)
    allow_state_changes: bool = False
    force: bool = False
    transfer: str = "tar"
    #: extra artifact definition directories (*.yml, optional profiles.yml) added to the built-in ones
    definitions: list[str] = []
    #: also encrypt to these X25519 public keys (PEM file paths, or base64 of 32 bytes)
    recipients: list[str] = []


@register
class CollectTriage(Action):
    """Collect a triage profile from the host into a sealed, hashed evidence bundle."""

    name = "triage.collect"
    Params = TriageParams
    description = "forensic triage into a sealed evidence bundle with a custody record"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: hosts whose bundle (complete or partial) this instance sealed and recorded
        self._sealed: set[str] = set()

    def _status(self, ctx: ActionContext, params: TriageParams, rehash: bool) -> Any:
        kind = catalog(params.definitions).profiles[params.profile].kind
        return host_evidence_status(ctx.case_id, ctx.host.tenant, ctx.host.name, rehash=rehash, kind=kind)

    def plan(self, ctx: ActionContext, params: TriageParams) -> Outcome:
        catalog(params.definitions).select(params.profile, ctx.host.os, allow_modifies_state=params.allow_state_changes)
        status = self._status(ctx, params, rehash=False)
        if status.ready and not params.force:
            return Outcome(False, f"evidence already collected ({status.collection})")
        return Outcome(True, f"would collect triage profile {params.profile}")

    def apply(self, ctx: ActionContext, params: TriageParams) -> Outcome:
        selection = catalog(params.definitions).select(params.profile, ctx.host.os,
                                                       allow_modifies_state=params.allow_state_changes)
        status = self._status(ctx, params, rehash=True)
        if status.ready and not params.force:
            return Outcome(False, f"evidence already collected ({status.collection})",
                           {"collection": status.collection, "bundle_sha256": status.bundle_sha256})
        journal = ctx.journal
        recipients = [load_public_key(spec) for spec in params.recipients]
        if params.encrypt:
            # the evidence key pair, never the escrow key (security review §14)
            recipients.extend(ctx.keys.evidence_recipients())
        recipients = unique_recipients(recipients)
        target = HostTarget(case=ctx.case_id, msp=ctx.inventory.msp.name, tenant=ctx.host.tenant,
                            host=ctx.host.name, address=ctx.host.address, os=ctx.host.os,
                            ssh_user=ctx.conn.endpoint.user)
        target = dataclasses.replace(target, host_key_fingerprint=ctx.conn.host_key_fingerprint)
        actor = ctx.actor
        # The step's deadline is absolute: every remote call and every read of the collection ends
        # by then, however the host trickles; what was collected is sealed as `partial`.
        result = collect_host(ctx.conn, target, selection, recipients=recipients, transfer=params.transfer,
                              idle_timeout=max(5.0, min(120.0, ctx.remaining())), deadline=ctx.deadline.at,
                              on_sealed=lambda collection, seal: record_custody(journal, ctx.case_id, collection,
                                                                                seal, who=actor))
        if result.seal is not None:
            with self._lock:
                self._sealed.add(ctx.host.name)
        if result.status == "failed" or result.seal is None:
            raise ActionFailed(f"triage failed: {result.error or 'no bundle'}")
        where = result.collection.id if result.collection else "?"
        if result.timed_out:
            raise TransportError(TIMED_OUT, f"{ctx.host.name}: triage stopped at the step deadline; "
                                            f"partial evidence sealed ({where})")
        if result.error:
            raise ActionFailed(f"triage cut short ({result.error}); partial evidence sealed ({where})")
        what = "volatile snapshot: collected" if selection.kind == "volatile" else "collected"
        return Outcome(True, f"{what} {result.counts.get('collected', 0)} files ({result.status})",
                       {"collection": result.collection.id if result.collection else None, "kind": selection.kind,
                        "bundle": result.collection.relative(ctx.case_id) if result.collection else None,
                        "bundle_sha256": result.seal.get("bundle_sha256"), "status": result.status,
                        "counts": dict(result.counts), "seconds": f"{result.duration:.1f}",
                        "problems": list(result.problems), "anomalies": len(result.anomalies)})

    def on_failed(self, journal: Journal, actor: str, tenant: str, host: str, error: str) -> None:
        """No bundle (connection refused, host key changed, collection broke): ``evidence.collection_failed``.

        A host whose partial bundle was sealed (and recorded) in this run gets no failure record.
        """
        with self._lock:
            if host in self._sealed:
                return
        record_failure(journal, tenant, host, error, who=actor)

    def verify(self, ctx: ActionContext, params: TriageParams) -> Outcome:
        status = self._status(ctx, params, rehash=False)
        return Outcome(False, status.reason, ok=status.ready)
