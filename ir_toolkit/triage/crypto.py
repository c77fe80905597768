"""Streamed encryption of evidence bundles to one or more X25519 recipient public keys.

Format ``irkit-evidence-v1`` (the construction follows age's X25519 recipients
and STREAM; all primitives from ``cryptography``)::

    MAGIC                      b"irkit-evidence-v1\\n"
    u32 big-endian             length of HEADER
    HEADER                     canonical JSON: {"alg", "chunk_size", "salt", "recipients": [
                                 {"type": "X25519", "fingerprint", "ephemeral", "wrapped_key"}]}
    HMAC-SHA256(mac_key, MAGIC || len || HEADER)        32 bytes
    chunk 0 .. chunk n         ChaCha20-Poly1305(payload_key, nonce_i, plaintext_i, aad=SHA-256(header bytes))

* A random 32-byte file key per bundle. For each recipient an ephemeral
  X25519 key agreement; ``wrap_key = HKDF-SHA256(shared, salt=eph_pub||rcpt_pub)``
  wraps the file key with ChaCha20-Poly1305.
* ``mac_key`` and ``payload_key`` derive from the file key with HKDF (the
  payload key also from the random header salt), so the header cannot be
  altered (recipients swapped, chunk size changed) without detection.
* Plaintext is cut into 64 KiB chunks; ``nonce_i = i (11 bytes, big endian) ||
  final flag (1 byte)``. Reordered, dropped, duplicated or truncated chunks
  and data after the final chunk fail authentication. Only the last chunk
  carries the final flag; an empty plaintext is one empty final chunk.

Nothing here ever writes plaintext to disk: :class:`EncryptingWriter` is a
write-only file object in front of the bundle file and :class:`DecryptingReader`
a read-only one for ``tarfile``'s streaming mode.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import struct
from pathlib import Path
from typing import IO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ir_toolkit.errors import InputError, VerificationFailed

MAGIC = b"irkit-evidence-v1\n"
CHUNK_SIZE = 64 * 1024
TAG_SIZE = 16
_MAX_HEADER = 1 << 20
_INFO_WRAP = b"irkit-evidence-v1 x25519 wrap"
_INFO_MAC = b"irkit-evidence-v1 header mac"
_INFO_PAYLOAD = b"irkit-evidence-v1 payload"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _hkdf(secret: bytes, salt: bytes | None, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(secret)


def _raw(pub: X25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(pub: X25519PublicKey) -> str:
    """``SHA256:<base64>`` of the raw 32-byte public key (the form shown to people)."""
    return "SHA256:" + _b64(hashlib.sha256(_raw(pub)).digest()).rstrip("=")


def public_key_text(pub: X25519PublicKey) -> str:
    """PEM (SubjectPublicKeyInfo), the form ``openssl pkey -pubout`` writes."""
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def parse_public_key(text: str | bytes, *, source: str = "recipient") -> X25519PublicKey:
    """An X25519 public key from PEM, or base64/hex of the raw 32 bytes."""
    data = text.encode() if isinstance(text, str) else text
    stripped = data.strip()
    if stripped.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(stripped)
        except ValueError as exc:
            raise InputError(f"{source}: not a PEM public key ({exc})") from None
        if not isinstance(key, X25519PublicKey):
            raise InputError(f"{source}: not an X25519 public key (got {type(key).__name__})")
        return key
    raw: bytes | None = None
    try:
        text_key = stripped.decode("ascii")
        raw = bytes.fromhex(text_key) if len(text_key) == 64 else base64.b64decode(text_key, validate=True)
    except ValueError:
        raw = None
    if raw is None or len(raw) != 32:
        raise InputError(f"{source}: not an X25519 public key (PEM, or base64/hex of 32 bytes)")
    return X25519PublicKey.from_public_bytes(raw)


def load_public_key(spec: str) -> X25519PublicKey:
    """A recipient given on the command line: a file path, or the key text itself."""
    path = Path(spec).expanduser()
    if path.is_file():
        return parse_public_key(path.read_bytes(), source=str(path))
    if "/" in spec and not spec.strip().endswith("="):
        raise InputError(f"recipient key file {spec} does not exist")
    return parse_public_key(spec, source="recipient")


def load_private_key(path: Path, passphrase: str | None = None) -> X25519PrivateKey:
    """An X25519 identity from a PEM PKCS#8 file (``openssl genpkey -algorithm x25519``)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"identity {path}: cannot read ({exc.strerror})") from None
    try:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except TypeError:  # encrypted PKCS#8
            if not passphrase:
                raise InputError(f"identity {path}: the key is encrypted; set IRKIT_KEY_PASSPHRASE") from None
            key = serialization.load_pem_private_key(data, password=passphrase.encode())
    except ValueError as exc:
        raise InputError(f"identity {path}: not a usable private key or wrong passphrase ({exc})") from None
    if not isinstance(key, X25519PrivateKey):
        raise InputError(f"identity {path}: not an X25519 private key")
    return key


def private_key_pem(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _nonce(index: int, final: bool) -> bytes:
    if index >= 1 << 88:
        raise ValueError("too many chunks")
    return index.to_bytes(11, "big") + (b"\x01" if final else b"\x00")


class EncryptingWriter(io.RawIOBase):
    """A write-only stream that encrypts to ``recipients`` and writes to ``sink``.

    ``close()`` writes the final chunk; it does not close ``sink``.
    """

    def __init__(self, sink: IO[bytes], recipients: list[X25519PublicKey], *, chunk_size: int = CHUNK_SIZE) -> None:
        if not recipients:
            raise ValueError("at least one recipient")
        self._sink = sink
        self._chunk = chunk_size
        file_key = os.urandom(32)
        salt = os.urandom(32)
        stanzas = []
        for rcpt in recipients:
            eph = X25519PrivateKey.generate()
            eph_pub = _raw(eph.public_key())
            shared = eph.exchange(rcpt)
            wrap_key = _hkdf(shared, eph_pub + _raw(rcpt), _INFO_WRAP)
            wrapped = ChaCha20Poly1305(wrap_key).encrypt(b"\0" * 12, file_key, None)
            stanzas.append({"type": "X25519", "fingerprint": fingerprint(rcpt),
                            "ephemeral": _b64(eph_pub), "wrapped_key": _b64(wrapped)})
        header = json.dumps(
            {"alg": "ChaCha20-Poly1305", "chunk_size": chunk_size, "recipients": stanzas, "salt": _b64(salt)},
            sort_keys=True, separators=(",", ":"),
        ).encode()
        prefix = MAGIC + struct.pack(">I", len(header)) + header
        mac = hmac.new(_hkdf(file_key, None, _INFO_MAC), prefix, hashlib.sha256).digest()
        self._aead = ChaCha20Poly1305(_hkdf(file_key, salt, _INFO_PAYLOAD))
        self._aad = hashlib.sha256(header).digest()
        self._buf = bytearray()
        self._index = 0
        self._finished = False
        sink.write(prefix + mac)

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self._finished:
            raise ValueError("write after close")
        buf = self._buf
        before = len(buf)
        buf += data
        written = len(buf) - before
        size = self._chunk
        if len(buf) > size:  # the last full chunk stays buffered: only close() knows which chunk is final
            done = 0
            with memoryview(buf) as view:  # each chunk encrypted from the buffer in place (no copy of a slice)
                while len(buf) - done > size:
                    self._emit(view[done:done + size], final=False)
                    done += size
            del buf[:done]
        return written

    def _emit(self, plaintext: bytes | memoryview, *, final: bool) -> None:
        self._sink.write(self._aead.encrypt(_nonce(self._index, final), plaintext, self._aad))
        self._index += 1

    def close(self) -> None:
        if not self._finished:
            self._finished = True
            self._emit(bytes(self._buf), final=True)
            self._buf.clear()
        super().close()


def read_header(source: IO[bytes]) -> tuple[bytes, dict]:
    """Read MAGIC, the header and its MAC; returns ``(prefix_bytes_incl_mac, header)``."""
    magic = source.read(len(MAGIC))
    if magic != MAGIC:
        raise VerificationFailed("not an irkit encrypted bundle (bad magic)")
    raw_len = source.read(4)
    if len(raw_len) != 4:
        raise VerificationFailed("encrypted bundle truncated in its header")
    (length,) = struct.unpack(">I", raw_len)
    if length > _MAX_HEADER:
        raise VerificationFailed("encrypted bundle header is implausibly large")
    header_bytes = source.read(length)
    mac = source.read(32)
    if len(header_bytes) != length or len(mac) != 32:
        raise VerificationFailed("encrypted bundle truncated in its header")
    try:
        header = json.loads(header_bytes)
    except ValueError:
        raise VerificationFailed("encrypted bundle header is not valid JSON") from None
    return magic + raw_len + header_bytes + mac, header


def recipients_of(path: Path) -> list[str]:
    """Fingerprints of the keys an encrypted bundle is readable with (no key needed)."""
    with open(path, "rb") as fh:
        _, header = read_header(fh)
    return [str(r.get("fingerprint")) for r in header.get("recipients", [])]


class DecryptingReader(io.RawIOBase):
    """A read-only stream over an encrypted bundle; authentication failures raise VerificationFailed."""

    def __init__(self, source: IO[bytes], identities: list[X25519PrivateKey], *, name: str = "bundle") -> None:
        self._src = source
        self._name = name
        prefix, header = read_header(source)
        header_bytes = prefix[len(MAGIC) + 4:-32]
        try:
            chunk = int(header["chunk_size"])
            salt = _unb64(header["salt"])
            stanzas = list(header["recipients"])
        except (KeyError, TypeError, ValueError):
            raise VerificationFailed(f"{name}: malformed encryption header") from None
        if header.get("alg") != "ChaCha20-Poly1305" or not 1024 <= chunk <= 1 << 24:
            raise VerificationFailed(f"{name}: unsupported encryption parameters")
        file_key = self._unwrap(stanzas, identities)
        expected = hmac.new(_hkdf(file_key, None, _INFO_MAC), prefix[:-32], hashlib.sha256).digest()
        if not hmac.compare_digest(expected, prefix[-32:]):
            raise VerificationFailed(f"{name}: encryption header was altered (MAC mismatch)")
        self._aead = ChaCha20Poly1305(_hkdf(file_key, salt, _INFO_PAYLOAD))
        self._aad = hashlib.sha256(header_bytes).digest()
        self._chunk = chunk
        self._index = 0
        self._plain = b""
        self._pos = 0
        self._done = False
        self._lookahead = b""

    def _unwrap(self, stanzas: list[dict], identities: list[X25519PrivateKey]) -> bytes:
        wanted = {str(s.get("fingerprint")) for s in stanzas}
        for ident in identities:
            fp = fingerprint(ident.public_key())
            for stanza in stanzas:
                if stanza.get("fingerprint") != fp:
                    continue
                try:
                    eph_pub = _unb64(stanza["ephemeral"])
                    shared = ident.exchange(X25519PublicKey.from_public_bytes(eph_pub))
                    wrap_key = _hkdf(shared, eph_pub + _raw(ident.public_key()), _INFO_WRAP)
                    return ChaCha20Poly1305(wrap_key).decrypt(b"\0" * 12, _unb64(stanza["wrapped_key"]), None)
                except (KeyError, ValueError, InvalidTag):
                    raise VerificationFailed(f"{self._name}: recipient stanza for {fp} is corrupt") from None
        raise InputError(
            f"{self._name} is encrypted to {', '.join(sorted(wanted))}; none of the given keys "
            f"({', '.join(fingerprint(i.public_key()) for i in identities) or 'no key given'}) is a recipient"
        )

    @property
    def chunk_index(self) -> int:
        return self._index

    def readable(self) -> bool:
        return True

    def _next_chunk(self) -> None:
        want = self._chunk + TAG_SIZE
        data = self._lookahead + self._src.read(want - len(self._lookahead))
        while len(data) < want:
            more = self._src.read(want - len(data))
            if not more:
                break
            data += more
        self._lookahead = self._src.read(1) if len(data) == want else b""
        final = not self._lookahead
        if len(data) < TAG_SIZE:
            raise VerificationFailed(f"{self._name}: truncated after chunk {self._index - 1} (no final chunk)")
        try:
            self._plain = self._aead.decrypt(_nonce(self._index, final), data, self._aad)
        except InvalidTag:
            raise VerificationFailed(
                f"{self._name}: chunk {self._index} failed authentication (altered, reordered or truncated)"
            ) from None
        self._pos = 0
        self._index += 1
        self._done = final

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._pos >= len(self._plain):
            if self._done:
                return 0
            self._next_chunk()
        n = min(len(buffer), len(self._plain) - self._pos)
        buffer[:n] = self._plain[self._pos:self._pos + n]
        self._pos += n
        return n
