"""`irkit contain` on a real-sshd lab: the issue's "Done when" checks, end to end.

The lab is this module's own (MSP ``ctn``, 2 tenants x 2 hosts in 198.19.x): containment
isolates hosts and rotates passwords, which other tests sharing the session lab must not see.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from containment_helpers import (
    case_key_login,
    contain_playbook,
    escrow_get,
    home,
    irkit,
    key_login,
    keyed_env,
    password_login,
    summary,
    tcp_reach,
)

pytestmark = pytest.mark.lab

CASE = "CTN-1"


@pytest.fixture(scope="module")
def ctn(lab_factory):
    return lab_factory("ctn")


@pytest.fixture(scope="module")
def env(ctn):
    return keyed_env(ctn)


def _mspadmin_sleepers(ctn, name: str) -> str:
    out = ctn.exec(name, "ps -o pid=,args= -u mspadmin").stdout.decode()
    return "\n".join(line for line in out.splitlines() if "sleep 600" in line)


def test_contain_end_to_end(ctn, env, tmp_path):
    info = ctn.info
    hosts = info["hosts"]
    names = [h["name"] for h in hosts]
    msp_key, old_password = info["msp_private_key"], info["msp_shared_password"]
    # ---- baseline: the breach is real (the MSP key and the shared password log in; hosts reach each other)
    assert key_login(ctn, hosts[0], "root", msp_key)
    assert password_login(ctn, hosts[0], "mspadmin", old_password)
    assert all(tcp_reach(ctn, hosts[-1]["name"], hosts[:-1]).values())
    for name in names:  # an attacker session of the shared account, to be ended
        ctn.exec(name, "setsid runuser -u mspadmin -- sleep 600 </dev/null >/dev/null 2>&1 & "
                       "for i in 1 2 3 4 5 6 7 8 9 10; do ps -u mspadmin -o args= | grep -q 'sleep 600' && break; "
                       "sleep 0.1; done")
        assert _mspadmin_sleepers(ctn, name)

    # watch every host's process list (full command lines) for the whole run
    for name in names:
        ctn.exec(name, "setsid sh -c 'while :; do ps -eww -o args; sleep 0.01; done' "
                       ">/var/tmp/ps-watch.log 2>&1 </dev/null & echo $! > /var/tmp/ps-watch.pid")
    playbook = contain_playbook(ctn, tmp_path / "contain.yml")
    proc = irkit(env, "contain", "--inventory", str(ctn.inventory_path), "--playbook", str(playbook),
                 "--case", CASE, "--yes", "--format", "json", check=0, timeout=900)
    for name in names:
        ctn.exec(name, 'kill "$(cat /var/tmp/ps-watch.pid)"')
    result = summary(proc)
    assert result["ok"] is True, result
    # access, volatile snapshot, isolation, full evidence (isolated), revocation, rotation, sshd hardening
    # (Ansible): seven changes per host
    assert all(h["status"] == "ok" and h["changed"] == 7 for h in result["hosts"].values()), result
    assert result["figures"]["isolation"]["complete"] and result["figures"]["containment"]["complete"], result

    fp_hex = hashlib.sha256(__import__("base64").b64decode(info["msp_public_key"].split()[1])).hexdigest()
    blob = info["msp_public_key"].split()[1]
    new_passwords = {}
    for host in hosts:
        name = host["name"]
        # the MSP key logs in nowhere, as no user, and sits in the host's KRL that sshd uses
        assert not key_login(ctn, host, "root", msp_key), name
        assert not key_login(ctn, host, "mspadmin", msp_key), name
        krl = ctn.exec(name, "ssh-keygen -Q -l -f /etc/ssh/irkit-revoked-keys.krl").stdout.decode()
        assert f"hash: SHA256:{fp_hex}" in krl, (name, krl)
        assert "revokedkeys /etc/ssh/irkit-revoked-keys.krl" in ctn.exec(name, "sshd -T").stdout.decode().lower()
        leftover = ctn.exec(name, f"grep -rl -- '{blob}' /root /home /etc/ssh 2>/dev/null; true").stdout.decode()
        assert leftover.strip() == "", (name, leftover)
        # the old shared password works nowhere; the new one is escrowed, verified and logs in
        assert not password_login(ctn, host, "mspadmin", old_password), name
        new = escrow_get(env, CASE, name)
        assert len(new) == 24 and new != old_password
        assert password_login(ctn, host, "mspadmin", new), name
        new_passwords[name] = new
        # the password never appeared in a process list on the host (it travels on stdin and in SSH)
        watched = ctn.exec(name, "cat /var/tmp/ps-watch.log").stdout.decode()
        assert watched.count("\n") > 50 and any(w in watched for w in ("chpasswd", "perl -e", "getent shadow")), \
            "the process watcher did not see the rotation"
        assert new not in watched and old_password not in watched
        # the attacker's session of the shared account is gone
        assert _mspadmin_sleepers(ctn, name) == "", name
        # irkit can still get in: the inventory's responder key and the case's own key
        assert key_login(ctn, host, "root", info["responder_private_key"]), name
        assert case_key_login(ctn, host, "root", env, CASE)
    assert len(set(new_passwords.values())) == len(hosts), "every host has its own password"

    listing = irkit(env, "escrow", "list", "--case", CASE, "--format", "json", check=0).stdout
    assert {r["state"] for r in json.loads(listing)} == {"verified"}
    # no secret in the audit log, the run logs, the plans or the escrow listing
    case_dir = Path(env["IRKIT_HOME"]) / "cases" / CASE
    for path in [*case_dir.rglob("*.jsonl"), *case_dir.rglob("*.json"), *(case_dir / "audit").rglob("*")]:
        if path.is_file() and "escrow" not in path.parts:
            text = path.read_text(errors="replace")
            for secret in [old_password, *new_passwords.values()]:
                assert secret not in text, f"secret in {path}"
    assert all(secret not in listing for secret in new_passwords.values())
    assert irkit(env, "audit", "verify", "--case", CASE).returncode == 0
    # run logs at the default level stay within their budget (docs/performance.md: 16 KiB per host and
    # run; the per-path triage records live in each bundle's own collection log, not here)
    run_log = sum(p.stat().st_size for p in (case_dir / "logs").glob("*.jsonl"))
    assert run_log <= 16 * 1024 * len(hosts), f"run log {run_log} bytes for {len(hosts)} hosts"

    # ---- a second run changes nothing and says so (same case: irkit can still log in everywhere)
    again = irkit(env, "contain", "--inventory", str(ctn.inventory_path), "--playbook", str(playbook),
                  "--case", CASE, "--yes", check=0, timeout=900)
    assert "nothing changed" in again.stdout, again.stdout
    for host in hosts:
        assert escrow_get(env, CASE, host["name"]) == new_passwords[host["name"]]

    # ---- every host is cut off from the other lab hosts but reachable by the controller.
    # All hosts are isolated, so a probe from another host would also be stopped by the prober's own
    # table: release one prober at a time, probe, and isolate it again.
    for prober, targets in ((hosts[-1], hosts[:-1]), (hosts[0], hosts[-1:])):
        irkit(env, "isolate", "--inventory", str(ctn.inventory_path), "--case", CASE, "--host", prober["name"],
              "--release", "--yes", check=0)
        reach = tcp_reach(ctn, prober["name"], targets)
        assert not any(reach.values()), reach
        for target in targets:
            assert key_login(ctn, target, "root", info["responder_private_key"])
        irkit(env, "isolate", "--inventory", str(ctn.inventory_path), "--case", CASE, "--host", prober["name"],
              "--evidence-override", "test: re-isolating the prober", "--yes", check=0)
    assert irkit(env, "audit", "verify", "--case", CASE).returncode == 0

    # ---- and a third contain run still changes nothing: the end state holds
    again = irkit(env, "contain", "--inventory", str(ctn.inventory_path), "--playbook", str(playbook),
                  "--case", CASE, "--yes", check=0, timeout=900)
    assert "nothing changed" in again.stdout, again.stdout
    records = _records(env, CASE)
    actions = {r["action"] for r in records}
    assert {"responder.key_installed", "host.isolated", "ssh_keys.revoked", "credential.escrowed",
            "credential.rotated", "sessions.ended", "host.released"} <= actions


def _records(env, case):
    from ir_toolkit.audit.log import iter_records

    with home(env):
        return list(iter_records(case))


def test_revoking_the_responder_key_is_refused(ctn, env, tmp_path):
    """A shared-key list that names irkit's own responder key must not lock the responders out."""
    import yaml

    inv = yaml.safe_load(Path(ctn.inventory_path).read_text())
    responder_pub = Path(ctn.info["responder_private_key"] + ".pub").read_text().strip()
    inv["msp"]["shared_credentials"]["ssh_keys"].append({"name": "oops", "public_key": responder_pub})
    bad_inventory = tmp_path / "inventory.yml"
    bad_inventory.write_text(yaml.safe_dump(inv))
    playbook = contain_playbook(ctn, tmp_path / "revoke.yml", phases=["revoke"])
    proc = irkit(env, "contain", "--inventory", str(bad_inventory), "--playbook", str(playbook),
                 "--case", "CTN-REFUSE", "--yes", "--format", "json")
    assert proc.returncode == 1
    result = summary(proc)
    for host in ctn.info["hosts"]:
        assert result["hosts"][host["name"]]["status"] == "failed"
        assert "irkit's own responder key" in result["hosts"][host["name"]]["message"]
        assert key_login(ctn, host, "root", ctn.info["responder_private_key"])


@pytest.fixture(scope="module")
def rvk(lab_factory):
    return lab_factory("rvk", tenants=1, hosts_per_tenant=2)


def test_revoke_finds_keys_wherever_sshd_reads_them(rvk, tmp_path):
    """A Match-block AuthorizedKeysFile, authorized_keys2, options and other comments; an existing
    RevokedKeys list is converted and kept; a copy planted again afterwards is dead (the KRL)."""
    env = keyed_env(rvk)
    a, b = rvk.info["hosts"]
    keytype, blob = rvk.info["msp_public_key"].split()[:2]
    msp_key = rvk.info["msp_private_key"]
    # host A: mspadmin's keys come only from a Match block's file; root also has a copy in authorized_keys2
    rvk.exec(a["name"], f"""set -e
mkdir -p /etc/ssh/authorized
printf 'from="198.19.0.0/16,*",no-pty,command="echo \\\\"hi there\\\\"" {keytype} {blob} planted copy\\n' > /etc/ssh/authorized/mspadmin
rm -f /home/mspadmin/.ssh/authorized_keys
printf 'command="/bin/true" {keytype} {blob} another-comment\\n' >> /root/.ssh/authorized_keys2
printf 'Match User mspadmin\\n    AuthorizedKeysFile /etc/ssh/authorized/%%u\\n' >> /etc/ssh/sshd_config
sshd -t && kill -HUP "$(cat /run/sshd.pid)"; sleep 0.5""")
    assert key_login(rvk, a, "mspadmin", msp_key), "baseline: the Match-block file is what sshd reads"
    # host B: sshd already uses a plain RevokedKeys list with some other key in it
    (tmp_path / "k").unlink(missing_ok=True)
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    other_pub = (tmp_path / "k.pub").read_text().strip()
    rvk.exec(b["name"], f"""set -e
echo '{other_pub}' > /etc/ssh/old_revoked
sed -i '1i RevokedKeys /etc/ssh/old_revoked' /etc/ssh/sshd_config
sshd -t && kill -HUP "$(cat /run/sshd.pid)"; sleep 0.5""")
    config_b = rvk.exec(b["name"], "cat /etc/ssh/sshd_config").stdout
    assert key_login(rvk, b, "root", msp_key)

    playbook = contain_playbook(rvk, tmp_path / "revoke.yml", phases=["access", "revoke"])
    proc = irkit(env, "contain", "--inventory", str(rvk.inventory_path), "--playbook", str(playbook),
                 "--case", "RVK-1", "--yes", "--format", "json", check=0)
    assert summary(proc)["ok"] is True
    for host in (a, b):
        for user in ("root", "mspadmin"):
            assert not key_login(rvk, host, user, msp_key), (host["name"], user)
        leftover = rvk.exec(host["name"], f"grep -rl -- '{blob}' /root /home /etc/ssh 2>/dev/null; true").stdout
        assert leftover.strip() == b"", leftover
        assert key_login(rvk, host, "root", rvk.info["responder_private_key"])
    # the Match-block file and authorized_keys2 kept their other content rules (only the key lines went)
    assert rvk.exec(a["name"], "cat /etc/ssh/authorized/mspadmin").stdout == b""
    # B: sshd config untouched; its RevokedKeys list became a KRL revoking both keys
    assert rvk.exec(b["name"], "cat /etc/ssh/sshd_config").stdout == config_b
    krl = rvk.exec(b["name"], "ssh-keygen -Q -l -f /etc/ssh/old_revoked").stdout.decode()
    assert krl.count("hash: SHA256:") == 2, krl
    # an attacker plants the key again: the KRL still refuses it
    for host in (a, b):
        rvk.exec(host["name"], f"echo '{keytype} {blob} replanted' >> /root/.ssh/authorized_keys")
        assert not key_login(rvk, host, "root", msp_key), host["name"]
