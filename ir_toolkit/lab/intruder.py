"""A live intruder session between two lab hosts: a TCP stream that is open before irkit acts.

The *collector* listens on one host and appends every line it receives, with a
counter, to :data:`RECEIVED`; the *beacon* on another host connects to it and
writes one line every ``interval`` seconds over that one connection (a C2 beacon,
an exfiltration stream), logging to :data:`BEACON_LOG` when a write fails. Both
are perl (the lab already needs it) and run detached in their host, so they
survive the ``irkit lab exec`` that started them. Tests and ``irkit lab`` use
these to prove that isolation ends a session that predates it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

RECEIVED = "/var/tmp/irkit-lab-session.received"
BEACON_LOG = "/var/tmp/irkit-lab-session.beacon"
BEACON_MARK = "irkit-lab-beacon"
COLLECTOR_MARK = "irkit-lab-collector"
DEFAULT_PORT = 8443

_COLLECTOR = r"""
use strict; use IO::Socket::INET;
$0 = "%(mark)s";
my $s = IO::Socket::INET->new(LocalPort => %(port)d, Listen => 8, ReuseAddr => 1) or die "listen: $!";
while (my $c = $s->accept) {
  if (fork() == 0) {
    while (my $l = <$c>) { open(my $f, ">>", "%(received)s") or next; print $f $l; close $f; }
    exit 0;
  }
  close $c;
}
"""

_BEACON = r"""
use strict; use IO::Socket::INET; use Time::HiRes qw(sleep);
$0 = "%(mark)s";
$SIG{PIPE} = "IGNORE";
my $c; for (1..50) { $c = IO::Socket::INET->new(PeerAddr => "%(peer)s", PeerPort => %(port)d) and last; sleep 0.1; }
$c or do { open(my $f, ">>", "%(log)s"); print $f "connect failed: $!\n"; exit 1 };
$c->autoflush(1);
open(my $f, ">>", "%(log)s"); print $f "connected\n"; close $f;
my $n = 0;
while (1) {
  $n++;
  unless (defined(syswrite($c, "beat $n\n"))) {
    open(my $g, ">>", "%(log)s"); print $g "write failed after $n: $!\n"; close $g; exit 2;
  }
  sleep %(interval)s;
}
"""


def _detached(script: str) -> str:
    return f"setsid perl -e {_quote(script)} </dev/null >/dev/null 2>&1 &"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


@dataclass
class LiveSession:
    """A running beacon -> collector session between two lab hosts."""

    lab: Any  # ir_toolkit.lab.Lab (anything with .exec(host, argv))
    beacon_host: str
    collector_host: str
    collector_address: str
    port: int = DEFAULT_PORT

    def _sh(self, host: str, cmd: str) -> str:
        return self.lab.exec(host, ["/bin/sh", "-c", cmd]).stdout.decode(errors="replace")

    def received(self) -> int:
        """Lines the collector has received so far."""
        out = self._sh(self.collector_host, f"cat {RECEIVED} 2>/dev/null | wc -l").strip()
        return int(out) if out.isdigit() else 0

    def beacon_log(self) -> str:
        return self._sh(self.beacon_host, f"cat {BEACON_LOG} 2>/dev/null")

    def sockets(self, host: str) -> str:
        """``ss`` lines of ``host`` for the session's port (empty when the connection is gone)."""
        return self._sh(host, f"ss -H -n -t state connected '( sport = :{self.port} or dport = :{self.port} )'")

    def beacon_running(self) -> bool:
        return bool(self._sh(self.beacon_host, _pids(BEACON_MARK)).split())

    def stop(self) -> None:
        for host, mark in ((self.beacon_host, BEACON_MARK), (self.collector_host, COLLECTOR_MARK)):
            self._sh(host, f"for p in $({_pids(mark)}); do kill -9 $p 2>/dev/null; done; true")


def _pids(mark: str) -> str:
    """Shell that prints the pids of the processes named ``mark`` (perl sets its argv to it)."""
    return (f"for p in /proc/[0-9]*; do if [ \"$(tr -d '\\0' < $p/cmdline 2>/dev/null)\" = '{mark}' ]; "
            "then echo ${p#/proc/}; fi; done")


def start_live_session(lab: Any, beacon_host: str, collector_host: str, collector_address: str, *,
                       port: int = DEFAULT_PORT, interval: float = 0.1, timeout: float = 10) -> LiveSession:
    """Start the collector on ``collector_host`` and a beacon on ``beacon_host`` that connects to it;
    returns once data flows."""
    session = LiveSession(lab, beacon_host, collector_host, collector_address, port)
    session._sh(collector_host, f"rm -f {RECEIVED}; " + _detached(
        _COLLECTOR % {"mark": COLLECTOR_MARK, "port": port, "received": RECEIVED}))
    session._sh(beacon_host, f"rm -f {BEACON_LOG}; " + _detached(
        _BEACON % {"mark": BEACON_MARK, "peer": collector_address, "port": port, "log": BEACON_LOG,
                   "interval": repr(float(interval))}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if session.received() >= 3:
            return session
        time.sleep(0.1)
    raise RuntimeError(f"the live session {beacon_host} -> {collector_host}:{port} carried no data "
                       f"(beacon log: {session.beacon_log().strip()!r})")
