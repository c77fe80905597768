"""Controller-CPU fixes of #17 that must not weaken anything: the decrypted-key cache and the run-log level."""

from __future__ import annotations

import io
import json
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ir_toolkit import log
from ir_toolkit.transports.ssh import TransportError, load_private_key


def _write_key(path, passphrase: bytes | None) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    enc = serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, enc))
    path.chmod(0o600)
    return key


def _pub(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_encrypted_key_is_decrypted_once_and_matches_the_file(tmp_path):
    path = tmp_path / "case_key"
    key = _write_key(path, b"case-pass")
    start = time.process_time()
    first = load_private_key(path, "case-pass")
    slow = time.process_time() - start
    start = time.process_time()
    for _ in range(20):
        again = load_private_key(path, "case-pass")
    fast = (time.process_time() - start) / 20
    assert again is first
    assert first.get_name() == "ssh-ed25519"
    assert first.asbytes().endswith(_pub(key))
    assert fast < slow / 10, (fast, slow)  # the bcrypt KDF is not run again


def test_the_cache_never_answers_for_a_wrong_or_missing_passphrase(tmp_path):
    path = tmp_path / "case_key"
    _write_key(path, b"right")
    load_private_key(path, "right")
    with pytest.raises(TransportError, match="wrong passphrase"):
        load_private_key(path, "wrong")
    with pytest.raises(TransportError, match="password"):
        load_private_key(path, None)


def test_a_replaced_key_file_is_read_again(tmp_path):
    path = tmp_path / "case_key"
    _write_key(path, b"p")
    old = load_private_key(path, "p")
    new_key = _write_key(path, b"p")
    new = load_private_key(path, "p")
    assert new is not old and new.asbytes().endswith(_pub(new_key))
    path.unlink()
    with pytest.raises(TransportError, match="does not exist"):
        load_private_key(path, "p")


def test_unencrypted_and_pem_keys_still_load(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    plain = tmp_path / "plain"
    _write_key(plain, None)
    assert load_private_key(plain).get_name() == "ssh-ed25519"
    pem = tmp_path / "rsa.pem"
    pem.write_bytes(rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    assert load_private_key(pem).get_name() == "ssh-rsa"
    ecdsa = tmp_path / "ecdsa"
    ecdsa.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.BestAvailableEncryption(b"e")))
    assert load_private_key(ecdsa, "e").get_name() == "ecdsa-sha2-nistp256"
    junk = tmp_path / "junk"
    junk.write_text("not a key\n")
    with pytest.raises(TransportError, match="cannot load responder key"):
        load_private_key(junk)


def test_debug_records_stay_out_of_the_default_run_log(tmp_path):
    """The per-path debug records of a triage (hundreds per host) are not formatted nor written at the
    default level; info and above are; at -vv (verbosity 2) debug is written too."""
    from ir_toolkit.triage.collector import CollectionLog

    path = tmp_path / "run.jsonl"
    log.configure(json_path=path, verbosity=0, stream=io.StringIO())
    try:
        clog = CollectionLog("h1")
        for i in range(2000):
            clog.add("info", "symlink recorded, not followed", artifact="a", path=f"/usr/lib/x{i}")
        clog.add("warning", "tools missing on host", tools=["lsattr"])
        log.get_logger("engine").info("step.done", host="h1")
    finally:
        log.configure(stream=io.StringIO())
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["event"] for r in records] == ["tools missing on host", "step.done"]
    assert len(clog.records) == 2001  # the bundle's own collection log still has every path's fate
    assert path.stat().st_size < 1024

    verbose = tmp_path / "verbose.jsonl"
    log.configure(json_path=verbose, verbosity=2, stream=io.StringIO())
    try:
        CollectionLog("h1").add("info", "symlink recorded, not followed", path="/x")
    finally:
        log.configure(stream=io.StringIO())
    assert "symlink recorded" in verbose.read_text()


def _reference_split(data: bytes, tags: dict[str, str]) -> tuple[bytes, dict[str, bytes]]:
    """The line-by-line routing the block splitter replaced (pieces of at most 1 MiB; a tag only at a
    piece that starts a line): the behaviour it must keep."""
    prefixes = {t.encode() + b"\t": t for t in tags}
    main, parts = bytearray(), {t: bytearray() for t in tags}
    src = io.BytesIO(data)
    at_start, current = True, None
    while piece := src.readline(1 << 20):
        if at_start:
            tab = piece.find(b"\t", 0, 34)
            current = prefixes.get(piece[:tab + 1]) if tab >= 0 else None
            if current is not None:
                piece = piece[tab + 1:]
        (parts[current] if current is not None else main).extend(piece)
        at_start = piece.endswith(b"\n")
    return bytes(main), {t: bytes(v) for t, v in parts.items()}


def test_sections_split_as_they_arrive_match_the_line_by_line_split():
    import hashlib
    import random

    from ir_toolkit.triage.collector import SectionSplitter

    tags = {"hidden": "h.txt", "writable": "w.txt", "a": "a.txt", "ab": "ab.txt"}
    rng = random.Random(17)
    for _ in range(1500):
        lines = []
        for _ in range(rng.randint(0, 30)):
            head = rng.choice(["", "hidden\t", "writable\t", "a\t", "ab\t", "abc\t", "hidden", "\thidden\t",
                               "x" * 40 + "\t", "\n"])
            body = bytes(rng.choice(b"ab\tc|0\n") for _ in range(rng.randint(0, 25)))
            lines.append(head.encode() + body + (b"\n" if rng.random() < 0.8 else b""))
        data = b"".join(lines)
        if rng.random() < 0.02:  # a hostile endless line, and a tag forged after 1 MiB of a line
            data += b"hidden\t" + b"z" * (3 << 20) + b"\n0|" + b"b" * ((1 << 20) - 2) + b"hidden\t/forged\nab\tq"
        cuts = sorted(rng.sample(range(len(data) + 1), min(len(data) + 1, rng.randint(0, 9))))
        main, parts = io.BytesIO(), {t: io.BytesIO() for t in tags}
        splitter = SectionSplitter(tags, main, parts)
        for i, j in zip([0, *cuts], [*cuts, len(data)]):
            splitter.write(data[i:j])
        size, sizes, sha = splitter.finish()
        want_main, want_parts = _reference_split(data, tags)
        assert main.getvalue() == want_main
        assert {t: p.getvalue() for t, p in parts.items()} == want_parts
        assert size == len(want_main) and sizes == {t: len(v) for t, v in want_parts.items()}
        assert sha == hashlib.sha256(data).hexdigest()


def test_redaction_keeps_its_sorted_secrets_and_still_cuts_every_one():
    """#17: the registered secrets are sorted once per registration, not on every redacted string."""
    from ir_toolkit import redaction

    before = set(redaction._registered)
    redaction.forget_secrets()
    try:
        redaction.register_secret("long-secret-value-1234")
        assert redaction.redact_text("x long-secret-value-1234 y") == "x [REDACTED] y"
        assert redaction.redact_text("short") == "short"
        redaction.register_secret("abcd")  # shorter than any before: strings of 4+ characters are searched now
        assert redaction.redact_text("abcd") == "[REDACTED]"
        redaction.register_secret("long-secret")  # a prefix of a longer one: the longer is cut first
        assert redaction.redact_text("long-secret-value-1234 long-secret") == "[REDACTED] [REDACTED]"
        assert redaction.redact({"summary": ["ok abcd"], "password": "x"}) == {"summary": ["ok [REDACTED]"],
                                                                                 "password": "[REDACTED]"}
        redaction.forget_secrets()
        assert redaction.redact_text("abcd long-secret") == "abcd long-secret"
    finally:
        redaction.forget_secrets()
        for value in before:  # what other tests of this process registered
            redaction.register_secret(value)
