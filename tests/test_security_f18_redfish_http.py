"""Security review finding 18 (Redfish part): a plain ``http://`` BMC URL is refused unless the inventory
says ``allow_insecure_http: true``, before any byte (and so any credential) goes to the BMC.

A real loopback listener stands in for the BMC and records every connection and request it gets.
"""

from __future__ import annotations

import socket
import threading

import pytest

from ir_toolkit.reimage import ReimageOptions, ReimageStatus, provider_for, run_to_completion
from ir_toolkit.inventory.model import Bmc, Host, Tenant
from ir_toolkit.transports.redfish import BmcError, RedfishClient, RedfishTimeouts

PASSWORD = "Bmc-cleartext-pass-31"


class Listener:
    """Accepts connections on loopback and keeps what clients send (then closes)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            conn.settimeout(1)
            try:
                self.received.append(conn.recv(65536))
            except OSError:
                self.received.append(b"")
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def bmc_listener():
    listener = Listener()
    yield listener
    listener.close()


def _host(url: str, secret_file, **extra) -> Host:
    bmc = Bmc(provider="redfish", url=url, username="admin", password=f"file:{secret_file}", **extra)
    return Tenant(name="globex", hosts=[Host(name="web01", address="198.18.1.20", bmc=bmc)]).hosts[0]


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "bmc.pw"
    path.write_text(PASSWORD + "\n")
    path.chmod(0o600)
    return path


def test_f18_plain_http_bmc_is_refused_before_any_traffic(bmc_listener, secret_file):
    host = _host(bmc_listener.url, secret_file)
    result = run_to_completion(provider_for(host, ReimageOptions(image_url="https://img.example/i.iso",
                                                                 poll_interval=0.05)), host, interval=0.05)
    assert result.status is ReimageStatus.FAILED and result.error_kind == "config"
    assert result.message == (f"web01: BMC {bmc_listener.url}: plain http would send the BMC credentials in "
                              "cleartext; use https, or set bmc.allow_insecure_http: true")
    assert result.error().exit_code == 2
    with pytest.raises(BmcError) as exc:
        RedfishClient(bmc_listener.url, "admin", PASSWORD)
    assert exc.value.kind == "config" and "\n" not in str(exc.value)
    assert bmc_listener.received == [], "irkit talked to a plain-http BMC it should have refused"


def test_f18_allow_insecure_http_is_explicit(bmc_listener, secret_file):
    host = _host(bmc_listener.url, secret_file, allow_insecure_http=True)
    client = RedfishClient.from_bmc(host.bmc, timeouts=RedfishTimeouts(connect=2, read=2, retries=0,
                                                                        retry_delay=0.1))
    with pytest.raises(BmcError):
        client.connect()  # our listener is no Redfish service: it only proves the request went out
    assert bmc_listener.received, "with allow_insecure_http the BMC is contacted"
    # an https URL needs no flag
    RedfishClient("https://127.0.0.1:1", "admin", PASSWORD)
