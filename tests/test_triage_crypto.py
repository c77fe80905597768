"""Streamed bundle encryption: recipients, tampering, truncation, reordering (real crypto, no mocks)."""

from __future__ import annotations

import io
import json
import os
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ir_toolkit.errors import InputError, VerificationFailed
from ir_toolkit.triage import crypto

CHUNK = 1024  # small chunks so a test covers many of them


def encrypt(data: bytes, recipients, chunk: int = CHUNK) -> bytes:
    out = io.BytesIO()
    writer = crypto.EncryptingWriter(out, recipients, chunk_size=chunk)
    for i in range(0, len(data), 777):  # odd write sizes
        writer.write(data[i:i + 777])
    writer.close()
    return out.getvalue()


def decrypt(blob: bytes, identities) -> bytes:
    reader = crypto.DecryptingReader(io.BytesIO(blob), identities)
    return io.BufferedReader(reader).read()


def header_len(blob: bytes) -> int:
    (length,) = struct.unpack(">I", blob[len(crypto.MAGIC):len(crypto.MAGIC) + 4])
    return len(crypto.MAGIC) + 4 + length + 32


@pytest.fixture
def keys():
    return [X25519PrivateKey.generate() for _ in range(3)]


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK, 5 * CHUNK + 17])
def test_roundtrip_every_recipient(keys, size):
    data = os.urandom(size)
    blob = encrypt(data, [k.public_key() for k in keys[:2]])
    assert decrypt(blob, [keys[0]]) == data
    assert decrypt(blob, [keys[1]]) == data
    assert data[:16] not in blob[header_len(blob):] or size < 16


def test_non_recipient_is_refused(keys):
    blob = encrypt(b"evidence", [keys[0].public_key()])
    with pytest.raises(InputError, match="none of the given keys"):
        decrypt(blob, [keys[2]])
    with pytest.raises(InputError):
        decrypt(blob, [])


def test_header_lists_fingerprints_without_key(keys, tmp_path):
    blob = encrypt(b"x", [k.public_key() for k in keys])
    path = tmp_path / "b.enc"
    path.write_bytes(blob)
    assert crypto.recipients_of(path) == [crypto.fingerprint(k.public_key()) for k in keys]


def test_every_flipped_byte_is_detected(keys):
    data = os.urandom(3 * CHUNK + 5)
    blob = encrypt(data, [keys[0].public_key()])
    for pos in range(0, len(blob), 37):
        bad = bytearray(blob)
        bad[pos] ^= 0x01
        with pytest.raises((VerificationFailed, InputError)):
            decrypt(bytes(bad), [keys[0]])


def test_truncation_at_chunk_boundary_is_detected(keys):
    data = os.urandom(4 * CHUNK)
    blob = encrypt(data, [keys[0].public_key()])
    start = header_len(blob)
    step = CHUNK + crypto.TAG_SIZE
    for chunks in range(0, 4):
        with pytest.raises(VerificationFailed):
            decrypt(blob[:start + chunks * step], [keys[0]])


def test_reordered_and_duplicated_chunks_are_detected(keys):
    data = os.urandom(4 * CHUNK + 10)
    blob = encrypt(data, [keys[0].public_key()])
    start = header_len(blob)
    step = CHUNK + crypto.TAG_SIZE
    chunks = [blob[start + i * step:start + (i + 1) * step] for i in range(5)]
    swapped = blob[:start] + chunks[1] + chunks[0] + b"".join(chunks[2:])
    with pytest.raises(VerificationFailed, match="chunk 0"):
        decrypt(swapped, [keys[0]])
    duplicated = blob[:start] + chunks[0] + chunks[0] + b"".join(chunks[1:])
    with pytest.raises(VerificationFailed):
        decrypt(duplicated, [keys[0]])
    appended = blob + chunks[0]
    with pytest.raises(VerificationFailed):
        decrypt(appended, [keys[0]])


def test_header_cannot_be_altered(keys):
    blob = encrypt(os.urandom(100), [keys[0].public_key(), keys[1].public_key()])
    start = len(crypto.MAGIC) + 4
    end = header_len(blob) - 32
    header = json.loads(blob[start:end])
    header["recipients"] = header["recipients"][:1]  # drop a recipient, keep the other's stanza intact
    new = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    forged = crypto.MAGIC + struct.pack(">I", len(new)) + new + blob[end:]
    with pytest.raises(VerificationFailed, match="header was altered"):
        decrypt(forged, [keys[0]])


def test_public_key_formats(keys, tmp_path):
    pub = keys[0].public_key()
    pem = crypto.public_key_text(pub)
    path = tmp_path / "r.pem"
    path.write_text(pem)
    raw_b64 = crypto._b64(crypto._raw(pub))
    for spec in (str(path), raw_b64):
        assert crypto.fingerprint(crypto.load_public_key(spec)) == crypto.fingerprint(pub)
    assert crypto.fingerprint(crypto.parse_public_key(crypto._raw(pub).hex())) == crypto.fingerprint(pub)
    with pytest.raises(InputError, match="does not exist"):
        crypto.load_public_key(str(tmp_path / "missing.pem"))
    with pytest.raises(InputError, match="not an X25519 public key"):
        crypto.load_public_key("bm90IGEga2V5")


def test_private_key_file(keys, tmp_path):
    path = tmp_path / "id.pem"
    path.write_bytes(crypto.private_key_pem(keys[0]))
    loaded = crypto.load_private_key(path)
    assert crypto.fingerprint(loaded.public_key()) == crypto.fingerprint(keys[0].public_key())
    with pytest.raises(InputError, match="cannot read"):
        crypto.load_private_key(tmp_path / "nope.pem")
