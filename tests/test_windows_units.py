"""Pure parts of the Windows support: parsers of host output, quoting, firewall ranges, the endpoint's shapes."""

from __future__ import annotations

import ipaddress

import pytest

from ir_toolkit.actions.base import ActionFailed
from ir_toolkit.actions.windows import _json_list, blocked_ranges, parse_quser
from ir_toolkit.lab.winrs import firewall
from ir_toolkit.lab.winrs.model import nt_hash
from ir_toolkit.transports.winrm import decode_clixml, encode_script, ps_quote


def test_quser_parse_real_output_shapes():
    # quser.exe as Windows prints it: the current session marked '>', a disconnected one has no SESSIONNAME
    text = (" USERNAME              SESSIONNAME        ID  STATE   IDLE TIME  LOGON TIME\r\n"
            ">administrator         console             1  Active      none   10/1/2024 9:00 AM\r\n"
            " msp-support           rdp-tcp#0           2  Active          .  10/1/2024 9:05 AM\r\n"
            " acmeadmin                                 3  Disc            5  10/1/2024 8:00 AM\r\n")
    assert parse_quser(text) == [("administrator", 1), ("msp-support", 2), ("acmeadmin", 3)]
    assert parse_quser("") == []


def test_json_list_accepts_powershell_unwrapping_and_refuses_junk():
    assert _json_list("") == []
    assert _json_list('{"Name":"a"}') == [{"Name": "a"}]  # ConvertTo-Json unwraps one-item arrays
    assert _json_list('[{"Name":"a"},{"Name":"b"}]') == [{"Name": "a"}, {"Name": "b"}]
    for bad in ("not json", "[1,2]", '"x"', "{" * 10):
        with pytest.raises(ActionFailed):
            _json_list(bad)


def test_blocked_ranges_are_the_exact_complement():
    allowed = [ipaddress.ip_network("198.18.0.1/32"), ipaddress.ip_network("10.0.0.0/8")]
    ranges = blocked_ranges(allowed)
    assert ranges == ["0.0.0.0-9.255.255.255", "11.0.0.0-198.18.0.0", "198.18.0.2-255.255.255.255",
                      "::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]
    # every address is either allowed or in exactly one blocked range
    for probe in ("9.255.255.255", "10.0.0.1", "198.18.0.1", "198.18.0.2", "255.255.255.255", "0.0.0.0"):
        ip = ipaddress.ip_address(probe)
        inside = sum(ipaddress.ip_address(r.split("-")[0]) <= ip <= ipaddress.ip_address(r.split("-")[1])
                     for r in ranges[:3])
        assert inside + any(ip in n for n in allowed) == 1, probe


def test_ps_quote_never_lets_a_literal_escape():
    assert ps_quote("it's") == "'it''s'"
    assert ps_quote("a\u2019b") == "'a''b'"  # PowerShell treats typographic quotes as quotes too
    for bad in ("a\nb", "a\rb", "a\x00b"):
        with pytest.raises(ValueError):
            ps_quote(bad)


def test_clixml_from_a_hostile_host_stays_one_readable_line():
    hostile = b'#< CLIXML\r\n<Objs xmlns="x"><S S="Error">\x1b[31mred_x000D__x000A_</S></Objs>'
    out = decode_clixml(hostile)
    assert b"<" not in out and b"_x000D_" not in out
    assert decode_clixml(b"#< CLIXML\r\n<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]><Objs>&e;</Objs>") \
        == b"(unreadable PowerShell error output)"


def test_encoded_command_is_utf16le_base64():
    import base64

    assert base64.b64decode(encode_script("whoami")).decode("utf-16-le") == "whoami"


def test_nt_hash_known_vector():
    # MD4(UTF-16LE("password")), the well-known NT hash
    assert nt_hash("password") == "8846F7EAEE8FB117AD06BDD830B7586C"


def test_endpoint_firewall_block_rules_come_before_allow_rules():
    rules = [{"enabled": True, "direction": "Inbound", "action": "Allow", "remote_address": ["Any"],
              "protocol": "TCP", "local_port": "5986"},
             {"enabled": True, "direction": "Inbound", "action": "Block", "remote_address": ["10.0.0.0-10.0.0.9"]},
             {"enabled": False, "direction": "Outbound", "action": "Block", "remote_address": ["Any"]}]
    text = firewall.ruleset(rules)
    assert text.index("ip saddr { 10.0.0.0-10.0.0.9 } drop") < text.index("tcp dport 5986 accept")
    assert "policy drop" in text and text.count(" drop") == 2  # the disabled rule is not loaded
