"""Finding 18 (security review), the parts about the console and the SSH channel:

* console output (progress lines, the CLI's error line) is redacted like the run log;
* `SshConnection.run` fed stdin before reading any output: a command that answers a large stdin
  (sha256sum over tens of thousands of paths) deadlocked on the channel windows. stdin is now fed
  from a thread; and stdout/stderr held in memory are bounded.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from rich.console import Console

from ir_toolkit.redaction import forget_secrets, register_secret
from ir_toolkit.transports.ssh import TransportError


def test_progress_messages_are_redacted():
    from ir_toolkit.cli.progress import RunDisplay

    register_secret("N3w-Pa55word-xyz!")
    try:
        display = RunDisplay(tty=False)
        buf = io.StringIO()
        display.console = Console(file=buf, width=300, highlight=False)
        display("host.done", {"tenant": "t", "host": "h", "status": "failed",
                              "message": "chpasswd: bad password N3w-Pa55word-xyz! for root"})
        assert "N3w-Pa55word-xyz!" not in buf.getvalue() and "[REDACTED]" in buf.getvalue()
    finally:
        forget_secrets()


def test_cli_error_line_is_redacted():
    code = ("from ir_toolkit.redaction import register_secret; register_secret('S3cr3t-value-123'); "
            "from ir_toolkit.cli import main as m; m._fail('host echoed S3cr3t-value-123', 1)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "S3cr3t-value-123" not in proc.stderr and "[REDACTED]" in proc.stderr




@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("starting sshd needs root")
    from triage_helpers import start_sshd

    server = start_sshd(tmp_path_factory.mktemp("sshd18"))
    yield server
    server.stop()


@pytest.mark.lab
def test_large_stdin_with_large_output_does_not_deadlock(sshd):
    """8 MiB in, 8 MiB out (`cat`): with stdin sent before reading, both windows fill and nothing moves."""
    conn = sshd.connect()
    try:
        data = os.urandom(8 << 20)
        result = conn.run("cat", stdin=data, timeout=60)
        assert result.exit_status == 0 and result.stdout == data
    finally:
        conn.close()


@pytest.mark.lab
def test_run_output_is_bounded(sshd):
    conn = sshd.connect()
    try:
        with pytest.raises(TransportError, match="output over"):
            conn.run("head -c 3000000 /dev/zero", timeout=60, max_output=1 << 20)
        result = conn.run("head -c 5000000 /dev/zero >&2; echo ok", timeout=60)
        assert result.stdout == b"ok\n" and len(result.stderr) <= (1 << 20) + 100
        assert b"bytes omitted" in result.stderr
    finally:
        conn.close()


def test_bundle_files_are_private(irkit_home):
    """Bundle, manifest and seal are created 0600 (copies made with cp -r or rsync stay private)."""
    import stat as st

    from hostile_host import END, FakeHost, digest, file_selection, member, stat_record, target
    from ir_toolkit.triage.collector import collect_host

    host = FakeHost(stats=stat_record("/etc/x", 3), hashes=digest(b"abc") + b"  /etc/x\0", tar=member("etc/x", b"abc") + END)
    result = collect_host(host, target(), file_selection(["/etc/x"]))
    for name in ("bundle.tar", "manifest.json", "seal.json"):
        assert st.S_IMODE((result.collection.path / name).stat().st_mode) == 0o600, name
