"""Approvals bound to a plan hash, signed with the approver's Ed25519 key.

An approval file (``journal/plan-<hash>.approvals/<name>.json``) holds the
approver's name, the plan hash, the approver's verifier key string
(``name+hex(keyid)+base64(0x01||pub)``, as used by signed notes) and an
Ed25519 signature over ``irkit-approval\\n<plan hash>\\n<name>\\n``. It counts
for a tenant when its author is an approver of that tenant or of the MSP and
(when the inventory pins an ``approval_key`` for that contact) the key matches.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ir_toolkit.tlog.note import ALG_ED25519, NoteError, parse_vkey
from ir_toolkit.errors import InputError
from ir_toolkit.inventory.model import Contact, Inventory
from ir_toolkit.playbook.plan import Plan


@dataclass(frozen=True)
class Approval:
    approver: str
    plan: str
    verifier_key: str
    signature: str


def approval_message(plan_hash: str, approver: str) -> bytes:
    return f"irkit-approval\n{plan_hash}\n{approver}\n".encode()


def approvals_dir(plan_file: Path) -> Path:
    """Approvals live next to the plan file they approve (``plan-<hash>.approvals/``)."""
    return Path(plan_file).with_suffix(".approvals")


def parse_verifier_key(text: str) -> Ed25519PublicKey:
    """The Ed25519 key of a signed-note verifier key string (``name+hex(keyid)+base64(0x01||pub)``)."""
    try:
        verifier = parse_vkey(text)
    except NoteError as exc:
        raise InputError(str(exc)) from None
    if verifier.alg != ALG_ED25519:
        raise InputError(f"verifier key {text!r} is not an Ed25519 signing key")
    return Ed25519PublicKey.from_public_bytes(verifier.public)


def write_approval(plan: Plan, plan_file: Path, approver: str, signer: object) -> Path:
    """Sign and store, next to ``plan_file``, an approval of ``plan`` by ``approver`` (a keystore Signer)."""
    signature = signer.sign(approval_message(plan.hash, approver))  # type: ignore[attr-defined]
    approval = {
        "approver": approver, "plan": plan.hash,
        "verifier_key": signer.verifier_key(),  # type: ignore[attr-defined]
        "signature": base64.b64encode(signature).decode(),
    }
    directory = approvals_dir(plan_file)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"{_safe(approver)}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(approval, indent=1, sort_keys=True) + "\n")
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _contacts(inventory: Inventory, tenant: str) -> list[Contact]:
    return [c for c in (*inventory.msp.contacts, *inventory.tenant(tenant).contacts) if c.approver]


def valid_approvals(plan: Plan, inventory: Inventory) -> tuple[dict[str, set[str]], list[str]]:
    """Approvers per tenant with a valid signature on this plan, plus problems found."""
    found: dict[str, set[str]] = {t: set() for t in plan.tenants()}
    problems: list[str] = []
    directory = approvals_dir(plan.path())
    if not directory.is_dir():
        return found, problems
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            approval = Approval(**data)
            key = parse_verifier_key(approval.verifier_key)
            key.verify(base64.b64decode(approval.signature), approval_message(plan.hash, approval.approver))
        except (ValueError, TypeError, InputError, InvalidSignature) as exc:
            problems.append(f"{path.name}: invalid approval ({type(exc).__name__})")
            continue
        if approval.plan != plan.hash:
            problems.append(f"{path.name}: approves another plan")
            continue
        for tenant in found:
            for contact in _contacts(inventory, tenant):
                if contact.name == approval.approver and (
                    contact.approval_key is None or contact.approval_key == approval.verifier_key
                ):
                    found[tenant].add(approval.approver)
    return found, problems
