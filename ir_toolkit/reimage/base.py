"""Reimage providers: one interface over the ways a host gets wiped and reinstalled.

A provider object runs **one** reimage of **one** host::

    provider = provider_for(host, options)      # picks host.bmc.provider
    provider.start(host)                        # validates, never blocks for long
    while provider.poll() is ReimageStatus.RUNNING:
        time.sleep(options.poll_interval)
    record = provider.result.to_record()        # put this into the audit log

``start``/``poll``/``cancel`` never raise for a host-level problem (wrong BMC
password, unreachable BMC, a deadline, a failing command): the provider turns
into ``failed`` and :attr:`ReimageProvider.result` says why in one line, with the
steps it took and the facts it saw. ``result.error()`` gives the matching
:class:`~ir_toolkit.errors.IrkitError` for a CLI that wants to stop there.

This module holds the interface, the result and the registry; the providers are
:mod:`ir_toolkit.reimage.redfish`, :mod:`ir_toolkit.reimage.command` and the lab's
(``ir_toolkit.lab.reimage``, registered by the lab's CLI group with :func:`register_provider`;
nothing below the lab imports it). Providers are not thread-safe: one caller drives one provider.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

from ir_toolkit.errors import (
    EXIT_ENVIRONMENT,
    EXIT_FAILED,
    EXIT_USAGE,
    EnvironmentProblem,
    InputError,
    IrkitError,
    VerificationFailed,
)
from ir_toolkit.deadline import Deadline
from ir_toolkit.inventory.model import Host
from ir_toolkit.log import get_logger
from ir_toolkit.redaction import redact, redact_text
from ir_toolkit.timeutil import stamp
from ir_toolkit.transports.redfish import (
    RedfishTimeouts,
    SecretResolver,
)


def _log() -> Any:
    """Looked up per call: a logger bound at import time would miss a later log.configure()."""
    return get_logger("irkit.reimage")


class ReimageStatus(str, Enum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


ReadyCheck = Callable[[Host], bool]
"""Called repeatedly after the host was booted into the installer; True once the
freshly installed host is up (e.g. it answers SSH with a new host key)."""


@dataclass(frozen=True)
class ReimageOptions:
    """How to reimage. Deadlines are seconds; each waiting phase has its own."""

    image_url: str | None = None
    """Install image for virtual media (``http(s)://``, ``nfs://``, ``cifs://``); redfish + Cd."""
    boot_target: str = "Cd"
    """``Cd`` (virtual media) or ``Pxe`` (network install; no media)."""
    media_timeout: float = 120.0
    power_off_timeout: float = 300.0
    power_on_timeout: float = 600.0
    override_grace: float = 90.0
    """How long after power-on to leave a ``Continuous`` override in place before
    clearing it (so that POST has read it); ``0`` in tests against the emulator."""
    install_timeout: float = 3600.0
    """Deadline for ``ready_check`` (only used when one is given)."""
    command_timeout: float = 3600.0
    poll_interval: float = 5.0
    """Advice for callers of :meth:`ReimageProvider.poll` (see :func:`run_to_completion`)."""
    ready_check: ReadyCheck | None = None
    resolve_secret: SecretResolver | None = None
    """Resolves secret references; default handles ``env:``/``file:``. Pass an escrow-aware
    one to allow ``escrow:`` references."""
    redfish_timeouts: RedfishTimeouts = RedfishTimeouts()
    case_id: str | None = None


@dataclass
class ReimageStep:
    at: str
    phase: str
    detail: str


def _now() -> str:
    return stamp()


_ERROR_CLASS: dict[int, type[IrkitError]] = {
    EXIT_USAGE: InputError,
    EXIT_ENVIRONMENT: EnvironmentProblem,
}


@dataclass
class ReimageResult:
    """What one reimage did; ``to_record()`` is ready for the audit log (redacted)."""

    host: str
    tenant: str
    provider: str
    status: ReimageStatus = ReimageStatus.RUNNING
    phase: str = "pending"
    message: str = ""
    error_kind: str | None = None
    exit_code: int = 0
    started_at: str | None = None
    finished_at: str | None = None
    steps: list[ReimageStep] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def step(self, phase: str, detail: str) -> None:
        self.phase = phase
        self.steps.append(ReimageStep(_now(), phase, redact_text(detail)))
        _log().info("reimage step", host=self.host, provider=self.provider, phase=phase, detail=detail)

    def to_record(self) -> dict[str, Any]:
        record = {
            "action": "reimage",
            "host": self.host,
            "tenant": self.tenant,
            "provider": self.provider,
            "status": self.status.value,
            "phase": self.phase,
            "message": self.message,
            "error_kind": self.error_kind,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "steps": [{"at": s.at, "phase": s.phase, "detail": s.detail} for s in self.steps],
            "facts": self.facts,
        }
        return redact(record)

    def error(self) -> IrkitError | None:
        """The error a CLI raises for a failed reimage (exit code by kind), else None."""
        if self.status is not ReimageStatus.FAILED:
            return None
        cls = _ERROR_CLASS.get(self.exit_code, VerificationFailed)
        err = cls(self.message)
        err.exit_code = self.exit_code or EXIT_FAILED
        return err


class ReimageProvider(ABC):
    """One reimage of one host: ``start(host)``, then ``poll()`` until not running."""

    name: ClassVar[str]
    #: the provider reports the reinstalled host's key (``facts.new_host_key_fingerprint``), so the
    #: first key offered need not be trusted on first use (security review §12)
    reports_host_key: ClassVar[bool] = False

    def __init__(self, options: ReimageOptions | None = None) -> None:
        self.options = options or ReimageOptions()
        self._result: ReimageResult | None = None

    @property
    def result(self) -> ReimageResult:
        if self._result is None:
            raise RuntimeError("reimage provider not started")
        return self._result

    @property
    def status(self) -> ReimageStatus:
        return self._result.status if self._result else ReimageStatus.RUNNING

    @abstractmethod
    def start(self, host: Host) -> None:
        """Begin reimaging ``host``. Configuration problems make the result ``failed``."""

    @abstractmethod
    def poll(self) -> ReimageStatus:
        """Advance as far as possible without waiting; return the status."""

    @abstractmethod
    def cancel(self) -> None:
        """Stop, undo what can be undone (media, boot override, process), mark ``failed``."""

    # -- helpers for subclasses
    def _begin(self, host: Host) -> ReimageResult:
        if self._result is not None:
            raise RuntimeError("a reimage provider runs one reimage; make a new one per host")
        self._result = ReimageResult(host=host.name, tenant=host.tenant, provider=self.name,
                                     started_at=_now())
        return self._result

    def _fail(self, kind: str, message: str, exit_code: int = EXIT_FAILED) -> None:
        """Mark failed; ``result.phase`` keeps the phase that failed, the last step says why."""
        result = self.result
        result.status = ReimageStatus.FAILED
        result.error_kind = kind
        result.exit_code = exit_code
        result.message = redact_text(message)
        result.finished_at = _now()
        result.steps.append(ReimageStep(result.finished_at, "failed", result.message))
        _log().info("reimage failed", host=result.host, provider=self.name, kind=kind, error=result.message)

    def _done(self, message: str) -> None:
        result = self.result
        result.status = ReimageStatus.DONE
        result.message = message
        result.finished_at = _now()
        result.step("done", message)


# ---------------------------------------------------------------------------- registry

ProviderFactory = Callable[[ReimageOptions], ReimageProvider]
_REGISTRY: dict[str, ProviderFactory] = {}


def register_provider(name: str, factory: ProviderFactory) -> ProviderFactory:
    """Make a provider available as ``bmc.provider: NAME``; returns ``factory`` (usable as a
    class decorator via ``register_provider("x", Cls)``)."""
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not factory:
        raise ValueError(f"reimage provider {name!r} registered twice")
    _REGISTRY[name] = factory
    return factory


def provider_names() -> list[str]:
    return sorted(_REGISTRY)


def get_provider(name: str, options: ReimageOptions | None = None) -> ReimageProvider:
    """A fresh provider by name; unknown or unavailable providers raise :class:`InputError`."""
    factory = _REGISTRY.get(name)
    if factory is None:
        raise InputError(f"unknown reimage provider {name!r} (known: {', '.join(provider_names())})")
    return factory(options or ReimageOptions())


def provider_for(host: Host, options: ReimageOptions | None = None) -> ReimageProvider:
    """The provider named by ``host.bmc.provider``; a host without ``bmc:`` is an input error."""
    if host.bmc is None:
        raise InputError(f"host {host.name} has no bmc: section in the inventory; it cannot be reimaged")
    return get_provider(host.bmc.provider, options)


def run_to_completion(provider: ReimageProvider, host: Host, *, interval: float | None = None,
                      sleep: Callable[[float], Any] = time.sleep, deadline: Deadline | None = None) -> ReimageResult:
    """Start and poll until done/failed (the one drive loop: the CLI, the tests and ``host.reimage``).

    With ``deadline`` the provider is cancelled when it is reached or cancelled (a watchdog, Ctrl-C) and
    ``result.facts["step_deadline_reached"]`` is set; pauses never outlast it. Ctrl-C cancels, then re-raises.
    """
    provider.start(host)
    wait = provider.options.poll_interval if interval is None else interval
    try:
        while provider.poll() is ReimageStatus.RUNNING:
            if deadline is None:
                sleep(wait)
                continue
            left = deadline.remaining()
            if left <= 0:
                provider.cancel()
                provider.result.facts["step_deadline_reached"] = True
                break
            sleep(min(wait, left))
    except KeyboardInterrupt:
        provider.cancel()
        raise
    return provider.result
