"""WinRM transport over pywinrm: one WinRS shell per host, reused by every step.

* HTTPS with certificate validation ON by default, against the CA bundle the inventory names
  (``msp.windows.ca_file`` or the host's own); the TLS handshake, and so the certificate check,
  happens before any credential is sent (NTLM is challenge-driven; Basic goes only inside TLS).
  ``http`` is accepted only with NTLM/Kerberos *message encryption* (pywinrm's sealing).
* NTLM (default) or Kerberos; Basic only over HTTPS and only if the inventory asks for it.
* Hard deadlines: pywinrm has none of its own (it retries ``w:TimedOut`` forever), so every
  Receive here runs with ``operation_timeout`` < ``read_timeout`` and both below what is left
  of the command's budget; past the deadline the command is signalled (terminate) and the call
  ends as ``timed_out``.
* The same error kinds as SSH: unreachable, auth_failed, timed_out, certificate_refused (the
  WinRM counterpart of a changed host key), protocol; a non-zero exit is the caller's verdict.
* PowerShell errors (CLIXML on stderr) are decoded into one readable line per error record.
* Secrets reach PowerShell on stdin (``[Console]::In.ReadLine()``), never on the command line
  and never inside the encoded script (which Windows may log as a 4688/4104 event).
"""

from __future__ import annotations

import base64
import re
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ir_toolkit.transports.base import (
    AUTH_FAILED,
    HOST_KEY_CHANGED,
    PROTOCOL,
    TIMED_OUT,
    UNREACHABLE,
    CommandResult,
    Connection,
    Endpoint,
    Timeouts,
    TransportError,
)

if TYPE_CHECKING:
    from ir_toolkit.inventory.model import Host
    from ir_toolkit.transports.pool import ConnectionPool

CERT_REFUSED = "certificate_refused"
POWERSHELL = "powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -EncodedCommand"
_SHELL_GONE = 2150858843
_OP_TIMEOUT = 2150858793
_MAX_OP = 20  # seconds: longest single Receive wait


@dataclass
class WinrmEndpoint(Endpoint):
    """Where and as whom to connect over WinRM: an :class:`~ir_toolkit.transports.base.Endpoint` (address,
    port, user, ``pinned`` certificate fingerprints — ``SHA256:`` + base64 of the DER's SHA-256; empty: the
    CA decides — and name) plus the WinRM scheme, authentication and CA."""

    scheme: str = "https"
    auth: str = "ntlm"
    ca_file: str | None = None
    validate: bool = True

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.scheme}://{host}:{self.port}/wsman"


def encode_script(script: str) -> str:
    """The ``-EncodedCommand`` argument: UTF-16LE base64 (what powershell.exe decodes)."""
    return base64.b64encode(script.encode("utf-16-le")).decode("ascii")


_CLIXML_STRIP = re.compile(rb'xmlns="[^"]*"')


def decode_clixml(data: bytes) -> bytes:
    """``#< CLIXML`` stderr as readable text: one line per error record (message and error id)."""
    if not data.startswith(b"#< CLIXML"):
        return data
    body = data.split(b"\n", 1)[1] if b"\n" in data else b""
    try:
        root = ET.fromstring(_CLIXML_STRIP.sub(b"", body))
    except ET.ParseError:
        return b"(unreadable PowerShell error output)"
    text = "".join((s.text or "") for s in root.iter("S") if s.get("S") == "Error")
    text = text.replace("_x000D__x000A_", "\n")
    records: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            if current:
                records.append(" ".join(current))
                current = []
            continue
        if stripped.startswith("+ CategoryInfo") or stripped.startswith("At line:") or stripped.startswith("+ ~"):
            continue
        if stripped.startswith("+ FullyQualifiedErrorId"):
            current.append("(" + stripped.split(":", 1)[1].strip() + ")")
            continue
        if stripped.startswith("+ "):  # the position excerpt (+ code / + ~~~~) and other detail lines
            continue
        current.append(stripped)
    if current:
        records.append(" ".join(current))
    return ("\n".join(records) or "(PowerShell reported an error without a message)").encode("utf-8")


def _kind_of(exc: BaseException, endpoint: WinrmEndpoint) -> TransportError:
    import requests
    from winrm.exceptions import InvalidCredentialsError, WinRMError, WinRMTransportError

    where = f"{endpoint.name or endpoint.address} ({endpoint.url})"
    if isinstance(exc, TransportError):
        return exc
    if isinstance(exc, requests.exceptions.SSLError):
        reason = str(exc)
        m = re.search(r"certificate verify failed: ([^(\"')]+)", reason) or re.search(r"(hostname '[^']+' doesn't match[^\"']*)", reason)
        detail = m.group(1).strip() if m else "TLS handshake failed"
        return TransportError(CERT_REFUSED, f"{where}: server certificate refused ({detail}); no credential was "
                                            "sent. Check the inventory's WinRM CA bundle, or whether this is "
                                            "really the host")
    if isinstance(exc, (requests.exceptions.ConnectTimeout, requests.exceptions.ReadTimeout)):
        return TransportError(TIMED_OUT, f"{where}: no answer in time (host hung or filtered?)")
    if isinstance(exc, requests.exceptions.ConnectionError):
        text = str(exc)
        if "timed out" in text.lower():
            return TransportError(TIMED_OUT, f"{where}: connect timed out")
        m = re.search(r"\[Errno \d+\] ([^'\")]+)", text)
        return TransportError(UNREACHABLE, f"{where}: cannot connect: {m.group(1) if m else 'connection failed'}")
    if isinstance(exc, InvalidCredentialsError):
        return TransportError(AUTH_FAILED, f"{where}: authentication as {endpoint.user} ({endpoint.auth}) failed")
    if isinstance(exc, WinRMTransportError):
        return TransportError(PROTOCOL, f"{where}: HTTP {exc.code} from the WinRM service")
    if isinstance(exc, WinRMError):
        return TransportError(PROTOCOL, f"{where}: {str(exc).splitlines()[0][:200]}")
    return TransportError(PROTOCOL, f"{where}: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")


def certificate_fingerprint(der: bytes) -> str:
    """``SHA256:<base64>`` of a certificate's DER (the form the pins and the audit log use)."""
    import hashlib

    return "SHA256:" + base64.b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")


def peer_certificate(endpoint: WinrmEndpoint, timeout: float) -> bytes:
    """The server's certificate, validated against the endpoint's CA bundle and name (before any request).

    Used to check pins and to name the server's identity; the pywinrm session that follows
    validates the certificate again on its own connection.
    """
    import socket
    import ssl

    ctx = ssl.create_default_context(cafile=endpoint.ca_file) if endpoint.validate else ssl._create_unverified_context()
    try:
        with socket.create_connection((endpoint.address, endpoint.port), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=endpoint.address) as tls:
                der = tls.getpeercert(binary_form=True)
    except ssl.SSLCertVerificationError as exc:
        raise TransportError(CERT_REFUSED, f"{endpoint.name or endpoint.address} ({endpoint.url}): server "
                                           f"certificate refused ({exc.verify_message}); no credential was sent. "
                                           "Check the inventory's WinRM CA bundle, or whether this is really "
                                           "the host") from None
    except ssl.SSLError as exc:
        raise TransportError(CERT_REFUSED, f"{endpoint.name or endpoint.address}: TLS handshake failed "
                                           f"({exc.reason or exc}); no credential was sent") from None
    except (TimeoutError, socket.timeout):
        raise TransportError(TIMED_OUT, f"{endpoint.name or endpoint.address}: connect timed out") from None
    except OSError as exc:
        raise TransportError(UNREACHABLE, f"{endpoint.name or endpoint.address} ({endpoint.url}): cannot "
                                          f"connect: {exc.strerror or exc}") from None
    if not der:
        raise TransportError(CERT_REFUSED, f"{endpoint.name or endpoint.address}: no server certificate")
    return der


class WinrmConnection:
    """One authenticated WinRM session with one open WinRS shell."""

    kind: ClassVar[str] = "winrm"

    def __init__(self, endpoint: WinrmEndpoint, protocol: Any, shell_id: str, timeouts: Timeouts,
                 fingerprint: str = "") -> None:
        #: the Connection protocol's endpoint (a WinrmEndpoint: scheme, auth and CA besides)
        self.endpoint: Endpoint = endpoint
        self.winrm_endpoint = endpoint
        self.protocol = protocol
        self.shell_id: str | None = shell_id
        self.timeouts = timeouts
        #: the server's certificate (``SHA256:...`` of its DER), checked before any credential was sent
        self.host_key_fingerprint = fingerprint
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ opening
    @staticmethod
    def _protocol(endpoint: WinrmEndpoint, password: str, op_timeout: int, read_timeout: int) -> Any:
        from winrm.protocol import Protocol as _Protocol

        Protocol: Any = _Protocol  # pywinrm's Literal-typed options are validated here, not by its stubs

        if endpoint.scheme not in ("https", "http"):
            raise TransportError(PROTOCOL, f"{endpoint.address}: WinRM scheme must be https or http")
        if endpoint.auth not in ("ntlm", "kerberos", "basic"):
            raise TransportError(PROTOCOL, f"{endpoint.address}: unsupported WinRM auth {endpoint.auth!r}")
        if endpoint.scheme == "http" and endpoint.auth == "basic":
            raise TransportError(PROTOCOL, f"{endpoint.address}: refusing Basic authentication over plain HTTP "
                                           "(the password would cross the network readable); use https or ntlm")
        if endpoint.auth == "kerberos":
            try:
                import requests_kerberos  # noqa: F401
            except ImportError:
                raise TransportError(PROTOCOL, f"{endpoint.address}: Kerberos needs requests-kerberos/pykerberos "
                                               "(not installed); use auth: ntlm") from None
        validation = "validate" if endpoint.validate else "ignore"
        return Protocol(
            endpoint.url, transport=endpoint.auth, username=endpoint.user, password=password,
            server_cert_validation=validation, ca_trust_path=endpoint.ca_file if endpoint.validate else None,
            message_encryption="always" if endpoint.scheme == "http" else "auto",
            operation_timeout_sec=op_timeout, read_timeout_sec=read_timeout, proxy=None,
        )

    @classmethod
    def open(cls, endpoint: WinrmEndpoint, *, password: str, timeouts: Timeouts = Timeouts(),
             deadline: float | None = None) -> WinrmConnection:
        """Authenticate (certificate checked first) and open one shell, all within ``deadline``."""
        if endpoint.scheme == "https" and endpoint.validate and not endpoint.ca_file:
            raise TransportError(CERT_REFUSED, f"{endpoint.name or endpoint.address}: no WinRM CA bundle configured "
                                               "(msp.windows.ca_file); refusing to connect without validation")
        limit = timeouts.connect + timeouts.auth
        if deadline is not None:
            limit = min(limit, deadline - time.monotonic())
            if limit <= 1:
                raise TransportError(TIMED_OUT, f"{endpoint.address}: host deadline reached before connecting")
        op = max(1, min(int(limit) - 2, _MAX_OP))
        protocol = cls._protocol(endpoint, password, op, op + 2)
        fingerprint = ""
        if endpoint.scheme == "https":
            fingerprint = certificate_fingerprint(peer_certificate(endpoint, min(timeouts.connect, limit)))
            if endpoint.pinned and fingerprint not in endpoint.pinned:
                raise TransportError(HOST_KEY_CHANGED, f"{endpoint.name or endpoint.address}: WinRM certificate "
                                                       f"changed — possible interception: the server offers "
                                                       f"{fingerprint}, pinned {', '.join(sorted(endpoint.pinned))}")
        try:
            shell_id = protocol.open_shell(codepage=65001, noprofile=True)
        except Exception as exc:  # noqa: BLE001 — mapped to a transport kind
            raise _kind_of(exc, endpoint) from None
        return cls(endpoint, protocol, shell_id, timeouts, fingerprint)

    # ------------------------------------------------------------------ commands
    def run(self, command: str, *, stdin: bytes | None = None, timeout: float | None = None,
            deadline: float | None = None) -> CommandResult:
        """Run a PowerShell script (``command``) in the host's shell; ``stdin`` (secrets) is fed to it."""
        return self.run_cmd(f"{POWERSHELL} {encode_script(command)}", stdin=stdin, timeout=timeout,
                            deadline=deadline)

    def run_cmd(self, command_line: str, *, stdin: bytes | None = None, timeout: float | None = None,
                deadline: float | None = None) -> CommandResult:
        """Run a cmd.exe command line (``hostname``, ``whoami``, ``powershell.exe ...``)."""
        from winrm.exceptions import WinRMOperationTimeoutError, WSManFaultError

        start = time.monotonic()
        limit = self.timeouts.command if timeout is None else timeout
        if deadline is not None:
            limit = min(limit, deadline - start)
        deadline = start + limit
        with self._lock:
            if self.shell_id is None:
                raise TransportError(UNREACHABLE, f"{self.endpoint.address}: WinRM shell is closed")
            self._budget(deadline)
            try:
                command_id = self.protocol.run_command(self.shell_id, command_line)
            except WSManFaultError as exc:
                if exc.wsman_fault_code == _SHELL_GONE:  # the shell went away between commands: reopen once
                    self._reopen(deadline)
                    try:
                        command_id = self.protocol.run_command(self.shell_id, command_line)
                    except Exception as exc2:  # noqa: BLE001
                        raise self._lost(exc2) from None
                else:
                    raise self._lost(exc) from None
            except Exception as exc:  # noqa: BLE001
                raise self._lost(exc) from None
            out, err = [], []
            try:
                if stdin is not None:
                    self._budget(deadline)
                    self.protocol.send_command_input(self.shell_id, command_id, stdin, end=True)
                while True:
                    self._budget(deadline)
                    try:
                        o, e, code, done = self.protocol.get_command_output_raw(self.shell_id, command_id)
                    except WinRMOperationTimeoutError:
                        continue
                    out.append(o)
                    err.append(e)
                    if done:
                        break
            except TransportError as exc:
                if exc.kind == TIMED_OUT:
                    self._terminate(command_id)
                    raise TransportError(TIMED_OUT, f"{self.endpoint.address}: command timed out after {limit:g}s") from None
                raise
            except WSManFaultError as exc:
                if exc.wsman_fault_code == _SHELL_GONE:
                    self.shell_id = None
                    raise TransportError(UNREACHABLE, f"{self.endpoint.address}: the WinRM shell was dropped by "
                                                      "the host while a command ran (outcome unknown)") from None
                raise self._lost(exc) from None
            except Exception as exc:  # noqa: BLE001
                error = self._lost(exc)
                if error.kind == UNREACHABLE:
                    raise TransportError(UNREACHABLE, f"{self.endpoint.address}: connection lost while a command "
                                                      "ran (outcome unknown)") from None
                raise error from None
            self._cleanup(command_id)
        return CommandResult(code, b"".join(out), decode_clixml(b"".join(err)), time.monotonic() - start)

    def _budget(self, deadline: float) -> None:
        """Fit the next WS-Man operation into what is left: operation_timeout < read_timeout < left."""
        left = deadline - time.monotonic()
        if left <= 0.5:
            raise TransportError(TIMED_OUT, f"{self.endpoint.address}: deadline reached")
        op = max(1, min(_MAX_OP, int(left) - 1))
        self.protocol.operation_timeout_sec = op
        self.protocol.read_timeout_sec = op + 1
        self.protocol.transport.read_timeout_sec = op + 1

    def _reopen(self, deadline: float) -> None:
        self._budget(deadline)
        try:
            self.shell_id = self.protocol.open_shell(codepage=65001, noprofile=True)
        except Exception as exc:  # noqa: BLE001
            self.shell_id = None
            raise _kind_of(exc, self.winrm_endpoint) from None

    def _lost(self, exc: BaseException) -> TransportError:
        error = _kind_of(exc, self.winrm_endpoint)
        if error.kind in (UNREACHABLE, TIMED_OUT, CERT_REFUSED, AUTH_FAILED):
            self.shell_id = None  # the connection is not to be trusted for another command
        return error

    def _terminate(self, command_id: str) -> None:
        try:
            self.protocol.operation_timeout_sec = 2
            self.protocol.transport.read_timeout_sec = 3
            self.protocol.cleanup_command(self.shell_id, command_id)
        except Exception:  # noqa: BLE001 — best effort; the shell is abandoned anyway
            self.shell_id = None

    def _cleanup(self, command_id: str) -> None:
        try:
            self.protocol.cleanup_command(self.shell_id, command_id)
        except Exception:  # noqa: BLE001 — the result is already in hand
            pass

    def exec_stream(self, command: str, *, stdin: bytes | None = None, idle_timeout: float,
                    deadline: float | None = None) -> Any:
        raise TransportError(PROTOCOL, f"{self.endpoint.address}: streamed commands are not supported over "
                                       "WinRM (files are fetched in chunks)")

    def put(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        raise TransportError(PROTOCOL, f"{self.endpoint.address}: put is not supported over WinRM")

    def get(self, path: str, *, max_bytes: int) -> bytes:
        raise TransportError(PROTOCOL, f"{self.endpoint.address}: get is not supported over WinRM")

    @property
    def alive(self) -> bool:
        return self.shell_id is not None

    def close(self) -> None:
        shell, self.shell_id = self.shell_id, None
        if shell is None:
            return
        try:
            self.protocol.operation_timeout_sec = 2
            self.protocol.transport.read_timeout_sec = 3
            self.protocol.close_shell(shell)
        except Exception:  # noqa: BLE001 — closing is best effort
            try:
                self.protocol.transport.close_session()
            except Exception:  # noqa: BLE001
                pass

    def __enter__(self) -> WinrmConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def probe_login(endpoint: WinrmEndpoint, password: str, *, timeouts: Timeouts = Timeouts(connect=5, auth=10),
                command: bool = True) -> bool:
    """True if a fresh WinRM login with exactly this password works (and runs ``whoami``).

    Raises :class:`TransportError` for anything but an authentication verdict, so an unreachable
    host or a refused certificate is never taken for "the old password no longer works".
    """
    try:
        conn = WinrmConnection.open(endpoint, password=password, timeouts=timeouts)
    except TransportError as exc:
        if exc.kind == AUTH_FAILED:
            return False
        raise
    try:
        if command:
            result = conn.run_cmd("whoami", timeout=15)
            return result.ok and result.text.strip().lower().endswith("\\" + endpoint.user.lower().split("\\")[-1])
        return True
    finally:
        conn.close()


def endpoint_for(host: Any, access: Any, *, user: str | None = None) -> WinrmEndpoint:
    """The WinRM endpoint of an inventory ``host`` with the MSP's ``responder.windows`` settings."""
    from ir_toolkit.secrets.references import expand_path

    if access is None:
        raise TransportError(PROTOCOL, f"{host.name}: Windows host but the inventory has no "
                                       "msp.responder.windows (user, password reference, ca_file)")
    ca = str(expand_path(access.ca_file)) if access.ca_file else None
    return WinrmEndpoint(host.address, int(host.port or (5986 if access.scheme == "https" else 5985)),
                         user or host.user or access.user, scheme=access.scheme, auth=access.auth,
                         ca_file=ca, validate=access.validate_certificate, name=host.name)


def responder_password(access: Any) -> str:
    from ir_toolkit.secrets.references import parse_ref, resolve  # registers the value for redaction

    try:
        value = resolve(parse_ref(access.password))
    except Exception as exc:  # noqa: BLE001 — one line, never the value
        raise TransportError(AUTH_FAILED, f"cannot read the Windows responder password ({access.password}): "
                                          f"{str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}") from None
    return value


def _open_winrm(pool: ConnectionPool, host: Host, deadline: float) -> Connection:
    """The pool's ``winrm`` factory: the MSP's ``responder.windows`` account, transient failures retried."""
    access = pool.inventory.msp.responder.windows
    endpoint = endpoint_for(host, access)
    password = responder_password(access)
    return pool.retrying(host, deadline, lambda: WinrmConnection.open(endpoint, password=password,
                                                                       timeouts=pool.timeouts, deadline=deadline))


def _register() -> None:
    from ir_toolkit.transports.pool import register_transport

    register_transport("winrm", _open_winrm)


_register()


def ps_quote(text: str) -> str:
    """A PowerShell single-quoted string literal (no expansion; ``'`` doubled)."""
    if any(c in text for c in "\r\n\x00"):
        raise ValueError("a PowerShell literal may not contain line breaks or NUL")
    return "'" + text.replace("'", "''").replace("\u2018", "''").replace("\u2019", "''") + "'"
