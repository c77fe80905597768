"""The MSP inventory: an MSP has tenants (client organisations), a tenant has hosts.

Secrets never appear in an inventory; secret fields hold references
(``env:NAME``, ``file:PATH``, ``escrow:TENANT/HOST/ACCOUNT``). See docs/inventory.md.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from ir_toolkit.inventory.directory import Directory
from ir_toolkit.secrets.references import is_reference

_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$")
_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?$")
_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")


def _slug(value: str) -> str:
    if not _SLUG.match(value):
        raise ValueError(f"{value!r} is not a valid name (lowercase letters, digits, '-', '_')")
    return value


def _hostname(value: str) -> str:
    if not _HOSTNAME.match(value):
        raise ValueError(f"{value!r} is not a valid host name")
    return value


def _username(value: str) -> str:
    if not _USER.match(value):
        raise ValueError(f"{value!r} is not a valid account name")
    return value


def _address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise ValueError(f"invalid IP address {value!r}") from None


def _network(value: str) -> str:
    try:
        return str(ipaddress.ip_network(str(value), strict=False))
    except ValueError:
        raise ValueError(f"invalid address or network {value!r}") from None


def _fingerprint(value: str) -> str:
    if not _FINGERPRINT.match(value):
        raise ValueError(f"{value!r} is not an OpenSSH SHA256 fingerprint (SHA256:<43 base64 chars>)")
    return value


def _secret_ref(value: str) -> str:
    if not is_reference(value):
        raise ValueError(
            "plaintext secret where a reference belongs: use env:NAME, file:PATH or "
            "escrow:TENANT/HOST/ACCOUNT"
        )
    return value


Slug = Annotated[str, AfterValidator(_slug)]
HostName = Annotated[str, AfterValidator(_hostname)]
UserName = Annotated[str, AfterValidator(_username)]
Address = Annotated[str, AfterValidator(_address)]
Network = Annotated[str, AfterValidator(_network)]
Fingerprint = Annotated[str, AfterValidator(_fingerprint)]
SecretRefStr = Annotated[str, AfterValidator(_secret_ref)]
OsName = Literal["linux", "windows"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def _approval_key(value: str | None) -> str | None:
    """A verifier key string (``name+keyid+base64``) or ``file:PATH`` of a file holding one."""
    if value is None or value.startswith("file:"):
        return value
    from ir_toolkit.tlog.note import NoteError, parse_vkey

    try:
        verifier = parse_vkey(value)
    except NoteError as exc:
        raise ValueError(f"approval_key is not a verifier key string or file:PATH ({exc})") from None
    if verifier.is_cosigner:
        raise ValueError("approval_key is a witness cosigning key, not a signing key")
    return value


class Contact(_Model):
    name: str
    email: str | None = None
    phone: str | None = None
    role: str | None = None
    approver: bool = False
    approval_key: Annotated[str | None, AfterValidator(_approval_key)] = Field(
        default=None, description="verifier key string (or file:PATH of one) that checks this approver's "
                                  "signatures; required for approvers")

    @model_validator(mode="after")
    def _approver_needs_key(self) -> Contact:
        if self.approver and not self.approval_key:
            raise ValueError(f"approver {self.name!r} has no approval_key: pin the verifier key that checks "
                             "their signed approvals (name+keyid+key, or file:PATH)")
        return self


class SharedSshKey(_Model):
    """An SSH public key the MSP shared across clients: named by fingerprint or public key."""

    name: str | None = None
    fingerprint: Fingerprint | None = None
    public_key: str | None = None
    public_key_file: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SharedSshKey:
        given = [f for f in ("fingerprint", "public_key", "public_key_file") if getattr(self, f)]
        if len(given) != 1:
            raise ValueError("give exactly one of fingerprint, public_key, public_key_file")
        if self.public_key and "PRIVATE KEY" in self.public_key:
            raise ValueError("plaintext secret where a reference belongs: a private key is not a public_key")
        return self


class SharedAccount(_Model):
    """A local account with the same password on many clients' hosts."""

    user: UserName
    os: OsName | None = None
    privileged: bool = True
    #: ``deprivilege`` (Windows): out of Administrators / Remote Desktop Users / Remote Management
    #: Users, sessions logged off, processes ended (the MSP's support accounts)
    action: Literal["rotate", "lock", "deprivilege"] = "rotate"

    @model_validator(mode="after")
    def _deprivilege_is_windows(self) -> SharedAccount:
        if self.action == "deprivilege" and self.os != "windows":
            raise ValueError("action: deprivilege is for Windows accounts (set os: windows)")
        return self


class SharedCredentials(_Model):
    ssh_keys: list[SharedSshKey] = []
    accounts: list[SharedAccount] = []


class WindowsAccess(_Model):
    """How irkit logs in to Windows hosts over WinRM (see docs/windows.md)."""

    user: UserName = "irkit-responder"
    password: SecretRefStr
    auth: Literal["ntlm", "kerberos", "basic"] = "ntlm"
    scheme: Literal["https", "http"] = "https"
    #: CA bundle (PEM) that validates the hosts' WinRM certificates; required for https
    ca_file: str | None = None
    #: certificate validation; turning it off is refused unless ``scheme`` is http (sealed NTLM)
    validate_certificate: bool = True

    @model_validator(mode="after")
    def _checks(self) -> WindowsAccess:
        if self.scheme == "https" and self.validate_certificate and not self.ca_file:
            raise ValueError("windows.ca_file is required for https (certificate validation is on)")
        if self.scheme == "http" and self.auth == "basic":
            raise ValueError("Basic authentication over plain http would send the password readable; "
                             "use https or ntlm/kerberos")
        return self


class Responder(_Model):
    """How irkit itself logs in: a key reference, never a key or password inline."""

    user: UserName = "root"
    key: SecretRefStr
    controller_address: Address
    allow_from: list[Network] = []
    windows: WindowsAccess | None = None


class Policy(_Model):
    rotation_max_age_days: int = Field(default=90, ge=1, le=3650)
    password_length: int = Field(default=24, ge=16, le=128)


class Bmc(_Model):
    """Out-of-band management for reimaging."""

    provider: Literal["redfish", "lab", "command"] = "redfish"
    url: str | None = None
    username: str | None = None
    password: SecretRefStr | None = None
    verify_tls: bool = True
    #: plain ``http://`` BMC URLs send the BMC credentials in cleartext: refused unless this is true
    allow_insecure_http: bool = False
    system_id: str | None = None
    command: list[str] | None = None


class Host(_Model):
    name: HostName
    address: Address
    port: int | None = Field(default=None, ge=1, le=65535)
    os: OsName | Literal["directory"] = "linux"
    #: ``ldap``: the pseudo-host of a tenant's directory (:meth:`Inventory.directory_hosts`)
    transport: Literal["ssh", "winrm", "ldap"] | None = None
    user: UserName | None = None
    host_keys: list[Fingerprint] = []
    groups: list[Slug] = []
    tags: dict[str, str] = {}
    bmc: Bmc | None = None

    _tenant: str = PrivateAttr(default="")

    @model_validator(mode="after")
    def _defaults(self) -> Host:
        if self.transport is None:
            object.__setattr__(self, "transport", "winrm" if self.os == "windows" else "ssh")
        if self.port is None:
            object.__setattr__(self, "port", 5986 if self.transport == "winrm" else 22)
        return self

    @property
    def tenant(self) -> str:
        return self._tenant


def _broker_url(value: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in ("rediss", "redis", "amqps", "amqp", "memory"):
        raise ValueError(f"broker {value!r}: use rediss://HOST:PORT/DB or amqps://HOST/VHOST")
    if "@" in parts.netloc:
        raise ValueError("plaintext secret where a reference belongs: the broker URL must not carry a login "
                         "(give user: and password: env:NAME/file:PATH)")
    return value


def _agent_key(value: str) -> str:
    """The agent's verifier key (``name+keyid+base64``) or ``file:PATH`` of a file holding one."""
    if value.startswith("file:"):
        return value
    from ir_toolkit.tlog.note import NoteError, parse_vkey

    try:
        key = parse_vkey(value)
    except NoteError as exc:
        raise ValueError(f"agent key is not a verifier key string or file:PATH ({exc})") from None
    if key.is_cosigner:
        raise ValueError("agent key is a witness cosigning key, not a signing key")
    return value


class AgentAccess(_Model):
    """A tenant served by an agent inside its network (docs/agents.md): the controller puts the tenant's
    steps on the tenant's queue on this broker and reads its agent's signed results back."""

    #: the tenant's broker (none for an offline tenant)
    broker: Annotated[str, AfterValidator(_broker_url)] | None = None
    #: no path to any broker: steps go by file (irkit plan export / agent run-offline / results import)
    offline: bool = False
    #: the controller's broker login (Redis ACL user / RabbitMQ user) and its password reference
    user: str | None = None
    password: SecretRefStr | None = None
    #: CA bundle that validates the broker's certificate, and the controller's client certificate/key
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    #: the agent's Ed25519 verifier key (``irkit agent keygen`` prints it), or file:PATH of one
    public_key: Annotated[str, AfterValidator(_agent_key)]
    #: the tenant's evidence drop as the controller reads it (results reference files there by SHA-256)
    drop: str
    #: the longest a step may wait for its agent before it is timed out (seconds)
    result_timeout: int = Field(default=3600, ge=5, le=7 * 86400)
    #: Redis: redeliver a step whose agent died after this many seconds (above the longest step)
    visibility_timeout: int | None = Field(default=None, ge=2)
    #: plain redis:// or amqp:// outside loopback is refused unless this is true (a lab without TLS)
    allow_plaintext: bool = False

    @model_validator(mode="after")
    def _tls(self) -> AgentAccess:
        from urllib.parse import urlsplit

        if self.broker is None:
            if not self.offline:
                raise ValueError("agent: give broker: (or offline: true for a tenant served by file)")
            return self
        parts = urlsplit(self.broker)
        loopback = (parts.hostname or "") in ("127.0.0.1", "::1", "localhost")
        if parts.scheme in ("redis", "amqp") and not loopback and not self.allow_plaintext:
            raise ValueError(f"broker {self.broker}: plaintext broker traffic outside loopback; use "
                             f"{parts.scheme}s:// with ca_file (or allow_plaintext: true in a lab)")
        return self


class Tenant(_Model):
    name: Slug
    display_name: str | None = None
    subnet: Network | None = None
    approvals_required: int = Field(default=1, ge=1, le=16)
    contacts: list[Contact] = []
    hosts: list[Host] = []
    #: the tenant's Active Directory domain (docs/active-directory.md)
    directory: Directory | None = None
    #: served by an agent inside the tenant's network (docs/agents.md); None = the controller runs its steps
    agent: AgentAccess | None = None

    @model_validator(mode="after")
    def _bind_hosts(self) -> Tenant:
        for host in self.hosts:
            host._tenant = self.name
        return self


class Msp(_Model):
    name: Slug
    display_name: str | None = None
    known_hosts: str | None = None
    shared_credentials: SharedCredentials = SharedCredentials()
    responder: Responder
    policy: Policy = Policy()
    contacts: list[Contact] = []


class Inventory(_Model):
    version: Literal[1] = 1
    msp: Msp
    tenants: list[Tenant] = Field(min_length=1)

    def hosts(self) -> list[Host]:
        """Every host of every tenant, in inventory order."""
        return [host for tenant in self.tenants for host in tenant.hosts]

    def directory_hosts(self) -> list[Host]:
        """One pseudo-host per tenant directory (name: the domain; transport ``ldap``; os ``directory``):
        what directory steps target. Its address is the first domain controller's."""
        out = []
        for tenant in self.tenants:
            d = tenant.directory
            if d is None:
                continue
            dc = d.domain_controllers[0]
            address = dc.address or next(h.address for h in tenant.hosts if h.name == dc.host)
            host = Host(name=d.domain, address=address, port=d.effective_port, os="directory", transport="ldap")
            host._tenant = tenant.name
            out.append(host)
        return out

    def targets(self) -> list[Host]:
        """Everything a playbook step may target: every host, then every tenant's directory."""
        return self.hosts() + self.directory_hosts()

    def tenant(self, name: str) -> Tenant:
        for tenant in self.tenants:
            if tenant.name == name:
                return tenant
        raise KeyError(name)

    def host(self, name: str) -> Host:
        for host in self.hosts():
            if host.name == name:
                return host
        raise KeyError(name)
