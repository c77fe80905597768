"""The fleet: one reusable, strictly pinned SSH connection per host.

Connections are opened lazily by the worker that first needs a host, kept for
every later step (no new handshake per command) and reopened if they drop.
Transient failures (sshd ``MaxStartups`` banner drops, resets) are retried with
exponential backoff within the host's deadline.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import paramiko

from ir_toolkit.home import case_dir
from ir_toolkit.inventory.model import Host, Inventory
from ir_toolkit.secrets.references import expand_path, parse_ref
from ir_toolkit.transports.hostkeys import KnownHosts
from ir_toolkit.transports.ssh import (
    AUTH_FAILED,
    TIMED_OUT,
    Endpoint,
    SshConnection,
    Timeouts,
    TransportError,
    load_private_key,
)


def responder_key_paths(inventory: Inventory, case_id: str | None) -> list[Path]:
    """Keys irkit logs in with, most specific first: the case's own responder key, then the MSP's."""
    paths: list[Path] = []
    if case_id:
        case_key = case_dir(case_id) / "keys" / "responder_ed25519"
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
    return case_dir(case_id) / "known_hosts"


class Fleet:
    """Connections to the hosts of one inventory, for one case."""

    def __init__(self, inventory: Inventory, case_id: str | None, *, timeouts: Timeouts = Timeouts(),
                 max_retries: int = 3) -> None:
        self.inventory = inventory
        self.case_id = case_id
        self.timeouts = timeouts
        self.max_retries = max_retries
        # the case's pins override the MSP's for the hosts they name (a reimaged host's old key is refused)
        self.known_hosts = KnownHosts(known_hosts_files(inventory, None),
                                      override=[case_known_hosts(case_id)] if case_id else [])
        self._keys: list[paramiko.PKey] | None = None
        self._conns: dict[str, SshConnection] = {}
        self._lock = threading.Lock()

    def keys(self) -> list[paramiko.PKey]:
        with self._lock:
            if self._keys is None:
                paths = responder_key_paths(self.inventory, self.case_id)
                self._keys = [load_private_key(p) for p in paths if p.exists()]
                if not self._keys:
                    missing = ", ".join(str(p) for p in paths) or "(none configured)"
                    raise TransportError(AUTH_FAILED, f"no responder key found: {missing}")
            return self._keys

    def reload_keys(self) -> None:
        """Forget loaded keys (after a per-case responder key was installed)."""
        with self._lock:
            self._keys = None

    def endpoint(self, host: Host) -> Endpoint:
        user = host.user or self.inventory.msp.responder.user
        pinned = self.known_hosts.expected(host.address, int(host.port or 22), host.host_keys)
        return Endpoint(host.address, int(host.port or 22), user, pinned, host.name)

    def connection(self, host: Host, deadline: float) -> SshConnection:
        """The open connection to ``host`` (opened or reopened as needed, within ``deadline``)."""
        conn = self._conns.get(host.name)
        if conn is not None and conn.alive:
            return conn
        conn = self._open(host, deadline)
        self._conns[host.name] = conn
        return conn

    def _open(self, host: Host, deadline: float) -> SshConnection:
        endpoint = self.endpoint(host)
        attempt = 0
        while True:
            last: TransportError | None = None
            for key in self.keys():
                try:
                    return SshConnection.open(endpoint, pkey=key, timeouts=self.timeouts, deadline=deadline)
                except TransportError as exc:
                    last = exc
                    if exc.kind != AUTH_FAILED:
                        break
            assert last is not None
            attempt += 1
            if last.kind != "transient" or attempt > self.max_retries:
                raise last
            pause = min(0.2 * 2 ** attempt, 5.0) * (0.5 + random.random())
            if time.monotonic() + pause >= deadline:
                raise TransportError(TIMED_OUT, f"{host.name}: deadline reached while retrying: {last}")
            time.sleep(pause)

    def drop(self, host: Host) -> None:
        conn = self._conns.pop(host.name, None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for conn in list(self._conns.values()):
            conn.close()
        self._conns.clear()
