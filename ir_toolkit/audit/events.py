"""Every audit record irkit writes: its name, what it means, its params and outcomes - in one place.

Writers use these names (``tests/test_audit_events.py`` fails on a record name written
anywhere in ``ir_toolkit/`` that is not declared here); readers (the evidence gate, reimage
history, resume, ``audit report``/OCSF) look records up by them. ``params`` lists the keys a
record carries (besides ``case``, which action records add); ``outcomes`` the values of its
``outcome`` field (``ok`` unless said otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    name: str
    summary: str
    params: tuple[str, ...] = ()
    outcomes: tuple[str, ...] = ("ok",)


# --- the engine (playbook/engine.py) and the run service (run/session.py)
RUN_START = "run.start"
RUN_END = "run.end"
RUN_STOPPED = "run.stopped"
TENANT_STOPPED = "tenant.stopped"
STEP_START = "step.start"
STEP_DONE = "step.done"
STEP_REFUSED = "step.refused"
STEP_SKIPPED = "step.skipped"
GATE_OVERRIDE = "gate.override"
HOST_TIMED_OUT = "host.timed_out"
APPROVAL_GIVEN = "approval.given"
# --- agents (agents/dispatch.py): what a tenant's agent answered, written by the controller only
AGENT_INTENT = "agent.intent"
AGENT_RESULT = "agent.result"
AGENT_REFUSED = "agent.refused"
AGENT_CHAIN_GAP = "agent.chain_gap"
AGENT_CHAIN_CONFLICT = "agent.chain_conflict"
AGENT_MESSAGE_REJECTED = "agent.message_rejected"
AGENT_EXPORTED = "agent.exported"
AGENT_IMPORTED = "agent.imported"

_ALL = [
    Event(RUN_START, "a run of a plan begins", ("plan", "playbook", "resumed")),
    Event(RUN_END, "the run ended; with the time to isolation and to full containment (milliseconds from run.start, "
          "null unless every planned host got there; isolated/contained as reached/planned; per tenant in "
          "tenant_figures; playbook/milestones.py)",
          ("plan", "status", "ok", "failed", "timed_out", "skipped", "time_to_isolation_ms",
           "time_to_full_containment_ms", "isolated", "contained", "tenant_figures"),
          ("ok", "failed", "incomplete")),
    Event(RUN_STOPPED, "a wave went over max_fail_percentage: later waves held", ("phase", "wave", "reason"),
          ("stopped",)),
    Event(TENANT_STOPPED, "a tenant went over tenant_max_fail_percentage", ("phase", "failed", "hosts"),
          ("stopped",)),
    Event(STEP_START, "intent: a step is about to run on a host", ("item", "step_action", "wave"), ("intent",)),
    Event(STEP_DONE, "a step's result on a host",
          ("item", "step_action", "wave", "changed", "summary", "verify", "details", "attempts", "error", "kind"),
          ("ok", "failed", "timed_out")),
    Event(STEP_REFUSED, "a step was not run (approvals missing, no verified evidence: `needs` names the missing "
          "evidence kind, `destroys` the step's destruction class)",
          ("item", "step_action", "wave", "reason", "destroys", "needs"), ("refused",)),
    Event(STEP_SKIPPED, "a step was skipped (an earlier step of the host failed)",
          ("item", "step_action", "wave", "reason"), ("skipped",)),
    Event(GATE_OVERRIDE, "a destructive step ran without verified evidence, with a written reason",
          ("item", "step_action", "wave", "reason", "destroys", "needs")),
    Event(HOST_TIMED_OUT, "the wave watchdog gave up on a host over its budget and closed its connection",
          ("reason", "host_timeout"), ("timed_out",)),
    Event(APPROVAL_GIVEN, "an approval of a plan (the responder's confirmation or a signed approval)",
          ("plan", "approver", "kind")),
    Event(AGENT_INTENT, "a tenant's agent signed that it is about to run a step (verify_first: after an "
          "unfinished attempt)", ("step_id", "item", "attempt", "agent_id", "agent_seq", "prev_agent_hash",
                                 "message_sha256", "verify_first"), ("intent",)),
    Event(AGENT_RESULT, "a tenant's agent's signed result of a step (the first per step; duplicate: a later copy)",
          ("step_id", "item", "attempt", "agent_id", "agent_seq", "prev_agent_hash", "message_sha256", "outcome",
           "status", "started", "finished", "host_key_fp", "evidence", "verify_first", "duplicate"),
          ("ok", "failed", "duplicate")),
    Event(AGENT_REFUSED, "a tenant's agent refused an envelope (bad signature, another tenant's, expired, ...)",
          ("step_id", "item", "attempt", "agent_id", "agent_seq", "prev_agent_hash", "message_sha256", "code",
           "reason", "envelope_sha256", "claims"), ("refused",)),
    Event(AGENT_CHAIN_GAP, "an agent's message chain skipped numbers (a message was lost or withheld)",
          ("agent_id", "agent_seq", "expected_seq", "message_sha256"), ("failed",)),
    Event(AGENT_CHAIN_CONFLICT, "an agent's message does not continue its chain (a fork or a replayed number)",
          ("agent_id", "agent_seq", "expected_seq", "message_sha256"), ("failed",)),
    Event(AGENT_MESSAGE_REJECTED, "a message on a tenant's results queue was not accepted (unsigned, foreign, "
          "a record the agent may not write)", ("code", "reason", "message_sha256"), ("refused",)),
    Event(AGENT_EXPORTED, "an offline tenant's signed steps were written to a file (irkit plan export)",
          ("plan", "envelopes", "file", "file_sha256", "valid_hours")),
    Event(AGENT_IMPORTED, "an offline agent's results file went through the verification path (irkit results import)",
          ("plan", "file_sha256", "steps_done", "recorded", "duplicate", "rejected")),
    # --- the audit log itself (audit/log.py)
    Event("audit.log_created", "the log's genesis record", ("origin", "key")),
    Event("audit.recovered", "the writer recovered a torn or unsigned tail at open", ("size", "dropped", "untrusted")),
    Event("audit.key_rotated", "the signing key was rotated", ("old", "new")),
    Event("audit.key_activated", "a new signing key took over", ("key",)),
    # --- evidence (triage/custody.py)
    Event("evidence.collected", "a sealed evidence bundle and its custody (bundle and manifest SHA-256)",
          ("collection_id", "bundle", "bundle_file", "bundle_sha256", "bundle_size", "manifest_sha256",
           "encrypted", "recipients", "profile", "kind", "status", "files_collected", "files_failed", "files_skipped",
           "hash_mismatches"), ("ok", "partial")),
    Event("evidence.collection_failed", "a collection was attempted and produced no bundle", ("error",),
          ("failed",)),
    # --- access and credentials (actions/responder.py, accounts.py, revocation.py, windows.py, secrets)
    Event("responder.key_installed", "the per-case responder key was installed and a fresh login proven",
          ("fingerprint", "file", "user", "key_created")),
    Event("responder.access_failed", "the installed case key did not log in: nothing else changes on the host",
          ("fingerprint", "file"), ("failed",)),
    Event("responder.key_removed", "case close: the per-case responder key was taken off the host",
          ("fingerprint", "file", "user", "lines")),
    Event("responder.key_removal_rolled_back", "case close: the MSP's responder key failed, the case key was put back",
          ("fingerprint", "file"), ("failed",)),
    Event("credential.escrowed", "a new secret was escrowed (encrypted, fsynced) before it is applied",
          ("account", "entry", "state")),
    Event("credential.applied", "the escrowed secret was set on the host", ("account", "entry", "state")),
    Event("credential.rotated", "the new secret logs in and the old one does not", ("account", "entry", "state")),
    Event("credential.reconciled", "after an interrupted rotation, which escrowed secret the host takes",
          ("account", "entries", "state")),
    Event("account.locked", "a shared account was locked and expired", ("account", "expired")),
    Event("sessions.ended", "the account's processes were ended by pid", ("account", "pids")),
    Event("ssh_keys.revoked", "the MSP's shared keys were removed and put in sshd's KRL", ("keys", "files")),
    Event("group.member_removed", "a Windows account was removed from a local group", ("account", "group")),
    Event("escrow.read", "someone decrypted an escrowed secret", ("account", "entry", "state")),
    # --- isolation (actions/isolation.py, windows.py)
    Event("host.isolated", "the host was isolated (irkit's own firewall table)", ("allowed", "table")),
    Event("host.released", "the isolation was removed and the ruleset is as before", ("table",)),
    Event("host.flows_cut", "established flows of the intruder were cut", ("flows",)),
    Event("host.isolation_rolled_back", "isolation was rolled back: the responder lost access",
          ("reason",), ("failed",)),
    Event("isolation.rolled_back", "Windows isolation rolled back: the fresh login failed", ("reason",), ("failed",)),
    # --- reimage (actions/reimage.py)
    Event("reimage.start", "intent: a host is about to be reinstalled",
          ("provider", "reason", "image_url", "boot_target", "old_host_key_fingerprint", "forced", "started_at"),
          ("intent",)),
    Event("reimage.provider", "what the reimage provider did (phases, facts)", ("provider", "status", "facts"),
          ("ok", "failed")),
    Event("reimage.done", "the reimage finished (new key pinned, responder login proven) or failed",
          ("provider", "old_host_key_fingerprint", "new_host_key_fingerprint", "error", "started_at",
           "finished_at"), ("ok", "failed")),
    Event("host_key.accepted", "a reinstalled host's new key was accepted because irkit reimaged it",
          ("old_host_key_fingerprint", "new_host_key_fingerprint", "known_hosts", "host_key_changed")),
    Event("host_key.refused", "a changed host key was refused", ("reason",), ("refused",)),
    Event("account.created", "an account was re-provisioned after a reimage", ("account", "entry")),
    # --- Active Directory (actions/directory.py)
    Event("directory.evidence", "a directory evidence file and its custody (SHA-256, size)",
          ("domain", "file", "sha256", "size")),
    Event("directory.account_disabled", "an MSP account in the directory was disabled", ("account", "dn")),
    Event("directory.group_member_removed", "an account was removed from a guarded group",
          ("account", "group")),
    Event("directory.password_escrowed", "a directory password was escrowed before the reset", ("account", "entry")),
    Event("directory.password_reset", "a directory password was reset (twice for krbtgt-like accounts)",
          ("account", "entry")),
    Event("directory.password_refused", "the directory refused a password reset", ("account", "error"),
          ("failed", "refused")),
    Event("directory.krbtgt_reset", "the krbtgt account's password was reset", ("account", "resets")),
    Event("directory.privileged_member", "a privileged group member found by the sweep",
          ("account", "dn", "groups", "whenCreated")),
    # --- Ansible (actions/ansible.py)
    Event("ansible.task", "one Ansible task result on a host", ("task", "status", "changed")),
    Event("ansible.stats", "an Ansible run's per-host stats", ("ok", "changed", "failed", "unreachable")),
]

EVENTS: dict[str, Event] = {event.name: event for event in _ALL}


def event(name: str) -> Event:
    """The declared event ``name`` (KeyError for a name irkit does not write)."""
    return EVENTS[name]
