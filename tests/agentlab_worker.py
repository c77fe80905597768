"""A minimal Celery worker for the lab broker tests (stands in for `irkit agent` where a test checks
the lab's broker, ACLs and supervision rather than irkit's protocol).

    python tests/agentlab_worker.py worker --tenant T --broker URL --user U --password-file F --ca F --cert F --key F
    python tests/agentlab_worker.py send   --tenant T ... --marker-dir D --step ID [--sleep S]

The worker runs with the settings an irkit agent uses (acks late, reject on worker lost, prefetch 1,
the tenant's key prefix, TLS with the lab CA and a client certificate). Its one task writes
``<marker-dir>/<step>.<pid>`` when it starts and ``<step>.done`` when it ends, so a test sees which
process ran a step and that it finished.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import time
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from celery import Celery


def make_app(args: argparse.Namespace) -> Celery:
    password = Path(args.password_file).read_text().strip()
    parts = urlsplit(args.broker)
    netloc = f"{quote(args.user, safe='')}:{quote(password, safe='')}@{parts.hostname}:{parts.port}"
    url = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    app = Celery("irkit-lab-test", broker=url)
    app.conf.update(
        broker_use_ssl={"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": args.ca, "ssl_certfile": args.cert,
                        "ssl_keyfile": args.key},
        # kombu sweeps unacked messages every interval x throttle seconds (default 10 x 10): a killed
        # worker's step would wait ~100 s past its visibility timeout
        broker_transport_options={"global_keyprefix": f"irkit:{args.tenant}:", "visibility_timeout": args.visibility,
                                  "unacked_restore_interval": 2, "unacked_restore_throttle": 1},
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=f"steps.{args.tenant}",
        accept_content=["json"],
        task_serializer="json",
        result_backend=None,
        task_ignore_result=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )

    @app.task(name="irkit_test.step", bind=True)
    def step(self, marker_dir: str, step_id: str, sleep: float = 0.0) -> None:
        d = Path(marker_dir)
        (d / f"{step_id}.{os.getpid()}").write_text(str(time.time()))
        time.sleep(sleep)
        (d / f"{step_id}.done").write_text(str(os.getpid()))

    return app


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["worker", "send"])
    for name in ("--tenant", "--broker", "--user", "--password-file", "--ca", "--cert", "--key"):
        parser.add_argument(name, required=True)
    parser.add_argument("--visibility", type=float, default=3600)
    parser.add_argument("--marker-dir")
    parser.add_argument("--step")
    parser.add_argument("--sleep", type=float, default=0.0)
    args = parser.parse_args(argv)
    app = make_app(args)
    if args.mode == "send":
        # while the broker is down the publish waits and retries (up to ~2 minutes)
        app.send_task("irkit_test.step", args=[args.marker_dir, args.step, args.sleep], retry=True,
                      retry_policy={"max_retries": 60, "interval_start": 0, "interval_step": 1, "interval_max": 2})
        return 0
    app.worker_main(["worker", "--pool", "prefork", "--concurrency", "1", "--loglevel", "INFO",
                     "--without-heartbeat", "--without-mingle", "--without-gossip"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
