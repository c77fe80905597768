"""Run the irkit CLI with every SSH exec channel and every new SSH connection counted, per (phase, action).

    python tests/channel_counter.py OUT.json irkit-args...

Used by tests/test_channel_counts_lab.py (#17: the counts must not creep back). The counting wraps the
real transport (``SshConnection.open``/``run``/``exec_stream``) and the engine's ``_run_item`` (which
phase and action a worker thread is running); nothing else changes.
"""

from __future__ import annotations

import atexit
import collections
import json
import sys
import threading

from ir_toolkit.playbook import engine as engine_mod
from ir_toolkit.transports import ssh as ssh_mod

_local = threading.local()
_lock = threading.Lock()
counts: collections.Counter[str] = collections.Counter()


def _bump(kind: str) -> None:
    key = getattr(_local, "key", None) or "outside a step"
    with _lock:
        counts[f"{key}|{kind}"] += 1


def install() -> None:
    run_item = engine_mod.Engine._run_item
    open_ = ssh_mod.SshConnection.open.__func__  # type: ignore[attr-defined]
    run = ssh_mod.SshConnection.run
    stream = ssh_mod.SshConnection.exec_stream

    def counted_item(self, host, item, deadline):  # type: ignore[no-untyped-def]
        _local.key = f"{item.phase}|{item.action}"
        try:
            return run_item(self, host, item, deadline)
        finally:
            _local.key = None

    def counted_open(cls, *args, **kwargs):  # type: ignore[no-untyped-def]
        _bump("connections")
        return open_(cls, *args, **kwargs)

    def counted_run(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        _bump("channels")
        return run(self, *args, **kwargs)

    def counted_stream(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        _bump("channels")
        return stream(self, *args, **kwargs)

    engine_mod.Engine._run_item = counted_item  # type: ignore[method-assign]
    ssh_mod.SshConnection.open = classmethod(counted_open)  # type: ignore[method-assign, assignment]
    ssh_mod.SshConnection.run = counted_run  # type: ignore[method-assign]
    ssh_mod.SshConnection.exec_stream = counted_stream  # type: ignore[method-assign]


if __name__ == "__main__":
    out = sys.argv[1]
    install()
    atexit.register(lambda: open(out, "w").write(json.dumps(dict(counts), sort_keys=True)))
    from ir_toolkit.cli.main import main

    main(sys.argv[2:])
