"""Basic actions that make the engine testable end to end: run a command, check/write a file."""

from __future__ import annotations

import dataclasses

import hashlib
from typing import Literal

from pydantic import Field

from ir_toolkit.actions.base import Action, ActionContext, ActionFailed, Outcome, Params, register


class CommandParams(Params):
    command: str
    #: skip when this path exists on the host (makes the command idempotent, like Ansible's ``creates``)
    creates: str | None = None
    #: only report, never change: the command is an inspection (runs also in plan)
    read_only: bool = False
    expect_exit: int = 0


@register
class RunCommand(Action):
    """Run a shell command on the host."""

    name = "command.run"
    Params = CommandParams
    description = "run a shell command (idempotent with creates:)"

    def _exists(self, ctx: ActionContext, path: str) -> bool:
        return ctx.run(f"test -e {ctx.quote(path)}").ok

    def plan(self, ctx: ActionContext, params: CommandParams) -> Outcome:
        if params.read_only:
            return Outcome(False, f"would run (read-only): {params.command}")
        if params.creates and self._exists(ctx, params.creates):
            return Outcome(False, f"{params.creates} exists; nothing to do")
        return Outcome(True, f"would run: {params.command}")

    def apply(self, ctx: ActionContext, params: CommandParams) -> Outcome:
        if params.creates and self._exists(ctx, params.creates):
            return Outcome(False, f"{params.creates} exists; nothing to do")
        result = ctx.run(params.command)
        if result.exit_status != params.expect_exit:
            err = result.stderr.decode("utf-8", "replace").strip()[-200:]
            raise ActionFailed(f"command exited {result.exit_status}" + (f": {err}" if err else ""))
        return Outcome(not params.read_only, f"ran: {params.command}",
                       {"exit": result.exit_status, "stdout_sha256": hashlib.sha256(result.stdout).hexdigest()})

    def verify(self, ctx: ActionContext, params: CommandParams) -> Outcome:
        if params.creates:
            ok = self._exists(ctx, params.creates)
            return Outcome(False, f"{params.creates} {'exists' if ok else 'is missing'}", ok=ok)
        return Outcome(False, "command ran", ok=True)


class FileCheckParams(Params):
    path: str
    state: Literal["present", "absent"] = "present"
    contains: str | None = None


@register
class CheckFile(Action):
    """Check that a file is present/absent (and contains a string). Changes nothing."""

    name = "file.check"
    Params = FileCheckParams
    description = "check a file's presence or content"

    def _check(self, ctx: ActionContext, params: FileCheckParams) -> Outcome:
        path = ctx.quote(params.path)
        if params.state == "absent":
            ok = not ctx.run(f"test -e {path}").ok
            return Outcome(False, f"{params.path} is {'absent' if ok else 'present'}", ok=ok)
        if params.contains is not None:
            result = ctx.run(f"grep -qF -- {ctx.quote(params.contains)} {path}")
            return Outcome(False, f"{params.path} {'contains' if result.ok else 'lacks'} the text", ok=result.ok)
        ok = ctx.run(f"test -e {path}").ok
        return Outcome(False, f"{params.path} is {'present' if ok else 'missing'}", ok=ok)

    plan = _check

    def apply(self, ctx: ActionContext, params: FileCheckParams) -> Outcome:
        outcome = self._check(ctx, params)
        if not outcome.ok:
            raise ActionFailed(outcome.summary)
        return dataclasses.replace(outcome, verified=True)  # the check is its own proof

    verify = _check


class FileWriteParams(Params):
    path: str
    content: str
    mode: str = Field(default="0644", pattern=r"^0?[0-7]{3,4}$")


@register
class WriteFile(Action):
    """Write a file with exact content and mode (content goes over stdin)."""

    name = "file.write"
    Params = FileWriteParams
    description = "write a file (idempotent: compares SHA-256)"
    destructive = False

    def _current(self, ctx: ActionContext, params: FileWriteParams) -> tuple[str | None, str | None]:
        path = ctx.quote(params.path)
        result = ctx.run(f"sha256sum {path} 2>/dev/null && stat -c %a {path}")
        if not result.ok:
            return None, None
        lines = result.text.split()
        return lines[0], lines[-1]

    def _wanted(self, params: FileWriteParams) -> tuple[str, str]:
        return hashlib.sha256(params.content.encode()).hexdigest(), params.mode.lstrip("0") or "0"

    def plan(self, ctx: ActionContext, params: FileWriteParams) -> Outcome:
        digest, mode = self._current(ctx, params)
        want_digest, want_mode = self._wanted(params)
        if digest == want_digest and mode == want_mode:
            return Outcome(False, f"{params.path} already as wanted")
        what = "create" if digest is None else "update"
        return Outcome(True, f"would {what} {params.path}", {"sha256": want_digest})

    def apply(self, ctx: ActionContext, params: FileWriteParams) -> Outcome:
        # One round trip: compare, write only when different (atomically, content over stdin), then
        # read the file back; the final digest and mode prove the end state.
        want_digest, want_mode = self._wanted(params)
        path = ctx.quote(params.path)
        tmp = ctx.quote(params.path + ".irkit-tmp")
        script = (
            f"cur=$(sha256sum {path} 2>/dev/null | cut -d' ' -f1); mode=$(stat -c %a {path} 2>/dev/null); "
            f"if [ \"$cur\" = {want_digest} ] && [ \"$mode\" = {want_mode} ]; then cat >/dev/null; echo same; "
            f"else (umask 077; cat > {tmp}) && chmod {params.mode} {tmp} && mv -f {tmp} {path} && echo wrote; fi "
            f"&& sha256sum {path} | cut -d' ' -f1 && stat -c %a {path}"
        )
        result = ctx.run(script, stdin=params.content.encode(), check=True)
        lines = result.text.split()
        if len(lines) != 3:
            raise ActionFailed(f"unexpected output writing {params.path}")
        verb, digest, mode = lines
        ok = digest == want_digest and mode == want_mode
        changed = verb == "wrote"
        summary = f"wrote {params.path}" if changed else f"{params.path} already as wanted"
        if not ok:
            return Outcome(changed, f"{params.path} differs after writing", ok=False, verified=True)
        return Outcome(changed, summary, {"sha256": want_digest}, verified=True)

    def verify(self, ctx: ActionContext, params: FileWriteParams) -> Outcome:
        digest, mode = self._current(ctx, params)
        want_digest, want_mode = self._wanted(params)
        ok = digest == want_digest and mode == want_mode
        return Outcome(False, f"{params.path} {'matches' if ok else 'differs'}", ok=ok)
