"""``accounts.provision``: on a host irkit reimaged in this case only, (re)create the MSP's local admin
accounts (the inventory's shared accounts with ``action: rotate``) with a locked password, so that
``accounts.rotate`` then gives each a unique escrowed password (audit record ``account.created``)."""

from __future__ import annotations

from ir_toolkit.actions.base import Action, ActionContext, ActionFailed, Outcome, Params, register
from ir_toolkit.actions.reimage import reimaged_here
from ir_toolkit.actions.support import record

RECORD_ACCOUNT_CREATED = "account.created"


class ProvisionParams(Params):
    #: accounts to (re)create; default: the inventory's shared accounts with ``action: rotate`` for this OS
    accounts: list[str] = []
    #: supplementary groups for created accounts (only those that exist on the host are used)
    groups: list[str] = ["adm", "sudo"]
    shell: str = "/bin/bash"


def _wanted_accounts(ctx: ActionContext, params: ProvisionParams) -> list[str]:
    if params.accounts:
        names = list(params.accounts)
    else:
        names = [a.user for a in ctx.inventory.msp.shared_credentials.accounts
                 if a.action == "rotate" and (a.os or ctx.host.os) == ctx.host.os]
    if ctx.conn.endpoint.user in names:
        raise ActionFailed(f"refusing to provision {ctx.conn.endpoint.user!r}: it is the account irkit logs in as")
    return names


def _missing(ctx: ActionContext, names: list[str]) -> list[str]:
    return [n for n in names if not ctx.run(f"getent passwd {ctx.quote(n)} >/dev/null").ok]


@register
class ProvisionAccounts(Action):
    """(Re)create the MSP's local admin accounts, password locked, on a host irkit reimaged in this case."""

    name = "accounts.provision"
    Params = ProvisionParams
    description = "recreate local admin accounts (locked) on a freshly reimaged host, for accounts.rotate"

    def plan(self, ctx: ActionContext, params: ProvisionParams) -> Outcome:
        names = _wanted_accounts(ctx, params)
        if not names:
            return Outcome(False, "no local admin accounts to provision")
        if reimaged_here(ctx) is not None:
            missing = _missing(ctx, names)
            return Outcome(bool(missing), f"would create {', '.join(missing)} (password locked)" if missing
                           else "local admin accounts present")
        return Outcome(True, "after the reimage: create " + ", ".join(names) + " if missing (password locked)")

    def apply(self, ctx: ActionContext, params: ProvisionParams) -> Outcome:
        if reimaged_here(ctx) is None:
            raise ActionFailed(f"refusing to create accounts on {ctx.host.name}: irkit has not reimaged it in "
                               "this case (accounts.provision only runs right after host.reimage)")
        names = _wanted_accounts(ctx, params)
        missing = _missing(ctx, names)
        for user in missing:
            groups = ctx.run("for g in " + " ".join(ctx.quote(g) for g in params.groups)
                             + '; do getent group "$g" >/dev/null && printf "%s," "$g"; done; true').text.strip(",")
            ctx.run(f"useradd -m -s {ctx.quote(params.shell)}" + (f" -G {ctx.quote(groups)}" if groups else "")
                    + f" {ctx.quote(user)}", check=True)
            record(ctx, RECORD_ACCOUNT_CREATED, {"account": user, "groups": groups.split(",") if groups else [],
                                                  "password_state": "locked"})
        still = _missing(ctx, names)
        if still:
            raise ActionFailed("could not create " + ", ".join(still))
        summary = (f"created {', '.join(missing)} (password locked until accounts.rotate)" if missing
                   else "local admin accounts present" if names else "no local admin accounts to provision")
        return Outcome(bool(missing), summary, {"created": missing}, verified=True)

    def verify(self, ctx: ActionContext, params: ProvisionParams) -> Outcome:
        still = _missing(ctx, _wanted_accounts(ctx, params))
        return Outcome(False, "missing: " + ", ".join(still) if still else "accounts present", ok=not still)
