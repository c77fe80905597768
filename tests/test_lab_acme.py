"""`irkit lab up --msp acme` end to end: real sshd hosts, pinned keys, isolation, the seeded breach.

One acme lab per module (private IRKIT_HOME); the last test brings it down and
checks that nothing is left behind.
"""

from __future__ import annotations

import concurrent.futures as cf
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import paramiko
import pytest

from conftest import _lab_skip_reason, lab_leftovers, run_irkit

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[1]
ACME = REPO / "inventories" / "acme.yml"


@pytest.fixture(scope="module")
def acme(tmp_path_factory):
    reason = _lab_skip_reason()
    if reason:
        pytest.skip(reason)
    from ir_toolkit.lab.netns import conflicts

    busy = conflicts(ipaddress.ip_network("198.18.0.0/21"), own_bridge="")
    if busy:
        pytest.skip(f"acme's lab addresses are in use on this machine: {busy}")
    home = tmp_path_factory.mktemp("acme-home")
    proc = run_irkit(home, "lab", "up", "--inventory", str(ACME))
    try:
        assert proc.returncode == 0, proc.stderr
        assert "18 hosts up (18 started, 0 kept)" in proc.stdout
        info = json.loads(run_irkit(home, "lab", "info", "--msp", "acme", "--format", "json").stdout)
        yield {"home": home, "info": info}
    finally:
        run_irkit(home, "lab", "down", "--msp", "acme", "--purge")


def _hosts(acme):
    """The Linux (sshd) hosts; the Windows hosts are WinRS endpoints (tests/test_windows_lab.py)."""
    return [h for h in acme["info"]["hosts"] if h["os"] == "linux"]


def _windows(acme):
    return [h for h in acme["info"]["hosts"] if h["os"] == "windows"]


def _exec(acme, host: str, script: str, stdin: bytes | None = None, shell: str = "/bin/sh") -> subprocess.CompletedProcess:
    from ir_toolkit.lab import Lab

    lab = Lab("acme", acme["home"] / "lab" / "acme")
    return lab.exec(host, [shell, "-c", script], input=stdin, timeout=60)


def _ssh(info, address, *remote, key=None, user="root", extra=()):
    """OpenSSH client with the lab's pinned host keys (``extra`` options win: ssh keeps the first)."""
    return subprocess.run(
        ["ssh", *extra, "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={info['known_hosts']}",
         "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10", "-F", "/dev/null",
         "-i", key or info["responder_private_key"], f"{user}@{address}", *remote],
        capture_output=True, text=True, timeout=60,
    )


def test_info_names_keys_password_and_every_host(acme):
    info = acme["info"]
    for key in ("msp_private_key", "msp_shared_account", "msp_shared_password", "responder_private_key",
                "controller_address", "known_hosts", "hosts"):
        assert info[key], key
    assert info["controller_address"] == "198.18.0.1" and info["msp_shared_account"] == "mspadmin"
    for path in (info["msp_private_key"], info["responder_private_key"], info["msp_shared_password_file"]):
        assert Path(path).stat().st_mode & 0o777 == 0o600, path
    assert len(_hosts(acme)) == 14
    assert {h["tenant"] for h in _hosts(acme)} == {"globex", "initech", "umbrella", "vandelay"}
    for h in _hosts(acme):
        assert h["host_key_fingerprint"].startswith("SHA256:") and len(h["host_key_fingerprint"]) == 50
        assert h["running"] and h["pid"] and h["address"].startswith("198.18.")
    lines = [ln for ln in Path(info["known_hosts"]).read_text().splitlines() if not ln.startswith("#")]
    assert sorted(ln.split()[0] for ln in lines) == sorted(h["address"] for h in _hosts(acme))
    assert all(ln.split()[1] == "ssh-ed25519" for ln in lines)
    assert len({h["host_key_fingerprint"] for h in _hosts(acme)}) == 14  # own host key per host
    # the Windows hosts: one tenant all-Windows (wayne), one mixed (globex)
    win = _windows(acme)
    assert {h["tenant"] for h in win} == {"globex", "wayne"} and len(win) == 4
    for h in win:
        assert (h["winrm_port"], h["winrm_scheme"], h["running"]) == (5986, "https", True)
    assert Path(info["winrm_ca_file"]).is_file()
    assert info["windows_shared_account"] == "acmeadmin" and info["windows_shared_password"]


def test_responder_ssh_with_pinned_host_keys_works_on_every_host(acme, tmp_path):
    info = acme["info"]
    with cf.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda h: (h, _ssh(info, h["address"], "hostname; id -un")), _hosts(acme)))
    for h, proc in results:
        assert proc.returncode == 0, (h["name"], proc.stderr)
        assert proc.stdout.split() == [h["name"], "root"]
    # the pinning is real: without the lab's known_hosts, strict checking refuses the host
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    proc = _ssh({**info, "known_hosts": str(empty)}, _hosts(acme)[0]["address"], "true")
    assert proc.returncode == 255 and "Host key verification failed" in proc.stderr


def test_login_shell_is_fast_and_clean(acme):
    info = acme["info"]
    start = time.monotonic()
    proc = _ssh(info, _hosts(acme)[0]["address"], "bash -lic 'echo $HOME; ls -A ~; type pyenv 2>&1 || true'")
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - start < 10
    out = proc.stdout.split()
    assert out[0] == "/root"
    assert set(out[1:4]) <= {".bash_history", ".bashrc", ".profile", ".ssh"}
    assert "pyenv" not in proc.stdout.split("\n", 1)[1].replace("pyenv: not found", "")


def test_lab_exec_works_on_every_host_with_stdin_and_exit_code(acme, capfd, monkeypatch):
    from ir_toolkit.cli.main import main

    monkeypatch.setenv("IRKIT_HOME", str(acme["home"]))
    for h in _hosts(acme):  # in-process CLI (the command's output goes straight to fd 1)
        with pytest.raises(SystemExit) as exc:
            main(["lab", "exec", "--msp", "acme", h["name"], "--", "cat", "/etc/hostname"])
        out = capfd.readouterr()
        assert exc.value.code == 0 and out.out == h["name"] + "\n", (h["name"], out.err)
    env = {**os.environ, "IRKIT_HOME": str(acme["home"])}
    proc = subprocess.run([str(REPO / ".venv/bin/irkit"), "lab", "exec", "--msp", "acme", "globex-dc01", "--",
                           "sh", "-c", "tr a-z A-Z; echo err >&2; exit 7"],
                          env=env, input="hello\n", capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (7, "HELLO\n", "err\n")
    # no controller environment leaks into the host
    out = _exec(acme, "globex-dc01", "env").stdout.decode()
    assert "IRKIT_HOME" not in out and "VIRTUAL_ENV" not in out and "PYENV" not in out


def test_a_file_written_on_one_host_is_on_no_other_host_nor_the_controller(acme):
    token = uuid.uuid4().hex
    paths = [f"/tmp/iso-{token}", f"/etc/iso-{token}", f"/root/iso-{token}", f"/var/iso-{token}",
             f"/home/iso-{token}", f"/run/iso-{token}"]
    writer = "initech-app01"
    proc = _exec(acme, writer, " && ".join(f"echo {token} > {p}" for p in paths))
    assert proc.returncode == 0, proc.stderr
    check = "; ".join(f"test -e {p} && echo {p}" for p in paths) + "; true"
    assert _exec(acme, writer, check).stdout.decode().split() == paths
    for h in _hosts(acme):
        if h["name"] != writer:
            assert _exec(acme, h["name"], check).stdout == b"", h["name"]
    assert not any(os.path.exists(p) for p in paths)
    # /usr is the controller's, read-only
    proc = _exec(acme, writer, f"touch /usr/iso-{token}")
    assert proc.returncode != 0 and b"Read-only file system" in proc.stderr


def test_no_controller_secret_or_dotfile_is_visible_in_a_host(acme):
    script = r"""
        ls -A /root; echo ---; ls -A /home; echo ---;
        ls /etc/ssh; echo ---;
        for f in /etc/pip.conf /etc/npmrc /etc/gitconfig /root/.pyenv /root/.npmrc /root/.gitconfig \
                 /root/.cargo /root/.config /work /old_root /etc/ssh/ssh_host_rsa_key; do
            test -e "$f" && echo "LEAK $f"; done; echo ---;
        sha256sum /etc/ssh/ssh_host_ed25519_key | cut -d' ' -f1; echo ---;
        awk '{print $2}' /proc/self/mounts | sort | tr '\n' ' '; echo; echo ---;
        ps -e -o pid= | wc -l
    """
    out = _exec(acme, "umbrella-ehr01", script).stdout.decode().split("---")
    root_files, home, etc_ssh, leaks, host_key, mounts, nprocs = (part.split() for part in out)
    assert set(root_files) == {".bash_history", ".bashrc", ".profile", ".ssh"}
    assert home == ["mspadmin"]
    assert "ssh_host_ed25519_key" in etc_ssh and not any("rsa" in f or "ecdsa" in f for f in etc_ssh)
    assert leaks == []
    controller_key = Path("/etc/ssh/ssh_host_ed25519_key")
    if controller_key.exists():
        import hashlib

        assert host_key[0] != hashlib.sha256(controller_key.read_bytes()).hexdigest()
    assert set(mounts) == {"/", "/usr", "/proc", "/sys", "/dev/pts"}
    assert int(nprocs[0]) < 10  # init, sshd, implant, this shell: not the controller's processes


def test_msp_key_and_shared_password_log_in_on_every_host(acme):
    info = acme["info"]
    msp_key = paramiko.Ed25519Key.from_private_key_file(info["msp_private_key"])

    def login(address, user, **auth):
        client = paramiko.SSHClient()
        client.load_host_keys(info["known_hosts"])
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(address, username=user, look_for_keys=False, allow_agent=False, timeout=10,
                           banner_timeout=10, auth_timeout=10, **auth)
            _, out, _ = client.exec_command("id -un")
            return out.read().decode().strip()
        finally:
            client.close()

    def one(h):
        return (h["name"], login(h["address"], "mspadmin", pkey=msp_key),
                login(h["address"], "root", pkey=msp_key),
                login(h["address"], "mspadmin", password=info["msp_shared_password"]))

    with cf.ThreadPoolExecutor(8) as pool:
        for name, *users in pool.map(one, _hosts(acme)):
            assert users == ["mspadmin", "root", "mspadmin"], name
    with pytest.raises(paramiko.AuthenticationException):
        login(_hosts(acme)[0]["address"], "mspadmin", password=info["msp_shared_password"] + "x")
    # and with OpenSSH's client + sshpass (password in the environment, never argv)
    if not shutil.which("sshpass"):
        return
    proc = subprocess.run(
        ["sshpass", "-e", "ssh", "-F", "/dev/null", "-o", "StrictHostKeyChecking=yes",
         "-o", f"UserKnownHostsFile={info['known_hosts']}", "-o", "PubkeyAuthentication=no",
         f"mspadmin@{_hosts(acme)[-1]['address']}", "id -un"],
        env={**os.environ, "SSHPASS": info["msp_shared_password"]}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "mspadmin", proc.stderr


def test_every_host_carries_the_seeded_breach(acme):
    info = acme["info"]
    script = r"""
        grep -c '/tmp/.kworkerd' /var/spool/cron/crontabs/root
        grep -c 'ExecStart=/tmp/.kworkerd' /etc/systemd/system/kworker-sync.service
        readlink /etc/systemd/system/multi-user.target.wants/kworker-sync.service
        test -x /tmp/.kworkerd && echo dropper-executable
        grep -c 203.0.113.66 /root/.bash_history
        grep -c 'sudo su -' /home/mspadmin/.bash_history
        grep -c 'Accepted password for mspadmin from 203.0.113.66' /var/log/auth.log
        grep 'Accepted publickey for root from 203.0.113.66' /var/log/auth.log | awk '{print $NF}'
        grep -c '^mspadmin:\$6\$' /etc/shadow
        cat /home/mspadmin/.ssh/authorized_keys /root/.ssh/authorized_keys | awk '{print $2}' | sort | uniq -c | awk '{print $1}' | sort | tr '\n' ' '; echo
        ss -Htlnp 'sport = :4444' | grep -c '/tmp/.kworkerd'
    """
    msp_blob = info["msp_public_key"].split()[1]
    for h in _hosts(acme):
        out = _exec(acme, h["name"], script).stdout.decode().splitlines()
        assert out[:4] == ["1", "1", "/etc/systemd/system/kworker-sync.service", "dropper-executable"], h["name"]
        assert int(out[4]) >= 2 and out[5] == "1" and out[6] == "1", h["name"]
        assert out[7] == info["msp_key_fingerprint"], h["name"]
        assert out[8] == "1", h["name"]
        assert out[9].split() == ["1", "2"], h["name"]  # responder key once, MSP key in both files
        assert out[10] == "1", h["name"]
        keys = _exec(acme, h["name"], "cat /root/.ssh/authorized_keys").stdout.decode()
        assert msp_blob in keys
    # the implant answers on its port, from the controller
    with socket.create_connection((_hosts(acme)[0]["address"], info["implant_port"]), timeout=5) as conn:
        assert conn.recv(100).startswith(b"kworkerd")


def test_tenants_reach_each_other_and_the_controller(acme):
    globex = next(h for h in _hosts(acme) if h["tenant"] == "globex")
    initech = next(h for h in _hosts(acme) if h["tenant"] == "initech")
    out = _exec(acme, globex["name"], f"exec 3<>/dev/tcp/{initech['address']}/22; head -c 7 <&3", shell="/bin/bash").stdout
    assert out == b"SSH-2.0"
    received = []
    srv = socket.socket()
    srv.bind((acme["info"]["controller_address"], 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def accept():
        conn, peer = srv.accept()
        received.append((peer[0], conn.recv(100)))
        conn.close()

    t = threading.Thread(target=accept)
    t.start()
    proc = _exec(acme, initech["name"], f"exec 3<>/dev/tcp/{acme['info']['controller_address']}/{port}; echo hi >&3",
                 shell="/bin/bash")
    t.join(10)
    srv.close()
    assert proc.returncode == 0 and received == [(initech["address"], b"hi\n")]
    # hosts have no route beyond the lab network
    routes = _exec(acme, initech["name"], "ip -4 route").stdout.decode()
    assert "default" not in routes


def test_lab_exec_reaches_a_network_isolated_host(acme):
    if not shutil.which("nft"):
        pytest.skip("nftables is not installed")
    info = acme["info"]
    victim = _hosts(acme)[2]
    cut = ("nft add table inet irkit_test_iso && "
           "nft add chain inet irkit_test_iso in '{ type filter hook input priority 0; policy drop; }' && "
           "nft add chain inet irkit_test_iso out '{ type filter hook output priority 0; policy drop; }'")
    assert _exec(acme, victim["name"], cut).returncode == 0
    try:
        proc = _ssh(info, victim["address"], "true", extra=("-o", "ConnectTimeout=2"))
        assert proc.returncode == 255  # no network path any more
        assert _ssh(info, _hosts(acme)[3]["address"], "true").returncode == 0  # only that host is cut off
        out = _exec(acme, victim["name"], "hostname; nft list tables")
        assert out.returncode == 0 and out.stdout.decode().split() == [victim["name"], "table", "inet", "filter",
                                                                         "table", "inet", "irkit_test_iso"]
    finally:
        _exec(acme, victim["name"], "nft delete table inet irkit_test_iso")
    assert _ssh(info, victim["address"], "true").returncode == 0


def test_second_up_changes_nothing_and_status_is_healthy(acme):
    proc = run_irkit(acme["home"], "lab", "up", "--msp", "acme", "--inventory", str(ACME))
    assert proc.returncode == 0 and "already up: 18 hosts running; nothing changed" in proc.stdout
    info = json.loads(run_irkit(acme["home"], "lab", "info", "--msp", "acme", "--format", "json").stdout)
    assert [h["pid"] for h in info["hosts"]] == [h["pid"] for h in acme["info"]["hosts"]]
    assert [h["host_key_fingerprint"] for h in info["hosts"]] == [h["host_key_fingerprint"]
                                                                  for h in acme["info"]["hosts"]]
    proc = run_irkit(acme["home"], "lab", "status", "--msp", "acme", "--format", "json")
    status = json.loads(proc.stdout)
    assert proc.returncode == 0 and status["healthy"] and len(status["hosts"]) == 18
    linux = {h["name"] for h in _hosts(acme)}
    assert all(r["init"] == "alive" and r["sshd"] == "alive" and r["implant"] == ("alive" if r["name"] in linux
                                                                                  else "-")
               for r in status["hosts"])


def test_down_leaves_no_namespace_veth_mount_or_process(acme):
    info = acme["info"]
    lab_dir = Path(info["lab_dir"])
    pids = [h["pid"] for h in info["hosts"]]
    assert lab_leftovers(info["lab_id"], lab_dir)  # the check sees a running lab
    proc = run_irkit(acme["home"], "lab", "down", "--msp", "acme")
    assert proc.returncode == 0 and "down (18 hosts stopped" in proc.stdout, proc.stderr
    assert lab_leftovers(info["lab_id"], lab_dir) == []
    assert not any(os.path.exists(f"/proc/{pid}") and Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
                   for pid in pids)
    assert not os.path.exists(f"/run/irkit/labs/{info['lab_id']}.json")
    assert Path(info["responder_private_key"]).exists() and Path(info["known_hosts"]).exists()  # keys kept
    proc = run_irkit(acme["home"], "lab", "status", "--msp", "acme")
    assert proc.returncode == 1 and "not up" in proc.stdout
    proc = run_irkit(acme["home"], "lab", "down", "--msp", "acme", "--purge")
    assert proc.returncode == 0 and not lab_dir.exists()
