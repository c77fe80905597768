"""Reimage orchestration as engine steps: reinstall, re-key, re-provision, prove the host clean.

``host.reimage`` (destructive: behind the evidence gate; ``requires_approval`` in the playbooks)
    Drives the host's reimage provider (``bmc.provider``: redfish, command, lab) to
    completion within the step's deadline, then handles the host key change: the new
    key is accepted **only** because irkit itself reimaged this host in this case (a
    ``reimage.provider`` audit record with outcome ok names it), it must match the key
    the provider reported when the provider reports one, and it is written to the
    case's ``known_hosts``, where it overrides every other pin of that host for the
    rest of the case. Finally a fresh login over the new pin proves the responder
    access the provider installed. Every phase and both fingerprints are audit records.

``accounts.provision``
    On a host reimaged in this case only: (re)creates the MSP's local admin accounts
    (the inventory's shared accounts with ``action: rotate``) with a locked password,
    so that ``accounts.rotate`` then gives each a unique escrowed password.

``host.verify_clean``
    Read-only proof of the end state: no breach trace (paths, systemd units, cron
    entries, processes, listening ports), no account whose password is the old shared
    one (its hash on the host and a real login), no shared MSP key in any
    authorized_keys file, the host presents its case pin and the responder logs in
    over it.

Audit records (``params`` always carry the case): ``reimage.start``, ``reimage.provider``
(the provider's redacted result), ``host_key.accepted`` / ``host_key.refused`` (old and
new fingerprints), ``reimage.done``, ``account.created``. See docs/reimage.md.
"""

from __future__ import annotations

import dataclasses

import datetime as dt
import fcntl
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Literal

import paramiko
from pydantic import Field, field_validator

from ir_toolkit.actions.base import (
    Action,
    ActionContext,
    ActionFailed,
    Outcome,
    Params,
    register,
    DESTROYS_EVERYTHING,
)
from ir_toolkit.actions.reimage_providers import (
    ReimageOptions,
    ReimageProvider,
    ReimageResult,
    ReimageStatus,
    provider_for,
)
from ir_toolkit.errors import IrkitError
from ir_toolkit.fsutil import write_atomic
from ir_toolkit.inventory.model import Host
from ir_toolkit.secrets.references import is_reference, parse_ref, resolve
from ir_toolkit.transports.base import TIMED_OUT, UNREACHABLE, Endpoint, TransportError
from ir_toolkit.transports.hostkeys import fingerprint, read_known_hosts
from ir_toolkit.transports.pool import case_known_hosts

RECORD_START = "reimage.start"
RECORD_PROVIDER = "reimage.provider"
RECORD_DONE = "reimage.done"
RECORD_KEY_ACCEPTED = "host_key.accepted"
RECORD_KEY_REFUSED = "host_key.refused"
RECORD_ACCOUNT_CREATED = "account.created"

_SCAN_TIMEOUT = 5.0


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _jsonable(value: Any) -> Any:
    """Audit records take no floats: durations and the like become strings."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _record(ctx: ActionContext, action: str, params: dict[str, Any], outcome: str = "ok") -> int:
    """A durable audit record about this host; returns its seq."""
    return int(ctx.record(action, _jsonable({"case": ctx.case_id, **params}), outcome))


# =========================================================================== audit-log queries


def host_records(case_id: str, tenant: str, host: str, actions: tuple[str, ...]) -> list[dict[str, Any]]:
    """This host's records of the given actions in the verified, signed audit log, oldest first.

    Never a record appended without the key (``audit.log.signed_records``): these
    records decide "already reimaged" and "accept the reinstalled host's key".
    """
    from ir_toolkit.audit.log import signed_records

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


# =========================================================================== host keys


def scan_host_key(address: str, port: int, timeout: float = _SCAN_TIMEOUT) -> paramiko.PKey:
    """The host key the SSH server at ``address:port`` offers (key exchange only; no credential is sent)."""
    try:
        sock = socket.create_connection((address, port), timeout=timeout)
    except (TimeoutError, socket.timeout):
        raise TransportError(TIMED_OUT, f"connect to {address}:{port} timed out after {timeout:g}s") from None
    except OSError as exc:
        raise TransportError(UNREACHABLE, f"cannot connect to {address}:{port}: {exc.strerror or exc}") from None
    transport = paramiko.Transport(sock)
    try:
        transport.banner_timeout = timeout
        transport.start_client(timeout=timeout)
        key = transport.get_remote_server_key()
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise TransportError(UNREACHABLE, f"{address}:{port}: no SSH key exchange: {exc or type(exc).__name__}") from None
    finally:
        transport.close()
        sock.close()
    return key


def wait_for_host_key(host: Host, deadline: float, interval: float = 0.5) -> paramiko.PKey:
    """Scan until the reinstalled host's sshd answers, or raise at ``deadline``."""
    last: TransportError | None = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TransportError(TIMED_OUT, f"{host.name}: SSH did not come back before the step deadline"
                                 + (f" ({last})" if last else ""))
        try:
            return scan_host_key(host.address, int(host.port or 22), min(_SCAN_TIMEOUT, left))
        except TransportError as exc:
            last = exc
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def known_hosts_pattern(address: str, port: int) -> str:
    return address if port == 22 else f"[{address}]:{port}"


_pin_lock = threading.Lock()


def write_case_pin(case_id: str, address: str, port: int, key: paramiko.PKey) -> Path:
    """Make ``key`` the case's only pin for ``address:port`` (atomic replace; thread and process safe)."""
    path = case_known_hosts(case_id)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pattern = known_hosts_pattern(address, port)
    with _pin_lock:
        fd = os.open(path.parent / ".known_hosts.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                lines = path.read_text().splitlines()
            except FileNotFoundError:
                lines = [f"# irkit case {case_id}: host keys accepted after irkit reimaged the host "
                         "(they override every other pin of that host; see the audit log)"]
            kept = [line for line in lines
                    if not line.strip() or line.lstrip().startswith("#") or pattern not in line.split()[0].split(",")]
            kept.append(f"{pattern} {key.get_name()} {key.get_base64()}")
            write_atomic(path, ("\n".join(kept) + "\n").encode(), mode=0o600)
        finally:
            os.close(fd)
    return path


def case_pins(case_id: str, address: str, port: int) -> set[str]:
    """Fingerprints the case's known_hosts pins for ``address:port`` (empty: no case pin)."""
    return read_known_hosts(case_known_hosts(case_id)).get(known_hosts_pattern(address, port), set())


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
        _record(ctx, RECORD_KEY_REFUSED, {**facts, "reason": why}, outcome="refused")
        raise ActionFailed(why)
    path = write_case_pin(ctx.case_id, host.address, int(host.port or 22), key)
    if ctx.pool is not None:
        ctx.pool.known_hosts.pin_override(host.address, int(host.port or 22), new_fp)
    facts.update(known_hosts=str(path), host_key_changed=old_fp != new_fp, key_type=key.get_name())
    facts["seq"] = _record(ctx, RECORD_KEY_ACCEPTED, facts)
    return facts


# =========================================================================== host.reimage


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


def drive_provider(provider: ReimageProvider, host: Host, deadline: float, interval: float) -> ReimageResult:
    """Start and poll the provider until it is done or failed; cancel it at ``deadline``."""
    provider.start(host)
    while provider.poll() is ReimageStatus.RUNNING:
        left = deadline - time.monotonic()
        if left <= 0:
            provider.cancel()
            provider.result.facts["step_deadline_reached"] = True
            break
        time.sleep(min(interval, left))
    return provider.result


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
        started = _now()
        _record(ctx, RECORD_START, {"provider": provider.name, "reason": params.reason, "image_url": params.image_url,
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
            _record(ctx, RECORD_DONE, {"old_host_key_fingerprint": old_fp, "error": str(exc),
                                       "started_at": started, "finished_at": _now()}, outcome="failed")
            raise ActionFailed(f"after the reimage: {exc}") from None

    def _reimage(self, ctx: ActionContext, params: ReimageParams, provider: ReimageProvider, fleet: Any,
                 old_fp: str, started: str, t0: float) -> Outcome:
        host = ctx.host
        fleet.drop(host)  # the running system is about to go away
        result = drive_provider(provider, host, ctx.deadline.at, params.poll_interval)
        ok = result.status is ReimageStatus.DONE
        provider_seq = _record(ctx, RECORD_PROVIDER, result.to_record(), outcome="ok" if ok else "failed")
        if not ok:
            why = result.message or "failed"
            if result.facts.get("step_deadline_reached"):
                why = f"{host.name}: not finished within the step deadline (cancelled during {result.phase})"
            _record(ctx, RECORD_DONE, {"provider": provider.name, "old_host_key_fingerprint": old_fp,
                                       "error": why, "started_at": started, "finished_at": _now()},
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
                   "started_at": started, "finished_at": _now(),
                   "seconds": int(round(time.monotonic() - t0)), "resumed": resumed}
        details["done_record"] = _record(ctx, RECORD_DONE, details)
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


# =========================================================================== accounts.provision


class ProvisionParams(Params):
    #: accounts to (re)create; default: the inventory's shared accounts with ``action: rotate`` for this OS
    accounts: list[str] = []
    #: supplementary groups for created accounts (only those that exist on the host are used)
    groups: list[str] = ["adm", "sudo"]
    shell: str = "/bin/bash"


def _wanted_accounts(ctx: ActionContext, params: ProvisionParams) -> list[str]:
    if params.accounts:
        names = list(params.accounts)
    else:
        names = [a.user for a in ctx.inventory.msp.shared_credentials.accounts
                 if a.action == "rotate" and (a.os or ctx.host.os) == ctx.host.os]
    if ctx.conn.endpoint.user in names:
        raise ActionFailed(f"refusing to provision {ctx.conn.endpoint.user!r}: it is the account irkit logs in as")
    return names


def _missing(ctx: ActionContext, names: list[str]) -> list[str]:
    return [n for n in names if not ctx.run(f"getent passwd {ctx.quote(n)} >/dev/null").ok]


@register
class ProvisionAccounts(Action):
    """(Re)create the MSP's local admin accounts, password locked, on a host irkit reimaged in this case."""

    name = "accounts.provision"
    Params = ProvisionParams
    description = "recreate local admin accounts (locked) on a freshly reimaged host, for accounts.rotate"

    def plan(self, ctx: ActionContext, params: ProvisionParams) -> Outcome:
        names = _wanted_accounts(ctx, params)
        if not names:
            return Outcome(False, "no local admin accounts to provision")
        if reimaged_here(ctx) is not None:
            missing = _missing(ctx, names)
            return Outcome(bool(missing), f"would create {', '.join(missing)} (password locked)" if missing
                           else "local admin accounts present")
        return Outcome(True, "after the reimage: create " + ", ".join(names) + " if missing (password locked)")

    def apply(self, ctx: ActionContext, params: ProvisionParams) -> Outcome:
        if reimaged_here(ctx) is None:
            raise ActionFailed(f"refusing to create accounts on {ctx.host.name}: irkit has not reimaged it in "
                               "this case (accounts.provision only runs right after host.reimage)")
        names = _wanted_accounts(ctx, params)
        missing = _missing(ctx, names)
        for user in missing:
            groups = ctx.run("for g in " + " ".join(ctx.quote(g) for g in params.groups)
                             + '; do getent group "$g" >/dev/null && printf "%s," "$g"; done; true').text.strip(",")
            ctx.run(f"useradd -m -s {ctx.quote(params.shell)}" + (f" -G {ctx.quote(groups)}" if groups else "")
                    + f" {ctx.quote(user)}", check=True)
            _record(ctx, RECORD_ACCOUNT_CREATED, {"account": user, "groups": groups.split(",") if groups else [],
                                                  "password_state": "locked"})
        still = _missing(ctx, names)
        if still:
            raise ActionFailed("could not create " + ", ".join(still))
        summary = (f"created {', '.join(missing)} (password locked until accounts.rotate)" if missing
                   else "local admin accounts present" if names else "no local admin accounts to provision")
        return Outcome(bool(missing), summary, {"created": missing}, verified=True)

    def verify(self, ctx: ActionContext, params: ProvisionParams) -> Outcome:
        still = _missing(ctx, _wanted_accounts(ctx, params))
        return Outcome(False, "missing: " + ", ".join(still) if still else "accounts present", ok=not still)


# =========================================================================== host.verify_clean

# crypt(3) of the password on stdin against every shadow hash; prints the accounts that match
_SHADOW_MATCH = ("perl -e 'my $pw = <STDIN>; chomp $pw; open(my $f, \"<\", \"/etc/shadow\") or exit 3; "
                 "while (<$f>) { my ($u, $h) = split /:/; next unless defined $h && length($h) > 3 && $h !~ /^[!*]/; "
                 "print \"$u\\n\" if crypt($pw, $h) eq $h; }'")


class VerifyCleanParams(Params):
    #: files (or symlinks) that must not exist, e.g. a dropper
    absent_paths: list[str] = []
    #: systemd unit names that must not exist (unit files or enable links) anywhere systemd looks
    absent_units: list[str] = []
    #: text that must not appear in any crontab
    cron_patterns: list[str] = []
    #: text that must not appear in any process's command line (or its executable's path)
    process_patterns: list[str] = []
    #: TCP ports nothing may listen on (e.g. an implant's)
    ports: list[int] = []
    #: reference (env:NAME / file:PATH) to the old shared password: no account may have it
    old_password: str | None = None
    #: accounts to try the old password on over SSH (default: the inventory's shared accounts)
    login_accounts: list[str] = []
    #: no inventory shared SSH key in any authorized_keys file
    check_msp_keys: bool = True
    #: the host must be one irkit reimaged in this case and present its case pin
    require_reimaged: bool = True

    @field_validator("old_password")
    @classmethod
    def _ref(cls, value: str | None) -> str | None:
        if value is not None and not is_reference(value):
            raise ValueError("old_password is a reference (env:NAME or file:PATH), never the password itself")
        return value

    @field_validator("ports")
    @classmethod
    def _ports(cls, value: list[int]) -> list[int]:
        for port in value:
            if not 1 <= port <= 65535:
                raise ValueError(f"{port} is not a TCP port")
        return value


_UNIT_DIRS = "/etc/systemd/system /run/systemd/system /lib/systemd/system /usr/lib/systemd/system " \
             "/etc/systemd/user /usr/lib/systemd/user"
_CRONTABS = "/var/spool/cron/crontabs/* /var/spool/cron/* /etc/crontab /etc/cron.d/* /etc/anacrontab"
# every process: pid, executable, command line (NULs as spaces)
_PROCESS_LIST = ("for p in /proc/[0-9]*; do c=$(tr '\\0' ' ' < $p/cmdline 2>/dev/null); "
                 "e=$(readlink $p/exe 2>/dev/null); [ -n \"$c$e\" ] && printf 'proc %s %s | %s\\n' "
                 "\"${p#/proc/}\" \"$e\" \"$c\"; done; true")


def breach_traces(ctx: ActionContext, params: VerifyCleanParams) -> list[str]:
    """Every trace of ``params`` still on the host (one line each); empty when clean."""
    found: list[str] = []
    q = ctx.quote
    script: list[str] = []
    for path in params.absent_paths:
        script.append(f"if [ -e {q(path)} ] || [ -L {q(path)} ]; then echo path {q(path)}; fi")
    for unit in params.absent_units:
        script.append(f"for d in {_UNIT_DIRS}; do [ -d \"$d\" ] && find \"$d\" -name {q(unit)} 2>/dev/null "
                      "| sed 's/^/unit /'; done")
    for i, pattern in enumerate(params.cron_patterns):
        script.append(f"for f in {_CRONTABS}; do [ -f \"$f\" ] && grep -qF -- {q(pattern)} \"$f\" "
                      f"&& echo \"cron {i} $f\"; done")
    if params.ports:
        script.append("cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk 'NR>0 && $4==\"0A\" {print \"listen \" $2}'")
    out = ctx.run("\n".join(script) + "\ntrue", check=True).text if script else ""
    if params.process_patterns:
        # A command of its own, holding none of the patterns: the scanning shell cannot match itself.
        out += ctx.run(_PROCESS_LIST, check=True).text
    if out:
        for line in out.splitlines():
            kind, _, rest = line.partition(" ")
            if kind in ("path", "unit"):
                found.append(f"{'file' if kind == 'path' else 'systemd unit'} {rest} is present")
            elif kind == "cron":
                index, _, path = rest.partition(" ")
                found.append(f"crontab {path} contains {params.cron_patterns[int(index)]!r}")
            elif kind == "proc":
                pid, _, text = rest.partition(" ")
                for pattern in params.process_patterns:
                    if pattern in text:
                        found.append(f"process {pid} matches {pattern!r}: {text.strip()[:120]}")
                        break
            elif kind == "listen":
                port = int(rest.rsplit(":", 1)[-1], 16) if ":" in rest else -1
                if port in params.ports:
                    found.append(f"something listens on TCP port {port}")
    return sorted(set(found))


@register
class VerifyClean(Action):
    """Prove a (reimaged) host clean: no breach trace, no old password, no MSP key, responder over the pin."""

    name = "host.verify_clean"
    Params = VerifyCleanParams
    description = "prove no breach trace, old password or MSP key is left and the responder logs in over the pin"

    def plan(self, ctx: ActionContext, params: VerifyCleanParams) -> Outcome:
        return Outcome(False, "after the reimage: check breach traces, the old shared password, the MSP keys "
                              "and responder access over the new pin (changes nothing)")

    def apply(self, ctx: ActionContext, params: VerifyCleanParams) -> Outcome:
        outcome = self.verify(ctx, params)
        if not outcome.ok:
            raise ActionFailed(f"not clean: {outcome.summary}")
        return dataclasses.replace(outcome, verified=True)

    def verify(self, ctx: ActionContext, params: VerifyCleanParams) -> Outcome:
        from ir_toolkit.actions.credentials import (
            fresh_login,
            login_with_password,
            responder_pkeys,
        )

        problems: list[str] = []
        notes: list[str] = []
        host = ctx.host
        port = int(host.port or 22)
        if params.require_reimaged:
            if reimaged_here(ctx) is None:
                problems.append("not reimaged by irkit in this case (or not presenting the key pinned then)")
            pins = case_pins(ctx.case_id, host.address, port)
            if ctx.conn.host_key_fingerprint not in pins:
                problems.append(f"host key {ctx.conn.host_key_fingerprint} is not the case pin")
            else:
                endpoint = Endpoint(host.address, port, ctx.conn.endpoint.user, set(pins), host.name)
                if any(fresh_login(endpoint, key, ctx.deadline) for key in responder_pkeys(ctx)):
                    notes.append("responder logs in over the pinned new key")
                else:
                    problems.append("responder login over the pinned new key FAILED")
        traces = breach_traces(ctx, params)
        problems += traces
        checked = (len(params.absent_paths) + len(params.absent_units) + len(params.cron_patterns)
                   + len(params.process_patterns) + len(params.ports))
        if checked and not traces:
            notes.append(f"{checked} breach trace(s) checked: none left")
        if params.old_password:
            old = resolve(parse_ref(params.old_password))
            matches = ctx.run(_SHADOW_MATCH, stdin=(old + "\n").encode())
            if matches.exit_status != 0:
                problems.append("cannot read /etc/shadow to check the old password")
            elif matches.text.split():
                problems.append("the old shared password is set for " + ", ".join(matches.text.split()))
            users = list(params.login_accounts) or [
                a.user for a in ctx.inventory.msp.shared_credentials.accounts if (a.os or host.os) == host.os]
            for user in users:
                endpoint = Endpoint(host.address, port, user, {ctx.conn.host_key_fingerprint}, host.name)
                if login_with_password(endpoint, old, ctx.deadline):
                    problems.append(f"the old shared password STILL logs in as {user}")
            if not any("old shared password" in p for p in problems):
                notes.append(f"old shared password: no account has it, {len(users)} login(s) refused")
        else:
            notes.append("old shared password not checked (no old_password reference given)")
        if params.check_msp_keys:
            from ir_toolkit.actions.revocation import (
                RevokeParams,
                inspect_revocation,
                revoke_targets,
            )

            targets = revoke_targets(ctx, RevokeParams())
            if targets:
                state = inspect_revocation(ctx, targets, RevokeParams())
                for hit in state.hits:
                    problems.append(f"MSP key in {hit.path}")
                if not state.hits:
                    notes.append(f"{len(targets)} MSP key(s) in none of {state.files_checked} authorized_keys files")
        if problems:
            return Outcome(False, "; ".join(problems), {"problems": problems}, ok=False)
        return Outcome(False, "clean: " + "; ".join(notes), {"checks": notes})
