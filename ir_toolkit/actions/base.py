"""The action interface: plan (inspect, change nothing), apply (idempotent), verify (prove it took).

An action is a small class registered by name. Its parameters are a pydantic
model (unknown parameters are refused with file/line by the playbook loader).
Actions talk to a host only through :class:`ActionContext`; they never touch
the CLI, never prompt and keep no module-global state, and they report what they
did as frozen :class:`Outcome` values that the engine writes to the audit log.

Several actions may share one step name when they serve different hosts: each
declares the host ``os`` values and the transport ``connection_kinds`` it works
over (``"ssh"``, ``"winrm"``, ``"ldap"``), and :func:`action_for` picks the one
for a host. Each also declares whether the engine may retry it after a transient
transport failure (``retry_safe``).
"""

from __future__ import annotations

import shlex
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

from ir_toolkit.audit.journal import Journal, ReadOnlyJournal
from ir_toolkit.deadline import Deadline
from ir_toolkit.facts.base import FactError, Output, Query, gather
from ir_toolkit.facts.batch import MAX_QUERIES, FactMemo, batch, batchable
from ir_toolkit.inventory.model import Host, Inventory
from ir_toolkit.secrets.keyprovider import KeyProvider
from ir_toolkit.transports.base import TIMED_OUT, CommandResult, Connection, TransportError
from ir_toolkit.transports.pool import ConnectionPool

T = TypeVar("T")


class Params(BaseModel):
    """Base for action parameters: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class ActionContext:
    """Everything an action may use for one host during one step (typed; nothing string-keyed).

    ``journal`` is the case's audit log (a :class:`ReadOnlyJournal` while planning, so
    "plan changes nothing" is enforced), ``pool`` the run's connections (for fresh
    connections after a reimage, and responder keys), ``actor`` who runs irkit,
    ``keys`` the responder's keys unlocked once by the run service (locked while
    planning), ``deadline`` the step's :class:`~ir_toolkit.deadline.Deadline` (inside the
    host's budget): every command, probe, stream and sleep takes what is left of it.
    """

    host: Host
    inventory: Inventory
    case_id: str
    conn: Connection
    deadline: Deadline
    journal: Journal = field(default_factory=ReadOnlyJournal)
    pool: ConnectionPool | None = None
    actor: str = "irkit"
    keys: KeyProvider = field(default_factory=KeyProvider.locked)
    planning: bool = False
    #: planning for a person to read (``irkit plan``, ``--dry-run``, an interactive confirmation):
    #: actions may run costly previews (Ansible ``--check --diff``); False under ``--yes``
    preview: bool = True
    #: while planning: the host's answers so far, by command (a fact asked again is not asked again;
    #: the engine prefetches the steps' :meth:`Action.plan_facts` in one command). None outside planning.
    memo: FactMemo | None = None
    #: outside planning, for an action whose ``reuses_facts`` is set: this step's answers (apply and verify
    #: share them), by command. A fact asked again is answered from here only while NO other command has
    #: run since it was read: :meth:`run` forgets every answer first (a command may change anything), so a
    #: read-back after a change is always a new read. :meth:`prefetch` asks independent facts in one command.
    step_facts: FactMemo | None = None
    #: the host's proofs of responder access within one phase (the engine's; see :class:`AccessProofs`)
    proofs: AccessProofs | None = None

    def remaining(self) -> float:
        return self.deadline.remaining()

    def run(self, command: str, *, stdin: bytes | None = None, timeout: float | None = None,
            check: bool = False) -> CommandResult:
        """Run a command on the host within the step's deadline."""
        if self.step_facts is not None:
            self.step_facts.clear()  # the command may change what any fact said
        if self.proofs is not None:
            self.proofs.forget()  # ... and whether the responder still gets in
        result = self._run(command, stdin=stdin, timeout=timeout)
        if check and not result.ok:
            err = result.stderr.decode("utf-8", "replace").strip().splitlines()
            raise ActionFailed(
                f"`{command.split()[0] if command.split() else command}` exited {result.exit_status}"
                + (f": {err[-1][:200]}" if err else "")
            )
        return result

    def _run(self, command: str, *, stdin: bytes | None = None, timeout: float | None = None) -> CommandResult:
        left = self.remaining()
        if left <= 0:
            raise TransportError(TIMED_OUT, f"{self.host.name}: step deadline reached")
        return self.conn.run(command, stdin=stdin, timeout=min(timeout or left, left))

    def fact(self, query: Query[T]) -> T:
        """Read one host fact (a command and its pure parser, :mod:`ir_toolkit.facts`) within the step's
        deadline; an answer the parser refuses (malformed, oversized, contradictory) fails the host."""
        try:
            if self.memo is not None and self.planning:
                return self.memo.fact(self, query)
            if self.planning or self.step_facts is None:
                return gather(self, query)
            if query.stdin is not None:  # a secret may travel on stdin: such answers are not kept
                return gather(_FactRunner(self), query)
            return self.step_facts.fact(_FactRunner(self), query)
        except FactError as exc:
            raise ActionFailed(str(exc)) from None

    def prefetch(self, queries: Sequence[Query[Any]]) -> None:
        """Ask the host those of ``queries`` not answered yet (independent, read-only facts) in ONE command
        (:mod:`ir_toolkit.facts.batch`: framed answers; a batch with any irregularity answers nothing and
        each fact is then asked alone when it is read). Later :meth:`fact` calls read them - until the next
        :meth:`run`, which forgets them. Planning uses the engine's memo instead."""
        if self.planning or self.step_facts is None or self.conn.kind != "ssh":
            return
        try:
            self.step_facts.prefetch(_FactRunner(self), queries)
        except TransportError as exc:
            if exc.kind == TIMED_OUT:
                raise
            # a lost channel: each fact is asked alone when read, and fails there with its own message

    def run_then_read(self, command: str, queries: Sequence[Query[Any]], *,
                      timeout: float | None = None) -> CommandResult:
        """Run ``command`` (a change; no stdin, its stderr is not kept) and THEN read ``queries`` (facts of
        the state it leaves) in ONE command, framed like a prefetch (:mod:`ir_toolkit.facts.batch`: no
        answer can pose as another). Like :meth:`run` it forgets every answer and proof first; the
        read-backs are then this step's answers, which :meth:`fact` returns until the next command.

        Returns the command's exit status and stdout. When the host's answer is not exactly the frames
        asked for (or outside a step's memo), ``command`` is run again ALONE and the facts are asked one
        by one when read: so ``command`` must be safe to run twice (idempotent)."""
        if self.planning or self.step_facts is None or self.conn.kind != "ssh" or not queries:
            return self.run(command, timeout=timeout)
        wanted = list({(q.command, q.stdin): q for q in queries if batchable(q)}.values())[:MAX_QUERIES - 1]
        one = batch([Query("run", command, lambda out: out), *wanted])
        result = self.run(one.command, timeout=timeout)
        try:
            answers = one.parse(Output(result.exit_status, result.stdout, result.stderr))
        except FactError:
            return self.run(command, timeout=timeout)
        self.step_facts.remember(wanted, answers[1:])
        return CommandResult(answers[0].exit_status, answers[0].stdout, b"", result.duration)

    def record(self, action: str, params: dict[str, Any], outcome: str = "ok") -> int:
        """A durable audit record about this host (raises while planning); returns its seq."""
        return self.journal.append_durable(action=action, actor=self.actor, tenant=self.host.tenant,
                                           host=self.host.name, params=params, outcome=outcome)

    def require_pool(self) -> ConnectionPool:
        if self.pool is None:
            raise ActionFailed("this step needs the engine's connection pool (run it through the engine)")
        return self.pool

    @staticmethod
    def quote(text: str) -> str:
        return shlex.quote(text)


#: Destruction classes: what a destructive action destroys, and so which evidence the gate requires
#: before it (playbook/gate.py, docs/containment.md).
#: isolation: the live network state (the intruder's flows, sockets, peers) - needs a volatile snapshot
DESTROYS_NETWORK = "network"
#: credential and file changes (keys revoked, passwords rotated, groups, directory, config files) -
#: needs the full evidence bundle (histories, authorized_keys, logs, the files being changed)
DESTROYS_CREDENTIALS = "credentials"
#: reimage: the whole disk and memory - needs the full evidence bundle
DESTROYS_EVERYTHING = "everything"
DESTRUCTION_CLASSES = (DESTROYS_NETWORK, DESTROYS_CREDENTIALS, DESTROYS_EVERYTHING)


class Action(ABC):
    """One kind of change. Subclasses set ``name``, ``Params`` and implement the three methods."""

    name: ClassVar[str]
    Params: ClassVar[type[Params]]
    description: ClassVar[str] = ""
    #: destroys or alters evidence/state (credential change, isolation, reimage): gated on triage
    destructive: ClassVar[bool] = False
    #: what a destructive action destroys (one of DESTRUCTION_CLASSES); the gate requires the matching
    #: evidence. Unset on a destructive action: treated as credentials/files (the full bundle is required).
    destroys: ClassVar[str | None] = None
    #: host OSes this action supports
    os: ClassVar[tuple[str, ...]] = ("linux",)
    #: transports it works over (the host's ``transport``: ssh, winrm, ldap)
    connection_kinds: ClassVar[tuple[str, ...]] = ("ssh",)
    #: the engine may run apply+verify again after a transient transport failure
    #: (False for steps that must never run twice, such as a reimage)
    retry_safe: ClassVar[bool] = True
    #: parameters ``plan`` does not read (e.g. one only ``apply`` checks): planning reuses the prediction of
    #: the same action with otherwise equal parameters earlier on the same host (plans change nothing, so
    #: the host is in the same state), e.g. for the containment playbook's verify phase
    plan_ignores: ClassVar[tuple[str, ...]] = ()
    #: every change this action makes goes through ``ctx.run`` (no streams, no other process such as
    #: ansible-runner): the engine then gives its steps a :attr:`ActionContext.step_facts` memo
    reuses_facts: ClassVar[bool] = False

    @abstractmethod
    def plan(self, ctx: ActionContext, params: Any) -> Outcome:
        """Inspect the host and say what would change. Must change nothing."""

    def plan_facts(self, ctx: ActionContext, params: Any) -> Sequence[Query[Any]]:
        """The facts ``plan`` reads that depend on no other fact (pure: asks the host nothing). The engine
        asks the host those of all of a host's steps in one command (:mod:`ir_toolkit.facts.batch`) before
        the plans run; ``plan`` then reads them with ``ctx.fact`` as usual. Default: none."""
        return ()

    @abstractmethod
    def apply(self, ctx: ActionContext, params: Any) -> Outcome:
        """Make the change. Idempotent: a second apply reports ``changed=False``."""

    @abstractmethod
    def verify(self, ctx: ActionContext, params: Any) -> Outcome:
        """Prove the change took (``ok=False`` if not)."""

    def on_failed(self, journal: Journal, actor: str, tenant: str, host: str, error: str) -> None:
        """Called by the engine after this step failed on ``host`` (also when no connection could be
        made, so ``apply`` never ran): an action may add its own audit record. Default: nothing."""
        return None


class _FactRunner:
    """Runs a fact's command for the step memo without forgetting the memo (facts change nothing)."""

    def __init__(self, ctx: ActionContext) -> None:
        self.ctx = ctx

    def run(self, command: str, *, stdin: bytes | None = None, timeout: float | None = None) -> CommandResult:
        return self.ctx._run(command, stdin=stdin, timeout=timeout)


class AccessProofs:
    """One host's fresh-login proofs of responder access within one phase (kept by the engine).

    A proof is recorded when a step's fresh login as ``user`` with key ``fingerprint`` worked. A step
    of the same phase may take it instead of logging in again ONLY in its ``verify`` (:attr:`reusable`)
    and only while nothing can have changed on the host since the proof: every command a step runs
    (``ActionContext.run``) forgets every proof, a failed step forgets them, and so does a step that
    reports a change unless all its changes go through ``ctx.run`` (``Action.reuses_facts``: then a
    proof made after its last command - e.g. the fresh login after an sshd reload - still stands).
    A verify that takes one says so in its summary, which goes into the step's audit record.
    """

    def __init__(self) -> None:
        self._proofs: dict[tuple[str, str], str] = {}
        #: the step now running (named in the proofs it records)
        self.step = ""
        #: proofs may be taken now (the engine sets it for a verify whose apply changed nothing)
        self.reusable = False

    def record(self, user: str, fingerprint: str) -> None:
        self._proofs.setdefault((user, fingerprint), self.step)

    def find(self, user: str, fingerprints: Sequence[str]) -> str | None:
        """The step whose proof may be reused for ``user`` with one of ``fingerprints`` (None: log in)."""
        if not self.reusable:
            return None
        for fp in fingerprints:
            step = self._proofs.get((user, fp))
            if step is not None:
                return step
        return None

    def forget(self) -> None:
        self._proofs.clear()


_REGISTRY: dict[str, list[type[Action]]] = {}


def register(cls: type[Action]) -> type[Action]:
    """Class decorator: make an action available to playbooks by its ``name``.

    Several classes may share a name if no two serve the same (os, connection kind).
    """
    variants = _REGISTRY.setdefault(cls.name, [])
    if cls in variants:
        return cls
    for other in variants:
        if other.__qualname__ == cls.__qualname__ and other.__module__ == cls.__module__:
            variants.remove(other)  # the same class defined again (a module reloaded)
            break
        if set(other.os) & set(cls.os) and set(other.connection_kinds) & set(cls.connection_kinds):
            raise ValueError(f"action {cls.name!r} registered twice for the same os and connection kind")
    variants.append(cls)
    return cls


def registry() -> dict[str, list[type[Action]]]:
    """All registered actions by step name, each a list of variants (built-in action modules first)."""
    from ir_toolkit.actions import load_builtin_actions

    load_builtin_actions()
    return {name: list(variants) for name, variants in _REGISTRY.items()}


def get_action(name: str) -> type[Action]:
    """The first registered variant of ``name`` (for callers that do not know the host)."""
    actions = registry()
    if name not in actions or not actions[name]:
        raise KeyError(name)
    return actions[name][0]


def action_for(name: str, host: Host) -> type[Action] | None:
    """The variant of ``name`` for ``host`` (its os and transport), or None if none serves it."""
    kind = host.transport or "ssh"
    for cls in registry().get(name, []):
        if host.os in cls.os and kind in cls.connection_kinds:
            return cls
    return None

