"""Breach traces on a Linux host (``host.verify_clean``): files, systemd units, crontab entries,
listening ports, and processes whose command line holds an implant's name.

Two commands: :func:`trace_files` (paths, units, crontabs, listening sockets; the patterns go into
the script quoted) and :func:`trace_processes` (every process's executable and command line, in a
command of its own that holds none of the patterns, so the scanning shell cannot match itself).
Each parser returns one line per trace found. A line of a kind the command never prints, a crontab
index it was not given or a port that is not hexadecimal is a lie: it fails closed.
"""

from __future__ import annotations

import shlex

from ir_toolkit.facts.base import FactError, Output, Query, integer, lines_of, printable

UNIT_DIRS = "/etc/systemd/system /run/systemd/system /lib/systemd/system /usr/lib/systemd/system " \
            "/etc/systemd/user /usr/lib/systemd/user"
CRONTABS = "/var/spool/cron/crontabs/* /var/spool/cron/* /etc/crontab /etc/cron.d/* /etc/anacrontab"
#: every process: pid, executable, command line (NULs as spaces)
PROCESS_LIST = ("for p in /proc/[0-9]*; do c=$(tr '\\0' ' ' < $p/cmdline 2>/dev/null); "
                "e=$(readlink $p/exe 2>/dev/null); [ -n \"$c$e\" ] && printf 'proc %s %s | %s\\n' "
                "\"${p#/proc/}\" \"$e\" \"$c\"; done; true")


def trace_script(paths: list[str], units: list[str], cron_patterns: list[str], ports: list[int]) -> str | None:
    """The shell that lists what of ``paths``/``units``/``cron_patterns``/``ports`` is on the host (None: nothing asked)."""
    q = shlex.quote
    script: list[str] = []
    for path in paths:
        script.append(f"if [ -e {q(path)} ] || [ -L {q(path)} ]; then echo path {q(path)}; fi")
    for unit in units:
        script.append(f"for d in {UNIT_DIRS}; do [ -d \"$d\" ] && find \"$d\" -name {q(unit)} 2>/dev/null "
                      "| sed 's/^/unit /'; done")
    for i, pattern in enumerate(cron_patterns):
        script.append(f"for f in {CRONTABS}; do [ -f \"$f\" ] && grep -qF -- {q(pattern)} \"$f\" "
                      f"&& echo \"cron {i} $f\"; done")
    if ports:
        script.append("cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk 'NR>0 && $4==\"0A\" {print \"listen \" $2}'")
    return "\n".join(script) + "\ntrue" if script else None


def parse_file_traces(text: str, cron_patterns: list[str], ports: list[int]) -> list[str]:
    """Findings of :func:`trace_script` output (pure)."""
    fact = "traces.files"
    found: list[str] = []
    for n, line in enumerate(lines_of(fact, text, max_lines=1_000_000, max_line=16 * 1024), 1):
        if not line:
            continue
        kind, _, rest = line.partition(" ")
        if kind in ("path", "unit"):
            found.append(f"{'file' if kind == 'path' else 'systemd unit'} {printable(rest)} is present")
        elif kind == "cron":
            index, _, path = rest.partition(" ")
            i = integer(fact, f"line {n}: crontab pattern index", index, high=max(0, len(cron_patterns) - 1))
            if not cron_patterns:
                raise FactError(fact, f"line {n}: a crontab hit although no pattern was asked for")
            found.append(f"crontab {printable(path)} contains {cron_patterns[i]!r}")
        elif kind == "listen":
            # /proc/net/tcp "local_address": ADDR:PORT in hex ("0100007F:1F90")
            if ":" not in rest:
                continue  # the header line's "local_address" column
            hexport = rest.rsplit(":", 1)[-1]
            if not hexport or len(hexport) > 4 or any(c not in "0123456789abcdefABCDEF" for c in hexport):
                raise FactError(fact, f"line {n}: port {printable(hexport[:20])!r} is not hexadecimal")
            if int(hexport, 16) in ports:
                found.append(f"something listens on TCP port {int(hexport, 16)}")
        else:
            raise FactError(fact, f"line {n}: {printable(line[:60])!r} is not a trace line")
    return sorted(set(found))


def trace_files(paths: list[str], units: list[str], cron_patterns: list[str],
                ports: list[int]) -> Query[list[str]] | None:
    """The files/units/crontab/port traces still on the host (None when nothing is asked)."""
    script = trace_script(paths, units, cron_patterns, ports)
    if script is None:
        return None

    def parse(out: Output) -> list[str]:
        if not out.ok:
            raise FactError("traces.files", f"the trace scan failed: {out.last_error()}")
        return parse_file_traces(out.text, cron_patterns, ports)

    return Query("traces.files", script, parse)


def parse_process_traces(text: str, patterns: list[str]) -> list[str]:
    """Processes whose executable or command line holds one of ``patterns`` (pure)."""
    fact = "traces.processes"
    found: list[str] = []
    for n, line in enumerate(lines_of(fact, text, max_lines=1 << 21, max_line=1 << 20), 1):
        if not line:
            continue
        kind, _, rest = line.partition(" ")
        if kind != "proc":
            raise FactError(fact, f"line {n}: {printable(line[:60])!r} is not a process line")
        pid, _, body = rest.partition(" ")
        integer(fact, f"line {n}: pid", pid, high=1 << 22)
        for pattern in patterns:
            if pattern in body:
                found.append(f"process {pid} matches {pattern!r}: {printable(body.strip()[:120])}")
                break
    return sorted(set(found))


def trace_processes(patterns: list[str]) -> Query[list[str]] | None:
    """Processes that match ``patterns`` (None when no pattern is asked)."""
    if not patterns:
        return None

    def parse(out: Output) -> list[str]:
        if not out.ok:
            raise FactError("traces.processes", f"the process scan failed: {out.last_error()}")
        return parse_process_traces(out.text, patterns)

    return Query("traces.processes", PROCESS_LIST, parse)
