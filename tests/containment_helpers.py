"""Helpers for the containment, rotation and isolation lab tests (no tests here)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
IRKIT = str(Path(sys.executable).with_name("irkit"))
PASSPHRASE = "containment-test-passphrase"


def keyed_env(lab: Any) -> dict[str, str]:
    """Environment for `irkit` in the lab's IRKIT_HOME, with responder keys made once."""
    env = {**os.environ, "IRKIT_HOME": str(lab.home), "IRKIT_KEY_PASSPHRASE": PASSPHRASE,
           "IRKIT_INSECURE_TEST_SCRYPT_LOG2N": "10"}
    env.pop("IRKIT_INVENTORY", None)
    if not (Path(lab.home) / "keys" / "escrow.key").exists():
        irkit(env, "keys", "init", check=0)
    return env


def irkit(env: dict[str, str], *args: str, check: int | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([IRKIT, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if check is not None:
        assert proc.returncode == check, f"irkit {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@contextlib.contextmanager
def home(env: dict[str, str]):
    """Run in-process code (escrow, keystore, audit readers) against the lab's IRKIT_HOME."""
    saved = {k: os.environ.get(k) for k in ("IRKIT_HOME", "IRKIT_KEY_PASSPHRASE", "IRKIT_INSECURE_TEST_SCRYPT_LOG2N")}
    for key in saved:
        os.environ[key] = env[key]
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def contain_playbook(lab: Any, dest: Path, *, phases: list[str] | None = None) -> Path:
    """The shipped containment playbook with the lab's leaked credentials as the proofs (the MSP private
    key must fail, the old password must fail). When ``phases`` leaves out the ``preserve`` phase, the
    destructive steps carry an evidence override (a test of one phase needs no evidence)."""
    data = yaml.safe_load((REPO / "playbooks/msp-breach-containment.yml").read_text())
    lab_ref = f"${{IRKIT_HOME}}/lab/{lab.msp}"
    override = phases is not None and "preserve" not in phases
    for phase in data["phases"]:
        for step in phase["steps"]:
            if override and step["action"] in ("host.isolate", "ssh_keys.revoke", "accounts.rotate",
                                               "accounts.deprivilege", "ansible.playbook"):
                step["evidence_override"] = "test of single phases: no evidence phase in this playbook"
            if step["action"] == "ssh_keys.revoke":
                step["params"] = {"probe_keys": [f"file:{lab_ref}/msp_shared_ed25519"]}
            if step["action"] == "accounts.rotate":
                step["params"] = {"old_password": f"file:{lab_ref}/msp_shared_password"}
    if phases is not None:
        data["phases"] = [p for p in data["phases"] if p["name"] in phases]
    dest.write_text(yaml.safe_dump(data, sort_keys=False))
    return dest


def endpoint(lab: Any, host: dict[str, Any], user: str):
    from ir_toolkit.transports.ssh import Endpoint

    return Endpoint(host["address"], int(host["port"]), user, {host["host_key_fingerprint"]}, host["name"])


def key_login(lab: Any, host: dict[str, Any], user: str, key_path: str | Path) -> bool:
    from ir_toolkit.transports.ssh import load_private_key, probe_login

    return probe_login(endpoint(lab, host, user), pkey=load_private_key(Path(key_path)))


def case_key_login(lab: Any, host: dict[str, Any], user: str, env: dict[str, str], case: str) -> bool:
    """A login with the case's responder key of the host's tenant (encrypted at rest: the passphrase is
    derived from the keys passphrase, as irkit does)."""
    from ir_toolkit.secrets.keyprovider import derive_case_key_passphrase
    from ir_toolkit.transports.ssh import load_private_key, probe_login

    path = Path(env["IRKIT_HOME"]) / "cases" / case / "keys" / f"responder_{host['tenant']}_ed25519"
    pkey = load_private_key(path, derive_case_key_passphrase(env["IRKIT_KEY_PASSPHRASE"], case))
    return probe_login(endpoint(lab, host, user), pkey=pkey)


def password_login(lab: Any, host: dict[str, Any], user: str, password: str) -> bool:
    from ir_toolkit.transports.ssh import probe_login

    return probe_login(endpoint(lab, host, user), password=password)


def tcp_reach(lab: Any, source: str, targets: list[dict[str, Any]], port: int = 22) -> dict[str, bool]:
    """From lab host ``source`` (out of band), can a new TCP connection reach each target? (in parallel)"""
    script = "".join(
        f"( timeout 2 bash -c 'echo > /dev/tcp/{t['address']}/{port}' 2>/dev/null && echo '{t['name']} REACHED' "
        f"|| echo '{t['name']} BLOCKED' ) &\n" for t in targets) + "wait\n"
    out = lab.exec(source, script).stdout.decode()
    result = {}
    for line in out.splitlines():
        name, _, verdict = line.partition(" ")
        result[name] = verdict == "REACHED"
    assert set(result) == {t["name"] for t in targets}, out
    return result


def summary(proc: subprocess.CompletedProcess) -> dict[str, Any]:
    return json.loads(proc.stdout)


def escrow_get(env: dict[str, str], case: str, host: str, account: str = "mspadmin") -> str:
    proc = irkit(env, "escrow", "get", "--case", case, "--host", host, "--account", account, check=0)
    return proc.stdout.rstrip("\n")
