"""A WinRS endpoint for tests: the lab's endpoint on loopback, or a real Windows host.

Set ``IRKIT_TEST_WINRM_ENDPOINT`` (``https://host:5986/wsman``), ``IRKIT_TEST_WINRM_USER``,
``IRKIT_TEST_WINRM_PASSWORD`` and ``IRKIT_TEST_WINRM_CA`` (the CA bundle that validates the
host's certificate) to run the same tests against a real Windows host; tests that need the
lab's model (or its logs) skip there.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

from ir_toolkit.lab.winrs import ca
from ir_toolkit.lab.winrs import host as winrs_host
from ir_toolkit.transports.winrm import WinrmEndpoint

RESPONDER = "irkit-responder"
RESPONDER_PASSWORD = "Resp0nder-Lab-Pass-2026!"
SHARED = "acmeadmin"
SHARED_PASSWORD = "Acme-Shared-2019!"
MSP = "msp-support"


@dataclasses.dataclass
class WinrsTarget:
    endpoint: WinrmEndpoint
    password: str
    lab_dir: Path | None = None
    proc: subprocess.Popen | None = None

    @property
    def is_lab(self) -> bool:
        return self.lab_dir is not None

    def log(self) -> str:
        assert self.lab_dir is not None
        return (self.lab_dir / "endpoint.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def real_target() -> WinrsTarget | None:
    url = os.environ.get("IRKIT_TEST_WINRM_ENDPOINT")
    if not url:
        return None
    u = urlparse(url)
    ep = WinrmEndpoint(u.hostname or "", u.port or 5986, os.environ["IRKIT_TEST_WINRM_USER"],
                       scheme=u.scheme or "https", ca_file=os.environ.get("IRKIT_TEST_WINRM_CA"), name="real")
    return WinrsTarget(ep, os.environ["IRKIT_TEST_WINRM_PASSWORD"])


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_loopback(directory: Path, *, breached: bool = True, name: str = "win-test01") -> WinrsTarget:
    """The lab endpoint on 127.0.0.1 (no netns, no firewall), seeded like a lab host."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = directory / "ca.pem", directory / "ca.key"
    ca.ensure_ca(ca_cert, ca_key, "test")
    hd = directory / "host"
    winrs_host.prepare(hd, ca_cert=ca_cert, ca_key=ca_key, name=name, address="127.0.0.1",
                       responder_user=RESPONDER, responder_password=RESPONDER_PASSWORD, shared_user=SHARED,
                       shared_password=SHARED_PASSWORD, msp_users=[MSP], breached=breached,
                       epoch=int(time.time()) - 86400 * 3)
    port = free_port()
    argv = winrs_host.serve_argv(hd, "127.0.0.1", port, netns_file=None, nsenter=None, firewall=False)
    log = open(hd / "endpoint.log", "ab")
    proc = subprocess.Popen(argv, env=winrs_host.serve_env(), stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not winrs_host.ready(hd, proc.pid):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("lab WinRS endpoint did not start: " + winrs_host.log_tail(hd))
        time.sleep(0.05)
    ep = WinrmEndpoint("127.0.0.1", port, RESPONDER, ca_file=str(ca_cert), name=name)
    return WinrsTarget(ep, RESPONDER_PASSWORD, lab_dir=hd, proc=proc)
