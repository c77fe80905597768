"""``irkit triage`` over many hosts: one SSH connection per host, a bounded thread pool.

The engine (issue 5) will later drive :func:`collect_host` through a ``triage``
action over its own connections; this module is the stand-alone path and the
place that turns an inventory into connections with strictly pinned host keys.
"""

from __future__ import annotations

import dataclasses
import errno
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from ir_toolkit.errors import InputError
from ir_toolkit.inventory.model import Host, Inventory
from ir_toolkit.log import get_logger
from ir_toolkit.transports.pool import ConnectionPool
from ir_toolkit.transports.ssh import Endpoint, SshConnection, TransportError
from ir_toolkit.triage.collector import CollectionResult, HostTarget, collect_host
from ir_toolkit.triage.custody import record_custody, record_failure
from ir_toolkit.triage.schema import Catalog, load_catalog
from ir_toolkit.triage.transfer import TransferError


@dataclass
class TriageOptions:
    profile: str = "ir_triage"
    recipients: list[X25519PublicKey] = field(default_factory=list)
    allow_modifies_state: bool = False
    workers: int = 8
    transfer: str = "tar"
    idle_timeout: float = 120.0


def select_hosts(inventory: Inventory, tenants: tuple[str, ...] = (), hosts: tuple[str, ...] = ()) -> list[Host]:
    """Hosts named by ``--tenant``/``--host`` (all when neither is given); unknown names are errors."""
    known_tenants = {t.name for t in inventory.tenants}
    for name in tenants:
        if name not in known_tenants:
            raise InputError(f"unknown tenant {name!r} (inventory has: {', '.join(sorted(known_tenants))})")
    all_hosts = inventory.hosts()
    known_hosts = {h.name for h in all_hosts}
    for name in hosts:
        if name not in known_hosts:
            raise InputError(f"unknown host {name!r}: not in the inventory")
    chosen = [h for h in all_hosts if (not tenants or h.tenant in tenants) and (not hosts or h.name in hosts)]
    if not chosen:
        raise InputError("no host matches the given --tenant/--host")
    return chosen


Connector = Callable[[Endpoint], Any]


def run_triage(
    inventory: Inventory,
    case_id: str,
    hosts: list[Host],
    options: TriageOptions,
    *,
    audit_log: Any | None,
    catalog: Catalog | None = None,
    connect: Connector | None = None,
) -> list[CollectionResult]:
    """Collect every host in parallel; one result per host, in the order given."""
    catalog = catalog or load_catalog()
    for os_name in {h.os for h in hosts}:
        catalog.select(options.profile, os_name, allow_modifies_state=options.allow_modifies_state)
    # The engine's fleet: the same strict pins (MSP known_hosts, inventory pins, and the case's own
    # pins after an audited reimage) and the same responder keys (the case's key first).
    fleet = ConnectionPool(inventory, case_id)
    if connect is None:
        def connect(endpoint: Endpoint) -> Any:
            last: TransportError | None = None
            for pkey in fleet.keys():
                try:
                    return SshConnection.open(endpoint, pkey=pkey)
                except TransportError as exc:
                    last = exc
                    if exc.kind != "auth_failed":
                        raise
            assert last is not None
            raise last

    log = get_logger("triage")

    def one(host: Host) -> CollectionResult:
        endpoint = fleet.endpoint(host)
        target = HostTarget(case=case_id, msp=inventory.msp.name, tenant=host.tenant, host=host.name,
                            address=host.address, os=host.os, ssh_user=endpoint.user)
        if host.os != "linux" or host.transport != "ssh":
            return _failed(target, "Windows/WinRM triage is not implemented yet (Windows issue)", audit_log)
        try:
            conn = connect(endpoint)
        except TransportError as exc:
            return _failed(target, f"{exc.kind}: {exc}", audit_log)
        try:
            target = dataclasses.replace(target, host_key_fingerprint=getattr(conn, "host_key_fingerprint", None))
            selection = catalog.select(options.profile, host.os, allow_modifies_state=options.allow_modifies_state)

            def on_sealed(collection: Any, seal: dict[str, Any]) -> None:
                if audit_log is not None:
                    record_custody(audit_log, case_id, collection, seal)

            result = collect_host(conn, target, selection, recipients=options.recipients,
                                  transfer=options.transfer, idle_timeout=options.idle_timeout,
                                  on_sealed=on_sealed)
            log.info("triage collected", host=host.name, status=result.status, **result.counts)
            return result
        except (TransportError, TransferError) as exc:
            return _failed(target, f"connection failed during collection: {exc}", audit_log)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                return _failed(target, f"disk full writing evidence: {exc.filename or ''}", audit_log)
            log.error("triage failed", host=host.name, exc_info=True)
            return _failed(target, f"{type(exc).__name__}: {exc}", audit_log)
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - one host's bug must not lose the others' evidence
            log.error("triage failed", host=host.name, exc_info=True)
            return _failed(target, f"internal error: {type(exc).__name__}: {exc}", audit_log)
        finally:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass

    workers = max(1, min(options.workers, len(hosts)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="triage") as pool:
        return list(pool.map(one, hosts))


def _failed(target: HostTarget, error: str, audit_log: Any | None) -> CollectionResult:
    get_logger("triage").warning("triage failed", host=target.host, error=error)
    if audit_log is not None:
        record_failure(audit_log, target.tenant, target.host, error)
    return CollectionResult(target=target, status="failed", error=error)
