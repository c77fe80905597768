"""Units of the Ansible step: event parsing (hostile output, no_log), the inventory export."""

from __future__ import annotations

import json
import os
from pathlib import Path

from containment_helpers import REPO


def test_inventory_export_is_accepted_by_ansible_inventory(tmp_path):
    """`irkit inventory export --msp acme --format ansible` is accepted by `ansible-inventory --list`."""
    import subprocess
    import sys

    env = {**os.environ, "IRKIT_HOME": str(tmp_path)}
    out = tmp_path / "acme-ansible.yml"
    proc = subprocess.run([str(Path(sys.executable).with_name("irkit")), "inventory", "export", "--msp", "acme",
                           "--format", "ansible", "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    listing = subprocess.run([str(Path(sys.executable).with_name("ansible-inventory")), "-i", str(out), "--list"],
                             env={**env, "ANSIBLE_INVENTORY_UNPARSED_FAILED": "True"}, capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    data = json.loads(listing.stdout)
    import ir_toolkit.inventory as inv_mod

    inv = inv_mod.load_inventory(REPO / "inventories" / "acme.yml")
    assert set(data["_meta"]["hostvars"]) == {h.name for h in inv.hosts()}
    for tenant in inv.tenants:
        group = "tenant_" + tenant.name.replace("-", "_")
        assert set(data[group]["hosts"]) == {h.name for h in tenant.hosts}
    some = inv.hosts()[0]
    assert data["_meta"]["hostvars"][some.name]["ansible_host"] == some.address
    assert "StrictHostKeyChecking=yes" in data["_meta"]["hostvars"][some.name]["ansible_ssh_common_args"]


# --------------------------------------------------------------------------- event parsing (hostile input)

from ir_toolkit.transports.ansible_runner import (  # noqa: E402
    MAX_LINE,
    NO_LOG_TEXT,  # noqa: F401
    _bounded_lines,
    _stats,
    parse_event,
)


def _ev(event: str, res: dict, **extra) -> dict:
    return {"event": event, "event_data": {"host": "h1", "task": "t", "task_action": "command", "res": res,
                                           "duration": 0.25, **extra}}


def test_no_log_result_is_dropped_whole():
    ev = parse_event(_ev("runner_on_ok", {"censored": "the output has been hidden", "_ansible_no_log": True,
                                          "msg": "password=hunter2", "changed": True}))
    assert ev is not None and ev.no_log and ev.message == "" and ev.diff == ""
    assert "hunter2" not in repr(ev)


def test_known_secrets_are_cut_from_messages_task_names_and_diffs():
    secret = "S3cr3t-Value-123"
    ev = parse_event(_ev("runner_on_failed", {"msg": f"bad {secret}", "diff": {"before": "", "after": secret}},
                         task=f"set {secret}"), secrets=[secret])
    assert ev is not None and ev.status == "failed"
    assert secret not in ev.message and secret not in ev.task and secret not in ev.diff
    assert "[REDACTED]" in ev.message


def test_hostile_strings_are_bounded_and_single_line():
    ev = parse_event(_ev("runner_on_ok", {"msg": "x\n" * 100_000, "changed": "yes"}, host="h" * 10_000))
    assert ev is not None
    assert len(ev.message) <= 301 and "\n" not in ev.message
    assert len(ev.host) <= 256


def test_non_host_events_and_garbage_are_ignored():
    assert parse_event({"event": "playbook_on_start"}) is None
    assert parse_event({"event": "runner_on_ok", "event_data": "not a dict"}) is None
    ev = parse_event({"event": "runner_on_ok", "event_data": {"res": ["weird"], "duration": float("nan")}})
    assert ev is not None and ev.duration is None and ev.host == ""


def test_stats_keep_only_sane_counts():
    stats = _stats({"ok": {"a": 2, "b": -1, 3: 1}, "failures": {"a": 1}, "dark": {"c": 10**12}, "changed": "x"})
    assert stats["a"].ok == 2 and stats["a"].failed == 1 and not stats["a"].success
    assert "b" not in stats and "c" not in stats


def test_oversized_lines_are_skipped_not_buffered():
    import io

    data = b'{"a": 1}\n' + b"x" * (MAX_LINE * 2 + 5) + b"\n" + b'{"b": 2}\n'
    lines = list(_bounded_lines(io.BytesIO(data)))
    assert lines[0] == b'{"a": 1}\n' and lines[1] is None and lines[-1] == b'{"b": 2}\n'


def test_worker_dirs_of_dead_irkit_processes_are_removed(tmp_path, monkeypatch):
    """A worker directory left by a killed irkit (kill -9) is removed by the next job; a live one is kept."""
    import subprocess

    from ir_toolkit.transports import ansible_runner as ar

    monkeypatch.setattr(ar, "_memory_dir", lambda: str(tmp_path))
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"irkit-ansible-{dead.pid}-abc"
    (stale / "job" / "env").mkdir(parents=True)
    (stale / "job" / "env" / "extravars").write_text("secret: x\n")
    live = tmp_path / f"irkit-ansible-{os.getpid()}-def"
    live.mkdir()
    ar._remove_stale_worker_dirs()
    assert not stale.exists() and live.exists()


def _fake_ssh(tmp_path: Path, title: str):
    """A process named ``ssh`` whose command line is ``title`` (as an ssh master sets its title)."""
    import shutil
    import subprocess
    import time

    exe = tmp_path / "bin" / "ssh"
    exe.parent.mkdir(exist_ok=True)
    if not exe.exists():
        shutil.copy("/bin/sleep", exe)
    proc = subprocess.Popen(["bash", "-c", f'exec -a "{title}" {exe} 300'])
    for _ in range(100):
        if Path(f"/proc/{proc.pid}/comm").read_text().strip() == "ssh":
            break
        time.sleep(0.02)
    return proc


def test_control_masters_are_ended_by_their_control_path_only(tmp_path):
    """irkit ends the ssh masters of its own control directory (by pid), not another run's."""
    from ir_toolkit.transports.ansible_runner import end_control_masters

    mine = tmp_path / "irkit-ansible-1-cp-mine"
    other = tmp_path / "irkit-ansible-1-cp-mineother"
    a = _fake_ssh(tmp_path, f"ssh: {mine}/0123abcd [mux]")
    b = _fake_ssh(tmp_path, f"ssh: {other}/0123abcd [mux]")
    c = _fake_ssh(tmp_path, f"{mine}/0123abcd")  # not an ssh master's title
    try:
        assert end_control_masters(str(mine)) == [a.pid]
        assert a.wait(timeout=10) != 0
        assert b.poll() is None and c.poll() is None
    finally:
        for p in (a, b, c):
            p.kill()
            p.wait()


def test_one_shared_control_dir_per_process_ended_at_exit(tmp_path):
    """The jobs of one irkit process share a 0700 control directory in memory (one master per host for
    the apply and the verify re-check); ending it ends its masters and removes it."""
    from ir_toolkit.transports import ansible_runner as ar

    path = ar.shared_control_dir()
    try:
        assert path == ar.shared_control_dir()
        assert Path(path).name.startswith(f"irkit-ansible-{os.getpid()}-cp-")
        assert (os.stat(path).st_mode & 0o777) == 0o700
        env = ar._child_env(str(tmp_path), path)
        assert env["ANSIBLE_SSH_CONTROL_PATH_DIR"] == path
        assert f"ControlPersist={ar.CONTROL_PERSIST}s" in env["ANSIBLE_SSH_ARGS"]
        assert "KexAlgorithms=-sntrup761x25519-sha512*" in env["ANSIBLE_SSH_ARGS"]
        master = _fake_ssh(tmp_path, f"ssh: {path}/0123abcd [mux]")
        assert ar.end_shared_masters() == [master.pid]
        master.wait(timeout=10)
        assert not Path(path).exists()
        assert ar.shared_control_dir() != path  # a new one on the next job
    finally:
        ar.end_shared_masters()


def test_interpreter_from_the_host_only_when_a_plain_path():
    """The host's `command -v python3` becomes ansible_python_interpreter only when it is a plain absolute
    path (no templating, spaces or options a hostile host could smuggle into Ansible's variables)."""
    from ir_toolkit.actions.ansible import _PLAIN_PATH

    assert _PLAIN_PATH.fullmatch("/usr/bin/python3")
    for bad in ("{{ lookup('pipe', 'id') }}", "/usr/bin/python3 -c x", "python3", "/usr/bin/py{{x}}", "",
                "/" + "a" * 300):
        assert not _PLAIN_PATH.fullmatch(bad), bad


def test_masters_of_a_killed_irkit_are_ended_by_the_next_job(tmp_path, monkeypatch):
    """kill -9 of irkit leaves its shared control directory and its ssh masters: the next job ends the
    masters (by pid) and removes the directory; a live irkit's masters are left alone."""
    import subprocess

    from ir_toolkit.transports import ansible_runner as ar

    monkeypatch.setattr(ar, "_memory_dir", lambda: str(tmp_path))
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"irkit-ansible-{dead.pid}-cp-abc"
    stale.mkdir()
    live = tmp_path / f"irkit-ansible-{os.getpid()}-cp-def"
    live.mkdir()
    orphan = _fake_ssh(tmp_path, f"ssh: {stale}/0123abcd [mux]")
    theirs = _fake_ssh(tmp_path, f"ssh: {live}/0123abcd [mux]")
    try:
        ar._remove_stale_worker_dirs()
        assert orphan.wait(timeout=10) != 0
        assert theirs.poll() is None
        assert not stale.exists() and live.exists()
    finally:
        for p in (orphan, theirs):
            p.kill()
            p.wait()


_WARM_PROBE = r"""
import importlib.util, json, sys
from ansible.plugins.loader import init_plugin_loader
init_plugin_loader()
import yaml
spec = importlib.util.spec_from_file_location("irkit_cb", sys.argv[1] + "/callback_plugins/irkit_gc_freeze.py")
cb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cb)
if sys.argv[2] == "warm":
    cb.warm()
before = set(sys.modules)
# what a forked worker does for the shipped task: template its arguments (filters int, join), then the action
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar
try:
    from ansible.template import trust_as_template
except ImportError:  # older Ansible: strings are templates
    def trust_as_template(value):
        return value
args = yaml.safe_load(open(sys.argv[1] + "/sshd-hardening.yml"))[0]["tasks"][0]["irkit_sshd_dropin"]
hv = {"irkit_sshd_dropin_dir": "/etc/ssh/sshd_config.d", "irkit_sshd_config": "/etc/ssh/sshd_config",
      "irkit_sshd_test_command": "/usr/sbin/sshd -t", "irkit_sshd_pid": "12", "irkit_sshd_revoked_keys": "/etc/ssh/krl",
      "irkit_allow_users": ["root", "mspadmin"], "max_auth_tries": 3}
templar = Templar(loader=DataLoader(), variables=hv)
out = {k: templar.template(trust_as_template(v)) for k, v in args.items()}
from ansible.plugins.loader import action_loader
action_loader.get("normal", class_only=True)
import ansible.executor.module_common
print(json.dumps({"new": sorted(m for m in set(sys.modules) - before if m.startswith("ansible")),
                  "content": out["content"], "pid": out["reload_pid"]}))
"""


def test_warm_up_leaves_forked_workers_nothing_to_load():
    """The shipped callback's warm-up (run in ansible-playbook's main process at play start, before the
    per-host workers fork): after it, what a worker does for the shipped task - template its arguments
    with their filters, load the action plugin and the module builder - imports no Ansible module the
    parent has not (each such import would be repeated in every worker, for every host and task). The
    control run without the warm-up does import them, so the probe sees the difference; the templated
    values are the same either way."""
    import subprocess
    import sys

    content = str(REPO / "playbooks" / "ansible")
    runs = {}
    for mode in ("warm", "cold"):
        proc = subprocess.run([sys.executable, "-c", _WARM_PROBE, content, mode], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert runs["warm"]["new"] == [], runs["warm"]["new"]
    assert any(m.startswith("ansible.plugins.filter") for m in runs["cold"]["new"]), runs["cold"]["new"]
    assert "ansible.executor.module_common" in runs["cold"]["new"]
    assert runs["warm"]["content"] == runs["cold"]["content"]
    assert "AllowUsers root mspadmin" in runs["warm"]["content"] and "RevokedKeys /etc/ssh/krl" in runs["warm"]["content"]
    assert int(runs["warm"]["pid"]) == 12


def test_warm_up_survives_an_ansible_without_what_it_loads(monkeypatch):
    """Another Ansible version may lack a module or plugin the warm-up names: it is skipped, nothing fails."""
    import importlib
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "irkit_cb_test", REPO / "playbooks" / "ansible" / "callback_plugins" / "irkit_gc_freeze.py")
    cb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cb)

    def broken(name, *a, **k):
        raise ImportError(name)

    monkeypatch.setattr(cb.importlib, "import_module", broken)
    from ansible.plugins import loader

    def refuse(self, *a, **k):
        raise RuntimeError("no such plugin in this version")

    monkeypatch.setattr(loader.Jinja2Loader, "get", refuse)
    monkeypatch.setattr(loader.PluginLoader, "get", refuse)
    cb.warm()  # no exception
