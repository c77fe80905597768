"""Security review finding 6, without a lab: the isolation ruleset has no blanket ``ct state established``
rule, and the flow facts (``ip``/``ss``/``conntrack`` output, hostile) decide which peers' flows are cut."""

from __future__ import annotations

import ipaddress

from ir_toolkit.facts import flows
from ir_toolkit.actions.isolation import ruleset

ALLOWED = [ipaddress.ip_network("198.18.0.1/32"), ipaddress.ip_network("10.9.0.0/16")]

FACTS = """#addr
1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
2: eth0    inet 198.18.1.10/24 brd 198.18.1.255 scope global eth0\\       valid_lft forever
#ss
tcp ESTAB 0 0 198.18.1.10:22 198.18.0.1:50022
tcp ESTAB 0 0 198.18.1.10:22 10.9.3.4:40000
tcp ESTAB 0 272 198.18.1.10:53846 203.0.113.66:443
tcp SYN-SENT 0 1 198.18.1.10:53850 203.0.113.67:443
tcp TIME-WAIT 0 0 198.18.1.10:53000 203.0.113.68:80
tcp ESTAB 0 0 127.0.0.1:5432 127.0.0.1:40222
udp ESTAB 0 0 198.18.1.10:5353 [::ffff:198.51.100.9]:53
tcp ESTAB 0 0 [::1]:631 [::1]:4000
tcp ESTAB 0 0 garbage:1 \x1b]52;c;AAAA\x07:2
tcp ESTAB 0 0 198.18.1.10:99999 198.51.100.1:1
#ct
tcp      6 431999 ESTABLISHED src=198.18.1.11 dst=198.18.1.10 sport=38498 dport=7000 src=198.18.1.10 dst=198.18.1.11 sport=7000 dport=38498 [ASSURED] mark=0 use=1
tcp      6 431999 ESTABLISHED src=198.18.0.1 dst=198.18.1.10 sport=1 dport=22 src=198.18.1.10 dst=198.18.0.1 [ASSURED]
tcp      6 100 ESTABLISHED src=192.0.2.5 dst=192.0.2.6 sport=1 dport=2 src=192.0.2.6 dst=192.0.2.5 [ASSURED]
udp      17 20 src=127.0.0.1 dst=127.0.0.1 sport=1 dport=2
tcp 6 1 src=not-an-address dst=1.2.3.4
#end
"""


def test_f06_isolation_ruleset_keeps_no_blanket_established_rule():
    script, _ = ruleset(sorted(ALLOWED, key=lambda n: (n.version, n.network_address)), "IR-1")
    assert "established" not in script
    assert "ip saddr { 10.9.0.0/16, 198.18.0.1 } accept" in script
    assert "ip daddr { 10.9.0.0/16, 198.18.0.1 } accept" in script
    # only ICMP errors related to a (still tracked, i.e. allowed) flow pass besides
    assert script.count("ct state related meta l4proto { icmp, ipv6-icmp } accept") == 1
    forward = script.split("chain forward {", 1)[1].split("}", 1)[0]
    assert "accept" not in forward


def test_f06_cut_plan_names_every_peer_not_allowed():
    facts = flows.parse_facts(FACTS)
    assert facts.complete and facts.has_ss and facts.has_conntrack
    assert ipaddress.ip_address("198.18.1.10") in facts.local
    plan = flows.cut_plan(facts, ALLOWED)
    peers = [str(p) for p in plan.peers]
    # C2 stream, a half-open connect, a mapped-v4 UDP peer, the tracked flow of a neighbour, a forwarded flow
    assert peers == ["192.0.2.5", "192.0.2.6", "198.18.1.11", "198.51.100.9", "203.0.113.66", "203.0.113.67"]
    # the responders (controller, allow_from) and loopback are never cut; TIME-WAIT is not live
    assert not {"198.18.0.1", "10.9.3.4", "127.0.0.1", "::1", "203.0.113.68"} & set(peers)
    script = flows.cut_script(plan, facts)
    assert "ss -K -H -n -t -u state connected dst 203.0.113.66 " in script
    assert "conntrack -D -s 198.18.1.11 " in script and "198.18.0.1" not in script
    assert "\x1b" not in script and "garbage" not in script


def test_f06_cut_plan_without_tools_or_listing():
    facts = flows.parse_facts("#addr\n#ss\n#no-ss\n#ct\n#no-conntrack\n#end\n")
    plan = flows.cut_plan(facts, ALLOWED)
    assert plan.empty and len(plan.notes) == 2
    assert not flows.parse_facts("#addr\n#ss\ntcp ESTAB 0 0 1.2.3.4:1 5.6.7.8:2\n").complete  # truncated
    hostile = flows.parse_facts("#ss\n" + "tcp ESTAB 0 0 1.2.3.4:1 5.6.7.8:2\n" * 300_000 + "#end\n")
    assert len(hostile.sockets) <= 200_001
