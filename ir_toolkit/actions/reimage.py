"""``host.reimage``: reinstall through the host's provider, then re-key and prove access.

Destructive: behind the evidence gate (``requires_approval`` in the playbooks). Drives the
host's reimage provider (``bmc.provider``: redfish, command, lab; :mod:`ir_toolkit.reimage`) to
completion within the step's deadline, then handles the host key change: the new key is
accepted **only** because irkit itself reimaged this host in this case (a ``reimage.provider``
audit record with outcome ok names it), it must match the key the provider reported when the
provider reports one, and it is written to the case's ``known_hosts``, where it overrides every
other pin of that host for the rest of the case. Finally a fresh login over the new pin proves
the responder access the provider installed. Every phase and both fingerprints are audit records.

After it: ``accounts.provision`` (:mod:`ir_toolkit.actions.provision`) and ``host.verify_clean``
(:mod:`ir_toolkit.actions.verify_clean`).

Audit records (``params`` always carry the case): ``reimage.start``, ``reimage.provider``
(the provider's redacted result), ``host_key.accepted`` / ``host_key.refused`` (old and
new fingerprints), ``reimage.done``. See docs/reimage.md.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import paramiko
from pydantic import Field, field_validator

from ir_toolkit.actions.base import DESTROYS_EVERYTHING, Action, ActionContext, ActionFailed, Outcome, Params, register
from ir_toolkit.actions.support import record
from ir_toolkit.errors import IrkitError
from ir_toolkit.inventory.model import Host
from ir_toolkit.reimage import ReimageOptions, ReimageProvider, ReimageStatus, provider_for, run_to_completion
from ir_toolkit.reimage.history import (
    RECORD_DONE,
    RECORD_KEY_ACCEPTED,
    RECORD_KEY_REFUSED,
    RECORD_PROVIDER,
    RECORD_START,
    host_records,
    last_reimage,
    unfinished_reimage,
)
from ir_toolkit.secrets.references import parse_ref, resolve
from ir_toolkit.timeutil import stamp as now
from ir_toolkit.transports.base import TransportError
from ir_toolkit.transports.hostkeys import fingerprint, write_case_pin
from ir_toolkit.transports.probes import scan_host_key, wait_for_host_key


def reimaged_here(ctx: ActionContext) -> dict[str, Any] | None:
    """The ``reimage.done`` record whose new key is the key this connection sees, or None.

    That is: irkit reimaged this host in this case *and* we are talking to the reinstalled system.
    """
    done = last_reimage(ctx.case_id, ctx.host.tenant, ctx.host.name)
    if done is None:
        return None
    if (done.get("params") or {}).get("new_host_key_fingerprint") != ctx.conn.host_key_fingerprint:
        return None
    return done



def key_trust(reported_fp: str | None, confirmed_fp: str | None, accept_first_key: bool) -> str | None:
    """Where the reinstalled host's expected key comes from: ``provider``, ``operator`` (confirmed out of
    band), ``first_use`` (explicitly allowed by ``accept_first_key``), or None (fail closed)."""
    if reported_fp:
        return "provider"
    if confirmed_fp:
        return "operator"
    return "first_use" if accept_first_key else None


def unconfirmed_key_message(host: Host, provider: str) -> str:
    return (f"{host.name}: the reinstalled host's key cannot be confirmed (the {provider} provider reports "
            f"none): give its fingerprint (irkit reimage --host-key {host.name}=SHA256:..., or host_keys: in "
            "the step) or set accept_first_key: true in the playbook to trust the first key offered")


def accept_reimaged_host_key(ctx: ActionContext, key: paramiko.PKey, *, old_fp: str | None,
                             reimage_seq: int, reported_fp: str | None, confirmed_fp: str | None = None,
                             accept_first_key: bool = False, provider: str = "reimage") -> dict[str, Any]:
    """The one place irkit accepts a changed host key: only for a host it reimaged itself in this case.

    Checks the audit log for the ``reimage.provider`` record ``reimage_seq`` (outcome ok, this
    tenant/host, this case), then that the host offers exactly the key the provider reported or
    the operator confirmed (``confirmed_fp``); with neither, the first key offered is trusted only
    when the playbook says ``accept_first_key: true``, and the record says so (``trust: first_use``).
    Then the case pin is replaced, the fleet's pins updated, and a ``host_key.accepted`` record
    written. Anything else is refused with ``host_key.refused``.
    """
    host = ctx.host
    new_fp = fingerprint(key.asbytes())
    trust = key_trust(reported_fp, confirmed_fp, accept_first_key)
    facts = {"old_host_key_fingerprint": old_fp, "new_host_key_fingerprint": new_fp,
             "provider_reported_fingerprint": reported_fp, "operator_confirmed_fingerprint": confirmed_fp,
             "trust": trust, "accept_first_key": accept_first_key, "reimage_record": reimage_seq,
             "address": host.address, "port": int(host.port or 22)}
    proof = [r for r in host_records(ctx.case_id, host.tenant, host.name, (RECORD_PROVIDER,))
             if r.get("seq") == reimage_seq and r.get("outcome") == "ok" and r.get("case") == ctx.case_id]
    why = None
    if not proof:
        why = (f"{host.name}: no record that irkit reimaged this host in case {ctx.case_id} "
               f"(audit seq {reimage_seq}); a changed host key is accepted only after irkit's own reimage")
    elif reported_fp and confirmed_fp and reported_fp != confirmed_fp:
        why = (f"{host.name}: the reimage provider reported host key {reported_fp} but the operator "
               f"confirmed {confirmed_fp}")
    elif reported_fp and reported_fp != new_fp:
        why = (f"host key changed — possible interception: {host.name} offers {new_fp} but the reimage "
               f"provider reported {reported_fp}")
    elif confirmed_fp and confirmed_fp != new_fp:
        why = (f"host key changed — possible interception: {host.name} offers {new_fp} but the operator "
               f"confirmed {confirmed_fp}")
    elif trust is None:
        why = unconfirmed_key_message(host, provider)
    if why:
        record(ctx, RECORD_KEY_REFUSED, {**facts, "reason": why}, outcome="refused")
        raise ActionFailed(why)
    path = write_case_pin(ctx.case_id, host.address, int(host.port or 22), key)
    if ctx.pool is not None:
        ctx.pool.known_hosts.pin_override(host.address, int(host.port or 22), new_fp)
    facts.update(known_hosts=str(path), host_key_changed=old_fp != new_fp, key_type=key.get_name())
    facts["seq"] = record(ctx, RECORD_KEY_ACCEPTED, facts)
    return facts




class ReimageParams(Params):
    #: install image for virtual media (redfish + Cd); ``http(s)://``, ``nfs://``, ``cifs://``
    image_url: str | None = None
    boot_target: Literal["Cd", "Pxe"] = "Cd"
    #: why this host is reimaged (goes into the audit log)
    reason: str | None = None
    #: reimage again even though irkit already reimaged this host in this case
    force: bool = False
    #: provider deadlines (seconds); each is also capped by the step's own deadline
    media_timeout: float = Field(default=120, gt=0)
    power_off_timeout: float = Field(default=300, gt=0)
    power_on_timeout: float = Field(default=600, gt=0)
    override_grace: float = Field(default=90, ge=0)
    install_timeout: float = Field(default=3600, gt=0)
    command_timeout: float = Field(default=3600, gt=0)
    poll_interval: float = Field(default=2, gt=0, le=60)
    #: host name -> SHA256 fingerprint of the reinstalled host's key, confirmed out of band by the
    #: operator (``irkit reimage --host-key HOST=SHA256:...``); needed when the provider reports none
    host_keys: dict[str, str] = {}
    #: trust the first key the reinstalled host offers (TOFU) when neither the provider nor the operator
    #: names it; recorded as ``trust: first_use`` in ``host_key.accepted``. Off: such a reimage is refused
    accept_first_key: bool = False

    @field_validator("host_keys")
    @classmethod
    def _fingerprints(cls, value: dict[str, str]) -> dict[str, str]:
        import re

        for name, fp in value.items():
            if not re.fullmatch(r"SHA256:[A-Za-z0-9+/]{43}", fp or ""):
                raise ValueError(f"host_keys[{name}]: {fp!r} is not a SHA256:... host key fingerprint")
        return value

    @field_validator("image_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and value.split("://", 1)[0] not in ("http", "https", "nfs", "cifs", "smb"):
            raise ValueError("image_url must be an http(s)://, nfs:// or cifs:// URL")
        return value


def _resolver(ctx: ActionContext) -> Any:
    """Secret references for BMCs: ``env:``/``file:``, and ``escrow:`` from this case (keys from the context)."""
    def resolve_secret(reference: str) -> str:
        ref = parse_ref(reference)
        if ref.scheme == "escrow":
            from ir_toolkit.redaction import register_secret
            from ir_toolkit.secrets.escrow import resolve_reference

            value = resolve_reference(ctx.case_id, ref.target, ctx.keys.escrow_private_key())
            register_secret(value)
            return value
        return resolve(ref)

    return resolve_secret


def _ssh_answers(host: Host) -> bool:
    """Ready check for providers that wait for the reinstalled host: its sshd completes a key exchange."""
    try:
        scan_host_key(host.address, int(host.port or 22), 3.0)
    except TransportError:
        return False
    return True


@register
class ReimageHost(Action):
    """Reinstall the host through its provider, accept its new key (only because irkit reimaged it), prove access."""

    name = "host.reimage"
    Params = ReimageParams
    description = "reinstall via the host's BMC/provider, pin the new host key, prove responder access"
    destructive = True
    destroys = DESTROYS_EVERYTHING
    #: never run twice: a retry would reinstall the host again (``_guarded`` also turns transport
    #: failures after the start into ActionFailed)
    retry_safe = False

    def _options(self, ctx: ActionContext, params: ReimageParams) -> ReimageOptions:
        left = max(1.0, ctx.remaining())
        return ReimageOptions(
            image_url=params.image_url, boot_target=params.boot_target,
            media_timeout=min(params.media_timeout, left), power_off_timeout=min(params.power_off_timeout, left),
            power_on_timeout=min(params.power_on_timeout, left), override_grace=min(params.override_grace, left),
            install_timeout=min(params.install_timeout, left), command_timeout=min(params.command_timeout, left),
            poll_interval=params.poll_interval, ready_check=_ssh_answers, resolve_secret=_resolver(ctx),
            case_id=ctx.case_id,
        )

    def _already(self, ctx: ActionContext, params: ReimageParams) -> dict[str, Any] | None:
        return None if params.force else reimaged_here(ctx)

    def plan(self, ctx: ActionContext, params: ReimageParams) -> Outcome:
        done = self._already(ctx, params)
        if done is not None:
            return Outcome(False, f"already reimaged in this case (audit seq {done['seq']}); nothing to do")
        if ctx.host.bmc is None:
            return Outcome(True, f"CANNOT reimage: {ctx.host.name} has no bmc: section in the inventory")
        from ir_toolkit.triage.status import host_evidence_status

        evidence = host_evidence_status(ctx.case_id, ctx.host.tenant, ctx.host.name, rehash=False)
        gate = "evidence verified" if evidence.ready else f"NO EVIDENCE, will be refused ({evidence.reason})"
        try:
            reports = provider_for(ctx.host, self._options(ctx, params)).reports_host_key
        except IrkitError:
            reports = False
        confirmed = params.host_keys.get(ctx.host.name)
        trust = {"provider": "the new key as the provider reports it",
                 "operator": f"only the operator-confirmed new key {confirmed}",
                 "first_use": "the FIRST key offered (accept_first_key: true)",
                 None: "nothing: REFUSED, the new key cannot be confirmed (give --host-key or accept_first_key)"}[
            key_trust("provider" if reports else None, confirmed, params.accept_first_key)]
        return Outcome(True, f"would reimage via {ctx.host.bmc.provider} ({gate}); host key "
                             f"{ctx.conn.host_key_fingerprint} will be replaced by {trust}")

    def apply(self, ctx: ActionContext, params: ReimageParams) -> Outcome:
        host = ctx.host
        done = self._already(ctx, params)
        if done is not None:
            p = done.get("params") or {}
            return Outcome(False, f"already reimaged in this case (audit seq {done['seq']}); nothing to do",
                           {"new_host_key_fingerprint": p.get("new_host_key_fingerprint")}, verified=True)
        fleet = ctx.require_pool()
        pending = None if params.force else unfinished_reimage(ctx.case_id, host.tenant, host.name)
        if pending is not None:
            # The provider finished in an earlier run that stopped before the new key was pinned
            # (crash, kill -9): never reinstall again for that; finish the re-keying instead.
            start, provider_record = pending
            sp, pp = start.get("params") or {}, provider_record.get("params") or {}
            facts = pp.get("facts") or {}
            return self._guarded(ctx, sp.get("old_host_key_fingerprint"), sp.get("started_at") or start["ts"],
                                 lambda t0: self._rekey(ctx, params, fleet, str(pp.get("provider")),
                                                        provider_record["seq"],
                                                        facts.get("new_host_key_fingerprint"),
                                                        sp.get("old_host_key_fingerprint"),
                                                        sp.get("started_at") or start["ts"], t0, resumed=True))
        try:
            provider = provider_for(host, self._options(ctx, params))
        except IrkitError as exc:
            raise ActionFailed(str(exc)) from None
        # fail closed BEFORE the host is destroyed: after the reinstall its key must come from somewhere
        if key_trust("provider" if provider.reports_host_key else None, params.host_keys.get(host.name),
                     params.accept_first_key) is None:
            raise ActionFailed(unconfirmed_key_message(host, provider.name))
        old_fp = ctx.conn.host_key_fingerprint
        started = now()
        record(ctx, RECORD_START, {"provider": provider.name, "reason": params.reason, "image_url": params.image_url,
                                    "boot_target": params.boot_target, "old_host_key_fingerprint": old_fp,
                                    "forced": params.force, "started_at": started}, outcome="intent")
        return self._guarded(ctx, old_fp, started,
                             lambda t0: self._reimage(ctx, params, provider, fleet, old_fp, started, t0))

    def _guarded(self, ctx: ActionContext, old_fp: str | None, started: str, body: Any) -> Outcome:
        """Run ``body``: once the host is being destroyed nothing may raise a TransportError, which the
        engine would retry (a retry would reimage the host a second time)."""
        try:
            return body(time.monotonic())
        except TransportError as exc:
            record(ctx, RECORD_DONE, {"old_host_key_fingerprint": old_fp, "error": str(exc),
                                       "started_at": started, "finished_at": now()}, outcome="failed")
            raise ActionFailed(f"after the reimage: {exc}") from None

    def _reimage(self, ctx: ActionContext, params: ReimageParams, provider: ReimageProvider, fleet: Any,
                 old_fp: str, started: str, t0: float) -> Outcome:
        host = ctx.host
        fleet.drop(host)  # the running system is about to go away
        result = run_to_completion(provider, host, interval=params.poll_interval, sleep=ctx.deadline.sleep,
                                   deadline=ctx.deadline)
        ok = result.status is ReimageStatus.DONE
        provider_seq = record(ctx, RECORD_PROVIDER, result.to_record(), outcome="ok" if ok else "failed")
        if not ok:
            why = result.message or "failed"
            if result.facts.get("step_deadline_reached"):
                why = f"{host.name}: not finished within the step deadline (cancelled during {result.phase})"
            record(ctx, RECORD_DONE, {"provider": provider.name, "old_host_key_fingerprint": old_fp,
                                       "error": why, "started_at": started, "finished_at": now()},
                    outcome="failed")
            raise ActionFailed(f"reimage failed: {why}")
        return self._rekey(ctx, params, fleet, provider.name, provider_seq,
                           result.facts.get("new_host_key_fingerprint"), old_fp, started, t0)

    def _rekey(self, ctx: ActionContext, params: ReimageParams, fleet: Any, provider: str, provider_seq: int,
               reported_fp: str | None, old_fp: str | None, started: str, t0: float, *,
               resumed: bool = False) -> Outcome:
        """Accept the reinstalled host's key (audited rule), pin it, prove responder access over it."""
        host = ctx.host
        fleet.drop(host)
        key = wait_for_host_key(host, ctx.deadline.at)
        accepted = accept_reimaged_host_key(ctx, key, old_fp=old_fp, reimage_seq=provider_seq,
                                            reported_fp=reported_fp, confirmed_fp=params.host_keys.get(host.name),
                                            accept_first_key=params.accept_first_key, provider=provider)
        new_fp = accepted["new_host_key_fingerprint"]
        # Responder access through the provider's path, over the new pin only (a fresh connection).
        conn = fleet.connection(host, ctx.deadline.at)
        if conn.host_key_fingerprint != new_fp or not conn.run("true", timeout=max(1.0, ctx.remaining())).ok:
            raise ActionFailed(f"{host.name}: reimaged, but the responder login over the new pin failed")
        details = {"provider": provider, "old_host_key_fingerprint": old_fp,
                   "new_host_key_fingerprint": new_fp, "host_key_changed": old_fp != new_fp,
                   "responder_user": conn.endpoint.user, "reimage_record": provider_seq,
                   "host_key_record": accepted["seq"], "host_key_trust": accepted["trust"],
                   "started_at": started, "finished_at": now(),
                   "seconds": int(round(time.monotonic() - t0)), "resumed": resumed}
        details["done_record"] = record(ctx, RECORD_DONE, details)
        note = "" if old_fp != new_fp else " (the host key did NOT change: was the host really reinstalled?)"
        how = "re-keying finished after an interrupted run" if resumed else f"reimaged via {provider}"
        return Outcome(True, f"{how}: host key {old_fp} -> {new_fp}{note}; new key pinned for this case; "
                             "responder login proven", details, verified=True)

    def verify(self, ctx: ActionContext, params: ReimageParams) -> Outcome:
        done = reimaged_here(ctx)
        if done is None:
            return Outcome(False, f"{ctx.host.name} has not been reimaged by irkit in this case "
                                  "(or does not present the key pinned after the reimage)", ok=False)
        return Outcome(False, f"reimaged in this case (audit seq {done['seq']}); presents the pinned new key")
