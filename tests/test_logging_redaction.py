"""No secret reaches a log: not in the console output, not in the JSON run file."""

from __future__ import annotations

import io
import json

from ir_toolkit import log
from ir_toolkit.redaction import REDACTED, forget_secrets, redact, register_secret

PASSWORD = "Tr0ub4dor&3-horse-battery"
PEM = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "QyNTUxOQAAACDlJ0xR8+1yS3cAAAAA\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)


def test_structlog_redacts_password_field_and_pem_in_console_and_file(tmp_path):
    console = io.StringIO()
    json_path = tmp_path / "run.jsonl"
    log.configure(json_path=json_path, verbosity=2, stream=console)
    logger = log.get_logger("test")
    # Mistakes a developer could make: a password as a field, a key as a field with an innocent name,
    # a key inside a nested structure, a secret inside the event text.
    logger.warning("rotating account", user="mspadmin", password=PASSWORD, blob=PEM,
                   extra={"stdin": PEM, "items": [PEM]}, new_password=PASSWORD)
    logger.info(f"loaded key {PEM}")
    log.configure(stream=io.StringIO())  # closes the run file

    out = console.getvalue()
    file_text = json_path.read_text()
    for text in (out, file_text):
        assert PASSWORD not in text
        assert "PRIVATE KEY-----" not in text
        assert "b3BlbnNzaC1rZXktdjEAAAAA" not in text
        assert REDACTED in text
        assert "mspadmin" in text  # non-secret fields survive
    records = [json.loads(line) for line in file_text.splitlines()]
    assert records[0]["password"] == REDACTED and records[0]["user"] == "mspadmin"
    assert records[0]["extra"]["stdin"] == REDACTED


def test_registered_secret_is_cut_from_any_string(tmp_path):
    console = io.StringIO()
    log.configure(stream=console, verbosity=2)
    secret = "fresh-Rand0m-value-42"
    register_secret(secret)
    try:
        log.get_logger().info("command output", stdout=f"chpasswd: {secret} applied")
        assert secret not in console.getvalue()
        assert "chpasswd: [REDACTED] applied" in console.getvalue()
    finally:
        forget_secrets()
        log.configure(stream=io.StringIO())


def test_references_are_not_secrets():
    assert redact({"password": "env:BMC_PASS", "key": "file:/k", "password_ref": "x"}) == {
        "password": "env:BMC_PASS", "key": "file:/k", "password_ref": "x"}
    assert redact({"token": "abc"}) == {"token": REDACTED}


def test_many_registered_secrets_are_all_cut_automaton_and_recent_alike():
    """A run registers a password per host and account: past the first 64 they are searched by the automaton,
    the newest ones one by one. Every one is cut wherever it appears, and nothing else is."""
    import secrets as _secrets

    from ir_toolkit import redaction

    forget_secrets()
    try:
        values = [_secrets.token_urlsafe(18) for _ in range(300)]
        for v in values:
            register_secret(v)
        assert redaction._matcher.automaton is not None and redaction._matcher.recent  # both paths in use
        assert len(redaction._matcher.bulk) + len(redaction._matcher.recent) == 300
        for v in (values[0], values[150], values[-1]):  # in the automaton, and among the newest
            text = f"login as mspadmin with {v}; again: {v}!"
            assert redact(text) == f"login as mspadmin with {REDACTED}; again: {REDACTED}!"
            assert redact({"stdout": v.encode(), "items": [v]}) == {"stdout": REDACTED, "items": [REDACTED]}
        assert redact("nothing secret here, 0123456789") == "nothing secret here, 0123456789"
        assert redact(values[3][:-1]) == values[3][:-1]  # a prefix is not the secret
        register_secret(values[7])  # registering again changes nothing
        assert len(redaction._matcher.bulk) + len(redaction._matcher.recent) == 300
    finally:
        forget_secrets()
    assert redact(values[0]) == values[0]


def test_overlapping_and_adjacent_secrets_are_cut_whole():
    """Two secrets that overlap in a string leave no piece of either (searching them in turn, longest first,
    left the tail of the second); adjacent ones and non-ASCII ones too."""
    forget_secrets()
    try:
        for v in ("abcd1234", "1234wxyz", "pässwörd€", "zzzz"):
            register_secret(v)
        assert redact("x abcd1234wxyz y") == f"x {REDACTED} y"
        assert redact("abcd1234abcd1234") == REDACTED
        assert redact("[pässwörd€]") == f"[{REDACTED}]"
        assert redact("zzzzzz") == REDACTED  # overlapping occurrences of one value
        assert redact("zzz") == "zzz"
    finally:
        forget_secrets()
