"""Issue 15 "Done when" on the lab: one trace per covered triage category, planted on one host, is found in
that host's verified bundle after the containment playbook ran.

Data-driven: ``ir_toolkit.lab.traces.TRACES`` is the table (row -> trace to plant -> archive member and the
text it must hold). The bundle is encrypted (the playbook's ``encrypt: true``), verified with
``irkit evidence verify`` and extracted with ``irkit evidence extract``; every check reads the extracted files.
"""

from __future__ import annotations

import json
import re
import tarfile
import time
import zlib
from pathlib import Path

import pytest

from containment_helpers import contain_playbook, irkit, keyed_env
from ir_toolkit.lab.traces import TRACES, plant
from triage_coverage import COVERAGE, DEFERRED

pytestmark = pytest.mark.lab

CASE = "COVERAGE-LAB"


@pytest.fixture(scope="module")
def collected(lab_factory, tmp_path_factory):
    lab = lab_factory("tcov", tenants=1, hosts_per_tenant=1)
    env = keyed_env(lab)
    host = lab.info["hosts"][0]["name"]
    values = plant(lab.lab, host)
    playbook = contain_playbook(lab, tmp_path_factory.mktemp("pb") / "contain.yml")
    started = time.monotonic()
    proc = irkit(env, "contain", "--inventory", str(lab.inventory_path), "--playbook", str(playbook),
                 "--case", CASE, "--yes", "--format", "json", timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    elapsed = time.monotonic() - started
    verify = irkit(env, "evidence", "verify", "--case", CASE, "--format", "json")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    reports = json.loads(verify.stdout)
    # the playbook seals a volatile snapshot before isolation and the full triage after it
    assert {r["host"] for r in reports} == {host} and sorted(r["kind"] for r in reports) == ["full", "volatile"]
    assert all(r["result"] == "ok" and r["contents"] == "re-hashed" for r in reports), reports
    full = next(r for r in reports if r["kind"] == "full")
    out = tmp_path_factory.mktemp("bundle") / "x"
    extract = irkit(env, "evidence", "extract", "--case", CASE, "--host", host, "--collection", full["collection"],
                    "--out", str(out))
    assert extract.returncode == 0, extract.stdout + extract.stderr
    return {"out": out, "values": values, "host": host, "elapsed": elapsed}


def _member_text(out: Path, member: str) -> str:
    path = out / member
    assert path.is_file(), f"{member} is not in the bundle"
    data = path.read_bytes()
    if member.endswith(".gz"):  # an output the host compressed (bounded: the test reads at most 1 GiB of it)
        data = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, 1 << 30)
    if member.endswith(".tar"):
        parts = []
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                if m.isfile():
                    parts.append(tar.extractfile(m).read())
        data = b"\n".join(parts)
    return data.decode("utf-8", "replace")


@pytest.mark.parametrize("trace", TRACES, ids=[t.row for t in TRACES])
def test_trace_is_in_the_verified_bundle(collected, trace):
    out, values = collected["out"], collected["values"]
    expected = trace.expected(values)
    assert expected, trace
    if trace.member == "manifest.json":
        manifest = json.loads((out / "manifest.json").read_text())
        entry = {e["source_path"]: e for e in manifest["files"]}.get(expected)
        assert entry is not None, f"{trace.row}: {expected} not in the manifest"
        assert entry["status"] in ("collected", "hashed", "recorded"), entry
        assert entry["status"] == "recorded" or entry["sha256_host"], entry
        return
    text = _member_text(out, trace.member)
    assert expected in text, f"{trace.row} ({trace.category}): {expected!r} not in {trace.member}"


def test_every_covered_row_has_a_trace_and_every_artifact_ran(collected):
    rows = {re.sub(r"[a-z]$", "", t.row) for t in TRACES}
    covered = {row for row, (_, verdict, _) in COVERAGE.items() if verdict == "covered"}
    assert covered <= rows, f"covered rows without a planted trace: {sorted(covered - rows)}"
    assert not (rows & set(DEFERRED)), "a deferred row has a trace"
    manifest = json.loads((collected["out"] / "manifest.json").read_text())
    status = {a["name"]: a["status"] for a in manifest["artifacts"]}
    assert status.pop("linux.live.reveal_hidden_processes") == "not_run"
    assert all(s in ("ok", "errors") for s in status.values()), status
    assert manifest["status"] in ("complete", "complete_with_errors")
