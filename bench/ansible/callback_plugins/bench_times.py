"""Ansible callback for bench/bench_contain.py: the end time of every task on every host (JSON lines).

Enabled by the bench with ANSIBLE_CALLBACKS_ENABLED=bench_times; writes to $IRKIT_BENCH_TIMES one line
per host result: {"t": epoch seconds, "task": name, "host": host, "status": ok|changed|failed|unreachable|skipped}
and one per play/playbook start. Only times and names, no task output (no secrets).
"""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: bench_times
    type: aggregate
    short_description: per-host task end times for the irkit containment bench
    description: writes task end times to the file named by IRKIT_BENCH_TIMES
    requirements: [enable in configuration]
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "bench_times"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        path = os.environ.get("IRKIT_BENCH_TIMES")
        self._fh = open(path, "a", buffering=1) if path else None

    def _write(self, **fields: object) -> None:
        if self._fh is not None:
            self._fh.write(json.dumps({"t": time.time(), **fields}) + "\n")

    def v2_playbook_on_start(self, playbook) -> None:  # noqa: ANN001
        self._write(event="playbook.start", playbook=os.path.basename(playbook._file_name))

    def v2_playbook_on_task_start(self, task, is_conditional) -> None:  # noqa: ANN001
        self._write(event="task.start", task=task.get_name())

    def _result(self, result, status: str) -> None:  # noqa: ANN001
        self._write(event="host.result", task=result._task.get_name(), host=result._host.get_name(),
                    status=status)

    def v2_runner_on_ok(self, result) -> None:  # noqa: ANN001
        self._result(result, "changed" if result._result.get("changed") else "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False) -> None:  # noqa: ANN001
        self._result(result, "ignored" if ignore_errors else "failed")

    def v2_runner_on_unreachable(self, result) -> None:  # noqa: ANN001
        self._result(result, "unreachable")

    def v2_runner_on_skipped(self, result) -> None:  # noqa: ANN001
        self._result(result, "skipped")

    def v2_playbook_on_stats(self, stats) -> None:  # noqa: ANN001
        self._write(event="playbook.end",
                    failed=sorted(h for h in stats.processed if stats.failures.get(h) or stats.dark.get(h)))
