"""Host-side shell scripts for the Ansible side of bench/bench_contain.py, generated from irkit's own
triage definitions (``ir_toolkit/triage/artifacts``), so both tools collect the same profile.

``volatile_script()`` runs the volatile snapshot's artifacts (processes with command lines and
executable hashes, sockets with owning processes, sessions, routes/ARP, loaded modules) and packs
their outputs into one tar.gz; ``triage_script(profile)`` runs every Linux artifact of the profile:
each ``command`` artifact's command as irkit defines it, and for ``file``/``glob``/``hash`` artifacts
the same paths, name patterns, excludes, depth and size caps through ``find``; the files and the
command outputs go into one tar.gz (``hash`` artifacts: ``sha256sum`` lines, no copy).

What this does NOT do that irkit's collector does (see docs/performance.md): per-file metadata and
hashes recorded on the host *and* re-checked on receipt, a manifest, sealing, encryption, custody
records, hostile-output limits (irkit caps and checks every size and name the host sends).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable

from ir_toolkit.triage.remote import ENV_PREFIX, shell_glob
from ir_toolkit.triage.schema import USER_HOME, Artifact, builtin_catalog

WORK = "/var/tmp/irkit-bench"

#: what the volatile snapshot holds (the issue's list), as irkit's artifact names - used only when irkit
#: has no ``volatile`` profile of its own
VOLATILE = (
    "linux.live.processes", "linux.live.process_details", "linux.live.process_hashes",
    "linux.live.network_sockets", "linux.live.sessions", "linux.live.routes", "linux.live.arp",
    "linux.live.kernel_modules",
)


def _command_lines(artifact: Artifact, out_dir: str) -> list[str]:
    assert artifact.command is not None
    out = f"{out_dir}/{artifact.output_name}"
    # the output cap as irkit's (head -c), the artifact's own timeout
    return [f"timeout {artifact.timeout} env {ENV_PREFIX} sh -c {shlex.quote(artifact.command)} "
            f"2>>{WORK}/errors.txt | head -c {artifact.file_cap} > {shlex.quote(out)}"]


def _roots(artifact: Artifact) -> list[str]:
    """Shell words for the artifact's roots (``%user_home%`` expanded on the host over passwd homes)."""
    glob = artifact.collector in ("glob", "hash")
    words = []
    for path in artifact.paths:
        if path.startswith(USER_HOME):
            rest = path[len(USER_HOME):]
            tail = shell_glob(rest) if glob and rest else shlex.quote(rest) if rest else ""
            words.append(f'"$h"{tail}')
        else:
            words.append(shell_glob(path) if glob else shlex.quote(path))
    return words


def _find_lines(artifact: Artifact) -> list[str]:
    expr: list[str] = []
    if artifact.max_depth is not None:
        expr += ["-maxdepth", str(artifact.max_depth)]
    if artifact.xdev:
        expr.append("-xdev")
    prune = [f"-path {shlex.quote(p)}" for p in artifact.exclude]
    prune += [f"-fstype {t}" for t in artifact.exclude_fstypes]
    if prune:
        expr += ["\\(", " -o ".join(prune), "\\)", "-prune", "-o"]
    expr += ["-type", "f"]
    if artifact.name_patterns:
        expr += ["\\(", " -o ".join(f"-name {shlex.quote(p)}" for p in artifact.name_patterns), "\\)"]
    if artifact.executable:
        expr += ["-perm", "/111"]
    if artifact.perm:
        expr += ["-perm", artifact.perm]
    if artifact.collector == "hash":
        action = f"-exec sha256sum {{}} + >> {WORK}/out/hashes.txt"
    else:
        action = f"-size -{artifact.file_cap + 1}c -print0 >> {WORK}/files.list"
    roots = _roots(artifact)
    home = any(r.startswith('"$h"') for r in roots)
    body = (f"set --; for p in {' '.join(roots)}; do [ -e \"$p\" ] && set -- \"$@\" \"$p\"; done; "
            f"[ $# -eq 0 ] || find -P \"$@\" {' '.join(expr)} {action} 2>>{WORK}/errors.txt")
    if home:
        body = f"for h in $HOMES; do {body}; done"
    return [f"timeout {artifact.timeout} sh -c {shlex.quote(body)} || true"]  # HOMES is exported


def _script(artifacts: Iterable[Artifact], archive: str) -> str:
    lines = [
        "set -u",
        "umask 077",
        f"rm -rf {WORK} && mkdir -p {WORK}/out/live && : > {WORK}/files.list",
        "HOMES=$(cut -d: -f6 /etc/passwd | sort -u | grep '^/'); export HOMES",
    ]
    for artifact in artifacts:
        lines.append(f"# {artifact.name}")
        if artifact.collector == "command":
            lines += _command_lines(artifact, f"{WORK}/out/live")
        else:
            lines += _find_lines(artifact)
    lines += [
        f"tar --create --gzip --file={WORK}/{archive} --ignore-failed-read --null --files-from={WORK}/files.list "
        f"-C {WORK} out 2>>{WORK}/errors.txt",
        f"ls -l {WORK}/{archive}",
    ]
    return "\n".join(lines) + "\n"


def volatile_script() -> str:
    """irkit's own ``volatile`` profile when it has one (the snapshot its playbook takes), else VOLATILE."""
    catalog = builtin_catalog()
    if "volatile" in catalog.profiles:
        return _script(catalog.select("volatile", "linux").artifacts, "volatile.tgz")
    return _script([catalog.artifacts[name] for name in VOLATILE], "volatile.tgz")


def triage_script(profile: str = "ir_triage") -> str:
    selection = builtin_catalog().select(profile, "linux")
    return _script(selection.artifacts, "triage.tgz")


if __name__ == "__main__":  # print the scripts (to read them, or to run one by hand on a lab host)
    import sys

    print(triage_script(sys.argv[1]) if len(sys.argv) > 1 else volatile_script())
