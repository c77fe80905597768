"""Kerberos proofs with MIT's ``kinit``/``kvno`` (Debian ``krb5-user``), for directory work.

* :func:`as_req` asks the KDC for a TGT with a password: True (issued) / False (refused).
* :class:`TicketCache` holds a TGT obtained *before* a change (e.g. before krbtgt resets) in a
  private temporary directory; :meth:`TicketCache.service_ticket` later asks whether that old
  TGT still buys a service ticket.

Each call runs in its own private directory with a generated ``krb5.conf`` that names only the
DC's address (no DNS lookups, no other KDC), the password on stdin (never argv or environment),
and a hard timeout. The directory (and the ticket cache in it) is deleted afterwards.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ir_toolkit import childenv
from ir_toolkit.transports.base import TIMED_OUT, UNREACHABLE, TransportError

REFUSED_MARKERS = ("password incorrect", "preauthentication failed", "credentials have been revoked",
                   "client not found", "clients credentials have been revoked", "password has expired",
                   "account disabled", "key version is not available", "decrypt integrity check failed",
                   "ticket expired", "bad encryption type")
UNREACHABLE_MARKERS = ("cannot contact any kdc", "cannot find kdc", "connection refused", "unable to reach")


def tools_available() -> str | None:
    for tool in ("kinit", "kvno"):
        if not shutil.which(tool):
            return f"`{tool}` (krb5-user) is not installed"
    return None


_PREFIX = "irkit-krb5-"


def _remove_stale() -> None:
    """Ticket caches of irkit processes that died (kill -9) hold a TGT: delete them."""
    base = Path(tempfile.gettempdir())
    for path in base.glob(f"{_PREFIX}*-*"):
        try:
            pid = int(path.name[len(_PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        if pid == os.getpid() or not path.is_dir() or path.is_symlink():
            continue
        try:
            os.kill(pid, 0)
            continue  # still running
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            continue


def _conf(realm: str, kdc: str) -> str:
    return (f"[libdefaults]\n default_realm = {realm}\n dns_lookup_kdc = false\n dns_lookup_realm = false\n"
            f" rdns = false\n dns_canonicalize_hostname = false\n udp_preference_limit = 1\n"
            f" kdc_timeout = 3000\n max_retries = 1\n"
            f"[realms]\n {realm} = {{\n  kdc = {kdc}\n }}\n")


class TicketCache:
    """A private ccache + krb5.conf for one realm/KDC; use as a context manager (deleted at exit)."""

    def __init__(self, realm: str, kdc: str, *, timeout: float = 20.0) -> None:
        self.realm = realm
        self.kdc = kdc
        self.timeout = timeout
        _remove_stale()
        self.dir = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-"))
        os.chmod(self.dir, 0o700)
        (self.dir / "krb5.conf").write_text(_conf(realm, kdc))
        self.env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C",
                    "KRB5_CONFIG": str(self.dir / "krb5.conf"), "KRB5CCNAME": f"FILE:{self.dir / 'ccache'}",
                    "KRB5_TRACE": "/dev/null"}

    def __enter__(self) -> TicketCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def _run(self, argv: list[str], stdin: bytes | None, what: str) -> tuple[bool, str]:
        try:
            proc = childenv.run(argv, input=stdin, env=self.env, inherit=False, capture_output=True,
                                timeout=self.timeout, cwd=self.dir)
        except childenv.TimeoutExpired:
            raise TransportError(TIMED_OUT, f"KDC {self.kdc}: {what} got no answer in {self.timeout:g} s") from None
        err = proc.stderr.decode("utf-8", "replace").strip().lower()
        if proc.returncode == 0:
            return True, ""
        if any(m in err for m in UNREACHABLE_MARKERS):
            raise TransportError(UNREACHABLE, f"KDC {self.kdc}: unreachable for {what}")
        line = "".join(c if c.isprintable() else "?" for c in err.splitlines()[-1])[:160] if err else ""
        if any(m in err for m in REFUSED_MARKERS):
            return False, line
        raise TransportError("protocol", f"KDC {self.kdc}: {what} failed: {line or 'exit ' + str(proc.returncode)}")

    def kinit(self, principal: str, password: str) -> tuple[bool, str]:
        """AS-REQ for ``principal`` with ``password`` (stdin) into this cache: (issued, why not)."""
        return self._run(["kinit", "--", f"{principal}@{self.realm}" if "@" not in principal else principal],
                         (password + "\n").encode(), "AS-REQ")

    def service_ticket(self, service: str) -> tuple[bool, str]:
        """TGS-REQ with the TGT in this cache for ``service`` (e.g. ``host/dc01.corp.example``)."""
        return self._run(["kvno", "--", f"{service}@{self.realm}"], None, "TGS-REQ")


def as_req(realm: str, kdc: str, principal: str, password: str, *, timeout: float = 20.0) -> bool:
    """Does the KDC issue a TGT for ``principal`` with ``password``?"""
    with TicketCache(realm, kdc, timeout=timeout) as cache:
        return cache.kinit(principal, password)[0]
