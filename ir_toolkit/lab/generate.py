"""``irkit lab generate``: write a larger inventory (N tenants x M hosts) for scale tests.

Layout inside ``--base`` (default 198.18.0.0/16): the controller takes the
first address; tenant *i* (1-based) gets the *i*-th subnet of the smallest size
that holds M hosts (a /24 for up to 245 hosts, else a /23 ...); hosts take
that subnet's addresses from .10 on. The inventory
references the MSP's lab files (``${IRKIT_HOME}/lab/<msp>/...``), like
``inventories/acme.yml``.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import yaml

from ir_toolkit.errors import InputError
from ir_toolkit.inventory.model import _SLUG
from ir_toolkit.lab.layout import LAB_RANGE, MSP_ACCOUNT


def _tenant_prefix(hosts_per_tenant: int) -> int:
    for prefix in range(24, 7, -1):
        if 2 ** (32 - prefix) - 2 - 9 >= hosts_per_tenant:
            return prefix
    raise InputError(f"--hosts-per-tenant {hosts_per_tenant} is too large")


def generate_inventory(*, msp: str, tenants: int, hosts_per_tenant: int,
                       base: str = "198.18.0.0/16", directories: int = 0,
                       windows_per_tenant: int = 0) -> dict:
    """The inventory as plain data (validated by the caller with ``load_inventory``)."""
    if not _SLUG.match(msp):
        raise InputError(f"--msp {msp!r} is not a valid name (lowercase letters, digits, '-', '_')")
    if tenants < 1 or hosts_per_tenant < 1:
        raise InputError("--tenants and --hosts-per-tenant must be at least 1")
    try:
        net = ipaddress.ip_network(base, strict=False)
    except ValueError:
        raise InputError(f"--base {base!r} is not a network (e.g. 198.18.0.0/16)") from None
    if not isinstance(net, ipaddress.IPv4Network) or not net.subnet_of(LAB_RANGE):
        raise InputError(f"--base {base} must lie inside {LAB_RANGE} (the lab's address range)")
    prefix = _tenant_prefix(hosts_per_tenant + windows_per_tenant)
    if prefix < net.prefixlen:
        raise InputError(f"--base {base} is too small for {hosts_per_tenant} hosts per tenant")
    subnets = list(net.subnets(new_prefix=prefix)) if prefix > net.prefixlen else [net]
    if len(subnets) < tenants + 1:
        raise InputError(f"--base {base} holds at most {len(subnets) - 1} tenants of "
                         f"{hosts_per_tenant} hosts (/{prefix} each)")
    controller = str(net.network_address + 1)
    width = max(3, len(str(tenants)))
    hwidth = max(3, len(str(hosts_per_tenant)))
    lab = f"${{IRKIT_HOME}}/lab/{msp}"
    tenant_list = []
    for i in range(1, tenants + 1):
        subnet = subnets[i]
        first = 10
        tname = f"t{i:0{width}d}"
        hosts = [
            {"name": f"{tname}-h{j:0{hwidth}d}", "address": str(subnet.network_address + first + j - 1),
             "groups": ["scale"],
             # `irkit reimage` rebuilds lab hosts through the lab provider (system_id: the lab's MSP)
             "bmc": {"provider": "lab", "system_id": msp}}
            for j in range(1, hosts_per_tenant + 1)
        ]
        # Windows hosts (WinRS endpoints in the lab) after the Linux ones
        hosts += [
            {"name": f"{tname}-w{j:0{hwidth}d}", "address": str(subnet.network_address + first + hosts_per_tenant + j - 1),
             "os": "windows", "groups": ["scale"], "bmc": {"provider": "lab", "system_id": msp}}
            for j in range(1, windows_per_tenant + 1)
        ]
        tenant_list.append({
            "name": tname,
            "display_name": f"Tenant {i}",
            "subnet": str(subnet),
            "contacts": [{"name": f"Approver {i}", "email": f"approver@{tname}.example", "approver": True,
                          # the lab writes this key pair when it comes up (approvers/<slug>.key + .vkey)
                          "approval_key": f"file:{lab}/approvers/approver-{i}.vkey"}],
            "hosts": hosts,
        })
        if i <= directories:  # a Samba AD DC at .5 of the tenant's subnet (docs/active-directory.md)
            tenant_list[-1]["directory"] = {
                "domain": f"{tname}.lab", "netbios": tname.upper(),
                "domain_controllers": [{"address": str(subnet.network_address + 5), "name": f"dc01.{tname}.lab"}],
                "ca_file": f"{lab}/ca/ca.pem",
                "bind": {"user": "Administrator", "password": f"file:{lab}/directories/{tname}/admin_password"},
                "msp_accounts": [f"{msp}-admin", f"{msp}-svc"],
                "leaked_password": f"file:{lab}/msp_shared_password",
                "replication_wait_seconds": 1,
            }
    return {
        "version": 1,
        "msp": {
            "name": msp,
            "display_name": f"{msp} (generated lab inventory)",
            "known_hosts": f"{lab}/known_hosts",
            "shared_credentials": {
                "ssh_keys": [{"name": f"{msp}-msp-shared", "public_key_file": f"{lab}/msp_shared_ed25519.pub"}],
                "accounts": [{"user": MSP_ACCOUNT, "os": "linux", "privileged": True, "action": "rotate"}]
                + ([{"user": "acmeadmin", "os": "windows", "privileged": True, "action": "rotate"},
                    {"user": "msp-support", "os": "windows", "privileged": True, "action": "deprivilege"}]
                   if windows_per_tenant else []),
            },
            "responder": {"user": "root", "key": f"file:{lab}/responder_ed25519",
                          "controller_address": controller,
                          **({"windows": {"user": "irkit-responder",
                                          "password": f"file:{lab}/windows_responder_password",
                                          "ca_file": f"{lab}/winrm_ca.pem"}} if windows_per_tenant else {})},
            "contacts": [{"name": "Lab Commander", "role": "incident commander",
                          "email": "commander@msp.example", "approver": True,
                          "approval_key": f"file:{lab}/approvers/lab-commander.vkey"}],
        },
        "tenants": tenant_list,
    }


def write_inventory(path: Path, data: dict, *, force: bool = False) -> None:
    if path.exists() and not force:
        raise InputError(f"{path} exists; use --force to overwrite it")
    hosts = sum(len(t["hosts"]) for t in data["tenants"])
    header = (f"# Generated by `irkit lab generate`: MSP {data['msp']['name']}, "
              f"{len(data['tenants'])} tenants, {hosts} hosts.\n"
              f"# Bring it up with: irkit lab up --inventory {path}\n")
    text = header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=120)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
