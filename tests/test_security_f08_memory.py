"""Finding 8 (security review): unbounded controller memory from host output.

Ported from security-pocs/poc_mem_a.py (a 256 MiB pax header) and poc_mem_b.py (a 256 MiB stderr flood).
The bounds are stated in docs/triage.md ("Bounds on what a host can make irkit hold").
"""

from __future__ import annotations

import resource
import tarfile

import pytest

from hostile_host import END, FakeHost, GenReader
from ir_toolkit.triage import tarstream
from ir_toolkit.triage.transfer import run_capped

STDERR_HEAD, STDERR_TAIL = 1 << 20, 64 << 10  # the bounds stated in docs/triage.md

N = 256 << 20


def _rss_mib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def test_pax_header_is_bounded():
    sent = {"bytes": 0}

    def pax_stream():
        info = tarfile.TarInfo("././@PaxHeader")
        info.type = tarfile.XHDTYPE
        info.size = N
        yield info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
        rec = b"9 a=bcde\n"
        chunk = rec * ((1 << 20) // len(rec))
        while sent["bytes"] < N:
            sent["bytes"] += len(chunk)
            yield chunk
        yield END

    with pytest.raises(tarstream.TarFormatError, match="extended header"):
        for _ in tarstream.iter_members(GenReader(pax_stream())):
            pass
    assert sent["bytes"] < 4 << 20, "the parser refused the header without reading it"


def test_gnu_longname_is_bounded():
    sent = {"bytes": 0}
    info = tarfile.TarInfo("././@LongLink")
    info.type = tarfile.GNUTYPE_LONGNAME
    info.size = 64 << 20

    def stream():
        yield info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
        while sent["bytes"] < info.size:
            sent["bytes"] += 1 << 20
            yield b"a" * (1 << 20)
        yield END

    with pytest.raises(tarstream.TarFormatError, match="extended header"):
        list(tarstream.iter_members(GenReader(stream())))
    assert sent["bytes"] < 4 << 20, "the long name was refused without reading it"


def test_non_file_member_with_huge_data_is_refused():
    info = tarfile.TarInfo("dev/x")
    info.type = tarfile.CHRTYPE
    info.size = 1 << 40
    blob = info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
    with pytest.raises(tarstream.TarFormatError, match="non-file member"):
        list(tarstream.iter_members(GenReader([blob])))


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    import os

    if os.geteuid() != 0:
        pytest.skip("starting sshd needs root")
    from triage_helpers import start_sshd

    server = start_sshd(tmp_path_factory.mktemp("sshd08"))
    yield server
    server.stop()


@pytest.mark.lab
def test_stderr_flood_is_bounded(sshd):
    """poc_mem_b over real sshd: 256 MiB on stderr of a command whose stdout is capped at 1 KiB."""
    conn = sshd.connect()
    try:
        before = _rss_mib()
        res = run_capped(conn, f"head -c {N} /dev/zero >&2; echo x", cap=1024, timeout=120)
        assert res.stdout == b"x\n"
        assert len(res.stderr) <= STDERR_HEAD + STDERR_TAIL + 100 and b"bytes omitted" in res.stderr
        assert _rss_mib() - before < 128, "stderr was not held in memory"
        result = conn.run(f"head -c {N} /dev/zero >&2; echo y", timeout=120)
        assert result.stdout == b"y\n" and len(result.stderr) <= (1 << 20) + 100
        assert _rss_mib() - before < 128
    finally:
        conn.close()


def test_stderr_of_a_stream_is_bounded_whatever_the_transport():
    def flood():
        for _ in range(64):
            yield b"E" * (1 << 20)

    host = FakeHost(command_out=b"x", command_err=GenReader(flood()))
    res = run_capped(host, "ps -ef", cap=1024, timeout=60)
    assert len(res.stdout) == 1 and len(res.stderr) <= STDERR_HEAD + STDERR_TAIL + 100


def test_command_output_is_spooled_not_held():
    """Command output up to its cap goes to a spool (disk beyond 8 MiB), not into a bytes object."""
    import tempfile

    total = 64 << 20
    host = FakeHost(command_out=GenReader(b"o" * (1 << 20) for _ in range(total >> 20)))
    with tempfile.TemporaryFile() as spool:
        res = run_capped(host, "cat big", cap=32 << 20, timeout=60, spool=spool)
        assert res.stdout == b"" and res.kept == 32 << 20 and res.total_bytes == total and res.truncated
        assert spool.tell() == 32 << 20


def test_bounded_buffer_keeps_head_and_tail():
    from ir_toolkit.triage.transfer import BoundedBuffer

    buf = BoundedBuffer(head=4, tail=3)
    for piece in (b"abcdef", b"ghij", b"klm"):
        buf.add(piece)
    assert buf.total == 13 and buf.omitted == 6
    assert buf.value().startswith(b"abcd") and buf.value().endswith(b"klm")
