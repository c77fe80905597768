#!/usr/bin/env python3
"""Evidence transfer throughput: irkit's tar stream and SFTP against OpenSSH scp.

Against a real sshd on 127.0.0.1 (needs root: sshd with its own temp config),
two data sets of incompressible bytes:

* ``large``: one file of --large-mib MiB (default 256)
* ``small``: --small-count files of 16 KiB (default 2000), the shape of a
  triage collection (configs, histories, unit files)

Methods (each writes what it receives to local disk):

* ``scp``      OpenSSH ``scp`` (``-r`` for the small set), the reference
* ``tar``      irkit: one exec channel, GNU tar stream, parsed and hashed as it
               arrives, written into a bundle (the default transfer)
* ``tar+enc``  the same into an encrypted bundle (ChaCha20-Poly1305 chunks)
* ``sftp``     irkit's SFTP variant: paramiko with prefetch, one file at a time

Run:  sudo .venv/bin/python bench/bench_triage_transfer.py [--repeat 3]
Prints a table (MiB/s, controller CPU seconds, ratio to scp); figures in docs/triage.md.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey  # noqa: E402

from ir_toolkit.triage.bundle import BundleWriter  # noqa: E402
from ir_toolkit.triage.transfer import sftp_fetch, tar_fetch  # noqa: E402
from triage_helpers import start_sshd  # noqa: E402


def cpu_seconds() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def make_data(root: Path, large_mib: int, small_count: int) -> dict[str, list[str]]:
    large = root / "large" / "blob.bin"
    large.parent.mkdir(parents=True)
    with open(large, "wb") as fh:
        for _ in range(large_mib):
            fh.write(os.urandom(1 << 20))
    small_dir = root / "small"
    small_dir.mkdir()
    small = []
    for i in range(small_count):
        path = small_dir / f"d{i // 100:03d}" / f"f{i:05d}.conf"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(os.urandom(16 * 1024))
        small.append(str(path))
    return {"large": [str(large)], "small": small}


def run_scp(sshd, paths: list[str], dest: Path, tree: Path | None) -> None:
    base = ["scp", "-q", "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={sshd.known_hosts}",
            "-o", "BatchMode=yes", "-i", str(sshd.client_key), "-P", str(sshd.port)]
    if tree is not None:
        cmd = [*base, "-r", f"root@127.0.0.1:{tree}", str(dest)]
    else:
        cmd = [*base, *(f"root@127.0.0.1:{p}" for p in paths), str(dest)]
    subprocess.run(cmd, check=True)


def run_irkit(sshd, paths: list[str], dest: Path, method: str) -> None:
    recipients = [X25519PrivateKey.generate().public_key()] if method == "tar+enc" else None
    writer = BundleWriter(dest / "coll", recipients)

    def sink(path, size, stream, _info):  # noqa: ANN001
        writer.add_stream("files" + path, size, stream)

    conn = sshd.connect()
    try:
        if method == "sftp":
            outcome = sftp_fetch(conn, paths, sink)
        else:
            outcome = tar_fetch(conn, paths, sink)
        assert len(outcome.received) == len(paths), outcome.stderr
    finally:
        conn.close()
    writer.finish({"format": "bench"}, b"", {})


def measure(sshd, name: str, paths: list[str], method: str, work: Path, repeat: int) -> dict:
    total = sum(os.path.getsize(p) for p in paths)
    walls, cpus = [], []
    for i in range(repeat):
        dest = work / f"{name}-{method}-{i}"
        dest.mkdir()
        subprocess.run(["sync"], check=True)
        c0, t0 = cpu_seconds(), time.perf_counter()
        if method == "scp":
            tree = Path(paths[0]).parent.parent if name == "small" else None
            run_scp(sshd, paths, dest, tree)
        else:
            run_irkit(sshd, paths, dest, method)
        walls.append(time.perf_counter() - t0)
        cpus.append(cpu_seconds() - c0)
        shutil.rmtree(dest)
    wall = statistics.median(walls)
    return {"set": name, "method": method, "mib": total / 2**20, "seconds": wall,
            "mib_s": total / 2**20 / wall, "cpu_s": statistics.median(cpus)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large-mib", type=int, default=256)
    parser.add_argument("--small-count", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_triage_transfer: needs root (it starts a private sshd)")
    work = Path(tempfile.mkdtemp(prefix="irkit-bench-triage-"))
    sshd = start_sshd(work / "sshd")
    try:
        data = make_data(work / "data", args.large_mib, args.small_count)
        results = []
        for name, paths in data.items():
            for method in ("scp", "tar", "tar+enc", "sftp"):
                results.append(measure(sshd, name, paths, method, work, args.repeat))
        print(f"{'set':6} {'method':8} {'MiB':>7} {'s':>7} {'MiB/s':>8} {'CPU s':>7} {'vs scp':>7}")
        for row in results:
            ref = next(r for r in results if r["set"] == row["set"] and r["method"] == "scp")
            print(f"{row['set']:6} {row['method']:8} {row['mib']:7.0f} {row['seconds']:7.2f} {row['mib_s']:8.1f} "
                  f"{row['cpu_s']:7.2f} {row['mib_s'] / ref['mib_s']:7.2f}")
    finally:
        sshd.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
