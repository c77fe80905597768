"""C2SP signed notes, tlog checkpoints and tlog cosignatures (Ed25519).

Formats (c2sp.org/signed-note, c2sp.org/tlog-checkpoint, c2sp.org/tlog-cosignature):

* a signed note is UTF-8 text ending in a newline, a blank line, then lines
  ``— <key name> base64(key ID[4] || signature)`` (the dash is U+2014); no ASCII
  control characters other than newline anywhere;
* key ID = SHA-256(key name || 0x0A || type || public key)[:4], type 0x01 for
  Ed25519 note signatures and 0x04 for timestamped Ed25519 witness cosignatures;
* a verifier key ("vkey") is ``<name>+<hex key ID>+base64(type || public key)``;
* a checkpoint body is ``<origin>\\n<tree size>\\n<base64 root>\\n`` (plus
  optional non-empty extension lines);
* a cosignature signs ``cosignature/v1\\ntime <unix>\\n`` + the checkpoint body and
  its signature bytes are a big-endian u64 timestamp followed by 64 bytes.

Verification follows the spec: signatures by unknown keys are ignored, a
failing signature by a known key rejects the note, and a note with no
verified signature is rejected. Base64 must be canonical (re-encoding the
decoded bytes gives the same text), so no bit of a note can change silently.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALG_ED25519 = 0x01
ALG_COSIGNATURE_V1 = 0x04
MAX_SIGNATURES = 100
SIG_PREFIX = "\u2014 "
COSIGNATURE_HEADER = "cosignature/v1\n"
#: cosignatures dated further in the future than this are rejected (clock skew allowance)
COSIGNATURE_MAX_SKEW = 300

_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")
_SIZE = re.compile(r"^(0|[1-9][0-9]*)$")


class NoteError(ValueError):
    """A note or key that cannot be used; ``str()`` says why in one line."""


class MalformedNote(NoteError):
    pass


class InvalidNoteSignature(NoteError):
    def __init__(self, name: str, key_id: bytes) -> None:
        super().__init__(f"invalid signature for key {name}+{key_id.hex()}")
        self.name = name
        self.key_id = key_id


class UnverifiedNote(NoteError):
    def __init__(self, note: Note) -> None:
        super().__init__("note has no signature by a trusted key")
        self.note = note


def b64decode_canonical(text: str) -> bytes:
    """Standard base64 with padding, rejecting anything that would not re-encode identically."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise NoteError("invalid base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise NoteError("non-canonical base64")
    return raw


def b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


_BAD_NAME = re.compile(r"[\s+\x00-\x1f\x85\xa0]")


def valid_key_name(name: str) -> bool:
    """Non-empty, no Unicode spaces, no '+', no control characters."""
    return bool(name) and _BAD_NAME.search(name) is None


def key_id(name: str, alg: int, public: bytes) -> bytes:
    """SHA-256(name || 0x0A || alg || public)[:4]."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([alg]) + public).digest()[:4]


def format_vkey(name: str, alg: int, public: bytes) -> str:
    return f"{name}+{key_id(name, alg, public).hex()}+{b64encode(bytes([alg]) + public)}"


# --------------------------------------------------------------------------- keys


class Verifier:
    """One trusted public key: checks note signatures (type 0x01) or cosignatures (0x04)."""

    def __init__(self, name: str, public: bytes, alg: int = ALG_ED25519) -> None:
        if not valid_key_name(name):
            raise NoteError(f"invalid key name {name!r}")
        if alg not in (ALG_ED25519, ALG_COSIGNATURE_V1):
            raise NoteError(f"unknown key algorithm {alg:#04x}")
        if len(public) != 32:
            raise NoteError("an Ed25519 public key has 32 bytes")
        self.name = name
        self.alg = alg
        self.public = bytes(public)
        self.key_id = key_id(name, alg, self.public)
        self._key = Ed25519PublicKey.from_public_bytes(self.public)

    @property
    def vkey(self) -> str:
        return format_vkey(self.name, self.alg, self.public)

    @property
    def is_cosigner(self) -> bool:
        return self.alg == ALG_COSIGNATURE_V1

    def __repr__(self) -> str:
        return f"Verifier({self.vkey})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Verifier) and (self.name, self.alg, self.public) == (
            other.name, other.alg, other.public)

    def __hash__(self) -> int:
        return hash((self.name, self.alg, self.public))

    def verify_raw(self, message: bytes, signature: bytes) -> bool:
        return _ed25519_verify(self.public, bytes(message), bytes(signature))

    def verify(self, text: bytes, sig: bytes) -> bool:
        """Check the signature bytes (after the key ID) of a note with body ``text``."""
        if self.alg == ALG_ED25519:
            return len(sig) == 64 and self.verify_raw(text, sig)
        if len(sig) != 72:
            return False
        timestamp = int.from_bytes(sig[:8], "big")
        if timestamp >= 1 << 63:
            return False
        return self.verify_raw(cosignature_message(text, timestamp), sig[8:])


@functools.lru_cache(maxsize=4096)
def _ed25519_verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """Ed25519 verification (a pure function, so results are cached: re-verifying the same
    checkpoint over and over, as a verifier of many files does, costs nothing)."""
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except InvalidSignature:
        return False
    return True


def parse_vkey(vkey: str) -> Verifier:
    """Parse ``name+hexid+base64(type||key)`` strictly (the ID must match the key)."""
    if not isinstance(vkey, str):
        raise NoteError("a verifier key is a string")
    vkey = vkey.strip()
    parts = vkey.split("+", 2)
    if len(parts) != 3:
        raise NoteError(f"malformed verifier key {vkey!r}: expected NAME+KEYID+KEY")
    name, hex_id, b64 = parts
    if not valid_key_name(name) or not re.fullmatch(r"[0-9a-fA-F]{8}", hex_id):
        raise NoteError(f"malformed verifier key {vkey!r}")
    try:
        raw = b64decode_canonical(b64)
    except NoteError:
        raise NoteError(f"malformed verifier key {vkey!r}: bad base64") from None
    if len(raw) < 2:
        raise NoteError(f"malformed verifier key {vkey!r}")
    alg, public = raw[0], raw[1:]
    if key_id(name, alg, public) != bytes.fromhex(hex_id):
        raise NoteError(f"verifier key {vkey!r}: key ID does not match the key")
    if alg not in (ALG_ED25519, ALG_COSIGNATURE_V1):
        raise NoteError(f"verifier key {vkey!r}: unknown algorithm {alg:#04x}")
    if len(public) != 32:
        raise NoteError(f"verifier key {vkey!r}: wrong key length")
    return Verifier(name, public, alg)


class Signer:
    """An Ed25519 signing key with a signed-note name (type 0x01, or 0x04 for a witness)."""

    def __init__(self, name: str, private_key: Ed25519PrivateKey, alg: int = ALG_ED25519) -> None:
        if not valid_key_name(name):
            raise NoteError(f"invalid key name {name!r}: no spaces, '+' or control characters")
        self.name = name
        self.alg = alg
        self._key = private_key
        self.public = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.key_id = key_id(name, alg, self.public)

    @classmethod
    def generate(cls, name: str, alg: int = ALG_ED25519) -> Signer:
        return cls(name, Ed25519PrivateKey.generate(), alg)

    @classmethod
    def from_seed(cls, name: str, seed: bytes, alg: int = ALG_ED25519) -> Signer:
        return cls(name, Ed25519PrivateKey.from_private_bytes(seed), alg)

    def seed(self) -> bytes:
        """The 32-byte private seed (for encryption at rest only)."""
        return self._key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())

    def sign(self, msg: bytes) -> bytes:
        """A raw 64-byte Ed25519 signature over ``msg``."""
        return self._key.sign(msg)

    def verifier_key(self) -> str:
        return format_vkey(self.name, self.alg, self.public)

    def verifier(self) -> Verifier:
        return Verifier(self.name, self.public, self.alg)

    def __repr__(self) -> str:
        return f"Signer({self.verifier_key()})"

    def note_signature(self, text: bytes, *, timestamp: int | None = None) -> bytes:
        """The signature bytes of a note line (without the key ID)."""
        if self.alg == ALG_ED25519:
            return self.sign(text)
        ts = int(time.time()) if timestamp is None else timestamp
        return ts.to_bytes(8, "big") + self.sign(cosignature_message(text, ts))


def cosignature_message(text: bytes, timestamp: int) -> bytes:
    return f"{COSIGNATURE_HEADER}time {timestamp}\n".encode() + text


# --------------------------------------------------------------------------- notes


@dataclass
class NoteSignature:
    name: str
    key_id: bytes
    b64: str

    @property
    def raw(self) -> bytes:
        return b64decode_canonical(self.b64)[4:]

    def line(self) -> str:
        return f"{SIG_PREFIX}{self.name} {self.b64}\n"


@dataclass
class Note:
    text: str
    sigs: list[NoteSignature] = field(default_factory=list)          # verified
    unverified: list[NoteSignature] = field(default_factory=list)    # by unknown keys
    verified_by: list[Verifier] = field(default_factory=list)

    def encode(self) -> str:
        return self.text + "\n" + "".join(s.line() for s in (*self.sigs, *self.unverified))

    def cosignature_time(self, verifier: Verifier) -> int | None:
        for sig, ver in zip(self.sigs, self.verified_by, strict=True):
            if ver == verifier and ver.is_cosigner:
                return int.from_bytes(sig.raw[:8], "big")
        return None


def sign_note(text: str, signers: Sequence[Signer], *, existing: Iterable[NoteSignature] = (),
              timestamp: int | None = None) -> str:
    """Encode ``text`` signed by ``signers``, keeping ``existing`` signatures by other keys."""
    if not text.endswith("\n") or _CONTROL.search(text):
        raise MalformedNote("note text must end with a newline and contain no control characters")
    body = text.encode("utf-8")
    lines: list[str] = []
    mine = {(s.name, s.key_id) for s in signers}
    for sig in existing:
        if (sig.name, sig.key_id) not in mine:
            lines.append(sig.line())
    for signer in signers:
        raw = signer.key_id + signer.note_signature(body, timestamp=timestamp)
        lines.append(f"{SIG_PREFIX}{signer.name} {b64encode(raw)}\n")
    return text + "\n" + "".join(lines)


def parse_note(msg: str | bytes) -> tuple[str, list[NoteSignature]]:
    """Split a signed note into its text and signature lines (syntax only, nothing verified)."""
    if isinstance(msg, bytes):
        try:
            msg = msg.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedNote("malformed note: not UTF-8") from None
    if _CONTROL.search(msg):
        raise MalformedNote("malformed note: control character")
    split = msg.rfind("\n\n")
    if split < 0:
        raise MalformedNote("malformed note: no blank line before the signatures")
    text, block = msg[: split + 1], msg[split + 2:]
    if not block or not block.endswith("\n"):
        raise MalformedNote("malformed note: no signature lines")
    sigs: list[NoteSignature] = []
    for line in block[:-1].split("\n"):
        if not line.startswith(SIG_PREFIX):
            raise MalformedNote("malformed note: signature line does not start with an em dash")
        name, sep, b64 = line[len(SIG_PREFIX):].partition(" ")
        if not sep or not b64 or not valid_key_name(name):
            raise MalformedNote("malformed note: bad signature line")
        try:
            raw = b64decode_canonical(b64)
        except NoteError:
            raise MalformedNote("malformed note: bad signature encoding") from None
        if len(raw) < 5:
            raise MalformedNote("malformed note: signature too short")
        sigs.append(NoteSignature(name, raw[:4], b64))
        if len(sigs) > MAX_SIGNATURES:
            raise MalformedNote(f"malformed note: more than {MAX_SIGNATURES} signatures")
    return text, sigs


def open_note(msg: str | bytes, known: Iterable[Verifier], *, now: int | None = None) -> Note:
    """Parse and verify a note against ``known`` keys (C2SP rules).

    Raises :class:`MalformedNote`, :class:`InvalidNoteSignature` (a known key's
    signature fails, or a cosignature is dated in the future) or
    :class:`UnverifiedNote` (no known key signed it; ``err.note`` has the text).
    """
    text, sigs = parse_note(msg)
    by_id: dict[tuple[str, bytes], list[Verifier]] = {}
    for v in known:
        by_id.setdefault((v.name, v.key_id), []).append(v)
    note = Note(text=text)
    seen: set[tuple[str, bytes]] = set()
    seen_unverified: set[str] = set()
    body = text.encode("utf-8")
    limit = (int(time.time()) if now is None else now) + COSIGNATURE_MAX_SKEW
    for sig in sigs:
        ident = (sig.name, sig.key_id)
        candidates = by_id.get(ident)
        if not candidates:
            if sig.b64 not in seen_unverified:
                seen_unverified.add(sig.b64)
                note.unverified.append(sig)
            continue
        if len(candidates) > 1 and len({c.public for c in candidates}) > 1:
            raise NoteError(f"ambiguous key {sig.name}+{sig.key_id.hex()}")
        verifier = candidates[0]
        if ident in seen:
            continue
        seen.add(ident)
        raw = sig.raw
        if not verifier.verify(body, raw):
            raise InvalidNoteSignature(sig.name, sig.key_id)
        if verifier.is_cosigner and int.from_bytes(raw[:8], "big") > limit:
            raise InvalidNoteSignature(sig.name, sig.key_id)
        note.sigs.append(sig)
        note.verified_by.append(verifier)
    if not note.sigs:
        raise UnverifiedNote(note)
    return note


# --------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def body(self) -> str:
        return format_checkpoint(self.origin, self.size, self.root, self.extensions)


def valid_origin(origin: str) -> bool:
    return bool(origin) and not _CONTROL.search(origin) and "\n" not in origin


def format_checkpoint(origin: str, size: int, root: bytes, extensions: Sequence[str] = ()) -> str:
    if not valid_origin(origin):
        raise NoteError(f"invalid checkpoint origin {origin!r}")
    if size < 0 or len(root) != 32:
        raise NoteError("invalid checkpoint size or root")
    lines = [origin, str(size), b64encode(root), *extensions]
    return "\n".join(lines) + "\n"


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse a checkpoint note *text* (the body without signatures)."""
    if not text.endswith("\n"):
        raise MalformedNote("malformed checkpoint: text must end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise MalformedNote("malformed checkpoint: fewer than three lines")
    origin, size_text, root_text, *ext = lines
    if not valid_origin(origin):
        raise MalformedNote("malformed checkpoint: empty origin")
    if not _SIZE.match(size_text) or len(size_text) > 20:
        raise MalformedNote(f"malformed checkpoint: tree size {size_text!r}")
    try:
        root = b64decode_canonical(root_text)
    except NoteError:
        raise MalformedNote("malformed checkpoint: root hash is not canonical base64") from None
    if len(root) != 32:
        raise MalformedNote("malformed checkpoint: root hash is not 32 bytes")
    if any(not e for e in ext):
        raise MalformedNote("malformed checkpoint: empty extension line")
    return Checkpoint(origin, int(size_text), root, tuple(ext))
