"""Finding 17 (security review): host data was interpolated into shell code unquoted
(home directories through shell_glob, $SSH_CONNECTION in `sshd -T`).

Ported from security-pocs/poc_glob.py: the evil home directory now stays a literal path.
"""

from __future__ import annotations

import os
import subprocess
from types import SimpleNamespace

import pytest

from ir_toolkit.actions import sshd
from ir_toolkit.actions.base import ActionContext, ActionFailed
from ir_toolkit.triage import remote
from ir_toolkit.triage.schema import load_catalog


def test_home_directory_cannot_inject_shell(tmp_path):
    art = load_catalog().artifacts["linux.remote_access.logs"]
    marker = tmp_path / "PWNED-by-home"
    evil_home = f"/a[;do :;done;touch {marker};for q in ]"
    roots = remote.expand_roots(art, [evil_home])
    cmd = remote.enumerate_command(art, [r for r, _ in roots], glob=True)
    proc = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=20)
    assert not marker.exists(), "the host's home directory ran as shell code"
    # ... and the home is reported as a literal path that does not exist
    absent = [line for line in proc.stderr.splitlines() if line.startswith(remote.ABSENT_MARK)]
    assert any(evil_home in line for line in absent), proc.stderr[:500]


def test_home_with_glob_characters_is_literal(tmp_path):
    """A legitimate home containing `[ ]` or `*` matches itself only (it used to break or over-match)."""
    home = tmp_path / "home [x]*"
    other = tmp_path / "home x"   # would match the unescaped pattern `home [x]*`
    for base in (home, other):
        (base / ".local/share").mkdir(parents=True)
        (base / ".local/share/teamviewer15").write_text("log\n")
    art = load_catalog().artifacts["linux.remote_access.logs"]
    roots = remote.expand_roots(art, [str(home)])
    cmd = remote.enumerate_command(art, [r for r, _ in roots], glob=True)
    proc = subprocess.run(["sh", "-c", cmd], capture_output=True, timeout=20)
    listed = {s.path for s in remote.parse_stat(proc.stdout)}
    assert listed == {str(home / ".local/share/teamviewer15")}, proc.stderr[:300]


def test_shell_glob_quotes_everything_but_safe_patterns():
    assert remote.shell_glob("/var/log/[abc]*.log") == "/var/log/[abc]*.log"
    quoted = remote.shell_glob("/x/[;rm -rf /]")
    out = subprocess.run(["sh", "-c", f"printf '%s' {quoted}"], capture_output=True, text=True).stdout
    assert out == "/x/[;rm -rf /]"
    assert remote.shell_glob(remote.glob_escape("/h*me/?") + "/*") .startswith("'/h*me/?/'")


class _Ctx:
    """Just enough of an ActionContext: its ``run`` and its ``fact`` (the real one, unbound)."""

    planning = False
    memo = None
    step_facts = None

    def __init__(self, text: str) -> None:
        self.text = text

    def run(self, script, *, stdin=None, timeout=None):  # noqa: ANN001
        return SimpleNamespace(exit_status=0, stdout=self.text.encode(), stderr=b"")

    fact = ActionContext.fact


@pytest.mark.parametrize("seen", ["10.0.0.1;touch /tmp/x", "$(id)", "::1::x", "host.example"])
def test_ssh_connection_address_is_validated(seen):
    with pytest.raises(ActionFailed, match="invalid client address"):
        sshd.client_address(_Ctx(seen + "\n"))


def test_ssh_connection_address_ok():
    assert sshd.client_address(_Ctx("198.18.0.1\n")) == "198.18.0.1"
    assert os.sep == "/"
