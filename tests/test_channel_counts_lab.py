"""#17: exec channels and new SSH connections per host of the containment steps around the triage, counted
on a real lab with the shipped playbook (tests/channel_counter.py wraps the real transport).

Channels may only go down (each is a fork of the host's sshd session and a shell, and controller CPU);
the fresh logins of the verify phase are exactly the proofs that must still be made: the revoked key
refused as root and as the shared account, the old password refused and the escrowed one accepted - the
responder's own access proven once per phase after the last command that could change it (host.isolate
and ssh_keys.revoke take that proof), see docs/containment.md.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from containment_helpers import REPO, contain_playbook, keyed_env

pytestmark = pytest.mark.lab

CASE = "CNT-1"
HOSTS = 2
#: (phase, action) -> (most channels per host, new SSH connections per host: exact)
EXPECTED = {
    ("access", "responder.ensure_access"): (4, 2),   # the pool's connection, the fresh-login proof
    ("isolate", "host.isolate"): (4, 1),             # the fresh login after the table is loaded (5 with a cut)
    ("revoke", "ssh_keys.revoke"): (16, 3),          # proof after the sshd reload (verify takes it), 2 revoked-key probes
    ("rotate", "accounts.rotate"): (6, 2),           # new password logs in, old one refused (apply is its own proof)
    ("verify", "responder.ensure_access"): (3, 1),   # the phase's proof of responder access
    ("verify", "host.isolate"): (2, 0),              # takes the proof above (nothing changed)
    ("verify", "ssh_keys.revoke"): (3, 2),           # takes it too; the revoked key refused as root and mspadmin
    ("verify", "accounts.rotate"): (2, 2),           # old password refused, escrowed password logs in
}


@pytest.fixture(scope="module")
def cnt(lab_factory):
    return lab_factory("cnt", tenants=1, hosts_per_tenant=HOSTS)


def test_channels_and_fresh_logins_per_host(cnt, tmp_path):
    env = keyed_env(cnt)
    playbook = contain_playbook(cnt, tmp_path / "contain.yml")
    out = tmp_path / "counts.json"
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "channel_counter.py"), str(out), "contain",
                           "--inventory", str(cnt.inventory_path), "--playbook", str(playbook), "--case", CASE,
                           "--yes", "--format", "json"], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    counts = json.loads(out.read_text())
    seen = {}
    for (phase, action), (channels, connections) in EXPECTED.items():
        got_channels = counts.get(f"{phase}|{action}|channels", 0)
        got_connections = counts.get(f"{phase}|{action}|connections", 0)
        seen[(phase, action)] = (got_channels / HOSTS, got_connections / HOSTS)
    print("per host (channels, new connections):", {f"{p}|{a}": v for (p, a), v in seen.items()})
    for key, (channels, connections) in EXPECTED.items():
        assert seen[key][0] <= channels, (key, seen)
        assert seen[key][1] == connections, (key, seen)
