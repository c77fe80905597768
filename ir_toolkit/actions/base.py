"""The action interface: plan (inspect, change nothing), apply (idempotent), verify (prove it took).

An action is a small class registered by name. Its parameters are a pydantic
model (unknown parameters are refused with file/line by the playbook loader).
Actions talk to a host only through :class:`ActionContext`; they never touch
the CLI, and they report what they did as :class:`Outcome` values that the
engine writes to the audit log.
"""

from __future__ import annotations

import shlex
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from ir_toolkit.inventory.model import Host, Inventory
from ir_toolkit.transports.base import (
    TIMED_OUT,
    CommandResult,
    Connection,
    TransportError,
)


class Params(BaseModel):
    """Base for action parameters: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class Outcome:
    """What a plan/apply/verify found or did. ``changed`` drives idempotence reports."""

    changed: bool
    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    ok: bool = True
    #: set by ``apply`` when it already read the end state back from the host in the same
    #: command (e.g. a write that re-hashes the file it wrote): the engine then skips ``verify``
    verified: bool = False


class ActionFailed(Exception):
    """The action could not do its job on this host (the host is marked failed)."""


@dataclass
class ActionContext:
    """Everything an action may use for one host during one step."""

    host: Host
    inventory: Inventory
    case_id: str
    conn: Connection
    deadline: float
    services: dict[str, Any] = field(default_factory=dict)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, command: str, *, stdin: bytes | None = None, timeout: float | None = None,
            check: bool = False) -> CommandResult:
        """Run a command on the host within the step's deadline."""
        left = self.remaining()
        if left <= 0:
            raise TransportError(TIMED_OUT, f"{self.host.name}: step deadline reached")
        result = self.conn.run(command, stdin=stdin, timeout=min(timeout or left, left))
        if check and not result.ok:
            err = result.stderr.decode("utf-8", "replace").strip().splitlines()
            raise ActionFailed(
                f"`{command.split()[0] if command.split() else command}` exited {result.exit_status}"
                + (f": {err[-1][:200]}" if err else "")
            )
        return result

    @staticmethod
    def quote(text: str) -> str:
        return shlex.quote(text)


class Action(ABC):
    """One kind of change. Subclasses set ``name``, ``Params`` and implement the three methods."""

    name: ClassVar[str]
    Params: ClassVar[type[Params]]
    description: ClassVar[str] = ""
    #: destroys or alters evidence/state (credential change, isolation, reimage): gated on triage
    destructive: ClassVar[bool] = False
    #: host OSes this action supports
    os: ClassVar[tuple[str, ...]] = ("linux",)

    @abstractmethod
    def plan(self, ctx: ActionContext, params: Any) -> Outcome:
        """Inspect the host and say what would change. Must change nothing."""

    @abstractmethod
    def apply(self, ctx: ActionContext, params: Any) -> Outcome:
        """Make the change. Idempotent: a second apply reports ``changed=False``."""

    @abstractmethod
    def verify(self, ctx: ActionContext, params: Any) -> Outcome:
        """Prove the change took (``ok=False`` if not)."""


_REGISTRY: dict[str, type[Action]] = {}


def register(cls: type[Action]) -> type[Action]:
    """Class decorator: make an action available to playbooks by its ``name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"action {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def registry() -> dict[str, type[Action]]:
    """All registered actions (importing the built-in action modules first)."""
    from ir_toolkit.actions import load_builtin_actions

    load_builtin_actions()
    return dict(_REGISTRY)


def get_action(name: str) -> type[Action]:
    actions = registry()
    if name not in actions:
        raise KeyError(name)
    return actions[name]
