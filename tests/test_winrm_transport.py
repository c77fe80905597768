"""WinRM transport against the lab's WinRS endpoint (or a real host: see tests/winrs_helpers.py).

Every test talks real WS-Management over HTTPS (NTLM, CA-validated) to a separate endpoint
process; the protocol-level tests drive pywinrm's Protocol directly to check the wire facts
(faults, RelatesTo, TimedOut as HTTP 500) the transport relies on.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
import xml.etree.ElementTree as ET

import pytest

from ir_toolkit.transports.base import AUTH_FAILED, HOST_KEY_CHANGED, TIMED_OUT, UNREACHABLE, TransportError
from ir_toolkit.transports.winrm import (
    CERT_REFUSED,
    WinrmConnection,
    WinrmEndpoint,
    decode_clixml,
    encode_script,
    probe_login,
)
from tests import winrs_helpers as wh


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    real = wh.real_target()
    if real is not None:
        yield real
        return
    t = wh.start_loopback(tmp_path_factory.mktemp("winrs"))
    yield t
    t.stop()


@pytest.fixture
def conn(target):
    c = WinrmConnection.open(target.endpoint, password=target.password)
    yield c
    c.close()


def lab_only(target):
    if not target.is_lab:
        pytest.skip("needs the lab endpoint's model or logs")


# ----------------------------------------------------------------------------- basics


def test_whoami_and_hostname_like_windows(conn, target):
    who = conn.run_cmd("whoami")
    assert who.ok and who.text.strip().lower().endswith("\\" + target.endpoint.user.lower())
    assert who.text.strip() == who.text.strip().lower()  # whoami prints domain\user in lower case
    name = conn.run("hostname")
    assert name.ok and name.text.strip()
    # one shell reused for both commands
    assert conn.alive


def test_unknown_commands_fail_never_silently(conn):
    cmd = conn.run_cmd("definitely-not-a-command /x")
    assert cmd.exit_status == 1
    assert b"is not recognized as an internal or external command" in cmd.stderr
    ps = conn.run("$ErrorActionPreference = 'Stop'\nInvoke-NoSuchThing -Now\nWrite-Output 'after'")
    assert ps.exit_status == 1
    assert b"after" not in ps.stdout  # 'Stop' ends the script at the first error


def test_clixml_stderr_becomes_one_readable_line_per_error(conn):
    result = conn.run("$ErrorActionPreference = 'Stop'\nGet-Frobnicator")
    assert result.exit_status == 1
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Get-Frobnicator : The term 'Get-Frobnicator' is not recognized")
    assert "CommandNotFoundException" in lines[0] and "_x000D_" not in lines[0] and "<" not in lines[0]


def test_decode_clixml_recorded_windows_output():
    # pywinrm's recorded real-Windows stderr (winrm/tests/test_session.py), progress records included
    msg = (b'#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
           b'<Obj S="progress" RefId="0"><TN RefId="0"><T>System.Management.Automation.PSCustomObject</T>'
           b'</TN><MS><I64 N="SourceId">1</I64></MS></Obj>'
           b'<S S="Error">fake : The term \'fake\' is not recognized as the name of a cmdlet. Check _x000D__x000A_</S>'
           b'<S S="Error">the spelling._x000D__x000A_</S><S S="Error">At line:1 char:1_x000D__x000A_</S>'
           b'<S S="Error">+ fake cmdlet_x000D__x000A_</S><S S="Error">+ ~~~~_x000D__x000A_</S>'
           b'<S S="Error">    + CategoryInfo          : ObjectNotFound: (fake:String) [], CommandNotFoundException'
           b'_x000D__x000A_</S><S S="Error">    + FullyQualifiedErrorId : CommandNotFoundException_x000D__x000A_</S>'
           b'<S S="Error"> _x000D__x000A_</S></Objs>')
    assert decode_clixml(msg) == (b"fake : The term 'fake' is not recognized as the name of a cmdlet. Check "
                                  b"the spelling. (CommandNotFoundException)")
    assert decode_clixml(b"plain stderr") == b"plain stderr"
    assert decode_clixml(b"#< CLIXML\r\n<in >dasf<?x>") == b"(unreadable PowerShell error output)"


def test_secret_goes_over_stdin_not_the_command_line(conn, target):
    secret = "S3cret-" + uuid.uuid4().hex
    result = conn.run("$ErrorActionPreference = 'Stop'\n$v = [Console]::In.ReadLine()\nWrite-Output 'read'",
                      stdin=(secret + "\n").encode())
    assert result.ok and result.text.strip() == "read"
    if target.is_lab:
        assert secret not in target.log()


# ----------------------------------------------------------------------------- failures


def test_command_that_never_finishes_times_out_within_the_deadline(conn):
    start = time.monotonic()
    with pytest.raises(TransportError) as err:
        conn.run("Start-Sleep -Seconds 3600", timeout=4)
    took = time.monotonic() - start
    assert err.value.kind == TIMED_OUT
    assert 3.5 <= took < 9, took
    # the command was signalled; the shell still works for the next command
    assert conn.run_cmd("whoami", timeout=15).ok


def test_wrong_password_is_auth_failed(target):
    bad = dataclasses.replace(target.endpoint)
    with pytest.raises(TransportError) as err:
        WinrmConnection.open(bad, password="not-the-password-1!")
    assert err.value.kind == AUTH_FAILED
    assert probe_login(bad, "not-the-password-1!") is False
    assert probe_login(target.endpoint, target.password) is True


def test_certificate_from_another_ca_is_refused_before_any_credential(target, tmp_path):
    from ir_toolkit.lab.winrs import ca

    other, _ = ca.ensure_ca(tmp_path / "other.pem", tmp_path / "other.key", "impostor")
    before = target.log() if target.is_lab else ""
    ep = dataclasses.replace(target.endpoint, ca_file=str(other))
    with pytest.raises(TransportError) as err:
        WinrmConnection.open(ep, password=target.password)
    assert err.value.kind == CERT_REFUSED and "no credential was sent" in str(err.value)
    with pytest.raises(TransportError) as err2:
        probe_login(ep, target.password)  # a refused certificate is never "the password no longer works"
    assert err2.value.kind == CERT_REFUSED
    if target.is_lab:
        # the endpoint never saw an HTTP request (so never an Authorization header)
        assert target.log()[len(before):].count("POST /wsman") == 0


def test_certificate_for_another_name_is_refused(target):
    lab_only(target)
    ep = dataclasses.replace(target.endpoint, address="localhost")  # the certificate names 127.0.0.1 and win-test01
    with pytest.raises(TransportError) as err:
        WinrmConnection.open(ep, password=target.password)
    assert err.value.kind == CERT_REFUSED


def test_no_ca_bundle_means_no_connection(target):
    ep = dataclasses.replace(target.endpoint, ca_file=None)
    with pytest.raises(TransportError) as err:
        WinrmConnection.open(ep, password=target.password)
    assert err.value.kind == CERT_REFUSED


def test_basic_over_plain_http_is_refused_locally(target):
    ep = dataclasses.replace(target.endpoint, scheme="http", auth="basic")
    with pytest.raises(TransportError) as err:
        WinrmConnection.open(ep, password=target.password)
    assert "Basic" in str(err.value)


def test_unreachable_port(target):
    ep = dataclasses.replace(target.endpoint, port=wh.free_port())
    with pytest.raises(TransportError) as err:
        WinrmConnection.open(ep, password=target.password)
    assert err.value.kind == UNREACHABLE


def test_shell_dropped_mid_run(target, tmp_path):
    """The WinRM service restarts while a command runs: one clear error, the connection is marked dead,
    and a new connection works (the engine reopens it for the next step)."""
    lab_only(target)  # restarting WinRM on a real host is not something a test should do
    c = WinrmConnection.open(target.endpoint, password=target.password)
    with pytest.raises(TransportError) as err:
        c.run("Restart-Service -Name WinRM -Force\nStart-Sleep -Seconds 30", timeout=20)
    assert err.value.kind == UNREACHABLE and "outcome unknown" in str(err.value)
    assert not c.alive
    c.close()
    fresh = WinrmConnection.open(target.endpoint, password=target.password)
    assert fresh.run_cmd("whoami").ok
    fresh.close()


def test_shell_gone_between_commands_is_reopened(target):
    lab_only(target)
    c = WinrmConnection.open(target.endpoint, password=target.password)
    old = c.shell_id
    c.protocol.close_shell(old, close_session=False)  # the shell disappears (idle timeout, service restart)
    assert c.run_cmd("whoami").ok  # the command had not started: reopening and running it is safe
    assert c.shell_id != old
    c.close()


# ----------------------------------------------------------------------------- wire facts


def _protocol(target, op=20):
    return WinrmConnection._protocol(target.endpoint, target.password, op, op + 5)


def test_receive_for_still_running_command_is_a_timed_out_fault(target):
    from winrm.exceptions import WinRMOperationTimeoutError

    p = _protocol(target, op=1)
    shell = p.open_shell()
    cid = p.run_command(shell, f"powershell.exe -EncodedCommand {encode_script('Start-Sleep -Seconds 60')}")
    start = time.monotonic()
    with pytest.raises(WinRMOperationTimeoutError):  # pywinrm maps only WSManFault 2150858793 to this
        p.get_command_output_raw(shell, cid)
    assert time.monotonic() - start < 4
    p.cleanup_command(shell, cid)  # Signal terminate; pywinrm asserts RelatesTo
    p.close_shell(shell)  # Delete; pywinrm asserts RelatesTo


def test_unknown_command_id_is_invalid_selectors(target):
    from winrm.exceptions import WSManFaultError

    p = _protocol(target)
    shell = p.open_shell()
    p.run_command(shell, "whoami")
    with pytest.raises(WSManFaultError) as err:
        p.get_command_output_raw(shell, str(uuid.uuid4()).upper())
    assert err.value.wsman_fault_code == 2150858843 and err.value.code == 500
    with pytest.raises(WSManFaultError) as err2:
        p.run_command(str(uuid.uuid4()).upper(), "whoami")  # unknown shell
    assert err2.value.wsman_fault_code == 2150858843
    p.close_shell(shell)


def test_create_response_shape(target):
    lab_only(target)
    p = _protocol(target)
    req = p.build_wsman_header(resource_uri="http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd",
                               action="http://schemas.xmlsoap.org/ws/2004/09/transfer/Create")
    import xmltodict

    req["env:Body"] = {"rsp:Shell": {"rsp:InputStreams": "stdin", "rsp:OutputStreams": "stdout stderr"}}
    raw = p.send_message(xmltodict.unparse({"env:Envelope": req}))
    root = ET.fromstring(raw)
    ns = {"s": "http://www.w3.org/2003/05/soap-envelope", "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
          "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd", "x": "http://schemas.xmlsoap.org/ws/2004/09/transfer",
          "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"}
    assert root.findtext("s:Header/a:RelatesTo", namespaces=ns) == req["env:Header"]["a:MessageID"]
    sel = root.find("s:Body/x:ResourceCreated/a:ReferenceParameters/w:SelectorSet/w:Selector", ns)
    assert sel is not None and sel.get("Name") == "ShellId" and sel.text == sel.text.upper()
    assert root.findtext("s:Body/rsp:Shell/rsp:Owner", namespaces=ns) == target.endpoint.user
    p.close_shell(sel.text)


def test_parallel_commands_on_separate_connections(target):
    results = []

    def one():
        with WinrmConnection.open(target.endpoint, password=target.password) as c:
            results.append(c.run_cmd("whoami").ok)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [True] * 4


def test_certificate_pins_are_enforced_before_any_credential(target):
    with WinrmConnection.open(target.endpoint, password=target.password) as c:
        fp = c.host_key_fingerprint
    assert fp.startswith("SHA256:") and len(fp) == 50
    pinned = dataclasses.replace(target.endpoint, pinned=frozenset({fp}))
    with WinrmConnection.open(pinned, password=target.password) as c:
        assert c.run_cmd("whoami").ok
    before = target.log() if target.is_lab else ""
    other = dataclasses.replace(target.endpoint, pinned=frozenset({"SHA256:" + "A" * 43}))
    with pytest.raises(TransportError) as err:
        WinrmConnection.open(other, password=target.password)
    assert err.value.kind == HOST_KEY_CHANGED
    if target.is_lab:
        assert target.log()[len(before):].count("POST /wsman") == 0


def test_connection_meets_the_transport_contract(conn):
    from ir_toolkit.transports.base import Connection

    assert isinstance(conn, Connection) and conn.kind == "winrm"
    assert conn.run("whoami", deadline=time.monotonic() + 20).ok
