"""A scripted compromised host that drives irkit's real collector without SSH (from the security review's PoCs).

It implements the paramiko surface the collector uses (``conn.run``, ``client.get_transport().open_session()``,
channel ``recv``/``recv_stderr``/``send``/exit status), so the real collector, tar parser, bundle writer,
verifier and extractor run unchanged against whatever bytes the "host" returns. The lab's hostile hosts
(``irkit lab up --hostile``) do the same over real sshd; see tests/test_security_hostile_lab.py.
"""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import threading
import time

from ir_toolkit.transports.base import CommandResult, StreamResult
from ir_toolkit.triage import remote
from ir_toolkit.triage.schema import Artifact, Selection


class GenReader:
    """stdout produced lazily (so a huge stream never sits in memory)."""

    def __init__(self, chunks):
        self.it = iter(chunks)
        self.buf = b""

    def read(self, n):
        # Like a socket: what has arrived, at most n bytes (one chunk of the scenario at a time).
        while not self.buf:
            try:
                self.buf = next(self.it)
            except StopIteration:
                break
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


class FakeChan:
    def __init__(self, host):
        self.host = host
        self.status_event = threading.Event()
        self.status_event.set()
        self.timeout = None

    def settimeout(self, t):
        self.timeout = t

    def exec_command(self, cmd):
        self.cmd = cmd
        out, err, self.status = self.host.respond(cmd)
        self.out = out if hasattr(out, "read") else io.BytesIO(out)
        self.err = err if hasattr(err, "read") else io.BytesIO(err)

    def send(self, data):
        return len(data)

    def shutdown_write(self):
        pass

    def recv(self, n):
        if self.timeout is not None and getattr(self.out, "delay", 0) > self.timeout:
            time.sleep(self.timeout)
            raise socket.timeout()
        return self.out.read(n)

    def recv_stderr(self, n):
        return self.err.read(n)

    def exit_status_ready(self):
        return True

    def recv_exit_status(self):
        return self.status

    def close(self):
        pass


class _ChanReader(io.RawIOBase):
    def __init__(self, chan):
        self.chan = chan

    def readable(self):
        return True

    def readinto(self, buffer):
        data = self.chan.recv(len(buffer))
        buffer[:len(data)] = data
        return len(data)


class FakeStream:
    """What ``Connection.exec_stream`` returns (stdout stream, finish, close)."""

    def __init__(self, chan):
        self.chan = chan
        self.stdout = io.BufferedReader(_ChanReader(chan), 1 << 20)

    def finish(self):
        err = bytearray()
        while chunk := self.chan.recv_stderr(1 << 20):
            err += chunk
        return StreamResult(self.chan.recv_exit_status(), bytes(err))

    def close(self):
        pass


class FakeTransport:
    def __init__(self, host):
        self.host = host

    def is_active(self):
        return True

    def open_session(self, **kw):
        return FakeChan(self.host)


class FakeClient:
    def __init__(self, host):
        self.t = FakeTransport(host)

    def get_transport(self):
        return self.t


def stat_record(path, size, mtime="1700000000.000000000", mode="644", kind="regular file", ino=1, uid="0"):
    f = [kind, path, str(size), mtime, mtime, mtime, "-", uid, "0", "root", "root", mode, f"'{path}'", "2049",
         str(ino)]
    return b"".join(remote.encode_path(x) + b"\0" for x in f)


def tar_member(name, data=b"", size=None, mtime=1700000000, pax=None):
    info = tarfile.TarInfo(name)
    info.size = len(data) if size is None else size
    info.mtime = mtime
    if pax:
        info.pax_headers = pax
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def pad(n):
    return b"\0" * (-n % 512)


def member(name, data):
    return tar_member(name, data) + data + pad(len(data))


def digest(data):
    return hashlib.sha256(data).hexdigest().encode()


END = b"\0" * 1024


class FakeHost:
    """respond(cmd) -> (stdout, stderr, status) decided by the scenario."""

    def __init__(self, stats=b"", hashes=b"", tar=b"", command_out=b"ok\n", command_err=b"", homes=b"/root\n"):
        self.stats, self.hashes, self.tar = stats, hashes, tar
        self.command_out, self.command_err, self.homes = command_out, command_err, homes
        self.client = FakeClient(self)
        self.alive = True
        self.host_key_fingerprint = "SHA256:fake"
        self.commands = []
        self.stdin = None

    def respond(self, cmd):
        self.commands.append(cmd)
        if "command -v" in cmd:
            return b"", b"", 0  # preflight: every tool present
        if "getent passwd" in cmd:
            return self.homes, b"", 0
        if "stat --printf" in cmd:
            return self.stats, b"", 0
        if "sha256sum -z" in cmd:
            return self.hashes, b"", 0
        if "tar --create" in cmd:
            tar = self.tar() if callable(self.tar) else self.tar
            return tar, b"", 0
        if cmd.endswith(" sh -s") and self.stdin and (b"\nirkit_c " in self.stdin or b"\nirkit_z " in self.stdin):
            return self.batch(self.stdin.decode()), b"", 0
        return self.command_out, self.command_err, 0

    def batch(self, cmd):
        """A batch of command artifacts (triage/cmdbatch.py), framed as the real script frames it: each
        command's scripted answer (gzip-compressed for irkit_z), a newline and its trailer. Scenarios override this
        to lie."""
        import re
        import shlex

        script = cmd
        boundary = re.search(r"^B=([0-9a-f]{32})$", script, re.M).group(1).encode()
        calls = re.findall(r"^irkit_([cz]) (\d+) (.*)$", script, re.M)
        out = b""
        for kind, index, quoted in calls:
            stdout, stderr, status = self.respond(shlex.split(quoted)[0])
            stdout, stderr = _drain(stdout), _drain(stderr)
            if kind == "z":  # gzip -1 on the host
                import gzip
                stdout = gzip.compress(stdout, 1)
            out += stdout + b"\n#%s %s %d %d\n%s\n" % (boundary, index.encode(), status, len(stderr), stderr)
        return out + b"\n#%s end %d\n" % (boundary, len(calls))

    def run(self, command, *, stdin=None, timeout=None, deadline=None):
        out, err, st = self.respond(command)
        return CommandResult(st, _drain(out), _drain(err))

    def exec_stream(self, command, *, stdin=None, idle_timeout, deadline=None):
        self.stdin = stdin
        chan = FakeChan(self)
        chan.settimeout(idle_timeout)
        chan.exec_command(command)
        return FakeStream(chan)


def _drain(stream):
    if not hasattr(stream, "read"):
        return stream
    data = bytearray()
    while chunk := stream.read(1 << 20):
        data += chunk
    return bytes(data)


CMD_ART = Artifact(name="linux.live.processes", description="ps", os="linux", collector="command",
                   command="ps -ef", order=1)


def file_selection(paths, cap=1024, with_command=True):
    art = Artifact(name="linux.test.files", description="f", os="linux", collector="file", paths=list(paths),
                   max_file_size=cap, order=2)
    return Selection(profile="poc", artifacts=((CMD_ART, art) if with_command else (art,)))


def target(host="h"):
    from ir_toolkit.triage.collector import HostTarget

    return HostTarget(case="POC", msp="acme", tenant="globex", host=host, address="198.18.1.20")
