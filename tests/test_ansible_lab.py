"""The ``ansible.playbook`` step on real lab hosts, through real ansible-runner and ansible-playbook.

The lab is this module's own (MSP ``ans``, 2 tenants x 2 hosts): the hardening changes sshd.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from containment_helpers import IRKIT, REPO, irkit, keyed_env, summary

pytestmark = [pytest.mark.lab, pytest.mark.slow]

SECRET = "Ans1ble-no_log-S3cret-7f3a9c"


@pytest.fixture(scope="module")
def ans(lab_factory):
    return lab_factory("ans")


@pytest.fixture(scope="module")
def env(ans):
    env = keyed_env(ans)
    env["IRKIT_TEST_NOLOG_SECRET"] = SECRET
    return env


def _playbook(tmp: Path, steps: list[dict], name: str = "ansible-test") -> Path:
    data = {
        "version": 1, "name": name,
        "defaults": {"timeout": 180, "retries": 0, "host_timeout": 900},
        "phases": [
            {"name": "access", "steps": [{"name": "responder key", "action": "responder.ensure_access"}]},
            {"name": "harden", "steps": steps},
        ],
    }
    path = tmp / f"{name}.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


HARDEN = {"name": "sshd hardening (Ansible)", "action": "ansible.playbook",
          "params": {"playbook": "sshd-hardening.yml", "sshd_facts": True},
          "evidence_override": "test of the Ansible step alone: no evidence phase here"}


HARDEN_TASK = "harden sshd (drop-in validated by sshd -t before the daemon reloads; rolled back if sshd rejects it)"
DROPIN = "/etc/ssh/sshd_config.d/10-irkit-hardening.conf"


def _irkit_with_pid(env: dict[str, str], *args: str, timeout: float = 900) -> tuple[subprocess.CompletedProcess, int]:
    proc = subprocess.Popen([IRKIT, *args], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), proc.pid


def _left_masters(pid: int) -> list[str]:
    """ssh ControlPersist masters of the Ansible jobs of the (ended) irkit process ``pid`` (process title
    ``ssh: /dev/shm/irkit-ansible-<irkit pid>-cp-.../<hash> [mux]``): irkit ends its own."""
    left = []
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or (entry / "comm").read_text().strip() != "ssh":
                continue
            title = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if title.startswith("ssh: ") and f"/irkit-ansible-{pid}-" in title:
            left.append(title)
    return left


def _records(ans, case: str) -> list[dict]:
    path = Path(ans.home) / "cases" / case / "audit" / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_hardening_through_ansible_runner(ans, env, tmp_path):
    hosts = [h["name"] for h in ans.info["hosts"]]
    pb = _playbook(tmp_path, [HARDEN])
    # ---- dry run: check mode with a diff, and nothing changes on the hosts
    dry = irkit(env, "contain", "--inventory", str(ans.inventory_path), "--playbook", str(pb), "--case", "ANS-1",
                "--dry-run", "--format", "json", check=0, timeout=600)
    plan = json.loads(dry.stdout)
    text = json.dumps(plan)
    assert "would change" in text and "10-irkit-hardening.conf" in text, dry.stdout[-2000:]
    for name in hosts:
        assert ans.exec(name, "test -e /etc/ssh/sshd_config.d/10-irkit-hardening.conf").returncode == 1
    # ---- the real run
    proc, pid = _irkit_with_pid(env, "contain", "--inventory", str(ans.inventory_path), "--playbook", str(pb),
                                "--case", "ANS-1", "--yes", "--format", "json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in hosts:
        conf = ans.exec(name, "cat /etc/ssh/sshd_config.d/10-irkit-hardening.conf").stdout.decode()
        assert "MaxAuthTries 3" in conf and "AllowUsers root mspadmin" in conf, conf
        assert "PermitRootLogin prohibit-password" in conf
        # the running daemon uses it (sshd -T on the host)
        eff = ans.exec(name, "/usr/sbin/sshd -T -C user=root,host=x,addr=198.19.0.1 2>/dev/null | "
                             "grep -Ei '^(maxauthtries|allowusers) '").stdout.decode().lower()
        assert "maxauthtries 3" in eff and "allowusers root" in eff, eff
    assert _left_masters(pid) == []  # irkit ended the ssh masters of its Ansible jobs
    records = _records(ans, "ANS-1")
    tasks = [r for r in records if r["action"] == "ansible.task"]
    for name in hosts:
        mine = [r for r in tasks if r["host"] == name]
        # one task, one module execution per host: write, sshd -t, SIGHUP (rolled back if rejected)
        assert [(r["params"]["task"], r["params"]["module"], r["params"]["changed"], r["outcome"]) for r in mine] == [
            (HARDEN_TASK, "irkit_sshd_dropin", True, "ok")], mine
        stats = [r for r in records if r["action"] == "ansible.stats" and r["host"] == name]
        assert stats and stats[0]["params"]["failed"] == 0
    assert irkit(env, "audit", "verify", "--case", "ANS-1").returncode == 0
    # ---- a second run changes nothing (idempotent content; verify already ran check mode)
    again = irkit(env, "contain", "--inventory", str(ans.inventory_path), "--playbook", str(pb), "--case", "ANS-2",
                  "--yes", "--format", "json", timeout=900)
    assert again.returncode == 0, again.stdout[-2000:]
    changed = [r for r in _records(ans, "ANS-2") if r["action"] == "ansible.task" and r["params"]["changed"]]
    assert changed == []


def test_failed_task_fails_the_host_and_counts(ans, env, tmp_path):
    """A host where an Ansible task fails is failed for irkit (summary, max-fail); the others go on."""
    hosts = [h["name"] for h in ans.info["hosts"]]
    victim = hosts[0]
    project = tmp_path / "content"
    project.mkdir()
    (project / "fail-one.yml").write_text(yaml.safe_dump([{
        "name": "fails on one host", "hosts": "all", "gather_facts": False,
        "tasks": [
            {"name": "marker", "ansible.builtin.command": "true", "changed_when": False},
            {"name": "break here", "ansible.builtin.command": "false", "when": f"inventory_hostname == '{victim}'"},
        ]}]))
    step = {"name": "content that fails on one host", "action": "ansible.playbook",
            "params": {"playbook": str(project / "fail-one.yml"), "verify": "none"},
            "evidence_override": "test"}
    pb = _playbook(tmp_path, [step], name="ansible-fail")
    proc = irkit(env, "contain", "--inventory", str(ans.inventory_path), "--playbook", str(pb), "--case", "ANS-3",
                 "--yes", "--format", "json", timeout=900)
    assert proc.returncode != 0
    result = summary(proc)
    status = result["hosts"]
    assert status[victim]["status"] == "failed", status
    assert "break here" in status[victim]["message"]
    for name in hosts[1:]:
        assert status[name]["status"] == "ok", status[name]
    # ... and in max-fail: with max_fail_percentage 0 the failed Ansible host stops the run before the next phase
    data = yaml.safe_load(pb.read_text())
    data["phases"][1]["max_fail_percentage"] = 0
    data["phases"].append({"name": "after", "steps": [
        {"name": "marker", "action": "command.run", "params": {"command": "touch /var/tmp/after-ansible"}}]})
    pb.write_text(yaml.safe_dump(data, sort_keys=False))
    proc = irkit(env, "contain", "--inventory", str(ans.inventory_path), "--playbook", str(pb), "--case", "ANS-5",
                 "--yes", "--format", "json", timeout=900)
    result = summary(proc)
    assert proc.returncode != 0 and "max_fail_percentage" in result["reason"], result
    assert any(r["action"] == "run.stopped" for r in _records(ans, "ANS-5"))
    for name in hosts:
        assert ans.exec(name, "test -e /var/tmp/after-ansible").returncode == 1, name


def test_no_log_secret_appears_nowhere(ans, env, tmp_path):
    """A ``no_log: true`` task's secret is in no audit record, run log, or file under the case directory."""
    project = tmp_path / "content"
    project.mkdir(exist_ok=True)
    (project / "nolog.yml").write_text(yaml.safe_dump([{
        "name": "uses a secret", "hosts": "all", "gather_facts": False,
        "tasks": [
            {"name": "write the secret on the host", "no_log": True,
             "ansible.builtin.copy": {"content": "{{ app_secret }}\n", "dest": "/root/.irkit-ansible-secret",
                                      "mode": "0600"}},
            {"name": "echo the secret", "no_log": True, "ansible.builtin.command": "echo {{ app_secret }}",
             "changed_when": False},
        ]}]))
    step = {"name": "content with a secret", "action": "ansible.playbook",
            "params": {"playbook": str(project / "nolog.yml"), "secret_vars": {"app_secret": "env:IRKIT_TEST_NOLOG_SECRET"}},
            "evidence_override": "test"}
    pb = _playbook(tmp_path, [step], name="ansible-nolog")
    shm_before = set(Path("/dev/shm").glob("irkit-ansible-*"))
    proc = irkit(env, "contain", "--inventory", str(ans.inventory_path), "--playbook", str(pb), "--case", "ANS-4",
                 "--yes", "--format", "json", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    host = ans.info["hosts"][0]["name"]
    assert ans.exec(host, "cat /root/.irkit-ansible-secret").stdout.decode().strip() == SECRET  # it did run
    assert SECRET not in proc.stdout and SECRET not in proc.stderr
    case = Path(ans.home) / "cases" / "ANS-4"
    leaks = []
    for root, _dirs, files in os.walk(case):
        for f in files:
            p = Path(root, f)
            try:
                if SECRET.encode() in p.read_bytes():
                    leaks.append(str(p))
            except OSError:
                pass
    assert leaks == [], leaks
    records = [r for r in _records(ans, "ANS-4") if r["action"] == "ansible.task"]
    assert records and all(r["params"]["no_log"] for r in records if "secret" in r["params"]["task"])
    # nothing of the job is left in the worker's memory directory either (directories of irkit processes
    # still running - other runs on this machine - are theirs: irkit-ansible-<pid>-*)
    def alive(path: Path) -> bool:
        pid = path.name.split("-")[2]
        return pid.isdigit() and Path("/proc", pid).exists()

    assert not {p for p in set(Path("/dev/shm").glob("irkit-ansible-*")) - shm_before if not alive(p)}


def test_hardening_rolled_back_when_sshd_rejects_it_and_never_writes_through_a_symlink(ans, env, tmp_path):
    """The shipped content where the daemon's own ``sshd -t`` rejects the new drop-in (here: content
    values sshd refuses): on every host the previous drop-in is put back byte for byte and mode for mode
    (or the new one removed), no temporary file is left, the host fails with sshd's reason; a drop-in that
    is a symlink to another file is never written through. Afterwards a check-mode run (``--dry-run``)
    shows the diff and changes nothing on any host."""
    hosts = [h["name"] for h in ans.info["hosts"]]
    restored, linked = hosts[0], hosts[1]
    old = b"# an older hardening of the host's own\nMaxAuthTries 6\n"
    ans.exec(restored, f"cat > {DROPIN}; chmod 0600 {DROPIN}", stdin=old)
    ans.exec(linked, f"echo '# keep-me' > /root/link-target; rm -f {DROPIN}; ln -s /root/link-target {DROPIN}")
    before = {name: ans.exec(name, f"cat {DROPIN}").stdout for name in hosts}
    rejected = {**HARDEN, "params": {**HARDEN["params"], "extra_vars": {"max_auth_tries": "three"}}}
    pb = _playbook(tmp_path, [rejected], name="ansible-rejected")
    try:
        proc = irkit(env, "contain", "--inventory", str(ans.inventory_path), "--playbook", str(pb), "--case", "ANS-6",
                     "--yes", "--format", "json", timeout=900)
        assert proc.returncode != 0, proc.stdout[-2000:]
        status = summary(proc)["hosts"]
        for name in hosts:
            assert status[name]["status"] == "failed", status
            message = status[name]["message"]
            assert "sshd rejected the hardening settings" in message and "sshd not reloaded" in message, message
            assert "MaxAuthTries" in message or "three" in message, message  # sshd's own reason
        assert ans.exec(restored, f"cat {DROPIN}").stdout == old
        assert ans.exec(restored, f"stat -c %a {DROPIN}").stdout.decode().strip() == "600"
        assert "previous drop-in restored" in status[restored]["message"]
        assert ans.exec(linked, "cat /root/link-target").stdout == b"# keep-me\n"
        assert ans.exec(linked, f"test -e {DROPIN} || test -L {DROPIN}").returncode == 1
        assert "drop-in removed" in status[linked]["message"]
        for name in hosts:
            assert ans.exec(name, "ls -A /etc/ssh/sshd_config.d | grep -v '^10-irkit-hardening.conf$'").stdout == b""
            if name != linked:
                assert ans.exec(name, f"cat {DROPIN}").stdout == before[name], name
        records = [r for r in _records(ans, "ANS-6") if r["action"] == "ansible.task" and r["host"] == restored]
        assert [(r["params"]["module"], r["outcome"]) for r in records] == [("irkit_sshd_dropin", "failed")], records
        assert "sshd rejected" in records[0]["params"]["message"]
    finally:
        ans.exec(linked, "rm -f /root/link-target")
    # check mode with the shipped values: the diff of the host with the older drop-in, nothing changed anywhere
    pb = _playbook(tmp_path, [HARDEN], name="ansible-check")
    state = {name: ans.exec(name, f"ls -lA --time-style=+%s.%N /etc/ssh/sshd_config.d; cat {DROPIN}").stdout
             for name in hosts}
    dry = irkit(env, "contain", "--inventory", str(ans.inventory_path), "--playbook", str(pb), "--case", "ANS-7",
                "--dry-run", "--format", "json", check=0, timeout=600)
    text = json.dumps(json.loads(dry.stdout))
    assert "would change" in text and "MaxAuthTries 6" in text and "MaxAuthTries 3" in text, dry.stdout[-3000:]
    assert {name: ans.exec(name, f"ls -lA --time-style=+%s.%N /etc/ssh/sshd_config.d; cat {DROPIN}").stdout
            for name in hosts} == state
