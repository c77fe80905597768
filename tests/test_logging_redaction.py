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
