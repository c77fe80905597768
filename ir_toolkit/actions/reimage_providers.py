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

Providers:

* ``redfish`` (:class:`RedfishProvider`): virtual media + one-time boot override +
  power cycle through the host's BMC, see :mod:`ir_toolkit.transports.redfish`.
* ``command`` (:class:`CommandProvider`): runs ``host.bmc.command`` (a provisioning
  system's CLI: MAAS, Foreman, a cloud API) with the host as argument.
* ``lab``: registered by the lab part (module ``ir_toolkit.lab.reimage``, which the
  lab's CLI group imports) with :func:`register_provider`; the action layer never
  imports the lab.

Providers are not thread-safe: one caller drives one provider.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import signal
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

from ir_toolkit import childenv
from ir_toolkit.errors import (
    EXIT_ENVIRONMENT,
    EXIT_FAILED,
    EXIT_USAGE,
    EnvironmentProblem,
    InputError,
    IrkitError,
    VerificationFailed,
)
from ir_toolkit.inventory.model import Host
from ir_toolkit.log import get_logger
from ir_toolkit.redaction import redact, redact_text
from ir_toolkit.transports.redfish import (
    BOOT_TARGETS,
    BmcError,
    RedfishClient,
    RedfishTimeouts,
    SecretResolver,
    default_secret_resolver,
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
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


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
                      sleep: Callable[[float], None] = time.sleep) -> ReimageResult:
    """Start and poll until done/failed (Ctrl-C cancels, then re-raises)."""
    provider.start(host)
    wait = provider.options.poll_interval if interval is None else interval
    try:
        while provider.poll() is ReimageStatus.RUNNING:
            sleep(wait)
    except KeyboardInterrupt:
        provider.cancel()
        raise
    return provider.result


# ---------------------------------------------------------------------------- redfish

class RedfishProvider(ReimageProvider):
    """Insert media -> one-time boot override -> power cycle -> wait On -> eject.

    Phases (``result.phase``): start, connect, find-media, insert, wait-media,
    boot-override, power-off, wait-off, power-on, wait-on, [settle, clear-override
    when the BMC reports the override as Continuous], [wait-ready when
    ``options.ready_check`` is given], eject, wait-eject, done (or failed). Waiting phases have their own deadline from
    :class:`ReimageOptions`. On failure after the BMC was changed, the provider
    ejects the media and clears the override it set (best effort, recorded in
    ``facts['cleanup']``); it does not change the power state.
    """

    name = "redfish"

    def __init__(self, options: ReimageOptions | None = None) -> None:
        super().__init__(options)
        self._client: RedfishClient | None = None
        self._host: Host | None = None
        self._system: Any = None
        self._media: Any = None
        self._next = "connect"
        self._deadline = 0.0
        self._deadline_for = 0.0
        self._inserted_by_us = False
        self._override_set = False
        self._override_continuous = False
        self._last_power: str | None = None

    # -- interface
    def start(self, host: Host) -> None:
        result = self._begin(host)
        self._host = host
        opts = self.options
        bmc = host.bmc
        if bmc is None:
            self._fail("config", f"{host.name}: no bmc: section in the inventory", EXIT_USAGE)
            return
        if opts.boot_target not in BOOT_TARGETS:
            self._fail("config", f"{host.name}: boot target {opts.boot_target!r} is not one of "
                       f"{', '.join(BOOT_TARGETS)}", EXIT_USAGE)
            return
        if opts.boot_target == "Cd":
            image = opts.image_url or ""
            if not image:
                self._fail("config", f"{host.name}: no install image URL for virtual media", EXIT_USAGE)
                return
            if image.split("://", 1)[0] not in ("http", "https", "nfs", "cifs", "smb"):
                self._fail("config", f"{host.name}: install image {image!r} is not an http(s)/nfs/cifs URL",
                           EXIT_USAGE)
                return
        try:
            self._client = RedfishClient.from_bmc(
                bmc, resolve_secret=opts.resolve_secret, timeouts=opts.redfish_timeouts)
        except BmcError as exc:
            self._fail(exc.kind, f"{host.name}: {exc}", exc.exit_code)
            return
        result.facts.update(
            bmc_url=bmc.url, bmc_username=bmc.username, bmc_password_ref=bmc.password,
            boot_target=opts.boot_target, image_url=opts.image_url if opts.boot_target == "Cd" else None,
            install_verified=opts.ready_check is not None,
        )
        result.step("start", f"reimage via Redfish BMC {bmc.url}")

    def poll(self) -> ReimageStatus:
        if self._result is None:
            raise RuntimeError("poll() before start()")
        if self.status is not ReimageStatus.RUNNING:
            return self.status
        try:
            while self.status is ReimageStatus.RUNNING and self._advance():
                pass
        except IrkitError as exc:
            kind = getattr(exc, "kind", "error")
            self._fail_and_cleanup(kind, f"{self.result.host}: {exc}", exc.exit_code)
        return self.status

    def cancel(self) -> None:
        if self._result is None or self.status is not ReimageStatus.RUNNING:
            return
        self._fail_and_cleanup("cancelled", f"{self.result.host}: reimage cancelled during {self.result.phase}")

    # -- machinery
    def _wait_until(self, seconds: float) -> None:
        self._deadline_for = seconds
        self._deadline = time.monotonic() + seconds

    def _expired(self) -> bool:
        return time.monotonic() >= self._deadline

    def _go(self, phase: str) -> bool:
        self._next = phase
        return True

    def _advance(self) -> bool:  # noqa: C901 - a flat state machine reads best as one switch
        """Run the next phase; True when the next one can run at once, False to wait."""
        assert self._client is not None and self._host is not None
        client, opts, result, host = self._client, self.options, self.result, self._host
        phase = self._next

        if phase == "connect":
            client.connect()
            self._system = client.find_system(host.bmc.system_id if host.bmc else None)
            power = client.power_state(self._system)
            self._last_power = power
            result.facts.update(system=self._system.path, initial_power=power)
            result.step("connect", f"logged in; system {self._system.path} is {power}")
            return self._go("find-media" if opts.boot_target == "Cd" else "boot-override")

        if phase == "find-media":
            self._media = client.find_virtual_media(self._system, opts.boot_target)
            result.facts["virtual_media"] = self._media.path
            result.step("find-media", f"virtual media {self._media.path}")
            return self._go("insert")

        if phase == "insert":
            assert opts.image_url
            state = client.insert_media(self._media, opts.image_url)
            self._inserted_by_us = True
            result.step("insert", f"InsertMedia {opts.image_url} -> {self._media.path}")
            self._wait_until(opts.media_timeout)
            if state.inserted:
                return self._media_inserted(state.image)
            return self._go("wait-media")

        if phase == "wait-media":
            state = client.media_state(self._media)
            if state.inserted:
                return self._media_inserted(state.image)
            if self._expired():
                raise BmcError("deadline", f"virtual media {self._media.path} did not report Inserted "
                               f"within {self._deadline_for:g}s")
            return False

        if phase == "boot-override":
            override = client.set_boot_override(self._system, opts.boot_target)
            self._override_set = True
            self._override_continuous = override.enabled not in ("Once",)
            result.facts.update(boot_override_target=override.target,
                                boot_override_reported=override.enabled)
            note = ("" if not self._override_continuous else
                    f"; BMC reports {override.enabled} (asked Once): irkit clears it after power-on")
            result.step("boot-override", f"one-time boot to {override.target}{note}")
            power = client.power_state(self._system)
            self._last_power = power
            return self._go("power-on" if power == "Off" else "power-off")

        if phase == "power-off":
            used = client.power_off(self._system)
            result.facts["power_off_reset"] = used
            result.step("power-off", f"ResetType {used}")
            self._wait_until(opts.power_off_timeout)
            return self._go("wait-off")

        if phase == "wait-off":
            power = self._observe_power()
            if power == "Off":
                result.step("wait-off", "system is Off")
                return self._go("power-on")
            if self._expired():
                raise BmcError("deadline", f"system {self._system.path} did not power off within "
                               f"{self._deadline_for:g}s (last PowerState {power})")
            return False

        if phase == "power-on":
            used = client.power_on(self._system)
            result.facts["power_on_reset"] = used
            result.step("power-on", f"ResetType {used}")
            self._wait_until(opts.power_on_timeout)
            return self._go("wait-on")

        if phase == "wait-on":
            power = self._observe_power()
            if power == "On":
                result.step("wait-on", f"system is On, booting from {opts.boot_target}")
                if self._override_continuous:
                    self._wait_until(opts.override_grace)
                    return self._go("settle")
                return self._after_boot()
            if self._expired():
                raise BmcError(
                    "deadline",
                    f"BMC accepted power-on but system {self._system.path} did not report PowerState On "
                    f"within {self._deadline_for:g}s (last PowerState {power})",
                )
            return False

        if phase == "settle":
            if not self._expired() and not self._boot_progressed():
                return False
            return self._go("clear-override")

        if phase == "clear-override":
            after = client.clear_boot_override(self._system)
            self._override_set = False
            result.facts["boot_override_after"] = {"target": after.target, "enabled": after.enabled}
            result.step("clear-override", f"override now target={after.target} enabled={after.enabled}")
            return self._after_boot()

        if phase == "wait-ready":
            assert opts.ready_check is not None
            if opts.ready_check(host):
                result.step("wait-ready", "reinstalled host is up")
                return self._go("eject" if self._inserted_by_us else "finish")
            if self._expired():
                raise BmcError("deadline", f"the reinstalled host did not come up within {self._deadline_for:g}s")
            return False

        if phase == "eject":
            client.eject_media(self._media)
            result.step("eject", f"EjectMedia {self._media.path}")
            self._wait_until(opts.media_timeout)
            return self._go("wait-eject")

        if phase == "wait-eject":
            state = client.media_state(self._media)
            if not state.inserted:
                self._inserted_by_us = False
                result.facts["media_after"] = {"inserted": state.inserted, "image": state.image}
                return self._go("finish")
            if self._expired():
                raise BmcError("deadline", f"virtual media {self._media.path} still Inserted "
                               f"{self._deadline_for:g}s after EjectMedia")
            return False

        if phase == "finish":
            override = client.boot_override(self._system)
            result.facts["final_power"] = client.power_state(self._system)
            result.facts["final_boot_override"] = {"target": override.target, "enabled": override.enabled}
            progress = (self._system.json.get("BootProgress") or {}).get("LastState")
            if progress:
                result.facts["boot_progress"] = progress
            client.close()
            what = "installer booted" if opts.ready_check is None else "host reinstalled and up"
            self._done(f"{host.name}: {what} from {opts.boot_target} via {client.url}")
            return False

        raise AssertionError(f"unknown phase {phase}")

    def _media_inserted(self, image: str | None) -> bool:
        self.result.facts["media_image_reported"] = image
        self.result.step("wait-media", f"media Inserted (Image {image})")
        return self._go("boot-override")

    def _after_boot(self) -> bool:
        if self.options.ready_check is not None:
            self._wait_until(self.options.install_timeout)
            return self._go("wait-ready")
        return self._go("eject" if self._inserted_by_us else "finish")

    def _observe_power(self) -> str:
        assert self._client is not None
        power = self._client.power_state(self._system)
        if power != self._last_power:
            self.result.facts.setdefault("power_states_seen", []).append(power)
            self._last_power = power
        return power

    def _boot_progressed(self) -> bool:
        """True when the BMC's BootProgress shows the OS loader started (Redfish 1.13+)."""
        assert self._client is not None
        try:
            self._client.power_state(self._system)  # refreshes the system
        except BmcError:
            return False
        state = ((self._system.json.get("BootProgress") or {}).get("LastState") or "")
        return state in ("OSBootStarted", "OSRunning")

    def _fail_and_cleanup(self, kind: str, message: str, exit_code: int = EXIT_FAILED) -> None:
        self.result.phase = self._next  # the phase that failed
        cleanup: dict[str, str] = {}
        client = self._client
        if client is not None and client.connected:
            if self._inserted_by_us and self._media is not None:
                try:
                    client.eject_media(self._media)
                    cleanup["eject"] = "ok"
                except BmcError as exc:
                    cleanup["eject"] = str(exc)
            if self._override_set and self._system is not None:
                try:
                    after = client.clear_boot_override(self._system)
                    cleanup["boot_override"] = f"target={after.target} enabled={after.enabled}"
                except BmcError as exc:
                    cleanup["boot_override"] = str(exc)
        if client is not None:
            client.close()
        if cleanup:
            self.result.facts["cleanup"] = cleanup
        self._fail(kind, message, exit_code)


register_provider("redfish", RedfishProvider)


# ---------------------------------------------------------------------------- command

_PLACEHOLDERS = ("host", "address", "tenant", "case", "image")
_TAIL_BYTES = 4096


class CommandProvider(ReimageProvider):
    """Run ``host.bmc.command`` (argv list, no shell) with the host as argument.

    ``{host}``, ``{address}``, ``{tenant}``, ``{case}`` and ``{image}`` in an argv
    element are replaced; when no element has a placeholder the host name is
    appended. A ``bmc.password`` reference is resolved and written to the
    command's **stdin** (one line), never to argv or the environment. The command
    also gets ``IRKIT_HOST``, ``IRKIT_HOST_ADDRESS``, ``IRKIT_TENANT``,
    ``IRKIT_CASE`` and ``IRKIT_IMAGE_URL`` in its environment. Exit 0 means done; the
    command runs in its own session and is killed (its whole process group) on
    timeout or cancel.
    """

    name = "command"

    def __init__(self, options: ReimageOptions | None = None) -> None:
        super().__init__(options)
        self._proc: childenv.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._deadline = 0.0

    def start(self, host: Host) -> None:
        result = self._begin(host)
        opts = self.options
        bmc = host.bmc
        if bmc is None or not bmc.command:
            self._fail("config", f"{host.name}: bmc.command is required for the command provider", EXIT_USAGE)
            return
        values = {"host": host.name, "address": host.address, "tenant": host.tenant,
                  "case": opts.case_id or "", "image": opts.image_url or ""}
        argv = [str(a) for a in bmc.command]
        substituted = False
        for i, arg in enumerate(argv):
            for key in _PLACEHOLDERS:
                token = "{" + key + "}"
                if token in arg:
                    arg = arg.replace(token, values[key])
                    substituted = True
            argv[i] = arg
        if not substituted:
            argv.append(host.name)
        secret: str | None = None
        if bmc.password is not None:
            try:
                secret = (opts.resolve_secret or default_secret_resolver)(bmc.password)
            except IrkitError as exc:
                self._fail("config", f"{host.name}: bmc.password: {exc}", exc.exit_code)
                return
            if any(secret and secret in arg for arg in argv):
                self._fail("config", f"{host.name}: bmc.command contains the secret itself; "
                           "the provider passes it on stdin", EXIT_USAGE)
                return
        executable = argv[0]
        if os.sep not in executable and shutil.which(executable) is None:
            self._fail("config", f"{host.name}: reimage command {executable!r} not found on PATH", EXIT_USAGE)
            return
        # an allow-listed environment: never IRKIT_KEY_PASSPHRASE or an env: secret (security review §5)
        env = dict(IRKIT_HOST=host.name, IRKIT_HOST_ADDRESS=host.address, IRKIT_TENANT=host.tenant,
                   IRKIT_CASE=opts.case_id or "", IRKIT_IMAGE_URL=opts.image_url or "",
                   IRKIT_SECRET_ON_STDIN="1" if secret is not None else "0")
        self._workdir = Path(tempfile.mkdtemp(prefix="irkit-reimage-"))
        try:
            with open(self._workdir / "stdout", "wb") as out, open(self._workdir / "stderr", "wb") as err:
                self._proc = childenv.popen(
                    argv, stdin=childenv.PIPE, stdout=out, stderr=err, env=env,
                    start_new_session=True, close_fds=True,
                )
        except (OSError, childenv.UnsafeChildEnvironment) as exc:
            self._cleanup_files()
            self._fail("config", f"{host.name}: cannot run reimage command {executable!r}: "
                       f"{getattr(exc, 'strerror', None) or exc}", EXIT_USAGE)
            return
        assert self._proc.stdin is not None
        try:
            if secret is not None:
                self._proc.stdin.write(secret.encode() + b"\n")
            self._proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        self._deadline = time.monotonic() + opts.command_timeout
        result.facts.update(argv=redact(argv), pid=self._proc.pid, secret_on_stdin=secret is not None)
        result.step("start", f"started {' '.join(redact(argv))} (pid {self._proc.pid})")

    def poll(self) -> ReimageStatus:
        if self._result is None:
            raise RuntimeError("poll() before start()")
        if self.status is not ReimageStatus.RUNNING or self._proc is None:
            return self.status
        code = self._proc.poll()
        host = self.result.host
        if code is None:
            if time.monotonic() >= self._deadline:
                self._kill()
                self._collect(None)
                self._fail("deadline", f"{host}: reimage command did not finish within "
                           f"{self.options.command_timeout:g}s (killed)")
            return self.status
        self._collect(code)
        if code == 0:
            self._done(f"{host}: reimage command succeeded")
        else:
            last = self.result.facts.get("stderr_last_line") or self.result.facts.get("stdout_last_line")
            what = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            self._fail("command_failed", f"{host}: reimage command {what}" + (f": {last}" if last else ""))
        return self.status

    def cancel(self) -> None:
        if self._result is None or self.status is not ReimageStatus.RUNNING:
            return
        self._kill()
        self._collect(None)
        self._fail("cancelled", f"{self.result.host}: reimage command cancelled")

    def _kill(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)  # the group we created (start_new_session)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except childenv.TimeoutExpired:
                continue

    def _collect(self, code: int | None) -> None:
        facts = self.result.facts
        facts["returncode"] = code
        if self._workdir is not None:
            for stream in ("stdout", "stderr"):
                try:
                    with open(self._workdir / stream, "rb") as fh:
                        fh.seek(0, os.SEEK_END)
                        size = fh.tell()
                        fh.seek(max(0, size - _TAIL_BYTES))
                        tail = redact_text(fh.read().decode("utf-8", "replace"))
                except OSError:
                    tail = ""
                facts[f"{stream}_tail"] = tail
                lines = [line.strip() for line in tail.splitlines() if line.strip()]
                facts[f"{stream}_last_line"] = lines[-1][:300] if lines else None
        self._cleanup_files()

    def _cleanup_files(self) -> None:
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None


register_provider("command", CommandProvider)
