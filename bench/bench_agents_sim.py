#!/usr/bin/env python3
"""The controller's cost per agent result, at MSP scale, with agents faked at the envelope level.

Usage::

    .venv/bin/python bench/bench_agents_sim.py                        # 500 tenants x 10 hosts (5,000 hosts)
    .venv/bin/python bench/bench_agents_sim.py --hosts-per-tenant 100 # the 500-tenant / 50,000-host run

No broker and no hosts: per tenant an agent key signs, in-process, what a real agent would publish
for each of its hosts' steps (a signed ``intent``, then a signed ``result``, chained per agent); the
controller's side is the real one - :meth:`AgentDispatcher.handle` (verify the agent's Ed25519
signature against the inventory's pinned key, check the chain, de-duplicate on ``step_id``, append to
a real fsyncing, signed audit log) plus the engine's own ``step.start``/``step.done`` records, and the
controller's envelope signing. A share of results is delivered twice (redeliveries), to price the
de-duplication path. Timings are wall-clock per message on this machine (perf_counter), and the
process CPU time; what is *not* included: broker round trips, evidence import (no files), the
consumer's JSON decoding of broker messages.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=500)
    parser.add_argument("--hosts-per-tenant", type=int, default=10)
    parser.add_argument("--duplicates", type=float, default=0.1, help="share of results delivered twice")
    parser.add_argument("--consumers", type=int, default=16,
                        help="tenants handled at once (the controller runs one results consumer per tenant)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON only")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="irkit-bench-agents-"))
    os.environ["IRKIT_HOME"] = str(home)
    from ir_toolkit.agents.dispatch import AgentDispatcher
    from ir_toolkit.agents.envelope import AgentMessage, message_hash, step_id
    from ir_toolkit.audit.log import AuditLog
    from ir_toolkit.inventory.model import Inventory
    from ir_toolkit.tlog.note import Signer

    case, plan_hash = "BENCH-AGENTS", "ab" * 32
    controller = Signer.generate("bench.example/irkit")
    agents = {f"t{i:03d}": Signer.generate(f"irkit-agent-t{i:03d}") for i in range(args.tenants)}
    t0 = time.perf_counter()
    inventory = Inventory.model_validate({
        "version": 1,
        "msp": {"name": "bench", "responder": {"key": "file:/nonexistent", "controller_address": "198.18.0.1"}},
        "tenants": [{"name": t, "agent": {"broker": "memory://", "public_key": key.verifier_key(),
                                          "drop": str(home / "drop" / t)},
                     "hosts": [{"name": f"{t}-h{j:03d}", "address": f"198.18.{(i * 7 + j // 250) % 256}.{j % 250 + 1}"}
                               for j in range(args.hosts_per_tenant)]}
                    for i, (t, key) in enumerate(agents.items())]})
    build_s = time.perf_counter() - t0
    journal = AuditLog.open(case, origin=f"bench/ir/{case}", signer=controller)
    dispatcher = AgentDispatcher(inventory, journal, controller, case=case, plan_hash=plan_hash, actor="bench",
                                 apps={t: object() for t in agents})

    class Item:
        def __init__(self, tenant: str, host: str) -> None:
            self.id, self.tenant, self.host, self.action = f"contain/0/{host}", tenant, host, "host.isolate"
            self.phase, self.phase_index, self.step = "contain", 0, "isolate"
            self.requires_approval, self.destructive = False, True

    t_env: list[float] = []
    t_agent_sign: list[float] = []
    t_verify: list[float] = []
    t_intent: list[float] = []
    t_result: list[float] = []
    t_dup: list[float] = []
    t_engine: list[float] = []
    dup_every = int(1 / args.duplicates) if args.duplicates > 0 else 0
    cpu0, wall0 = _cpu(), time.perf_counter()
    import threading
    from concurrent.futures import ThreadPoolExecutor

    counter = {"n": 0}
    count_lock = threading.Lock()

    def one_tenant(tenant: str) -> None:
        key = agents[tenant]
        seq, head = 0, "0" * 64
        for host in (h.name for h in inventory.tenant(tenant).hosts):
            item = Item(tenant, host)
            a = time.perf_counter()
            env = dispatcher.envelope(item, {"allow": []}, step_timeout=120, wait=600, wave=1, approvals=(1, 1),
                                      gate="evidence")
            env.sign(controller)
            b = time.perf_counter()
            journal.append_durable(action="step.start", actor="bench", tenant=tenant, host=host,
                                   params={"item": item.id, "step_action": item.action, "wave": 1}, outcome="intent")
            c = time.perf_counter()
            t_env.append(b - a)
            t_engine.append(c - b)
            sid = step_id(plan_hash, tenant, host, item.action, item.id)
            docs = []
            for kind in ("intent", "result"):
                a = time.perf_counter()
                seq += 1
                msg = AgentMessage(kind=kind, agent_id=key.name, agent_seq=seq, prev_agent_hash=head, tenant=tenant,
                                   step_id=sid, attempt=1, sent_at=int(time.time()), host=host, item=item.id,
                                   plan_hash=plan_hash, run_id=dispatcher.run_id,
                                   outcome={"status": "ok", "changed": True, "summary": "isolated"} if kind == "result"
                                   else {},
                                   records=({"action": "host.isolated", "actor": "root", "params": {
                                       "allowed": ["198.18.0.1"], "table": "irkit"}, "outcome": "ok"},)
                                   if kind == "result" else ())
                doc = msg.sign(key)
                head = message_hash(doc)
                t_agent_sign.append(time.perf_counter() - a)
                docs.append(doc)
            a = time.perf_counter()
            AgentMessage.open(docs[1], [key.verifier()])
            t_verify.append(time.perf_counter() - a)
            for doc, bucket in ((docs[0], t_intent), (docs[1], t_result)):
                a = time.perf_counter()
                assert dispatcher.handle(tenant, doc) == "recorded"
                bucket.append(time.perf_counter() - a)
            a = time.perf_counter()
            outcome = dispatcher.outcome(sid)
            assert outcome is not None and outcome["status"] == "ok"
            journal.append_durable(action="step.done", actor="bench", tenant=tenant, host=host,
                                   params={"item": item.id, "step_action": item.action, "changed": True,
                                           "summary": "isolated", "attempts": 1}, outcome="ok")
            t_engine[-1] += time.perf_counter() - a
            with count_lock:
                counter["n"] += 1
                nth = counter["n"]
            if dup_every and nth % dup_every == 0:
                a = time.perf_counter()
                assert dispatcher.handle(tenant, docs[1]) == "duplicate"
                t_dup.append(time.perf_counter() - a)

    with ThreadPoolExecutor(max_workers=max(1, args.consumers)) as pool:
        list(pool.map(one_tenant, list(agents)))
    n = counter["n"]
    wall = time.perf_counter() - wall0
    cpu = _cpu() - cpu0
    journal.close()

    def us(values: list[float]) -> dict[str, float]:
        if not values:
            return {"mean_us": 0.0, "p50_us": 0.0, "p99_us": 0.0}
        ordered = sorted(values)
        return {"mean_us": round(statistics.fmean(values) * 1e6, 1),
                "p50_us": round(ordered[len(ordered) // 2] * 1e6, 1),
                "p99_us": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e6, 1)}

    log_bytes = sum(p.stat().st_size for p in (home / "cases" / case / "audit").rglob("*") if p.is_file())
    per_step = [e + i + r + g for e, i, r, g in zip(t_env, t_intent, t_result, t_engine)]
    figures = {
        "tenants": args.tenants, "hosts": n, "agents": len(agents), "consumers": args.consumers,
        "inventory_build_s": round(build_s, 2), "cpu_per_step_us": round(cpu / max(1, n) * 1e6, 1),
        "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
        "results_per_s": round(n / wall, 1),
        "controller_per_step": us(per_step),
        "envelope_sign": us(t_env),
        "result_verify_only": us(t_verify),
        "handle_intent": us(t_intent),
        "handle_result": us(t_result),
        "handle_duplicate": us(t_dup),
        "engine_step_records": us(t_engine),
        "agent_sign_not_controller": us(t_agent_sign),
        "duplicates": len(t_dup), "records": int(journal.size), "log_bytes": log_bytes,
        "counters": dispatcher.counters,
    }
    if args.json:
        print(json.dumps(figures, indent=1))
        return 0
    print(f"simulated {n} hosts in {args.tenants} tenants (one agent each), one step per host, "
          f"{len(t_dup)} duplicate results; {figures['records']} audit records, {log_bytes / 1e6:.1f} MB of log")
    print(f"wall {wall:.1f} s, CPU {cpu:.1f} s ({figures['cpu_per_step_us']} us CPU per step): "
          f"{figures['results_per_s']} results/s through one controller, {args.consumers} consumers")
    for name in ("controller_per_step", "envelope_sign", "result_verify_only", "handle_intent", "handle_result",
                 "handle_duplicate", "engine_step_records", "agent_sign_not_controller"):
        f = figures[name]
        print(f"  {name:28s} mean {f['mean_us']:9.1f} us   p50 {f['p50_us']:9.1f} us   p99 {f['p99_us']:9.1f} us")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
