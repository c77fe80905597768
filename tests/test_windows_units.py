"""Pure parts of the Windows support: parsers of host output, quoting, firewall ranges, the endpoint's shapes."""

from __future__ import annotations

import ipaddress

import pytest

from ir_toolkit.actions.base import ActionFailed
from ir_toolkit.actions.windows import _json_list, blocked_ranges
from ir_toolkit.facts.windows import parse_quser
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


# ----------------------------------------------------------------------------- a lying Windows host (triage)


class LyingHost:
    """A Windows host that answers the triage fetch shapes with what a hostile host might send."""

    def __init__(self, data: bytes, *, claimed_hash: str | None = None, claimed_size: int | None = None,
                 extra: bytes = b"") -> None:
        import hashlib

        self.data, self.extra = data, extra
        self.hash = claimed_hash or hashlib.sha256(data).hexdigest().upper()
        self.size = len(data) if claimed_size is None else claimed_size
        self.alive = True

    def run(self, command, *, stdin=None, timeout=None, deadline=None):
        import base64
        import re

        from ir_toolkit.transports.base import CommandResult

        if ").Length" in command:
            return CommandResult(0, f"{self.size}\r\n".encode(), b"")
        if "Get-FileHash" in command:
            return CommandResult(0, f"{self.hash}\r\n".encode(), b"")
        m = re.search(r"Seek\((\d+), 'Begin'\); \$b = New-Object byte\[\] (\d+)", command)
        if m:
            off, n = int(m.group(1)), int(m.group(2))
            return CommandResult(0, base64.b64encode(self.data[off:off + n] + self.extra) + b"\r\n", b"")
        return CommandResult(0, b"", b"")  # exports, volatile shapes, cleanup


def _collect(tmp_path, host):
    import dataclasses

    from ir_toolkit.triage.collector import HostTarget, collect_host
    from ir_toolkit.triage.schema import Selection, load_catalog

    art = next(a for a in load_catalog().select("ir_triage", "windows").artifacts if a.name == "windows.eventlogs.core")
    art = art.model_copy(update={"paths": ["C:\\Windows\\System32\\winevt\\Logs\\Security.evtx"]})
    target = HostTarget(case="T", msp="m", tenant="t", host="w1", address="198.19.0.9", os="windows", ssh_user="r")
    from ir_toolkit.triage.windows import VOLATILE

    result = collect_host(host, target, Selection("ir_triage", (art,)), directory=tmp_path / "ev")
    files = result.counts.get("collected", 0) - len(VOLATILE)  # the volatile outputs count as collected too
    return result, files


def test_windows_fetch_honest_host_hashes_agree(tmp_path, irkit_home):
    result, files = _collect(tmp_path, LyingHost(b"x" * 300_000))  # two chunks
    assert files == 1 and result.status == "complete", result


def test_windows_fetch_hash_mismatch_is_recorded(tmp_path, irkit_home):
    result, files = _collect(tmp_path, LyingHost(b"evidence", claimed_hash="AB" * 32))
    assert result.counts.get("hash_mismatch") == 1 and files == 0 and result.status != "complete"


def test_windows_fetch_oversized_chunk_is_an_anomaly(tmp_path, irkit_home):
    result, files = _collect(tmp_path, LyingHost(b"evidence", extra=b"more than asked"))
    assert files == 0 and result.anomalies and result.status == "partial"


def test_windows_fetch_claimed_size_over_cap_is_not_fetched(tmp_path, irkit_home):
    result, files = _collect(tmp_path, LyingHost(b"tiny", claimed_size=10 ** 13))
    assert result.counts.get("skipped") == 1 and files == 0
