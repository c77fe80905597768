"""The reimage provider interface, the registry and CommandProvider with real local scripts."""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path

import pytest

from ir_toolkit.reimage import (
    CommandProvider,
    RedfishProvider,
    ReimageOptions,
    ReimageProvider,
    ReimageStatus,
    get_provider,
    provider_for,
    provider_names,
    register_provider,
    run_to_completion,
)
from ir_toolkit.errors import EXIT_FAILED, EXIT_USAGE, InputError, VerificationFailed
from ir_toolkit.inventory.model import Bmc, Host, Tenant

SECRET = "Maas-api-key-5c1d9e77b2"


def host_with(bmc: Bmc | None, name: str = "initech-app01") -> Host:
    return Tenant(name="initech", hosts=[Host(name=name, address="198.18.2.10", bmc=bmc)]).hosts[0]


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "maas.key"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    return path


def run(provider: ReimageProvider, host: Host) -> object:
    return run_to_completion(provider, host, interval=0.02)


# ------------------------------------------------------------------------ CommandProvider

def test_command_exit_zero_gets_host_argument_and_secret_on_stdin(tmp_path, secret_file) -> None:
    out = tmp_path / "seen"
    cmd = script(tmp_path, "reimage.sh", f"""\
        printf '%s\\n' "$@" > {out}.argv
        cat > {out}.stdin
        echo "$IRKIT_HOST $IRKIT_HOST_ADDRESS $IRKIT_TENANT $IRKIT_CASE $IRKIT_SECRET_ON_STDIN" > {out}.env
        echo "deploying $1"
        """)
    host = host_with(Bmc(provider="command", command=[str(cmd), "--release"], password=f"file:{secret_file}"))
    provider = provider_for(host, ReimageOptions(case_id="IR-2026-001"))
    assert isinstance(provider, CommandProvider)
    result = run(provider, host)

    assert result.status is ReimageStatus.DONE, result.message
    assert result.message == "initech-app01: reimage command succeeded"
    assert Path(f"{out}.argv").read_text().splitlines() == ["--release", "initech-app01"]  # host appended
    assert Path(f"{out}.stdin").read_text() == SECRET + "\n"
    assert Path(f"{out}.env").read_text().split() == ["initech-app01", "198.18.2.10", "initech", "IR-2026-001", "1"]
    assert result.facts["returncode"] == 0
    assert result.facts["stdout_last_line"] == "deploying --release"
    record = json.dumps(result.to_record())
    assert SECRET not in record  # not in argv, facts, steps
    assert result.facts["argv"] == [str(cmd), "--release", "initech-app01"]
    assert result.error() is None


def test_command_placeholders_replace_instead_of_append(tmp_path) -> None:
    out = tmp_path / "argv"
    cmd = script(tmp_path, "foreman.sh", f"""printf '%s\\n' "$@" > {out}\n""")
    host = host_with(Bmc(provider="command",
                         command=[str(cmd), "host", "rebuild", "--name={host}", "--ip", "{address}",
                                  "--org", "{tenant}", "--image", "{image}"]))
    result = run(provider_for(host, ReimageOptions(image_url="http://127.0.0.1/i.iso")), host)
    assert result.status is ReimageStatus.DONE
    assert out.read_text().splitlines() == [
        "host", "rebuild", "--name=initech-app01", "--ip", "198.18.2.10", "--org", "initech",
        "--image", "http://127.0.0.1/i.iso",
    ]
    assert result.facts["secret_on_stdin"] is False


def test_command_nonzero_exit_fails_with_last_stderr_line(tmp_path) -> None:
    cmd = script(tmp_path, "maas.sh", """\
        echo "allocating..."
        echo "maas: warning: retrying" >&2
        echo "maas: error: machine initech-app01 not found" >&2
        exit 3
        """)
    host = host_with(Bmc(provider="command", command=[str(cmd)]))
    result = run(provider_for(host), host)
    assert result.status is ReimageStatus.FAILED and result.error_kind == "command_failed"
    assert result.message == (
        "initech-app01: reimage command exited with status 3: maas: error: machine initech-app01 not found"
    )
    assert result.facts["returncode"] == 3
    assert "maas: warning: retrying" in result.facts["stderr_tail"]
    err = result.error()
    assert isinstance(err, VerificationFailed) and err.exit_code == EXIT_FAILED
    assert result.to_record()["steps"][-1]["phase"] == "failed"


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_command_timeout_kills_the_whole_process_group(tmp_path) -> None:
    pidfile = tmp_path / "child.pid"
    cmd = script(tmp_path, "slow.sh", f"""\
        sleep 60 &
        echo $! > {pidfile}
        wait
        """)
    host = host_with(Bmc(provider="command", command=[str(cmd)]))
    started = time.monotonic()
    result = run(provider_for(host, ReimageOptions(command_timeout=0.5)), host)
    assert time.monotonic() - started < 10
    assert result.status is ReimageStatus.FAILED and result.error_kind == "deadline"
    assert result.message == "initech-app01: reimage command did not finish within 0.5s (killed)"
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the command's background child survived"


def test_command_cancel(tmp_path) -> None:
    cmd = script(tmp_path, "slow.sh", "exec sleep 60\n")
    host = host_with(Bmc(provider="command", command=[str(cmd)]))
    provider = provider_for(host)
    provider.start(host)
    assert provider.poll() is ReimageStatus.RUNNING
    pid = provider.result.facts["pid"]
    provider.cancel()
    assert provider.status is ReimageStatus.FAILED and provider.result.error_kind == "cancelled"
    assert not _alive(pid)
    provider.cancel()  # idempotent
    assert provider.poll() is ReimageStatus.FAILED


def test_command_config_errors(tmp_path, secret_file) -> None:
    host = host_with(Bmc(provider="command", command=["no-such-provisioner-xyz"]))
    result = run(provider_for(host), host)
    assert result.status is ReimageStatus.FAILED and result.error_kind == "config"
    assert "not found on PATH" in result.message and result.error().exit_code == EXIT_USAGE
    assert isinstance(result.error(), InputError)

    host = host_with(Bmc(provider="command"))
    result = run(provider_for(host), host)
    assert "bmc.command is required" in result.message

    # The secret itself in argv is refused (it would show in process lists).
    cmd = script(tmp_path, "ok.sh", "exit 0\n")
    host = host_with(Bmc(provider="command", command=[str(cmd), "--key", SECRET], password=f"file:{secret_file}"))
    result = run(provider_for(host), host)
    assert result.status is ReimageStatus.FAILED and "contains the secret itself" in result.message
    assert SECRET not in json.dumps(result.to_record())

    os.environ.pop("IRKIT_TEST_UNSET_SECRET", None)
    host = host_with(Bmc(provider="command", command=[str(cmd)], password="env:IRKIT_TEST_UNSET_SECRET"))
    result = run(provider_for(host), host)
    assert result.error_kind == "config" and "IRKIT_TEST_UNSET_SECRET is not set" in result.message


# ------------------------------------------------------------------------ registry and interface

def test_registry_and_selection() -> None:
    assert {"redfish", "command"} <= set(provider_names())
    assert isinstance(get_provider("redfish"), RedfishProvider)
    with pytest.raises(InputError, match="unknown reimage provider 'ipmi'"):
        get_provider("ipmi")
    with pytest.raises(InputError, match="has no bmc: section"):
        provider_for(host_with(None))
    import ir_toolkit.lab.reimage  # noqa: F401 - the lab part registers itself on import (the CLI imports it)

    assert get_provider("lab").name == "lab"
    with pytest.raises(ValueError, match="registered twice"):
        register_provider("command", RedfishProvider)


class _CountdownProvider(ReimageProvider):
    """A provider defined the way the lab part will define one: done after N polls."""

    name = "countdown-test"

    def start(self, host: Host) -> None:
        self._begin(host).step("start", "counting")
        self.left = 3

    def poll(self) -> ReimageStatus:
        if self.status is ReimageStatus.RUNNING:
            self.left -= 1
            if self.left == 0:
                self._done(f"{self.result.host}: counted down")
        return self.status

    def cancel(self) -> None:
        if self.status is ReimageStatus.RUNNING:
            self._fail("cancelled", "cancelled")


def test_custom_provider_plugs_in_and_run_to_completion() -> None:
    register_provider("countdown-test", _CountdownProvider)
    host = host_with(Bmc(provider="command", command=["true"]))
    provider = get_provider("countdown-test", ReimageOptions(poll_interval=0))
    sleeps: list[float] = []
    result = run_to_completion(provider, host, sleep=sleeps.append)
    assert result.status is ReimageStatus.DONE and len(sleeps) == 2
    assert [s.phase for s in result.steps] == ["start", "done"]
    record = result.to_record()
    assert record["provider"] == "countdown-test" and record["tenant"] == "initech"
    with pytest.raises(RuntimeError, match="one reimage"):
        provider.start(host)
