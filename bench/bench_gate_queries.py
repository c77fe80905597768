#!/usr/bin/env python3
"""#16: the evidence gate's and the other per-host audit queries' cost, at 200 and 1,000 hosts' worth of log.

    .venv/bin/python bench/bench_gate_queries.py --from CASE_AUDIT_LOG        # replay a real run's records
    .venv/bin/python bench/bench_gate_queries.py --from LOG --scales 1 5 25

The records of a real containment run (``--from``: a case's ``audit/log.jsonl``, e.g. one kept by
``bench_contain.py --keep-home``) are written again through the real writer (``AuditLog.append``) into
a temporary ``$IRKIT_HOME``, ``scale`` times over with the host names renamed per copy - the same record
mix per host, for ``scale`` x the run's hosts. Then, with the writer open (as during a run), every host's
per-host queries are timed: the gate's custody lookup (``evidence.collected`` for the tenant and host),
the history queries (``host.isolated``, ``credential.escrowed``, ``ssh_keys.revoked``) and the
resume query (``step.done`` of the host); and, in a fresh process, the one-off index build when a log
is opened (O(log), once per process). A query that grows with the log shows as a per-host cost that
grows with ``scale``; the index makes them O(records returned).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SKIP = {"audit.log_created", "audit.recovered", "audit.key_rotated", "audit.key_activated"}

QUERIES = {
    "gate: evidence.collected": ("evidence.collected",),
    "history: isolated/escrowed/revoked": ("host.isolated", "credential.escrowed", "ssh_keys.revoked"),
    "resume: step.done": ("step.done",),
}

FRESH = r"""
import json, sys, time
from ir_toolkit.audit.log import AuditLog
from ir_toolkit.secrets import keystore
signer = keystore.load_signing_key("bench")
t = time.perf_counter(); c = time.process_time()
log = AuditLog.open(sys.argv[1], signer=signer)
opened = time.perf_counter() - t
log.indexed(("evidence.collected",), tenant="-", host="-")
print(json.dumps({"open_s": round(opened, 3), "open_and_index_s": round(time.perf_counter() - t, 3),
                  "open_and_index_cpu_s": round(time.process_time() - c, 3), "records": log.size}))
log.close()
"""


def rename(value: str | None, copy: int) -> str | None:
    return value if value is None or copy == 0 else f"{value}-c{copy}"


def run_scale(records: list[dict], scale: int, signer: object, case: str) -> dict:
    from ir_toolkit.audit.log import AuditLog, signed_records

    hosts = sorted({(r["tenant"], r["host"]) for r in records if r.get("host") and r.get("tenant")})
    t0 = time.perf_counter()
    with AuditLog.open(case, origin=f"benchq/ir/{case}", signer=signer) as log:  # type: ignore[arg-type]
        for copy in range(scale):
            for r in records:
                params = dict(r.get("params") or {})
                if isinstance(params.get("item"), str) and r.get("host"):
                    params["item"] = params["item"].replace(r["host"], rename(r["host"], copy) or "")
                log.append(action=r["action"], actor=r.get("actor", "bench"), tenant=r.get("tenant"),
                           host=rename(r.get("host"), copy), params=params, outcome=r.get("outcome", "ok"))
        log.sync()
        written = time.perf_counter() - t0
        all_hosts = [(t, rename(h, copy)) for copy in range(scale) for t, h in hosts]
        out: dict = {"hosts": len(all_hosts), "records": log.size, "write_s": round(written, 1), "queries": {}}
        for name, actions in QUERIES.items():
            found = 0
            t = time.perf_counter()
            c = time.process_time()
            for tenant, host in all_hosts:
                found += len(signed_records(case, actions, tenant=tenant, host=host) or [])
            k = len(all_hosts)
            out["queries"][name] = {"wall_us_per_host": round(1e6 * (time.perf_counter() - t) / k, 1),
                                    "cpu_us_per_host": round(1e6 * (time.process_time() - c) / k, 1),
                                    "records_per_host": round(found / k, 1)}
    proc = subprocess.run([sys.executable, "-c", FRESH, case], capture_output=True, text=True, env=os.environ)
    out["fresh_process"] = json.loads(proc.stdout) if proc.returncode == 0 else {"error": proc.stderr[-500:]}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", type=Path, required=True, help="a real run's audit/log.jsonl")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    records = [json.loads(line) for line in args.source.read_bytes().splitlines() if line.strip()]
    records = [r for r in records if r.get("action") not in SKIP]
    home = Path(tempfile.mkdtemp(prefix="irkit-bench-gateq."))
    os.environ["IRKIT_HOME"] = str(home)
    os.environ.setdefault("IRKIT_INSECURE_TEST_SCRYPT_LOG2N", "10")  # key unlock cost is not measured here
    from ir_toolkit.secrets import keystore

    keystore.init_keys("bench", name="bench-controller/irkit-responder")
    signer = keystore.load_signing_key("bench")
    result = {"source": str(args.source), "source_records": len(records), "loadavg": os.getloadavg(), "runs": []}
    for scale in args.scales:
        result["runs"].append(run_scale(records, scale, signer, f"BENCH-GATEQ-{scale}"))
        r = result["runs"][-1]
        print(f"{r['hosts']:6d} hosts, {r['records']:7d} records: " + "; ".join(
            f"{name} {q['cpu_us_per_host']} us CPU/host ({q['records_per_host']} records)"
            for name, q in r["queries"].items()) + f"; fresh open+index {r['fresh_process']}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    import shutil

    shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
