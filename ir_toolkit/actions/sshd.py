"""sshd on the host, for the containment actions: read its facts (:mod:`ir_toolkit.facts.sshd`) and
reload it safely.

A reload is ``sshd -t`` (refuse a broken config) followed by SIGHUP to the daemon's pid (what
``systemctl reload ssh`` does too); the daemon, its effective config and ``authorized_keys``
parsing are facts (a command and a pure parser each) in :mod:`ir_toolkit.facts.sshd`.
"""

from __future__ import annotations

from ir_toolkit.actions.base import ActionContext, ActionFailed
from ir_toolkit.facts import sshd as facts
from ir_toolkit.facts.sshd import SshdDaemon


def locate(ctx: ActionContext) -> SshdDaemon:
    """Find the sshd daemon whose child is running our commands."""
    return ctx.fact(facts.daemon())


def client_address(ctx: ActionContext) -> str:
    """The address the host sees us connecting from (for ``Match Address`` evaluation)."""
    return ctx.fact(facts.client_address())


def effective_config(ctx: ActionContext, daemon: SshdDaemon, user: str, addr: str) -> dict[str, list[str]]:
    """``sshd -T`` for a connection by ``user`` from ``addr``: keyword -> values (lower-case keywords)."""
    return ctx.fact(facts.effective_config(daemon, user, addr))


def effective_for_users(ctx: ActionContext, daemon: SshdDaemon, users: list[str], addr: str,
                        keywords: tuple[str, ...]) -> dict[str, dict[str, list[str]]]:
    """Selected ``sshd -T`` keywords for many users in one round trip (``Match User`` blocks differ per user;
    without any ``Match`` block one evaluation serves every user)."""
    if not users:
        return {}
    if not ctx.fact(facts.has_match_blocks(daemon)):
        config = effective_config(ctx, daemon, users[0], addr)
        view = {k: v for k, v in config.items() if k in keywords}
        return {user: view for user in users}
    return ctx.fact(facts.effective_for_users(daemon, users, addr, keywords))


def test_config(ctx: ActionContext, daemon: SshdDaemon) -> str | None:
    """``sshd -t`` with the daemon's options: None when valid, else the error."""
    result = ctx.run(daemon.command("-t"))
    if result.ok:
        return None
    err = result.stderr.decode("utf-8", "replace").strip().splitlines()
    return err[-1] if err else f"exit {result.exit_status}"


def reload(ctx: ActionContext, daemon: SshdDaemon, *, tested: bool = False) -> None:
    """Validate the config (unless the caller just did, with nothing run since: ``tested``), then SIGHUP
    the daemon (it re-executes itself and re-reads everything) and wait until it listens again."""
    if not tested:
        problem = test_config(ctx, daemon)
        if problem:
            raise ActionFailed(f"sshd config does not validate; not reloading: {problem}")
    # The daemon re-executes under the same pid; wait (on the host, in the same command: one channel,
    # not one per poll) until it is back to a listener, at most ~2.5 s as before.
    pid = int(daemon.pid)
    ctx.run(f"kill -HUP {pid} || exit $?; i=0; while [ $i -lt 50 ]; do "
            f"if grep -q sshd /proc/{pid}/comm 2>/dev/null && "
            f"tr '\\0' ' ' < /proc/{pid}/cmdline 2>/dev/null | grep -q listener; then exit 0; fi; "
            "sleep 0.05; i=$((i+1)); done; exit 0", check=True)
