"""The connection pool: one reusable, strictly pinned connection per host (and transport kind).

Connections are opened lazily by the worker that first needs a host, kept for
every later step (no new handshake per command) and reopened if they drop.
Transient failures (sshd ``MaxStartups`` banner drops, resets) are retried with
exponential backoff within the host's deadline.

Transports plug in through a factory registry: a transport module calls
``register_transport("winrm", factory)`` at import, where ``factory(pool, host,
deadline)`` returns an open :class:`~ir_toolkit.transports.base.Connection` (or raises
``TransportError``). The pool picks the factory by ``kind`` (default: the host's
``transport`` from the inventory) and imports the built-in transport modules
(``transports/winrm.py``, ``transports/ldap.py``) on first use, so adding a transport
needs no edit here. Factories get the pool's inventory, case, timeouts and
``max_retries`` and may use :meth:`ConnectionPool.retrying` for the one backoff policy.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import paramiko

from ir_toolkit.cases import CaseLayout
from ir_toolkit.deadline import Deadline
from ir_toolkit.inventory.model import Host, Inventory
from ir_toolkit.secrets.references import expand_path, parse_ref
from ir_toolkit.transports.base import (
    AUTH_FAILED,
    PROTOCOL,
    Connection,
    Endpoint,
    Timeouts,
    TransportError,
)
from ir_toolkit.transports.hostkeys import KnownHosts
from ir_toolkit.transports.retry import RetryPolicy, connect_retryable
from ir_toolkit.transports.ssh import SshConnection, load_private_key

T = TypeVar("T")
#: factory(pool, host, deadline) -> an open connection of that transport kind
ConnectionFactory = Callable[["ConnectionPool", Host, float], Connection]
_FACTORIES: dict[str, ConnectionFactory] = {}
#: transports shipped with irkit whose module registers its factory when imported
_BUILTIN_TRANSPORTS = {"winrm": "ir_toolkit.transports.winrm", "ldap": "ir_toolkit.transports.ldap"}
_factories_lock = threading.Lock()


def register_transport(kind: str, factory: ConnectionFactory) -> None:
    """Make ``kind`` connections available to every pool (called by a transport module at import)."""
    with _factories_lock:
        _FACTORIES[kind] = factory


def transport_factory(kind: str) -> ConnectionFactory:
    """The factory for ``kind``, importing a built-in transport module on first use."""
    with _factories_lock:
        factory = _FACTORIES.get(kind)
    if factory is None and kind in _BUILTIN_TRANSPORTS:
        try:
            importlib.import_module(_BUILTIN_TRANSPORTS[kind])
        except ModuleNotFoundError as exc:
            if exc.name != _BUILTIN_TRANSPORTS[kind]:
                raise
        with _factories_lock:
            factory = _FACTORIES.get(kind)
    if factory is None:
        raise TransportError(PROTOCOL, f"transport {kind!r} is not available in this irkit")
    return factory


def responder_key_paths(inventory: Inventory, case_id: str | None, tenant: str | None = None) -> list[Path]:
    """Keys irkit logs in with, most specific first: the case's own responder key for the host's tenant
    (or the case-wide key of earlier versions), then the MSP's."""
    paths: list[Path] = []
    if case_id:
        layout = CaseLayout.of(case_id)
        for case_key in ([layout.tenant_responder_key(tenant)] if tenant else []) + [layout.responder_key]:
            if case_key.exists():
                paths.append(case_key)
    ref = parse_ref(inventory.msp.responder.key)
    if ref.scheme == "file":
        paths.append(ref.path)
    return paths


def known_hosts_files(inventory: Inventory, case_id: str | None) -> list[Path]:
    files: list[Path] = []
    if inventory.msp.known_hosts:
        files.append(expand_path(inventory.msp.known_hosts))
    if case_id:
        files.append(case_known_hosts(case_id))
    return files


def case_known_hosts(case_id: str) -> Path:
    """The case's own pins (written only by audited acceptances, e.g. after a reimage); they override."""
    return CaseLayout.of(case_id).known_hosts


class ConnectionPool:
    """Connections to the hosts of one inventory, for one case (one per host and transport kind)."""

    def __init__(self, inventory: Inventory, case_id: str | None, *, timeouts: Timeouts = Timeouts(),
                 max_retries: int = 3) -> None:
        self.inventory = inventory
        self.case_id = case_id
        self.timeouts = timeouts
        self.max_retries = max_retries
        # the case's pins override the MSP's for the hosts they name (a reimaged host's old key is refused)
        self.known_hosts = KnownHosts(known_hosts_files(inventory, None),
                                      override=[case_known_hosts(case_id)] if case_id else [])
        self._keys: dict[str | None, list[paramiko.PKey]] = {}
        #: decrypted keys by (path, inode, mtime, size): an encrypted key file's bcrypt KDF costs ~0.25 s of
        #: CPU, so each file is decrypted once per run, not once per host or per reload
        self._decrypted: dict[tuple[str, int, int, int], paramiko.PKey] = {}
        self._file_locks: dict[str, threading.Lock] = {}
        #: decrypts the case's responder keys (set by run/ from the unlocked KeyProvider); without it
        #: only the MSP's responder key is used
        self.case_key_passphrase: str | None = None
        self._conns: dict[tuple[str, str], Connection] = {}
        self._lock = threading.Lock()

    def keys(self, host: Host | None = None) -> list[paramiko.PKey]:
        """The responder keys for ``host`` (its tenant's case key first, when it can be decrypted)."""
        tenant = host.tenant if host is not None else None
        with self._lock:
            cached = self._keys.get(tenant)
        if cached is not None:
            return cached
        # built without the pool's lock: a decryption (bcrypt) must not hold up every other host
        paths = responder_key_paths(self.inventory, self.case_id, tenant)
        layout = CaseLayout.of(self.case_id) if self.case_id else None
        loaded = []
        for path in paths:
            if not path.exists():
                continue
            if layout is not None and path.parent == layout.keys and path != layout.responder_key:
                if self.case_key_passphrase is None:
                    continue  # encrypted at rest: usable once run/ has unlocked the keys
                loaded.append(self._load(path, self.case_key_passphrase))
            else:
                loaded.append(self._load(path, None))
        if not loaded:
            missing = ", ".join(str(p) for p in paths) or "(none configured)"
            raise TransportError(AUTH_FAILED, f"no responder key found: {missing}")
        with self._lock:
            self._keys[tenant] = loaded
        return loaded

    @staticmethod
    def _signature(path: Path) -> tuple[str, int, int, int]:
        st = path.stat()
        return (str(path), st.st_ino, st.st_mtime_ns, st.st_size)

    def _load(self, path: Path, passphrase: str | None) -> paramiko.PKey:
        """``load_private_key``, once per key file as it is on disk (a changed file is read again).

        One decryption per file at a time (a per-file lock); lookups and other files go on meanwhile.
        """
        sig = self._signature(path)
        with self._lock:
            key = self._decrypted.get(sig)
            if key is not None:
                return key
            file_lock = self._file_locks.setdefault(str(path), threading.Lock())
        with file_lock:
            with self._lock:
                key = self._decrypted.get(sig)
            if key is None:
                key = load_private_key(path, passphrase)
                with self._lock:
                    self._decrypted[sig] = key
        return key

    def private_key(self, path: Path, passphrase: str | None) -> paramiko.PKey:
        """A responder key file, decrypted once per run (see :meth:`_load`)."""
        return self._load(path, passphrase)

    def remember_key(self, path: Path, pkey: paramiko.PKey) -> None:
        """A key irkit has just generated and written to ``path``: used as it is, never decrypted from the file
        (the file's bcrypt KDF costs ~0.25 s of CPU; a changed file is read again)."""
        sig = self._signature(path)
        with self._lock:
            self._decrypted[sig] = pkey

    def reload_keys(self) -> None:
        """Forget which keys each tenant uses (after a per-case responder key was installed or removed);
        key files already decrypted are not decrypted again unless they changed on disk."""
        with self._lock:
            self._keys = {}

    def endpoint(self, host: Host) -> Endpoint:
        user = host.user or self.inventory.msp.responder.user
        pinned = self.known_hosts.expected(host.address, int(host.port or 22), host.host_keys)
        return Endpoint(host.address, int(host.port or 22), user, pinned, host.name)

    def connection(self, host: Host, deadline: float, *, kind: str | None = None) -> Connection:
        """The open connection to ``host`` (opened or reopened as needed, within ``deadline``).

        ``kind`` picks the transport (default: the host's ``transport`` in the inventory).
        """
        key = (host.name, kind or host.transport or "ssh")
        conn = self._conns.get(key)
        if conn is not None and conn.alive:
            return conn
        conn = transport_factory(key[1])(self, host, deadline)
        self._conns[key] = conn
        return conn

    def retrying(self, host: Host, deadline: float, attempt_once: Callable[[], T]) -> T:
        """Call ``attempt_once`` with the one retry policy (``transports/retry.py``): at most
        ``max_retries`` retries of kind ``transient``, jittered backoff, never past ``deadline``."""
        return RetryPolicy(self.max_retries).call(attempt_once, Deadline(deadline), retry_if=connect_retryable,
                                                  what=host.name)

    def drop(self, host: Host) -> None:
        """Close and forget every connection to ``host``."""
        for key in [k for k in self._conns if k[0] == host.name]:
            conn = self._conns.pop(key, None)
            if conn is not None:
                conn.close()

    def close(self) -> None:
        for conn in list(self._conns.values()):
            conn.close()
        self._conns.clear()


def _open_ssh(pool: ConnectionPool, host: Host, deadline: float) -> Connection:
    """The SSH factory: the pinned endpoint, each responder key in turn, transient failures retried."""
    endpoint = pool.endpoint(host)

    def once() -> SshConnection:
        last: TransportError | None = None
        for key in pool.keys(host):
            try:
                return SshConnection.open(endpoint, pkey=key, timeouts=pool.timeouts, deadline=deadline)
            except TransportError as exc:
                last = exc
                if exc.kind != AUTH_FAILED:
                    break
        assert last is not None
        raise last

    return pool.retrying(host, deadline, once)


register_transport("ssh", _open_ssh)
