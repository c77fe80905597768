"""Test targets for the Redfish reimage provider: the real sushy-tools emulator and helpers.

* :class:`SushyEmulator` runs ``sushy-emulator`` (the venv's console script) with the
  fake systems driver, HTTP Basic auth from a bcrypt htpasswd file and a private
  state directory, on 127.0.0.1 and a free port. It is stopped by its pid.
* :class:`ImageServer` serves a small "installer image" over HTTP on 127.0.0.1 for
  ``VirtualMedia.InsertMedia`` (the emulator really downloads it) and records every
  request, so a test can prove the BMC fetched the image.
* :class:`RedfishShim` is a tiny HTTP proxy in front of the emulator that changes
  what real BMCs change: it can swallow power-on requests (a host that never comes
  back: the BMC accepts the reset, the power state stays Off), hide resources
  (a VirtualMedia link that answers 404), drop links, and move VirtualMedia under
  ``/Managers/<id>`` (the iLO/iDRAC layout), rewriting paths both ways.
* :class:`EmulatorView` reads the emulator's state directly with ``requests`` so tests
  assert on what the BMC holds, not on what the client under test believes.

Nothing here mocks HTTP: every request the client makes crosses a real socket to a
real Redfish service.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid as uuidlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import requests

VENV_BIN = Path(sys.executable).parent
EMULATOR = VENV_BIN / "sushy-emulator"
REDFISH = "/redfish/v1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class FakeSystem:
    """One system of the fake driver. ``uuid`` becomes the resource Id (and the manager's)."""

    name: str
    power_state: str = "Off"
    uuid: str = field(default_factory=lambda: str(uuidlib.uuid4()))
    mac: str = "52:54:00:12:34:56"

    def config(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "name": self.name,
            "power_state": self.power_state,
            "external_notifier": False,
            "nics": [{"mac": self.mac, "ip": "198.18.250.10"}],
        }


class SushyEmulator:
    """A running ``sushy-emulator`` process (fake driver, Basic auth, loopback only)."""

    def __init__(
        self,
        workdir: Path,
        systems: list[FakeSystem],
        *,
        users: dict[str, str],
        feature_set: str = "full",
        tls: bool = False,
    ) -> None:
        self.workdir = workdir
        self.tls = tls
        self.systems = systems
        self.users = users
        self.feature_set = feature_set
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "emulator.log"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        state = self.workdir / "state"
        state.mkdir(exist_ok=True)
        (self.workdir / "tmp").mkdir(exist_ok=True)
        htpasswd = self.workdir / "htpasswd"
        # Low bcrypt cost: the emulator checks the hash on every request.
        lines = [
            f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode()}"
            for user, pw in self.users.items()
        ]
        htpasswd.write_text("\n".join(lines) + "\n")
        config = self.workdir / "emulator.conf"
        config.write_text(
            "SUSHY_EMULATOR_FAKE_DRIVER = True\n"
            f"SUSHY_EMULATOR_FAKE_SYSTEMS = {[s.config() for s in self.systems]!r}\n"
            f"SUSHY_EMULATOR_STATE_DIR = {str(state)!r}\n"
            f"SUSHY_EMULATOR_AUTH_FILE = {str(htpasswd)!r}\n"
            f"SUSHY_EMULATOR_FEATURE_SET = {self.feature_set!r}\n"
            "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\n"
        )
        if self.tls:
            cert, key = self_signed_cert(self.workdir)
            with config.open("a") as fh:
                fh.write(f"SUSHY_EMULATOR_SSL_CERT = {str(cert)!r}\nSUSHY_EMULATOR_SSL_KEY = {str(key)!r}\n")
        return config

    def start(self, timeout: float = 30.0) -> SushyEmulator:
        config = self._write_config()
        env = dict(os.environ)
        env.update(
            TMPDIR=str(self.workdir / "tmp"),  # downloaded images land here
            NO_PROXY="127.0.0.1,localhost",
            no_proxy="127.0.0.1,localhost",
        )
        env.pop("SUSHY_EMULATOR_CONFIG", None)
        last_error = "not started"
        for _attempt in range(3):  # a port taken between free_port() and bind: try another
            self.port = free_port()
            log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
            try:
                self.proc = subprocess.Popen(
                    [str(EMULATOR), "--config", str(config), "-i", "127.0.0.1", "-p", str(self.port),
                     "--feature-set", self.feature_set],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                    start_new_session=True,
                )
            finally:
                log.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    last_error = f"exited with {self.proc.returncode}"
                    break
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # self-signed on purpose
                        ready = requests.get(self.url + REDFISH + "/", timeout=1, verify=False).status_code == 200
                    if ready:
                        return self
                except requests.RequestException as exc:
                    last_error = str(exc)
                time.sleep(0.1)
            self.stop()
        tail = self.log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"sushy-emulator did not start ({last_error}):\n{tail}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def __enter__(self) -> SushyEmulator:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


class EmulatorView:
    """Reads the emulator's state directly (not through the code under test)."""

    def __init__(self, base_url: str, auth: tuple[str, str]) -> None:
        self.base_url = base_url
        self.session = requests.Session()
        self.session.auth = auth
        self.session.trust_env = False

    def get(self, path: str) -> dict[str, Any]:
        resp = self.session.get(self.base_url + path, timeout=10)
        resp.raise_for_status()
        return resp.json()

    def system(self, system_id: str) -> dict[str, Any]:
        return self.get(f"{REDFISH}/Systems/{system_id}")

    def power(self, system_id: str) -> str:
        return str(self.system(system_id).get("PowerState"))

    def boot(self, system_id: str) -> dict[str, Any]:
        return dict(self.system(system_id)["Boot"])

    def media(self, system_id: str, device: str = "Cd") -> dict[str, Any]:
        return self.get(f"{REDFISH}/Systems/{system_id}/VirtualMedia/{device}")

    def reset(self, system_id: str, reset_type: str) -> None:
        resp = self.session.post(
            f"{self.base_url}{REDFISH}/Systems/{system_id}/Actions/ComputerSystem.Reset",
            json={"ResetType": reset_type}, timeout=10,
        )
        resp.raise_for_status()

    def wait_power(self, system_id: str, state: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.power(system_id) == state:
                return
            time.sleep(0.1)
        raise AssertionError(f"system {system_id} did not reach {state} within {timeout}s")


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, like the one a BMC ships from the factory."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bmc.example")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "bmc.crt", directory / "bmc.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


# --------------------------------------------------------------------------- image server

class _LoopbackServer:
    """An in-process HTTP server on 127.0.0.1 (a free port), run by a thread; stopped with shutdown()."""

    def _serve(self, handler: type) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> Any:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


class ImageServer(_LoopbackServer):
    """Serves files from a directory over HTTP on 127.0.0.1 and records each request path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        server_self = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                server_self.requests.append(self.path)
                super().do_GET()

            def log_message(self, *_args: Any) -> None:
                pass

        self._serve(Handler)


def make_image(directory: Path, name: str = "installer.iso", size: int = 64 * 1024) -> Path:
    """A small file that stands in for an installer ISO (random bytes with an ISO-ish header)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(b"CD001irkit-test-installer\n" + os.urandom(size))
    return path


# --------------------------------------------------------------------------- shim

@dataclass
class ShimRules:
    """What the shim changes. All matching is on the client-visible path."""

    swallow_power_on: bool = False
    hide: list[str] = field(default_factory=list)  # regexes: answer 404
    drop_fields: dict[str, list[str]] = field(default_factory=dict)  # path regex -> top-level keys
    aliases: list[tuple[str, str]] = field(default_factory=list)  # (public prefix, upstream prefix)


_NOT_FOUND = {
    "error": {
        "code": "Base.1.0.ResourceMissingAtURI",
        "message": "The resource at the URI was not found.",
        "@Message.ExtendedInfo": [{"MessageId": "Base.1.0.ResourceMissingAtURI",
                                   "Message": "The resource at the URI was not found.",
                                   "Severity": "Critical"}],
    }
}


class RedfishShim(_LoopbackServer):
    """A small HTTP proxy that forwards to the emulator and applies :class:`ShimRules`."""

    def __init__(self, upstream: str, rules: ShimRules) -> None:
        self.upstream = upstream
        self.rules = rules
        self.log: list[tuple[str, str, Any]] = []  # (method, public path, JSON body or None)
        shim = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, headers, payload = shim.forward(self.command, self.path, dict(self.headers), body)
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                if self.close_connection:  # the client asked for Connection: close; say so
                    self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = do_HEAD = _handle  # noqa: N815

            def log_message(self, *_args: Any) -> None:
                pass

        self._serve(Handler)

    def requests_to(self, method: str, pattern: str) -> list[Any]:
        return [body for m, p, body in self.log if m == method and re.search(pattern, p)]

    # -- the proxy logic
    def _to_upstream(self, path: str) -> str:
        for public, upstream in self.rules.aliases:
            if path.startswith(public):
                return upstream + path[len(public):]
        return path

    def _to_public(self, payload: bytes) -> bytes:
        for public, upstream in self.rules.aliases:
            payload = payload.replace(upstream.encode(), public.encode())
        return payload

    def forward(self, method: str, path: str, headers: dict[str, str], body: bytes
                ) -> tuple[int, list[tuple[str, str]], bytes]:
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        self.log.append((method, path, parsed))
        json_headers = [("Content-Type", "application/json")]
        if any(re.search(rx, path) for rx in self.rules.hide):
            return 404, json_headers, json.dumps(_NOT_FOUND).encode()
        if (self.rules.swallow_power_on and method == "POST"
                and path.endswith("/Actions/ComputerSystem.Reset")
                and isinstance(parsed, dict) and parsed.get("ResetType") in {"On", "ForceOn"}):
            return 204, [], b""  # accepted; the host never comes up
        for _public, upstream in self.rules.aliases:
            if path.startswith(upstream):  # a moved resource is not served at its old place
                return 404, json_headers, json.dumps(_NOT_FOUND).encode()
        target = self._to_upstream(path)
        host, port = self.upstream.split("//", 1)[1].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        keep = {k: v for k, v in headers.items()
                if k.lower() not in {"host", "content-length", "connection"}}
        try:
            conn.request(method, target, body=body or None, headers=keep)
            resp = conn.getresponse()
            payload = resp.read()
            status = resp.status
            out_headers = [(k, v) for k, v in resp.getheaders()
                           if k.lower() not in {"content-length", "connection", "transfer-encoding",
                                                "server", "date"}]
        finally:
            conn.close()
        if payload and "json" in dict((k.lower(), v) for k, v in out_headers).get("content-type", ""):
            payload = self._to_public(payload)
            drops = [key for rx, keys in self.rules.drop_fields.items() if re.search(rx, path) for key in keys]
            if drops and method == "GET" and status == 200:
                doc = json.loads(payload)
                for key in drops:
                    doc.pop(key, None)
                payload = json.dumps(doc).encode()
        return status, out_headers, payload

