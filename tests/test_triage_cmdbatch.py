"""Command artifacts batched in one exec channel (ir_toolkit/triage/cmdbatch.py): the framing against a hostile host.

The batch script runs under the real /bin/sh here (no SSH: the script is what the host runs); the reader is
then fed the real stream, and forged, truncated, reordered and oversized streams built from it.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

import pytest

from ir_toolkit.transports.base import StreamResult
from ir_toolkit.triage import cmdbatch, remote


@dataclass
class Art:
    name: str
    command: str
    timeout: int = 20


B = "0123456789abcdef0123456789abcdef"
OLD = "fedcba9876543210fedcba9876543210"  # another batch's boundary (an intruder may have seen old streams)

ARTS = [
    Art("ps", "ps -e -o pid= | head -3"),
    # output that copies another batch's trailers, with NUL bytes and no final newline; stderr; exit status 3
    Art("liar", f"printf 'a\\0b\\n#{OLD} 1 0 0\\n\\n\\n#{OLD} end 2\\n#{B[:31]}'; echo oops >&2; exit 3"),
    Art("quiet", "true"),
    Art("stderr-only", "printf 'x\\n\\n' >&2"),
    Art("big", "head -c 300000 /dev/zero"),
    Art("no-newline", "printf 'tail'"),
]


def run_batch(arts, boundary=B, shell=("sh", "-c")) -> bytes:
    command, script = cmdbatch.batch_command(arts, boundary, remote.ENV_PREFIX)
    assert command == f"{remote.ENV_PREFIX} sh -s" and boundary.encode() not in command.encode()
    proc = subprocess.run([*shell, command], input=script, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


class Trickle(io.RawIOBase):
    """A stream that hands out a few bytes per read (so every mark is split across reads somewhere)."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.step, self.pos = data, step, 0

    def read1(self, n: int = -1) -> bytes:
        size = 1 + (self.pos * 7 + 3) % self.step
        out = self.data[self.pos:self.pos + min(n, size)]
        self.pos += len(out)
        return out


def read_all(stream: bytes, arts, caps=None, boundary=B, step=None):
    caps = caps or [1 << 30] * len(arts)
    sinks = [io.BytesIO() for _ in arts]
    source = io.BytesIO(stream) if step is None else Trickle(stream, step)
    frames = list(cmdbatch.frames(source, list(zip(sinks, caps)), boundary))
    return frames, [s.getvalue() for s in sinks]


@pytest.fixture(scope="module")
def honest() -> bytes:
    return run_batch(ARTS)


def test_each_output_exit_status_and_stderr_as_if_run_alone(honest):
    for step in (None, 3, 40, 300):  # whole, and trickled in reads of 1..step bytes
        frames, outs = read_all(honest, ARTS, step=step)
        for art, frame, out in zip(ARTS, frames, outs):
            alone = subprocess.run(["sh", "-c", art.command], capture_output=True)
            if art.name != "ps":  # ps sees other pids
                assert out == alone.stdout, art.name
            assert frame.exit_status == alone.returncode, art.name
            assert frame.stderr == alone.stderr, art.name
            assert frame.kept == frame.total == len(out) and not frame.truncated
        # the output that copied another batch's trailers and end line is only data of its own output
        assert outs[1] == f"a\0b\n#{OLD} 1 0 0\n\n\n#{OLD} end 2\n#{B[:31]}".encode()
        assert frames[3].stderr == b"x\n\n"  # trailing newlines kept
        assert outs[5] == b"tail"


def test_no_command_can_see_the_boundary():
    # everything a process on the host can read about the batch's processes: command lines, environments,
    # the shell's variables as a child sees them, the process listing - the boundary is in none of it
    arts = [Art("proc", "cat /proc/[0-9]*/cmdline /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'"),
            Art("ps", "ps -eww -o args"), Art("env", "env; set"), Art("parent", "cat /proc/$PPID/cmdline")]
    frames, outs = read_all(run_batch(arts), arts)
    assert all(frame.exit_status == 0 for frame in frames[1:])
    assert b"sh -s" in outs[1] and len(outs[0]) > 100
    for out in outs:
        assert B.encode() not in out


def test_a_shell_without_builtin_printf_refuses_the_batch():
    command, script = cmdbatch.batch_command(ARTS[:2], B, remote.ENV_PREFIX)
    proc = subprocess.run(["bash", "-c", "enable -n printf; eval \"$(cat)\""], input=script, capture_output=True,
                          timeout=60)
    assert proc.returncode == cmdbatch.NO_BUILTIN_PRINTF and proc.stdout == b""


def test_over_the_cap_keeps_the_first_bytes_and_counts_the_rest(honest):
    caps = [1 << 30] * len(ARTS)
    caps[4] = 1000
    frames, outs = read_all(honest, ARTS, caps)
    assert outs[4] == b"\0" * 1000 and frames[4].kept == 1000 and frames[4].total == 300000 and frames[4].truncated


def test_a_command_cannot_write_to_the_channel_around_its_output():
    # fd 4 (the channel) is closed for the command; its stdout is its output, its stderr is counted
    arts = [Art("sneaky", f"printf '\\n#{B} 0 0 0\\n\\n' >&4; printf y >&3; printf z >&5; echo ok"),
            Art("next", "echo next")]
    frames, outs = read_all(run_batch(arts), arts)
    assert outs == [b"ok\n", b"next\n"]
    assert frames[0].exit_status == 0 and b"Bad file descriptor" in frames[0].stderr


def broken_at(stream: bytes, arts=ARTS, boundary=B, caps=None, step=None) -> int:
    with pytest.raises(cmdbatch.BatchBroken) as exc:
        read_all(stream, arts, caps, boundary, step)
    return exc.value.index


def frame_ends(stream: bytes, count: int) -> list[int]:
    """Where each frame ends in an honest stream (after its stderr's newline)."""
    ends, pos = [], 0
    for i in range(count):
        at = stream.index(f"\n#{B} {i} ".encode(), pos)
        eol = stream.index(b"\n", at + 1)
        length = int(stream[at + 1:eol].split(b" ")[3])
        pos = eol + 1 + length + 1
        ends.append(pos)
    return ends


def test_every_truncation_breaks_the_batch_at_the_frame_it_cut(honest):
    ends = frame_ends(honest, len(ARTS))
    for cut in sorted({*range(0, len(honest), 97), *(e - 1 for e in ends), *ends, len(honest) - 1}):
        index = broken_at(honest[:cut], step=50 if cut % 2 else None)
        assert index == sum(1 for e in ends if e <= cut), cut


def test_forged_and_garbled_streams_are_refused(honest):
    # another boundary (the reader's is random per batch): no output ever ends
    assert broken_at(honest, boundary="f" * 32) == 0
    # bytes after the end line, or no end line
    assert broken_at(honest + b"x") == len(ARTS)
    assert broken_at(honest[:honest.rindex(b"#")]) == len(ARTS)
    # frames reordered: the second frame's trailer announces index 1 where 0 is expected
    first = frame_ends(honest, 1)[0]
    assert broken_at(honest[first:]) == 0
    # a frame dropped in the middle
    ends = frame_ends(honest, len(ARTS))
    assert broken_at(honest[:ends[1]] + honest[ends[2]:]) == 2


def forged(outputs, trailers) -> bytes:
    out = b""
    for data, trailer in zip(outputs, trailers):
        out += data + b"\n" + trailer
    return out


END1 = b"\n#%s end 1\n" % B.encode()


def test_trailer_fields_are_checked():
    ok = [b"#%s 0 0 3\nerr\n" % B.encode()]
    assert read_all(forged([b"x"], ok) + END1, [ARTS[0]])[1] == [b"x"]
    for trailer in (b"#%s 1 0 0\n\n", b"#%s 0 256 0\n\n", b"#%s 0 -1 0\n\n", b"#%s 0 0 5\nerr\n",
                    b"#%s 0 0 2\nerr\n", b"#%s 0 0\n\n", b"#%s 0 0 0 0\n\n", b"#%s 0 0 99999999999999\n\n",
                    b"#%s 0 0 0" + b"0" * 300 + b"\n\n"):
        stream = forged([b"x"], [trailer % B.encode()]) + END1
        assert broken_at(stream, [ARTS[0]]) == 0, trailer
    stream = forged([b"x"], [b"#%s 0 0 %d\n" % (B.encode(), cmdbatch.MAX_STDERR + 1)])
    assert broken_at(stream, [ARTS[0]]) == 0
    for end in (b"\n#%s end 2\n", b"#%s end 1\n", b"\n#%s end 1"):
        assert broken_at(forged([b"x"], ok) + end % B.encode(), [ARTS[0]]) == 1, end


def test_an_endless_output_breaks_the_batch(monkeypatch):
    monkeypatch.setattr(cmdbatch, "MAX_OVER_CAP", 1 << 20)
    stream = b"\0" * (3 << 20) + b"\n#%s 0 0 0\n\n" % B.encode() + END1
    assert broken_at(stream, [ARTS[0]], caps=[100]) == 0


def test_script_refuses_bad_input():
    with pytest.raises(ValueError):
        cmdbatch.batch_command(ARTS, "not-hex", remote.ENV_PREFIX)
    with pytest.raises(ValueError):
        cmdbatch.batch_command([], B, remote.ENV_PREFIX)
    with pytest.raises(ValueError):
        cmdbatch.batch_command([Art("x", "")], B, remote.ENV_PREFIX)


def run_mixed(arts, compressed) -> bytes:
    command, script = cmdbatch.batch_command(arts, B, remote.ENV_PREFIX, compressed)
    assert script.count(b"\nirkit_z ") == sum(compressed)
    proc = subprocess.run(["sh", "-c", command], input=script, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def read_mixed(stream, arts, compressed, caps=None, step=None):
    caps = caps or [1 << 30] * len(arts)
    source = io.BytesIO(stream) if step is None else Trickle(stream, step)
    reader = cmdbatch.BatchReader(source, len(arts), B)
    sinks = [io.BytesIO() for _ in arts]
    frames = [reader.frame(s, c, compressed=z) for s, c, z in zip(sinks, caps, compressed)]
    reader.end()
    return frames, [s.getvalue() for s in sinks]


MIXED = [True, False, True, True, False, True]


def test_gzip_members_in_a_batch_give_the_same_outputs(honest):
    plain_frames, plain = read_all(honest, ARTS)
    stream = run_mixed(ARTS, MIXED)
    for step in (None, 5, 200):
        frames, outs = read_mixed(stream, ARTS, MIXED, step=step)
        assert outs[1:] == plain[1:]  # (ps sees other pids)
        assert [f.exit_status for f in frames] == [f.exit_status for f in plain_frames]
        assert [f.stderr for f in frames] == [f.stderr for f in plain_frames]
    caps = [1 << 30] * len(ARTS)
    caps[4] = 10
    frames, outs = read_mixed(run_mixed(ARTS, [False, False, False, False, True, False]), ARTS,
                              [False, False, False, False, True, False], caps)
    assert outs[4] == b"\0" * 10 and frames[4].total == 300000 and frames[4].truncated


def test_a_gzip_member_that_is_garbled_breaks_the_batch_at_its_frame():
    arts = [Art("a", "echo a"), Art("b", "seq 1 2000"), Art("c", "echo c")]
    flags = [False, True, False]
    stream = run_mixed(arts, flags)
    start = stream.index(b"\x1f\x8b")
    end = stream.index(f"\n#{B} 1 ".encode())
    for bad in (stream[:end - 8] + bytes([stream[end - 8] ^ 0xFF]) + stream[end - 7:],   # CRC-32 does not check
                stream[:end] + b"junk" + stream[end:],                                      # bytes after the member
                stream[:end - 3] + stream[end:],                                            # member cut short
                stream[:start] + b"plain text, not gzip" + stream[end:]):                   # not gzip at all
        with pytest.raises(cmdbatch.BatchBroken) as exc:
            read_mixed(bad, arts, flags)
        assert exc.value.index == 1


def test_a_gzip_bomb_in_a_batch_breaks_it(monkeypatch):
    import gzip
    monkeypatch.setattr(cmdbatch, "MAX_OVER_CAP", 1 << 20)
    stream = gzip.compress(b"\0" * (8 << 20)) + b"\n#%s 0 0 0\n\n" % B.encode() + END1
    with pytest.raises(cmdbatch.BatchBroken) as exc:
        read_mixed(stream, [ARTS[0]], [True], caps=[100])
    assert exc.value.index == 0


def test_the_watch_fires_once_for_the_frame_in_progress_and_not_when_rearmed():
    fired = []
    watch = cmdbatch.FrameWatch(lambda: fired.append(time.monotonic()))
    for i in range(5):
        watch.arm(i, 0.3)
        time.sleep(0.05)
    assert not fired
    start = time.monotonic()
    watch.arm(5, 0.2)
    time.sleep(0.5)
    watch.stop()
    assert watch.expired == 5 and len(fired) == 1 and 0.15 < fired[0] - start < 0.45
    quiet = cmdbatch.FrameWatch(lambda: fired.append(0))
    quiet.stop()
    assert quiet.expired is None and len(fired) == 1


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
        assert entry["exit_status"] == 2 and entry["transit"] == "in one channel with other commands"
        assert bundle.extractfile(entry["archive_path"]).read() == f"c{i}\n".encode()
        assert bundle.extractfile(entry["stderr"]["archive_path"]).read() == f"warn c{i}\n".encode()
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
        return honest[:first_end] + b"#forged " * 20


def test_a_batch_the_host_garbles_is_an_anomaly_and_the_rest_run_alone(irkit_home):
    host = LyingBatchHost()
    result = collect_host(host, target(), commands_selection(4))
    assert result.status == "partial"
    assert any("command batch broke at linux.live.c1" in a for a in result.anomalies)
    outputs, bundle = outputs_of(result)
    assert outputs["linux.live.c0"]["transit"].startswith("in one")      # complete before the break: stands
    for i in (1, 2, 3):                                                  # asked again, one channel each
        entry = outputs[f"linux.live.c{i}"]
        assert "transit" not in entry
        assert bundle.extractfile(entry["archive_path"]).read() == f"c{i}\n".encode()
    assert sum("sh -c 'echo c" in c and "irkit_" not in c for c in host.commands) == 3




# ---------------------------------------------------------------- the collector over a real local shell

class LocalStream:
    def __init__(self, argv, stdin):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)
        self.stdout = self.proc.stdout
        self._err = b""
        threading.Thread(target=self._feed, args=(stdin or b"",), daemon=True).start()
        self._drain = threading.Thread(target=self._read_err, daemon=True)
        self._drain.start()

    def _feed(self, data):
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.close()
        except OSError:
            pass

    def _read_err(self):
        self._err = self.proc.stderr.read()

    def finish(self):
        status = self.proc.wait(30)
        self._drain.join(5)
        return StreamResult(status, self._err)

    def close(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass


class LocalShell:
    """The host is this machine's real shell (what the batch script meets on a host), no SSH."""

    alive = True

    def __init__(self, builtin_printf=True):
        self.commands = []
        self.builtin_printf = builtin_printf

    def exec_stream(self, command, *, stdin=None, idle_timeout, deadline=None):
        self.commands.append(command)
        argv = ["sh", "-c", command]
        if command.endswith(" sh -s") and not self.builtin_printf:
            argv = ["bash", "-c", 'enable -n printf; eval "$(cat)"']
        return LocalStream(argv, stdin)

    def run(self, command, *, stdin=None, timeout=None, deadline=None):
        from ir_toolkit.transports.base import CommandResult

        self.commands.append(command)
        proc = subprocess.run(["sh", "-c", command], input=stdin, capture_output=True, timeout=timeout)
        return CommandResult(proc.returncode, proc.stdout, proc.stderr)

    def close(self):
        pass


def local_selection(*commands):
    arts = tuple(Artifact(name=f"linux.live.c{i}", description="c", os="linux", collector="command",
                          command=cmd, order=i, timeout=limit) for i, (cmd, limit) in enumerate(commands))
    return Selection(profile="poc", artifacts=arts)


def test_a_command_over_its_time_limit_in_a_batch_is_ended_there_and_the_rest_run_alone(irkit_home):
    host = LocalShell()
    selection = local_selection(("echo c0", 20), ("echo started; sleep 60; echo never", 2), ("echo c2", 20),
                                ("echo c3", 20))
    started = time.monotonic()
    result = collect_host(host, target(), selection)
    assert time.monotonic() - started < 15
    outputs, bundle = outputs_of(result)
    assert outputs["linux.live.c0"]["transit"].startswith("in one")
    assert bundle.extractfile(outputs["linux.live.c0"]["archive_path"]).read() == b"c0\n"
    assert not result.anomalies  # a slow command is not a lie
    slow = [a for a in json_manifest(result)["artifacts"] if a["name"] == "linux.live.c1"][0]
    assert slow["status"] != "ok" and "timed out after 2 s" in str(slow), slow
    for i in (2, 3):  # run alone after the batch was ended
        entry = outputs[f"linux.live.c{i}"]
        assert "transit" not in entry
        assert bundle.extractfile(entry["archive_path"]).read() == f"c{i}\n".encode()
    assert sum(1 for c in host.commands if c.endswith(" sh -s")) == 1


def test_a_shell_without_builtin_printf_runs_each_command_alone_without_anomaly(irkit_home):
    host = LocalShell(builtin_printf=False)
    result = collect_host(host, target(), local_selection(("echo c0", 20), ("echo c1", 20)))
    outputs, bundle = outputs_of(result)
    assert not result.anomalies and result.status == "complete", (result.status, result.problems)
    for i in (0, 1):
        assert "transit" not in outputs[f"linux.live.c{i}"]
        assert bundle.extractfile(outputs[f"linux.live.c{i}"]["archive_path"]).read() == f"c{i}\n".encode()


def json_manifest(result):
    import json
    return json.loads((result.collection.path / "manifest.json").read_bytes())
