"""Containment building blocks without a lab: key-line parsing, sshd command lines, nft rules,
password generation, parameter validation, generated playbooks and CLI input errors."""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

import pytest

from ir_toolkit.facts import sshd
from ir_toolkit.actions.accounts import (
    PASSWORD_SYMBOLS,
    RotateParams,
    generate_password,
)
from ir_toolkit.actions.isolation import IsolateParams, ruleset
from ir_toolkit.actions.revocation import RevokeParams
from ir_toolkit.redaction import redact_text

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def keypair(tmp_path_factory):
    path = tmp_path_factory.mktemp("k") / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "orig comment", "-f", str(path)], check=True)
    pub = path.with_suffix(".pub").read_text().strip()
    fp = subprocess.run(["ssh-keygen", "-l", "-f", str(path) + ".pub"], capture_output=True, text=True,
                        check=True).stdout.split()[1]
    return pub, fp


def test_key_fingerprint_whatever_options_and_comment(keypair):
    pub, fp = keypair
    keytype, blob = pub.split()[:2]
    lines = [
        pub,
        f"{keytype} {blob}",
        f"{keytype} {blob} some other comment with spaces",
        f'from="10.0.0.0/8,*",no-pty,command="echo \\"a b\\"" {keytype} {blob} x',
        f'   environment="X=1 2" {keytype} {blob}',
    ]
    for line in lines:
        assert sshd.line_fingerprint(line) == fp, line
    for line in ("", "# " + pub, "ssh-ed25519 not-base64!", f"ssh-rsa {blob}"):
        assert sshd.line_fingerprint(line) is None, line
    assert sshd.fingerprint_hex(fp) == __import__("hashlib").sha256(
        __import__("base64").b64decode(blob)).hexdigest()


def test_authorized_keys_file_expansion():
    assert sshd.expand_authorized_keys(".ssh/authorized_keys", "bob", "/home/bob", "1000") == \
        "/home/bob/.ssh/authorized_keys"
    assert sshd.expand_authorized_keys("/etc/ssh/keys/%u", "bob", "/home/bob", "1000") == "/etc/ssh/keys/bob"
    assert sshd.expand_authorized_keys("%h/.ssh/k_%U_%%", "bob", "/home/bob", "1000") == "/home/bob/.ssh/k_1000_%"
    assert sshd.expand_authorized_keys("none", "bob", "/home/bob", "1000") is None


def test_daemon_command_line_parsing():
    keep, config = sshd.parse_daemon_argv(["-D", "-f", "/etc/ssh/alt", "-E", "/var/log/x", "-oPort=2222",
                                           "-p", "22", "-e"])
    assert config == "/etc/ssh/alt"
    assert keep == ["-f", "/etc/ssh/alt", "-o", "Port=2222", "-p", "22"]
    title = ["sshd: /usr/sbin/sshd -D -f /etc/ssh/lab_config -E /var/log/sshd.log [listener] 0 of 10-100 startups"]
    argv = sshd._split_cmdline(title)
    assert argv[0] == "/usr/sbin/sshd" and sshd.parse_daemon_argv(argv[1:])[1] == "/etc/ssh/lab_config"
    assert sshd._split_cmdline(["/usr/sbin/sshd", "-D", ""]) == ["/usr/sbin/sshd", "-D"]
    daemon = sshd.SshdDaemon(1, "/usr/sbin/sshd", "/etc/ssh/my config", ["-f", "/etc/ssh/my config"])
    assert daemon.command("-T") == "/usr/sbin/sshd -f '/etc/ssh/my config' -T"
    assert sshd.parse_sshd_t("port 22\nAuthorizedKeysFile .ssh/a .ssh/b\nrevokedkeys none\n") == {
        "port": ["22"], "authorizedkeysfile": [".ssh/a .ssh/b"], "revokedkeys": ["none"]}


def test_isolation_ruleset():
    nets = [ipaddress.ip_network(n) for n in ("198.18.0.1/32", "10.0.0.0/8", "2001:db8::/32")]
    script, spec = ruleset(sorted(nets, key=lambda n: (n.version, n.network_address)), "IR-1")
    assert script.startswith("table inet irkit_isolation\ndelete table inet irkit_isolation\n")
    assert "ip saddr { 10.0.0.0/8, 198.18.0.1 } accept" in script
    assert "ip6 daddr { 2001:db8::/32 } accept" in script
    assert script.count("policy drop") == 3 and 'iif "lo" accept' in script
    assert f"spec={spec}" in script
    again, spec2 = ruleset(sorted(nets, key=lambda n: (n.version, n.network_address)), "IR-2")
    assert spec2 == spec  # the spec depends on the allow-list only


def test_passwords_are_unique_strong_and_redacted():
    seen = set()
    for _ in range(200):
        pw = generate_password(24)
        assert len(pw) == 24 and ":" not in pw and not any(c.isspace() for c in pw)
        assert any(c.islower() for c in pw) and any(c.isupper() for c in pw) and any(c.isdigit() for c in pw)
        assert any(c in PASSWORD_SYMBOLS for c in pw)
        seen.add(pw)
    assert len(seen) == 200
    assert redact_text(f"chpasswd {pw}") == "chpasswd [REDACTED]"


def test_parameters_refuse_inline_secrets_and_bad_values():
    with pytest.raises(ValueError, match="reference"):
        RotateParams(old_password="hunter2hunter2")
    assert RotateParams(old_password="env:OLD_PW").old_password == "env:OLD_PW"
    with pytest.raises(ValueError, match="file:PATH references"):
        RevokeParams(probe_keys=["-----BEGIN OPENSSH PRIVATE KEY-----"])
    with pytest.raises(ValueError, match="absolute"):
        RevokeParams(krl_path="relative.krl")
    with pytest.raises(ValueError, match="invalid address"):
        IsolateParams(allow=["not-an-ip"])
    with pytest.raises(ValueError, match="watchdog"):
        IsolateParams(watchdog_seconds=1)


def test_playbook_with_plaintext_password_is_refused_with_line(tmp_path):
    from ir_toolkit.errors import FileInputError
    from ir_toolkit.playbook.schema import load_playbook

    path = tmp_path / "pb.yml"
    path.write_text("name: x\nphases:\n  - name: rotate\n    steps:\n      - name: r\n        action: accounts.rotate\n"
                    "        params: {old_password: Summer2024!}\n")
    with pytest.raises(FileInputError) as exc:
        load_playbook(path)
    assert str(exc.value).startswith(f"{path}:7: phases[0].steps[0].params.old_password:")
    assert "Summer2024!" not in str(exc.value)


def test_generated_playbooks_load(tmp_path, irkit_home):
    from ir_toolkit.playbook.schema import load_playbook
    from ir_toolkit.run.generated import (
        isolation_playbook,
        rotation_playbook,
        write_generated_playbook,
    )

    data = rotation_playbook(tenants=["globex"], hosts=[], accounts=["mspadmin"], mode="lock", due_after_days=30,
                             since=None, old_password="env:OLD", evidence_override="routine")
    path = write_generated_playbook("IR-G", "rotate", data)
    assert write_generated_playbook("IR-G", "rotate", data) == path  # content-addressed
    loaded = load_playbook(path)
    assert [p.name for p in loaded.playbook.phases] == ["access", "rotate"]
    assert loaded.step_params(1, 0).due_after_days == 30 and loaded.step_params(1, 0).mode == "lock"
    for release in (False, True):
        data = isolation_playbook(tenants=[], hosts=["a"], release=release, allow=["10.0.0.0/8"] if not release
                                  else [], evidence_override=None)
        loaded = load_playbook(write_generated_playbook("IR-G", "iso", data))
        assert loaded.playbook.phases[-1].steps[0].action == ("host.release" if release else "host.isolate")


def _run(argv, capsys):
    from ir_toolkit.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code, capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["isolate", "--inventory", "inventories/acme.yml", "--case", "X"], "name the hosts to isolate"),
    (["isolate", "--inventory", "inventories/acme.yml", "--case", "X", "--host", "nope"], "unknown host 'nope'"),
    (["isolate", "--inventory", "inventories/acme.yml", "--case", "X", "--tenant", "globex", "--allow", "x"],
     "--allow 'x': not an address"),
    (["isolate", "--inventory", "inventories/acme.yml", "--case", "X", "--host", "globex-dc01", "--release",
      "--allow", "10.0.0.1"], "do not apply to --release"),
    (["rotate", "--inventory", "inventories/acme.yml", "--tenant", "nope"], "unknown tenant 'nope'"),
    (["rotate", "--inventory", "inventories/acme.yml", "--old-password", "plain"], "plaintext secret"),
])
def test_cli_input_errors(argv, message, capsys, irkit_home, monkeypatch):
    monkeypatch.chdir(REPO)
    code, err = _run(argv, capsys)
    assert code == 2 and message in err and err.startswith("irkit: error: ") and err.count("\n") == 1


def test_example_systemd_units_verify(tmp_path):
    """The shipped unit and timer parse (systemd-analyze verify), with the irkit path made real."""
    import shutil
    import sys

    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    irkit_bin = str(Path(sys.executable).with_name("irkit"))
    service = (REPO / "docs/systemd/irkit-rotate.service").read_text()
    assert "ExecStart=/opt/irkit/.venv/bin/irkit rotate --msp acme --due --yes" in service
    (tmp_path / "irkit-rotate.service").write_text(service.replace("/opt/irkit/.venv/bin/irkit", irkit_bin))
    (tmp_path / "irkit-rotate.timer").write_text((REPO / "docs/systemd/irkit-rotate.timer").read_text())
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", "irkit-rotate.timer", "irkit-rotate.service"],
                          cwd=tmp_path, capture_output=True, text=True)
    problems = [line for line in (proc.stdout + proc.stderr).splitlines()
                if "irkit-rotate" in line and "Failed to" not in line and "/etc/irkit/rotate.env" not in line]
    assert proc.returncode == 0 or not problems, proc.stdout + proc.stderr
    assert not problems, problems
