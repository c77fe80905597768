"""The SSH transport against a real sshd that drops connections (MaxStartups): retried with backoff."""

from __future__ import annotations

import socket
import threading
import time

import pytest

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def busy_lab(lab_factory):
    handle = lab_factory("maxstart", tenants=1, hosts_per_tenant=1)
    host = handle.info["hosts"][0]["name"]
    # One unauthenticated connection at a time: a second one is dropped at once, the way sshd sheds load
    # (the "Error reading SSH protocol banner" that hits fleets at scale).
    proc = handle.exec(host, ("sed -i 's/^MaxStartups .*/MaxStartups 1:100:1/' /etc/ssh/sshd_config && "
                              "/usr/sbin/sshd -T | grep -qx 'maxstartups 1:100:1' && kill -HUP $(cat /run/sshd.pid)"))
    assert proc.returncode == 0, proc.stderr
    time.sleep(0.5)
    return handle


def test_maxstartups_drop_is_retried_with_backoff_until_the_slot_frees(busy_lab, monkeypatch):
    from ir_toolkit.inventory import load_inventory
    from ir_toolkit.transports.pool import ConnectionPool

    monkeypatch.setenv("IRKIT_HOME", str(busy_lab.home))
    inventory = load_inventory(busy_lab.inventory_path)
    host = inventory.hosts()[0]
    hog = socket.create_connection((host.address, host.port), timeout=5)  # holds the only pre-auth slot
    hog.recv(100)  # the server's banner: the slot is taken
    threading.Timer(1.0, hog.close).start()
    fleet = ConnectionPool(inventory, None, max_retries=5)
    start = time.monotonic()
    conn = fleet.connection(host, time.monotonic() + 30)
    waited = time.monotonic() - start
    try:
        assert conn.run("echo ok").text == "ok\n"
    finally:
        fleet.close()
    assert waited >= 0.9  # it got in only after the hog left: the first attempts were dropped and retried


def test_without_retries_the_drop_is_a_transient_error(busy_lab, monkeypatch):
    from ir_toolkit.inventory import load_inventory
    from ir_toolkit.transports.pool import ConnectionPool
    from ir_toolkit.transports.ssh import TRANSIENT, TransportError

    monkeypatch.setenv("IRKIT_HOME", str(busy_lab.home))
    inventory = load_inventory(busy_lab.inventory_path)
    host = inventory.hosts()[0]
    hog = socket.create_connection((host.address, host.port), timeout=5)
    hog.recv(100)
    try:
        with pytest.raises(TransportError) as exc:
            ConnectionPool(inventory, None, max_retries=0).connection(host, time.monotonic() + 10)
        assert exc.value.kind == TRANSIENT
    finally:
        hog.close()


def test_commands_run_when_descriptors_are_above_fd_setsize(busy_lab, monkeypatch):
    """At 1,000 hosts the controller holds well over 1,024 descriptors: a command's wait must not use
    select(), which refuses descriptors at or above FD_SETSIZE ("filedescriptor out of range")."""
    import os
    import resource

    from ir_toolkit.inventory import load_inventory
    from ir_toolkit.transports.pool import ConnectionPool

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 1200:
        pytest.skip(f"needs an open-files limit over 1,200 (hard limit {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    monkeypatch.setenv("IRKIT_HOME", str(busy_lab.home))
    filler = []
    try:
        while len(filler) < 1100:  # push the connection's descriptors past 1,024
            filler.append(os.open("/dev/null", os.O_RDONLY))
        inventory = load_inventory(busy_lab.inventory_path)
        fleet = ConnectionPool(inventory, None, max_retries=5)
        try:
            conn = fleet.connection(inventory.hosts()[0], time.monotonic() + 30)
            assert conn.run("echo ok").text == "ok\n"
        finally:
            fleet.close()
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_an_idle_connection_stays_usable_and_close_ends_it_at_once(busy_lab, monkeypatch):
    """The reader thread of an idle connection sleeps until the keepalive is due (15 s), not 0.1 or 1 s:
    a connection left idle past several old wake-up periods still runs commands, and closing it ends the
    reader thread and the TCP connection at once (the socket is shut down under a blocked recv), not at
    the reader's next wake-up."""
    from ir_toolkit.inventory import load_inventory
    from ir_toolkit.transports import ssh
    from ir_toolkit.transports.pool import ConnectionPool

    monkeypatch.setenv("IRKIT_HOME", str(busy_lab.home))
    inventory = load_inventory(busy_lab.inventory_path)
    host = inventory.hosts()[0]
    fleet = ConnectionPool(inventory, None, max_retries=5)
    try:
        conn = fleet.connection(host, time.monotonic() + 30)
        transport = conn.client.get_transport()
        assert isinstance(transport, ssh._QuietTransport) and transport.sock.gettimeout() == ssh.KEEPALIVE
        local_port = transport.sock.getsockname()[1]
        assert conn.run("echo ok").text == "ok\n"
        time.sleep(2.5)  # idle: the reader is blocked in recv
        assert conn.run("echo again").text == "again\n"

        def established() -> bool:
            out = busy_lab.exec(host.name, "ss -Htn state established '( sport = :22 )'")
            assert out.returncode == 0, out.stderr
            return any(word.endswith(f":{local_port}") for word in out.stdout.decode().split())

        assert established()
        start = time.monotonic()
        conn.close()
        transport.join(2)
        assert not transport.is_alive()
        assert time.monotonic() - start < 2  # not the 15 s of the reader's wake-up period
        deadline = time.monotonic() + 2
        while established() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not established()  # sshd saw the connection end
    finally:
        fleet.close()
