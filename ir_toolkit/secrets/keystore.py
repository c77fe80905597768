"""The responder's keys in ``$IRKIT_HOME/keys``: the audit signing key and the escrow key.

Layout::

    keys/signing.key        Ed25519 audit signing key, encrypted (mode 0600)
    keys/signing.vkey       its verifier key string  name+hex(keyid)+base64(0x01||pub)
    keys/escrow.key         X25519 escrow recipient key, encrypted (mode 0600)
    keys/escrow.pub         its public key (PEM, SubjectPublicKeyInfo)
    keys/retired/<stamp>/   keys replaced by ``keys rotate`` or ``keys init --force``
                            (verifier keys and escrow keys are kept; a rotated-out
                            signing key's private half is destroyed)
    keys/rotations/<stamp>-<old keyid>.note
                            the signed rotation chain: one signed note per
                            ``keys rotate`` naming the old and the new verifier key,
                            signed by BOTH keys

Trust (:func:`trusted_verifiers`): the current ``signing.vkey`` and every key
linked to it backwards through the rotation chain. A verifier file lying in
``retired/`` or ``signing.vkey.pending`` is never trusted by itself: anyone who
can write ``$IRKIT_HOME`` could plant one. (The current ``signing.vkey`` is a
file next to the log too: a verdict resting on it is *self-attested*; auditors
pin the key with ``--key`` or anchor the log with a witness.)

Private keys are encrypted at rest: a key-encryption key is derived from the
passphrase with scrypt (N=2^17, r=8, p=1: 128 MiB and ~0.4 s per unlock on a
2-core VM; see docs/audit-log.md) and the 32-byte private key is sealed with
AES-256-GCM. Everything in the file's header (kind, algorithm, name, public key,
KDF parameters) is authenticated as associated data, so it cannot be swapped.
Files are written to a temporary name, fsynced, renamed and the directory
fsynced. ``cryptography``'s own PKCS#8 encryption is not used: it derives its key
with only 2048 PBKDF2 iterations.
"""

from __future__ import annotations

import datetime as _dt
import getpass
import json
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ir_toolkit.tlog.note import ALG_ED25519, NoteError, Signer, Verifier, b64encode, parse_vkey
from ir_toolkit.errors import InputError
from ir_toolkit.canonical import sorted_compact
from ir_toolkit.fsutil import fsync_dir as _fsync_dir
from ir_toolkit.fsutil import write_atomic
from ir_toolkit.home import keys_dir
from ir_toolkit.redaction import register_secret

PASSPHRASE_ENV = "IRKIT_KEY_PASSPHRASE"
#: Lowers the scrypt cost for test suites only (value: log2 N, at least 10). Never set it in production.
TEST_SCRYPT_ENV = "IRKIT_INSECURE_TEST_SCRYPT_LOG2N"
SCRYPT_LOG2N = 17
SCRYPT_R = 8
SCRYPT_P = 1
KEY_FORMAT = "irkit-key-v1"

SIGNING_KEY = "signing.key"
SIGNING_VKEY = "signing.vkey"
PENDING_KEY = "signing.key.pending"
PENDING_VKEY = "signing.vkey.pending"
ESCROW_KEY = "escrow.key"
ESCROW_PUB = "escrow.pub"
#: the evidence recipient (bundles are encrypted to it), separate from escrow (security review §14):
#: whoever reads evidence need not hold the key that decrypts every escrowed password
EVIDENCE_KEY = "evidence.key"
EVIDENCE_PUB = "evidence.pub"
#: a distinct passphrase for the evidence key (default: the keys passphrase)
EVIDENCE_PASSPHRASE_ENV = "IRKIT_EVIDENCE_PASSPHRASE"
RETIRED = "retired"
ROTATIONS = "rotations"
_LINK_HEADER = "irkit key rotation v1"


# --------------------------------------------------------------------------- passphrase


def get_passphrase(*, confirm: bool = False, env: str = PASSPHRASE_ENV, what: str = "irkit keys") -> str:
    """``$IRKIT_KEY_PASSPHRASE``, else a hidden prompt on a terminal, else :class:`InputError`."""
    value = os.environ.get(env)
    if value:
        register_secret(value)
        return value
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        raise InputError(f"no passphrase: set {env} or run on a terminal")
    try:
        first = getpass.getpass(f"Passphrase for {what}: ")
        if confirm:
            second = getpass.getpass("Repeat the passphrase: ")
            if first != second:
                raise InputError("the passphrases do not match")
    except (EOFError, KeyboardInterrupt):
        raise InputError("no passphrase given") from None
    if not first:
        raise InputError("empty passphrase")
    register_secret(first)
    return first


# --------------------------------------------------------------------------- sealed files


_warned_test_scrypt = False


def _scrypt_log2n() -> int:
    global _warned_test_scrypt
    raw = os.environ.get(TEST_SCRYPT_ENV)
    if not raw:
        return SCRYPT_LOG2N
    if not os.environ.get("PYTEST_CURRENT_TEST") and not _warned_test_scrypt:
        _warned_test_scrypt = True
        sys.stderr.write(f"irkit: warning: {TEST_SCRYPT_ENV} is set: this key file is encrypted with a weak "
                         "scrypt cost meant for test suites only; unset it and re-create the key\n")
    try:
        value = int(raw)
    except ValueError:
        raise InputError(f"{TEST_SCRYPT_ENV} must be an integer") from None
    return max(10, min(value, 22))


def _kek(passphrase: str, salt: bytes, log2n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=1 << log2n, r=r, p=p).derive(passphrase.encode("utf-8"))


def _aad(header: dict[str, Any]) -> bytes:
    return sorted_compact(header)


def seal_private(secret: bytes, passphrase: str, header: dict[str, Any]) -> dict[str, Any]:
    """Encrypt ``secret`` under ``passphrase``; the returned document authenticates ``header``."""
    salt, nonce = os.urandom(16), os.urandom(12)
    log2n = _scrypt_log2n()
    doc = dict(header)
    doc["format"] = KEY_FORMAT
    doc["kdf"] = {"name": "scrypt", "log2n": log2n, "r": SCRYPT_R, "p": SCRYPT_P, "salt": b64encode(salt)}
    doc["aead"] = {"name": "AES-256-GCM", "nonce": b64encode(nonce)}
    kek = _kek(passphrase, salt, log2n, SCRYPT_R, SCRYPT_P)
    doc["ciphertext"] = b64encode(AESGCM(kek).encrypt(nonce, secret, _aad(doc)))
    return doc


def open_private(doc: dict[str, Any], passphrase: str, path: Path) -> bytes:
    """Decrypt a sealed document; a wrong passphrase is an :class:`InputError`."""
    import base64

    try:
        if doc.get("format") != KEY_FORMAT:
            raise ValueError("format")
        kdf, aead = doc["kdf"], doc["aead"]
        if kdf["name"] != "scrypt" or aead["name"] != "AES-256-GCM":
            raise ValueError("algorithm")
        log2n, r, p = int(kdf["log2n"]), int(kdf["r"]), int(kdf["p"])
        if not (10 <= log2n <= 22 and 1 <= r <= 32 and 1 <= p <= 16):
            raise ValueError("kdf parameters")
        salt = base64.b64decode(kdf["salt"], validate=True)
        nonce = base64.b64decode(aead["nonce"], validate=True)
        ciphertext = base64.b64decode(doc["ciphertext"], validate=True)
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{path}: not an irkit key file (damaged?)") from None
    header = {k: v for k, v in doc.items() if k != "ciphertext"}
    kek = _kek(passphrase, salt, log2n, r, p)
    try:
        return AESGCM(kek).decrypt(nonce, ciphertext, _aad(header))
    except InvalidTag:
        raise InputError(f"wrong passphrase for {path} (or the key file was modified)") from None


def _read_doc(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read key file: {exc}") from None
    if not isinstance(doc, dict):
        raise InputError(f"{path}: not an irkit key file")
    return doc


def _missing(directory: Path) -> InputError:
    return InputError(f"no responder keys in {directory}: run irkit keys init")


# --------------------------------------------------------------------------- init / load


def default_key_name() -> str:
    """``<host>/irkit-responder``, restricted to characters safe in a note key name."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()) or "localhost"
    return f"{host}/irkit-responder"


def keys_exist(directory: Path | None = None) -> bool:
    directory = directory or keys_dir()
    return (directory / SIGNING_KEY).exists() or (directory / ESCROW_KEY).exists()


def _stamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def _retire(directory: Path, names: list[str]) -> Path | None:
    present = [n for n in names if (directory / n).exists()]
    if not present:
        return None
    target = directory / RETIRED / _stamp()
    target.mkdir(parents=True, mode=0o700)
    for name in present:
        os.replace(directory / name, target / name)
    _fsync_dir(target)
    _fsync_dir(directory)
    return target


def _signing_doc(signer: Signer, passphrase: str) -> bytes:
    header = {"kind": "audit-signing", "algorithm": "ed25519", "name": signer.name,
              "public": b64encode(signer.public), "verifier_key": signer.verifier_key(),
              "created": _stamp()}
    return (json.dumps(seal_private(signer.seed(), passphrase, header), indent=1) + "\n").encode()


def init_keys(passphrase: str, *, name: str | None = None, force: bool = False,
              directory: Path | None = None) -> dict[str, Any]:
    """Create the Ed25519 audit signing key and the X25519 escrow key pair.

    Refuses to replace existing keys unless ``force``; replaced keys are moved to
    ``keys/retired/<stamp>/`` (an escrow key is never destroyed: secrets escrowed
    to it could not be recovered otherwise).
    """
    if not passphrase:
        raise InputError("empty passphrase")
    directory = directory or keys_dir(create=True)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if keys_exist(directory) and not force:
        raise InputError(f"responder keys already exist in {directory}: use --force to replace them "
                         "(the old keys are kept in keys/retired/)")
    try:
        signer = Signer.generate(name or default_key_name())
    except NoteError as exc:
        raise InputError(f"invalid key name: {exc}") from None
    escrow = X25519PrivateKey.generate()
    escrow_raw = escrow.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                      serialization.NoEncryption())
    escrow_pub = escrow.public_key()
    escrow_pub_raw = escrow_pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    escrow_header = {"kind": "escrow", "algorithm": "x25519", "name": signer.name,
                     "public": b64encode(escrow_pub_raw), "created": _stamp()}
    escrow_doc = (json.dumps(seal_private(escrow_raw, passphrase, escrow_header), indent=1) + "\n").encode()
    signing_doc = _signing_doc(signer, passphrase)
    retired = _retire(directory, [SIGNING_KEY, SIGNING_VKEY, ESCROW_KEY, ESCROW_PUB, EVIDENCE_KEY, EVIDENCE_PUB]) \
        if force else None
    write_atomic(directory / SIGNING_KEY, signing_doc)
    write_atomic(directory / SIGNING_VKEY, (signer.verifier_key() + "\n").encode(), mode=0o644)
    write_atomic(directory / ESCROW_KEY, escrow_doc)
    pem = escrow_pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    write_atomic(directory / ESCROW_PUB, pem, mode=0o644)
    evidence = init_evidence_key(evidence_passphrase(passphrase), name=signer.name, directory=directory)
    return {
        "directory": str(directory),
        "name": signer.name,
        "key_id": signer.key_id.hex(),
        "verifier_key": signer.verifier_key(),
        "escrow_public_key": b64encode(escrow_pub_raw),
        "evidence_public_key": evidence,
        "retired": str(retired) if retired else None,
    }


def evidence_passphrase(default: str | None = None) -> str:
    """``$IRKIT_EVIDENCE_PASSPHRASE`` when set (a passphrase of the evidence key alone), else ``default``
    (the keys passphrase), else :func:`get_passphrase`."""
    import os

    value = os.environ.get(EVIDENCE_PASSPHRASE_ENV)
    if value:
        register_secret(value)
        return value
    return default if default is not None else get_passphrase()


def init_evidence_key(passphrase: str, *, name: str = "irkit", directory: Path | None = None) -> str:
    """Create the evidence recipient key pair (X25519, sealed like the others); returns its public key."""
    directory = directory or keys_dir(create=True)
    key = X25519PrivateKey.generate()
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    pub = key.public_key()
    pub_raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    header = {"kind": "evidence", "algorithm": "x25519", "name": name, "public": b64encode(pub_raw),
              "created": _stamp()}
    write_atomic(directory / EVIDENCE_KEY, (json.dumps(seal_private(raw, passphrase, header), indent=1) + "\n").encode())
    write_atomic(directory / EVIDENCE_PUB, pub.public_bytes(serialization.Encoding.PEM,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo),
                 mode=0o644)
    return b64encode(pub_raw)


def evidence_public_key(directory: Path | None = None) -> X25519PublicKey:
    """The evidence recipient public key (no passphrase needed)."""
    directory = directory or keys_dir()
    path = directory / EVIDENCE_PUB
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError:
        if (directory / ESCROW_PUB).exists():
            raise InputError(f"no evidence key in {directory} (keys made before it existed): run "
                             "`irkit keys init --evidence-key`") from None
        raise _missing(directory) from None
    except ValueError:
        raise InputError(f"{path}: not a PEM public key") from None
    if not isinstance(key, X25519PublicKey):
        raise InputError(f"{path}: not an X25519 public key")
    return key


def load_evidence_private_key(passphrase: str | None = None, directory: Path | None = None) -> X25519PrivateKey:
    """The evidence recipient's private key (``$IRKIT_EVIDENCE_PASSPHRASE`` or the keys passphrase)."""
    directory = directory or keys_dir()
    path = directory / EVIDENCE_KEY
    if not path.exists():
        evidence_public_key(directory)  # the one clear line for a missing key
        raise InputError(f"{path}: no such key file")
    doc = _read_doc(path)
    raw = open_private(doc, passphrase if passphrase is not None else evidence_passphrase(), path)
    key = X25519PrivateKey.from_private_bytes(raw)
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if doc.get("kind") != "evidence" or b64encode(public) != doc.get("public"):
        raise InputError(f"{path}: not the evidence key, or damaged")
    return key


def _load_signer_file(path: Path, passphrase: str) -> Signer:
    doc = _read_doc(path)
    seed = open_private(doc, passphrase, path)
    try:
        signer = Signer.from_seed(str(doc.get("name")), seed)
    except (NoteError, ValueError):
        raise InputError(f"{path}: damaged signing key") from None
    if b64encode(signer.public) != doc.get("public"):
        raise InputError(f"{path}: the private key does not match its public key (damaged)")
    return signer


def load_signing_key(passphrase: str | None = None, *, directory: Path | None = None) -> Signer:
    """The responder's audit signing key (asks for the passphrase if not given)."""
    directory = directory or keys_dir()
    path = directory / SIGNING_KEY
    if not path.exists():
        raise _missing(directory)
    return _load_signer_file(path, passphrase if passphrase is not None else get_passphrase())


def signing_verifier(directory: Path | None = None) -> Verifier:
    """The current signing key's public half (no passphrase needed)."""
    directory = directory or keys_dir()
    path = directory / SIGNING_VKEY
    try:
        return parse_vkey(path.read_text().strip())
    except FileNotFoundError:
        raise _missing(directory) from None
    except NoteError as exc:
        raise InputError(f"{path}: {exc}") from None


def rotation_link_text(old: Verifier, new: Verifier) -> str:
    return f"{_LINK_HEADER}\nold {old.vkey}\nnew {new.vkey}\n"


def write_rotation_link(old: Signer, new: Signer, directory: Path | None = None) -> Path:
    """Record ``old -> new`` in the signed rotation chain (a note signed by both keys)."""
    from ir_toolkit.tlog.note import sign_note

    directory = directory or keys_dir()
    text = sign_note(rotation_link_text(old.verifier(), new.verifier()), [old, new])
    target = directory / ROTATIONS / f"{_stamp()}-{old.key_id.hex()}-{new.key_id.hex()}.note"
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(target, text.encode(), mode=0o644)
    return target


def _rotation_links(directory: Path) -> list[tuple[Verifier, Verifier]]:
    """Every (old, new) pair of the chain whose note carries valid signatures by both keys."""
    from ir_toolkit.tlog.note import open_note

    links: list[tuple[Verifier, Verifier]] = []
    for path in sorted((directory / ROTATIONS).glob("*.note")):
        try:
            text = path.read_text(encoding="utf-8")
            lines = text.split("\n")
            if lines[0] != _LINK_HEADER or not lines[1].startswith("old ") or not lines[2].startswith("new "):
                continue
            old, new = parse_vkey(lines[1][4:]), parse_vkey(lines[2][4:])
            if text[: text.index("\n\n") + 1] != rotation_link_text(old, new):
                continue
            note = open_note(text, [old, new])
        except (OSError, UnicodeDecodeError, ValueError, IndexError, NoteError):
            continue
        if old in note.verified_by and new in note.verified_by:
            links.append((old, new))
    return links


def trusted_verifiers(directory: Path | None = None, anchors: list[Verifier] | None = None) -> list[Verifier]:
    """The current verifier key (or ``anchors``) and the keys the signed rotation chain links to it.

    Walks the chain backwards: a link ``old -> new`` whose ``new`` is trusted and
    which is signed by both keys makes ``old`` trusted. Verifier files in
    ``retired/`` or ``signing.vkey.pending`` count only through such a link.
    """
    directory = directory or keys_dir()
    if anchors is None:
        try:
            anchors = [signing_verifier(directory)]
        except InputError:
            return []
    found = list(dict.fromkeys(anchors))
    links = _rotation_links(directory)
    changed = True
    while changed:
        changed = False
        for old, new in links:
            if new in found and old not in found:
                found.append(old)
                changed = True
    return found


def key_files(directory: Path | None = None) -> list[Verifier]:
    """Every signing verifier key file present (current, pending, retired): listing only, not trust."""
    directory = directory or keys_dir()
    found: list[Verifier] = []
    paths = [directory / SIGNING_VKEY, directory / PENDING_VKEY,
             *sorted((directory / RETIRED).glob(f"*/{SIGNING_VKEY}"))]
    for path in paths:
        try:
            verifier = parse_vkey(path.read_text().strip())
        except (OSError, NoteError):
            continue
        if verifier not in found:
            found.append(verifier)
    return found


def load_escrow_private_key(passphrase: str | None = None, path: Path | None = None) -> X25519PrivateKey:
    """The escrow recipient's private key (current, or a retired one by ``path``)."""
    directory = keys_dir()
    path = path or directory / ESCROW_KEY
    if not path.exists():
        raise _missing(directory) if path.parent == directory else InputError(f"{path}: no such key file")
    doc = _read_doc(path)
    raw = open_private(doc, passphrase if passphrase is not None else get_passphrase(), path)
    key = X25519PrivateKey.from_private_bytes(raw)
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if b64encode(public) != doc.get("public"):
        raise InputError(f"{path}: the private key does not match its public key (damaged)")
    return key


def escrow_public_key(directory: Path | None = None) -> X25519PublicKey:
    """The escrow recipient public key (no passphrase needed)."""
    directory = directory or keys_dir()
    path = directory / ESCROW_PUB
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError:
        raise _missing(directory) from None
    except ValueError:
        raise InputError(f"{path}: not a PEM public key") from None
    if not isinstance(key, X25519PublicKey):
        raise InputError(f"{path}: not an X25519 public key")
    return key


def show_keys(directory: Path | None = None) -> dict[str, Any]:
    """Public facts about the keys (for ``irkit keys show``)."""
    directory = directory or keys_dir()
    if not keys_exist(directory):
        raise _missing(directory)
    signing = signing_verifier(directory)
    doc = _read_doc(directory / SIGNING_KEY)
    escrow_raw = escrow_public_key(directory).public_bytes(serialization.Encoding.Raw,
                                                           serialization.PublicFormat.Raw)
    retired = [v.vkey for v in key_files(directory) if v != signing]
    return {
        "directory": str(directory),
        "name": signing.name,
        "key_id": signing.key_id.hex(),
        "verifier_key": signing.vkey,
        "escrow_public_key": b64encode(escrow_raw),
        "evidence_public_key": (b64encode(evidence_public_key(directory).public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)) if (directory / EVIDENCE_PUB).exists()
            else None),
        "kdf": {k: v for k, v in doc.get("kdf", {}).items() if k != "salt"},
        "retired_verifier_keys": retired,
        "pending_rotation": (directory / PENDING_KEY).exists(),
    }


# --------------------------------------------------------------------------- rotation


def pending_signing_key(passphrase: str, *, name: str | None = None, directory: Path | None = None) -> Signer:
    """The new key of a rotation: created (and saved as pending) or resumed from a pending file."""
    directory = directory or keys_dir()
    pending = directory / PENDING_KEY
    current_signer = load_signing_key(passphrase, directory=directory)
    if pending.exists():
        signer = _load_signer_file(pending, passphrase)
    else:
        try:
            signer = Signer.generate(name or current_signer.name)
        except NoteError as exc:
            raise InputError(f"invalid key name: {exc}") from None
        write_atomic(pending, _signing_doc(signer, passphrase))
        write_atomic(directory / PENDING_VKEY, (signer.verifier_key() + "\n").encode(), mode=0o644)
    if (current_signer.verifier(), signer.verifier()) not in _rotation_links(directory):
        write_rotation_link(current_signer, signer, directory)
    return signer


def finish_rotation(directory: Path | None = None) -> dict[str, Any]:
    """Make the pending key current; retire the old verifier key and destroy its private key."""
    directory = directory or keys_dir()
    pending = directory / PENDING_KEY
    if not pending.exists():
        raise InputError(f"no key rotation in progress in {directory}")
    old = signing_verifier(directory)
    target = directory / RETIRED / f"{_stamp()}-{old.key_id.hex()}"
    target.mkdir(parents=True, mode=0o700)
    os.replace(directory / SIGNING_VKEY, target / SIGNING_VKEY)
    _destroy(directory / SIGNING_KEY)
    os.replace(pending, directory / SIGNING_KEY)
    os.replace(directory / PENDING_VKEY, directory / SIGNING_VKEY)
    _fsync_dir(target)
    _fsync_dir(directory)
    new = signing_verifier(directory)
    return {"old_verifier_key": old.vkey, "verifier_key": new.vkey, "retired": str(target)}


def _destroy(path: Path) -> None:
    """Overwrite a key file with zeros, fsync, unlink (best effort on journaling/CoW filesystems)."""
    try:
        size = path.stat().st_size
        with open(path, "r+b") as fh:
            fh.write(b"\0" * size)
            fh.flush()
            os.fsync(fh.fileno())
        path.unlink()
    except FileNotFoundError:
        pass


__all__ = [
    "ALG_ED25519", "Signer", "escrow_public_key", "finish_rotation", "get_passphrase", "init_keys",
    "keys_exist", "load_escrow_private_key", "load_signing_key", "pending_signing_key", "show_keys",
    "signing_verifier", "trusted_verifiers", "key_files", "write_rotation_link",
]
