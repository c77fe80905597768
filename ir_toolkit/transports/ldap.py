"""LDAP transport for Active Directory work, over ldap3 (pure Python; see docs/active-directory.md).

* LDAPS with certificate validation against the directory's own CA file (``ca_file``), and the
  server's certificate must name the address (or DNS name) irkit connected to: checked during
  the TLS handshake, *before* any credential is sent. StartTLS / plain LDAP only when the
  inventory explicitly allows them (``allow_insecure_transport``).
* Deadlines: a TCP connect timeout and a receive timeout on every operation, both capped by the
  caller's deadline, so a DC that accepts TCP and then says nothing ends as ``timed_out``.
* The same failure kinds as SSH/WinRM: unreachable, timed_out, auth_failed, certificate_refused,
  command_failed (the DC refused an operation; its message is cut to one printable line — a DC
  under the intruder's control writes whatever it likes there).
* Passwords are written only as ``unicodePwd`` over an encrypted connection (AD refuses it on
  plain LDAP anyway); never logged, never in argv.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import ldap3
from ldap3.core import exceptions as lx

from ir_toolkit.transports.base import (
    AUTH_FAILED,
    PROTOCOL,
    TIMED_OUT,
    UNREACHABLE,
    CommandResult,
    Endpoint,
    TransportError,
)

CERTIFICATE_REFUSED = "certificate_refused"
COMMAND_FAILED = "command_failed"
#: AD's error for a password the domain's policy refuses (length, complexity, history)
CONSTRAINT_VIOLATION = "constraintViolation"
UF_ACCOUNTDISABLE = 0x2
#: at most this many entries per search (guarded groups and MSP accounts are small; a DC that says otherwise lies)
MAX_ENTRIES = 100_000
MATCHING_RULE_IN_CHAIN = "1.2.840.113556.1.4.1941"


class DirectoryError(TransportError):
    """The DC refused an operation (``kind`` command_failed); ``code`` is LDAP's result name."""

    def __init__(self, message: str, *, code: str = "", kind: str = COMMAND_FAILED) -> None:
        super().__init__(kind, message)
        self.code = code


def one_line(text: Any, limit: int = 200) -> str:
    """Hostile text from a DC, made safe for one log line."""
    s = "".join(ch if ch.isprintable() else "?" for ch in str(text))
    return s[:limit] + ("..." if len(s) > limit else "")


def escape_filter(value: str) -> str:
    """RFC 4515 escaping of a value inside an LDAP filter."""
    out = []
    for ch in value:
        if ch in "*()\\\0" or ord(ch) < 0x20:
            out.append("\\%02x" % ord(ch))
        else:
            out.append(ch)
    return "".join(out)


@dataclass(frozen=True)
class LdapEndpoint:
    """One domain controller: where, how, and which CA signs its certificate."""

    address: str
    port: int = 636
    transport: str = "ldaps"  # ldaps | starttls | plain
    ca_file: str | None = None
    #: the DC's DNS name (also accepted in its certificate); connections go to ``address``
    server_name: str | None = None
    label: str = ""
    connect_timeout: float = 10.0
    operation_timeout: float = 30.0

    @property
    def where(self) -> str:
        return f"{self.label or self.address} ({self.address}:{self.port})"


def _tls(endpoint: LdapEndpoint) -> ldap3.Tls | None:
    if endpoint.transport == "plain":
        return None
    if not endpoint.ca_file:
        raise TransportError(CERTIFICATE_REFUSED, f"{endpoint.where}: no CA file to validate the DC's certificate")
    return ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=endpoint.ca_file, version=ssl.PROTOCOL_TLS_CLIENT,
                     valid_names=[endpoint.server_name] if endpoint.server_name else None)


def _classify(endpoint: LdapEndpoint, exc: BaseException) -> TransportError:
    text = str(exc)
    low = text.lower()
    if isinstance(exc, lx.LDAPCertificateError) or "certificate" in low or "hostname" in low:
        return TransportError(CERTIFICATE_REFUSED,
                              f"{endpoint.where}: certificate refused before binding ({one_line(text, 160)})")
    if isinstance(exc, (socket.timeout, TimeoutError)) or "timed out" in low or "timeout" in low:
        return TransportError(TIMED_OUT, f"{endpoint.where}: no answer in time")
    if "refused" in low or "unreachable" in low or "no route" in low or isinstance(exc, lx.LDAPSocketOpenError):
        return TransportError(UNREACHABLE, f"{endpoint.where}: unreachable ({one_line(text, 120)})")
    if isinstance(exc, (lx.LDAPSocketReceiveError, lx.LDAPSessionTerminatedByServerError, lx.LDAPSocketSendError)):
        return TransportError(TIMED_OUT if "timed" in low else UNREACHABLE,
                              f"{endpoint.where}: connection lost ({one_line(text, 120)})")
    return TransportError(PROTOCOL, f"{endpoint.where}: {type(exc).__name__}: {one_line(text, 160)}")


class LdapConnection:
    """One bound connection to a DC. Open with :meth:`open`; every method honours ``deadline``.

    Implements :class:`ir_toolkit.transports.base.Connection` for directory work: ``run``,
    ``exec_stream``, ``put`` and ``get`` are not LDAP operations and raise ``PROTOCOL``; directory
    actions use the typed methods (``search``, ``modify``, ``set_password``, ``remove_member``).
    ``host_key_fingerprint`` is the SHA-256 of the DC's certificate (validated against the CA).
    """

    kind: ClassVar[str] = "ldap"

    def __init__(self, endpoint: LdapEndpoint, conn: ldap3.Connection, deadline: float | None,
                 user: str = "") -> None:
        self.ldap_endpoint = endpoint
        self._conn = conn
        self.deadline = deadline
        self.endpoint = Endpoint(endpoint.address, endpoint.port, user, set(), endpoint.label)
        self.host_key_fingerprint = ""
        try:
            der = conn.socket.getpeercert(binary_form=True) if conn.socket is not None else None
            if der:
                digest = base64.b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")
                self.host_key_fingerprint = "SHA256:" + digest
        except (AttributeError, OSError, ValueError):
            pass

    # ------------------------------------------------------------------ Connection protocol (not LDAP)
    def run(self, command: str, *, stdin: bytes | None = None, timeout: float | None = None,
            deadline: float | None = None) -> CommandResult:
        raise TransportError(PROTOCOL, f"{self.ldap_endpoint.where}: an LDAP connection runs no commands")

    def exec_stream(self, command: str, *, stdin: bytes | None = None, idle_timeout: float,
                    deadline: float | None = None) -> Any:
        raise TransportError(PROTOCOL, f"{self.ldap_endpoint.where}: an LDAP connection streams no commands")

    def put(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        raise TransportError(PROTOCOL, f"{self.ldap_endpoint.where}: an LDAP connection writes no files")

    def get(self, path: str, *, max_bytes: int) -> bytes:
        raise TransportError(PROTOCOL, f"{self.ldap_endpoint.where}: an LDAP connection reads no files")

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, endpoint: LdapEndpoint, user: str, password: str, *, deadline: float | None = None) -> LdapConnection:
        """Connect, validate the certificate, bind. Raises :class:`TransportError`."""
        conn = cls._connect(endpoint, user, password, deadline)
        try:
            ok = conn.bind()
        except (lx.LDAPException, OSError) as exc:
            cls._abort(conn)
            raise _classify(endpoint, exc) from None
        if not ok:
            desc = conn.result.get("description", "")
            cls._abort(conn)
            if desc == "invalidCredentials":
                raise TransportError(AUTH_FAILED, f"{endpoint.where}: bind as {one_line(user, 80)} refused")
            raise TransportError(PROTOCOL, f"{endpoint.where}: bind failed: {one_line(desc, 80)}")
        return cls(endpoint, conn, deadline, user)

    @staticmethod
    def _timeout(endpoint: LdapEndpoint, deadline: float | None, which: float) -> float:
        if deadline is None:
            return which
        left = deadline - time.monotonic()
        if left <= 0:
            raise TransportError(TIMED_OUT, f"{endpoint.where}: deadline reached")
        return max(0.5, min(which, left))

    @classmethod
    def _connect(cls, endpoint: LdapEndpoint, user: str, password: str, deadline: float | None) -> ldap3.Connection:
        tls = _tls(endpoint)
        server = ldap3.Server(endpoint.address, port=endpoint.port, use_ssl=endpoint.transport == "ldaps", tls=tls,
                              get_info=ldap3.NONE, connect_timeout=cls._timeout(endpoint, deadline,
                                                                                endpoint.connect_timeout))
        conn = ldap3.Connection(server, user=user, password=password, authentication=ldap3.SIMPLE,
                                auto_bind=ldap3.AUTO_BIND_NONE, raise_exceptions=False, read_only=False,
                                # ldap3 packs it into SO_RCVTIMEO: whole seconds
                                receive_timeout=max(1, int(cls._timeout(endpoint, deadline,
                                                                        endpoint.operation_timeout))),
                                auto_referrals=False, return_empty_attributes=False)
        try:
            conn.open()
            if endpoint.transport == "starttls" and not conn.start_tls():
                raise TransportError(CERTIFICATE_REFUSED, f"{endpoint.where}: StartTLS failed")
        except TransportError:
            cls._abort(conn)
            raise
        except (lx.LDAPException, OSError, ssl.SSLError) as exc:
            cls._abort(conn)
            raise _classify(endpoint, exc) from None
        return conn

    @staticmethod
    def _abort(conn: ldap3.Connection) -> None:
        try:
            conn.unbind()
        except Exception:  # noqa: BLE001 - closing a broken connection
            pass

    @classmethod
    def try_bind(cls, endpoint: LdapEndpoint, user: str, password: str, *, deadline: float | None = None) -> bool:
        """A fresh connection binds as ``user`` with ``password``: True / False (refused).
        Transport failures (unreachable, timeout, certificate) raise: they prove nothing."""
        try:
            conn = cls.open(endpoint, user, password, deadline=deadline)
        except TransportError as exc:
            if exc.kind == AUTH_FAILED:
                return False
            raise
        conn.close()
        return True

    # ------------------------------------------------------------------ operations
    def _op(self, what: str, func: Any) -> Any:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise TransportError(TIMED_OUT, f"{self.ldap_endpoint.where}: step deadline reached before {what}")
        try:
            return func()
        except (lx.LDAPException, OSError, ssl.SSLError) as exc:
            raise _classify(self.ldap_endpoint, exc) from None

    def _check(self, ok: bool, what: str) -> None:
        if ok:
            return
        result = self._conn.result or {}
        code = str(result.get("description", "")) or "error"
        raise DirectoryError(f"{self.ldap_endpoint.where}: {what} refused: {one_line(code, 40)}: "
                             f"{one_line(result.get('message', ''), 200)}", code=code)

    def search(self, base: str, ldap_filter: str, attributes: list[str], *,
               scope: str = "subtree") -> list[tuple[str, dict[str, list[Any]]]]:
        """Entries as (dn, {attribute: [values]}) with raw-ish values (ldap3's formatting)."""
        scopes = {"subtree": ldap3.SUBTREE, "base": ldap3.BASE, "level": ldap3.LEVEL}
        out: list[tuple[str, dict[str, list[Any]]]] = []

        def run() -> None:
            cookie = None
            while True:
                ok = self._conn.search(base, ldap_filter, search_scope=scopes[scope], attributes=attributes,
                                       paged_size=500, paged_cookie=cookie)
                if not ok and self._conn.result.get("description") not in ("success", "noSuchObject"):
                    self._check(False, f"search {one_line(ldap_filter, 80)}")
                for entry in self._conn.response or []:
                    if entry.get("type") != "searchResEntry":
                        continue
                    if len(out) >= MAX_ENTRIES:  # a hostile DC may answer without end
                        raise DirectoryError(f"{self.ldap_endpoint.where}: search {one_line(ldap_filter, 60)} "
                                             f"returned more than {MAX_ENTRIES} entries", code="sizeLimit")
                    attrs = {k: (v if isinstance(v, list) else [v]) for k, v in entry.get("attributes", {}).items()}
                    out.append((entry["dn"], attrs))
                controls = self._conn.result.get("controls", {})
                cookie = controls.get("1.2.840.113556.1.4.319", {}).get("value", {}).get("cookie")
                if not cookie:
                    return

        self._op("search", run)
        return out

    def modify(self, dn: str, changes: dict[str, list[tuple[str, list[Any]]]], what: str = "modify") -> None:
        self._check(self._op(what, lambda: self._conn.modify(dn, changes)), what)

    def set_password(self, dn: str, password: str) -> None:
        """Administrative reset of ``dn``'s password (``unicodePwd``, over TLS only)."""
        if self.ldap_endpoint.transport == "plain":
            raise DirectoryError(f"{self.ldap_endpoint.where}: refusing to send a password over plain LDAP",
                                 code="insecure")
        value = f'"{password}"'.encode("utf-16-le")
        self.modify(dn, {"unicodePwd": [(ldap3.MODIFY_REPLACE, [value])]}, "password reset")

    def remove_member(self, group_dn: str, member_dn: str) -> None:
        self.modify(group_dn, {"member": [(ldap3.MODIFY_DELETE, [member_dn])]}, "group member removal")

    def close(self) -> None:
        self._abort(self._conn)

    @property
    def alive(self) -> bool:
        return bool(self._conn.bound and not self._conn.closed)


# --------------------------------------------------------------------------- the pool's factory


def directory_endpoints(directory: Any, hosts: dict[str, Any]) -> list[LdapEndpoint]:
    """The DCs of an inventory ``Directory`` in order (``hosts``: inventory hosts of its tenant by name)."""
    out = []
    for dc in directory.domain_controllers:
        address = dc.address or hosts[dc.host].address
        name = dc.name or (dc.host if dc.host and "." in dc.host else None)
        ca = None
        if directory.ca_file:
            from ir_toolkit.secrets.references import expand_path

            ca = str(expand_path(directory.ca_file))
        out.append(LdapEndpoint(address, directory.effective_port, directory.transport, ca, name,
                                label=f"{directory.domain} DC {name or address}",
                                connect_timeout=directory.connect_timeout,
                                operation_timeout=directory.operation_timeout))
    return out


def bind_principal(directory: Any) -> str:
    user = directory.bind.user
    return user if ("@" in user or "\\" in user or "=" in user) else f"{user}@{directory.domain}"


def open_directory(directory: Any, hosts: dict[str, Any], deadline: float) -> LdapConnection:
    """Bind to the first DC of ``directory`` that answers (unreachable/timed-out DCs are skipped)."""
    from ir_toolkit.secrets.references import parse_ref, resolve

    try:
        password = resolve(parse_ref(directory.bind.password))
    except Exception as exc:  # noqa: BLE001 - InputError: the reference cannot be read
        raise TransportError(AUTH_FAILED, f"{directory.domain}: bind credential: {exc}") from None
    last: TransportError | None = None
    for endpoint in directory_endpoints(directory, hosts):
        try:
            return LdapConnection.open(endpoint, bind_principal(directory), password, deadline=deadline)
        except TransportError as exc:
            last = exc
            if exc.kind not in (UNREACHABLE, TIMED_OUT) or time.monotonic() >= deadline:
                raise
    assert last is not None
    raise last


def _factory(pool: Any, host: Any, deadline: float) -> LdapConnection:
    tenant = pool.inventory.tenant(host.tenant)
    if tenant.directory is None:
        raise TransportError(PROTOCOL, f"{host.name}: tenant {host.tenant} has no directory")
    return open_directory(tenant.directory, {h.name: h for h in tenant.hosts}, deadline)


def _register() -> None:
    from ir_toolkit.transports.pool import register_transport

    register_transport("ldap", _factory)


_register()
