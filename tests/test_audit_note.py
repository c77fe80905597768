"""Signed notes, verifier keys, checkpoints and cosignatures (C2SP formats).

Vectors: golang.org/x/mod/sumdb/note (TestSign, TestOpen, TestNewVerifier's
mangled keys, badMsgs) and transparency-dev/formats (cosignature timestamp).
"""

from __future__ import annotations

import base64

import pytest

from ir_toolkit.tlog.note import (
    ALG_COSIGNATURE_V1,
    COSIGNATURE_MAX_SKEW,
    InvalidNoteSignature,
    MalformedNote,
    NoteError,
    Signer,
    UnverifiedNote,
    format_checkpoint,
    open_note,
    parse_checkpoint,
    parse_note,
    parse_vkey,
    sign_note,
)

PETER_SKEY_SEED = base64.b64decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")[1:]
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
PETER_SIG = ("\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqd"
             "ngotpRZb6KE6RyyBwJnAM=\n")
ENOCH_SIG = ("\u2014 EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox"
             "33WWd1RvMc+QQ=\n")


def test_golang_sign_vector_reproduces_byte_for_byte():
    signer = Signer.from_seed("PeterNeumann", PETER_SKEY_SEED)
    assert signer.verifier_key() == PETER_VKEY
    assert signer.key_id.hex() == "c74f20a3"
    assert sign_note(TEXT, [signer]) == TEXT + "\n" + PETER_SIG


def test_open_verifies_known_and_ignores_unknown_keys():
    peter, enoch = parse_vkey(PETER_VKEY), parse_vkey(ENOCH_VKEY)
    note = open_note(TEXT + "\n" + PETER_SIG + ENOCH_SIG, [peter])
    assert note.text == TEXT
    assert [s.name for s in note.sigs] == ["PeterNeumann"]
    assert [s.name for s in note.unverified] == ["EnochRoot"]
    both = open_note(TEXT + "\n" + PETER_SIG + ENOCH_SIG, [peter, enoch])
    assert [s.name for s in both.sigs] == ["PeterNeumann", "EnochRoot"]
    with pytest.raises(UnverifiedNote):
        open_note(TEXT + "\n" + PETER_SIG + ENOCH_SIG, [])


def test_invalid_signature_by_known_key_rejects_the_note():
    bad = TEXT + "\n" + PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    with pytest.raises((InvalidNoteSignature, MalformedNote)):
        open_note(bad, [parse_vkey(PETER_VKEY)])
    # a valid signature over another text
    with pytest.raises(InvalidNoteSignature):
        open_note(TEXT.replace("answer", "Answer") + "\n" + PETER_SIG, [parse_vkey(PETER_VKEY)])


def test_too_many_signatures_is_malformed():
    with pytest.raises(MalformedNote):
        open_note(TEXT + "\n" + PETER_SIG * 101, [parse_vkey(PETER_VKEY)])


@pytest.mark.parametrize("msg", [
    TEXT,
    TEXT + "\n",
    TEXT + "\n" + PETER_SIG[:-1],
    "\x01" + TEXT + "\n" + PETER_SIG,
    TEXT + "\n" + "\u2014 Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqd"
    "ngotpRZb6KE6RyyBwJnAM=",
    TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
    TEXT + "\n" + PETER_SIG.replace("\u2014", "-"),
    TEXT + PETER_SIG,
    TEXT + "\n" + PETER_SIG.replace("=\n", "\n"),
    TEXT + "\n" + "\u2014 PeterNeumann AAAA\n",
])
def test_golang_bad_messages_are_malformed(msg):
    with pytest.raises(MalformedNote):
        open_note(msg, [parse_vkey(PETER_VKEY)])


def test_invalid_utf8_is_malformed():
    with pytest.raises(MalformedNote):
        open_note(b"\xff" + (TEXT + "\n" + PETER_SIG).encode(), [parse_vkey(PETER_VKEY)])


def test_vkey_manglings_are_all_rejected():
    assert parse_vkey(PETER_VKEY).vkey == PETER_VKEY
    b = PETER_VKEY.encode()
    for i in range(len(b) + 1):
        for j in range(i + 1, len(b) + 1):
            if i == 0 and j == len(b):
                continue
            with pytest.raises(NoteError):
                parse_vkey(b[i:j].decode())
    for i in range(len(b)):
        mangled = bytearray(b)
        mangled[i] += 1
        with pytest.raises(NoteError):
            parse_vkey(mangled.decode("latin-1"))
    # wrong key length / unknown algorithm, each with a recomputed key id
    with pytest.raises(NoteError):
        parse_vkey("PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==")
    with pytest.raises(NoteError):
        parse_vkey("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")


def test_vkey_whose_base64_contains_plus_parses():
    for _ in range(50):  # about 1 in 2 random keys has a '+' in its base64
        signer = Signer.generate("example.com/log")
        assert parse_vkey(signer.verifier_key()).public == signer.public


def test_invalid_key_names_are_refused():
    with pytest.raises(NoteError):
        Signer.generate("bad+name")
    with pytest.raises(NoteError):
        Signer.generate("bad name")


def test_colliding_key_id_with_other_key_does_not_verify():
    real = Signer.generate("log.example/a")
    other = Signer.generate("log.example/a")
    note = sign_note("hello\n", [other])
    # forge: keep the real key's (name, id) but the other key's signature
    forged = note.replace(base64.b64encode(other.key_id).decode()[:5], base64.b64encode(real.key_id).decode()[:5])
    with pytest.raises((InvalidNoteSignature, UnverifiedNote, MalformedNote)):
        open_note(forged, [real.verifier()])
    with pytest.raises(UnverifiedNote):
        open_note(note, [real.verifier()])


def test_checkpoint_format_and_parse():
    root = bytes(range(32))
    body = format_checkpoint("acme/ir/IR-1", 1000, root)
    assert body == "acme/ir/IR-1\n1000\n" + base64.b64encode(root).decode() + "\n"
    cp = parse_checkpoint(body)
    assert (cp.origin, cp.size, cp.root) == ("acme/ir/IR-1", 1000, root)
    for bad in ("acme/ir/IR-1\n01000\n" + base64.b64encode(root).decode() + "\n",
                "acme/ir/IR-1\n1000\n" + base64.b64encode(root[:31]).decode() + "\n",
                "\n1000\n" + base64.b64encode(root).decode() + "\n",
                "acme/ir/IR-1\n1000\n",
                "acme/ir/IR-1\n-1\n" + base64.b64encode(root).decode() + "\n",
                "acme/ir/IR-1\n1000\n" + base64.b64encode(root).decode() + "\n\n",
                "acme/ir/IR-1\n1000\n" + base64.b64encode(root).decode()):
        with pytest.raises(MalformedNote):
            parse_checkpoint(bad)


def test_non_canonical_base64_in_a_signature_is_rejected():
    signer = Signer.generate("log.example/x")
    note = sign_note("a\n", [signer])
    line = note.split("\n")[-2]
    b64 = line.split(" ")[-1]
    assert b64.endswith("=")
    # flip a padding bit of the last data character: decodes to the same bytes non-strictly
    last = b64[-2]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    twin = alphabet[alphabet.index(last) ^ 1]
    mangled = note.replace(b64, b64[:-2] + twin + "=")
    with pytest.raises(MalformedNote):
        parse_note(mangled)


def test_cosignature_timestamp_vector():
    sig = base64.b64decode("ZGhGuQAAAABm/qTPeyKXD+R2rzyQsxPiP8mXum7qq/iF0u4vanlqJyocWODBt97w9uL+8qT7S5gxEHWW"
                           "OworDcFiEBYJXORmnFBOBA==")
    assert int.from_bytes(sig[4:12], "big") == 1727964367
    assert len(sig) == 4 + 8 + 64


def test_cosignature_roundtrip_future_timestamp_and_extension_lines():
    log = Signer.generate("acme/ir/IR-1")
    witness = Signer.generate("w.example/w1", ALG_COSIGNATURE_V1)
    assert witness.verifier_key().split("+")[2].startswith("B")  # type byte 0x04
    body = format_checkpoint("acme/ir/IR-1", 3, bytes(32))
    signed = sign_note(body, [log])
    _text, sigs = parse_note(signed)
    cosigned = sign_note(body, [witness], existing=sigs, timestamp=1_700_000_000)
    note = open_note(cosigned, [log.verifier(), witness.verifier()], now=1_700_000_100)
    assert note.cosignature_time(witness.verifier()) == 1_700_000_000
    # a log key cannot verify a cosignature line and vice versa
    with pytest.raises(UnverifiedNote):
        open_note(sign_note(body, [witness]), [log.verifier()])
    # dated in the future beyond the allowed skew
    future = sign_note(body, [witness], existing=sigs, timestamp=2_000_000_000)
    with pytest.raises(InvalidNoteSignature):
        open_note(future, [log.verifier(), witness.verifier()], now=2_000_000_000 - COSIGNATURE_MAX_SKEW - 1)
    # the signatures cover extension lines: changing one breaks both
    ext = format_checkpoint("acme/ir/IR-1", 3, bytes(32), ["Extendo"])
    cos = sign_note(ext, [log, witness], timestamp=1_700_000_000)
    with pytest.raises(InvalidNoteSignature):
        open_note(cos.replace("Extendo", "Extend@"), [log.verifier(), witness.verifier()], now=1_700_000_000)
