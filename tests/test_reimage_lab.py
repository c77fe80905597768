"""Reimage orchestration (issue 8, the part over the engine).

Unit tests (no lab): the host-key rule (case pins override every other pin; a changed key is
accepted only with an ok reimage record of this case, and only the key the provider reported),
the case known_hosts writer, the interrupted-reimage detection, the playbook `irkit reimage`
builds, and the command's input errors.

Lab tests (marked ``lab``; a private `lab_factory` lab, MSP ``reimg``, 2 tenants x 3 hosts; the
two first hosts of t001 are domain controllers): `irkit reimage` after triage brings two DCs back
clean, one at a time, with new keys in the audit log and the case pins, the responder in, the MSP
key and the old password dead; a host without evidence is refused; a key change without a reimage
is refused; the old key of a reimaged host is refused although the inventory still pins it; the
verifier finds the breach on a host that was not reimaged; `irkit audit verify` passes.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import paramiko
import pytest
import yaml
from containment_helpers import case_key_login, home, irkit, key_login, keyed_env, password_login

from ir_toolkit.actions.base import ActionContext, ActionFailed
from ir_toolkit.actions.reimage import accept_reimaged_host_key
from ir_toolkit.reimage.history import (
    RECORD_DONE,
    RECORD_KEY_ACCEPTED,
    RECORD_KEY_REFUSED,
    RECORD_PROVIDER,
    RECORD_START,
    unfinished_reimage,
)
from ir_toolkit.transports.hostkeys import case_pins, write_case_pin
from ir_toolkit.cli.main import main
from ir_toolkit.cli.reimage import default_playbook
from ir_toolkit.deadline import Deadline
from ir_toolkit.inventory import load_inventory
from ir_toolkit.run.generated import reimage_playbook
from ir_toolkit.transports.hostkeys import KnownHosts, fingerprint
from ir_toolkit.transports.pool import ConnectionPool, case_known_hosts

REPO = Path(__file__).resolve().parents[1]
ACME = REPO / "inventories" / "acme.yml"


def _key() -> paramiko.PKey:
    return paramiko.Ed25519Key.from_private_key(__import__("io").StringIO(_ed25519_pem()))


def _ed25519_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()).decode()


def _line(pattern: str, key: paramiko.PKey) -> str:
    return f"{pattern} {key.get_name()} {key.get_base64()}\n"


def _fp(key: paramiko.PKey) -> str:
    return fingerprint(key.asbytes())


# =========================================================================== unit: pins


def test_case_pins_override_msp_and_inventory_pins(tmp_path):
    old, new, other, revoked = _key(), _key(), _key(), _key()
    msp = tmp_path / "msp_known_hosts"
    msp.write_text(_line("198.18.1.10", old) + _line("198.18.1.20", other) + _line("[198.18.1.30]:2222", old)
                   + f"@revoked * {revoked.get_name()} {revoked.get_base64()}\n")
    case = tmp_path / "case_known_hosts"
    case.write_text(_line("198.18.1.10", new) + _line("[198.18.1.30]:2222", new))
    pins = KnownHosts([msp], override=[case])
    # the reimaged host: only the case pin counts, not the MSP file nor the inventory's host_keys
    assert pins.expected("198.18.1.10", 22, [_fp(old)]) == {_fp(new)}
    assert pins.expected("198.18.1.30", 2222) == {_fp(new)}
    # a host the case does not name: the MSP file and the inventory pins, as before
    assert pins.expected("198.18.1.20", 22, [_fp(old)]) == {_fp(other), _fp(old)}
    assert pins.expected("198.18.1.99", 22) == set()
    # an in-memory acceptance replaces the pin the same way
    pins.pin_override("198.18.1.20", 22, _fp(new))
    assert pins.expected("198.18.1.20", 22, [_fp(old)]) == {_fp(new)}
    # without override files nothing changes (the union of the old behaviour)
    assert KnownHosts([msp, case]).expected("198.18.1.30", 2222) == {_fp(old), _fp(new)}
    # revoked keys stay revoked even as case pins
    case.write_text(_line("198.18.1.10", revoked))
    assert KnownHosts([msp], override=[case]).expected("198.18.1.10", 22) == set()


def test_fleet_uses_the_case_pin_instead_of_older_pins(irkit_home):
    inventory = load_inventory(ACME)
    host = inventory.host("globex-dc01")
    old, new = _key(), _key()
    lab_dir = irkit_home / "lab" / "acme"
    lab_dir.mkdir(parents=True)
    (lab_dir / "known_hosts").write_text(_line(host.address, old))
    assert ConnectionPool(inventory, "CASE-PIN").endpoint(host).pinned == {_fp(old)}
    write_case_pin("CASE-PIN", host.address, 22, new)
    assert ConnectionPool(inventory, "CASE-PIN").endpoint(host).pinned == {_fp(new)}
    assert ConnectionPool(inventory, None).endpoint(host).pinned == {_fp(old)}
    assert ConnectionPool(inventory, "OTHER-CASE").endpoint(host).pinned == {_fp(old)}


def test_write_case_pin_replaces_only_that_host_and_is_thread_safe(irkit_home):
    keys = {f"198.18.5.{i}": _key() for i in range(1, 21)}
    threads = [threading.Thread(target=write_case_pin, args=("PINS", addr, 22, key)) for addr, key in keys.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    again = _key()
    write_case_pin("PINS", "198.18.5.1", 22, again)
    write_case_pin("PINS", "198.18.5.2", 2222, again)
    for addr, key in keys.items():
        want = {_fp(again)} if addr == "198.18.5.1" else {_fp(key)}
        assert case_pins("PINS", addr, 22) == want, addr
    assert case_pins("PINS", "198.18.5.2", 2222) == {_fp(again)}
    text = case_known_hosts("PINS").read_text()
    assert text.startswith("# irkit case PINS") and text.count("198.18.5.1 ") == 1
    assert not list(case_known_hosts("PINS").parent.glob("*.tmp"))


# =========================================================================== unit: the acceptance rule


@pytest.fixture
def audit(irkit_home):
    from ir_toolkit.audit.log import AuditLog

    log = AuditLog.open("KEYRULE", origin="acme/ir/KEYRULE")
    yield log
    log.close()


def _ctx(audit, fleet=None) -> ActionContext:
    inventory = load_inventory(ACME)
    host = inventory.host("globex-web01")
    return ActionContext(host, inventory, "KEYRULE", conn=None, deadline=Deadline.after(30),  # type: ignore[arg-type]
                         journal=audit, pool=fleet, actor="tester")


def _keyrule_records(action: str) -> list[dict]:
    from ir_toolkit.audit.log import iter_records

    return [r for r in iter_records("KEYRULE") if r["action"] == action]


def test_changed_key_is_accepted_only_after_an_ok_reimage_of_this_host(audit):
    fleet = SimpleNamespace(known_hosts=KnownHosts())
    ctx = _ctx(audit, fleet)
    old, new = _key(), _key()
    # 1. no reimage record at all: refused, audited, nothing pinned
    with pytest.raises(ActionFailed, match="no record that irkit reimaged"):
        accept_reimaged_host_key(ctx, new, old_fp=_fp(old), reimage_seq=1, reported_fp=None)
    # 2. a failed reimage, and an ok reimage of ANOTHER host, do not count either
    failed = audit.append_durable(action=RECORD_PROVIDER, actor="t", tenant="globex", host="globex-web01",
                                  params={}, outcome="failed")
    other = audit.append_durable(action=RECORD_PROVIDER, actor="t", tenant="globex", host="globex-web02",
                                 params={}, outcome="ok")
    for seq in (failed, other):
        with pytest.raises(ActionFailed, match="no record that irkit reimaged"):
            accept_reimaged_host_key(ctx, new, old_fp=_fp(old), reimage_seq=seq, reported_fp=None)
    # 3. an ok reimage, but the host offers another key than the provider reported: interception
    ok = audit.append_durable(action=RECORD_PROVIDER, actor="t", tenant="globex", host="globex-web01",
                              params={}, outcome="ok")
    with pytest.raises(ActionFailed, match="possible interception"):
        accept_reimaged_host_key(ctx, new, old_fp=_fp(old), reimage_seq=ok, reported_fp=_fp(_key()))
    assert case_pins("KEYRULE", "198.18.1.20", 22) == set()
    assert fleet.known_hosts.expected("198.18.1.20", 22) == set()
    refused = _keyrule_records(RECORD_KEY_REFUSED)
    assert len(refused) == 4 and all(r["outcome"] == "refused" and r["host"] == "globex-web01" for r in refused)
    assert refused[-1]["params"]["new_host_key_fingerprint"] == _fp(new)
    # 4. the rule holds: pinned in the case file and in the running fleet, old and new fingerprints recorded
    facts = accept_reimaged_host_key(ctx, new, old_fp=_fp(old), reimage_seq=ok, reported_fp=_fp(new))
    assert case_pins("KEYRULE", "198.18.1.20", 22) == {_fp(new)}
    assert fleet.known_hosts.expected("198.18.1.20", 22, [_fp(old)]) == {_fp(new)}
    accepted = _keyrule_records(RECORD_KEY_ACCEPTED)
    assert len(accepted) == 1 and accepted[0]["seq"] == facts["seq"]
    assert accepted[0]["params"]["old_host_key_fingerprint"] == _fp(old)
    assert accepted[0]["params"]["new_host_key_fingerprint"] == _fp(new)
    assert accepted[0]["params"]["reimage_record"] == ok and accepted[0]["params"]["host_key_changed"] is True


def test_an_interrupted_reimage_is_finished_not_repeated(audit):
    def add(action: str, outcome: str, host: str = "globex-web01") -> int:
        return audit.append_durable(action=action, actor="t", tenant="globex", host=host, params={"x": 1},
                                    outcome=outcome)

    assert unfinished_reimage("KEYRULE", "globex", "globex-web01") is None
    start = add(RECORD_START, "intent")
    assert unfinished_reimage("KEYRULE", "globex", "globex-web01") is None  # provider result unknown
    provider = add(RECORD_PROVIDER, "ok")
    add(RECORD_PROVIDER, "ok", host="globex-web02")
    pending = unfinished_reimage("KEYRULE", "globex", "globex-web01")
    assert pending is not None and (pending[0]["seq"], pending[1]["seq"]) == (start, provider)
    add(RECORD_DONE, "failed")  # e.g. the re-keying was refused: still the re-keying to finish
    assert unfinished_reimage("KEYRULE", "globex", "globex-web01")[1]["seq"] == provider
    add(RECORD_DONE, "ok")
    assert unfinished_reimage("KEYRULE", "globex", "globex-web01") is None
    add(RECORD_START, "intent")
    add(RECORD_PROVIDER, "failed")  # a failed reinstall leaves nothing to finish: reimage again
    assert unfinished_reimage("KEYRULE", "globex", "globex-web01") is None


# =========================================================================== unit: playbook and command


def test_shipped_playbook_targets_no_host_and_the_command_fills_it_in(irkit_home):
    from ir_toolkit.actions.base import registry
    from ir_toolkit.playbook.schema import load_playbook
    from ir_toolkit.playbook.targets import select_hosts
    from ir_toolkit.run.generated import write_generated_playbook
    from ir_toolkit.yamlfile import load

    inventory = load_inventory(ACME)
    shipped = load_playbook(default_playbook())
    phase = shipped.playbook.phases[0]
    assert [s.action for s in phase.steps] == ["host.reimage", "responder.ensure_access", "accounts.provision",
                                               "accounts.rotate", "ssh_keys.revoke", "host.verify_clean"]
    assert phase.max_concurrent == {"domain-controller": 1}
    assert phase.steps[0].requires_approval and phase.steps[0].retries == 0
    assert all(select_hosts(inventory, s.targets) == [] for s in phase.steps)  # safe as shipped

    destructive = {n for n, variants in registry().items() if any(c.destructive for c in variants)}
    assert {"host.reimage", "accounts.rotate", "ssh_keys.revoke"} <= destructive
    assert not {"accounts.provision", "host.verify_clean", "responder.ensure_access"} & destructive
    data = reimage_playbook(load(default_playbook()), hosts=["globex-dc01", "globex-web01"],
                            image_url="http://198.18.0.1/img.iso", reason="implant found",
                            old_password="file:/x/pw", evidence_override="honeypot", destructive=destructive)
    loaded = load_playbook(write_generated_playbook("GEN", "reimage", data))
    steps = loaded.playbook.phases[0].steps
    for step in steps:
        assert [h.name for h in select_hosts(inventory, step.targets)] == ["globex-dc01", "globex-web01"]
        assert step.evidence_override == ("honeypot" if step.action in destructive else None)
    params = {s.action: loaded.step_params(0, i) for i, s in enumerate(steps)}
    assert params["host.reimage"].image_url == "http://198.18.0.1/img.iso"
    assert params["host.reimage"].reason == "implant found"
    assert params["accounts.rotate"].old_password == "file:/x/pw"
    assert params["host.verify_clean"].old_password == "file:/x/pw"
    assert params["host.verify_clean"].ports == [4444]
    assert loaded.playbook.phases[0].max_concurrent == {"domain-controller": 1}
    assert "&id" not in loaded.text and "*id" not in loaded.text  # plain YAML, no shared anchors


@pytest.mark.parametrize("extra, message", [
    (["--hosts", "nope"], "unknown host 'nope'"),
    (["--hosts", "globex-web01", "--old-password", "hunter2"], "plaintext secret"),
    (["--hosts", "globex-web01", "--image-url", "ftp://x/y.iso"], "--image-url"),
    (["--hosts", "globex-web01", "--evidence-override", " "], "needs a written reason"),
    (["--hosts", "nobmc01"], "has no bmc: section"),
    (["--hosts", "win01"], "reimaging windows hosts is not supported"),
])
def test_reimage_input_errors_are_one_line_exit_2(irkit_home, tmp_path, capsys, extra, message):
    data = yaml.safe_load(ACME.read_text())
    data["tenants"][0]["hosts"].append({"name": "nobmc01", "address": "198.18.1.99"})
    data["tenants"][0]["hosts"].append({"name": "win01", "address": "198.18.1.98", "os": "windows",
                                        "bmc": {"provider": "lab"}})
    inv = tmp_path / "inv.yml"
    inv.write_text(yaml.safe_dump(data))
    with pytest.raises(SystemExit) as exc:
        main(["reimage", "--inventory", str(inv), "--case", "ERR-1", *extra])
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert err.startswith("irkit: error: ") and message in err and err.count("\n") == 1
    assert not (irkit_home / "cases" / "ERR-1" / "audit").exists()


def test_reimage_without_hosts_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["reimage", "--msp", "acme", "--case", "ERR-2"])
    assert exc.value.code == 2
    assert "--hosts" in capsys.readouterr().err


# =========================================================================== lab


CASE = "REIMG-1"
DCS = ("t001-h001", "t001-h002")


@pytest.fixture(scope="module")
def rlab(lab_factory, tmp_path_factory):
    """The lab, plus an inventory where t001's first two hosts are domain controllers and every host
    is pinned by fingerprint (host_keys), so old pins exist besides the lab's known_hosts."""
    handle = lab_factory("reimg", tenants=2, hosts_per_tenant=3)
    data = yaml.safe_load(handle.inventory_path.read_text())
    fps = {h["name"]: h["host_key_fingerprint"] for h in handle.info["hosts"]}
    for tenant in data["tenants"]:
        for host in tenant["hosts"]:
            host["host_keys"] = [fps[host["name"]]]
            if host["name"] in DCS:
                host["groups"] = ["domain-controller"]
    inventory = tmp_path_factory.mktemp("reimg") / "reimg-dc.yml"
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    env = keyed_env(handle)
    # the first DC's host key before any reimage (the lab deletes it when it rebuilds the host)
    old_private = (handle.home / "lab" / handle.msp / "hosts" / DCS[0] / "ssh_host_ed25519_key").read_bytes()
    return SimpleNamespace(lab=handle, env=env, inv=str(inventory), before={h["name"]: h for h in handle.info["hosts"]},
                           old_password_ref=f"file:{handle.info['msp_shared_password_file']}", old_private=old_private)


def _records(env: dict, case: str) -> list[dict]:
    from ir_toolkit.audit.log import iter_records

    with home(env):
        return list(iter_records(case))


def _ts(record: dict) -> dt.datetime:
    return dt.datetime.fromisoformat(record["ts"].replace("Z", "+00:00"))


def _host(info: dict, name: str) -> dict:
    return next(h for h in info["hosts"] if h["name"] == name)


def _window(records: list[dict], host: str) -> tuple[dt.datetime, dt.datetime]:
    """From the host's first step.start to its last step.done in the reimage phase."""
    mine = [r for r in records if r.get("host") == host and r["action"] in ("step.start", "step.done")
            and r["params"].get("item", "").startswith("reimage/")]
    return _ts(mine[0]), _ts(mine[-1])


def _traces(lab, name: str) -> str:
    """What is left of the seeded breach, as seen from the host's console (empty: nothing)."""
    script = (
        "for f in /tmp/.kworkerd /etc/systemd/system/kworker-sync.service "
        "/etc/systemd/system/multi-user.target.wants/kworker-sync.service; do [ -e $f ] && echo file $f; done; "
        "grep -sl kworkerd /var/spool/cron/crontabs/* && echo cron; "
        "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null | grep -q '^/tmp/.kworkerd' && echo proc $p; done; "
        "awk '$4==\"0A\" && $2 ~ /:115C$/ {print \"listen 4444\"}' /proc/net/tcp; "
        "getent passwd mspadmin >/dev/null && grep -c . /home/mspadmin/.ssh/authorized_keys 2>/dev/null; true")
    return lab.exec(name, script).stdout.decode().strip()


@pytest.mark.lab
def test_reimage_two_dcs_after_triage_refuses_a_host_without_evidence(rlab):
    lab, env, inv = rlab.lab, rlab.env, rlab.inv
    info = lab.info
    msp_key, old_password = info["msp_private_key"], info["msp_shared_password"]
    before = rlab.before
    # the breach is real before: the MSP key and the shared password log in, the implant runs
    assert key_login(lab, before["t001-h001"], "root", msp_key)
    assert password_login(lab, before["t001-h002"], "mspadmin", old_password)
    assert "proc" in _traces(lab, "t001-h001") and "listen 4444" in _traces(lab, "t001-h001")

    irkit(env, "triage", "--inventory", inv, "--case", CASE, "--host", DCS[0], "--host", DCS[1], check=0)

    # without a confirmation (not a terminal, no --yes) nothing is applied
    proc = irkit(env, "reimage", "--inventory", inv, "--case", CASE, "--hosts", DCS[0], check=2)
    assert "refusing to apply without confirmation" in proc.stderr
    assert not [r for r in _records(env, CASE) if r["action"] == RECORD_START]

    proc = irkit(env, "reimage", "--inventory", inv, "--case", CASE, "--hosts", DCS[0], "--hosts", DCS[1],
                 "--hosts", "t002-h001", "--old-password", rlab.old_password_ref,
                 "--reason", "kworkerd implant confirmed by triage", "--yes", "--format", "json", check=1)
    summary = json.loads(proc.stdout)
    for name in DCS:
        assert summary["hosts"][name]["status"] == "ok" and summary["hosts"][name]["changed"] == 5, summary
    refused = summary["hosts"]["t002-h001"]
    assert refused["status"] == "failed"
    assert refused["message"].startswith("refused: no verified evidence for t002-h001"), refused

    records = _records(env, CASE)
    # --- the host without evidence: refused with an audit record, never touched
    gate = [r for r in records if r["action"] == "step.refused" and r["host"] == "t002-h001"]
    assert len(gate) == 1 and "no verified evidence" in gate[0]["params"]["reason"]
    assert gate[0]["params"]["item"] == "reimage/0/t002-h001"
    assert not [r for r in records if r.get("host") == "t002-h001" and r["action"].startswith(("reimage.", "host_key."))]
    after = lab.refresh()
    assert _host(after, "t002-h001")["host_key_fingerprint"] == before["t002-h001"]["host_key_fingerprint"]
    assert "listen 4444" in _traces(lab, "t002-h001")
    # --- approvals: the reimage step required one; the responder's --yes gave it, on the record
    approvals = [r for r in records if r["action"] == "approval.given"]
    assert approvals and approvals[-1]["params"]["kind"] == "responder confirmation"
    plan_hash = [r for r in records if r["action"] == "run.start"][-1]["params"]["plan"]  # triage runs first
    plan = json.loads(next((Path(env["IRKIT_HOME"]) / "cases" / CASE / "journal").glob(f"plan-{plan_hash[:16]}.json")).read_text())
    assert {i["requires_approval"] for i in plan["items"] if i["action"] == "host.reimage"} == {True}

    pins = (Path(env["IRKIT_HOME"]) / "cases" / CASE / "known_hosts").read_text()
    for name in DCS:
        old_fp = before[name]["host_key_fingerprint"]
        new = _host(after, name)
        new_fp = new["host_key_fingerprint"]
        assert new_fp != old_fp
        # --- old and new fingerprints in the audit log; the new key is the case pin
        start = [r for r in records if r["action"] == RECORD_START and r["host"] == name]
        assert len(start) == 1 and start[0]["params"]["old_host_key_fingerprint"] == old_fp
        assert start[0]["params"]["reason"] == "kworkerd implant confirmed by triage"
        provider = [r for r in records if r["action"] == RECORD_PROVIDER and r["host"] == name]
        assert provider[0]["outcome"] == "ok" and provider[0]["params"]["provider"] == "lab"
        assert provider[0]["params"]["facts"]["new_host_key_fingerprint"] == new_fp
        accepted = [r for r in records if r["action"] == RECORD_KEY_ACCEPTED and r["host"] == name]
        assert len(accepted) == 1
        assert (accepted[0]["params"]["old_host_key_fingerprint"], accepted[0]["params"]["new_host_key_fingerprint"]) \
            == (old_fp, new_fp)
        assert accepted[0]["params"]["reimage_record"] == provider[0]["seq"]
        done = [r for r in records if r["action"] == RECORD_DONE and r["host"] == name]
        assert done[0]["outcome"] == "ok" and done[0]["params"]["new_host_key_fingerprint"] == new_fp
        pin_blob = next(line.split()[2] for line in pins.splitlines() if line.startswith(new["address"] + " "))
        assert fingerprint(base64.b64decode(pin_blob)) == new_fp
        # --- the responder logs in over the new pin (the MSP's responder key and the case key)
        assert key_login(lab, new, "root", info["responder_private_key"])
        assert case_key_login(lab, new, "root", env, CASE)
        # --- the MSP key and the old shared password are dead; the unique escrowed password works
        assert not key_login(lab, new, "root", msp_key)
        assert not key_login(lab, new, "mspadmin", msp_key)
        assert not password_login(lab, new, "mspadmin", old_password)
        escrowed = irkit(env, "escrow", "get", "--case", CASE, "--host", name, "--account", "mspadmin",
                         check=0).stdout.rstrip("\n")
        assert escrowed and escrowed != old_password and password_login(lab, new, "mspadmin", escrowed)
        # --- the seeded breach traces are gone (cron, systemd unit, dropper, implant and its port)
        assert _traces(lab, name) == "", _traces(lab, name)
        step_done = {r["params"]["item"]: r for r in records if r["action"] == "step.done" and r["host"] == name}
        assert step_done[f"reimage/5/{name}"]["params"]["summary"].startswith("clean: ")
    escrowed_passwords = {irkit(env, "escrow", "get", "--case", CASE, "--host", n, "--account", "mspadmin",
                                check=0).stdout for n in DCS}
    assert len(escrowed_passwords) == 2  # unique per host

    # --- max_concurrent {domain-controller: 1}: the two DCs of t001 never ran at the same time
    first, second = sorted((_window(records, n) for n in DCS), key=lambda w: w[0])
    assert first[1] <= second[0], (first, second)
    starts = sorted(_ts(r) for r in records if r["action"] == RECORD_START)
    dones = sorted(_ts(r) for r in records if r["action"] == RECORD_DONE)
    assert dones[0] <= starts[1]

    assert irkit(env, "audit", "verify", "--case", CASE).returncode == 0


@pytest.mark.lab
def test_second_run_changes_nothing(rlab):
    env = rlab.env
    count = len([r for r in _records(env, CASE) if r["action"] == RECORD_START])
    proc = irkit(env, "reimage", "--inventory", rlab.inv, "--case", CASE, "--hosts", DCS[0], "--hosts", DCS[1],
                 "--old-password", rlab.old_password_ref, "--yes", "--format", "json", check=0)
    summary = json.loads(proc.stdout)
    assert summary["ok"] and all(h["changed"] == 0 for h in summary["hosts"].values()), summary
    assert len([r for r in _records(env, CASE) if r["action"] == RECORD_START]) == count


@pytest.mark.lab
def test_non_dc_hosts_of_a_tenant_are_reimaged_together_with_an_audited_override(rlab):
    """The control for the DC test: without a max_concurrent group, hosts of one tenant overlap."""
    lab, env = rlab.lab, rlab.env
    reason = "IR lead: honeypot clones, no evidence value"
    proc = irkit(env, "reimage", "--inventory", rlab.inv, "--case", CASE, "--hosts", "t002-h001",
                 "--hosts", "t002-h002", "--evidence-override", reason, "--old-password", rlab.old_password_ref,
                 "--yes", "--format", "json", check=0)
    assert json.loads(proc.stdout)["ok"]
    records = _records(env, CASE)
    overrides = [r for r in records if r["action"] == "gate.override" and r["host"] == "t002-h001"]
    assert [r["params"]["step_action"] for r in overrides] == ["host.reimage", "accounts.rotate", "ssh_keys.revoke"]
    assert {r["params"]["reason"] for r in overrides} == {reason}
    a, b = (_window(records, n) for n in ("t002-h001", "t002-h002"))
    assert a[0] < b[1] and b[0] < a[1], (a, b)  # the two windows overlap
    for name in ("t002-h001", "t002-h002"):
        assert _traces(lab, name) == ""


@pytest.mark.lab
def test_key_changes_irkit_did_not_make_are_refused(rlab):
    lab, env = rlab.lab, rlab.env
    info = lab.refresh()
    # 1. a host that was never reimaged gets a new host key (an attacker's sshd, a rogue rebuild)
    victim = "t002-h003"
    lab.exec(victim, "rm -f /etc/ssh/ssh_host_ed25519_key* && ssh-keygen -q -t ed25519 -N '' "
                     "-f /etc/ssh/ssh_host_ed25519_key && kill -HUP $(cat /run/sshd.pid)")
    time.sleep(0.3)
    proc = irkit(env, "reimage", "--inventory", rlab.inv, "--case", CASE, "--hosts", victim,
                 "--evidence-override", "test", "--yes", "--format", "json", check=1)
    result = json.loads(proc.stdout)["hosts"][victim]
    assert result["status"] == "failed" and "host key changed — possible interception" in result["message"]
    records = _records(env, CASE)
    assert not [r for r in records if r.get("host") == victim and r["action"].startswith(("reimage.", "host_key."))]
    with home(env):
        assert case_pins(CASE, _host(info, victim)["address"], 22) == set()
    assert "listen 4444" in _traces(lab, victim)  # nothing was done to it

    # 2. a reimaged host offering its OLD key again: the inventory still pins that key
    #    (host_keys), but the case pin replaced it for the rest of the case
    name = DCS[0]
    new_private = (lab.home / "lab" / lab.msp / "hosts" / name / "ssh_host_ed25519_key").read_bytes()
    restore = ("cat > /etc/ssh/ssh_host_ed25519_key && ssh-keygen -y -f /etc/ssh/ssh_host_ed25519_key "
               "> /etc/ssh/ssh_host_ed25519_key.pub && kill -HUP $(cat /run/sshd.pid)")
    lab.exec(name, restore, stdin=rlab.old_private)
    time.sleep(0.3)
    try:
        proc = irkit(env, "reimage", "--inventory", rlab.inv, "--case", CASE, "--hosts", name, "--yes",
                     "--format", "json", check=1)
        result = json.loads(proc.stdout)["hosts"][name]
        assert "host key changed — possible interception" in result["message"]
        assert rlab.before[name]["host_key_fingerprint"] in result["message"]  # the old key is offered...
        # ...and refused in favour of the case pin, although the inventory pins it
        assert _host(info, name)["host_key_fingerprint"] in result["message"].split("pinned", 1)[1]
    finally:
        lab.exec(name, restore, stdin=new_private)
    time.sleep(0.3)
    proc = irkit(env, "reimage", "--inventory", rlab.inv, "--case", CASE, "--hosts", name, "--yes",
                 "--format", "json", check=0)
    assert json.loads(proc.stdout)["hosts"][name]["changed"] == 0
    assert irkit(env, "audit", "verify", "--case", CASE).returncode == 0


@pytest.mark.lab
def test_verify_clean_finds_the_breach_on_a_host_that_was_not_reimaged(rlab, tmp_path):
    """The verifier is not vacuous: on a still-breached host it names every trace."""
    env = rlab.env
    template = yaml.safe_load(default_playbook().read_text())
    verify = dict(template["phases"][0]["steps"][-1])
    verify["targets"] = {"hosts": ["t001-h003"]}
    verify["params"] = {**verify["params"], "old_password": rlab.old_password_ref, "require_reimaged": False}
    playbook = tmp_path / "verify.yml"
    playbook.write_text(yaml.safe_dump({"version": 1, "name": "verify-only",
                                        "phases": [{"name": "verify", "steps": [verify]}]}))
    proc = irkit(env, "contain", "--inventory", rlab.inv, "--playbook", str(playbook), "--case", "REIMG-CHECK",
                 "--yes", "--format", "json", check=1)
    message = json.loads(proc.stdout)["hosts"]["t001-h003"]["message"]
    for expected in ("file /tmp/.kworkerd is present", "kworker-sync.service", "contains '.kworkerd'",
                     "matches '.kworkerd'", "listens on TCP port 4444", "old shared password is set for mspadmin",
                     "old shared password STILL logs in as mspadmin", "MSP key in /root/.ssh/authorized_keys"):
        assert expected in message, (expected, message)
