"""Structured logging, configured once per process.

* People get short human lines on stderr (rich styling when it is a terminal).
* Machines get JSON lines in a per-run file (``configure(json_path=...)``),
  typically ``$IRKIT_HOME/cases/<case>/logs/<run>.jsonl``.
* Every event passes :func:`ir_toolkit.redaction.redaction_processor`
  before any renderer sees it, so a secret passed as a field by mistake is
  replaced by ``[REDACTED]`` in both outputs.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from pathlib import Path
from typing import IO, Any

import structlog

from ir_toolkit.redaction import redaction_processor
from ir_toolkit.timeutil import file_stamp, stamp

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}

# C0 controls, DEL, C1 controls, lone surrogates (bytes that were not UTF-8) and the bidi/format
# characters that reorder or hide text on a terminal.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")


def _escape_char(match: re.Match[str]) -> str:
    char = match.group(0)
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape'd byte of a name that is not UTF-8
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def printable(value: Any) -> str:
    """``value`` as text that is safe to put on a terminal: controls, escape sequences (ANSI/OSC),
    non-UTF-8 bytes and bidi overrides become visible ``\\xNN``/``\\uNNNN`` escapes; secrets are redacted.

    Everything a host returns (paths, messages, stderr) goes through this before it reaches a screen.
    """
    from ir_toolkit.redaction import redact_text

    return _UNPRINTABLE.sub(_escape_char, redact_text(value if isinstance(value, str) else str(value)))


class _Tee:
    """Final processor: write a JSON line to the run file, render a console line."""

    def __init__(self, json_file: IO[str] | None, console_level: int, color: bool, json_level: int = 20) -> None:
        self.json_file = json_file
        self.console_level = console_level
        self.json_level = json_level
        self.color = color
        self.lock = threading.Lock()

    def __call__(self, _logger: Any, method: str, event: dict[str, Any]) -> str:
        level = event.get("level", method)
        if self.json_file is not None and _LEVELS.get(level, 20) >= self.json_level:
            line = json.dumps(event, default=str, sort_keys=True)
            with self.lock:
                self.json_file.write(line + "\n")
                self.json_file.flush()
        if _LEVELS.get(level, 20) < self.console_level:
            raise structlog.DropEvent
        fields = " ".join(
            f"{printable(k)}={printable(v)}" for k, v in event.items()
            if k not in {"event", "level", "timestamp", "exception"}
        )
        text = printable(event.get("event", "")) + (f"  {fields}" if fields else "")
        if self.color:
            style = {"warning": "\x1b[33m", "error": "\x1b[31m", "critical": "\x1b[31;1m"}.get(level)
            if style:
                text = f"{style}{level}\x1b[0m: {text}"
            return text
        return f"{level}: {text}" if level != "info" else text


def _timestamp(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    event["timestamp"] = stamp()
    return event


_json_file: IO[str] | None = None


def configure(
    *,
    json_path: Path | None = None,
    verbosity: int = 0,
    stream: IO[str] | None = None,
) -> None:
    """(Re)configure structlog. ``verbosity`` 0 shows warnings, 1 info, 2 debug on the console.

    The JSON run file gets info and above (debug too at verbosity 2). Records below both levels
    are dropped at the call (a filtering bound logger): nothing formats, redacts or writes a debug
    record nobody reads — a triage run logs the fate of every path at debug, hundreds per host,
    and those stay in the bundle's own collection log (docs/performance.md, run-log budget).
    """
    global _json_file
    if _json_file is not None and _json_file is not sys.stderr:
        _json_file.close()
        _json_file = None
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(json_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        _json_file = os.fdopen(fd, "a", encoding="utf-8")
    out = stream if stream is not None else sys.stderr
    console_level = {0: 30, 1: 20}.get(verbosity, 10)
    json_level = 10 if verbosity >= 2 else 20
    min_level = min(console_level, json_level) if _json_file is not None else console_level
    color = hasattr(out, "isatty") and out.isatty() and not os.environ.get("NO_COLOR")

    def logger_factory(*_args: Any) -> structlog.PrintLogger:
        # Resolve sys.stderr at each call: a stream captured at configure time may be closed later
        # (tests, a redirected stderr), and logging must never fail because of that.
        return structlog.PrintLogger(stream if stream is not None else sys.stderr)

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _timestamp,
            # exc_info=True becomes the formatted traceback ("exception") in the JSON run log (redacted
            # like every field); the console line leaves it out.
            structlog.processors.format_exc_info,
            redaction_processor,
            _Tee(_json_file, console_level, color, json_level),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(min_level),
        logger_factory=logger_factory,
        cache_logger_on_first_use=False,
    )


def get_logger(name: str | None = None) -> Any:
    """A structlog logger; ``name`` becomes the ``component`` field."""
    # A lazy proxy: it picks up the configuration in force at each call, so a module-level
    # logger made at import time follows a later configure().
    return structlog.get_logger(component=name) if name else structlog.get_logger()


def run_log_path(case_dir: Path) -> Path:
    """A fresh per-run JSON log path in a case directory."""
    return case_dir / "logs" / f"{file_stamp()}-{os.getpid()}.jsonl"
