"""The agent as a Celery worker (``irkit agent``): the Celery glue around :class:`~ir_toolkit.agents.agent.Agent`.

The step task is acks-late and reject-on-worker-lost: it returns (and Celery acks) only after the
step's signed result was published; a publish that fails re-queues the step (``Reject(requeue)``)
after a pause, and a killed worker leaves it unacked for redelivery (Redis: after the visibility
timeout). Threads pool: up to ``concurrency`` hosts of the tenant at once, one prefetched step each.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Celery
from celery.exceptions import Reject

from ir_toolkit.agents.agent import Agent, AgentConfig
from ir_toolkit.agents.celeryapp import STEP_TASK, BrokerSettings, make_app, publish, results_queue, steps_queue
from ir_toolkit.agents.envelope import verifier
from ir_toolkit.errors import InputError
from ir_toolkit.fsutil import write_atomic
from ir_toolkit.log import get_logger
from ir_toolkit.tlog.note import Signer, Verifier

_log = get_logger("agent")
KEY_KIND = "irkit-agent-key"


# --------------------------------------------------------------------------- the agent's key


def agent_key_name(tenant: str, label: str = "") -> str:
    return f"irkit-agent-{tenant}" + (f"-{label}" if label else "")


def generate_agent_key(path: Path, tenant: str, *, label: str = "", force: bool = False) -> Signer:
    """A new Ed25519 agent key in ``path`` (mode 0600, never overwritten unless ``force``)."""
    if path.exists() and not force:
        raise InputError(f"{path} exists: an agent key is never overwritten (use --force to replace it)")
    signer = Signer.generate(agent_key_name(tenant, label))
    doc = {"kind": KEY_KIND, "name": signer.name, "tenant": tenant,
           "seed": base64.b64encode(signer.seed()).decode(), "vkey": signer.verifier_key()}
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, (json.dumps(doc, indent=1) + "\n").encode(), mode=0o600)
    return signer


def load_agent_key(path: Path, tenant: str) -> Signer:
    try:
        st = path.stat()
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise InputError(f"agent key {path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}): chmod 600")
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("kind") != KEY_KIND:
            raise InputError(f"{path} is not an irkit agent key")
        signer = Signer.from_seed(doc["name"], base64.b64decode(doc["seed"]))
    except OSError as exc:
        raise InputError(f"agent key {path}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"agent key {path}: not a valid agent key ({exc})") from None
    if doc.get("tenant") != tenant:
        raise InputError(f"agent key {path} is for tenant {doc.get('tenant')!r}, not {tenant!r}")
    return signer


def load_verifier(text: str, what: str = "controller key") -> Verifier:
    """``name+keyid+base64``, or ``file:PATH`` / a path of a file holding one (e.g. ``irkit keys show``'s)."""
    value = text.strip()
    if value.startswith("file:") or ("+" not in value and Path(value).expanduser().is_file()):
        path = Path(value.removeprefix("file:")).expanduser()
        try:
            value = path.read_text(encoding="utf-8").strip().splitlines()[0].strip()
        except (OSError, IndexError) as exc:
            raise InputError(f"{what} {path}: cannot read ({exc})") from None
    try:
        return verifier(value)
    except ValueError as exc:
        raise InputError(f"{what}: {exc}") from None


# --------------------------------------------------------------------------- the worker


@dataclass(frozen=True)
class WorkerOptions:
    concurrency: int = 4
    longest_step_s: float = 3600.0
    visibility_timeout: float | None = None
    restore_interval: float | None = None
    loglevel: str = "WARNING"


def build_app(config_without_publish: AgentConfig, broker: BrokerSettings,
              options: WorkerOptions = WorkerOptions()) -> tuple[Celery, Agent]:
    """The tenant's Celery app with the step task bound to a new :class:`Agent`."""
    tenant = config_without_publish.tenant
    app = make_app(tenant, broker, longest_step_s=options.longest_step_s,
                   visibility_timeout=options.visibility_timeout, restore_interval=options.restore_interval,
                   name=f"irkit-agent-{tenant}")
    queue = results_queue(tenant)
    config_without_publish.publish = lambda doc: publish(app, queue, doc)
    agent = Agent(config_without_publish)

    @app.task(name=STEP_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
    def step(self: Any, envelope: Any) -> str:
        try:
            return agent.handle(envelope)
        except Exception as exc:  # noqa: BLE001 - e.g. the broker went away while publishing
            _log.warning("agent.publish_failed", error=f"{type(exc).__name__}: {exc}")
            time.sleep(2.0)
            raise Reject(str(exc), requeue=True) from None

    return app, agent


def serve(config: AgentConfig, broker: BrokerSettings, options: WorkerOptions = WorkerOptions()) -> None:
    """Run the worker until it is stopped (SIGTERM: warm shutdown; the current steps finish)."""
    app, agent = build_app(config, broker, options)
    try:
        agent.flush_outbox()
    except Exception as exc:  # noqa: BLE001 - the broker may not be up yet; the first step retries
        _log.warning("agent.outbox_pending", error=str(exc))
    worker = app.Worker(
        hostname=f"{config.agent_id}@{os.uname().nodename}", pool_cls="threads",
        concurrency=options.concurrency, queues=[steps_queue(config.tenant)], loglevel=options.loglevel,
        without_gossip=True, without_mingle=True, without_heartbeat=True, optimization="fair",
        prefetch_multiplier=1, quiet=True,
    )
    try:
        worker.start()
    finally:
        agent.close()
        config.store.close()
    code = getattr(worker, "exitcode", 0) or 0
    if code:
        raise SystemExit(code)
