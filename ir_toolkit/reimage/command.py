"""The ``command`` reimage provider: runs ``host.bmc.command`` (a provisioning system's CLI: MAAS,
Foreman, a cloud API) with the host as argument, the BMC secret on stdin."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

from ir_toolkit import childenv
from ir_toolkit.errors import (
    EXIT_USAGE,
    IrkitError,
)
from ir_toolkit.inventory.model import Host
from ir_toolkit.redaction import redact, redact_text
from ir_toolkit.transports.redfish import (
    default_secret_resolver,
)


from ir_toolkit.reimage.base import ReimageOptions, ReimageProvider, ReimageStatus, register_provider


_PLACEHOLDERS = ("host", "address", "tenant", "case", "image")
_TAIL_BYTES = 4096


class CommandProvider(ReimageProvider):
    """Run ``host.bmc.command`` (argv list, no shell) with the host as argument.

    ``{host}``, ``{address}``, ``{tenant}``, ``{case}`` and ``{image}`` in an argv
    element are replaced; when no element has a placeholder the host name is
    appended. A ``bmc.password`` reference is resolved and written to the
    command's **stdin** (one line), never to argv or the environment. The command
    also gets ``IRKIT_HOST``, ``IRKIT_HOST_ADDRESS``, ``IRKIT_TENANT``,
    ``IRKIT_CASE`` and ``IRKIT_IMAGE_URL`` in its environment. Exit 0 means done; the
    command runs in its own session and is killed (its whole process group) on
    timeout or cancel.
    """

    name = "command"

    def __init__(self, options: ReimageOptions | None = None) -> None:
        super().__init__(options)
        self._proc: childenv.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._deadline = 0.0

    def start(self, host: Host) -> None:
        result = self._begin(host)
        opts = self.options
        bmc = host.bmc
        if bmc is None or not bmc.command:
            self._fail("config", f"{host.name}: bmc.command is required for the command provider", EXIT_USAGE)
            return
        values = {"host": host.name, "address": host.address, "tenant": host.tenant,
                  "case": opts.case_id or "", "image": opts.image_url or ""}
        argv = [str(a) for a in bmc.command]
        substituted = False
        for i, arg in enumerate(argv):
            for key in _PLACEHOLDERS:
                token = "{" + key + "}"
                if token in arg:
                    arg = arg.replace(token, values[key])
                    substituted = True
            argv[i] = arg
        if not substituted:
            argv.append(host.name)
        secret: str | None = None
        if bmc.password is not None:
            try:
                secret = (opts.resolve_secret or default_secret_resolver)(bmc.password)
            except IrkitError as exc:
                self._fail("config", f"{host.name}: bmc.password: {exc}", exc.exit_code)
                return
            if any(secret and secret in arg for arg in argv):
                self._fail("config", f"{host.name}: bmc.command contains the secret itself; "
                           "the provider passes it on stdin", EXIT_USAGE)
                return
        executable = argv[0]
        if os.sep not in executable and shutil.which(executable) is None:
            self._fail("config", f"{host.name}: reimage command {executable!r} not found on PATH", EXIT_USAGE)
            return
        # an allow-listed environment: never IRKIT_KEY_PASSPHRASE or an env: secret (security review §5)
        env = dict(IRKIT_HOST=host.name, IRKIT_HOST_ADDRESS=host.address, IRKIT_TENANT=host.tenant,
                   IRKIT_CASE=opts.case_id or "", IRKIT_IMAGE_URL=opts.image_url or "",
                   IRKIT_SECRET_ON_STDIN="1" if secret is not None else "0")
        self._workdir = Path(tempfile.mkdtemp(prefix="irkit-reimage-"))
        try:
            with open(self._workdir / "stdout", "wb") as out, open(self._workdir / "stderr", "wb") as err:
                self._proc = childenv.popen(
                    argv, stdin=childenv.PIPE, stdout=out, stderr=err, env=env,
                    start_new_session=True, close_fds=True,
                )
        except (OSError, childenv.UnsafeChildEnvironment) as exc:
            self._cleanup_files()
            self._fail("config", f"{host.name}: cannot run reimage command {executable!r}: "
                       f"{getattr(exc, 'strerror', None) or exc}", EXIT_USAGE)
            return
        assert self._proc.stdin is not None
        try:
            if secret is not None:
                self._proc.stdin.write(secret.encode() + b"\n")
            self._proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        self._deadline = time.monotonic() + opts.command_timeout
        result.facts.update(argv=redact(argv), pid=self._proc.pid, secret_on_stdin=secret is not None)
        result.step("start", f"started {' '.join(redact(argv))} (pid {self._proc.pid})")

    def poll(self) -> ReimageStatus:
        if self._result is None:
            raise RuntimeError("poll() before start()")
        if self.status is not ReimageStatus.RUNNING or self._proc is None:
            return self.status
        code = self._proc.poll()
        host = self.result.host
        if code is None:
            if time.monotonic() >= self._deadline:
                self._kill()
                self._collect(None)
                self._fail("deadline", f"{host}: reimage command did not finish within "
                           f"{self.options.command_timeout:g}s (killed)")
            return self.status
        self._collect(code)
        if code == 0:
            self._done(f"{host}: reimage command succeeded")
        else:
            last = self.result.facts.get("stderr_last_line") or self.result.facts.get("stdout_last_line")
            what = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            self._fail("command_failed", f"{host}: reimage command {what}" + (f": {last}" if last else ""))
        return self.status

    def cancel(self) -> None:
        if self._result is None or self.status is not ReimageStatus.RUNNING:
            return
        self._kill()
        self._collect(None)
        self._fail("cancelled", f"{self.result.host}: reimage command cancelled")

    def _kill(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)  # the group we created (start_new_session)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except childenv.TimeoutExpired:
                continue

    def _collect(self, code: int | None) -> None:
        facts = self.result.facts
        facts["returncode"] = code
        if self._workdir is not None:
            for stream in ("stdout", "stderr"):
                try:
                    with open(self._workdir / stream, "rb") as fh:
                        fh.seek(0, os.SEEK_END)
                        size = fh.tell()
                        fh.seek(max(0, size - _TAIL_BYTES))
                        tail = redact_text(fh.read().decode("utf-8", "replace"))
                except OSError:
                    tail = ""
                facts[f"{stream}_tail"] = tail
                lines = [line.strip() for line in tail.splitlines() if line.strip()]
                facts[f"{stream}_last_line"] = lines[-1][:300] if lines else None
        self._cleanup_files()

    def _cleanup_files(self) -> None:
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None


register_provider("command", CommandProvider)
