"""WS-Management SOAP as a Windows WinRM service speaks it (the WinRS ``cmd`` shell).

Element names, namespaces, selectors, fault codes and message order follow the real-Windows
exchanges recorded in pypsrp (``tests/tests_pypsrp/responses/test_winrs_*.yml`` at 42a34ed:
``_standard``, ``_operation_timeout``, ``_send``, ``_bad_cmd_id``, ``_fail_poll_process``) and
[MS-WSMV]; the code here is irkit's own. Every response carries its own ``a:MessageID`` and
``a:RelatesTo`` = the request's MessageID (pywinrm asserts it on Signal and Delete); shell and
command ids are upper-case GUIDs; faults are HTTP 500 with a ``f:WSManFault`` detail.
"""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "x": "http://schemas.xmlsoap.org/ws/2004/09/transfer",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "p": "http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
    "f": "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault",
}
SHELL_URI = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd"
ANONYMOUS = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous"
A_CREATE = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create"
A_DELETE = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete"
A_COMMAND = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Command"
A_RECEIVE = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Receive"
A_SEND = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Send"
A_SIGNAL = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Signal"
A_FAULT = "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault"
STATE_RUNNING = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Running"
STATE_DONE = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Done"
SIGNAL_PREFIX = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/signal/"

# WSManFault codes seen from real Windows (pypsrp recordings)
TIMED_OUT = 2150858793          # w:TimedOut (Receive with nothing to report within OperationTimeout)
INVALID_SELECTORS = 2150858843  # w:InvalidSelectors (unknown ShellId / CommandId)
INVALID_PARAMETER = 87          # w:InvalidParameter
FILE_NOT_FOUND = 2147942402     # w:InternalError 0x80070002


class Fault(Exception):
    """A SOAP fault to send back (always HTTP 500, as Windows does)."""

    def __init__(self, code: str, subcode: str, reason: str, wsman_code: int, message: str = "",
                 detail: str = "") -> None:
        super().__init__(reason)
        self.code, self.subcode, self.reason = code, subcode, reason
        self.wsman_code, self.message, self.detail = wsman_code, message or reason, detail


def timed_out() -> Fault:
    text = "The WS-Management service cannot complete the operation within the time specified in OperationTimeout.  "
    return Fault("s:Receiver", "w:TimedOut", text, TIMED_OUT)


def shell_not_found(shell_id: str) -> Fault:
    return Fault("s:Sender", "w:InvalidSelectors",
                 "The WS-Management service cannot process the request because the request contained invalid "
                 "selectors for the resource. ", INVALID_SELECTORS,
                 f"The request for the Windows Remote Shell with ShellId {shell_id} failed because the shell was "
                 "not found on the server. Possible causes are: the specified ShellId is incorrect or the shell "
                 "no longer exists on the server. Provide the correct ShellId or create a new shell and retry "
                 "the operation. ",
                 "http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/UnexpectedSelectors")


def command_not_found() -> Fault:
    return Fault("s:Sender", "w:InvalidSelectors",
                 "The WS-Management service cannot process the request because the request contained invalid "
                 "selectors for the resource. ", INVALID_SELECTORS,
                 "The Windows Remote Shell received a request to perform an operation on a command identifier "
                 "that does not exist. Either the command has completed execution or the client specified an "
                 "invalid command identifier. ",
                 "http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/UnexpectedSelectors")


def invalid_parameter() -> Fault:
    return Fault("s:Sender", "w:InvalidParameter", "The parameter is incorrect. ", INVALID_PARAMETER,
                 detail="http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/InvalidValue")


def bad_request(why: str) -> Fault:
    return Fault("s:Sender", "w:SchemaValidationError",
                 "The SOAP XML in the message does not match the corresponding XML schema definition. "
                 f"Change the XML and retry. ({why})", 2150858817)


def new_id() -> str:
    return str(uuid.uuid4()).upper()


@dataclass
class Request:
    action: str
    message_id: str
    resource_uri: str
    selectors: dict[str, str]
    options: dict[str, str]
    operation_timeout: float
    body: ET.Element | None
    to: str = ""
    extra: dict[str, str] = field(default_factory=dict)


_DURATION = re.compile(r"^PT(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?$")


def parse_duration(text: str, default: float = 60.0) -> float:
    m = _DURATION.match(text.strip())
    if not m or not any(m.groups()):
        return default
    h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mi * 60 + s


def parse(data: bytes) -> Request:
    """The parts of a WS-Man request the shell needs; malformed XML is a schema fault."""
    if len(data) > 512 * 1024:
        raise bad_request("envelope larger than MaxEnvelopeSize")
    if b"<!DOCTYPE" in data.upper() or b"<!ENTITY" in data.upper():
        raise bad_request("DTDs are not allowed")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise bad_request(f"not XML: {exc}") from None
    header = root.find("s:Header", NS)
    if root.tag != f"{{{NS['s']}}}Envelope" or header is None:
        raise bad_request("not a SOAP 1.2 envelope")

    def text(path: str) -> str:
        node = header.find(path, NS)
        return (node.text or "").strip() if node is not None else ""

    selectors = {n.get("Name", ""): (n.text or "").strip() for n in header.findall("w:SelectorSet/w:Selector", NS)}
    options = {n.get("Name", ""): (n.text or "").strip() for n in header.findall("w:OptionSet/w:Option", NS)}
    action = text("a:Action")
    message_id = text("a:MessageID")
    if not action or not message_id:
        raise bad_request("a:Action and a:MessageID are required")
    return Request(action=action, message_id=message_id, resource_uri=text("w:ResourceURI"),
                   selectors=selectors, options=options,
                   operation_timeout=parse_duration(text("w:OperationTimeout")),
                   body=root.find("s:Body", NS), to=text("a:To"))


def _envelope(action: str, relates_to: str, body: str) -> bytes:
    return (
        '<s:Envelope xml:lang="en-US" xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
        'xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" '
        'xmlns:x="http://schemas.xmlsoap.org/ws/2004/09/transfer" '
        'xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" '
        'xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell" '
        'xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd">'
        f"<s:Header><a:Action>{escape(action)}</a:Action><a:MessageID>uuid:{new_id()}</a:MessageID>"
        f"<a:To>{ANONYMOUS}</a:To><a:RelatesTo>{escape(relates_to)}</a:RelatesTo></s:Header>"
        f"<s:Body>{body}</s:Body></s:Envelope>"
    ).encode("utf-8")


def create_response(req: Request, shell_id: str, address: str, owner: str, client_ip: str) -> bytes:
    body = (
        f"<x:ResourceCreated><a:Address>{escape(address)}</a:Address><a:ReferenceParameters>"
        f"<w:ResourceURI>{SHELL_URI}</w:ResourceURI><w:SelectorSet>"
        f'<w:Selector Name="ShellId">{shell_id}</w:Selector></w:SelectorSet></a:ReferenceParameters>'
        f"</x:ResourceCreated>"
        f'<rsp:Shell xmlns:rsp="{NS["rsp"]}"><rsp:ShellId>{shell_id}</rsp:ShellId>'
        f"<rsp:ResourceUri>{SHELL_URI}</rsp:ResourceUri><rsp:Owner>{escape(owner)}</rsp:Owner>"
        f"<rsp:ClientIP>{escape(client_ip)}</rsp:ClientIP><rsp:IdleTimeOut>PT7200.000S</rsp:IdleTimeOut>"
        "<rsp:InputStreams>stdin</rsp:InputStreams><rsp:OutputStreams>stdout stderr</rsp:OutputStreams>"
        "<rsp:ShellRunTime>P0DT0H0M0S</rsp:ShellRunTime><rsp:ShellInactivity>P0DT0H0M0S</rsp:ShellInactivity>"
        "</rsp:Shell>"
    )
    return _envelope("http://schemas.xmlsoap.org/ws/2004/09/transfer/CreateResponse", req.message_id, body)


def command_response(req: Request, command_id: str) -> bytes:
    body = f"<rsp:CommandResponse><rsp:CommandId>{command_id}</rsp:CommandId></rsp:CommandResponse>"
    return _envelope(A_COMMAND + "Response", req.message_id, body)


def receive_response(req: Request, command_id: str, stdout: list[str], stderr: list[str],
                     exit_code: int | None) -> bytes:
    """Streams (base64 chunks) and the command state; ``exit_code`` given means Done."""
    cid = quoteattr(command_id)
    parts = ["<rsp:ReceiveResponse>"]
    for chunk in stdout:
        parts.append(f'<rsp:Stream Name="stdout" CommandId={cid}>{chunk}</rsp:Stream>')
    for chunk in stderr:
        parts.append(f'<rsp:Stream Name="stderr" CommandId={cid}>{chunk}</rsp:Stream>')
    if exit_code is None:
        parts.append(f'<rsp:CommandState CommandId={cid} State="{STATE_RUNNING}"></rsp:CommandState>')
    else:
        parts.append(f'<rsp:Stream Name="stdout" CommandId={cid} End="true"></rsp:Stream>')
        parts.append(f'<rsp:Stream Name="stderr" CommandId={cid} End="true"></rsp:Stream>')
        parts.append(f'<rsp:CommandState CommandId={cid} State="{STATE_DONE}">'
                     f"<rsp:ExitCode>{exit_code}</rsp:ExitCode></rsp:CommandState>")
    parts.append("</rsp:ReceiveResponse>")
    return _envelope(A_RECEIVE + "Response", req.message_id, "".join(parts))


def empty_response(req: Request, element: str | None) -> bytes:
    action = {A_SEND: A_SEND + "Response", A_SIGNAL: A_SIGNAL + "Response",
              A_DELETE: "http://schemas.xmlsoap.org/ws/2004/09/transfer/DeleteResponse"}[req.action]
    return _envelope(action, req.message_id, f"<{element}/>" if element else "")


def fault_response(relates_to: str, fault: Fault, machine: str) -> bytes:
    detail = f"<w:FaultDetail>{fault.detail}</w:FaultDetail>" if fault.detail else ""
    body = (
        f"<s:Fault><s:Code><s:Value>{fault.code}</s:Value><s:Subcode><s:Value>{fault.subcode}</s:Value>"
        f'</s:Subcode></s:Code><s:Reason><s:Text xml:lang="en-US">{escape(fault.reason)}</s:Text></s:Reason>'
        f'<s:Detail>{detail}<f:WSManFault xmlns:f="{NS["f"]}" Code="{fault.wsman_code}" '
        f'Machine={quoteattr(machine)}><f:Message>{escape(fault.message)}</f:Message></f:WSManFault>'
        "</s:Detail></s:Fault>"
    )
    return _envelope(A_FAULT, relates_to or "uuid:00000000-0000-0000-0000-000000000000", body)
