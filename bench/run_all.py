#!/usr/bin/env python3
"""``make bench``: every benchmark in bench/, one after the other, at the sizes docs/performance.md reports.

Usage::

    sudo .venv/bin/python bench/run_all.py              # all (needs root: the engine benches use the lab)
    sudo .venv/bin/python bench/run_all.py --quick      # small sizes, a smoke run of each bench
    .venv/bin/python bench/run_all.py --only audit      # one bench by name (audit, engine, lab, triage, cost, contain)

Each bench prints its own figures; this script runs them in a fixed order, stops on the
first failure (exit 1) and prints one summary line per bench.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: name -> (script, args, quick args, needs root)
BENCHES: dict[str, tuple[str, list[str], list[str], bool]] = {
    "audit": ("bench_audit_verify.py", [], ["--records", "20000"], False),
    "lab": ("bench_lab.py", ["--hosts", "200"], ["--hosts", "20", "--per-tenant", "10"], True),
    "engine": ("bench_engine.py", ["--tenants", "4", "--hosts-per-tenant", "50"],
               ["--tenants", "2", "--hosts-per-tenant", "5", "--skip", "ansible", "--skip", "pyinfra"], True),
    "triage": ("bench_triage_transfer.py", [], ["--large-mib", "16", "--small-count", "200", "--repeat", "1"], True),
    "cost": ("bench_triage_cost.py", [], [], True),
    # the shipped containment playbook vs Ansible of the same shape (docs/performance.md); 200 hosts: a big
    # lab, so run the full set under `flock /tmp/irkit-biglab.lock` on a shared machine
    "contain": ("bench_contain.py", ["--hosts", "200"], ["--tenants", "1", "--hosts-per-tenant", "3"], True),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--only", action="append", choices=sorted(BENCHES), default=None)
    args = parser.parse_args()
    names = args.only or list(BENCHES)
    if any(BENCHES[n][3] for n in names) and os.geteuid() != 0:
        print("bench: the engine and triage benches use the lab and need root (run with sudo)", file=sys.stderr)
        return 4
    results: list[tuple[str, int, float]] = []
    for name in names:
        script, full, quick, _ = BENCHES[name]
        argv = [sys.executable, str(HERE / script), *(quick if args.quick else full)]
        print(f"== {name}: {' '.join(argv[1:])}", flush=True)
        started = time.monotonic()
        rc = subprocess.call(argv)
        results.append((name, rc, time.monotonic() - started))
        if rc != 0:
            break
    for name, rc, seconds in results:
        print(f"bench {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {seconds:.0f}s")
    return 0 if all(rc == 0 for _, rc, _ in results) and len(results) == len(names) else 1


if __name__ == "__main__":
    sys.exit(main())
