"""Artifact definitions, profiles and the shell commands built from them (no host needed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ir_toolkit.errors import FileInputError, InputError
from ir_toolkit.triage import remote
from ir_toolkit.triage.schema import (
    ARTIFACTS_DIR,
    DEFAULT_FILE_CAP,
    Artifact,
    load_catalog,
    parse_size,
    resolve_patterns,
)

# The Linux coverage list, mapped to the artifacts that provide each item.
LINUX_COVERAGE = {
    "processes + command lines": ["linux.live.processes", "linux.live.process_details"],
    "sha256 of running binaries incl. deleted": ["linux.live.process_hashes", "linux.live.deleted_binaries"],
    "sockets with owning pids": ["linux.live.network_sockets", "linux.live.network_proc"],
    "routes/arp": ["linux.live.routes", "linux.live.arp"],
    "firewall rules": ["linux.live.firewall_nft", "linux.live.firewall_iptables", "linux.live.firewall_services",
                       "linux.system.firewall_config"],
    "open files (lsof), deleted-but-open files": ["linux.live.open_files", "linux.live.deleted_open_files"],
    "module parameters": ["linux.live.kernel_modules"],
    "every file in /tmp, /var/tmp, /dev/shm, /run/shm": ["linux.files.tmp_all"],
    "bodyfile of every local fs, hidden files": ["linux.files.bodyfile"],
    "web server logs": ["linux.logs.web", "linux.logs.web_catalina"],
    "containers": ["linux.live.containers", "linux.system.state_files"],
    "logged-in users, utmp/wtmp/btmp/lastlog": ["linux.live.sessions", "linux.live.last_logins",
                                                 "linux.logs.login_records"],
    "kernel modules": ["linux.live.kernel_modules"],
    "mounts": ["linux.live.mounts"],
    "cron/anacron/at": ["linux.persistence.cron", "linux.live.at_jobs"],
    "systemd units and timers (system, user, /run)": ["linux.persistence.systemd", "linux.live.systemd"],
    "sysv/rc.local": ["linux.persistence.sysv_init"],
    "authorized_keys and sshd config": ["linux.ssh.authorized_keys", "linux.ssh.sshd_config"],
    "ld.so.preload": ["linux.persistence.ld_preload"],
    "passwd/group/sudoers/pam": ["linux.users.accounts"],
    "shell rc files and histories": ["linux.persistence.shell_startup", "linux.users.shell_history"],
    "/var/log auth/syslog/journal": ["linux.logs.auth_syslog", "linux.logs.journal"],
    "auditd logs": ["linux.logs.audit"],
    "package logs": ["linux.logs.packages"],
    "executables in /tmp, /var/tmp, /dev/shm": ["linux.files.tmp_executables"],
    "suid/sgid files": ["linux.files.suid_sgid"],
    "remote-access tool logs": ["linux.remote_access.logs"],
}
WINDOWS_COVERAGE = [
    "windows.live.processes", "windows.live.network_connections", "windows.live.services",
    "windows.live.scheduled_tasks", "windows.live.run_keys", "windows.live.wmi_persistence",
    "windows.registry.system_hives", "windows.registry.user_hives", "windows.eventlogs.core",
    "windows.execution.prefetch", "windows.registry.amcache", "windows.remote_access.rmm_logs",
]


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def test_linux_coverage_is_complete_and_in_ir_triage(catalog):
    # without the opt-in flag: a covered item must run in a default collection
    triage = {a.name for a in catalog.select("ir_triage", "linux").artifacts}
    for item, names in LINUX_COVERAGE.items():
        for name in names:
            assert name in catalog.artifacts, f"{item}: {name} is not defined"
            assert name in triage, f"{item}: {name} is not in the ir_triage profile"


def test_windows_definitions_exist(catalog):
    for name in WINDOWS_COVERAGE:
        assert catalog.artifacts[name].os == "windows"
    evtx = " ".join(catalog.artifacts["windows.eventlogs.core"].paths)
    for log in ("Security", "System", "PowerShell", "Sysmon"):
        assert log in evtx


def test_profiles_full_contains_everything(catalog):
    for os_name in ("linux", "windows"):
        full = catalog.select("full", os_name, allow_modifies_state=True).artifacts
        assert {a.name for a in full} == {a.name for a in catalog.artifacts.values() if a.os == os_name}


def test_volatile_first(catalog):
    arts = catalog.select("ir_triage", "linux").artifacts
    orders = [a.order for a in arts]
    assert orders == sorted(orders)
    assert arts[0].name == "linux.live.processes"
    last_command = max(i for i, a in enumerate(arts) if a.name.startswith("linux.live."))
    first_file = min(i for i, a in enumerate(arts) if a.collector != "command")
    assert last_command < first_file


def test_modifies_state_needs_the_flag(catalog):
    plain = catalog.select("ir_triage", "linux")
    assert "linux.live.reveal_hidden_processes" not in {a.name for a in plain.artifacts}
    assert [a.name for a in plain.held_back] == ["linux.live.reveal_hidden_processes"]
    flagged = catalog.select("ir_triage", "linux", allow_modifies_state=True)
    assert "linux.live.reveal_hidden_processes" in {a.name for a in flagged.artifacts}
    assert not flagged.held_back


def test_firewall_listings_are_read_only_and_run_by_default(catalog):
    """iptables is listed with iptables-save only for tables the kernel already has (no modprobe)."""
    plain = {a.name: a for a in catalog.select("ir_triage", "linux").artifacts}
    for name in ("linux.live.firewall_nft", "linux.live.firewall_iptables", "linux.live.firewall_services"):
        assert name in plain and not plain[name].modifies_state
    ipt = plain["linux.live.firewall_iptables"].command
    assert "ip${v}_tables_names" in ipt and "iptables -L" not in ipt and "modprobe" not in ipt
    assert "/proc/modules" in plain["linux.live.firewall_nft"].command


def test_sections_split_tagged_lines():
    from ir_toolkit.triage.collector import split_sections

    main, parts = split_sections(b"0|/a|1\nhidden\td\t/.x\nhiddenish\t/y\nattr\t----i---- /z\n",
                                 {"hidden": "h.txt", "attr": "a.txt", "socket": "s.txt"})
    assert main == b"0|/a|1\nhiddenish\t/y\n"
    assert parts == {"hidden": b"d\t/.x\n", "attr": b"----i---- /z\n", "socket": b""}
    # a hostile host's endless line: only a piece that starts a line can carry a tag
    long = b"0|" + b"x" * (3 << 20) + b"\nhidden\t/.y\n"
    crafted = b"0|" + b"a" * ((1 << 20) - 3) + b"\nattr\tz\n"
    main, parts = split_sections(b"0|" + b"b" * ((1 << 20) - 2) + b"hidden\t/forged\n" + long + crafted,
                                 {"hidden": "h.txt", "attr": "a.txt"})
    assert parts["hidden"] == b"/.y\n" and parts["attr"] == b"z\n"
    assert b"hidden\t/forged" in main and main.count(b"\n") == 3
    with pytest.raises(ValueError, match="section tag"):
        Artifact(name="linux.t.x", description="d", os="linux", collector="command", command="true",
                 sections={"Bad-Tag": "x.txt"})
    with pytest.raises(ValueError, match="own file name"):
        Artifact(name="linux.t.x", description="d", os="linux", collector="command", command="true",
                 output="x.txt", sections={"a": "x.txt"})


def test_unknown_profile(catalog):
    with pytest.raises(InputError, match="unknown triage profile 'nope'"):
        catalog.select("nope", "linux")


def test_patterns_select_by_name_and_glob_with_exclusions():
    known = {"linux.a.x": 1, "linux.a.y": 1, "linux.b.z": 1}
    assert resolve_patterns(["linux.a.*", "!linux.a.y", "linux.b.z"], known, where="t") == ["linux.a.x", "linux.b.z"]
    with pytest.raises(InputError, match="'linux.c.\\*' matches no artifact"):
        resolve_patterns(["linux.c.*"], known, where="t")


@pytest.mark.parametrize("text,expected", [("10M", 10 * 2**20), ("1G", 2**30), ("512k", 512 * 1024),
                                           (4096, 4096), ("2 MiB", 2 * 2**20)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


def test_defaults():
    art = Artifact(name="linux.t.x", description="d", os="linux", collector="file", paths=["/etc/x"])
    assert art.file_cap == DEFAULT_FILE_CAP and art.shell == "sh" and art.order == 50 and not art.modifies_state


def _write(tmp_path: Path, text: str) -> Path:
    defs = tmp_path / "defs"
    defs.mkdir(exist_ok=True)
    (defs / "a.yml").write_text(text)
    return defs


@pytest.mark.parametrize("body,line,field,message", [
    ("  - {name: linux.t.a, description: d, os: linux, collector: file, paths: [/x], colour: red}\n",
     4, "artifacts[0].colour", "unknown key"),
    ("  - name: linux.t.a\n    description: d\n    os: linux\n    collector: file\n    paths: ['/etc/*.conf']\n",
     4, "artifacts[0]", "has glob characters: use collector: glob"),
    ("  - {name: linux.t.a, description: d, os: linux, collector: command}\n",
     4, "artifacts[0]", "a command artifact needs command:"),
    ("  - {name: linux.t.a, description: d, os: linux, collector: file, paths: [/x], max_file_size: 10Q}\n",
     4, "artifacts[0].max_file_size", "invalid size '10Q'"),
    ("  - {name: linux.t.a, description: d, os: linux, collector: file, paths: [etc/x]}\n",
     4, "artifacts[0]", "must be absolute"),
    ("  - {name: Linux.T, description: d, os: linux, collector: file, paths: [/x]}\n",
     4, "artifacts[0]", "artifact name"),
])
def test_definition_errors_name_file_line_field(tmp_path, body, line, field, message):
    defs = _write(tmp_path, "# test\nversion: 1\nartifacts:\n" + body)
    with pytest.raises(FileInputError) as err:
        load_catalog(extra_dirs=[defs])
    assert err.value.path.endswith("a.yml")
    assert err.value.line == line
    assert err.value.field == field
    assert message in err.value.detail


def test_duplicate_artifact_name_is_refused(tmp_path):
    defs = _write(tmp_path, "version: 1\nartifacts:\n"
                  "  - {name: linux.live.processes, description: d, os: linux, collector: command, command: ps}\n")
    with pytest.raises(FileInputError, match="duplicate artifact name 'linux.live.processes'"):
        load_catalog(extra_dirs=[defs])


def test_profile_pattern_that_matches_nothing_is_an_error(tmp_path):
    defs = _write(tmp_path, "version: 1\nartifacts:\n"
                  "  - {name: linux.t.a, description: d, os: linux, collector: command, command: 'true'}\n")
    (defs / "profiles.yml").write_text("version: 1\nprofiles:\n"
                                       "  - {name: mine, description: d, artifacts: [linux.t.a, linux.t.typo]}\n")
    with pytest.raises(FileInputError) as err:
        load_catalog(extra_dirs=[defs])
    assert err.value.line == 3 and "linux.t.typo" in err.value.detail


def test_every_linux_command_is_valid_sh(catalog):
    """`sh -n` parses every command and every generated find command (nothing is executed)."""
    homes = ["/root", "/home/alice"]
    for art in catalog.artifacts.values():
        if art.os != "linux":
            continue
        if art.collector == "command":
            script = remote.command_for(art)
        else:
            roots = [r for r, _ in remote.expand_roots(art, homes)]
            script = remote.enumerate_command(art, roots, glob=art.collector != "file")
        result = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True)
        assert result.returncode == 0, f"{art.name}: {result.stderr}"


def test_shell_glob_quoting_keeps_only_glob_characters_active(tmp_path):
    for name in ("a b.conf", "x$(touch pwned).conf", "c.conf", "d.txt"):
        (tmp_path / name).write_text("x")
    pattern = str(tmp_path) + "/*.conf"
    out = subprocess.run(["sh", "-c", "for p in " + remote.shell_glob(pattern) + '; do echo "$p"; done'],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert sorted(Path(p).name for p in out) == ["a b.conf", "c.conf", "x$(touch pwned).conf"]
    weird = str(tmp_path) + "/it's [a] $HOME"
    echoed = subprocess.run(["sh", "-c", "echo " + remote.shell_glob(weird)], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert echoed == weird
    assert not (Path.cwd() / "pwned").exists()


def test_enumerate_lists_files_with_metadata_and_reports_absent_roots(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("hello")
    (tmp_path / "d" / "skip.log").write_text("x")
    (tmp_path / "d" / "l").symlink_to("/etc/passwd")
    art = Artifact(name="linux.t.x", description="d", os="linux", collector="file",
                   paths=[str(tmp_path / "d"), str(tmp_path / "missing")], exclude=["*/skip.log"])
    roots = [r for r, _ in remote.expand_roots(art, [])]
    proc = subprocess.run(["sh", "-c", remote.enumerate_command(art, roots, glob=False)], capture_output=True)
    stats = {Path(s.path).name: s for s in remote.parse_stat(proc.stdout)}
    assert set(stats) == {"f", "l"}
    assert stats["f"].kind == "file" and stats["f"].size == 5 and stats["f"].modified.endswith("Z")
    assert stats["l"].kind == "symlink" and stats["l"].link_target == "/etc/passwd"
    _, absent, _ = remote.parse_errors(proc.stderr)
    assert absent == [str(tmp_path / "missing")]


def test_iso_time():
    assert remote.iso_time("1600000000.123456789") == "2020-09-13T12:26:40.123456789Z"
    assert remote.iso_time("0.000000000") is None
    assert remote.iso_time("-") is None


def test_builtin_artifact_files_are_the_only_yaml(catalog):
    assert {p.parent.name for p in ARTIFACTS_DIR.rglob("*.yml")} == {"linux", "windows"}


def test_uac_comparison_table_is_covered_by_ir_triage(catalog):
    """Issue 15: every one of the 95 rows is covered by a default ir_triage collection, or deferred with its
    reason in docs/triage.md; at least 85 covered."""
    from triage_coverage import COVERAGE, DEFERRED

    assert len(COVERAGE) == 95
    plain = {a.name for a in catalog.select("ir_triage", "linux").artifacts}
    held = {a.name for a in catalog.select("ir_triage", "linux").held_back}
    full = {a.name for a in catalog.select("full", "linux").artifacts}
    for row, (category, verdict, names) in COVERAGE.items():
        for name in names:
            assert name in catalog.artifacts, f"{row} {category}: {name} is not defined"
            if verdict == "covered":
                assert name in plain, f"{row} {category}: {name} does not run in a default ir_triage"
            elif verdict == "full":
                assert name in full and name not in plain, f"{row}: {name} should be full-only"
            else:
                assert name in held, f"{row}: {name} should be held back (opt-in)"
    assert sum(v == "covered" for _, v, _ in COVERAGE.values()) >= 85
    docs = (Path(__file__).resolve().parents[1] / "docs/triage.md").read_text()
    for row, (_, verdict, _) in COVERAGE.items():
        line = next((ln for ln in docs.splitlines() if ln.startswith(f"| {row} |")), None)
        assert line is not None, f"docs/triage.md has no coverage row {row}"
        assert ("covered" in line) == (verdict == "covered"), line
    for row in DEFERRED:
        line = next(ln for ln in docs.splitlines() if ln.startswith(f"| {row} |"))
        assert any(unit in line for unit in (" s", "MB", "KB", "MiB")), f"{row}: deferred without a measured cost"


def test_the_builtin_catalog_is_parsed_once_when_many_workers_ask_at_once(monkeypatch):
    """#17: the engine's workers reach their first triage step together; the catalogue is parsed by one."""
    import threading
    import time

    from ir_toolkit.triage import schema

    real = schema.load_catalog
    calls = []

    def slow_load(*args, **kwargs):
        calls.append(1)
        time.sleep(0.2)  # every other worker arrives while the first parses
        return real(*args, **kwargs)

    monkeypatch.setattr(schema, "load_catalog", slow_load)
    schema._builtin_catalog.cache_clear()
    try:
        got = []
        workers = [threading.Thread(target=lambda: got.append(schema.builtin_catalog())) for _ in range(20)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert len(calls) == 1 and len(got) == 20 and all(c is got[0] for c in got)
    finally:
        schema._builtin_catalog.cache_clear()
