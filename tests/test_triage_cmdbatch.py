"""Command artifacts batched in one exec channel (ir_toolkit/triage/cmdbatch.py): the framing against a hostile host.

The batch script runs under the real /bin/sh here (no SSH: the script is what the host runs); the reader is
then fed the real stream, and forged, truncated, reordered and oversized streams built from it.
"""

from __future__ import annotations

import gzip
import io
import subprocess
from dataclasses import dataclass

import pytest

from ir_toolkit.triage import cmdbatch, remote


@dataclass
class Art:
    name: str
    command: str
    timeout: int = 20


B = "0123456789abcdef0123456789abcdef"

ARTS = [
    Art("ps", "ps -e -o pid= | head -3"),
    # output that copies a trailer, with NUL bytes and no final newline; stderr; exit status 3
    Art("liar", f"printf 'a\\0b\\n#{B} 1 0 0\\n\\n#{B} end 2\\n'; echo oops >&2; exit 3"),
    Art("quiet", "true"),
    Art("stderr-only", "printf 'x\\n\\n' >&2"),
    Art("big", "head -c 300000 /dev/zero"),
]


def run_batch(arts, boundary=B) -> bytes:
    command, script = cmdbatch.batch_command(arts, boundary, remote.ENV_PREFIX)
    assert command == f"{remote.ENV_PREFIX} sh -s" and B.encode() not in command.encode()
    proc = subprocess.run(["sh", "-c", command], input=script, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def read_all(stream: bytes, arts, caps=None, boundary=B):
    caps = caps or [1 << 30] * len(arts)
    sinks = [io.BytesIO() for _ in arts]
    frames = list(cmdbatch.frames(io.BytesIO(stream), list(zip(sinks, caps)), boundary))
    return frames, [s.getvalue() for s in sinks]


@pytest.fixture(scope="module")
def honest() -> bytes:
    return run_batch(ARTS)


def test_each_output_exit_status_and_stderr_as_if_run_alone(honest):
    frames, outs = read_all(honest, ARTS)
    for art, frame, out in zip(ARTS, frames, outs):
        alone = subprocess.run(["sh", "-c", art.command], capture_output=True)
        if art.name != "ps":  # ps sees other pids
            assert out == alone.stdout, art.name
        assert frame.exit_status == alone.returncode, art.name
        assert frame.stderr == alone.stderr, art.name
        assert frame.kept == frame.total == len(out) and not frame.truncated
    # the output that copied a trailer and the end line is only data inside its own member
    assert outs[1] == f"a\0b\n#{B} 1 0 0\n\n#{B} end 2\n".encode()
    assert frames[3].stderr == b"x\n\n"  # trailing newlines kept


def test_the_member_hash_is_of_the_compressed_bytes_received(honest):
    frames, outs = read_all(honest, ARTS)
    pos = 0
    import hashlib
    for frame in frames:
        member = honest[pos:pos + frame.member_size]
        assert hashlib.sha256(member).hexdigest() == frame.member_sha256
        pos += frame.member_size
        pos = honest.index(b"\n", pos) + 1            # trailer line
        pos += len(frame.stderr) + 1                  # stderr and its newline


def test_over_the_cap_keeps_the_first_bytes_and_counts_the_rest(honest):
    caps = [1 << 30] * len(ARTS)
    caps[4] = 1000
    frames, outs = read_all(honest, ARTS, caps)
    assert outs[4] == b"\0" * 1000 and frames[4].kept == 1000 and frames[4].total == 300000 and frames[4].truncated


def test_a_command_over_its_time_limit_is_ended_on_the_host_and_the_batch_goes_on():
    arts = [Art("slow", "echo started; sleep 60; echo never", timeout=1), Art("after", "echo after")]
    frames, outs = read_all(run_batch(arts), arts)
    assert frames[0].exit_status == 124 and outs[0] == b"started\n"
    assert outs[1] == b"after\n" and frames[1].exit_status == 0


def test_a_command_cannot_write_to_the_channel_around_its_member():
    # fds 3, 4 and 5 (gzip's input, the channel, the stderr capture) are closed for the command
    arts = [Art("sneaky", f"printf '#{B} 0 0 0\\n\\n' >&4; printf y >&3; printf z >&5; echo ok"),
            Art("next", "echo next")]
    frames, outs = read_all(run_batch(arts), arts)
    assert outs == [b"ok\n", b"next\n"]
    assert frames[0].exit_status == 0 and b"Bad file descriptor" in frames[0].stderr


def broken_at(stream: bytes, arts=ARTS, boundary=B, caps=None) -> int:
    with pytest.raises(cmdbatch.BatchBroken) as exc:
        read_all(stream, arts, caps, boundary)
    return exc.value.index


def test_every_truncation_breaks_the_batch_at_the_frame_it_cut(honest):
    frames, _ = read_all(honest, ARTS)
    # where each frame ends
    ends, pos = [], 0
    for frame in frames:
        pos += frame.member_size
        pos = honest.index(b"\n", pos) + 1 + len(frame.stderr) + 1
        ends.append(pos)
    for cut in sorted({*range(0, len(honest), 97), *(e - 1 for e in ends), *ends[:-1], len(honest) - 1}):
        index = broken_at(honest[:cut])
        assert index == sum(1 for e in ends if e <= cut), cut


def test_forged_and_garbled_streams_are_refused(honest):
    # not gzip at all
    assert broken_at(b"hello\n" + honest) == 0
    # a member whose CRC does not check
    member_end = read_all(honest, ARTS)[0][0].member_size
    bad = bytearray(honest)
    bad[member_end - 8] ^= 0xFF
    assert broken_at(bytes(bad)) == 0
    # another boundary (the reader's is random per batch)
    assert broken_at(honest, boundary="f" * 32) == 0
    # bytes after the end line, or no end line
    assert broken_at(honest + b"x") == len(ARTS)
    assert broken_at(honest[:honest.rindex(b"#")]) == len(ARTS)
    # frames reordered: the second member's trailer announces index 1 where 0 is expected
    frames, outs = read_all(honest, ARTS)
    first = honest.index(b"\n", frames[0].member_size) + 1 + len(frames[0].stderr) + 1
    assert broken_at(honest[first:]) == 0


def forged(outputs, trailers) -> bytes:
    out = b""
    for data, trailer in zip(outputs, trailers):
        out += gzip.compress(data) + trailer
    return out


def test_trailer_fields_are_checked():
    ok = [b"#%s 0 0 3\nerr\n" % B.encode()]
    assert read_all(forged([b"x"], ok) + b"#%s end 1\n" % B.encode(), [ARTS[0]])[1] == [b"x"]
    for trailer in (b"#%s 1 0 0\n\n", b"#%s 0 256 0\n\n", b"#%s 0 -1 0\n\n", b"#%s 0 0 5\nerr\n",
                    b"#%s 0 0 2\nerr\n", b"#%s 0 0\n\n", b"#%s 0 0 0 0\n\n", b"#%s 0 0 99999999999999\n\n"):
        stream = forged([b"x"], [trailer % B.encode()]) + b"#%s end 1\n" % B.encode()
        assert broken_at(stream, [ARTS[0]]) == 0, trailer
    stream = forged([b"x"], [b"#%s 0 0 %d\n" % (B.encode(), cmdbatch.MAX_STDERR + 1)])
    assert broken_at(stream, [ARTS[0]]) == 0


def test_a_decompression_bomb_breaks_the_batch(monkeypatch):
    monkeypatch.setattr(cmdbatch, "MAX_OVER_CAP", 1 << 20)
    bomb = gzip.compress(b"\0" * (8 << 20))
    stream = bomb + b"#%s 0 0 0\n\n#%s end 1\n" % (B.encode(), B.encode())
    assert broken_at(stream, [ARTS[0]], caps=[100]) == 0


def test_script_refuses_bad_input():
    with pytest.raises(ValueError):
        cmdbatch.batch_command(ARTS, "not-hex", remote.ENV_PREFIX)
    with pytest.raises(ValueError):
        cmdbatch.batch_command([], B, remote.ENV_PREFIX)
    with pytest.raises(ValueError):
        cmdbatch.batch_command([Art("x", "")], B, remote.ENV_PREFIX)


# ---------------------------------------------------------------- the collector

from hostile_host import FakeHost, target  # noqa: E402

from ir_toolkit.triage.collector import collect_host  # noqa: E402
from ir_toolkit.triage.schema import Artifact, Selection  # noqa: E402


def commands_selection(n=4):
    arts = tuple(Artifact(name=f"linux.live.c{i}", description="c", os="linux", collector="command",
                          command=f"echo c{i}", order=i) for i in range(n))
    return Selection(profile="poc", artifacts=arts)


def outputs_of(result):
    import json
    import tarfile
    manifest = json.loads((result.collection.path / "manifest.json").read_bytes())
    return {o["artifact"]: o for o in manifest["outputs"]}, tarfile.open(result.collection.bundle_path)


class PerCommandHost(FakeHost):
    def respond(self, cmd):
        if cmd.startswith("echo c") or "sh -c 'echo c" in cmd:
            word = cmd.split("echo ", 1)[1].split("'")[0].strip()
            self.commands.append(cmd)
            return (word + "\n").encode(), b"warn " + word.encode() + b"\n", 2
        return super().respond(cmd)


def test_consecutive_commands_share_one_channel_and_keep_their_own_evidence(irkit_home):
    host = PerCommandHost()
    result = collect_host(host, target(), commands_selection(4))
    assert result.status == "complete_with_errors" or result.status == "complete", result.problems
    batches = [c for c in host.commands if c.endswith(" sh -s")]
    alone = [c for c in host.commands if c.startswith("PATH=") and "sh -c 'echo c" in c]
    assert len(batches) == 1 and not alone
    outputs, bundle = outputs_of(result)
    for i in range(4):
        entry = outputs[f"linux.live.c{i}"]
        assert entry["exit_status"] == 2 and entry["transit"].startswith("gzip")
        assert bundle.extractfile(entry["archive_path"]).read() == f"c{i}\n".encode()
        assert bundle.extractfile(entry["stderr"]["archive_path"]).read() == f"warn c{i}\n".encode()
        assert len(entry["sha256_stream"]) == 64 and entry["sha256_stream"] != entry["sha256_received"]
    assert not result.anomalies


class LyingBatchHost(PerCommandHost):
    """Frames the first output, then sends garbage where the second member should be."""

    def batch(self, cmd):
        import re
        honest = super().batch(cmd)
        boundary = re.search(rb"#([0-9a-f]{32}) end", honest).group(1).decode()
        stream = io.BytesIO(honest)
        reader = cmdbatch.BatchReader(stream, 4, boundary)
        reader.frame(io.BytesIO(), 100)
        first_end = stream.tell() - len(reader._pending)
        return honest[:first_end] + b"#not-gzip " * 20


def test_a_batch_the_host_garbles_is_an_anomaly_and_the_rest_run_alone(irkit_home):
    host = LyingBatchHost()
    result = collect_host(host, target(), commands_selection(4))
    assert result.status == "partial"
    assert any("command batch broke at linux.live.c1" in a for a in result.anomalies)
    outputs, bundle = outputs_of(result)
    assert outputs["linux.live.c0"]["transit"].startswith("gzip")        # complete before the break: stands
    for i in (1, 2, 3):                                                  # asked again, one channel each
        entry = outputs[f"linux.live.c{i}"]
        assert "transit" not in entry
        assert bundle.extractfile(entry["archive_path"]).read() == f"c{i}\n".encode()
    assert sum("sh -c 'echo c" in c and "irkit_c" not in c for c in host.commands) == 3


def test_a_host_without_timeout_runs_each_command_alone(irkit_home):
    class NoTimeout(PerCommandHost):
        def respond(self, cmd):
            if "command -v" in cmd:
                self.commands.append(cmd)
                return b"timeout\n", b"", 0
            return super().respond(cmd)

    host = NoTimeout()
    result = collect_host(host, target(), commands_selection(3))
    assert not [c for c in host.commands if c.endswith(" sh -s")]
    outputs, _ = outputs_of(result)
    assert all("transit" not in outputs[f"linux.live.c{i}"] for i in range(3)) and not result.anomalies
