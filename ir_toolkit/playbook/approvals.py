"""Approvals bound to a plan hash, signed with the approver's Ed25519 key.

An approval file (``journal/plan-<hash>.approvals/<name>.json``) holds the
approver's name, the plan hash, the approver's verifier key string
(``name+hex(keyid)+base64(0x01||pub)``, as used by signed notes) and an
Ed25519 signature over ``irkit-approval\\n<plan hash>\\n<name>\\n``. It counts
for a tenant when its author is an approver of that tenant or of the MSP and
the key is the ``approval_key`` the inventory pins for that contact (every
approver must have one; the loader refuses approvers without). Keys count, not
names: one key counts once per tenant, whichever contacts it is pinned for, and
a signature with the responder's own key is the responder's confirmation (it is
never counted a second time).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ir_toolkit.fsutil import write_atomic
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


APPROVER_PASSPHRASE_ENV = "IRKIT_APPROVER_PASSPHRASE"


def approver_key_name(approver: str) -> str:
    """The signed-note key name of an approver's key (cosmetic: keys are matched by public key)."""
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in approver.lower()).strip("-.") or "approver"
    return f"approver/{slug}"


def load_approver_signer(path: Path, approver: str) -> object:
    """An approver's own Ed25519 key (PEM/PKCS#8 or OpenSSH; encrypted ones ask for the passphrase,
    ``$IRKIT_APPROVER_PASSPHRASE`` or a prompt) as a signer."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ir_toolkit.tlog.note import Signer

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"--key {path}: cannot read: {exc.strerror}") from None
    loader = (serialization.load_ssh_private_key if b"OPENSSH PRIVATE KEY" in data
              else serialization.load_pem_private_key)
    try:
        try:
            key = loader(data, password=None)
        except TypeError:       # encrypted
            from ir_toolkit.secrets.keystore import get_passphrase

            secret = get_passphrase(env=APPROVER_PASSPHRASE_ENV, what=str(path))
            key = loader(data, password=secret.encode())
    except ValueError as exc:
        raise InputError(f"--key {path}: not a usable private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"--key {path}: not an Ed25519 private key")
    return Signer(approver_key_name(approver), key)


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
    write_atomic(path, (json.dumps(approval, indent=1, sort_keys=True) + "\n").encode(), mode=0o600)
    return path


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _contacts(inventory: Inventory, tenant: str) -> list[Contact]:
    return [c for c in (*inventory.msp.contacts, *inventory.tenant(tenant).contacts) if c.approver]


def pinned_key(contact: Contact) -> bytes:
    """The Ed25519 public key the inventory pins for ``contact`` (reads ``file:`` references)."""
    text = contact.approval_key
    if not text:
        raise InputError(f"approver {contact.name!r} has no approval_key")
    if text.startswith("file:"):
        from ir_toolkit.secrets.references import expand_path

        path = expand_path(text[len("file:"):])
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"approval_key of {contact.name!r}: cannot read {path}: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None
    return parse_verifier_key(text).public_bytes_raw()


def valid_approvals(plan: Plan, inventory: Inventory, *, responder_key: bytes | None = None
                    ) -> tuple[dict[str, set[str]], list[str]]:
    """Approvers per tenant with a valid signature on this plan (one per distinct key), plus problems.

    ``responder_key``: the raw public key of the responder whose own confirmation
    the caller counts; an approval signed with it is not counted again.
    """
    found: dict[str, set[str]] = {t: set() for t in plan.tenants()}
    problems: list[str] = []
    directory = approvals_dir(plan.path())
    if not directory.is_dir():
        return found, problems
    used: dict[str, dict[bytes, str]] = {t: {} for t in found}
    pins: dict[str, bytes | None] = {}
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
        signer_key = key.public_bytes_raw()
        if responder_key is not None and signer_key == responder_key:
            problems.append(f"{path.name}: signed with the responder's own key: it is the responder's "
                            "confirmation, counted once")
            continue
        for tenant in found:
            for contact in _contacts(inventory, tenant):
                if contact.name != approval.approver:
                    continue
                if contact.name not in pins:
                    try:
                        pins[contact.name] = pinned_key(contact)
                    except InputError as exc:
                        pins[contact.name] = None
                        problems.append(f"{path.name}: {exc}")
                if pins[contact.name] != signer_key:
                    if pins[contact.name] is not None:
                        problems.append(f"{path.name}: not signed with the approval_key pinned for "
                                        f"{contact.name!r}")
                    continue
                other = used[tenant].get(signer_key)
                if other is not None and other != contact.name:
                    problems.append(f"{path.name}: the key already counted for {other!r} in tenant {tenant} "
                                    "(keys count, not names)")
                    continue
                used[tenant][signer_key] = contact.name
                found[tenant].add(contact.name)
    return found, sorted(set(problems))
