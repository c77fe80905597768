"""Security review finding 5: no child process irkit starts sees the master passphrase or an env: secret.

The PoC (poc_misc.py §2) ran the reimage ``command`` provider with ``sh -c 'env > FILE'`` and found
``IRKIT_KEY_PASSPHRASE`` in the child's environment. Here the same command runs, with the passphrase,
the witness passphrase and an ``env:`` BMC password in irkit's environment; the child must see none of
them (the BMC password arrives on stdin only), and no module but :mod:`ir_toolkit.childenv` may start
processes on its own.
"""

from __future__ import annotations

import ast
import time
from pathlib import Path

import pytest

from ir_toolkit import childenv
from ir_toolkit.reimage import CommandProvider, ReimageOptions, ReimageStatus
from ir_toolkit.inventory.model import Bmc, Host, Tenant

PASSPHRASE = "S3cret-master-passphrase"
WITNESS = "witness-passphrase-77"
BMC_SECRET = "bmc-password-from-env-9f2"
PACKAGE = Path(__file__).resolve().parents[1] / "ir_toolkit"


@pytest.fixture
def secret_env(monkeypatch):
    monkeypatch.setenv("IRKIT_KEY_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("IRKIT_WITNESS_PASSPHRASE", WITNESS)
    monkeypatch.setenv("ACME_BMC_PASSWORD", BMC_SECRET)
    monkeypatch.setenv("SOME_UNRELATED_TOKEN", "tok-123456")


def test_f05_reimage_command_gets_no_secret_in_its_environment(tmp_path, secret_env):
    dump = tmp_path / "reimage-env.txt"
    stdin = tmp_path / "stdin.txt"
    host = Tenant(name="globex", hosts=[Host(name="web01", address="198.18.1.20", bmc=Bmc(
        provider="command", password="env:ACME_BMC_PASSWORD",
        command=["sh", "-c", f"env > {dump}; cat > {stdin}", "{host}"]))]).hosts[0]
    provider = CommandProvider(ReimageOptions(command_timeout=20, case_id="IR-1"))
    provider.start(host)
    deadline = time.monotonic() + 20
    while provider.poll() is ReimageStatus.RUNNING and time.monotonic() < deadline:
        time.sleep(0.05)
    assert provider.status is ReimageStatus.DONE, provider.result.message
    seen = dump.read_text()
    names = {line.split("=", 1)[0] for line in seen.splitlines() if "=" in line}
    for secret in (PASSPHRASE, WITNESS, BMC_SECRET, "tok-123456"):
        assert secret not in seen
    assert not names & {"IRKIT_KEY_PASSPHRASE", "IRKIT_WITNESS_PASSPHRASE", "ACME_BMC_PASSWORD",
                        "SOME_UNRELATED_TOKEN", "IRKIT_HOME"}
    # what the command is documented to get is there, and only allow-listed variables besides
    assert {"IRKIT_HOST", "IRKIT_HOST_ADDRESS", "IRKIT_TENANT", "IRKIT_CASE", "PATH"} <= names
    assert names - {"IRKIT_HOST", "IRKIT_HOST_ADDRESS", "IRKIT_TENANT", "IRKIT_CASE", "IRKIT_IMAGE_URL",
                    "IRKIT_SECRET_ON_STDIN", "PWD", "SHLVL", "_"} <= set(childenv.ALLOWED)
    # the BMC password travels on stdin only
    assert stdin.read_text() == BMC_SECRET + "\n"


def test_f05_child_env_refuses_secrets_passed_explicitly(secret_env):
    from ir_toolkit.redaction import register_secret

    env = childenv.child_env({"IRKIT_HOST": "web01"}, python=True)
    assert "IRKIT_KEY_PASSPHRASE" not in env and env["IRKIT_HOST"] == "web01"
    with pytest.raises(childenv.UnsafeChildEnvironment):
        childenv.child_env({"IRKIT_KEY_PASSPHRASE": PASSPHRASE})
    register_secret(BMC_SECRET)
    with pytest.raises(childenv.UnsafeChildEnvironment):
        childenv.child_env({"IRKIT_IMAGE_URL": f"https://x/?k={BMC_SECRET}"})
    out = childenv.run(["sh", "-c", "env"], capture_output=True, text=True, python=True).stdout
    assert PASSPHRASE not in out and WITNESS not in out and BMC_SECRET not in out


def test_f05_no_module_starts_processes_except_through_childenv():
    """One helper for every process irkit starts: a new direct subprocess/posix_spawn call is a defect."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "childenv.py" and path.parent == PACKAGE:
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom)
                                                         and node.module else [])
                if any(n in ("subprocess", "pty", "multiprocessing") or n.startswith("multiprocessing.")
                       for n in names):
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} imports {names}")
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os" \
                    and (node.attr.startswith(("spawn", "exec", "posix_spawn", "popen", "system"))):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} os.{node.attr}")
    assert offenders == []


def test_f05_audit_scan_workers_get_an_allow_listed_environment(tmp_path, secret_env, monkeypatch):
    """The parallel audit-scan workers are our own Python, but they too start without the passphrase."""
    from ir_toolkit.audit import verify

    seen: list[dict] = []
    real = childenv.popen

    def spy(argv, **kwargs):
        seen.append(childenv.child_env(kwargs.get("env"), python=kwargs.get("python", False)))
        return real(argv, **kwargs)

    monkeypatch.setattr(childenv, "popen", spy)
    path = tmp_path / "log.jsonl"
    path.write_text("".join(f'{{"seq":{i}}}\n' for i in range(1, 200)))
    try:
        verify.scan_log(path, "F05-1", workers=2)
    except Exception:  # noqa: BLE001 - not a real log: only the workers' environment matters here
        pass
    assert len(seen) == 2
    assert all("IRKIT_KEY_PASSPHRASE" not in env and "IRKIT_WITNESS_PASSPHRASE" not in env for env in seen)
