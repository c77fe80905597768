"""The lab's WinRM service: ``POST /wsman`` over HTTPS, Basic and NTLM, the WinRS ``cmd`` shell.

Run as ``python -m ir_toolkit.lab.winrs serve --dir HOSTDIR --address A --port 5986`` inside the
host's network namespace (``irkit lab up`` does that for every Windows host of the inventory).

* TLS with the host's certificate from the lab CA (the handshake happens in the connection's
  own thread, with a deadline, so a client that never finishes it holds nothing else up).
* Authentication as the WinRM service does it: ``401`` with ``WWW-Authenticate: Negotiate`` and
  ``Basic realm="WSMAN"``; NTLM through pyspnego's acceptor (``NTLM_USER_FILE``, written by the
  model from its NT hashes, so a rotated password takes effect for the next login), with the
  tls-server-end-point channel binding checked; an NTLM-authenticated connection stays
  authenticated (NTLM is connection-bound). Only enabled members of Administrators or Remote
  Management Users may log on (Windows' default WinRM SDDL).
* WinRS: Create / Command / Send / Receive / Signal / Delete (see :mod:`.soap`); commands run in
  threads against the model (:mod:`.shell`); a Receive waits up to the request's
  OperationTimeout and answers ``w:TimedOut`` (HTTP 500, 2150858793) if the command produced
  nothing and is still running.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.server
import os
import signal
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ir_toolkit.lab.winrs import firewall, soap
from ir_toolkit.lab.winrs.model import WindowsModel
from ir_toolkit.lab.winrs.shell import Host, Process

MAX_BODY = 512 * 1024
STREAM_CHUNK = 96 * 1024  # raw bytes per Receive, so a response stays under MaxEnvelopeSize 153600 in base64
MAX_OPERATION_TIMEOUT = 120.0


@dataclass
class Command:
    id: str
    proc: Process
    thread: threading.Thread
    sent_out: int = 0
    sent_err: int = 0


@dataclass
class Shell:
    id: str
    owner: str
    client: str
    commands: dict[str, Command] = field(default_factory=dict)


class Endpoint:
    """Shells and commands of one host, and its model."""

    def __init__(self, model: WindowsModel, address: str, port: int, *, apply_firewall: bool = True) -> None:
        self.model = model
        self.address = address
        self.port = port
        self.shells: dict[str, Shell] = {}
        self.lock = threading.Lock()
        self.apply_firewall = apply_firewall
        self.connections: set[socket.socket] = set()
        self.cert_hash = b""

    def firewall(self) -> None:
        if self.apply_firewall:
            firewall.apply(self.model.snapshot()["firewall"])

    def restart(self) -> None:
        """``Restart-Service WinRM``: every shell is gone and every connection drops."""
        def later() -> None:
            time.sleep(0.2)
            with self.lock:
                shells, self.shells = list(self.shells.values()), {}
                conns = list(self.connections)
            for conn in conns:  # connections first: no pending Receive gets to report the command's end
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            for shell in shells:
                for cmd in shell.commands.values():
                    cmd.proc.terminate()
        threading.Thread(target=later, daemon=True).start()

    # ------------------------------------------------------------------ WinRS
    def handle(self, req: soap.Request, user: str, client: str) -> bytes:
        if req.resource_uri != soap.SHELL_URI:
            raise soap.Fault("s:Sender", "w:DestinationUnreachable",
                             "The WS-Management service cannot process the request because the resource URI "
                             "is not supported by this endpoint. ", 2150858770)
        if req.action == soap.A_CREATE:
            shell = Shell(soap.new_id(), user, client)
            with self.lock:
                self.shells[shell.id] = shell
            return soap.create_response(req, shell.id, f"https://{self.address}:{self.port}/wsman", user, client)
        shell_id = req.selectors.get("ShellId", "")
        with self.lock:
            shell = self.shells.get(shell_id.upper())
        if shell is None:
            raise soap.shell_not_found(shell_id)
        if shell.owner.lower() != user.lower():
            raise soap.Fault("s:Sender", "w:AccessDenied", "Access is denied. ", 5)
        body = req.body
        if req.action == soap.A_DELETE:
            with self.lock:
                self.shells.pop(shell.id, None)
            for cmd in shell.commands.values():
                cmd.proc.terminate()
            return soap.empty_response(req, None)
        if req.action == soap.A_COMMAND:
            line = body.find("rsp:CommandLine", soap.NS) if body is not None else None
            if line is None:
                raise soap.invalid_parameter()
            command = (line.findtext("rsp:Command", "", soap.NS) or "").strip()
            args = [a.text or "" for a in line.findall("rsp:Arguments", soap.NS)]
            text = " ".join([command, *args]).strip()
            proc = Process()
            host = Host(self.model, user, client, on_firewall=self.firewall, on_restart=self.restart)
            thread = threading.Thread(target=host.run, args=(text, proc), daemon=True)
            cmd = Command(soap.new_id(), proc, thread)
            shell.commands[cmd.id] = cmd
            thread.start()
            return soap.command_response(req, cmd.id)
        if req.action == soap.A_SEND:
            stream = body.find("rsp:Send/rsp:Stream", soap.NS) if body is not None else None
            if stream is None:
                raise soap.invalid_parameter()
            cmd = shell.commands.get((stream.get("CommandId") or "").upper())
            if cmd is None:
                raise soap.command_not_found()
            try:
                data = base64.b64decode(stream.text or "", validate=True)
            except ValueError:
                raise soap.invalid_parameter() from None
            cmd.proc.feed(data, (stream.get("End") or "").lower() == "true")
            return soap.empty_response(req, "rsp:SendResponse")
        if req.action == soap.A_SIGNAL:
            sig = body.find("rsp:Signal", soap.NS) if body is not None else None
            if sig is None:
                raise soap.invalid_parameter()
            cmd = shell.commands.get((sig.get("CommandId") or "").upper())
            if cmd is None:
                raise soap.command_not_found()
            code = (sig.findtext("rsp:Code", "", soap.NS) or "").strip()
            if not code.startswith(soap.SIGNAL_PREFIX):
                raise soap.invalid_parameter()
            if code[len(soap.SIGNAL_PREFIX):].lower() in ("terminate", "ctrl_c", "ctrl_break"):
                cmd.proc.terminate()
                if code.lower().endswith("terminate"):
                    shell.commands.pop(cmd.id, None)
            return soap.empty_response(req, "rsp:SignalResponse")
        if req.action == soap.A_RECEIVE:
            want = body.find("rsp:Receive/rsp:DesiredStream", soap.NS) if body is not None else None
            if want is None:
                raise soap.invalid_parameter()
            cmd = shell.commands.get((want.get("CommandId") or "").upper())
            if cmd is None:
                if not shell.commands:
                    raise soap.invalid_parameter()  # Receive before any Command (pypsrp: fail_poll_process)
                raise soap.command_not_found()
            return self._receive(req, cmd)
        raise soap.Fault("s:Sender", "a:ActionNotSupported",
                         "The action is not supported by the service. ", 2150858770)

    def _receive(self, req: soap.Request, cmd: Command) -> bytes:
        proc = cmd.proc
        deadline = time.monotonic() + min(req.operation_timeout, MAX_OPERATION_TIMEOUT)
        with proc.cond:
            while (len(proc.stdout) == cmd.sent_out and len(proc.stderr) == cmd.sent_err
                   and proc.exit_code is None):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise soap.timed_out()
                proc.cond.wait(min(left, 1.0))
            out = bytes(proc.stdout[cmd.sent_out:cmd.sent_out + STREAM_CHUNK])
            err = bytes(proc.stderr[cmd.sent_err:cmd.sent_err + STREAM_CHUNK])
            cmd.sent_out += len(out)
            cmd.sent_err += len(err)
            done = (proc.exit_code is not None and cmd.sent_out == len(proc.stdout)
                    and cmd.sent_err == len(proc.stderr))
            code = proc.exit_code if done else None
        b64 = lambda b: [base64.b64encode(b).decode()] if b else []  # noqa: E731
        return soap.receive_response(req, cmd.id, b64(out), b64(err), code)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, addr: tuple[str, int], endpoint: Endpoint, tls: ssl.SSLContext) -> None:
        self.endpoint = endpoint
        self.tls = tls
        super().__init__(addr, _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Microsoft-HTTPAPI/2.0"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        raw = self.request
        raw.settimeout(30)
        self.request = self.server.tls.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        try:
            self.request.do_handshake()
        except (OSError, ssl.SSLError):
            self.request.close()
            raise
        self.request.settimeout(MAX_OPERATION_TIMEOUT + 30)
        self.server.endpoint.connections.add(self.request)
        self.ntlm: Any = None
        self.ntlm_user: str | None = None
        super().setup()

    def finish(self) -> None:
        self.server.endpoint.connections.discard(self.request)
        try:
            super().finish()
        except OSError:
            pass

    def handle(self) -> None:
        try:
            super().handle()
        except (OSError, ssl.SSLError):
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        sys.stderr.write("winrs %s %s\n" % (self.client_address[0], format % args))

    # ------------------------------------------------------------------ HTTP
    def _send(self, status: int, body: bytes = b"", headers: list[tuple[str, str]] | None = None) -> None:
        self.send_response(status)
        for k, v in headers or []:
            self.send_header(k, v)
        if body:
            self.send_header("Content-Type", "application/soap+xml;charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _unauthorized(self, token: str | None = None) -> None:
        headers = [("WWW-Authenticate", f"Negotiate {token}")] if token else [
            ("WWW-Authenticate", "Negotiate"), ("WWW-Authenticate", 'Basic realm="WSMAN"')]
        self._send(401, b"", headers)

    def do_GET(self) -> None:  # noqa: N802
        self._send(405)

    def do_POST(self) -> None:  # noqa: N802
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit() or int(length) > MAX_BODY:
            self._send(413 if length and length.isdigit() else 411)
            self.close_connection = True
            return
        data = self.rfile.read(int(length))
        if self.path.split("?")[0].lower() != "/wsman":
            self._send(404)
            return
        user = self._authenticate()
        if user is None:
            return
        endpoint = self.server.endpoint
        client = self.client_address[0]
        relates = ""
        try:
            if not data:
                self._send(200)  # an empty POST (context set-up) after auth
                return
            req = soap.parse(data)
            relates = req.message_id
            body = endpoint.handle(req, user, client)
            self._send(200, body)
        except soap.Fault as fault:
            self._send(500, soap.fault_response(relates, fault, endpoint.address))

    def _authenticate(self) -> str | None:
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        model = self.server.endpoint.model
        if scheme.lower() == "basic":
            try:
                name, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                name, password = "", ""
            user = model.check_password(name, password) if name else None
            if user is None:
                self._unauthorized()
            return user
        if scheme.lower() in ("negotiate", "ntlm") and value:
            return self._ntlm(value.strip())
        if self.ntlm_user is not None:
            return self.ntlm_user
        self._unauthorized()
        return None

    def _ntlm(self, value: str) -> str | None:
        import spnego
        from spnego.channel_bindings import GssChannelBindings
        from spnego.exceptions import SpnegoError

        try:
            token = base64.b64decode(value, validate=True)
        except ValueError:
            self._unauthorized()
            return None
        model = self.server.endpoint.model
        if token[8:12] == b"\x01\x00\x00\x00" or self.ntlm is None:  # NEGOTIATE_MESSAGE starts a context
            cbt = GssChannelBindings(application_data=b"tls-server-end-point:" + self.server.endpoint.cert_hash)
            self.ntlm = spnego.server(protocol="ntlm", channel_bindings=cbt)
            self.ntlm_user = None
        try:
            with model.lock:
                out = self.ntlm.step(token)
        except (SpnegoError, ValueError, KeyError, OSError) as exc:
            self.log_message("NTLM logon failed: %s", str(exc).splitlines()[0][:200])
            self.ntlm = None
            self._unauthorized()
            return None
        if not self.ntlm.complete:
            self._unauthorized(base64.b64encode(out or b"").decode())
            return None
        principal = str(self.ntlm.client_principal or "")
        user = model.canonical(principal.split("\\")[-1])
        if user is None or not model.may_use_winrm(user):
            self.ntlm = None
            self._unauthorized()
            return None
        self.ntlm_user = user
        return user


def serve(host_dir: Path, address: str, port: int, *, apply_firewall: bool = True,
          ready_file: Path | None = None) -> None:
    model = WindowsModel.load(host_dir / "model.json")
    os.environ["NTLM_USER_FILE"] = str(model.user_file)
    endpoint = Endpoint(model, address, port, apply_firewall=apply_firewall)
    cert = host_dir / "winrm.crt"
    from cryptography import x509

    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(
        __import__("cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]).Encoding.DER)
    endpoint.cert_hash = hashlib.sha256(der).digest()
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.minimum_version = ssl.TLSVersion.TLSv1_2
    tls.load_cert_chain(cert, host_dir / "winrm.key")
    endpoint.firewall()
    server = _Server((address, port), endpoint, tls)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    if ready_file is not None:
        ready_file.write_text(f"{os.getpid()}\n")
    server.serve_forever(poll_interval=1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ir_toolkit.lab.winrs")
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="serve WinRM for one lab Windows host")
    s.add_argument("--dir", required=True, type=Path)
    s.add_argument("--address", required=True)
    s.add_argument("--port", type=int, default=5986)
    s.add_argument("--no-firewall", action="store_true", help="do not apply the model's firewall with nft")
    s.add_argument("--ready-file", type=Path)
    args = parser.parse_args(argv)
    serve(args.dir, args.address, args.port, apply_firewall=not args.no_firewall, ready_file=args.ready_file)
    return 0
