"""Playbook files: named phases in order, each a list of steps that name registered actions.

See docs/playbooks.md for the format. Loading validates everything up front:
unknown keys, unknown actions and unknown or ill-typed action parameters are
errors that name the file, the line and the field (exit 2).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ir_toolkit.actions.base import Action, registry
from ir_toolkit.errors import FileInputError
from ir_toolkit.yamlfile import LDict, field_name, line_of, load, validate

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Targets(_Model):
    """Which hosts a step applies to; every given selector must match (empty = all)."""

    tenants: list[str] = []
    groups: list[str] = []
    hosts: list[str] = []
    os: list[Literal["linux", "windows", "directory"]] = []


class Wave(_Model):
    """How a phase rolls out: a canary tenant first, then batches of ``size`` hosts (or percent)."""

    canary_tenant: str | None = None
    size: int | str = "100%"

    @field_validator("size")
    @classmethod
    def _size(cls, value: int | str) -> int | str:
        if isinstance(value, int):
            if value < 1:
                raise ValueError("wave size must be >= 1")
            return value
        if not re.fullmatch(r"(100|[1-9][0-9]?)%", value):
            raise ValueError("wave size is a host count or a percentage like '25%'")
        return value


class Step(_Model):
    name: str
    action: str
    params: dict[str, Any] = {}
    targets: Targets = Targets()
    requires_approval: bool = False
    timeout: float | None = Field(default=None, gt=0, le=86400)
    retries: int | None = Field(default=None, ge=0, le=10)
    #: written reason to run a destructive step without verified evidence (an audit record)
    evidence_override: str | None = None


class Phase(_Model):
    name: str
    description: str | None = None
    wave: Wave = Wave()
    max_fail_percentage: float = Field(default=100, ge=0, le=100)
    tenant_max_fail_percentage: float = Field(default=100, ge=0, le=100)
    #: at most this many hosts of a group per tenant at once (e.g. domain controllers: 1)
    max_concurrent: dict[str, int] = {}
    steps: list[Step] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"{value!r} is not a valid phase name (lowercase letters, digits, '-', '_', '.')")
        return value


class Defaults(_Model):
    timeout: float = Field(default=120, gt=0, le=86400)
    retries: int = Field(default=1, ge=0, le=10)
    host_timeout: float = Field(default=1800, gt=0, le=7 * 86400)
    connect_timeout: float = Field(default=10, gt=0, le=300)


class Playbook(_Model):
    version: Literal[1] = 1
    name: str
    description: str | None = None
    defaults: Defaults = Defaults()
    phases: list[Phase] = Field(min_length=1)

    def step_timeout(self, step: Step) -> float:
        return step.timeout if step.timeout is not None else self.defaults.timeout

    def step_retries(self, step: Step) -> int:
        return step.retries if step.retries is not None else self.defaults.retries


class LoadedPlaybook:
    """A validated playbook plus the parsed parameter objects of its steps (per action variant)."""

    def __init__(self, path: Path, playbook: Playbook, params: dict[tuple[int, int], dict[type, BaseModel]],
                 text: str) -> None:
        self.path = path
        self.playbook = playbook
        self.params = params
        self.text = text

    def step_params(self, phase_index: int, step_index: int, action: type[Action] | None = None) -> BaseModel:
        """The step's parameters as parsed by ``action``'s model (default: the step's first variant)."""
        by_model = self.params[(phase_index, step_index)]
        if action is None:
            return next(iter(by_model.values()))
        return by_model[action.Params]


def load_playbook(path: str | Path) -> LoadedPlaybook:
    """Read and fully validate a playbook file."""
    path = Path(path)
    data = load(path, what="playbook")
    if not isinstance(data, LDict):
        raise FileInputError(str(path), getattr(data, "line", 1), None, "a playbook is a mapping with name: and phases:")
    playbook: Playbook = validate(Playbook, data, path)
    actions = registry()
    params: dict[tuple[int, int], dict[type, BaseModel]] = {}
    phase_names: set[str] = set()
    for pi, phase in enumerate(playbook.phases):
        if phase.name in phase_names:
            loc = ("phases", pi, "name")
            raise FileInputError(str(path), line_of(data, loc), field_name(loc), f"duplicate phase name {phase.name!r}")
        phase_names.add(phase.name)
        for si, step in enumerate(phase.steps):
            base = ("phases", pi, "steps", si)
            if step.action not in actions:
                loc = (*base, "action")
                known = ", ".join(sorted(actions))
                raise FileInputError(str(path), line_of(data, loc), field_name(loc),
                                     f"unknown action {step.action!r} (known: {known})")
            # every variant that may serve the step's hosts must accept its parameters
            variants = [cls for cls in actions[step.action]
                        if not step.targets.os or set(cls.os) & set(step.targets.os)] or actions[step.action][:1]
            parsed: dict[type, BaseModel] = {}
            for model in dict.fromkeys(cls.Params for cls in variants):
                try:
                    parsed[model] = model.model_validate(step.params)
                except ValidationError as exc:
                    err = exc.errors(include_url=False)[0]
                    loc = (*base, "params", *err.get("loc", ()))
                    msg = "unknown parameter" if err.get("type") == "extra_forbidden" else (
                        "required parameter is missing" if err.get("type") == "missing"
                        else str(err.get("msg", "invalid value")).removeprefix("Value error, "))
                    raise FileInputError(str(path), line_of(data, loc), field_name(loc),
                                         f"{msg} for action {step.action!r}") from None
            for cls in actions[step.action]:  # variants outside the targets' os still get a parse, if valid
                if cls.Params not in parsed:
                    try:
                        parsed[cls.Params] = cls.Params.model_validate(step.params)
                    except ValidationError:
                        pass
            params[(pi, si)] = parsed
    return LoadedPlaybook(path, playbook, params, path.read_text(encoding="utf-8"))
