"""A tiny process supervisor for the lab's agents: restarts its child when it dies, as systemd's
``Restart=always`` would in production (docs/systemd/irkit-agent@.service).

Run as a plain script (standard library and :mod:`ir_toolkit.childenv` only, so it starts fast and
holds ~15 MiB)::

    python3 -I ir_toolkit/lab/supervisor.py --pidfile F --log F [--backoff S] -- CMD ARG...

* The child gets the supervisor's environment (the lab gives it a clean one), stdin ``/dev/null``,
  stdout and stderr appended to ``--log``; it dies with the supervisor (``PR_SET_PDEATHSIG``:
  SIGKILL), so a killed supervisor leaves no orphan behind.
* After each (re)start the supervisor writes ``--pidfile`` atomically:
  ``{"pid", "start", "restarts", "supervisor"}`` (``start`` is the child's start time in clock
  ticks, field 22 of /proc/PID/stat, so readers can tell a reused pid).
* When the child exits, what is left of its process group (e.g. a worker's pool children) is
  killed, as systemd's ``KillMode=control-group`` does, so an orphan never finishes a step while
  the restarted agent runs it again.
* A child that dies is restarted after ``--backoff`` seconds, doubled up to 10 s while it keeps
  dying within 30 s of its start (like systemd's ``RestartSec`` with a start-limit), reset after a
  run that lasted longer. Each exit and restart is one line in ``--log``.
* SIGTERM/SIGINT: the child gets SIGTERM, SIGKILL after 10 s; then the supervisor exits 0.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # run as a script (python -I): irkit's own tree, for childenv only
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ir_toolkit import childenv  # noqa: E402 - the one way irkit starts processes

PR_SET_PDEATHSIG = 1
STOP_GRACE = 10.0
MAX_BACKOFF = 10.0
STABLE_AFTER = 30.0

_stopping = False


def _log(log: str, message: str) -> None:
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} supervisor[{os.getpid()}]: {message}\n")


def _start_time(pid: int) -> int | None:
    try:
        text = open(f"/proc/{pid}/stat", encoding="ascii", errors="replace").read()
    except OSError:
        return None
    return int(text[text.rfind(")") + 2:].split()[19])


def _write_pidfile(path: str, data: dict[str, object]) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, (json.dumps(data, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    os.setpgid(0, 0)


def _kill_group(pgid: int, log: str) -> None:
    """What systemd's KillMode=control-group does when a service's main process exits: whatever it
    left behind (a worker's pool children in its process group) is killed before the restart."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return
    except PermissionError:
        return
    _log(log, f"killed what was left of process group {pgid}")


def _on_signal(signum: int, _frame: object) -> None:
    global _stopping
    _stopping = True


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="supervisor")
    parser.add_argument("--pidfile", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--backoff", type=float, default=1.0)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give a command after --")
    os.chdir(os.path.dirname(os.path.abspath(args.pidfile)))  # not the (maybe temporary) cwd of `lab up`
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    restarts = 0
    backoff = args.backoff
    while not _stopping:
        started = time.monotonic()
        with open(args.log, "ab") as out:
            try:
                # the agent's environment: the supervisor's own (the lab gives it a clean one), through
                # childenv's allow list plus IRKIT_HOME; nothing secret is in either
                extra = {"IRKIT_HOME": os.environ["IRKIT_HOME"]} if "IRKIT_HOME" in os.environ else None
                child = childenv.popen(command, env=extra, python=True, stdin=childenv.DEVNULL, stdout=out,
                                       stderr=childenv.STDOUT, preexec_fn=_die_with_parent, close_fds=True)
            except OSError as exc:
                _log(args.log, f"cannot start {command[0]}: {exc.strerror}")
                child = None
        if child is not None:
            _write_pidfile(args.pidfile, {"pid": child.pid, "start": _start_time(child.pid), "restarts": restarts,
                                          "supervisor": os.getpid()})
            _log(args.log, f"started pid {child.pid} (restart {restarts})")
            while True:
                try:
                    status = child.wait(timeout=0.5)
                    break
                except childenv.TimeoutExpired:
                    if _stopping:
                        child.terminate()
                        try:
                            status = child.wait(timeout=STOP_GRACE)
                        except childenv.TimeoutExpired:
                            child.kill()
                            status = child.wait()
                        break
            how = f"signal {-status}" if status < 0 else f"status {status}"
            _log(args.log, f"pid {child.pid} exited ({how})")
            _kill_group(child.pid, args.log)
        if _stopping:
            break
        if time.monotonic() - started > STABLE_AFTER:
            backoff = args.backoff
        _log(args.log, f"restarting in {backoff:.1f} s")
        deadline = time.monotonic() + backoff
        while not _stopping and time.monotonic() < deadline:
            time.sleep(0.1)
        backoff = min(backoff * 2, MAX_BACKOFF)
        restarts += 1
    _log(args.log, "stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
