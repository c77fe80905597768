"""Login probes: fresh SSH connections that prove a credential works (or is refused), and host-key scans.

Each probe is a brand-new connection, never the pooled one: "the new password logs in",
"the old key is refused", "the reinstalled host's sshd answers". Every probe takes a
:class:`~ir_toolkit.deadline.Deadline` and never outlives it (its connect, banner, auth and
command limits are capped by what is left); transient failures (an sshd reload re-executes
the daemon) are retried under the one policy of :mod:`ir_toolkit.transports.retry`.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import paramiko

from ir_toolkit.deadline import Deadline
from ir_toolkit.inventory.model import Host
from ir_toolkit.transports.base import AUTH_FAILED, TIMED_OUT, UNREACHABLE, Endpoint, Timeouts, TransportError
from ir_toolkit.transports.retry import RetryPolicy, transient
from ir_toolkit.transports.ssh import SshConnection, probe_login

PROBE_TIMEOUTS = Timeouts(connect=5, banner=5, auth=10, command=20)
SCAN_TIMEOUT = 5.0


def retrying(func: Any, deadline: Deadline, attempts: int = 4) -> Any:
    """Retry a login probe across transient failures (an sshd reload re-executes the daemon).

    The one notion of transient (``TransportError.transient``); pauses and attempts end at ``deadline``.
    """
    return RetryPolicy(attempts - 1, base=0.15, jitter=False).call(func, deadline, retry_if=transient)


def probe_timeouts(deadline: Deadline) -> Timeouts:
    """The probe limits, capped by what is left of the step (a probe never outlives its step)."""
    left = deadline.remaining()
    if left <= 0:
        raise TransportError(TIMED_OUT, "step deadline reached before a login probe")
    t = PROBE_TIMEOUTS
    return Timeouts(connect=min(t.connect, left), banner=min(t.banner, left), auth=min(t.auth, left),
                    command=min(t.command, left))


def fresh_login(endpoint: Endpoint, pkey: paramiko.PKey, deadline: Deadline) -> bool:
    """A brand-new SSH connection with exactly ``pkey`` authenticates and runs a command (within ``deadline``)."""
    def attempt() -> bool:
        try:
            conn = SshConnection.open(endpoint, pkey=pkey, timeouts=probe_timeouts(deadline), deadline=deadline.at)
        except TransportError as exc:
            if exc.kind == AUTH_FAILED:
                return False
            raise
        try:
            return conn.run("true", timeout=10, deadline=deadline.at).ok
        finally:
            conn.close()

    return bool(retrying(attempt, deadline))


def login_with_password(endpoint: Endpoint, password: str, deadline: Deadline) -> bool:
    return bool(retrying(lambda: probe_login(endpoint, password=password, timeouts=probe_timeouts(deadline),
                                             deadline=deadline.at), deadline))


def login_with_key(endpoint: Endpoint, pkey: paramiko.PKey, deadline: Deadline) -> bool:
    return bool(retrying(lambda: probe_login(endpoint, pkey=pkey, timeouts=probe_timeouts(deadline),
                                             deadline=deadline.at), deadline))


def scan_host_key(address: str, port: int, timeout: float = SCAN_TIMEOUT) -> paramiko.PKey:
    """The host key the SSH server at ``address:port`` offers (key exchange only; no credential is sent)."""
    try:
        sock = socket.create_connection((address, port), timeout=timeout)
    except (TimeoutError, socket.timeout):
        raise TransportError(TIMED_OUT, f"connect to {address}:{port} timed out after {timeout:g}s") from None
    except OSError as exc:
        raise TransportError(UNREACHABLE, f"cannot connect to {address}:{port}: {exc.strerror or exc}") from None
    transport = paramiko.Transport(sock)
    try:
        transport.banner_timeout = timeout
        transport.start_client(timeout=timeout)
        key = transport.get_remote_server_key()
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise TransportError(UNREACHABLE, f"{address}:{port}: no SSH key exchange: {exc or type(exc).__name__}") from None
    finally:
        transport.close()
        sock.close()
    return key


def wait_for_host_key(host: Host, deadline: float, interval: float = 0.5) -> paramiko.PKey:
    """Scan until the reinstalled host's sshd answers, or raise at ``deadline``."""
    last: TransportError | None = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TransportError(TIMED_OUT, f"{host.name}: SSH did not come back before the step deadline"
                                 + (f" ({last})" if last else ""))
        try:
            return scan_host_key(host.address, int(host.port or 22), min(SCAN_TIMEOUT, left))
        except TransportError as exc:
            last = exc
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
