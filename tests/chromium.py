"""Headless Chromium (Debian's ``chromium``) driven over the DevTools protocol with a tiny
stdlib websocket client: load a page, collect console errors, exceptions, dialogs and network
requests, evaluate expressions, take screenshots. Loopback only (the DevTools port is bound to
127.0.0.1); the browser gets a fresh profile and every background service switched off."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--no-default-browser-check",
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


class _WebSocket:
    """RFC 6455 client: text frames, masking, fragmentation, ping/pong. Enough for CDP."""

    def __init__(self, url: str, timeout: float = 30) -> None:
        m = re.match(r"ws://([^:/]+):(\d+)(/.*)", url)
        assert m, url
        host, port, path = m.group(1), int(m.group(2)), m.group(3)
        assert host == "127.0.0.1", host
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            assert chunk, "devtools closed the connection during the handshake"
            head += chunk
        status, _, rest = head.partition(b"\r\n\r\n")
        assert b" 101 " in status.split(b"\r\n")[0], status
        self.buf = rest

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("devtools closed the connection")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, text: str) -> None:
        data = text.encode()
        header = bytearray([0x81])
        if len(data) < 126:
            header.append(0x80 | len(data))
        elif len(data) < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack(">H", len(data))
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", len(data))
        mask = os.urandom(4)
        header += mask
        self.sock.sendall(bytes(header) + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def recv(self) -> str:
        message = b""
        while True:
            b1, b2 = self._read(2)
            opcode, length = b1 & 0x0F, b2 & 0x7F
            if length == 126:
                length = struct.unpack(">H", self._read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if b2 & 0x80 else None
            payload = self._read(length)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 9:  # ping
                self.sock.sendall(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
                continue
            if opcode == 8:
                raise ConnectionError("devtools closed the websocket")
            message += payload
            if b1 & 0x80:
                return message.decode()


class Browser:
    """``with Browser() as b: page = b.open(url)``."""

    def __init__(self, width: int = 1200, height: int = 900) -> None:
        exe = chromium_path()
        assert exe, "chromium is not installed (apt-get install chromium)"
        self.profile = tempfile.mkdtemp(prefix="irkit-chromium-")
        self.proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={self.profile}",
                                      f"--window-size={width},{height}", "about:blank"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.stderr: list[str] = []
        url = None
        deadline = time.monotonic() + 60
        assert self.proc.stderr is not None
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline().decode(errors="replace")
            if not line:
                break
            self.stderr.append(line)
            m = re.search(r"DevTools listening on (ws://\S+)", line)
            if m:
                url = m.group(1)
                break
        assert url, "chromium did not start: " + "".join(self.stderr[-20:])
        threading.Thread(target=self._drain, daemon=True).start()
        self.ws = _WebSocket(url)
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.decode(errors="replace"))

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 60) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)
        raise TimeoutError(method)

    def wait_for(self, method: str, timeout: float = 60) -> dict[str, Any]:
        for event in self.events:
            if event.get("method") == method:
                return event
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            event = json.loads(self.ws.recv())
            self.events.append(event)
            if event.get("method") == method:
                return event
        raise TimeoutError(method)

    def open(self, url: str, width: int = 1200, height: int = 900) -> Page:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=session)
        self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": False}, session=session)
        self.events.clear()
        self.call("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired")
        return Page(self, session)

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (OSError, RuntimeError, TimeoutError, ConnectionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class Page:
    def __init__(self, browser: Browser, session: str) -> None:
        self.browser, self.session = browser, session

    def evaluate(self, expression: str) -> Any:
        result = self.browser.call("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                                   session=self.session)
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"])
        return result["result"].get("value")

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions, dialogs (alert!) and log errors (e.g. CSP refusals)."""
        out = []
        for event in self.browser.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert", "warning"):
                out.append(f"console.{params['type']}: {params.get('args')}")
            elif method == "Runtime.exceptionThrown":
                out.append(f"exception: {params.get('exceptionDetails')}")
            elif method == "Page.javascriptDialogOpening":
                out.append(f"dialog: {params.get('message')}")
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") in ("error", "warning"):
                out.append(f"log {params['entry'].get('source')}: {params['entry'].get('text')}")
        return out

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.browser.events
                if e.get("method") == "Network.requestWillBeSent"]

    def screenshot(self, path: Path, clip: dict[str, float] | None = None) -> None:
        params: dict[str, Any] = {"format": "png"}
        if clip:
            params["clip"] = {**clip, "scale": clip.get("scale", 1)}
            params["captureBeyondViewport"] = True
        data = self.browser.call("Page.captureScreenshot", params, session=self.session)["data"]
        path.write_bytes(base64.b64decode(data))


INSPECT = """JSON.stringify((() => {
  const tl = document.getElementById('timeline');
  const box = tl ? tl.getBoundingClientRect() : null;
  const segs = tl ? [...tl.querySelectorAll('g.segment rect')] : [];
  return {
    text: document.body.innerText,
    scripts: document.scripts.length,
    timeline: box && {width: box.width, height: box.height, top: box.top + window.scrollY,
                      rows: tl.querySelectorAll('g.tenant-row').length,
                      drawn: segs.filter(r => r.getBBox().width > 0 && r.getBBox().height > 0).length,
                      marks: tl.querySelectorAll('g.mark').length},
    verdict: (document.getElementById('verdict') || {}).innerText || null,
    height: document.documentElement.scrollHeight,
  };
})())"""


def inspect(page: Page) -> dict[str, Any]:
    return json.loads(page.evaluate(INSPECT))


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.chromium REPORT.html [--inventory INV] [--screenshot PNG]``: load a report in
    headless Chromium and check it (no console errors, no requests, hosts present, timeline drawn)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.chromium")
    parser.add_argument("html", type=Path)
    parser.add_argument("--inventory", type=Path, help="every host of this inventory must be on the page")
    parser.add_argument("--case", help="every host named in this case's audit log ($IRKIT_HOME) must be on the page")
    parser.add_argument("--screenshot", type=Path, help="write a PNG of the top of the page (verdict, timeline)")
    parser.add_argument("--height", type=int, default=900)
    args = parser.parse_args(argv)
    hosts: list[str] = []
    if args.inventory:
        from ir_toolkit.inventory import load_inventory

        hosts = [h.name for h in load_inventory(args.inventory).hosts()]
    if args.case:
        from ir_toolkit.audit.review import read_log

        hosts += sorted({r["host"] for r, _ in read_log(args.case) if isinstance(r.get("host"), str)} - set(hosts))
    with Browser() as browser:
        page = browser.open(args.html.resolve().as_uri(), width=1100, height=args.height)
        info = inspect(page)
        missing = [h for h in hosts if h not in info["text"]]
        problems = page.problems() + [f"request: {u}" for u in page.requests() if not u.startswith("file://")]
        tl = info["timeline"] or {}
        print(f"page: {args.html} ({info['height']} px high), scripts: {info['scripts']}")
        print(f"timeline: {tl.get('width', 0):.0f}x{tl.get('height', 0):.0f} px, {tl.get('rows', 0)} tenant rows, "
              f"{tl.get('drawn', 0)} bars drawn, {tl.get('marks', 0)} marks")
        print(f"hosts: {len(hosts) - len(missing)} of {len(hosts)} on the page" + (f"; missing {missing}" if missing else ""))
        for problem in problems:
            print(f"problem: {problem}")
        if args.screenshot:
            page.screenshot(args.screenshot, clip={"x": 0, "y": 0, "width": 1100, "height": args.height,
                                                   "scale": 0.8})
            print(f"screenshot: {args.screenshot} ({args.screenshot.stat().st_size} bytes)")
    ok = not missing and not problems and tl.get("drawn", 0) > 0 and info["scripts"] == 0
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    import sys

    sys.exit(main())
