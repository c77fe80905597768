"""The live artifacts spawn a fixed handful of processes, whatever the number of processes on the host.

Each per-process artifact runs, as written in the catalogue, in a private PID namespace holding 60 extra
processes (one with a newline and a tab in its command line, a few distinct binaries). PIDs are handed out in
order inside the namespace, so the PIDs used up while the artifact ran are the processes it started: that count
must not grow with the process count (the old loops started 2-5 per process). The output still has one row per
process, and a crafted command line cannot add rows.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ir_toolkit.triage.remote import command_for
from ir_toolkit.triage.schema import load_catalog

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                                reason="a private PID namespace needs root")

EXTRA = 60
ARTIFACTS = ["linux.live.process_details", "linux.live.process_hashes", "linux.live.process_environment",
             "linux.live.deleted_binaries", "linux.live.deleted_open_files", "linux.live.process_strings",
             "linux.logs.web_catalina", "linux.live.kernel_modules"]


def _run_in_namespace(tmp_path: Path, name: str) -> tuple[int, bytes, dict[str, str]]:
    """(processes the artifact started, its output, {pid: binary path}) with EXTRA extra processes running."""
    command = command_for(load_catalog().artifacts[name])
    (tmp_path / "cmd.sh").write_text(command)
    bins = {}
    for i in range(4):
        b = tmp_path / f"bin{i}"
        shutil.copy("/bin/sleep", b)
        with open(b, "ab") as f:
            f.write(b"%d" % i)
        bins[str(b)] = hashlib.sha256(b.read_bytes()).hexdigest()
    script = f"""
for i in $(seq {EXTRA}); do {tmp_path}/bin$((i % 4)) 60 & done
perl -e '$0 = "evil\\nrow\\tx"; sleep 60' &
sleep 0.5
first=$(sh -c 'echo $$')
sh {tmp_path}/cmd.sh > {tmp_path}/out 2>/dev/null
last=$(sh -c 'echo $$')
echo "$first $last"
"""
    run = subprocess.run(["unshare", "--pid", "--fork", "--mount", "--mount-proc", "sh", "-c", script],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    first, last = (int(x) for x in run.stdout.split()[-2:])
    return last - first - 1, (tmp_path / "out").read_bytes(), bins


@pytest.mark.parametrize("name", ARTIFACTS)
def test_processes_started_do_not_grow_with_the_process_count(tmp_path, name):
    started, _, _ = _run_in_namespace(tmp_path, name)
    assert started <= 25, f"{name} started {started} processes for {EXTRA} running ones"


def test_process_details_has_one_row_per_process_and_no_forged_rows(tmp_path):
    _, out, _ = _run_in_namespace(tmp_path, "linux.live.process_details")
    rows = [line.split("\t", 5) for line in out.decode().splitlines()[1:]]
    pids = [r[0] for r in rows]
    assert all(p.isdigit() for p in pids) and len(pids) == len(set(pids)) and len(pids) > EXTRA
    evil = [r for r in rows if r[5].startswith("evil")]
    assert len(evil) == 1 and evil[0][5].startswith("evil\\nrow\tx"), evil
    assert all(len(r) == 6 for r in rows)


def test_process_hashes_hash_each_running_binary(tmp_path):
    _, out, bins = _run_in_namespace(tmp_path, "linux.live.process_hashes")
    rows = [line.split("\t") for line in out.decode().splitlines()[1:]]
    seen = {r[2]: r[1] for r in rows if r[2] in bins}
    assert seen == bins
    assert sum(1 for r in rows if r[2] in bins) == EXTRA
