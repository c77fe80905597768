"""Plans: the deterministic, content-hashed list of (phase, step, host) items a run will execute.

A plan is made by inspecting every targeted host with each action's ``plan``
(which changes nothing), saved under the case's ``journal/`` directory, shown
for approval, and then executed exactly: ``irkit apply`` refuses a plan whose
playbook or inventory changed since it was made, or whose hash does not match.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rfc8785

from ir_toolkit.cases import CaseLayout
from ir_toolkit.errors import InputError
from ir_toolkit.fsutil import write_atomic
from ir_toolkit.redaction import redact

PLAN_VERSION = 1


@dataclass(frozen=True)
class PlanItem:
    id: str
    phase: str
    phase_index: int
    step: str
    step_index: int
    tenant: str
    host: str
    action: str
    params: dict[str, Any]
    requires_approval: bool
    destructive: bool
    change: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Plan:
    case: str
    msp: str
    playbook_path: str
    playbook_sha256: str
    inventory_path: str
    inventory_sha256: str
    items: list[PlanItem]
    #: (fingerprint of the body, its hash): a run asks for the hash about ten times, and the RFC 8785
    #: serialisation of a 200-host plan costs ~0.1 s of CPU each time (pure Python); the fingerprint (C json)
    #: is ~10x cheaper, so a plan changed in place still gets its new hash
    _hash_memo: tuple[bytes, str] | None = field(default=None, init=False, repr=False, compare=False)

    def body(self) -> dict[str, Any]:
        return {
            "version": PLAN_VERSION,
            "case": self.case,
            "msp": self.msp,
            "playbook": {"path": self.playbook_path, "sha256": self.playbook_sha256},
            "inventory": {"path": self.inventory_path, "sha256": self.inventory_sha256},
            "items": [item.to_json() for item in self.items],
        }

    @property
    def hash(self) -> str:
        """SHA-256 over the RFC 8785 canonical JSON of the plan body."""
        body = self.body()
        fingerprint = hashlib.sha256(json.dumps(body, sort_keys=True, default=repr).encode()).digest()
        memo = self._hash_memo
        if memo is not None and memo[0] == fingerprint:
            return memo[1]
        value = hashlib.sha256(rfc8785.dumps(_jsonable(body))).hexdigest()
        self._hash_memo = (fingerprint, value)
        return value

    def tenants(self) -> list[str]:
        return sorted({item.tenant for item in self.items})

    def path(self) -> Path:
        return CaseLayout.of(self.case).plan_file(self.hash)

    def save(self) -> Path:
        path = self.path()
        data = {**self.body(), "hash": self.hash}
        write_atomic(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode(), mode=0o600)
        return path


def _jsonable(value: Any) -> Any:
    """Make a value canonical-JSON safe (no floats: they become strings)."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_plan(path: str | Path) -> Plan:
    """Read a saved plan and check its hash (a modified plan file is refused)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: plan not found") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable plan: {exc}") from None
    try:
        plan = Plan(
            case=data["case"], msp=data["msp"],
            playbook_path=data["playbook"]["path"], playbook_sha256=data["playbook"]["sha256"],
            inventory_path=data["inventory"]["path"], inventory_sha256=data["inventory"]["sha256"],
            items=[PlanItem(**item) for item in data["items"]],
        )
    except (KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a valid plan ({exc})") from None
    if data.get("hash") != plan.hash:
        raise InputError(f"{path}: plan hash mismatch: the plan was modified after it was made")
    return plan


def item_id(phase: str, step_index: int, host: str) -> str:
    return f"{phase}/{step_index}/{host}"


def plan_params(params: Any) -> dict[str, Any]:
    """The parameters as recorded in a plan: redacted, JSON-safe."""
    raw = params.model_dump(mode="json") if hasattr(params, "model_dump") else dict(params)
    return _jsonable(redact(raw))


def wire_params(params: Any) -> dict[str, Any]:
    """The parameters as sent to a tenant's agent: exact (references stay references, a dict named
    ``secret_vars`` stays a dict), JSON-safe, and refused if a registered secret value is in them."""
    raw = params.model_dump(mode="json") if hasattr(params, "model_dump") else dict(params)
    data = _jsonable(raw)
    text = json.dumps(data, sort_keys=True)
    from ir_toolkit.redaction import redact_text

    if redact_text(text) != text:
        raise InputError("step parameters carry a secret value: use a reference (env:NAME, file:PATH)")
    return dict(data)
