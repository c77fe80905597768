"""Signed work between the controller and a tenant's agent: step envelopes out, agent messages back.

Both are RFC 8785 canonical JSON objects with one signature field (``sig``) over the
canonical bytes of everything else, prefixed with a domain tag so that an envelope's
signature can never be taken for a message's (or for an audit checkpoint's):

* a :class:`StepEnvelope` (controller -> agent) is signed with the controller's audit
  signing key (:class:`ir_toolkit.tlog.note.Signer`, the key ``irkit keys init`` made);
  the agent pins its verifier key (``name+keyid+base64``);
* an :class:`AgentMessage` (agent -> controller: ``intent`` before acting, ``result``
  after, ``refusal`` for an envelope it will not run) is signed with the agent's own
  Ed25519 key, and messages of one agent form a hash chain (``agent_seq``,
  ``prev_agent_hash``) so a dropped or forged message shows as a gap.

Parsing is strict: unknown fields, wrong types, non-canonical base64 and oversized
documents are refused with a typed :class:`EnvelopeError` (one line each). Nothing here
carries a secret: parameters with a registered secret in them are refused at signing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import rfc8785

from ir_toolkit.tlog.note import NoteError, Signer, Verifier, parse_vkey

ENVELOPE_VERSION = 1
STEP_TAG = b"irkit-step-envelope/v1\n"
MESSAGE_TAG = b"irkit-agent-message/v1\n"
#: the first message of an agent's chain points at this
GENESIS = "0" * 64
#: refuse bigger documents before parsing them (a message carries records, not evidence)
MAX_DOCUMENT = 4 * 1024 * 1024
MESSAGE_KINDS = ("intent", "result", "refusal")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class EnvelopeError(ValueError):
    """A document that cannot be used; ``code`` names why (for refusal records), ``str()`` says it."""

    code = "malformed"


class MalformedEnvelope(EnvelopeError):
    code = "malformed"


class BadSignature(EnvelopeError):
    code = "bad_signature"


class UnknownSigner(EnvelopeError):
    code = "unknown_signer"


def canonical(doc: dict[str, Any]) -> bytes:
    """RFC 8785 bytes of ``doc`` (floats are refused: times are integers, durations strings or ints)."""
    _no_floats(doc)
    return bytes(rfc8785.dumps(doc))


def _no_floats(value: Any, where: str = "") -> None:
    if isinstance(value, float):
        raise MalformedEnvelope(f"{where or 'value'}: floats are not allowed in signed documents")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise MalformedEnvelope(f"{where}: keys must be strings")
            _no_floats(v, f"{where}.{k}" if where else k)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _no_floats(v, f"{where}[{i}]")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def step_id(plan_hash: str, tenant: str, host: str, action: str, item: str) -> str:
    """H(plan_hash ‖ tenant ‖ host ‖ action ‖ pass): the same step of the same plan has the same id on
    every attempt, redelivery and resume (the pass is the plan item, so one action twice in a plan differs)."""
    parts = [plan_hash, tenant, host, action, item]
    return sha256_hex(b"\x00".join(p.encode() for p in parts))


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise MalformedEnvelope("signature is not a string")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise MalformedEnvelope("signature is not base64") from None
    if _b64(raw) != text:
        raise MalformedEnvelope("signature is not canonical base64")
    return raw


RECIPIENT_KINDS = ("escrow", "evidence")
MAX_RECIPIENTS = 8


def _recipients(value: Any) -> dict[str, list[str]]:
    """The envelope's co-recipients: known kinds only, each a short list of canonical base64 32-byte keys."""
    if not isinstance(value, dict) or set(value) - set(RECIPIENT_KINDS):
        raise MalformedEnvelope("recipients: an object with escrow/evidence lists only")
    out: dict[str, list[str]] = {}
    for kind, keys in value.items():
        if not isinstance(keys, list) or len(keys) > MAX_RECIPIENTS:
            raise MalformedEnvelope(f"recipients.{kind}: a list of at most {MAX_RECIPIENTS} keys")
        for key in keys:
            try:
                raw = _unb64(key)
            except MalformedEnvelope:
                raise MalformedEnvelope(f"recipients.{kind}: not canonical base64") from None
            if len(raw) != 32:
                raise MalformedEnvelope(f"recipients.{kind}: not a raw X25519 public key (32 bytes)")
        out[kind] = list(keys)
    return out


def load_document(raw: bytes | str | dict[str, Any]) -> dict[str, Any]:
    """Bytes/text of JSON (or an already decoded dict from the broker) -> a dict, size-checked."""
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    if len(raw) > MAX_DOCUMENT:
        raise MalformedEnvelope(f"document of {len(raw)} bytes is over the {MAX_DOCUMENT} limit")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedEnvelope(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise MalformedEnvelope("a signed document is a JSON object")
    return doc


def _sign(tag: bytes, body: dict[str, Any], signer: Signer) -> dict[str, Any]:
    data = canonical(body)
    return {**body, "sig": {"key": signer.verifier_key(), "value": _b64(signer.sign(tag + data))}}


def _verify(tag: bytes, doc: dict[str, Any], trusted: list[Verifier]) -> tuple[dict[str, Any], Verifier]:
    """The body of ``doc`` and the trusted key that signed it, or a typed error."""
    sig = doc.get("sig")
    if not isinstance(sig, dict) or set(sig) != {"key", "value"} or not isinstance(sig.get("key"), str):
        raise MalformedEnvelope("missing or malformed sig")
    try:
        claimed = parse_vkey(sig["key"])
    except NoteError as exc:
        raise MalformedEnvelope(f"sig.key: {exc}") from None
    signature = _unb64(sig["value"])
    known = next((v for v in trusted if v == claimed), None)
    if known is None:
        raise UnknownSigner(f"signed by {claimed.name}+{claimed.key_id.hex()}, which is not a pinned key")
    body = {k: v for k, v in doc.items() if k != "sig"}
    if len(signature) != 64 or not known.verify_raw(tag + canonical(body), signature):
        raise BadSignature(f"signature by {known.name}+{known.key_id.hex()} does not verify")
    return body, known


def _need(doc: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = doc.get(name)
    if isinstance(value, bool) and kind is int:
        raise MalformedEnvelope(f"{name}: expected an integer")
    if not isinstance(value, kind):
        want = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise MalformedEnvelope(f"{name}: expected {want}, got {type(value).__name__}")
    return value


def _fields(cls: type) -> set[str]:
    return set(cls.__dataclass_fields__)  # type: ignore[attr-defined]


def _check_keys(doc: dict[str, Any], cls: type, what: str) -> None:
    extra = set(doc) - _fields(cls) - {"sig"}
    if extra:
        raise MalformedEnvelope(f"{what}: unknown field(s) {', '.join(sorted(extra))}")


# --------------------------------------------------------------------------- controller -> agent


@dataclass(frozen=True)
class Approvals:
    """The approvals a step relies on: how many the tenant needs, how many were valid when it was sent,
    and the audit log checkpoint (size, root) that covers their ``approval.given`` records."""

    required: int
    count: int
    log_size: int = 0
    log_root: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StepEnvelope:
    """One step for one host, as the controller signs it for the tenant's agent."""

    run_id: str
    case: str
    tenant: str
    phase: str
    phase_index: int
    wave: int
    item: str
    step_id: str
    attempt: int
    host: str
    action: str
    params: dict[str, Any]
    requires_approval: bool
    destructive: bool
    #: seconds the step may take on the host (the agent's own Deadline)
    deadline_s: int
    #: unix seconds: not to be started before / after (an envelope that waited too long is refused)
    not_before: int
    expires_at: int
    plan_hash: str
    approvals: Approvals
    log_origin: str
    #: how the controller's gate let a destructive step through: "evidence" or "override: <reason>"
    gate: str = ""
    #: the controller's own public keys ("escrow", "evidence": base64 of raw X25519 keys): the agent
    #: encrypts what the step escrows or collects to these as well as to its own keys
    recipients: dict[str, list[str]] = field(default_factory=dict)
    v: int = ENVELOPE_VERSION
    kind: str = "irkit.step"

    def body(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["approvals"] = self.approvals.to_json()
        return doc

    def sign(self, signer: Signer) -> dict[str, Any]:
        return _sign(STEP_TAG, self.body(), signer)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> StepEnvelope:
        _check_keys(body, cls, "envelope")
        if body.get("v") != ENVELOPE_VERSION or body.get("kind") != "irkit.step":
            raise MalformedEnvelope(f"not an irkit step envelope v{ENVELOPE_VERSION}")
        approvals = _need(body, "approvals", dict)
        if set(approvals) - _fields(Approvals):
            raise MalformedEnvelope("approvals: unknown field(s)")
        try:
            appr = Approvals(required=_need(approvals, "required", int), count=_need(approvals, "count", int),
                             log_size=int(approvals.get("log_size", 0)), log_root=str(approvals.get("log_root", "")))
        except (TypeError, ValueError):
            raise MalformedEnvelope("approvals: malformed") from None
        env = cls(
            run_id=_need(body, "run_id", str), case=_need(body, "case", str), tenant=_need(body, "tenant", str),
            phase=_need(body, "phase", str), phase_index=_need(body, "phase_index", int),
            wave=_need(body, "wave", int), item=_need(body, "item", str), step_id=_need(body, "step_id", str),
            attempt=_need(body, "attempt", int), host=_need(body, "host", str), action=_need(body, "action", str),
            params=_need(body, "params", dict), requires_approval=_need(body, "requires_approval", bool),
            destructive=_need(body, "destructive", bool), deadline_s=_need(body, "deadline_s", int),
            not_before=_need(body, "not_before", int), expires_at=_need(body, "expires_at", int),
            plan_hash=_need(body, "plan_hash", str), approvals=appr, log_origin=_need(body, "log_origin", str),
            gate=str(body.get("gate", "")), recipients=_recipients(body.get("recipients", {})),
        )
        if not _HEX64.match(env.plan_hash) or not _HEX64.match(env.step_id):
            raise MalformedEnvelope("plan_hash and step_id are 64 hex digits")
        if env.step_id != step_id(env.plan_hash, env.tenant, env.host, env.action, env.item):
            raise MalformedEnvelope("step_id is not H(plan_hash, tenant, host, action, item)")
        if env.attempt < 1 or env.deadline_s < 1:
            raise MalformedEnvelope("attempt and deadline_s must be positive")
        return env

    @classmethod
    def open(cls, raw: bytes | str | dict[str, Any], controller: list[Verifier]) -> StepEnvelope:
        """Verify the controller's signature first, then parse (nothing unsigned is looked at)."""
        body, _ = _verify(STEP_TAG, load_document(raw), controller)
        return cls.from_body(body)

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) > self.expires_at


def claimed_fields(raw: bytes | str | dict[str, Any]) -> dict[str, str]:
    """What an unverifiable envelope says about itself (for the refusal: labelled as claims)."""
    try:
        doc = load_document(raw)
    except EnvelopeError:
        return {}
    out = {}
    for key in ("step_id", "tenant", "host", "item", "action", "plan_hash", "run_id", "case"):
        value = doc.get(key)
        if isinstance(value, str):
            out[key] = value[:200]
    return out


def document_hash(raw: bytes | str | dict[str, Any]) -> str:
    """SHA-256 of a document as received (canonical form if it decodes, else the raw bytes)."""
    if isinstance(raw, dict):
        try:
            return sha256_hex(canonical(raw))
        except EnvelopeError:
            return sha256_hex(json.dumps(raw, sort_keys=True, default=str).encode())
    data = raw.encode("utf-8") if isinstance(raw, str) else raw
    return sha256_hex(data)


# --------------------------------------------------------------------------- agent -> controller


@dataclass(frozen=True)
class EvidenceRef:
    """A file the step left in the tenant's drop: its path relative to the case, SHA-256 and size."""

    path: str
    sha256: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AgentMessage:
    """An agent's signed message: ``intent`` (about to act), ``result`` (what happened), ``refusal``."""

    kind: str
    agent_id: str
    agent_seq: int
    prev_agent_hash: str
    tenant: str
    step_id: str
    attempt: int
    sent_at: int
    host: str = ""
    item: str = ""
    plan_hash: str = ""
    run_id: str = ""
    #: result: {"status", "changed", "summary", "verify", "details", "error", "kind", "attempts"}
    outcome: dict[str, Any] = field(default_factory=dict)
    started: int = 0
    finished: int = 0
    host_key_fp: str = ""
    evidence: tuple[EvidenceRef, ...] = ()
    #: audit records the step's action asked for, written by the controller ({action, params, outcome})
    records: tuple[dict[str, Any], ...] = ()
    #: refusal: a code (bad_signature, unknown_signer, wrong_tenant, expired, unknown_host, ...) and text
    code: str = ""
    reason: str = ""
    #: refusal: SHA-256 of the refused document and what it claimed (unverified)
    envelope_sha256: str = ""
    claims: dict[str, str] = field(default_factory=dict)
    #: intent: the step runs again after an unfinished attempt (verify first)
    verify_first: bool = False
    v: int = ENVELOPE_VERSION

    def body(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["evidence"] = [e.to_json() for e in self.evidence]
        doc["records"] = list(self.records)
        return doc

    def sign(self, signer: Signer) -> dict[str, Any]:
        return _sign(MESSAGE_TAG, self.body(), signer)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> AgentMessage:
        _check_keys(body, cls, "message")
        if body.get("v") != ENVELOPE_VERSION or body.get("kind") not in MESSAGE_KINDS:
            raise MalformedEnvelope("not an irkit agent message")
        evidence = []
        for ref in _need(body, "evidence", list):
            if not isinstance(ref, dict) or set(ref) != {"path", "sha256", "size"}:
                raise MalformedEnvelope("evidence: each is {path, sha256, size}")
            if not isinstance(ref["path"], str) or not _HEX64.match(str(ref["sha256"])) \
                    or not isinstance(ref["size"], int) or isinstance(ref["size"], bool) or ref["size"] < 0:
                raise MalformedEnvelope("evidence: malformed reference")
            evidence.append(EvidenceRef(ref["path"], ref["sha256"], ref["size"]))
        records = _need(body, "records", list)
        if not all(isinstance(r, dict) for r in records):
            raise MalformedEnvelope("records: each is an object")
        claims = _need(body, "claims", dict)
        msg = cls(
            kind=_need(body, "kind", str), agent_id=_need(body, "agent_id", str),
            agent_seq=_need(body, "agent_seq", int), prev_agent_hash=_need(body, "prev_agent_hash", str),
            tenant=_need(body, "tenant", str), step_id=_need(body, "step_id", str),
            attempt=_need(body, "attempt", int), sent_at=_need(body, "sent_at", int),
            host=_need(body, "host", str), item=_need(body, "item", str), plan_hash=_need(body, "plan_hash", str),
            run_id=_need(body, "run_id", str), outcome=_need(body, "outcome", dict),
            started=_need(body, "started", int), finished=_need(body, "finished", int),
            host_key_fp=_need(body, "host_key_fp", str), evidence=tuple(evidence), records=tuple(records),
            code=_need(body, "code", str), reason=_need(body, "reason", str),
            envelope_sha256=_need(body, "envelope_sha256", str),
            claims={str(k): str(v) for k, v in claims.items()}, verify_first=_need(body, "verify_first", bool),
        )
        if msg.agent_seq < 1 or not _HEX64.match(msg.prev_agent_hash):
            raise MalformedEnvelope("agent_seq starts at 1; prev_agent_hash is 64 hex digits")
        return msg

    @classmethod
    def open(cls, raw: bytes | str | dict[str, Any], agents: list[Verifier]) -> tuple[AgentMessage, str]:
        """Verify the agent's signature, parse; return the message and its hash (the chain link)."""
        doc = load_document(raw)
        body, _ = _verify(MESSAGE_TAG, doc, agents)
        return cls.from_body(body), message_hash(doc)


def message_hash(signed: dict[str, Any]) -> str:
    """The chain link: SHA-256 of the canonical signed message (signature included)."""
    return sha256_hex(canonical(signed))


def verifier(text: str) -> Verifier:
    """A pinned key (``name+keyid+base64``) or a typed error."""
    try:
        key = parse_vkey(text)
    except NoteError as exc:
        raise MalformedEnvelope(f"not a verifier key: {exc}") from None
    if key.is_cosigner:
        raise MalformedEnvelope("a witness cosigning key cannot sign envelopes")
    return key
