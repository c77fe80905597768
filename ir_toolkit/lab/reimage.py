"""The ``lab`` reimage provider (``bmc: {provider: lab}``): really rebuild a lab host.

A reimage of a lab host stops it, throws away its writable layer and network
namespace (so nftables rules and every file change are gone), generates a new
SSH host key (written to the lab's known_hosts, as a provisioning system would
report it) and boots it from the clean image: sshd with the responder key in
root's authorized_keys, no ``mspadmin``, no MSP key, no implant.

The host is found in the labs running on this machine by name and address
(``bmc.system_id``, when set, names the lab's MSP to choose among several).
"""

from __future__ import annotations

import time
from pathlib import Path

from ir_toolkit.reimage import ReimageProvider, ReimageStatus, register_provider
from ir_toolkit.errors import EXIT_ENVIRONMENT, EXIT_USAGE, InputError, IrkitError
from ir_toolkit.inventory.model import Host
from ir_toolkit.lab.fleet import Lab
from ir_toolkit.lab.sshkeys import fingerprint
from ir_toolkit.lab.state import load_state, registered


def find_lab(host: Host) -> Lab:
    """The running lab that holds ``host`` (same name and address)."""
    want_msp = host.bmc.system_id if host.bmc and host.bmc.system_id else None
    found = []
    for entry in registered():
        if want_msp and entry.get("msp") != want_msp:
            continue
        lab_dir = Path(entry.get("lab_dir", ""))
        try:
            state = load_state(lab_dir / "state.json")
        except InputError:
            continue
        recorded = state.hosts.get(host.name) if state else None
        if recorded is not None and recorded.address == host.address:
            found.append(Lab(entry["msp"], lab_dir))
    if not found:
        raise InputError(f"{host.name} ({host.address}) is not a host of any running lab on this machine")
    if len(found) > 1:
        raise InputError(f"{host.name} is in several labs ({', '.join(l.msp for l in found)}); "
                         "set bmc.system_id to the lab's MSP name")
    return found[0]


class LabProvider(ReimageProvider):
    """start: find the lab; poll: rebuild the host (about a second), then the optional ready_check."""

    name = "lab"
    reports_host_key = True

    def __init__(self, options=None) -> None:  # type: ignore[no-untyped-def]
        super().__init__(options)
        self._lab: Lab | None = None
        self._host: Host | None = None
        self._next = "rebuild"
        self._deadline = 0.0

    def start(self, host: Host) -> None:
        result = self._begin(host)
        self._host = host
        try:
            self._lab = find_lab(host)
            old = self._lab.host(host.name)
        except IrkitError as exc:
            self._fail("config", str(exc), exc.exit_code if exc.exit_code in (EXIT_USAGE, EXIT_ENVIRONMENT) else EXIT_USAGE)
            return
        pub = self._lab.paths.host_key(host.name).with_name("ssh_host_ed25519_key.pub")
        result.facts.update(lab_msp=self._lab.msp, lab_dir=str(self._lab.paths.root),
                            old_host_key_fingerprint=fingerprint(pub.read_text()) if pub.exists() else None,
                            was_breached=old.breached, install_verified=self.options.ready_check is not None)
        result.step("start", f"reimage lab host {host.name} of lab {self._lab.msp}")

    def poll(self) -> ReimageStatus:
        if self._result is None:
            raise RuntimeError("poll() before start()")
        if self.status is not ReimageStatus.RUNNING:
            return self.status
        assert self._lab is not None and self._host is not None
        result, host = self.result, self._host
        if self._next == "rebuild":
            try:
                info = self._lab.reimage(host.name)
            except IrkitError as exc:
                self._fail("lab", f"{host.name}: {exc}", exc.exit_code)
                return self.status
            result.facts.update(new_host_key_fingerprint=info["host_key_fingerprint"], pid=info["pid"],
                                known_hosts=str(self._lab.paths.known_hosts))
            result.step("rebuild", f"writable layer and network stack wiped, new host key "
                                   f"{info['host_key_fingerprint']}, sshd restarted")
            if self.options.ready_check is None:
                self._done(f"{host.name} rebuilt from the clean lab image")
                return self.status
            self._next = "wait-ready"
            self._deadline = time.monotonic() + self.options.install_timeout
        if self._next == "wait-ready":
            if self.options.ready_check is not None and self.options.ready_check(host):
                result.step("wait-ready", "ready check passed")
                self._done(f"{host.name} rebuilt from the clean lab image and ready")
            elif time.monotonic() >= self._deadline:
                self._fail("timeout", f"{host.name}: not ready within {self.options.install_timeout:.0f} s")
        return self.status

    def cancel(self) -> None:
        if self._result is None or self.status is not ReimageStatus.RUNNING:
            return
        self._fail("cancelled", f"{self.result.host}: reimage cancelled during {self.result.phase}")


register_provider("lab", LabProvider)
