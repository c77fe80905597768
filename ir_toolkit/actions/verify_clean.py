"""``host.verify_clean``: read-only proof of a (reimaged) host's end state.

No breach trace (paths, systemd units, cron entries, processes, listening ports), no account
whose password is the old shared one (its hash on the host and a real login), no shared MSP key
in any authorized_keys file, the host presents its case pin and the responder logs in over it.
"""

from __future__ import annotations

import dataclasses

from pydantic import field_validator

from ir_toolkit.actions.base import Action, ActionContext, ActionFailed, Outcome, Params, register
from ir_toolkit.actions.reimage import reimaged_here
from ir_toolkit.actions.revocation import RevokeParams, inspect_revocation, revoke_targets
from ir_toolkit.actions.support import responder_pkeys
from ir_toolkit.facts import traces
from ir_toolkit.secrets.references import is_reference, parse_ref, resolve
from ir_toolkit.transports.base import Endpoint
from ir_toolkit.transports.hostkeys import case_pins
from ir_toolkit.transports.probes import fresh_login, login_with_password


# crypt(3) of the password on stdin against every shadow hash; prints the accounts that match
_SHADOW_MATCH = ("perl -e 'my $pw = <STDIN>; chomp $pw; open(my $f, \"<\", \"/etc/shadow\") or exit 3; "
                 "while (<$f>) { my ($u, $h) = split /:/; next unless defined $h && length($h) > 3 && $h !~ /^[!*]/; "
                 "print \"$u\\n\" if crypt($pw, $h) eq $h; }'")


class VerifyCleanParams(Params):
    #: files (or symlinks) that must not exist, e.g. a dropper
    absent_paths: list[str] = []
    #: systemd unit names that must not exist (unit files or enable links) anywhere systemd looks
    absent_units: list[str] = []
    #: text that must not appear in any crontab
    cron_patterns: list[str] = []
    #: text that must not appear in any process's command line (or its executable's path)
    process_patterns: list[str] = []
    #: TCP ports nothing may listen on (e.g. an implant's)
    ports: list[int] = []
    #: reference (env:NAME / file:PATH) to the old shared password: no account may have it
    old_password: str | None = None
    #: accounts to try the old password on over SSH (default: the inventory's shared accounts)
    login_accounts: list[str] = []
    #: no inventory shared SSH key in any authorized_keys file
    check_msp_keys: bool = True
    #: the host must be one irkit reimaged in this case and present its case pin
    require_reimaged: bool = True

    @field_validator("old_password")
    @classmethod
    def _ref(cls, value: str | None) -> str | None:
        if value is not None and not is_reference(value):
            raise ValueError("old_password is a reference (env:NAME or file:PATH), never the password itself")
        return value

    @field_validator("ports")
    @classmethod
    def _ports(cls, value: list[int]) -> list[int]:
        for port in value:
            if not 1 <= port <= 65535:
                raise ValueError(f"{port} is not a TCP port")
        return value


def breach_traces(ctx: ActionContext, params: VerifyCleanParams) -> list[str]:
    """Every trace of ``params`` still on the host (one line each); empty when clean (facts: :mod:`ir_toolkit.facts.traces`)."""
    found: list[str] = []
    files = traces.trace_files(params.absent_paths, params.absent_units, params.cron_patterns, params.ports)
    if files is not None:
        found += ctx.fact(files)
    procs = traces.trace_processes(params.process_patterns)
    if procs is not None:
        found += ctx.fact(procs)
    return sorted(set(found))


@register
class VerifyClean(Action):
    """Prove a (reimaged) host clean: no breach trace, no old password, no MSP key, responder over the pin."""

    name = "host.verify_clean"
    Params = VerifyCleanParams
    description = "prove no breach trace, old password or MSP key is left and the responder logs in over the pin"

    def plan(self, ctx: ActionContext, params: VerifyCleanParams) -> Outcome:
        return Outcome(False, "after the reimage: check breach traces, the old shared password, the MSP keys "
                              "and responder access over the new pin (changes nothing)")

    def apply(self, ctx: ActionContext, params: VerifyCleanParams) -> Outcome:
        outcome = self.verify(ctx, params)
        if not outcome.ok:
            raise ActionFailed(f"not clean: {outcome.summary}")
        return dataclasses.replace(outcome, verified=True)

    def verify(self, ctx: ActionContext, params: VerifyCleanParams) -> Outcome:
        problems: list[str] = []
        notes: list[str] = []
        host = ctx.host
        port = int(host.port or 22)
        if params.require_reimaged:
            if reimaged_here(ctx) is None:
                problems.append("not reimaged by irkit in this case (or not presenting the key pinned then)")
            pins = case_pins(ctx.case_id, host.address, port)
            if ctx.conn.host_key_fingerprint not in pins:
                problems.append(f"host key {ctx.conn.host_key_fingerprint} is not the case pin")
            else:
                endpoint = Endpoint(host.address, port, ctx.conn.endpoint.user, set(pins), host.name)
                if any(fresh_login(endpoint, key, ctx.deadline) for key in responder_pkeys(ctx)):
                    notes.append("responder logs in over the pinned new key")
                else:
                    problems.append("responder login over the pinned new key FAILED")
        traces = breach_traces(ctx, params)
        problems += traces
        checked = (len(params.absent_paths) + len(params.absent_units) + len(params.cron_patterns)
                   + len(params.process_patterns) + len(params.ports))
        if checked and not traces:
            notes.append(f"{checked} breach trace(s) checked: none left")
        if params.old_password:
            old = resolve(parse_ref(params.old_password))
            matches = ctx.run(_SHADOW_MATCH, stdin=(old + "\n").encode())
            if matches.exit_status != 0:
                problems.append("cannot read /etc/shadow to check the old password")
            elif matches.text.split():
                problems.append("the old shared password is set for " + ", ".join(matches.text.split()))
            users = list(params.login_accounts) or [
                a.user for a in ctx.inventory.msp.shared_credentials.accounts if (a.os or host.os) == host.os]
            for user in users:
                endpoint = Endpoint(host.address, port, user, {ctx.conn.host_key_fingerprint}, host.name)
                if login_with_password(endpoint, old, ctx.deadline):
                    problems.append(f"the old shared password STILL logs in as {user}")
            if not any("old shared password" in p for p in problems):
                notes.append(f"old shared password: no account has it, {len(users)} login(s) refused")
        else:
            notes.append("old shared password not checked (no old_password reference given)")
        if params.check_msp_keys:
            targets = revoke_targets(ctx, RevokeParams())
            if targets:
                state = inspect_revocation(ctx, targets, RevokeParams())
                for hit in state.hits:
                    problems.append(f"MSP key in {hit.path}")
                if not state.hits:
                    notes.append(f"{len(targets)} MSP key(s) in none of {state.files_checked} authorized_keys files")
        if problems:
            return Outcome(False, "; ".join(problems), {"problems": problems}, ok=False)
        return Outcome(False, "clean: " + "; ".join(notes), {"checks": notes})
