"""The lab's domain controllers: one real Samba AD DC per tenant that has ``directory:``.

Each DC runs ``samba -i`` (Debian's ``samba-ad-dc``, as root, no systemd) in its own network
namespace on the lab bridge, in its own PID namespace (its processes die with it), with every
path of its own under ``directories/<tenant>/samba/`` (``smb.conf`` written by the lab: private,
state, lock, cache and pid directories), so several DCs — of one lab or of several — run at once.
Only the ``ldap`` and ``kdc`` services run (no DNS: nothing is ever forwarded off the lab).

Provisioning (``samba-tool domain provision``, ~8 s) is done once per domain and CACHED as a
tarball (``$IRKIT_LAB_CACHE`` or ``/var/cache/irkit-lab/samba``): a later ``lab up`` — of any lab
using that domain — extracts it in a fraction of a second. Each start then seeds the breach
offline (``samba.samdb`` through Debian's own Python, secrets on stdin):

* every MSP account of the inventory, in Domain Admins, with the lab's ONE shared MSP password
  (the same in every tenant); the MSP account groups exist and hold them, and one of them is
  nested into Administrators (so removal must resolve nesting);
* one intruder-made account in Domain Admins, created "yesterday". AD sets ``whenCreated``
  itself and no LDAP client can write it (a faked clock did not reach Samba's C code either:
  measured), so the lab rewrites ``whenCreated``/``pwdLastSet`` of that one object in the
  *raw* partition file (ldb without Samba's modules) before the DC starts: the DC then serves
  "yesterday" exactly as it would for a real account made then.

LDAPS uses a certificate issued by the lab CA (:mod:`ir_toolkit.lab.ca`) for the DC's address and
name, so clients validate it by address with ``ca_file``.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import socket
import tarfile
import time
from pathlib import Path
from typing import Any

from ir_toolkit.fsutil import write_atomic
from ir_toolkit import childenv
from ir_toolkit.errors import EnvironmentProblem
from ir_toolkit.inventory.model import Inventory, Tenant
from ir_toolkit.lab import netns, procs
from ir_toolkit.lab.ca import ensure_ca, issue_server_cert
from ir_toolkit.lab.layout import HOST_PATH, LAB_RANGE
from ir_toolkit.lab.sshkeys import generate_password, write_private
from ir_toolkit.log import get_logger

CACHE_ENV = "IRKIT_LAB_CACHE"
DEFAULT_CACHE = Path("/var/cache/irkit-lab/samba")
CACHE_FORMAT = 1
#: written into the provisioned DNS zone only (the lab runs no DNS service); never contacted
PROVISION_PLACEHOLDER_IP = "198.18.255.254"
ROGUE_ACCOUNT = "svc-backup"
ROGUE_DESCRIPTION = "Backup service"
NESTED_GROUP = "MSP Remote Support"
SAMBA_TOOLS = {"samba": "samba-ad-dc", "samba-tool": "samba-ad-dc", "kinit": "krb5-user", "kvno": "krb5-user"}

_log = get_logger("irkit.lab")


def directory_tenants(inv: Inventory) -> list[Tenant]:
    """Tenants whose directory the lab builds (a DC address inside the lab range)."""
    import ipaddress

    out = []
    for tenant in inv.tenants:
        d = tenant.directory
        if d is None:
            continue
        if any(dc.address and ipaddress.ip_address(dc.address) in LAB_RANGE for dc in d.domain_controllers):
            out.append(tenant)
    return out


def dc_addresses(inv: Inventory) -> list[str]:
    return [_lab_dc(t)[0] for t in directory_tenants(inv)]


def _lab_dc(tenant: Tenant) -> tuple[str, str]:
    """(address, fqdn) of the DC the lab builds for ``tenant``."""
    d = tenant.directory
    assert d is not None
    import ipaddress

    for dc in d.domain_controllers:
        if dc.address and ipaddress.ip_address(dc.address) in LAB_RANGE:
            return dc.address, dc.name or f"dc01.{d.domain}"
    raise AssertionError("no lab DC")


def check_samba() -> None:
    missing = [f"{tool} ({pkg})" for tool, pkg in SAMBA_TOOLS.items() if not shutil.which(tool, path=HOST_PATH)]
    if missing:
        raise EnvironmentProblem("the lab's domain controllers need: " + ", ".join(missing)
                                 + "; install them (apt-get install samba samba-ad-dc krb5-user)")


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def samba_version() -> str:
    proc = childenv.run(["samba", "--version"], capture_output=True, text=True, timeout=30)
    return proc.stdout.strip()


# --------------------------------------------------------------------------- state


@dataclasses.dataclass
class DcState:
    tenant: str
    domain: str
    netbios: str
    fqdn: str
    address: str
    netns: str
    veth: str
    status: str = "intent"
    spawn_pid: int | None = None
    spawn_start: int | None = None

    def config(self) -> tuple[Any, ...]:
        return (self.tenant, self.domain, self.netbios, self.fqdn, self.address, self.netns, self.veth)


class DcPaths:
    def __init__(self, lab_root: Path, tenant: str) -> None:
        self.root = lab_root / "directories" / tenant
        self.samba = self.root / "samba"
        self.conf = self.samba / "etc" / "smb.conf"
        self.log = self.root / "samba.log"
        self.admin_password = self.root / "admin_password"
        self.krb5_conf = self.root / "krb5.conf"
        self.tls_cert = self.samba / "private" / "tls" / "irkit-dc.pem"
        self.tls_key = self.samba / "private" / "tls" / "irkit-dc.key"


def load_dcs(state_root: Path) -> dict[str, DcState]:
    path = state_root / "directories" / "state.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError:
        raise EnvironmentProblem(f"{path}: unreadable lab DC state; remove the lab by hand") from None
    return {d["tenant"]: DcState(**d) for d in data}


def save_dcs(state_root: Path, dcs: dict[str, DcState]) -> None:
    path = state_root / "directories" / "state.json"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = json.dumps([dataclasses.asdict(d) for d in dcs.values()], indent=1, sort_keys=True) + "\n"
    write_atomic(path, text.encode(), mode=0o600)


def dc_netns(lab_id: str, tenant: str) -> str:
    return f"irk-{lab_id}-dc-{tenant}"[:200]


def dc_veth(lab_id: str, index: int) -> str:
    return f"irk{lab_id}d{index}"


# --------------------------------------------------------------------------- provisioning cache


def _cache_key(domain: str, netbios: str, hostname: str) -> str:
    text = json.dumps([CACHE_FORMAT, samba_version(), domain, netbios, hostname])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def provisioned_tarball(domain: str, netbios: str, hostname: str) -> Path:
    """The cached provisioned database of ``domain`` (built once, under a lock)."""
    base = cache_dir()
    try:
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise EnvironmentProblem(f"cannot create the lab's provisioning cache {base}: {exc.strerror}") from None
    tarball = base / f"{domain}-{_cache_key(domain, netbios, hostname)}.tar"
    if tarball.exists():
        return tarball
    fd = os.open(base / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if tarball.exists():
            return tarball
        work = base / f".build-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(mode=0o700)
        admin = generate_password(24) + "aA1!"
        t0 = time.monotonic()
        argv = ["samba-tool", "domain", "provision", f"--targetdir={work / 'samba'}", f"--realm={domain.upper()}",
                f"--domain={netbios}", "--server-role=dc", "--dns-backend=SAMBA_INTERNAL", "--use-rfc2307",
                f"--host-name={hostname}", f"--host-ip={PROVISION_PLACEHOLDER_IP}", "--option=interfaces=lo",
                "--option=dns forwarder="]
        # samba-tool takes an admin password only as an option (argv): provision with its own random
        # one, then set the lab's through Samba's Python bindings (stdin).
        proc = childenv.run(argv, capture_output=True, text=True, timeout=300, inherit=False,
                            env={"PATH": HOST_PATH, "LANG": "C.UTF-8"})
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
            raise EnvironmentProblem(f"samba-tool domain provision {domain} failed: {detail[0][:300]}")
        _run_samba_python(_SET_ADMIN, {"url": str(work / "samba" / "private" / "sam.ldb"),
                                       "conf": str(work / "samba" / "etc" / "smb.conf"), "password": admin})
        write_private(work / "admin_password", admin.encode())
        tmp = tarball.with_name(tarball.name + ".tmp")
        with tarfile.open(tmp, "w") as tar:
            tar.add(work / "samba", arcname="samba")
            tar.add(work / "admin_password", arcname="admin_password")
        tmp.chmod(0o600)
        os.replace(tmp, tarball)
        shutil.rmtree(work, ignore_errors=True)
        _log.info("lab.dc.provisioned", domain=domain, seconds=round(time.monotonic() - t0, 1))
        return tarball
    finally:
        os.close(fd)


def _extract(tarball: Path, dest: Path) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True, mode=0o700)
    with tarfile.open(tarball) as tar:
        if hasattr(tarfile, "tar_filter"):
            tar.extractall(dest, filter="tar")
            return
        # Python < 3.11.4 (Debian 12's 3.11.2) has no extraction filters: the same checks by hand
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if member.name.startswith("/") or ".." in parts or not (member.isfile() or member.isdir()
                                                                    or member.issym() or member.islnk()):
                raise EnvironmentProblem(f"refusing to extract {member.name!r} from the DC provisioning cache")
            if (member.issym() or member.islnk()) and (member.linkname.startswith("/") or ".." in Path(member.linkname).parts):
                raise EnvironmentProblem(f"refusing to extract the link {member.name!r} from the DC provisioning cache")
            member.mode &= 0o7777 & ~0o6000  # no setuid/setgid, as the 'tar' filter does
        tar.extractall(dest)  # noqa: S202 - members checked above


# --------------------------------------------------------------------------- offline seeding (Debian's python3)

_SET_ADMIN = """
import json, sys
from samba.samdb import SamDB
from samba.param import LoadParm
from samba.auth import system_session
spec = json.load(sys.stdin)
lp = LoadParm(); lp.load(spec["conf"])
db = SamDB(url=spec["url"], session_info=system_session(), lp=lp)
db.setpassword("(sAMAccountName=Administrator)", spec["password"], force_change_at_next_login=False)
"""

_SEED = """
import json, sys, ldb
from samba.samdb import SamDB
from samba.param import LoadParm
from samba.auth import system_session
spec = json.load(sys.stdin)
lp = LoadParm(); lp.load(spec["conf"])
db = SamDB(url=spec["url"], session_info=system_session(), lp=lp)
# the lab's shared MSP password is whatever the lab generated: complexity off while seeding, then on
props = db.search(base=db.domain_dn(), scope=ldb.SCOPE_BASE, attrs=["pwdProperties"])[0]["pwdProperties"][0]
m = ldb.Message(); m.dn = ldb.Dn(db, db.domain_dn())
m["pwdProperties"] = ldb.MessageElement("0", ldb.FLAG_MOD_REPLACE, "pwdProperties"); db.modify(m)
for group in spec["groups"]:
    db.newgroup(group["name"], description=group.get("description"))
    for parent in group.get("member_of", []):
        db.add_remove_group_members(parent, [group["name"]], add_members_operation=True)
for user in spec["users"]:
    db.newuser(user["name"], user["password"], description=user.get("description"))
    for group in user.get("groups", []):
        db.add_remove_group_members(group, [user["name"]], add_members_operation=True)
m["pwdProperties"] = ldb.MessageElement(str(props), ldb.FLAG_MOD_REPLACE, "pwdProperties"); db.modify(m)
rogue = spec.get("backdate")
if rogue:
    dn = str(db.search(base=db.domain_dn(), expression="(sAMAccountName=%s)" % rogue["name"], attrs=[])[0].dn)
    raw = ldb.Ldb()
    raw.connect(spec["partition"], flags=0, options=["modules:"])
    m = ldb.Message(); m.dn = ldb.Dn(raw, dn)
    m["whenCreated"] = ldb.MessageElement(rogue["when"], ldb.FLAG_MOD_REPLACE, "whenCreated")
    m["whenChanged"] = ldb.MessageElement(rogue["when"], ldb.FLAG_MOD_REPLACE, "whenChanged")
    m["pwdLastSet"] = ldb.MessageElement(str(rogue["nt_time"]), ldb.FLAG_MOD_REPLACE, "pwdLastSet")
    raw.modify(m)
print("seeded")
"""


def _run_samba_python(script: str, spec: dict[str, Any]) -> None:
    """Run ``script`` with Debian's python3 (Samba's bindings live there), ``spec`` on stdin."""
    py = "/usr/bin/python3"
    proc = childenv.run([py, "-c", script], input=json.dumps(spec).encode(), capture_output=True, timeout=300,
                        inherit=False, env={"PATH": HOST_PATH, "LANG": "C.UTF-8"})
    if proc.returncode != 0:
        lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise EnvironmentProblem(f"seeding the lab DC failed: {(lines[-1] if lines else 'exit ' + str(proc.returncode))[:300]}")


def _nt_time(epoch: float) -> int:
    return int((epoch + 11644473600) * 10_000_000)


def _ldap_time(epoch: float) -> str:
    return time.strftime("%Y%m%d%H%M%S.0Z", time.gmtime(epoch))


def seed(paths: DcPaths, tenant: Tenant, msp_password: str, rogue_password: str, now: float) -> None:
    d = tenant.directory
    assert d is not None
    groups = [{"name": g, "description": "MSP staff"} for g in d.msp_account_groups]
    groups.append({"name": NESTED_GROUP, "description": "MSP remote support", "member_of": ["Administrators"]})
    users = []
    for i, name in enumerate(d.msp_accounts):
        member = ["Domain Admins", *d.msp_account_groups]
        if i == 0:
            member.append(NESTED_GROUP)  # privileged through nesting too
        users.append({"name": name, "password": msp_password, "description": "MSP managed services account",
                      "groups": member})
    users.append({"name": ROGUE_ACCOUNT, "password": rogue_password, "description": ROGUE_DESCRIPTION,
                  "groups": ["Domain Admins"]})
    yesterday = now - 86400
    partition = paths.samba / "private" / "sam.ldb.d" / f"{d.base_dn.upper()}.ldb"
    _run_samba_python(_SEED, {
        "url": str(paths.samba / "private" / "sam.ldb"), "conf": str(paths.samba / "etc" / "smb.conf"),
        "domain": d.domain, "groups": groups, "users": users, "partition": str(partition),
        "backdate": {"name": ROGUE_ACCOUNT, "when": _ldap_time(yesterday), "nt_time": _nt_time(yesterday)},
    })


def smb_conf(paths: DcPaths, dc: DcState) -> str:
    s = paths.samba
    return f"""# irkit lab DC of tenant {dc.tenant} (written by `irkit lab up`; see ir_toolkit/lab/dc.py)
[global]
\tnetbios name = {dc.fqdn.split('.')[0].upper()[:15]}
\trealm = {dc.domain.upper()}
\tworkgroup = {dc.netbios}
\tserver role = active directory domain controller
\tserver services = ldap kdc
\tinterfaces = {dc.address}
\tbind interfaces only = yes
\tprefork children = 2
\tprivate dir = {s}/private
\tlock directory = {s}
\tstate directory = {s}/state
\tcache directory = {s}/cache
\tpid directory = {s}/run
\tncalrpc dir = {s}/run/ncalrpc
\tbinddns dir = {s}/bind-dns
\twinbindd socket directory = {s}/run/winbindd
\tntp signd socket directory = {s}/run/ntp_signd
\tlog file = {paths.root}/log.%m
\tlogging = file
\tlog level = 1
\ttls enabled = yes
\ttls keyfile = {paths.tls_key}
\ttls certfile = {paths.tls_cert}
\ttls cafile =
\tidmap_ldb:use rfc2307 = yes
"""


def krb5_conf(dc: DcState) -> str:
    realm = dc.domain.upper()
    return (f"[libdefaults]\n default_realm = {realm}\n dns_lookup_kdc = false\n dns_lookup_realm = false\n"
            f" rdns = false\n udp_preference_limit = 1\n[realms]\n {realm} = {{\n  kdc = {dc.address}\n }}\n")


# --------------------------------------------------------------------------- up / down / info


def ensure(lab: Any, inv: Inventory, prefixlen: int, bridge: str, msp_password: str, notes: list[str]) -> list[str]:
    """Make the lab's DCs match the inventory; returns the tenants whose DC was (re)started."""
    tenants = directory_tenants(inv)
    root = lab.paths.root
    dcs = load_dcs(root)
    if not tenants and not dcs:
        return []
    if tenants:
        check_samba()
    desired: dict[str, DcState] = {}
    taken = {x.veth for x in dcs.values()}
    for tenant in tenants:
        address, fqdn = _lab_dc(tenant)
        d = tenant.directory
        assert d is not None
        prior = dcs.get(tenant.name)
        veth = prior.veth if prior else next(dc_veth(lab.lab_id, j) for j in range(10000)
                                              if dc_veth(lab.lab_id, j) not in taken)
        taken.add(veth)
        desired[tenant.name] = DcState(tenant.name, d.domain, d.netbios, fqdn, address,
                                       dc_netns(lab.lab_id, tenant.name), veth)
    keep = {}
    for name, dc in dcs.items():
        want = desired.get(name)
        if (want and dc.status == "running" and dc.config() == want.config()
                and procs.alive(dc.spawn_pid, dc.spawn_start) and netns.netns_path(dc.netns).exists()
                and _listening(dc.address, 636)):
            keep[name] = dc
    stale = [dc for name, dc in dcs.items() if name not in keep]
    stop(lab, stale)
    for dc in stale:
        dcs.pop(dc.tenant, None)
    save_dcs(root, dcs)
    started = []
    ca_cert, ca_key = ensure_ca(root / "ca", lab.msp)
    now = time.time()
    for tenant in tenants:
        if tenant.name in keep:
            continue
        dc = desired[tenant.name]
        paths = DcPaths(root, tenant.name)
        paths.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        tarball = provisioned_tarball(dc.domain, dc.netbios, dc.fqdn.split(".")[0])
        _extract(tarball, paths.root)
        (paths.root / "admin_password").chmod(0o600)
        issue_server_cert(ca_cert, ca_key, paths.tls_cert, paths.tls_key, dns_names=[dc.fqdn, dc.domain],
                          addresses=[dc.address])
        write_private(paths.conf, smb_conf(paths, dc).encode(), 0o644)
        for sub in ("run", "cache", "state"):
            (paths.samba / sub).mkdir(exist_ok=True)
        write_private(paths.krb5_conf, krb5_conf(dc).encode(), 0o644)
        rogue_file = paths.root / "rogue_password"
        rogue = generate_password(20) + "aA1!"
        write_private(rogue_file, rogue.encode())
        seed(paths, tenant, msp_password, rogue, now)
        dcs[tenant.name] = dc
        save_dcs(root, dcs)  # intent before the namespace exists
        netns.ip_batch(netns.host_lines(dc.netns, dc.veth, bridge))
        _start(dc, paths, prefixlen)
        save_dcs(root, dcs)
        started.append(tenant.name)
    failures = _wait(root, [dcs[t] for t in started])
    for name in started:
        if name not in failures:
            dcs[name].status = "running"
    save_dcs(root, dcs)
    if failures:
        shown = "; ".join(f"{t}: {why}" for t, why in sorted(failures.items()))
        raise EnvironmentProblem(f"lab domain controllers did not start ({shown})")
    if started:
        notes.append(f"domain controllers started for: {', '.join(started)}")
    return started


def _start(dc: DcState, paths: DcPaths, prefixlen: int) -> None:
    ns = str(netns.netns_path(dc.netns))
    for args in (["addr", "replace", f"{dc.address}/{prefixlen}", "dev", "eth0"], ["link", "set", "eth0", "up"],
                 ["link", "set", "lo", "up"]):
        proc = childenv.run(["ip", "-n", dc.netns, *args], capture_output=True, text=True)
        if proc.returncode != 0:
            raise EnvironmentProblem(f"ip -n {dc.netns} {' '.join(args)}: {proc.stderr.strip()[:200]}")
    nsenter = shutil.which("nsenter", path=HOST_PATH) or "nsenter"
    unshare = shutil.which("unshare", path=HOST_PATH) or "unshare"
    samba = shutil.which("samba", path=HOST_PATH) or "samba"
    argv = [nsenter, f"--net={ns}", "--", unshare, "--pid", "--fork", "--mount", "--propagation", "private", "--",
            samba, "-i", "-s", str(paths.conf), "--model=prefork"]
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(paths.log), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    procs.no_inherit()  # no controller descriptor (e.g. a flock) lives on in the DC
    dc.spawn_pid = childenv.spawn(nsenter, argv, {"PATH": HOST_PATH, "LANG": "C.UTF-8"}, file_actions=actions,
                                  setsid=True)
    dc.spawn_start = procs.start_time(dc.spawn_pid)


def _listening(address: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def _wait(root: Path, dcs: list[DcState]) -> dict[str, str]:
    failures: dict[str, str] = {}
    pending = {dc.tenant: dc for dc in dcs}
    deadline = time.monotonic() + 90
    while pending and time.monotonic() < deadline:
        for name, dc in list(pending.items()):
            if not procs.alive(dc.spawn_pid, dc.spawn_start):
                failures[name] = "samba exited: " + _tail(DcPaths(root, name).log)
                del pending[name]
            elif _listening(dc.address, 636) and _listening(dc.address, 88):
                del pending[name]
        if pending:
            time.sleep(0.2)
    for name in pending:
        failures[name] = "not listening in time: " + _tail(DcPaths(root, name).log)
    return failures


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(lines[-3:])[:300] or "(empty log)"


def stop(lab: Any, dcs: list[DcState]) -> None:
    """Kill every process of ``dcs`` (by netns identity and recorded pid), delete netns + veth + files."""
    if not dcs:
        return
    inodes = {}
    for dc in dcs:
        ino = netns.netns_inode(dc.netns)
        if ino is not None:
            inodes[ino] = dc
    members = procs.netns_members(set(inodes))
    pids = {pid for group in members.values() for pid in group}
    for dc in dcs:
        if dc.spawn_pid and procs.alive(dc.spawn_pid, dc.spawn_start):
            pids.add(dc.spawn_pid)
    left = procs.kill_and_wait(pids)
    procs.reap(dc.spawn_pid for dc in dcs if dc.spawn_pid)
    if left:
        raise EnvironmentProblem(f"lab DC processes did not exit after SIGKILL: {left[:10]}")
    netns.ip_batch(netns.delete_lines([dc.netns for dc in dcs], []), force=True)
    deadline = time.monotonic() + 10
    while any(netns.link_exists(dc.veth) for dc in dcs) and time.monotonic() < deadline:
        time.sleep(0.02)
    netns.ip_batch(netns.delete_lines([], [dc.veth for dc in dcs]), force=True)
    for dc in dcs:
        shutil.rmtree(DcPaths(lab.paths.root, dc.tenant).samba, ignore_errors=True)
        dc.status = "stopped"


def down(lab: Any) -> int:
    dcs = load_dcs(lab.paths.root)
    stop(lab, list(dcs.values()))
    if dcs or (lab.paths.root / "directories").exists():
        save_dcs(lab.paths.root, {})
    return len(dcs)


def info(lab: Any, inv: Inventory | None, msp_password: str | None) -> list[dict[str, Any]]:
    dcs = load_dcs(lab.paths.root)
    out = []
    for name, dc in sorted(dcs.items()):
        paths = DcPaths(lab.paths.root, name)
        tenant = None
        if inv is not None:
            try:
                tenant = inv.tenant(name)
            except KeyError:
                tenant = None
        d = tenant.directory if tenant is not None else None
        out.append({
            "tenant": name, "domain": dc.domain, "realm": dc.domain.upper(), "netbios": dc.netbios,
            "dc_name": dc.fqdn, "dc_address": dc.address, "ldaps_port": 636,
            "ca_file": str(lab.paths.root / "ca" / "ca.pem"),
            "krb5_conf": str(paths.krb5_conf),
            "msp_accounts": list(d.msp_accounts) if d else [],
            "msp_account_password": msp_password,
            "admin_user": "Administrator",
            "admin_password": _read(paths.admin_password),
            "admin_password_file": str(paths.admin_password),
            "rogue_accounts": [ROGUE_ACCOUNT],
            "running": procs.alive(dc.spawn_pid, dc.spawn_start),
            "pid": dc.spawn_pid,
            "netns": dc.netns,
        })
    return out


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None



