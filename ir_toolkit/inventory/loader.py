"""Load and validate inventories, with one-line errors that name file, line and field."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ir_toolkit.errors import FileInputError, InputError
from ir_toolkit.inventory.model import Inventory
from ir_toolkit.redaction import is_secret_key
from ir_toolkit.secrets.references import is_reference
from ir_toolkit.yamlfile import LDict, LList, field_name, line_of, load, validate

INVENTORY_ENV = "IRKIT_INVENTORY"
INVENTORY_DIR_ENV = "IRKIT_INVENTORY_DIR"
_REF_FIELDS = {"key", "password"}  # fields that must hold references
_PLAINTEXT = "plaintext secret where a reference belongs (use env:NAME, file:PATH or escrow:...)"


def resolve_inventory_path(msp: str | None, inventory: str | Path | None) -> Path:
    """``--inventory`` wins, then ``$IRKIT_INVENTORY``, then ``inventories/<msp>.yml``."""
    if inventory:
        return Path(inventory)
    if os.environ.get(INVENTORY_ENV):
        return Path(os.environ[INVENTORY_ENV])
    if msp:
        base = Path(os.environ.get(INVENTORY_DIR_ENV, "inventories"))
        return base / f"{msp}.yml"
    raise InputError("name the MSP with --msp NAME or an inventory file with --inventory PATH")


def load_inventory(path: str | Path, *, msp: str | None = None) -> Inventory:
    """Read, check and return the inventory at ``path``."""
    path = Path(path)
    data = load(path, what="inventory")
    if not isinstance(data, LDict):
        raise FileInputError(str(path), getattr(data, "line", 1), None, "an inventory is a mapping with msp: and tenants:")
    _check_plaintext_secrets(data, (), path)
    if "hosts" in data:
        raise FileInputError(
            str(path), data.key_lines["hosts"], "hosts",
            "host in no tenant: list every host under tenants[].hosts",
        )
    inv: Inventory = validate(Inventory, data, path)
    _check_unique(inv, data, path)
    if msp is not None and inv.msp.name != msp:
        raise FileInputError(str(path), line_of(data, ("msp", "name")), "msp.name",
                             f"inventory is for MSP {inv.msp.name!r}, not {msp!r}")
    return inv


def _check_plaintext_secrets(node: Any, loc: tuple[Any, ...], path: Path) -> None:
    """Refuse secret values written inline, before anything else could echo them."""
    if isinstance(node, LDict):
        items = [(key, value, node.key_lines[key]) for key, value in node.items()]
    elif isinstance(node, LList):
        items = [(i, value, node.item_lines[i]) for i, value in enumerate(node)]
    else:
        return
    for key, value, line in items:
        sub = (*loc, key)
        if isinstance(value, str):
            text = value.strip()
            named_secret = isinstance(key, str) and (is_secret_key(key) or key in _REF_FIELDS)
            if "PRIVATE KEY-----" in text or (named_secret and text and not is_reference(text)):
                raise FileInputError(str(path), line, field_name(sub), _PLAINTEXT)
        else:
            _check_plaintext_secrets(value, sub, path)


def _check_unique(inv: Inventory, data: Any, path: Path) -> None:
    seen_tenants: set[str] = set()
    names: dict[str, str] = {}
    addresses: dict[tuple[str, int], str] = {}
    for ti, tenant in enumerate(inv.tenants):
        if tenant.name in seen_tenants:
            _fail(data, path, ("tenants", ti, "name"), f"duplicate tenant name {tenant.name!r}")
        seen_tenants.add(tenant.name)
        for hi, host in enumerate(tenant.hosts):
            if host.name in names:
                _fail(data, path, ("tenants", ti, "hosts", hi, "name"),
                      f"duplicate host name {host.name!r} (also in tenant {names[host.name]!r})")
            names[host.name] = tenant.name
            key = (host.address, int(host.port or 0))
            if key in addresses:
                _fail(data, path, ("tenants", ti, "hosts", hi, "address"),
                      f"duplicate address {host.address} (also host {addresses[key]!r})")
            addresses[key] = host.name
        if tenant.directory is not None:
            if tenant.directory.domain in names:
                _fail(data, path, ("tenants", ti, "directory", "domain"),
                      f"domain {tenant.directory.domain!r} is also a host's or another tenant's domain name")
            names[tenant.directory.domain] = tenant.name
            own = {h.name for h in tenant.hosts}
            for di, dc in enumerate(tenant.directory.domain_controllers):
                if dc.host is not None and dc.host not in own:
                    _fail(data, path, ("tenants", ti, "directory", "domain_controllers", di, "host"),
                          f"no host {dc.host!r} in tenant {tenant.name!r}")


def _fail(data: Any, path: Path, loc: tuple[Any, ...], message: str) -> None:
    raise FileInputError(str(path), line_of(data, loc), field_name(loc), message)
