"""#16: a query against the open audit log does not fsync when nothing was written since the last commit
(each gate / history query used to pay an fsync pair), and still makes a fresh record durable and signed."""

from __future__ import annotations

from ir_toolkit.audit.log import AuditLog, signed_records
from ir_toolkit.audit.verify import verify_case


def test_queries_after_a_commit_do_not_fsync_and_new_records_still_commit(signer):
    case = "IR-QCOMMIT"
    with AuditLog.open(case, origin=f"acme/ir/{case}", signer=signer) as log:
        for i in range(20):
            log.append(action="evidence.collected", actor="a", tenant="t", host=f"h{i}", params={"bundle": str(i)})
        log.sync()
        before = log.stats["fsyncs"]
        for i in range(200):
            assert len(signed_records(case, ("evidence.collected",), tenant="t", host=f"h{i % 20}") or []) == 1
            log.verified_records(("evidence.collected",))
        assert log.stats["fsyncs"] == before          # nothing new: no fsync, no checkpoint
        log.append(action="host.isolated", actor="a", tenant="t", host="h3", params={"allowed": ["x"]})
        found = signed_records(case, ("host.isolated",), tenant="t", host="h3")
        assert found and found[0]["host"] == "h3"
        assert log.stats["fsyncs"] == before + 1      # the new record was made durable first ...
        note = log.latest_checkpoint()
        assert note is not None and f"\n{log.size}\n" in note          # ... and signed
    assert verify_case(case).ok
