#!/usr/bin/env python3
"""Benchmark: verify a 1,000,000-record audit log (target < 20 s on 2 cores), and group-commit appends.

Usage::

    .venv/bin/python bench/bench_audit_verify.py                 # 1,000,000 records
    .venv/bin/python bench/bench_audit_verify.py --records 200000 --workers 1
    .venv/bin/python bench/bench_audit_verify.py --append-only   # just the group-commit figure

The log is written by the real writer (``AuditLog.append``, canonical JSON,
Merkle accumulator, a signed checkpoint every 10,000 records like phase ends)
into a temporary ``$IRKIT_HOME``; records look like the engine's intent/result
records (~250 bytes). Then ``verify_case`` runs exactly as ``irkit audit verify``
does: parse + canonical check + leaf hash of every line (one worker process per
core), the hash chain, the Merkle roots at every checkpoint and the Ed25519
signatures. The append figure is 200 threads calling ``append_durable`` (each
returns only once its record is fsynced), as the engine's worker pool does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_log(case: str, records: int, signer: object) -> float:
    from ir_toolkit.audit.log import AuditLog

    started = time.perf_counter()
    with AuditLog.open(case, origin=f"bench-msp/ir/{case}", signer=signer) as log:  # type: ignore[arg-type]
        n = log.size
        while n < records:
            host = f"tenant{n % 40:02d}-host{n % 1000:04d}"
            if n % 2:
                log.append(action="step.start", actor="responder@controller", tenant=f"tenant{n % 40:02d}",
                           host=host, params={"item": f"contain/{n % 7}/{host}", "step": "revoke-shared-keys",
                                              "action": "ssh.revoke_keys"})
            else:
                log.append(action="step.done", actor="responder@controller", tenant=f"tenant{n % 40:02d}",
                           host=host, params={"item": f"contain/{n % 7}/{host}", "changed": True,
                                              "removed": 2, "krl_serial": n}, outcome="ok")
            n += 1
            if n % 10_000 == 0:
                log.checkpoint()
    return time.perf_counter() - started


def bench_append(case: str, signer: object, threads: int, per_thread: int) -> dict:
    from ir_toolkit.audit.log import AuditLog

    with AuditLog.open(case, origin=f"bench-msp/ir/{case}", signer=signer) as log:  # type: ignore[arg-type]
        before = dict(log.stats)
        barrier = threading.Barrier(threads + 1)

        def work(t: int) -> None:
            barrier.wait()
            for i in range(per_thread):
                log.append_durable(action="step.start", actor="engine", host=f"h{t}", params={"t": t, "i": i})

        pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for th in pool:
            th.start()
        barrier.wait()
        started = time.perf_counter()
        for th in pool:
            th.join()
        elapsed = time.perf_counter() - started
        fsyncs = log.stats["fsyncs"] - before["fsyncs"]
        checkpoints = log.stats["checkpoints"] - before["checkpoints"]
    total = threads * per_thread
    return {"threads": threads, "durable_records": total, "seconds": round(elapsed, 3),
            "records_per_second": round(total / elapsed), "fsync_batches": fsyncs,
            "records_per_fsync": round(total / max(fsyncs, 1), 1), "checkpoints_signed": checkpoints}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=None, help="scan processes (default: one per core)")
    parser.add_argument("--append-only", action="store_true")
    parser.add_argument("--keep", metavar="DIR", help="use DIR as IRKIT_HOME and keep it (reuses an existing log)")
    args = parser.parse_args()

    home = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="irkit-bench-audit."))
    os.environ["IRKIT_HOME"] = str(home)
    os.environ.setdefault("IRKIT_INSECURE_TEST_SCRYPT_LOG2N", "10")  # key unlock cost is not measured here
    from ir_toolkit.audit.verify import verify_case
    from ir_toolkit.secrets import keystore

    if not keystore.keys_exist():
        keystore.init_keys("bench", name="bench-controller/irkit-responder")
    signer = keystore.load_signing_key("bench")
    report: dict = {"machine": f"{platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}",
                    "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}

    report["append"] = bench_append("BENCH-APPEND", signer, threads=200, per_thread=50)
    if not args.append_only:
        case = "BENCH-VERIFY"
        log_file = home / "cases" / case / "audit" / "log.jsonl"
        if not log_file.exists() or sum(1 for _ in open(log_file, "rb")) < args.records:
            report["write_seconds"] = round(write_log(case, args.records, signer), 1)
        size = log_file.stat().st_size
        cpu0 = os.times()
        started = time.perf_counter()
        result = verify_case(case, workers=args.workers)
        elapsed = time.perf_counter() - started
        cpu1 = os.times()
        parent_cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        workers_cpu = (cpu1.children_user - cpu0.children_user) + (cpu1.children_system - cpu0.children_system)
        if not result.ok:
            print(f"verify FAILED: {result.reason}", file=sys.stderr)
            return 1
        report["verify"] = {"records": result.size, "bytes": size, "seconds": round(elapsed, 2),
                            "records_per_second": round(result.size / elapsed),
                            "checkpoints_checked": len(result.checkpoints),
                            "cpu_seconds_parent": round(parent_cpu, 2),
                            "cpu_seconds_scan_workers": round(workers_cpu, 2),
                            "workers": args.workers or "auto"}
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=2))
    if not args.keep:
        import shutil

        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
