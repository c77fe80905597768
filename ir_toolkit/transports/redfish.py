"""A Redfish BMC client for reimaging, built on ``sushy``.

What reimaging needs from a BMC (HPE iLO, Dell iDRAC, any DMTF Redfish service):

* :meth:`RedfishClient.connect` logs in (session auth, falling back to HTTP Basic)
  with a password that comes from a secret *reference*, never inline, and checks
  the credentials at once (some services answer the service root without auth);
* :meth:`find_system` / :meth:`find_virtual_media` discover resources by following
  links only: VirtualMedia may hang off the ComputerSystem (newer Redfish, the
  sushy-tools emulator, recent iDRAC) or off a Manager (iLO, older iDRAC);
* :meth:`insert_media` / :meth:`eject_media`, :meth:`set_boot_override` /
  :meth:`clear_boot_override` (one-time boot to ``Cd`` or ``Pxe``),
  :meth:`power_off` / :meth:`power_on` (reset with the types the BMC allows) and
  state reads (:meth:`power_state`, :meth:`boot_override`, :meth:`media_state`)
  that always re-read the BMC.

Every failure becomes a :class:`BmcError` with a ``kind`` (``config``, ``auth``,
``unreachable``, ``tls``, ``not_found``, ``no_virtual_media``, ``unsupported``,
``bmc_error``, ``environment``) and a one-line message naming the BMC; the password never appears
in a message or a log line (it is registered for redaction when resolved).
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ir_toolkit.errors import EXIT_FAILED, EXIT_USAGE, IrkitError, InputError
from ir_toolkit.log import get_logger
from ir_toolkit.redaction import redact_text, register_secret
from ir_toolkit.secrets.references import parse_ref, resolve

SecretResolver = Callable[[str], str]
"""Turns a secret reference (``env:``, ``file:``, ``escrow:``) into the secret value."""

def _log() -> Any:
    """Looked up per call: a logger bound at import time would miss a later log.configure()."""
    return get_logger("irkit.redfish")


BOOT_TARGETS = ("Cd", "Pxe")
_MEDIA_FOR_TARGET = {"Cd": ("CD", "DVD")}
_POWER_ON_TYPES = ("On", "ForceOn", "PushPowerButton")
_POWER_OFF_TYPES = ("ForceOff", "GracefulShutdown", "PushPowerButton")


class BmcError(IrkitError):
    """A BMC operation failed; ``kind`` classifies it, ``str()`` is one line."""

    exit_code = EXIT_FAILED

    def __init__(self, kind: str, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(_one_line(message), exit_code=exit_code)
        self.kind = kind


@dataclass(frozen=True)
class RedfishTimeouts:
    """HTTP behaviour towards one BMC. Lower ``retries``/``retry_delay`` in tests."""

    connect: float = 10.0
    read: float = 60.0
    retries: int = 3
    """Retries of GETs that fail server-side (5xx) and of transient connection errors."""
    retry_delay: float = 2.0


@dataclass(frozen=True)
class BootOverride:
    """The boot override as the BMC reports it (raw Redfish strings)."""

    target: str | None
    enabled: str | None
    mode: str | None
    allowed_targets: tuple[str, ...]

    @property
    def active(self) -> bool:
        """True when the BMC will (or may) boot somewhere other than normally."""
        return self.enabled not in (None, "Disabled") and self.target not in (None, "None", "Hdd")


@dataclass(frozen=True)
class MediaState:
    inserted: bool
    image: str | None
    media_types: tuple[str, ...]


def _one_line(text: str, limit: int = 400) -> str:
    text = re.sub(r"\s+", " ", redact_text(str(text))).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _SushyLogBridge(logging.Handler):
    """Send sushy's stdlib log records to our structured log at debug level.

    Without a handler, Python's last-resort handler would print sushy's warnings
    (session fallback, auth errors) on stderr, breaking the one-line error rule.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _log().debug("sushy", sushy_level=record.levelname, detail=_one_line(record.getMessage(), 1000))
        except Exception:  # noqa: BLE001 - logging must never raise
            pass


_bridge_installed = False


def _install_log_bridge() -> None:
    global _bridge_installed
    if not _bridge_installed:
        sushy_logger = logging.getLogger("sushy")
        sushy_logger.addHandler(_SushyLogBridge())
        sushy_logger.propagate = False
        _bridge_installed = True


def default_secret_resolver(reference: str) -> str:
    """Resolve ``env:`` and ``file:`` references (``escrow:`` needs a case-aware resolver)."""
    return resolve(parse_ref(reference))


def _import_sushy() -> Any:
    try:
        import sushy
    except ImportError:  # pragma: no cover - depends on the install
        raise BmcError(
            "environment", "the redfish provider needs the 'sushy' package (pip install 'irkit[redfish]')",
            exit_code=4,
        ) from None
    return sushy


class RedfishClient:
    """One BMC. Not thread-safe: use one client per reimage operation."""

    def __init__(
        self,
        url: str,
        username: str | None,
        password: str | None,
        *,
        verify_tls: bool = True,
        timeouts: RedfishTimeouts = RedfishTimeouts(),
        allow_insecure_http: bool = False,
    ) -> None:
        if not re.match(r"^https?://[^/\s]+", url or ""):
            raise BmcError("config", f"BMC url {url!r} is not an http(s) URL", exit_code=EXIT_USAGE)
        if url.lower().startswith("http://") and not allow_insecure_http:
            raise BmcError("config", f"BMC {url}: plain http would send the BMC credentials in cleartext; "
                           "use https, or set bmc.allow_insecure_http: true", exit_code=EXIT_USAGE)
        if (username is None) != (password is None):
            raise BmcError("config", f"BMC {url}: give both bmc.username and bmc.password, or neither",
                           exit_code=EXIT_USAGE)
        self.url = url.rstrip("/")
        self.username = username
        self._password = password
        if password:
            register_secret(password)
        self.verify_tls = verify_tls
        self.timeouts = timeouts
        self._root: Any = None
        self._auth: Any = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_bmc(
        cls,
        bmc: Any,
        *,
        resolve_secret: SecretResolver | None = None,
        timeouts: RedfishTimeouts = RedfishTimeouts(),
    ) -> RedfishClient:
        """Build a client from an inventory :class:`~ir_toolkit.inventory.model.Bmc`."""
        if not bmc.url:
            raise BmcError("config", "bmc.url is required for the redfish provider", exit_code=EXIT_USAGE)
        password = None
        if bmc.password is not None:
            try:
                password = (resolve_secret or default_secret_resolver)(bmc.password)
            except IrkitError as exc:
                raise BmcError("config", f"BMC {bmc.url}: password: {exc}", exit_code=exc.exit_code) from None
        return cls(bmc.url, bmc.username, password, verify_tls=bmc.verify_tls, timeouts=timeouts,
                   allow_insecure_http=bool(getattr(bmc, "allow_insecure_http", False)))

    # ------------------------------------------------------------------ error mapping
    @contextmanager
    def _call(self, what: str) -> Iterator[None]:
        """Turn sushy/requests failures during ``what`` into a one-line :class:`BmcError`."""
        sushy = _import_sushy()
        exc_mod = sushy.exceptions
        try:
            yield
        except BmcError:
            raise
        except exc_mod.AccessError as exc:
            who = f"user {self.username!r}" if self.username else "anonymous access"
            raise BmcError(
                "auth", f"BMC {self.url} rejected the credentials of {who} (HTTP {exc.status_code}) while {what}"
            ) from None
        except exc_mod.ResourceNotFoundError as exc:
            raise BmcError("not_found", f"BMC {self.url}: {what}: resource not found ({_path(exc)})") from None
        except exc_mod.HTTPError as exc:
            detail = exc.detail or exc.code or "no detail"
            raise BmcError(
                "bmc_error", f"BMC {self.url} answered HTTP {exc.status_code} while {what}: {detail}"
            ) from None
        except exc_mod.ConnectionError as exc:
            text = str(exc)
            if "SSL" in text or "CERTIFICATE" in text.upper():
                raise BmcError(
                    "tls", f"BMC {self.url}: TLS verification failed while {what} "
                    "(install the BMC's CA, or set bmc.verify_tls: false if you accept the risk)"
                ) from None
            reason = _connection_reason(text)
            raise BmcError("unreachable", f"cannot reach BMC {self.url} while {what}: {reason}") from None
        except (exc_mod.MissingAttributeError, exc_mod.MissingActionError) as exc:
            raise BmcError("unsupported", f"BMC {self.url}: {what}: {exc}") from None
        except exc_mod.InvalidParameterValueError as exc:
            raise BmcError("unsupported", f"BMC {self.url}: {what}: {exc}") from None
        except exc_mod.SushyError as exc:
            raise BmcError("bmc_error", f"BMC {self.url}: {what}: {exc}") from None

    # ------------------------------------------------------------------ session
    def connect(self) -> None:
        """Open the session and prove the credentials with an authenticated GET."""
        sushy = _import_sushy()
        _install_log_bridge()
        if not self.verify_tls and self.url.startswith("https:"):
            # The operator's explicit choice (bmc.verify_tls: false): say it once here instead of
            # letting urllib3 print a warning on stderr for every request.
            warnings.filterwarnings("ignore", message="Unverified HTTPS request")
            _log().warning("TLS verification disabled for BMC", bmc=self.url)
        with self._call("logging in"):
            self._auth = sushy.auth.SessionOrBasicAuth(username=self.username, password=self._password)
            self._root = sushy.Sushy(
                self.url + "/redfish/v1/",
                auth=self._auth,
                verify=self.verify_tls,
                server_side_retries=self.timeouts.retries,
                server_side_retries_delay=self.timeouts.retry_delay,
                read_timeout=self.timeouts.read,
                connect_timeout=self.timeouts.connect,
            )
        with self._call("listing systems"):
            # The service root needs no auth on most BMCs: this GET is the real login check.
            self._root.get_system_collection().members_identities  # noqa: B018

    def close(self) -> None:
        """End the Redfish session (if one was opened); never raises."""
        auth, self._auth = self._auth, None
        self._root = None
        if auth is not None:
            try:
                auth.close()
            except Exception as exc:  # noqa: BLE001
                _log().debug("closing BMC session failed", bmc=self.url, error=_one_line(str(exc)))

    def __enter__(self) -> RedfishClient:
        self.connect()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._root is not None

    @property
    def root(self) -> Any:
        if self._root is None:
            raise BmcError("config", f"BMC {self.url}: not connected")
        return self._root

    # ------------------------------------------------------------------ discovery
    def find_system(self, system_id: str | None = None) -> Any:
        """The ComputerSystem to reimage: by ``system_id`` (Id, last path segment, UUID or
        Name), or the only system the BMC manages."""
        with self._call("finding the system"):
            paths = list(self.root.get_system_collection().members_identities)
            if not paths:
                raise BmcError("not_found", f"BMC {self.url} manages no systems")
            if system_id is None:
                if len(paths) > 1:
                    ids = ", ".join(p.rstrip("/").rsplit("/", 1)[-1] for p in paths)
                    raise BmcError(
                        "config", f"BMC {self.url} manages {len(paths)} systems ({ids}); set bmc.system_id",
                        exit_code=EXIT_USAGE,
                    )
                return self.root.get_system(paths[0])
            for path in paths:
                if path.rstrip("/").rsplit("/", 1)[-1] == system_id:
                    return self.root.get_system(path)
            for path in paths:
                system = self.root.get_system(path)
                doc = system.json
                if system_id in (doc.get("Id"), doc.get("UUID"), doc.get("Name")):
                    return system
        raise BmcError("not_found", f"BMC {self.url} has no system {system_id!r} (bmc.system_id)")

    def find_virtual_media(self, system: Any, boot_target: str = "Cd") -> Any:
        """The VirtualMedia device for ``boot_target``, found by following links.

        Looks at ``System.VirtualMedia`` first, then at ``VirtualMedia`` of each
        manager in ``System.Links.ManagedBy``, then at every manager whose
        ``Links.ManagerForServers`` names the system. A link that answers 404 is
        skipped (some firmware advertises collections it does not serve).
        """
        wanted = _MEDIA_FOR_TARGET.get(boot_target, ("CD", "DVD"))
        looked: list[str] = []
        for where, collection in self._media_collections(system, looked):
            with self._call(f"reading VirtualMedia under {where}"):
                members = list(collection.get_members())
            best = None
            for member in members:
                types = tuple(str(t) for t in (member.json.get("MediaTypes") or []))
                if any(t in wanted for t in types):
                    best = member
                    break
                if not types and best is None:
                    best = member  # untyped device: usable only if nothing better
            if best is not None:
                _log().debug("virtual media found", bmc=self.url, path=best.path)
                return best
        where = ", ".join(looked) if looked else "no VirtualMedia link on the system or its managers"
        raise BmcError(
            "no_virtual_media",
            f"BMC {self.url}: system {system.path} has no {'/'.join(wanted)} virtual media device "
            f"(looked at: {where})",
        )

    def _media_collections(self, system: Any, looked: list[str]) -> Iterator[tuple[str, Any]]:
        sushy = _import_sushy()
        exc_mod = sushy.exceptions
        seen: set[str] = set()

        def collection_at(owner: Any, what: str) -> Any:
            path = (owner.json.get("VirtualMedia") or {}).get("@odata.id")
            if not path or path in seen:
                return None
            seen.add(path)
            looked.append(path)
            try:
                with self._call(f"reading {what}"):
                    return owner.virtual_media
            except BmcError as exc:
                if exc.kind == "not_found":
                    _log().debug("advertised VirtualMedia link is missing", bmc=self.url, path=path)
                    return None
                raise

        found = collection_at(system, "the system's VirtualMedia")
        if found is not None:
            yield system.path, found
        manager_paths: list[str] = []
        for link in (system.json.get("Links") or {}).get("ManagedBy") or []:
            if isinstance(link, dict) and link.get("@odata.id"):
                manager_paths.append(link["@odata.id"])
        if not manager_paths:
            try:
                with self._call("listing managers"):
                    for path in self.root.get_manager_collection().members_identities:
                        manager = self.root.get_manager(path)
                        served = [x.get("@odata.id") for x in
                                  (manager.json.get("Links") or {}).get("ManagerForServers") or []]
                        if system.path.rstrip("/") in [str(s).rstrip("/") for s in served]:
                            manager_paths.append(path)
            except BmcError as exc:
                if exc.kind not in ("not_found", "unsupported"):
                    raise
            except exc_mod.SushyError:
                pass
        for path in manager_paths:
            try:
                with self._call(f"reading manager {path}"):
                    manager = self.root.get_manager(path)
            except BmcError as exc:
                if exc.kind == "not_found":
                    continue
                raise
            found = collection_at(manager, f"VirtualMedia of manager {path}")
            if found is not None:
                yield path, found

    # ------------------------------------------------------------------ virtual media
    def media_state(self, media: Any) -> MediaState:
        with self._call(f"reading {media.path}"):
            media.refresh(force=True)
            doc = media.json
        return MediaState(
            inserted=bool(doc.get("Inserted")),
            image=doc.get("Image") or None,
            media_types=tuple(str(t) for t in (doc.get("MediaTypes") or [])),
        )

    def insert_media(self, media: Any, image_url: str) -> MediaState:
        """Insert ``image_url`` (ejecting a different image first). Returns the state read back;
        callers poll :meth:`media_state` when a BMC inserts asynchronously."""
        state = self.media_state(media)
        if state.inserted and state.image == image_url:
            return state
        if state.inserted:
            _log().info("ejecting previous virtual media", bmc=self.url, image=state.image)
            self.eject_media(media)
        with self._call(f"inserting {image_url} into {media.path}"):
            media.insert_media(image_url, inserted=True, write_protected=True)
        return self.media_state(media)

    def eject_media(self, media: Any) -> MediaState:
        with self._call(f"ejecting {media.path}"):
            media.eject_media()
        return self.media_state(media)

    # ------------------------------------------------------------------ boot override
    def boot_override(self, system: Any) -> BootOverride:
        with self._call(f"reading {system.path}"):
            system.refresh(force=True)
            boot = system.json.get("Boot") or {}
        return BootOverride(
            target=boot.get("BootSourceOverrideTarget"),
            enabled=boot.get("BootSourceOverrideEnabled"),
            mode=boot.get("BootSourceOverrideMode"),
            allowed_targets=tuple(boot.get("BootSourceOverrideTarget@Redfish.AllowableValues") or ()),
        )

    def set_boot_override(self, system: Any, target: str) -> BootOverride:
        """Ask for a one-time boot to ``target`` and return what the BMC reports back.

        The caller must check ``enabled``: some BMCs (and the sushy-tools emulator)
        report ``Continuous`` whatever was asked, and then irkit must clear the
        override itself once the installer has booted.
        """
        if target not in BOOT_TARGETS:
            raise InputError(f"boot target {target!r}: use one of {', '.join(BOOT_TARGETS)}")
        current = self.boot_override(system)
        if current.allowed_targets and target not in current.allowed_targets:
            raise BmcError(
                "unsupported",
                f"BMC {self.url}: system {system.path} cannot boot from {target} "
                f"(allowed: {', '.join(current.allowed_targets)})",
            )
        with self._call(f"setting a one-time boot override to {target} on {system.path}"):
            sushy = _import_sushy()
            system.set_system_boot_options(
                target=sushy.BootSource(target), enabled=sushy.BootSourceOverrideEnabled.ONCE)
        after = self.boot_override(system)
        if after.target != target:
            raise BmcError(
                "bmc_error",
                f"BMC {self.url}: boot override to {target} was accepted but the system reports "
                f"target {after.target!r}",
            )
        return after

    def clear_boot_override(self, system: Any) -> BootOverride:
        """Make the next boot a normal one: ``Enabled: Disabled``; where a BMC refuses a
        PATCH with only that (sushy-tools does), also point the target at ``None`` or ``Hdd``."""
        sushy = _import_sushy()
        disabled = sushy.BootSourceOverrideEnabled.DISABLED
        attempts: list[dict[str, Any]] = [{"enabled": disabled}]
        allowed = self.boot_override(system).allowed_targets
        for fallback in ("None", "Hdd"):
            if not allowed or fallback in allowed:
                attempts.append({"target": sushy.BootSource(fallback), "enabled": disabled})
        last: BmcError | None = None
        for kwargs in attempts:
            try:
                with self._call(f"clearing the boot override on {system.path}"):
                    system.set_system_boot_options(**kwargs)
            except BmcError as exc:
                if exc.kind not in ("bmc_error", "unsupported"):
                    raise
                last = exc
                continue
            after = self.boot_override(system)
            if not after.active:
                return after
        if last is not None:
            raise last
        return self.boot_override(system)

    # ------------------------------------------------------------------ power
    def power_state(self, system: Any) -> str:
        """``On``, ``Off``, ``PoweringOn``, ``PoweringOff``, ``Paused`` or ``Unknown``."""
        with self._call(f"reading the power state of {system.path}"):
            system.refresh(force=True)
            return str(system.json.get("PowerState") or "Unknown")

    def allowed_reset_types(self, system: Any) -> tuple[str, ...]:
        with self._call(f"reading reset types of {system.path}"):
            return tuple(sorted(v.value for v in system.get_allowed_reset_system_values()))

    def reset(self, system: Any, candidates: tuple[str, ...]) -> str:
        """Send the first reset type of ``candidates`` that the BMC allows; return it."""
        allowed = self.allowed_reset_types(system)
        for reset_type in candidates:
            if reset_type in allowed:
                with self._call(f"sending ResetType {reset_type} to {system.path}"):
                    system.reset_system(_import_sushy().ResetType(reset_type))
                return reset_type
        raise BmcError(
            "unsupported",
            f"BMC {self.url}: system {system.path} allows none of {', '.join(candidates)} "
            f"(allowed: {', '.join(allowed) or 'none'})",
        )

    def power_on(self, system: Any) -> str:
        return self.reset(system, _POWER_ON_TYPES)

    def power_off(self, system: Any) -> str:
        return self.reset(system, _POWER_OFF_TYPES)


def _path(exc: Any) -> str:
    url = getattr(exc, "kwargs", {}).get("url") if hasattr(exc, "kwargs") else None
    if not url:
        match = re.search(r"(/redfish/\S*)", str(exc))
        url = match.group(1) if match else "?"
    match = re.search(r"(/redfish/\S*)", str(url))
    return match.group(1).rstrip(".") if match else str(url)


def _connection_reason(text: str) -> str:
    for needle, reason in (
        ("Connection refused", "connection refused"),
        ("timed out", "timed out"),
        ("Name or service not known", "unknown host name"),
        ("No route to host", "no route to host"),
        ("Network is unreachable", "network unreachable"),
    ):
        if needle in text:
            return reason
    return _one_line(text, 160)
