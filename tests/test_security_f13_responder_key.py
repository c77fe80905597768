"""Security review finding 13 on the lab: the per-case responder key is no longer "root everywhere".

The review: ``ensure_case_key`` wrote the key unencrypted, ``responder.ensure_access`` installed it on
every host of every tenant without ``from=`` or forwarding limits, and nothing ever removed it. Now the
key is per tenant, encrypted at rest, installed as
``from="<controller>,<allow_from>",no-agent-forwarding,no-port-forwarding,no-X11-forwarding``, and
``irkit case close`` removes it through the engine (audited), after which it logs in nowhere while the
MSP's responder key still does. The attacks: the key file read without the passphrase, tenant A's key
against tenant B's host, the key used from a compromised neighbour host, a port forward through it.
"""

from __future__ import annotations

import base64
import socket
import subprocess
from pathlib import Path

import paramiko
import pytest

from containment_helpers import case_key_login, contain_playbook, home, irkit, key_login, keyed_env, summary

pytestmark = pytest.mark.lab

CASE = "F13-1"


@pytest.fixture(scope="module")
def keylab(lab_factory):
    lab = lab_factory("f13", tenants=2, hosts_per_tenant=1)
    return lab, keyed_env(lab)


def _case_key(env, tenant: str) -> Path:
    return Path(env["IRKIT_HOME"]) / "cases" / CASE / "keys" / f"responder_{tenant}_ed25519"


def _pkey(env, tenant: str) -> paramiko.PKey:
    from ir_toolkit.secrets.keyprovider import derive_case_key_passphrase
    from ir_toolkit.transports.ssh import load_private_key

    return load_private_key(_case_key(env, tenant), derive_case_key_passphrase(env["IRKIT_KEY_PASSPHRASE"], CASE))


def test_f13_case_key_is_per_tenant_encrypted_restricted_and_removed_on_close(keylab, tmp_path):
    from ir_toolkit.transports.ssh import TransportError, load_private_key

    lab, env = keylab
    a, b = lab.info["hosts"]
    assert a["tenant"] != b["tenant"]
    playbook = contain_playbook(lab, tmp_path / "access.yml", phases=["access"])
    proc = irkit(env, "contain", "--inventory", str(lab.inventory_path), "--playbook", str(playbook),
                 "--case", CASE, "--yes", "--format", "json", check=0)
    assert summary(proc)["ok"] is True
    # ---- at rest: encrypted, one per tenant; the file alone opens nothing
    for tenant in (a["tenant"], b["tenant"]):
        path = _case_key(env, tenant)
        assert path.exists() and (path.stat().st_mode & 0o077) == 0
        with pytest.raises(TransportError):
            load_private_key(path)
    assert not (Path(env["IRKIT_HOME"]) / "cases" / CASE / "keys" / "responder_ed25519").exists()
    # ---- installed with from= and no forwarding
    controller = lab.info["controller_address"]
    line = next(ln for ln in lab.exec(a["name"], "cat /root/.ssh/authorized_keys").stdout.decode().splitlines()
                if f"irkit-responder-{CASE}" in ln)
    assert line.startswith(f'from="{controller}",no-agent-forwarding,no-port-forwarding,no-X11-forwarding ')
    assert case_key_login(lab, a, "root", env, CASE) and case_key_login(lab, b, "root", env, CASE)
    # ---- tenant a's key does not open tenant b's host
    from containment_helpers import endpoint
    from ir_toolkit.transports.ssh import probe_login

    assert not probe_login(endpoint(lab, b, "root"), pkey=_pkey(env, a["tenant"]))
    # ---- the key, stolen and used from a compromised neighbour (host b), is refused by a's sshd
    stolen = _pkey(env, a["tenant"])
    from cryptography.hazmat.primitives import serialization

    from ir_toolkit.secrets.keyprovider import derive_case_key_passphrase

    plain = serialization.load_ssh_private_key(
        _case_key(env, a["tenant"]).read_bytes(),
        derive_case_key_passphrase(env["IRKIT_KEY_PASSPHRASE"], CASE).encode()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    lab.exec(b["name"], "umask 077; cat > /tmp/stolen_key", stdin=plain)
    tried = lab.exec(b["name"], f"ssh -i /tmp/stolen_key -o BatchMode=yes -o StrictHostKeyChecking=no "
                                f"-o UserKnownHostsFile=/dev/null -o ConnectTimeout=5 root@{a['address']} echo in")
    assert tried.returncode != 0 and b"in" not in tried.stdout, tried
    # ---- from the controller it logs in, but cannot forward a port
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # a test client; irkit pins keys
    client.connect(a["address"], port=int(a["port"]), username="root", pkey=stolen, look_for_keys=False,
                   allow_agent=False, timeout=10)
    try:
        assert client.exec_command("echo in")[1].read() == b"in\n"
        with pytest.raises(paramiko.ChannelException):
            client.get_transport().open_channel("direct-tcpip", (b["address"], 22), ("127.0.0.1", 0), timeout=5)
    finally:
        client.close()

    # ---- case close: removed through the engine, recorded; the MSP's responder key keeps access
    proc = irkit(env, "case", "close", "--inventory", str(lab.inventory_path), "--case", CASE, "--yes",
                 "--format", "json", check=0)
    assert summary(proc)["ok"] is True
    for host in (a, b):
        assert not case_key_login(lab, host, "root", env, CASE), host["name"]
        assert key_login(lab, host, "root", lab.info["responder_private_key"]), host["name"]
        assert f"irkit-responder-{CASE}" not in lab.exec(host["name"], "cat /root/.ssh/authorized_keys").stdout.decode()
    from ir_toolkit.audit.log import iter_records

    with home(env):
        removed = [r for r in iter_records(CASE) if r["action"] == "responder.key_removed"]
    assert {r["host"] for r in removed} == {a["name"], b["name"]}
    again = irkit(env, "case", "close", "--inventory", str(lab.inventory_path), "--case", CASE, "--yes", check=0)
    assert "nothing changed" in again.stdout, again.stdout
    assert irkit(env, "audit", "verify", "--case", CASE).returncode == 0
