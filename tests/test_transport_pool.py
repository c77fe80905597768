"""The pool's transport registry and its one retry policy, without hosts (a registered fake transport)."""

from __future__ import annotations

import time

import pytest

from ir_toolkit.inventory.model import Inventory
from ir_toolkit.transports import base
from ir_toolkit.transports.base import PROTOCOL, TIMED_OUT, TRANSIENT, Endpoint, TransportError
from ir_toolkit.transports.pool import ConnectionPool, register_transport
from ir_toolkit.transports.ssh import SshConnection

INVENTORY = {
    "version": 1,
    "msp": {"name": "acme", "shared_credentials": {"accounts": [{"user": "mspadmin"}]},
            "responder": {"key": "file:/nonexistent/key", "controller_address": "198.18.0.1"}},
    "tenants": [{"name": "globex", "hosts": [{"name": "web01", "address": "198.18.1.20"}]}],
}


class _Conn:
    kind = "fake-test"

    def __init__(self, host_name: str) -> None:
        self.endpoint = Endpoint("198.18.1.20", 1, "root", set(), host_name)
        self.host_key_fingerprint = "SHA256:fake"
        self.closed = False

    @property
    def alive(self) -> bool:
        return not self.closed

    def close(self) -> None:
        self.closed = True


def _pool() -> tuple[ConnectionPool, object]:
    inventory = Inventory.model_validate(INVENTORY)
    return ConnectionPool(inventory, None, max_retries=2), inventory.hosts()[0]


def test_registered_factory_opens_reuses_drops_and_reopens() -> None:
    opened: list[_Conn] = []

    def factory(pool: ConnectionPool, host, deadline: float) -> _Conn:  # type: ignore[no-untyped-def]
        conn = _Conn(host.name)
        opened.append(conn)
        return conn

    register_transport("fake-test", factory)  # type: ignore[arg-type]
    pool, host = _pool()
    first = pool.connection(host, time.monotonic() + 5, kind="fake-test")  # type: ignore[arg-type]
    assert pool.connection(host, time.monotonic() + 5, kind="fake-test") is first  # type: ignore[arg-type]
    pool.drop(host)  # type: ignore[arg-type]
    assert first.closed
    second = pool.connection(host, time.monotonic() + 5, kind="fake-test")  # type: ignore[arg-type]
    assert second is not first and len(opened) == 2
    second.close()  # a dropped connection (not alive) is reopened
    assert pool.connection(host, time.monotonic() + 5, kind="fake-test") is not second  # type: ignore[arg-type]
    pool.close()
    assert all(c.closed for c in opened)


def test_unknown_transport_is_one_clear_error() -> None:
    pool, host = _pool()
    with pytest.raises(TransportError, match="transport 'carrier-pigeon' is not available") as exc:
        pool.connection(host, time.monotonic() + 5, kind="carrier-pigeon")  # type: ignore[arg-type]
    assert exc.value.kind == PROTOCOL


def test_retry_policy_retries_only_transient_failures_within_bounds() -> None:
    pool, host = _pool()
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransportError(TRANSIENT, "banner dropped")
        return "ok"

    assert pool.retrying(host, time.monotonic() + 30, flaky) == "ok" and len(calls) == 3  # type: ignore[arg-type]

    def always() -> str:
        calls.append(1)
        raise TransportError(TRANSIENT, "banner dropped")

    calls.clear()
    with pytest.raises(TransportError, match="banner dropped"):
        pool.retrying(host, time.monotonic() + 30, always)  # type: ignore[arg-type]
    assert len(calls) == 3  # one try + max_retries=2

    def refused() -> str:
        calls.append(1)
        raise TransportError("auth_failed", "denied")

    calls.clear()
    with pytest.raises(TransportError, match="denied"):
        pool.retrying(host, time.monotonic() + 30, refused)  # type: ignore[arg-type]
    assert len(calls) == 1

    with pytest.raises(TransportError) as exc:
        pool.retrying(host, time.monotonic() + 0.01, always)  # type: ignore[arg-type]
    assert exc.value.kind == TIMED_OUT


def test_ssh_connection_implements_the_protocol() -> None:
    members = [name for name in dir(base.Connection) if not name.startswith("_")]
    assert {"run", "exec_stream", "put", "get", "alive", "close"} <= set(members)
    for name in members:
        assert hasattr(SshConnection, name) or name in ("endpoint", "host_key_fingerprint"), name
    assert SshConnection.kind == "ssh"


@pytest.mark.parametrize(("error", "kind"), [("No existing session", TRANSIENT), ("Incompatible ssh peer", PROTOCOL)])
def test_a_transport_lost_during_login_is_transient(monkeypatch: pytest.MonkeyPatch, error: str, kind: str) -> None:
    """paramiko says "No existing session" when the daemon closed the connection between the key exchange
    and authentication (a loaded host, LoginGraceTime): retried as a lost connection, where it used to
    fail hosts as a protocol error (seen at 1,000 hosts); other SSH errors stay protocol errors."""
    import socket

    import paramiko

    from ir_toolkit.transports import ssh

    def connect(self: paramiko.SSHClient, *args: object, **kwargs: object) -> None:
        raise paramiko.SSHException(error)

    pair = socket.socketpair()
    monkeypatch.setattr(ssh, "_open_socket", lambda endpoint, timeout: pair[0])
    monkeypatch.setattr(paramiko.SSHClient, "connect", connect)
    try:
        with pytest.raises(TransportError) as caught:
            SshConnection.open(Endpoint("198.18.0.10", 22, "root", set(), "h"), password="x")
    finally:
        pair[1].close()
    assert caught.value.kind == kind
