"""Keys and passwords the lab makes: ed25519 key pairs, fingerprints, known_hosts, crypt hashes.

Key pairs are generated in-process (``cryptography``) in OpenSSH format, so a
200-host lab does not fork 200 ``ssh-keygen`` processes.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import string
import warnings
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ir_toolkit.fsutil import write_atomic
from ir_toolkit import childenv
from ir_toolkit.errors import EnvironmentProblem
from ir_toolkit.redaction import register_secret

PASSWORD_ALPHABET = string.ascii_letters + string.digits


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` atomically with ``mode`` (never briefly world-readable), fsynced."""
    write_atomic(path, data, mode=mode)


def generate_keypair(comment: str) -> tuple[bytes, str]:
    """A new ed25519 key: (OpenSSH private key bytes, ``ssh-ed25519 AAAA... comment``)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, f"{public.decode()} {comment}".strip()


def ensure_approver_key(vkey_path: Path, approver: str) -> bool:
    """An approver's Ed25519 key pair for the lab: ``<stem>.key`` (PKCS#8 PEM, 0600, unencrypted: a lab
    key) and ``<stem>.vkey`` (its verifier key string, what the inventory's approval_key names).
    Returns True when it was created."""
    from ir_toolkit.tlog.note import Signer

    key_path = vkey_path.with_suffix(".key")
    if vkey_path.exists() and key_path.exists():
        return False
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in approver.lower()).strip("-.") or "approver"
    key = Ed25519PrivateKey.generate()
    vkey_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    write_private(key_path, pem, 0o600)
    write_private(vkey_path, (Signer(f"approver/{slug}", key).verifier_key() + "\n").encode(), 0o644)
    return True


def ensure_keypair(path: Path, comment: str) -> tuple[str, bool]:
    """Reuse the key pair at ``path`` (+ ``.pub``) or make one; returns (public line, created)."""
    pub = path.with_name(path.name + ".pub")
    if path.exists() and pub.exists():
        return pub.read_text().strip(), False
    private, public = generate_keypair(comment)
    write_private(path, private, 0o600)
    write_private(pub, (public + "\n").encode(), 0o644)
    return public, True


def read_public(path: Path) -> str:
    """The public key line next to private key ``path``."""
    return path.with_name(path.name + ".pub").read_text().strip()


def key_blob(public_line: str) -> bytes:
    parts = public_line.split()
    if len(parts) < 2:
        raise ValueError(f"not an OpenSSH public key: {public_line[:40]!r}")
    return base64.b64decode(parts[1])


def fingerprint(public_line: str) -> str:
    """OpenSSH ``SHA256:...`` fingerprint of a public key line."""
    digest = hashlib.sha256(key_blob(public_line)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_line(address: str, port: int, public_line: str) -> str:
    """``198.18.1.10 ssh-ed25519 AAAA...`` (``[addr]:port`` only when port != 22)."""
    kind, blob = public_line.split()[:2]
    where = address if port == 22 else f"[{address}]:{port}"
    return f"{where} {kind} {blob}"


def generate_password(length: int = 20) -> str:
    """A random password from letters and digits (at least one of each kind)."""
    while True:
        value = "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(length))
        if any(c.isdigit() for c in value) and any(c.islower() for c in value) and any(c.isupper() for c in value):
            return value


def ensure_password(path: Path, length: int = 20) -> tuple[str, bool]:
    """Reuse the password stored in ``path`` (0600) or make one; registered for redaction."""
    if path.exists():
        value = path.read_text().strip()
        created = False
    else:
        value = generate_password(length)
        write_private(path, (value + "\n").encode(), 0o600)
        created = True
    register_secret(value)
    return value, created


def sha512_crypt(password: str) -> str:
    """A ``$6$`` crypt(3) hash for /etc/shadow (libcrypt via :mod:`crypt`, else ``openssl passwd``)."""
    salt = "".join(secrets.choice(string.ascii_letters + string.digits + "./") for _ in range(16))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt  # noqa: PLC0415 - removed in Python 3.13; fallback below

        value = crypt.crypt(password, f"$6${salt}$")
        if value and value.startswith("$6$"):
            return value
    except ImportError:
        pass
    try:
        proc = childenv.run(
            ["openssl", "passwd", "-6", "-salt", salt, "-stdin"],
            input=password + "\n", capture_output=True, text=True, check=True, timeout=30,
        )
    except (OSError, childenv.SubprocessError) as exc:
        raise EnvironmentProblem(f"cannot hash the lab password (no crypt module, openssl failed: {exc})") from None
    return proc.stdout.strip()
