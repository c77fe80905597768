"""The small public toolkit every action shares: audit records, endpoints as another user, responder
access proofs, and reading/writing whole files on the host.

Everything here is public API for the action modules (no sibling reaches into another's private
helpers); host *facts* with parsers of their own live in :mod:`ir_toolkit.facts`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import paramiko

from ir_toolkit.actions.base import ActionContext
from ir_toolkit.facts import accounts, files
from ir_toolkit.facts.accounts import PasswdEntry
from ir_toolkit.transports.base import Endpoint
from ir_toolkit.transports.hostkeys import fingerprint
from ir_toolkit.transports.probes import fresh_login


def jsonable(value: Any) -> Any:
    """Audit records take no floats: durations and the like become strings."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def record(ctx: ActionContext, action: str, params: dict[str, Any], outcome: str = "ok") -> int:
    """A durable audit record of one change about this host, with the case; returns its seq.

    No secrets go in (the log redacts again anyway); floats become strings (:func:`jsonable`).
    Raises while planning (the journal is read-only then).
    """
    return int(ctx.record(action, jsonable({"case": ctx.case_id, **params}), outcome))


def endpoint_as(ctx: ActionContext, user: str) -> Endpoint:
    """The host's pinned endpoint, as ``user``."""
    return dataclasses.replace(ctx.conn.endpoint, user=user)


def responder_pkeys(ctx: ActionContext) -> list[paramiko.PKey]:
    """The keys irkit logs in with (the per-case key first), for proofs of access."""
    return list(ctx.require_pool().keys(ctx.host))


def responder_access_works(ctx: ActionContext) -> bool:
    """A fresh login as the responder with any of irkit's keys works (made now: never a reused proof)."""
    return responder_access(ctx, reuse=False).ok


@dataclasses.dataclass(frozen=True)
class AccessProof:
    """The answer to "does a fresh responder login work?": ``ok``, and ``reused_from`` - the step of this
    phase whose fresh login stands for it (None: this call logged in itself)."""

    ok: bool
    reused_from: str | None = None

    #: the proof taken is the one this step's own ``apply`` made after its last command
    own: bool = False

    def note(self) -> str:
        """For a verify's summary: where the proof comes from when it was not made just now."""
        if self.reused_from is None:
            return ""
        if self.own:
            return " (the fresh login this step made after its last command on the host)"
        return f" (the fresh login of step {self.reused_from} in this phase, no command run on the host since)"


def proven_login(ctx: ActionContext, endpoint: Endpoint, key: paramiko.PKey) -> bool:
    """A fresh login to ``endpoint`` with exactly ``key`` (made now); a working one is remembered as a proof of
    responder access for later steps of this phase (:class:`~ir_toolkit.actions.base.AccessProofs`)."""
    ok = fresh_login(endpoint, key, ctx.deadline)
    if ok and ctx.proofs is not None:
        ctx.proofs.record(endpoint.user, fingerprint(key.asbytes()))
    return ok


def responder_access(ctx: ActionContext, *, reuse: bool) -> AccessProof:
    """Does a fresh login as the responder with one of irkit's keys work?

    With ``reuse`` (only a ``verify`` passes it) an earlier fresh login of this phase stands for this
    one when the engine allows it: no command ran on the host since, no step changed it by other means
    (:class:`~ir_toolkit.actions.base.AccessProofs`). Otherwise a new connection is made.
    """
    user = ctx.conn.endpoint.user
    keys = responder_pkeys(ctx)
    if reuse and ctx.proofs is not None:
        step = ctx.proofs.find(user, [fingerprint(k.asbytes()) for k in keys])
        if step is not None:
            return AccessProof(True, step, own=step == ctx.proofs.step)
    endpoint = endpoint_as(ctx, user)
    return AccessProof(any(proven_login(ctx, endpoint, key) for key in keys))


def passwd_entry(ctx: ActionContext, user: str) -> PasswdEntry | None:
    """(user, uid, home) from the host's account database, or None if there is no such account."""
    return ctx.fact(accounts.passwd_entry(user))


def all_users(ctx: ActionContext) -> list[PasswdEntry]:
    """Every account of the host, (user, uid, home) each."""
    return ctx.fact(accounts.passwd_all())


def read_files(ctx: ActionContext, paths: list[str]) -> dict[str, str]:
    """Contents of those of ``paths`` that are regular files (following symlinks)."""
    return ctx.fact(files.read_files(paths)) if paths else {}


def write_file(ctx: ActionContext, path: str, content: str) -> None:
    """Replace a file atomically with ``content`` (sent on stdin), keeping its owner and mode."""
    q = ctx.quote(path)
    script = (f't=$(readlink -f -- {q}) && tmp="$t.irkit-tmp.$$" && umask 077 && cat > "$tmp" && '
              'if [ -e "$t" ]; then chown --reference="$t" "$tmp" && chmod --reference="$t" "$tmp"; fi && '
              'mv -f "$tmp" "$t"')
    ctx.run(script, stdin=content.encode(), check=True)
