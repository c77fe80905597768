"""Agents over a real broker: Debian's redis-server on loopback (a random port, no persistence).

* every key of a tenant carries its ``global_keyprefix`` (queues, ``unacked``, ``unacked_index``,
  bindings), and a per-tenant ACL user cannot read another tenant's keys;
* (lab) a real ``irkit agent`` process killed -9 mid-step: the step is redelivered after the
  visibility timeout and finished once; the case log has one ``step.done`` per item and verifies;
  a tampered envelope is refused and the refusal is in the signed log.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ir_toolkit.agents.celeryapp import (
    STEP_TASK,
    BrokerSettings,
    make_app,
    publish,
    queue_of,
    results_queue,
    steps_queue,
)

REDIS = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(REDIS is None, reason="needs Debian's redis-server (apt-get install redis-server)")

ACL_RULES = ["resetchannels", "-@all", "+@read", "+@write", "+@list", "+@hash", "+@set", "+@sortedset", "+@string",
             "+@keyspace", "+@transaction", "+@connection", "+@scripting", "-@dangerous", "+info"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self, port: int, proc: subprocess.Popen[bytes]) -> None:
        self.port = port
        self.proc = proc

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **kw: object):  # type: ignore[no-untyped-def]
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, **kw)  # type: ignore[arg-type]

    def add_user(self, name: str, password: str, pattern: str) -> None:
        assert self.client().acl_setuser(name, enabled=True, passwords=[f"+{password}"], keys=[pattern],
                                         reset_channels=True, categories=[r for r in ACL_RULES[1:]
                                                                          if r.startswith(("+@", "-@"))],
                                         commands=["+info"])


def start_redis(directory: Path) -> RedisServer:
    directory.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    proc = subprocess.Popen([REDIS or "redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                             "--appendonly", "no", "--dir", str(directory), "--protected-mode", "yes"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = RedisServer(port, proc)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            if server.client().ping():
                return server
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("redis-server did not start")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path / "redis")
    try:
        yield server
    finally:
        server.proc.terminate()
        try:
            server.proc.wait(10)
        except subprocess.TimeoutExpired:
            server.proc.kill()


def test_every_key_carries_the_tenant_prefix(redis_server: RedisServer) -> None:
    app = make_app("t1", BrokerSettings(redis_server.url), longest_step_s=60, visibility_timeout=1,
                   restore_interval=1)
    app.send_task(STEP_TASK, args=[{"step": 1}], queue=steps_queue("t1"))
    app.send_task(STEP_TASK, args=[{"step": 2}], queue=steps_queue("t1"))
    publish(app, results_queue("t1"), {"result": 1})
    got = []
    with app.connection_for_read() as conn:
        with conn.Consumer([queue_of(app, steps_queue("t1"))], callbacks=[lambda b, m: got.append(m)],
                           accept=["json"], prefetch_count=1):
            conn.drain_events(timeout=5)
        keys = {k.decode(): redis_server.client().type(k).decode() for k in redis_server.client().keys("*")}
        assert got and keys["irkit:t1:unacked"] == "hash" and keys["irkit:t1:unacked_index"] == "zset"
        assert keys["irkit:t1:irkit.t1.steps"] == "list" and keys["irkit:t1:irkit.t1.results"] == "list"
        assert "irkit:t1:_kombu.binding.irkit.t1" in keys
        assert all(k.startswith("irkit:t1:") for k in keys), keys
        # the in-flight step's full body is in the tenant's own unacked hash
        assert len(redis_server.client().hvals("irkit:t1:unacked")) == 1


def test_a_tenants_acl_user_cannot_read_another_tenants_queue(redis_server: RedisServer) -> None:
    import redis

    redis_server.add_user("agent-t1", "pw-one-1", "~irkit:t1:*")
    redis_server.add_user("agent-t2", "pw-two-2", "~irkit:t2:*")
    a1 = make_app("t1", BrokerSettings(redis_server.url, username="agent-t1", password="pw-one-1"),
                  visibility_timeout=1, restore_interval=1)
    a1.send_task(STEP_TASK, args=[{"secret-ish": "t1 step"}], queue=steps_queue("t1"))
    with a1.connection_for_read() as conn:  # one in flight, unacked
        with conn.Consumer([queue_of(a1, steps_queue("t1"))], callbacks=[lambda b, m: None], accept=["json"],
                           prefetch_count=1):
            conn.drain_events(timeout=5)
    t2 = redis_server.client(username="agent-t2", password="pw-two-2")
    for attempt in (lambda: t2.lrange("irkit:t1:irkit.t1.steps", 0, -1), lambda: t2.hgetall("irkit:t1:unacked"),
                    lambda: t2.hgetall("unacked"), lambda: t2.keys("*"), lambda: t2.publish("irkit:t1:x", "y")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()
    # through kombu too: tenant t2's agent pointed at t1's queue gets NOPERM, never a message
    spy = make_app("t1", BrokerSettings(redis_server.url, username="agent-t2", password="pw-two-2"))
    with pytest.raises(Exception, match="(?i)permission"):
        with spy.connection_for_read() as conn:
            with conn.Consumer([queue_of(spy, steps_queue("t1"))], callbacks=[lambda b, m: None],
                               accept=["json"]):
                conn.drain_events(timeout=3)
    # t1's own agent can still restore its unacked step after the visibility timeout and consume it
    time.sleep(1.5)
    with a1.connection_for_read() as conn:
        conn.default_channel.qos.restore_visible(num=10, interval=1)
    assert redis_server.client().llen("irkit:t1:irkit.t1.steps") == 1
