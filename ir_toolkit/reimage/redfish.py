"""The ``redfish`` reimage provider: virtual media + one-time boot override + power cycle through
the host's BMC (see :mod:`ir_toolkit.transports.redfish`)."""

from __future__ import annotations

import time
from typing import Any

from ir_toolkit.errors import (
    EXIT_FAILED,
    EXIT_USAGE,
    IrkitError,
)
from ir_toolkit.inventory.model import Host
from ir_toolkit.transports.redfish import (
    BOOT_TARGETS,
    BmcError,
    RedfishClient,
)


from ir_toolkit.reimage.base import ReimageOptions, ReimageProvider, ReimageStatus, register_provider


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
