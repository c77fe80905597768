"""The command tree: every command group exists and explains itself; errors are one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ir_toolkit import __version__
from ir_toolkit.cli.main import main

COMMANDS = ["contain", "rotate", "triage", "isolate", "reimage", "plan", "apply", "resume",
            "audit", "escrow", "evidence", "inventory", "keys", "lab"]


def run(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_version(capsys):
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and out.strip() == f"irkit, version {__version__}"


def test_help_lists_every_command(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    listed = {line.split()[0] for line in out.split("Commands:")[1].splitlines() if line.strip()}
    assert set(COMMANDS) <= listed


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(command, capsys):
    code, out, _ = run([command, "--help"], capsys)
    assert code == 0 and "Usage: irkit " + command in out


def test_audit_and_inventory_subcommands(capsys):
    _, out, _ = run(["audit", "--help"], capsys)
    assert {"verify", "show", "report"} <= set(out.split())
    _, out, _ = run(["inventory", "--help"], capsys)
    assert {"validate", "list"} <= set(out.split())


def test_console_script_runs_without_traceback(tmp_path):
    irkit = Path(sys.executable).with_name("irkit")
    proc = subprocess.run([str(irkit), "inventory", "validate", str(tmp_path / "missing.yml")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("missing.yml: inventory not found")
    assert "Traceback" not in proc.stderr


def test_bad_case_id_is_refused(capsys):
    code, _, err = run(["resume", "--case", "../../etc"], capsys)
    assert code == 2 and "invalid case id" in err and err.count("\n") == 1
