"""Active Directory on real Samba AD DCs (one per tenant, `irkit lab`): evidence, MSP accounts out of the
guarded groups with unique escrowed passwords, krbtgt resets, the privileged sweep; a hung DC, a wrong CA,
a password policy that refuses the new password, kill -9 between escrow and the LDAP modify.

One lab (2 tenants x 1 host, a DC each) serves the whole module; the provisioned databases are cached
(`$IRKIT_LAB_CACHE`), so only the first run on a machine pays for `samba-tool domain provision`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from containment_helpers import IRKIT, REPO, contain_playbook, home, irkit, keyed_env

pytestmark = [pytest.mark.lab, pytest.mark.slow]


def _skip_without_samba() -> None:
    import shutil

    for tool in ("samba", "samba-tool", "kinit", "kvno"):
        if not shutil.which(tool, path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"):
            pytest.skip(f"the directory lab needs `{tool}` (apt-get install samba samba-ad-dc krb5-user)")


@pytest.fixture(scope="module")
def adlab(lab_factory):
    _skip_without_samba()
    return lab_factory("adlab", tenants=2, hosts_per_tenant=1, directories=2)


@pytest.fixture(scope="module")
def env(adlab):
    return keyed_env(adlab)


@pytest.fixture(scope="module")
def dirs(adlab):
    return {d["tenant"]: d for d in adlab.info["directories"]}


def endpoint(d, **kw):
    from ir_toolkit.transports.ldap import LdapEndpoint

    return LdapEndpoint(d["dc_address"], d["ldaps_port"], "ldaps", kw.pop("ca_file", d["ca_file"]), d["dc_name"],
                        d["tenant"], **kw)


def binds(d, user, password) -> bool:
    from ir_toolkit.transports.ldap import LdapConnection

    return LdapConnection.try_bind(endpoint(d), f"{user}@{d['domain']}", password)


def tgt(d, user, password) -> bool:
    from ir_toolkit.transports.kerberos import as_req

    return as_req(d["realm"], d["dc_address"], user, password)


def admin(d):
    from ir_toolkit.transports.ldap import LdapConnection

    return LdapConnection.open(endpoint(d), f"{d['admin_user']}@{d['domain']}", d["admin_password"],
                               deadline=time.monotonic() + 30)


def directory_playbook(dest: Path, *, steps: list[str] | None = None, tenants: list[str] | None = None) -> Path:
    data = yaml.safe_load((REPO / "playbooks/msp-breach-containment.yml").read_text())
    phase = next(p for p in data["phases"] if p["name"] == "directory")
    if steps is not None:
        phase["steps"] = [s for s in phase["steps"] if s["action"] in steps]
    if tenants is not None:
        for step in phase["steps"]:
            step["targets"] = {"tenants": tenants}
    data["phases"] = [phase]
    dest.write_text(yaml.safe_dump(data, sort_keys=False))
    return dest


def guarded_membership(d, account: str) -> list[str]:
    """Guarded groups that hold ``account`` (nesting resolved by the DC)."""
    from ir_toolkit.inventory.directory import DEFAULT_GUARDED_GROUPS

    conn = admin(d)
    try:
        base = ",".join(f"DC={x}" for x in d["domain"].split("."))
        dn = conn.search(base, f"(sAMAccountName={account})", ["distinguishedName"])[0][0]
        held = []
        for group in DEFAULT_GUARDED_GROUPS:
            found = conn.search(base, f"(&(objectClass=group)(cn={group}))", ["distinguishedName"])
            if not found:
                continue
            chain = conn.search(base, f"(&(distinguishedName={dn})(memberOf:1.2.840.113556.1.4.1941:={found[0][0]}))",
                                ["cn"])
            if chain:
                held.append(group)
        return held
    finally:
        conn.close()


def audit_records(env, case):
    with home(env):
        from ir_toolkit.audit.log import iter_records

        return list(iter_records(case))


# --------------------------------------------------------------------------- the lab itself


def test_lab_seeds_the_breach_in_every_domain(adlab, dirs):
    assert set(dirs) == {"t001", "t002"}
    shared = {d["msp_account_password"] for d in dirs.values()}
    assert len(shared) == 1  # one shared MSP password across every tenant
    for d in dirs.values():
        assert d["realm"] == d["domain"].upper() and d["ldaps_port"] == 636 and Path(d["ca_file"]).exists()
        for account in d["msp_accounts"]:
            assert binds(d, account, d["msp_account_password"])  # LDAPS, certificate validated by address
            assert "Domain Admins" in guarded_membership(d, account)
        assert "Administrators" in guarded_membership(d, d["msp_accounts"][0])  # also through nesting
        assert d["rogue_accounts"] == ["svc-backup"]
        conn = admin(d)
        try:
            base = ",".join(f"DC={x}" for x in d["domain"].split("."))
            (_, attrs), = conn.search(base, "(sAMAccountName=svc-backup)", ["whenCreated", "memberOf"])
        finally:
            conn.close()
        created = dt.datetime.strptime(str(attrs["whenCreated"][0])[:14], "%Y%m%d%H%M%S")
        age = dt.datetime.utcnow() - created
        assert dt.timedelta(hours=20) < age < dt.timedelta(hours=30), age  # "yesterday"
        assert any("Domain Admins" in str(g) for g in attrs["memberOf"])


def test_wrong_ca_is_refused_before_binding(dirs, tmp_path):
    from ir_toolkit.lab.ca import ensure_ca
    from ir_toolkit.transports.base import TransportError
    from ir_toolkit.transports.ldap import LdapConnection

    other, _ = ensure_ca(tmp_path / "other-ca", "someone else")
    d = dirs["t001"]
    # a wrong password would give auth_failed if anything were sent: the handshake fails first
    with pytest.raises(TransportError) as exc:
        LdapConnection.open(endpoint(d, ca_file=str(other)), f"{d['admin_user']}@{d['domain']}", "wrong-password")
    assert exc.value.kind == "certificate_refused"
    assert "certificate refused before binding" in str(exc.value)


def test_lab_up_again_keeps_the_dcs(adlab):
    proc = adlab.irkit("lab", "up", "--inventory", str(adlab.inventory_path))
    assert proc.returncode == 0, proc.stderr
    assert "domain controllers started" not in proc.stdout + proc.stderr


# --------------------------------------------------------------------------- failures


def test_hung_dc_times_out_and_the_other_tenant_goes_on(adlab, env, dirs, tmp_path):
    data = yaml.safe_load(Path(adlab.inventory_path).read_text())
    for tenant in data["tenants"]:
        if "directory" in tenant:
            tenant["directory"].update({"connect_timeout": 3, "operation_timeout": 4})
    inventory = tmp_path / "inv.yml"
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    playbook = directory_playbook(tmp_path / "dir.yml", steps=["directory.collect_evidence"])
    pids = subprocess.run(["ip", "netns", "pids", dirs["t001"]["netns"]], capture_output=True,
                          text=True).stdout.split()
    assert pids
    for pid in pids:
        os.kill(int(pid), signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        proc = irkit(env, "contain", "--inventory", str(inventory), "--playbook", str(playbook), "--case", "AD-HUNG",
                     "--yes", "--format", "json", timeout=240)
        took = time.monotonic() - t0
    finally:
        for pid in pids:
            os.kill(int(pid), signal.SIGCONT)
    assert proc.returncode != 0
    summary = json.loads(proc.stdout)
    by_host = {h["host"]: h for h in summary["hosts"]} if isinstance(summary.get("hosts"), list) else summary["hosts"]
    assert by_host["t001.lab"]["status"] == "timed_out", by_host
    assert by_host["t002.lab"]["status"] == "ok", by_host
    assert took < 120
    files = list((Path(adlab.home) / "cases" / "AD-HUNG" / "evidence" / "t002" / "t002.lab").glob("directory-*.json"))
    assert len(files) == 1


def test_password_policy_refusal_changes_nothing_and_escrow_says_so(adlab, env, dirs, tmp_path):
    import ldap3

    d = dirs["t002"]
    base = ",".join(f"DC={x}" for x in d["domain"].split("."))
    conn = admin(d)
    conn.modify(base, {"minPwdLength": [(ldap3.MODIFY_REPLACE, ["120"])]})
    conn.close()
    try:
        playbook = directory_playbook(tmp_path / "dir.yml", steps=["directory.collect_evidence",
                                                                   "directory.msp_accounts"], tenants=["t002"])
        proc = irkit(env, "contain", "--inventory", str(adlab.inventory_path), "--playbook", str(playbook),
                     "--case", "AD-POLICY", "--yes", timeout=240)
    finally:
        conn = admin(d)
        conn.modify(base, {"minPwdLength": [(ldap3.MODIFY_REPLACE, ["7"])]})
        conn.close()
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "password policy refused the new password" in out, out
    with home(env):
        from ir_toolkit.secrets import escrow as esc

        entries = esc.Escrow("AD-POLICY").entries(tenant="t002")
    assert entries and all(e.state == esc.ROLLED_BACK for e in entries)
    assert "password policy" in (entries[0].history[-1].get("note") or "")
    first = sorted(d["msp_accounts"])[0]
    # nothing half-done: the refused account's password is unchanged (the shared one still binds)
    assert binds(d, first, d["msp_account_password"])
    refused = [r for r in audit_records(env, "AD-POLICY") if r["action"] == "directory.password_refused"]
    assert refused and refused[0]["outcome"] == "failed"


def test_kill_9_between_escrow_and_modify_then_resume_recovers_the_password(adlab, env, dirs, tmp_path):
    """SIGSTOP irkit the moment the pending escrow line is on disk (before the DC saw the password),
    check it really is in that window, SIGKILL it, then `irkit resume`."""
    d = dirs["t001"]
    playbook = directory_playbook(tmp_path / "dir.yml", steps=["directory.collect_evidence",
                                                               "directory.msp_accounts"], tenants=["t001"])
    first = sorted(d["msp_accounts"])[0]
    in_window = False
    for attempt in range(4):
        case = f"AD-KILL{attempt}"
        escrow_file = Path(adlab.home) / "cases" / case / "escrow" / "t001" / d["domain"] / f"{first}.jsonl"
        child = subprocess.Popen([IRKIT, "contain", "--inventory", str(adlab.inventory_path), "--playbook",
                                  str(playbook), "--case", case, "--yes"], env=env, cwd=REPO,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            try:
                if escrow_file.stat().st_size > 0:
                    break
            except FileNotFoundError:
                pass
            time.sleep(0.0005)
        child.send_signal(signal.SIGSTOP)
        with home(env):
            from ir_toolkit.secrets import escrow as esc
            from ir_toolkit.secrets.keyprovider import KeyProvider

            escrow_private_key = KeyProvider.unlock().escrow_private_key

            entries = esc.Escrow(case).history("t001", d["domain"], first)
            secret = entries[0].decrypt(escrow_private_key()) if entries else None
        in_window = bool(entries) and entries[-1].state == esc.PENDING and not binds(d, first, secret)
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        if in_window:
            break
    assert in_window, "never caught irkit between the escrow and the LDAP modify"
    proc = irkit(env, "resume", "--case", case, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with home(env):
        entry = esc.Escrow(case).history("t001", d["domain"], first)[0]
        assert entry.state == esc.VERIFIED
        password = entry.decrypt(escrow_private_key())
    assert password == secret  # the escrowed secret is the one applied: recoverable
    assert binds(d, first, password)
    got = irkit(env, "escrow", "get", "--case", case, "--tenant", "t001", "--domain", d["domain"], "--account", first,
                check=0).stdout.strip()
    assert got == password


# --------------------------------------------------------------------------- the whole containment


def test_contain_covers_every_domain_and_a_second_run_changes_nothing(adlab, env, dirs, tmp_path):
    playbook = contain_playbook(adlab, tmp_path / "contain.yml")
    case = "AD-CONTAIN"
    proc = irkit(env, "contain", "--inventory", str(adlab.inventory_path), "--playbook", str(playbook),
                 "--case", case, "--yes", "--format", "json", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = audit_records(env, case)
    passwords = {}
    for tenant, d in dirs.items():
        for account in d["msp_accounts"]:
            assert not binds(d, account, d["msp_account_password"]), (tenant, account)
            assert not tgt(d, account, d["msp_account_password"]), (tenant, account)
            assert guarded_membership(d, account) == [], (tenant, account)
            pw = irkit(env, "escrow", "get", "--case", case, "--tenant", tenant, "--domain", d["domain"],
                       "--account", account, check=0).stdout.strip()
            assert binds(d, account, pw)
            passwords[(tenant, account)] = pw
        resets = [r for r in records if r["action"] == "directory.krbtgt_reset" and r["tenant"] == tenant]
        assert len(resets) == 3
        conn = admin(d)
        try:
            base = ",".join(f"DC={x}" for x in d["domain"].split("."))
            kvno = int(conn.search(base, "(sAMAccountName=krbtgt)", ["msDS-KeyVersionNumber"])[0][1]
                       ["msDS-KeyVersionNumber"][0])
        finally:
            conn.close()
        state = json.loads((Path(adlab.home) / "cases" / case / "directory" / tenant / d["domain"] /
                            "krbtgt.json").read_text())
        assert kvno >= state["kvno_before"] + 2 and state["old_tgt"].startswith("refused"), state
        found = [r for r in records if r["action"] == "directory.privileged_member" and r["tenant"] == tenant]
        rogue = [r for r in found if r["params"]["account"] == "svc-backup"]
        assert len(rogue) == 1 and rogue[0]["params"]["in_incident_window"] is True
        assert not {r["params"]["account"] for r in found} & set(d["msp_accounts"])  # MSP accounts are not findings
        evidence = [r for r in records if r["action"] == "directory.evidence" and r["tenant"] == tenant]
        assert len(evidence) == 1
        path = Path(adlab.home) / "cases" / case / evidence[0]["params"]["file"]
        doc = json.loads(path.read_text())
        assert set(doc["msp_accounts"]) == set(d["msp_accounts"])
        assert "Domain Admins" in doc["guarded_groups"]
        assert any(m["sAMAccountName"] == "svc-backup" for m in doc["guarded_groups"]["Domain Admins"]["members"])
        changes = [r["seq"] for r in records if r.get("tenant") == tenant and r["action"] in (
            "directory.group_member_removed", "directory.password_escrowed", "directory.password_reset",
            "directory.krbtgt_reset")]
        assert changes and evidence[0]["seq"] < min(changes)  # evidence before anything changed
    assert len(set(passwords.values())) == len(passwords)  # unique per tenant and account
    assert "svc-backup" in proc.stdout
    verify = irkit(env, "audit", "verify", "--case", case)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    again = irkit(env, "contain", "--inventory", str(adlab.inventory_path), "--playbook", str(playbook),
                  "--case", case, "--yes", "--format", "json", timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    later = audit_records(env, case)[len(records):]
    changes = [r for r in later if r["action"].startswith("directory.") and r["action"] not in
               ("directory.privileged_member",)]
    assert changes == [], changes
    done = [r for r in later if r["action"] == "step.done" and str(r.get("host")).endswith(".lab")]
    assert done and not any(r["params"].get("changed") for r in done)


def test_rotate_rotates_directory_accounts_and_due_only_what_is_due(adlab, env, dirs):
    d = dirs["t001"]
    account = sorted(d["msp_accounts"])[0]
    case = "rotation-adlab"
    proc = irkit(env, "rotate", "--inventory", str(adlab.inventory_path), "--tenant", "t001", "--yes",
                 "--format", "json", timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    pw = irkit(env, "escrow", "get", "--case", case, "--tenant", "t001", "--domain", d["domain"], "--account",
               account, check=0).stdout.strip()
    assert pw and binds(d, account, pw) and not binds(d, account, d["msp_account_password"])
    before = len(audit_records(env, case))
    due = irkit(env, "rotate", "--inventory", str(adlab.inventory_path), "--tenant", "t001", "--due", "--yes",
                "--format", "json", timeout=600)
    assert due.returncode == 0, due.stdout[-2000:] + due.stderr[-2000:]
    later = audit_records(env, case)[before:]
    assert not [r for r in later if r["action"] in ("directory.password_reset", "directory.password_escrowed")]
    assert binds(d, account, pw)  # not due: the escrowed password stays


def test_sweep_disables_only_when_the_playbook_says_so_and_the_step_is_approved(adlab, env, dirs, tmp_path):
    d = dirs["t002"]
    data = yaml.safe_load((REPO / "playbooks/msp-breach-containment.yml").read_text())
    phase = next(p for p in data["phases"] if p["name"] == "directory")
    phase["steps"] = [s for s in phase["steps"] if s["action"] == "directory.collect_evidence"] + [
        {"name": "disable intruder-made admins", "action": "directory.privileged_sweep",
         "params": {"disable": True}, "requires_approval": True, "targets": {"tenants": ["t002"]}}]
    phase["steps"][0]["targets"] = {"tenants": ["t002"]}
    data["phases"] = [phase]
    playbook = tmp_path / "sweep.yml"
    playbook.write_text(yaml.safe_dump(data, sort_keys=False))

    def disabled() -> bool:
        conn = admin(d)
        try:
            base = ",".join(f"DC={x}" for x in d["domain"].split("."))
            uac = int(conn.search(base, "(sAMAccountName=svc-backup)", ["userAccountControl"])[0][1]
                      ["userAccountControl"][0])
        finally:
            conn.close()
        return bool(uac & 0x2)

    # two approvals needed, only the responder's --yes in hand: the step is held, nothing disabled
    inv = yaml.safe_load(Path(adlab.inventory_path).read_text())
    next(t for t in inv["tenants"] if t["name"] == "t002")["approvals_required"] = 2
    strict = tmp_path / "strict.yml"
    strict.write_text(yaml.safe_dump(inv, sort_keys=False))
    held = irkit(env, "contain", "--inventory", str(strict), "--playbook", str(playbook), "--case", "AD-SWEEP1",
                 "--yes", timeout=300)
    assert held.returncode == 3, held.stdout + held.stderr  # incomplete: awaiting approval
    assert not disabled()
    # approved (one approval required, --yes gives it): disabled, recorded
    done = irkit(env, "contain", "--inventory", str(adlab.inventory_path), "--playbook", str(playbook), "--case",
                 "AD-SWEEP2", "--yes", timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert disabled()
    records = audit_records(env, "AD-SWEEP2")
    assert any(r["action"] == "directory.account_disabled" and r["params"]["account"] == "svc-backup"
               for r in records)
    assert not binds(d, "svc-backup", (Path(adlab.home) / "lab" / adlab.msp / "directories" / "t002" /
                                       "rogue_password").read_text().strip())


def test_an_unreachable_dc_is_skipped_for_the_next_one_and_hostile_names_stay_inert(adlab, env, dirs, tmp_path):
    """t001 lists a dead DC first (nothing answers at .99): irkit binds to the next one. A member of Domain
    Admins whose name carries terminal escapes and rich markup is reported, inert, in the summary."""
    import ldap3

    data = yaml.safe_load(Path(adlab.inventory_path).read_text())
    t1 = next(t for t in data["tenants"] if t["name"] == "t001")
    dead = ".".join(dirs["t001"]["dc_address"].split(".")[:3] + ["99"])
    t1["directory"]["domain_controllers"].insert(0, {"address": dead, "name": "dc99.t001.lab"})
    t1["directory"]["connect_timeout"] = 2
    inventory = tmp_path / "inv.yml"
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    d = dirs["t001"]
    base = ",".join(f"DC={x}" for x in d["domain"].split("."))
    conn = admin(d)
    evil_cn = "evil\x1b[31m[bold red]x"
    dn = f"CN={ldap3.utils.dn.escape_rdn(evil_cn)},CN=Users,{base}"
    # the admin connection: add a user in Domain Admins with a hostile CN
    ok = conn._op("add", lambda: conn._conn.add(dn, ["top", "person", "organizationalPerson", "user"],
                                                 {"sAMAccountName": "evil1"}))
    assert ok, conn._conn.result
    conn.modify(f"CN=Domain Admins,CN=Users,{base}", {"member": [(ldap3.MODIFY_ADD, [dn])]})
    conn.close()
    playbook = directory_playbook(tmp_path / "dir.yml", steps=["directory.collect_evidence",
                                                               "directory.privileged_sweep"], tenants=["t001"])
    proc = irkit(env, "contain", "--inventory", str(inventory), "--playbook", str(playbook), "--case", "AD-FAILOVER",
                 "--yes", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "evil1" in proc.stdout and "\x1b" not in proc.stdout + proc.stderr
    records = [r for r in audit_records(env, "AD-FAILOVER") if r["action"] == "directory.privileged_member"]
    evil = next(r for r in records if r["params"]["account"] == "evil1")
    assert "\x1b" not in evil["params"]["dn"]
    ev = next(r for r in audit_records(env, "AD-FAILOVER") if r["action"] == "directory.evidence")
    assert ev["params"]["dc"] == d["dc_address"]  # the live DC, after the dead one
