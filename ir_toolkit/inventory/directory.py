"""A tenant's Active Directory domain: ``tenants[].directory`` in the inventory (docs/active-directory.md).

Secrets are references (``bind.password: file:...``), never inline. LDAPS with a pinned CA is the
only transport unless ``allow_insecure_transport: true`` names StartTLS or plain LDAP explicitly.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from ir_toolkit.secrets.references import is_reference

#: The privileged groups guarded by default (CISA AA20-245A / Microsoft's protected groups).
DEFAULT_GUARDED_GROUPS = (
    "Domain Admins", "Enterprise Admins", "Schema Admins", "Administrators", "Account Operators",
    "Backup Operators", "Server Operators", "Print Operators", "Group Policy Creator Owners", "DnsAdmins",
)

_DNS = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$")
_NETBIOS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,14}$")
# sAMAccountName: 1-20 characters, none of "/\[]:;|=,+*?<>@ and no control characters
_SAM = re.compile(r"^[^\"/\\\[\]:;|=,+*?<>@\x00-\x1f]{1,20}$")
_GROUP = re.compile(r"^[^\"/\\\[\]:;|=,+*?<>@\x00-\x1f]{1,64}$")


def _dns(value: str) -> str:
    if not _DNS.match(value):
        raise ValueError(f"{value!r} is not a DNS domain name (e.g. corp.example.com)")
    return value.lower()


def _netbios(value: str) -> str:
    if not _NETBIOS.match(value):
        raise ValueError(f"{value!r} is not a NetBIOS domain name (1-15 letters, digits, '-')")
    return value.upper()


def _sam(value: str) -> str:
    if not _SAM.match(value) or value.strip() != value or value.endswith("."):
        raise ValueError(f"{value!r} is not a valid sAMAccountName")
    return value


def _group(value: str) -> str:
    if not _GROUP.match(value) or value.strip() != value:
        raise ValueError(f"{value!r} is not a valid group name")
    return value


def _ref(value: str) -> str:
    if not is_reference(value):
        raise ValueError("plaintext secret where a reference belongs: use env:NAME or file:PATH")
    return value


DnsName = Annotated[str, AfterValidator(_dns)]
NetbiosName = Annotated[str, AfterValidator(_netbios)]
SamName = Annotated[str, AfterValidator(_sam)]
GroupName = Annotated[str, AfterValidator(_group)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class DomainController(_Model):
    """One DC: by inventory host name (``host:``) or by ``address`` (+ its DNS ``name``)."""

    host: str | None = None
    address: str | None = None
    name: DnsName | None = None

    @model_validator(mode="after")
    def _one(self) -> DomainController:
        if bool(self.host) == bool(self.address):
            raise ValueError("give exactly one of host (an inventory host) or address")
        if self.address is not None:
            import ipaddress

            try:
                object.__setattr__(self, "address", str(ipaddress.ip_address(self.address)))
            except ValueError:
                raise ValueError(f"invalid IP address {self.address!r}") from None
        return self


class BindCredential(_Model):
    """The identity irkit binds with: a user principal and a password *reference*."""

    user: str = Field(min_length=1, max_length=256)
    password: Annotated[str, AfterValidator(_ref)]


class Directory(_Model):
    domain: DnsName
    netbios: NetbiosName
    domain_controllers: list[DomainController] = Field(min_length=1)
    transport: Literal["ldaps", "starttls", "plain"] = "ldaps"
    #: StartTLS or plain LDAP only when this says so (a written decision, shown in the plan)
    allow_insecure_transport: bool = False
    port: int | None = Field(default=None, ge=1, le=65535)
    #: the CA certificate(s) that sign the DCs' LDAPS certificates (PEM file)
    ca_file: str | None = None
    bind: BindCredential
    #: the MSP's accounts in this domain, by sAMAccountName
    msp_accounts: list[SamName] = []
    #: "every member of group X" is also an MSP account
    msp_account_groups: list[GroupName] = []
    #: what happens to the MSP's accounts: a unique escrowed password, or disabled (and reset)
    msp_account_action: Literal["rotate", "disable"] = "rotate"
    #: reference to the leaked shared password: the proof that it no longer binds or gets a TGT
    leaked_password: Annotated[str, AfterValidator(_ref)] | None = None
    guarded_groups: list[GroupName] = list(DEFAULT_GUARDED_GROUPS)
    #: expected members of the guarded groups (sAMAccountName): never reported, never disabled
    allow_members: list[SamName] = ["Administrator"]
    #: pause between the two krbtgt resets (replication; CISA CM0050 says hours in production)
    replication_wait_seconds: float = Field(default=600, ge=0, le=7 * 86400)
    connect_timeout: float = Field(default=10, gt=0, le=300)
    operation_timeout: float = Field(default=30, gt=0, le=3600)

    @model_validator(mode="after")
    def _checks(self) -> Directory:
        if self.transport != "ldaps" and not self.allow_insecure_transport:
            raise ValueError(f"transport {self.transport} sends the bind password without LDAPS: refused "
                             "unless allow_insecure_transport: true is set")
        if self.transport != "plain" and not self.ca_file:
            raise ValueError("ca_file (the CA that signs the domain controllers' certificates) is required "
                             "for LDAPS/StartTLS")
        if not self.msp_accounts and not self.msp_account_groups:
            raise ValueError("name the MSP's accounts: msp_accounts and/or msp_account_groups")
        return self

    @property
    def realm(self) -> str:
        return self.domain.upper()

    @property
    def base_dn(self) -> str:
        return ",".join(f"DC={label}" for label in self.domain.split("."))

    @property
    def effective_port(self) -> int:
        return self.port or (636 if self.transport == "ldaps" else 389)
