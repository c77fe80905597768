"""Finding 9 (security review): the triage step had no overall deadline; a trickling host held the phase barrier.

Ported from security-pocs/poc_stall.py §2: a host that sends one byte every few seconds (each gap under the
idle timeout) now ends at the absolute deadline, with what was collected sealed as `partial`.
The engine-level behaviour (the host ends `timed_out`, the other hosts move on) is tested on the lab in
tests/test_security_hostile_lab.py.
"""

from __future__ import annotations

import json
import time

from hostile_host import END, FakeHost, GenReader, digest, file_selection, pad, stat_record, tar_member, target
from ir_toolkit.triage.collector import collect_host


def test_trickling_tar_stream_ends_at_the_deadline(irkit_home):
    def slow():
        yield tar_member("etc/x", size=3)
        for b in (b"a", b"b", b"c"):
            time.sleep(2)
            yield b
        yield pad(3) + END

    host = FakeHost(stats=stat_record("/etc/x", 3), hashes=digest(b"abc") + b"  /etc/x\0",
                    tar=lambda: GenReader(slow()))
    start = time.monotonic()
    result = collect_host(host, target(), file_selection(["/etc/x"]), idle_timeout=5,
                          deadline=time.monotonic() + 3)
    took = time.monotonic() - start
    assert took < 5.5, f"the collection ran {took:.1f}s past a 3 s deadline"
    assert result.status == "partial" and result.timed_out
    manifest = json.loads((result.collection.path / "manifest.json").read_text())
    assert manifest["partial"]["timed_out"] is True
    outputs = {o["artifact"]: o for o in manifest["outputs"]}
    assert outputs["linux.live.processes"]["status"] == "collected", "volatile output sealed, not lost"
    entry = {f["source_path"]: f for f in manifest["files"]}["/etc/x"]
    assert entry["status"] == "failed"


def test_deadline_already_passed_seals_what_there_is(irkit_home):
    host = FakeHost(stats=stat_record("/etc/x", 3), hashes=digest(b"abc") + b"  /etc/x\0",
                    tar=b"")
    result = collect_host(host, target(), file_selection(["/etc/x"]), deadline=time.monotonic() - 1)
    assert result.timed_out and result.status == "partial"


def test_host_hash_timeout_ignores_claimed_sizes(irkit_home):
    """The hashing timeout used to grow with the sizes the host claims (120 s + size / 20 MB/s)."""
    calls = []

    class Host(FakeHost):
        def run(self, command, *, stdin=None, timeout=None):
            calls.append((command, timeout))
            return super().run(command, stdin=stdin, timeout=timeout)

    host = Host(stats=stat_record("/etc/x", 1 << 60), hashes=b"", tar=END)
    art = file_selection(["/etc/x"], cap=1 << 62, with_command=False)
    collect_host(host, target(), art, deadline=time.monotonic() + 100)
    hash_timeouts = [t for c, t in calls if "sha256sum" in c]
    assert hash_timeouts and max(hash_timeouts) <= 100
