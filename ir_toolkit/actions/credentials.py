"""Credential containment: responder access first, then rotate or lock the shared accounts.

``responder.ensure_access``
    A per-case responder key (generated once per case, under a lock) is installed
    where sshd reads keys for the responder user, and a *fresh* login with it is
    proven before anything else on the host proceeds. The fleet then prefers it.

``accounts.rotate``
    Per host, a unique random password is escrowed (encrypted, fsynced) *before*
    ``chpasswd`` applies it over stdin; the account's sessions and processes are
    ended by pid; a fresh login proves the new password works and the old one
    fails. Mode ``lock`` locks and expires the account instead. A run killed at any
    moment is reconciled on resume by testing which escrowed password the host
    accepts (CyberArk's reconcile).

The MSP key revocation (``ssh_keys.revoke``) is in :mod:`ir_toolkit.actions.revocation`
and isolation in :mod:`ir_toolkit.actions.isolation`; both use the helpers here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import hashlib
import os
import secrets as _secrets
import string
import threading
import time
from pathlib import Path
from typing import Any, Literal

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import Field, field_validator

from ir_toolkit.actions import sshd
from ir_toolkit.actions.base import (
    Action,
    ActionContext,
    ActionFailed,
    Outcome,
    Params,
    register,
    DESTROYS_CREDENTIALS,
)
from ir_toolkit.cases import CaseLayout
from ir_toolkit.deadline import Deadline
from ir_toolkit.redaction import register_secret
from ir_toolkit.secrets import escrow as esc
from ir_toolkit.secrets.references import expand_path, is_reference, parse_ref, resolve
from ir_toolkit.transports.hostkeys import fingerprint
from ir_toolkit.transports.retry import RetryPolicy, transient
from ir_toolkit.transports.ssh import (
    AUTH_FAILED,
    TIMED_OUT,
    Endpoint,
    SshConnection,
    Timeouts,
    TransportError,
    load_private_key,
    probe_login,
)

_PROBE_TIMEOUTS = Timeouts(connect=5, banner=5, auth=10, command=20)


# =========================================================================== shared helpers


def _record(ctx: ActionContext, action: str, params: dict[str, Any], outcome: str = "ok") -> None:
    """A durable audit record of one change (no secrets: redacted again by the log anyway)."""
    ctx.record(action, {"case": ctx.case_id, **params}, outcome)


def _endpoint(ctx: ActionContext, user: str) -> Endpoint:
    """The host's pinned endpoint, as ``user``."""
    return dataclasses.replace(ctx.conn.endpoint, user=user)


def _retrying(func: Any, deadline: Deadline, attempts: int = 4) -> Any:
    """Retry a login probe across transient failures (an sshd reload re-executes the daemon).

    The one notion of transient (``TransportError.transient``); pauses and attempts end at ``deadline``.
    """
    return RetryPolicy(attempts - 1, base=0.15, jitter=False).call(func, deadline, retry_if=transient)


def _probe_timeouts(deadline: Deadline) -> Timeouts:
    """The probe limits, capped by what is left of the step (a probe never outlives its step)."""
    left = deadline.remaining()
    if left <= 0:
        raise TransportError(TIMED_OUT, "step deadline reached before a login probe")
    t = _PROBE_TIMEOUTS
    return Timeouts(connect=min(t.connect, left), banner=min(t.banner, left), auth=min(t.auth, left),
                    command=min(t.command, left))


def fresh_login(endpoint: Endpoint, pkey: paramiko.PKey, deadline: Deadline) -> bool:
    """A brand-new SSH connection with exactly ``pkey`` authenticates and runs a command (within ``deadline``)."""
    def attempt() -> bool:
        try:
            conn = SshConnection.open(endpoint, pkey=pkey, timeouts=_probe_timeouts(deadline), deadline=deadline.at)
        except TransportError as exc:
            if exc.kind == AUTH_FAILED:
                return False
            raise
        try:
            return conn.run("true", timeout=10, deadline=deadline.at).ok
        finally:
            conn.close()

    return bool(_retrying(attempt, deadline))


def login_with_password(endpoint: Endpoint, password: str, deadline: Deadline) -> bool:
    return bool(_retrying(lambda: probe_login(endpoint, password=password, timeouts=_probe_timeouts(deadline),
                                              deadline=deadline.at), deadline))


def login_with_key(endpoint: Endpoint, pkey: paramiko.PKey, deadline: Deadline) -> bool:
    return bool(_retrying(lambda: probe_login(endpoint, pkey=pkey, timeouts=_probe_timeouts(deadline),
                                              deadline=deadline.at), deadline))


def responder_pkeys(ctx: ActionContext) -> list[paramiko.PKey]:
    """The keys irkit logs in with (the per-case key first), for proofs of access."""
    return list(ctx.require_pool().keys(ctx.host))


def responder_access_works(ctx: ActionContext) -> bool:
    """A fresh login as the responder with any of irkit's keys works."""
    endpoint = _endpoint(ctx, ctx.conn.endpoint.user)
    return any(fresh_login(endpoint, key, ctx.deadline) for key in responder_pkeys(ctx))


def _passwd_entry(ctx: ActionContext, user: str) -> tuple[str, str, str] | None:
    """(user, uid, home) from the host's account database, or None if there is no such account."""
    result = ctx.run(f"getent passwd {ctx.quote(user)}")
    if not result.ok or not result.text.strip():
        return None
    fields = result.text.strip().split("\n")[0].split(":")
    if len(fields) < 7:
        return None
    return fields[0], fields[2], fields[5]


def _all_users(ctx: ActionContext) -> list[tuple[str, str, str]]:
    result = ctx.run("getent passwd", check=True)
    users = []
    for line in result.text.splitlines():
        fields = line.split(":")
        if len(fields) >= 7 and fields[0]:
            users.append((fields[0], fields[2], fields[5]))
    return users


def _read_files(ctx: ActionContext, paths: list[str]) -> dict[str, str]:
    """Contents of those of ``paths`` that are regular files (following symlinks)."""
    if not paths:
        return {}
    script = "i=0\nfor f in " + " ".join(ctx.quote(p) for p in paths) + "; do\n" \
        '  if [ -f "$f" ]; then printf "%s " "$i"; base64 -w0 < "$f"; echo; fi\n  i=$((i+1))\ndone\n'
    result = ctx.run(script, check=True)
    import base64

    found: dict[str, str] = {}
    for line in result.text.splitlines():
        index, _, data = line.partition(" ")
        if index.isdigit() and int(index) < len(paths):
            found[paths[int(index)]] = base64.b64decode(data).decode("utf-8", "replace") if data else ""
    return found


def _write_file(ctx: ActionContext, path: str, content: str) -> None:
    """Replace a file atomically with ``content`` (sent on stdin), keeping its owner and mode."""
    q = ctx.quote(path)
    script = (f't=$(readlink -f -- {q}) && tmp="$t.irkit-tmp.$$" && umask 077 && cat > "$tmp" && '
              'if [ -e "$t" ]; then chown --reference="$t" "$tmp" && chmod --reference="$t" "$tmp"; fi && '
              'mv -f "$tmp" "$t"')
    ctx.run(script, stdin=content.encode(), check=True)


# =========================================================================== responder.ensure_access

_case_key_lock = threading.Lock()


def case_key_path(case_id: str, tenant: str) -> Path:
    """The case's responder key for ``tenant`` (one per tenant: a key never opens another client's hosts)."""
    return CaseLayout.of(case_id).tenant_responder_key(tenant)


def public_line(path: Path) -> str:
    return path.with_name(path.name + ".pub").read_text().strip()


def key_options(inventory: Any) -> str:
    """authorized_keys options of the case responder key: usable only from the controller and
    ``allow_from``, and for nothing but a session (no agent, port or X11 forwarding)."""
    responder = inventory.msp.responder
    sources = [str(responder.controller_address), *(str(n) for n in responder.allow_from)]
    return (f'from="{",".join(dict.fromkeys(sources))}",no-agent-forwarding,no-port-forwarding,'
            "no-X11-forwarding")


def _check_from(ctx: ActionContext) -> None:
    """The key's ``from=`` must admit the address the host sees irkit connect from."""
    import ipaddress

    seen = sshd.client_address(ctx)
    responder = ctx.inventory.msp.responder
    try:
        addr = ipaddress.ip_address(seen)
    except ValueError:
        raise ActionFailed(f"cannot tell the controller's address from SSH_CONNECTION ({seen!r})") from None
    nets = [ipaddress.ip_network(str(n), strict=False) for n in (responder.controller_address, *responder.allow_from)]
    if not any(addr.version == n.version and addr in n for n in nets):
        raise ActionFailed(f"the controller reaches this host from {seen}, which is not the controller_address "
                           "or allow_from: refusing to install the case responder key (its from= would not "
                           "admit irkit)")


def case_key_passphrase(ctx: ActionContext) -> str:
    value = ctx.keys.case_key_passphrase(ctx.case_id)
    if value is None:
        raise ActionFailed("the case responder key is encrypted at rest and the keys are not unlocked here")
    return value


def ensure_case_key(case_id: str, tenant: str, passphrase: str) -> tuple[Path, bool]:
    """The case's responder key pair for ``tenant``, generated once (thread and process safe), the private
    key encrypted at rest with ``passphrase`` (OpenSSH format, bcrypt KDF). Returns (path, created)."""
    path = case_key_path(case_id, tenant)
    with _case_key_lock:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path.parent / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            pub = path.with_name(path.name + ".pub")
            if path.exists() and pub.exists():
                return path, False
            key = Ed25519PrivateKey.generate()
            private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                        serialization.BestAvailableEncryption(passphrase.encode()))
            public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            from ir_toolkit.fsutil import write_atomic

            write_atomic(pub, public + f" irkit-responder-{case_id}-{tenant}\n".encode(), mode=0o644)
            write_atomic(path, private, mode=0o600)
            return path, True
        finally:
            os.close(fd)


def _case_pkey(ctx: ActionContext, key_path: Path, passphrase: str) -> paramiko.PKey:
    """The case key, decrypted once per run by the pool (its bcrypt KDF is ~0.25 s of CPU per decryption)."""
    if ctx.pool is not None:
        return ctx.pool.private_key(key_path, passphrase)
    return load_private_key(key_path, passphrase)


class EnsureAccessParams(Params):
    #: account irkit logs in as (default: the inventory's responder user)
    user: str | None = None


def _responder_keyfile(ctx: ActionContext, user: str) -> tuple[str, str, str]:
    """(authorized_keys path sshd reads first for ``user``, uid, home)."""
    entry = _passwd_entry(ctx, user)
    if entry is None:
        raise ActionFailed(f"responder account {user!r} does not exist on the host")
    _, uid, home = entry
    daemon = sshd.locate(ctx)
    config = sshd.effective_config(ctx, daemon, user, sshd.client_address(ctx))
    patterns = " ".join(config.get("authorizedkeysfile", [".ssh/authorized_keys"])).split()
    for pattern in patterns:
        path = sshd.expand_authorized_keys(pattern, user, home, uid)
        if path:
            return path, uid, home
    raise ActionFailed("sshd reads no AuthorizedKeysFile for the responder (AuthorizedKeysFile none)")


@register
class EnsureResponderAccess(Action):
    """Install and prove a per-case responder key before any credential is touched."""

    name = "responder.ensure_access"
    Params = EnsureAccessParams
    description = "install a per-case responder key and prove a fresh login with it"

    def _user(self, ctx: ActionContext, params: EnsureAccessParams) -> str:
        return params.user or ctx.host.user or ctx.inventory.msp.responder.user

    def _installed(self, ctx: ActionContext, path: str, blob: bytes, options: str) -> bool:
        content = _read_files(ctx, [path]).get(path, "")
        return any(sshd.key_blob(line) == blob and line.startswith(options + " ") for line in content.splitlines())

    def plan(self, ctx: ActionContext, params: EnsureAccessParams) -> Outcome:
        user = self._user(ctx, params)
        key = case_key_path(ctx.case_id, ctx.host.tenant)
        path, _, _ = _responder_keyfile(ctx, user)
        if not key.exists():
            return Outcome(True, f"would create the case's responder key and install it in {path}")
        blob = sshd.key_blob(public_line(key))
        assert blob is not None
        if self._installed(ctx, path, blob, key_options(ctx.inventory)):
            return Outcome(False, f"case responder key already in {path}")
        return Outcome(True, f"would install the case's responder key in {path}")

    def apply(self, ctx: ActionContext, params: EnsureAccessParams) -> Outcome:
        user = self._user(ctx, params)
        passphrase = case_key_passphrase(ctx)
        _check_from(ctx)
        key_path, created = ensure_case_key(ctx.case_id, ctx.host.tenant, passphrase)
        options = key_options(ctx.inventory)
        line = f"{options} {public_line(key_path)}"
        blob = sshd.key_blob(line)
        assert blob is not None
        fp = fingerprint(blob)
        path, uid, home = _responder_keyfile(ctx, user)
        changed = False
        if not self._installed(ctx, path, blob, options):
            if _read_files(ctx, [path]).get(path) is not None:
                _remove_key_lines(ctx, path, blob)  # an older line of this key without the options
            q = ctx.quote(path)
            owner = ctx.quote(user)
            script = (f'f={q}; d=$(dirname "$f"); '
                      f'if [ ! -d "$d" ]; then mkdir -p "$d" && chmod 700 "$d" && chown {owner} "$d"; fi; '
                      f'new=0; [ -e "$f" ] || new=1; '
                      f'if [ -s "$f" ] && [ "$(tail -c1 "$f" | od -An -c | tr -d " ")" != "\\n" ]; then echo >> "$f"; fi; '
                      f'umask 077; cat >> "$f" && if [ $new = 1 ]; then chown {owner} "$f" && chmod 600 "$f"; fi')
            ctx.run(script, stdin=(line + "\n").encode(), check=True)
            changed = True
        # The proof: a brand-new connection with exactly this key, before anything else proceeds.
        pkey = _case_pkey(ctx, key_path, passphrase)
        if not fresh_login(_endpoint(ctx, user), pkey, ctx.deadline):
            _record(ctx, "responder.access_failed", {"fingerprint": fp, "file": path}, outcome="failed")
            raise ActionFailed(f"installed the case responder key in {path} but a fresh login with it failed; "
                               "nothing else will be changed on this host")
        if ctx.pool is not None:
            ctx.pool.reload_keys()  # the pool prefers the case key from now on
        if changed:
            _record(ctx, "responder.key_installed", {"fingerprint": fp, "file": path, "user": user,
                                                     "key_created": created, "options": options})
        # verified: the fresh login above is the end state's proof (verify would repeat exactly it)
        return Outcome(changed, f"case responder key {'installed in' if changed else 'already in'} {path}; "
                                "fresh login proven", {"fingerprint": fp, "file": path}, verified=True)

    def verify(self, ctx: ActionContext, params: EnsureAccessParams) -> Outcome:
        key_path = case_key_path(ctx.case_id, ctx.host.tenant)
        if not key_path.exists():
            return Outcome(False, "the case responder key does not exist", ok=False)
        ok = fresh_login(_endpoint(ctx, self._user(ctx, params)),
                         _case_pkey(ctx, key_path, case_key_passphrase(ctx)), ctx.deadline)
        return Outcome(False, "fresh login with the case responder key works" if ok
                       else "fresh login with the case responder key FAILED", ok=ok)


def _remove_key_lines(ctx: ActionContext, path: str, blob: bytes) -> int:
    """Remove every line of ``path`` that holds the key ``blob`` (any options); returns how many."""
    content = _read_files(ctx, [path]).get(path)
    if content is None:
        return 0
    lines = content.splitlines(keepends=True)
    kept = [line for line in lines if sshd.key_blob(line.strip()) != blob]
    if len(kept) != len(lines):
        _write_file(ctx, path, "".join(kept))
    return len(lines) - len(kept)


class RemoveAccessParams(Params):
    #: account irkit logs in as (default: the inventory's responder user)
    user: str | None = None


@register
class RemoveResponderAccess(Action):
    """Take the case's responder key off the host when the case is closed (``irkit case close``).

    The key's lines are removed from the responder's authorized_keys; then a fresh login with the
    case key must fail and a fresh login with the MSP's responder key (the inventory's) must work:
    if it does not, the case key is put back and the step fails (never lose responder access)."""

    name = "responder.remove_access"
    Params = RemoveAccessParams
    description = "remove the case's responder key from the host (case close); the MSP's key keeps access"

    def _user(self, ctx: ActionContext, params: RemoveAccessParams) -> str:
        return params.user or ctx.host.user or ctx.inventory.msp.responder.user

    def _blob(self, ctx: ActionContext) -> tuple[Path, bytes] | None:
        key = case_key_path(ctx.case_id, ctx.host.tenant)
        pub = key.with_name(key.name + ".pub")
        if not pub.exists():
            return None
        blob = sshd.key_blob(public_line(key))
        return (key, blob) if blob else None

    def _present(self, ctx: ActionContext, path: str, blob: bytes) -> bool:
        content = _read_files(ctx, [path]).get(path, "")
        return any(sshd.key_blob(line.strip()) == blob for line in content.splitlines())

    def _msp_key_works(self, ctx: ActionContext, user: str) -> bool:
        from ir_toolkit.transports.pool import responder_key_paths

        keys = [load_private_key(p) for p in responder_key_paths(ctx.inventory, None) if p.exists()]
        return any(fresh_login(_endpoint(ctx, user), k, ctx.deadline) for k in keys)

    def plan(self, ctx: ActionContext, params: RemoveAccessParams) -> Outcome:
        found = self._blob(ctx)
        if found is None:
            return Outcome(False, "this case has no responder key for the tenant")
        path, _, _ = _responder_keyfile(ctx, self._user(ctx, params))
        if not self._present(ctx, path, found[1]):
            return Outcome(False, f"case responder key not in {path}")
        return Outcome(True, f"would remove the case responder key from {path}")

    def apply(self, ctx: ActionContext, params: RemoveAccessParams) -> Outcome:
        found = self._blob(ctx)
        if found is None:
            return Outcome(False, "this case has no responder key for the tenant")
        key_path, blob = found
        user = self._user(ctx, params)
        path, _, _ = _responder_keyfile(ctx, user)
        fp = fingerprint(blob)
        if not self._present(ctx, path, blob):
            return Outcome(False, f"case responder key not in {path}", {"fingerprint": fp})
        before = _read_files(ctx, [path]).get(path, "")
        removed = _remove_key_lines(ctx, path, blob)
        if not self._msp_key_works(ctx, user):
            _write_file(ctx, path, before)  # never lose responder access
            _record(ctx, "responder.key_removal_rolled_back", {"fingerprint": fp, "file": path}, outcome="failed")
            raise ActionFailed(f"after removing the case responder key from {path}, a fresh login with the "
                               "MSP's responder key failed: the case key was put back")
        if ctx.pool is not None:
            ctx.pool.reload_keys()
        _record(ctx, "responder.key_removed", {"fingerprint": fp, "file": path, "user": user, "lines": removed})
        return Outcome(True, f"case responder key removed from {path}; the MSP's responder key logs in",
                       {"fingerprint": fp, "file": path, "lines": removed})

    def verify(self, ctx: ActionContext, params: RemoveAccessParams) -> Outcome:
        found = self._blob(ctx)
        if found is None:
            return Outcome(False, "this case has no responder key for the tenant")
        key_path, blob = found
        user = self._user(ctx, params)
        path, _, _ = _responder_keyfile(ctx, user)
        problems = []
        if self._present(ctx, path, blob):
            problems.append(f"the case responder key is still in {path}")
        passphrase = ctx.keys.case_key_passphrase(ctx.case_id)
        if passphrase is not None and key_path.exists() and \
                fresh_login(_endpoint(ctx, user), load_private_key(key_path, passphrase), ctx.deadline):
            problems.append("a fresh login with the case responder key still WORKS")
        if not self._msp_key_works(ctx, user):
            problems.append("a fresh login with the MSP's responder key FAILED")
        if problems:
            return Outcome(False, "; ".join(problems), ok=False)
        return Outcome(False, "case responder key gone: it logs in no more, the MSP's responder key does")


# =========================================================================== accounts.rotate

PASSWORD_SYMBOLS = "-_.,;+=@%^*()[]{}~!?"
_PERL_CHECK = ("perl -e 'my @p = getpwnam($ARGV[0]) or exit 3; my $h = $p[1]; my $pw = <STDIN>; "
               "chomp $pw; exit((defined $h && length($h) > 3 && crypt($pw, $h) eq $h) ? 0 : 1)'")


def generate_password(length: int) -> str:
    """A random password with lower, upper, digit and symbol characters (no ':' or whitespace)."""
    alphabet = string.ascii_letters + string.digits + PASSWORD_SYMBOLS
    while True:
        value = "".join(_secrets.choice(alphabet) for _ in range(length))
        if (any(c.islower() for c in value) and any(c.isupper() for c in value)
                and any(c.isdigit() for c in value) and any(c in PASSWORD_SYMBOLS for c in value)):
            register_secret(value)
            return value


def escrow_recipients(extra: list[str]) -> list[Any]:
    from ir_toolkit.secrets.keystore import escrow_public_key

    return [escrow_public_key(), *(esc.load_public_key(expand_path(p)) for p in extra)]


@dataclasses.dataclass
class AccountState:
    user: str
    uid: str
    exists: bool
    locked: bool = False
    expired: bool = False
    hash_digest: str = ""      # SHA-256 of the shadow hash: compared, never shown


class RotateParams(Params):
    #: accounts to act on (default: the inventory's shared accounts for the host's OS)
    accounts: list[str] = []
    #: rotate to a unique escrowed password, or lock + expire; ``inventory`` takes each account's ``action``
    mode: Literal["inventory", "rotate", "lock"] = "inventory"
    #: rotate only when the newest escrowed password (in any case) is older than this many days
    due_after_days: int | None = Field(default=None, ge=1, le=3650)
    #: rotate unless the newest verified escrowed password (any case) was set at or after this time
    #: (``irkit rotate`` sets it to the run's start, so a resumed run never rotates twice)
    unless_rotated_since: dt.datetime | None = None
    #: reference (env:NAME / file:PATH) to the leaked shared password: verify proves it no longer logs in
    old_password: str | None = None
    #: further escrow recipients (PEM/OpenSSH public key files) besides the responder's escrow key
    extra_recipients: list[str] = []
    data_alg: Literal["AES-256-GCM", "ChaCha20-Poly1305"] = "AES-256-GCM"
    #: end the account's sessions and processes (by pid) after the change
    end_sessions: bool = True
    #: password length (default: the inventory's policy)
    length: int | None = Field(default=None, ge=16, le=128)

    @field_validator("old_password")
    @classmethod
    def _ref(cls, value: str | None) -> str | None:
        if value is not None and not is_reference(value):
            raise ValueError("old_password is a reference (env:NAME or file:PATH), never the password itself")
        return value


def _account_state(ctx: ActionContext, user: str) -> AccountState:
    result = ctx.run(f"getent passwd {ctx.quote(user)} >/dev/null || exit 7; id -u {ctx.quote(user)}; "
                     f"getent shadow {ctx.quote(user)}")
    if result.exit_status == 7:
        return AccountState(user, "", False)
    if not result.ok:
        raise ActionFailed(f"cannot read the account {user}")
    lines = result.text.splitlines()
    uid = lines[0].strip() if lines else ""
    shadow = lines[1].split(":") if len(lines) > 1 else []
    pw_hash = shadow[1] if len(shadow) > 1 else ""
    expire = shadow[7] if len(shadow) > 7 else ""
    today = int(time.time() // 86400)
    return AccountState(
        user, uid, True, locked=pw_hash.startswith("!"),
        expired=bool(expire.strip()) and expire.strip().isdigit() and int(expire) <= today,
        hash_digest=hashlib.sha256(pw_hash.encode()).hexdigest(),
    )


def password_is_set(ctx: ActionContext, user: str, password: str) -> bool | None:
    """Does the host's shadow hash match ``password``? (password on stdin; None if it cannot tell)."""
    result = ctx.run(f"{_PERL_CHECK} {ctx.quote(user)}", stdin=(password + "\n").encode())
    if result.exit_status in (0, 1):
        return result.exit_status == 0
    return None


def session_pids(ctx: ActionContext, user: str) -> list[int]:
    """Processes of the account: owned by it, its sshd session processes, and all their descendants."""
    script = (f"uid=$(id -u {ctx.quote(user)} 2>/dev/null) || exit 0; "
              "ps -e -o pid= -o ppid= -o uid= -o ruid= -o args= 2>/dev/null")
    result = ctx.run(script)
    rows = []
    uid = None
    for line in result.text.splitlines():
        parts = line.split(None, 4)
        if len(parts) < 4:
            continue
        rows.append((int(parts[0]), int(parts[1]), parts[2], parts[3], parts[4] if len(parts) > 4 else ""))
    entry = _passwd_entry(ctx, user)
    if entry is None:
        return []
    uid = entry[1]
    me = {"sshd: " + user + "@", "sshd: " + user + " [", "sshd-session: " + user + "@",
          "sshd-session: " + user + " ["}
    seeds = {pid for pid, _, euid, ruid, args in rows
             if euid == uid or ruid == uid or any(args.startswith(m) for m in me)}
    children: dict[int, list[int]] = {}
    for pid, ppid, *_ in rows:
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = list(seeds)
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo.extend(children.get(pid, []))
    return sorted(found)


def end_sessions(ctx: ActionContext, user: str) -> list[int]:
    """Kill the account's processes by pid (repeat until none are left); returns the pids ended."""
    ended: list[int] = []
    for _ in range(5):
        pids = session_pids(ctx, user)
        if not pids:
            return ended
        ctx.run("kill -KILL " + " ".join(str(p) for p in pids) + " 2>/dev/null; true")
        ended.extend(p for p in pids if p not in ended)
        ctx.deadline.sleep(0.1)
    left = session_pids(ctx, user)
    if left:
        raise ActionFailed(f"processes of {user} keep coming back: {left[:10]}")
    return ended


@register
class RotateAccounts(Action):
    """Rotate shared local accounts to unique escrowed passwords, or lock and expire them."""

    name = "accounts.rotate"
    Params = RotateParams
    description = "rotate (escrowed, verified) or lock shared local accounts; end their sessions"
    destructive = True
    destroys = DESTROYS_CREDENTIALS

    # ---------------------------------------------------------------- selection
    def _accounts(self, ctx: ActionContext, params: RotateParams) -> list[tuple[str, str]]:
        shared = {a.user: a for a in ctx.inventory.msp.shared_credentials.accounts
                  if (a.os or ctx.host.os) == ctx.host.os}
        names = list(params.accounts) or list(shared)
        out = []
        for user in names:
            if user == ctx.conn.endpoint.user:
                raise ActionFailed(f"refusing to change {user!r}: it is the account irkit itself logs in as")
            mode = params.mode
            if mode == "inventory":
                mode = shared[user].action if user in shared else "rotate"
            out.append((user, mode))
        return out

    def _length(self, ctx: ActionContext, params: RotateParams) -> int:
        return params.length or ctx.inventory.msp.policy.password_length

    def _escrow(self, ctx: ActionContext) -> esc.Escrow:
        return esc.Escrow(ctx.case_id)

    def _due(self, ctx: ActionContext, params: RotateParams, user: str) -> tuple[bool, str]:
        """Whether a rotation is needed by the time rule (``due_after_days``), and why."""
        assert params.due_after_days is not None
        last = esc.last_verified(ctx.inventory.msp.name, ctx.host.tenant, ctx.host.name, user)
        if last is None:
            return True, "no escrowed password on record"
        when = last.state_time(esc.VERIFIED) or last.created
        age = (esc.utcnow() - when).total_seconds() / 86400
        if age >= params.due_after_days:
            return True, f"password is {age:.0f} days old (policy {params.due_after_days})"
        return False, f"not due: set {age:.1f} days ago (policy {params.due_after_days})"

    def _needed(self, ctx: ActionContext, params: RotateParams, store: esc.Escrow, user: str, *,
                check_login: bool) -> tuple[bool, str]:
        """Does this account need a new password now? (due rule, run-start rule, or once per case)"""
        if params.due_after_days is not None:
            return self._due(ctx, params, user)
        if params.unless_rotated_since is not None:
            since = params.unless_rotated_since
            if since.tzinfo is None:
                since = since.replace(tzinfo=dt.timezone.utc)
            last = esc.last_verified(ctx.inventory.msp.name, ctx.host.tenant, ctx.host.name, user)
            when = (last.state_time(esc.VERIFIED) or last.created) if last else None
            if last is not None and when is not None and when >= since:
                return False, f"already rotated by this run (escrow entry {last.id}, case {last.case})"
            return True, "to a unique escrowed password"
        current = store.current(ctx.host.tenant, ctx.host.name, user)
        if current is None:
            return True, "to a unique escrowed password"
        if check_login and not self._still_current(ctx, current, user):
            return True, f"escrow entry {current.id} no longer logs in (changed outside irkit?)"
        return False, f"already rotated in this case (escrow entry {current.id})"

    # ---------------------------------------------------------------- plan
    def plan(self, ctx: ActionContext, params: RotateParams) -> Outcome:
        notes, changed = [], False
        store = self._escrow(ctx)
        for user, mode in self._accounts(ctx, params):
            state = _account_state(ctx, user)
            if not state.exists:
                notes.append(f"{user}: no such account")
                continue
            if mode == "lock":
                if state.locked and state.expired:
                    notes.append(f"{user}: already locked and expired")
                else:
                    notes.append(f"{user}: would lock and expire")
                    changed = True
                continue
            unsettled = store.unsettled(ctx.host.tenant, ctx.host.name, user)
            if unsettled:
                notes.append(f"{user}: would reconcile {len(unsettled)} unfinished escrow entr(y/ies)")
                changed = True
            needed, why = self._needed(ctx, params, store, user, check_login=False)
            notes.append(f"{user}: {'would rotate: ' if needed else ''}{why}")
            changed |= needed
        return Outcome(changed, "; ".join(notes) or "no shared accounts for this host")

    # ---------------------------------------------------------------- apply
    def apply(self, ctx: ActionContext, params: RotateParams) -> Outcome:
        notes, changed, details = [], False, {}
        for user, mode in self._accounts(ctx, params):
            state = _account_state(ctx, user)
            if not state.exists:
                notes.append(f"{user}: no such account")
                continue
            if mode == "lock":
                did, note, info = self._lock(ctx, params, state)
            else:
                did, note, info = self._rotate(ctx, params, state)
            changed |= did
            notes.append(f"{user}: {note}")
            details[user] = info
        return Outcome(changed, "; ".join(notes) or "no shared accounts for this host", details)

    def _reconcile(self, ctx: ActionContext, store: esc.Escrow, user: str) -> str | None:
        """Settle entries a killed run left pending/applied: which password does the host accept?"""
        unsettled = store.unsettled(ctx.host.tenant, ctx.host.name, user)
        if not unsettled:
            return None
        # A password change started by a controller that died may still be finishing on the host:
        # let it finish first, or the test below could see the old password and the change land after.
        settled = ctx.run("for i in $(seq 100); do ps -C chpasswd,usermod,passwd >/dev/null 2>&1 || exit 0; "
                          "sleep 0.1; done; exit 1")
        if not settled.ok:
            raise ActionFailed(f"a password change for {user} is still running on the host; try again")
        key = ctx.keys.escrow_private_key()
        endpoint = _endpoint(ctx, user)
        current_found = None
        for entry in unsettled:  # newest first
            if current_found is not None:
                store.set_state(entry, esc.ROLLED_BACK, note=f"reconciled: superseded by {current_found}")
                continue
            password = entry.decrypt(key)
            works = login_with_password(endpoint, password, ctx.deadline) or bool(password_is_set(ctx, user, password))
            if works:
                store.set_state(entry, esc.VERIFIED, note="reconciled: the host accepts this password")
                current_found = entry.id
            else:
                store.set_state(entry, esc.ROLLED_BACK, note="reconciled: never applied (the host rejects it)")
        _record(ctx, "credential.reconciled", {"account": user, "entries": [e.id for e in unsettled],
                                               "current": current_found})
        return current_found

    def _still_current(self, ctx: ActionContext, entry: esc.EscrowEntry, user: str) -> bool:
        password = entry.decrypt(ctx.keys.escrow_private_key())
        return bool(password_is_set(ctx, user, password)) or login_with_password(_endpoint(ctx, user), password, ctx.deadline)

    def _rotate(self, ctx: ActionContext, params: RotateParams, state: AccountState) -> tuple[bool, str, dict]:
        user = state.user
        store = self._escrow(ctx)
        tenant, host = ctx.host.tenant, ctx.host.name
        reconciled = self._reconcile(ctx, store, user)
        info: dict[str, Any] = {"reconciled": reconciled} if reconciled else {}
        needed, why = self._needed(ctx, params, store, user, check_login=True)
        if not needed:
            return False, why, info
        old_entry = store.current(tenant, host, user)
        password = generate_password(self._length(ctx, params))
        # 1. escrow first: encrypted and fsynced before the host ever sees the password
        entry = store.put(msp=ctx.inventory.msp.name, tenant=tenant, host=host, account=user, secret=password,
                          recipients=escrow_recipients(params.extra_recipients), data_alg=params.data_alg)
        _record(ctx, "credential.escrowed", {"account": user, "entry": entry.id, "state": esc.PENDING})
        # 2. apply over stdin (never argv)
        try:
            result = ctx.run("chpasswd", stdin=f"{user}:{password}\n".encode())
        except TransportError:
            raise  # unknown whether it applied: the entry stays pending; a resumed run reconciles it
        if not result.ok:
            if not password_is_set(ctx, user, password):
                store.set_state(entry, esc.ROLLED_BACK, note=f"chpasswd failed (exit {result.exit_status})")
                err = result.stderr.decode("utf-8", "replace").strip().splitlines()
                raise ActionFailed(f"chpasswd failed for {user}" + (f": {err[-1][:200]}" if err else ""))
        store.set_state(entry, esc.APPLIED)
        # 3. end the account's sessions and processes
        ended = end_sessions(ctx, user) if params.end_sessions else []
        if ended:
            _record(ctx, "sessions.ended", {"account": user, "pids": ended})
        # 4. prove it: the new password logs in, the old ones do not
        if not login_with_password(_endpoint(ctx, user), password, ctx.deadline):
            _record(ctx, "credential.applied", {"account": user, "entry": entry.id, "state": esc.APPLIED,
                                                "verified": False}, outcome="failed")
            raise ActionFailed(f"new password for {user} is set and escrowed (entry {entry.id}) but a fresh "
                               "login with it failed")
        problems = self._old_still_work(ctx, params, user, old_entry)
        if problems:
            raise ActionFailed(f"{user}: " + "; ".join(problems))
        if _account_state(ctx, user).hash_digest == state.hash_digest:
            raise ActionFailed(f"{user}: the password hash did not change")
        store.set_state(entry, esc.VERIFIED, note="fresh login with the new password; old password refused")
        _record(ctx, "credential.rotated", {"account": user, "entry": entry.id, "state": esc.VERIFIED,
                                            "sessions_ended": len(ended)})
        info.update({"entry": entry.id, "sessions_ended": len(ended)})
        return True, f"rotated (escrow entry {entry.id}, {len(ended)} process(es) ended)", info

    def _old_still_work(self, ctx: ActionContext, params: RotateParams, user: str,
                        old_entry: esc.EscrowEntry | None) -> list[str]:
        problems = []
        endpoint = _endpoint(ctx, user)
        if params.old_password:
            if login_with_password(endpoint, resolve(parse_ref(params.old_password)), ctx.deadline):
                problems.append("the old shared password STILL logs in")
        if old_entry is not None:
            if login_with_password(endpoint, old_entry.decrypt(ctx.keys.escrow_private_key()), ctx.deadline):
                problems.append(f"the previous escrowed password (entry {old_entry.id}) STILL logs in")
        return problems

    def _lock(self, ctx: ActionContext, params: RotateParams, state: AccountState) -> tuple[bool, str, dict]:
        user = state.user
        changed = False
        if not (state.locked and state.expired):
            ctx.run(f"usermod -L -e 1 {ctx.quote(user)}", check=True)
            changed = True
            _record(ctx, "account.locked", {"account": user, "expired": True})
        ended = end_sessions(ctx, user) if params.end_sessions else []
        if ended:
            _record(ctx, "sessions.ended", {"account": user, "pids": ended})
            changed = True
        note = ("locked and expired" if changed else "already locked and expired") + \
            (f", {len(ended)} process(es) ended" if ended else "")
        return changed, note, {"sessions_ended": len(ended)}

    # ---------------------------------------------------------------- verify
    def verify(self, ctx: ActionContext, params: RotateParams) -> Outcome:
        problems, notes = [], []
        store = self._escrow(ctx)
        for user, mode in self._accounts(ctx, params):
            state = _account_state(ctx, user)
            if not state.exists:
                continue
            endpoint = _endpoint(ctx, user)
            if params.old_password and login_with_password(endpoint, resolve(parse_ref(params.old_password)), ctx.deadline):
                problems.append(f"{user}: the old shared password STILL logs in")
            if mode == "lock":
                if not (state.locked and state.expired):
                    problems.append(f"{user}: not locked and expired")
                elif session_pids(ctx, user) and params.end_sessions:
                    problems.append(f"{user}: processes still running")
                else:
                    notes.append(f"{user}: locked, expired, no processes")
                continue
            entry = store.current(ctx.host.tenant, ctx.host.name, user)
            if entry is None:
                entry = esc.last_verified(ctx.inventory.msp.name, ctx.host.tenant, ctx.host.name, user)
            if entry is None:
                problems.append(f"{user}: no verified escrowed password")
                continue
            if not login_with_password(endpoint, entry.decrypt(ctx.keys.escrow_private_key()), ctx.deadline):
                problems.append(f"{user}: the escrowed password (entry {entry.id}) does NOT log in")
            else:
                notes.append(f"{user}: escrowed password (entry {entry.id}) logs in")
        if problems:
            return Outcome(False, "; ".join(problems), ok=False)
        return Outcome(False, "; ".join(notes) or "no shared accounts on this host")
