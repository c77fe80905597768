"""The open log's index by (tenant, host, action): the gate, reimage history and resume ask it, O(records asked)."""

from __future__ import annotations

from ir_toolkit.audit.log import AuditLog, signed_records

CASE = "IDX-1"
ORIGIN = "acme/ir/IDX-1"


def test_indexed_queries_return_exactly_the_hosts_records_across_a_reopen(signer) -> None:
    with AuditLog.open(CASE, origin=ORIGIN, signer=signer) as log:
        for i in range(50):
            log.append(action="evidence.collected", actor="t", tenant="globex", host=f"h{i}", params={"n": i})
            log.append(action="step.done", actor="t", tenant="globex", host=f"h{i}", params={"n": i})
    with AuditLog.open(CASE, origin=ORIGIN, signer=signer) as log:
        log.append(action="evidence.collected", actor="t", tenant="globex", host="h7", params={"n": 100})
        log.append(action="evidence.collected", actor="t", tenant="initech", host="h7", params={"n": 200})
        reads = []
        real = log.verified_records
        log.verified_records = lambda *a, **k: (reads.append(1), real(*a, **k))[1]  # type: ignore[method-assign]
        mine = log.indexed(("evidence.collected",), tenant="globex", host="h7")
        assert [r["params"]["n"] for r in mine] == [7, 100]  # before and after the reopen, oldest first
        assert [r["params"]["n"] for r in log.indexed(("evidence.collected",), host="h7")] == [7, 100, 200]
        assert len(log.indexed(("evidence.collected", "step.done"), tenant="globex")) == 101
        assert log.indexed(("evidence.collected",), tenant="globex", host="nope") == []
        for _ in range(20):
            log.indexed(("step.done",), tenant="globex", host="h3")
        assert len(reads) == 1  # the history before this writer is verified once, then indexed
        # signed_records goes through the index while the log is open here
        got = signed_records(CASE, actions=("step.done",), tenant="globex", host="h3")
        assert [r["params"]["n"] for r in got or []] == [3]
    # and falls back to verifying the whole log when no writer has it open
    got = signed_records(CASE, actions=("evidence.collected",), tenant="initech", host="h7")
    assert [r["params"]["n"] for r in got or []] == [200]
