"""The one Celery application factory both sides use (controller and a tenant's agent).

Celery is the transport only; irkit signs the work itself (:mod:`ir_toolkit.agents.envelope`).
The settings that make at-least-once delivery hold (scale-out memo §1.3, §1.5):

* JSON only (``accept_content=['json']``; pickle is never accepted);
* ``task_acks_late`` + ``task_reject_on_worker_lost``: a step is acked only after its result was
  published; a killed worker's step is redelivered, not acked;
* ``worker_prefetch_multiplier=1``: an agent holds no more steps than it runs;
* hard/soft time limits above the longest step's deadline;
* Redis: ``visibility_timeout`` above the longest step (an unacked step is redelivered after it);
* **the Redis tenant trap**: kombu keeps every unacked message with its full body in one hash
  (``unacked``) per key prefix, so each tenant gets its own ``global_keyprefix``
  (``irkit:<tenant>:``): its queues, ``unacked``, ``unacked_index``, ``unacked_mutex`` and
  ``_kombu.binding.*`` keys all start with it, and one Redis ACL user per tenant limited to
  ``~irkit:<tenant>:*`` can read nothing of another tenant (see docs/agents.md);
* no remote control, no events, no gossip/mingle: nothing uses Redis pub/sub (the ACL user needs
  no channel permissions) and no broadcast reaches another tenant's workers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

STEP_TASK = "irkit.agent.step"
RESULT_TASK = "irkit.agent.result"
#: seconds added to the longest step deadline for the hard time limit and the visibility timeout
MARGIN = 120
_TENANT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def key_prefix(tenant: str) -> str:
    """Every Redis key of a tenant starts with this (the ACL key pattern is ``~irkit:<tenant>:*``)."""
    return f"irkit:{_tenant(tenant)}:"


def steps_queue(tenant: str) -> str:
    return f"irkit.{_tenant(tenant)}.steps"


def results_queue(tenant: str) -> str:
    return f"irkit.{_tenant(tenant)}.results"


def _tenant(tenant: str) -> str:
    if not _TENANT.match(tenant):
        raise ValueError(f"{tenant!r} is not a tenant name")
    return tenant


@dataclass(frozen=True)
class BrokerSettings:
    """How one side reaches one tenant's broker. ``password`` is a value held in memory only (never in
    argv, the environment of children, logs or files); ``url`` carries no password."""

    url: str
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


def _with_login(url: str, username: str | None, password: str | None) -> str:
    if not username and not password:
        return url
    from urllib.parse import quote, urlsplit, urlunsplit

    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise ValueError("the broker URL must not carry a login: give the user and a password reference")
    login = quote(username or "", safe="") + (":" + quote(password, safe="") if password else "")
    return urlunsplit((parts.scheme, f"{login}@{parts.netloc}", parts.path, parts.query, parts.fragment))


def make_app(tenant: str, broker: BrokerSettings, *, longest_step_s: float = 3600.0,
             visibility_timeout: float | None = None, restore_interval: float | None = None,
             name: str | None = None) -> Celery:
    """A Celery app for one tenant's queues (``irkit.<tenant>.steps``, ``irkit.<tenant>.results``).

    ``visibility_timeout`` (Redis) defaults to the longest step plus :data:`MARGIN`; tests lower it
    (with ``restore_interval``) to see a killed agent's step redelivered within seconds.
    """
    url = broker.url
    scheme = url.split(":", 1)[0]
    if scheme not in ("redis", "rediss", "memory", "amqp", "amqps"):
        raise ValueError(f"broker URL scheme {scheme!r}: use rediss:// (or redis:// on loopback), amqps://, memory://")
    app = Celery(name or f"irkit-{_tenant(tenant)}", set_as_current=False)
    limit = int(longest_step_s) + MARGIN
    vis = int(visibility_timeout if visibility_timeout is not None else limit + MARGIN)
    transport: dict[str, Any] = {}
    if scheme in ("redis", "rediss"):
        transport = {"global_keyprefix": key_prefix(tenant), "visibility_timeout": vis,
                     "socket_timeout": 30, "socket_connect_timeout": 10, "health_check_interval": 10}
        if restore_interval is not None:
            transport.update(unacked_restore_interval=max(1, int(restore_interval)), unacked_restore_throttle=1)
    ssl: dict[str, Any] | None = None
    if broker.ca_file or broker.cert_file:
        import ssl as _ssl

        ssl = {"ssl_cert_reqs": _ssl.CERT_REQUIRED, "ssl_ca_certs": broker.ca_file,
               "ssl_certfile": broker.cert_file, "ssl_keyfile": broker.key_file}
        if scheme.startswith("amqp"):
            ssl = {"cert_reqs": _ssl.CERT_REQUIRED, "ca_certs": broker.ca_file,
                   "certfile": broker.cert_file, "keyfile": broker.key_file}
        ssl = {k: v for k, v in ssl.items() if v is not None}
    exchange = Exchange(f"irkit.{tenant}", type="direct", durable=True)
    app.conf.update(
        broker_url=_with_login(url, broker.username, broker.password),
        broker_use_ssl=ssl,
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        task_serializer="json", result_serializer="json", accept_content=["json"], event_serializer="json",
        result_accept_content=["json"],
        task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
        task_acks_on_failure_or_timeout=False,
        task_time_limit=limit, task_soft_time_limit=max(1, int(longest_step_s) + MARGIN // 2),
        task_ignore_result=True, result_backend=None,
        task_default_queue=steps_queue(tenant), task_default_exchange=exchange.name,
        task_default_routing_key=steps_queue(tenant),
        task_queues=[Queue(steps_queue(tenant), exchange, routing_key=steps_queue(tenant)),
                     Queue(results_queue(tenant), exchange, routing_key=results_queue(tenant))],
        task_routes={STEP_TASK: {"queue": steps_queue(tenant)}, RESULT_TASK: {"queue": results_queue(tenant)}},
        worker_enable_remote_control=False, worker_send_task_events=False, task_send_sent_event=False,
        worker_hijack_root_logger=False, worker_redirect_stdouts=False,
        worker_soft_shutdown_timeout=30.0, worker_cancel_long_running_tasks_on_connection_loss=False,
        enable_utc=True,
    )
    return app


def publish(app: Celery, queue: str, doc: dict[str, Any], *, retries: int = 5) -> None:
    """Put one JSON document on ``queue`` (a plain kombu message, not a task); returns after the broker
    took it (Redis: the LPUSH returned)."""
    declared = {q.name: q for q in app.conf.task_queues}
    target = declared[queue]
    with app.producer_or_acquire() as producer:
        producer.publish(doc, exchange=target.exchange, routing_key=target.routing_key, declare=[target],
                         serializer="json", delivery_mode=2, retry=True,
                         retry_policy={"max_retries": retries, "interval_start": 0.5, "interval_step": 1.0,
                                       "interval_max": 5.0})


def queue_of(app: Celery, name: str) -> Queue:
    return {q.name: q for q in app.conf.task_queues}[name]
