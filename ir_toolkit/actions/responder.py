"""Responder access first: the per-case responder key, installed, proven, and taken off at case close.

``responder.ensure_access``
    A per-case responder key (generated once per case and tenant, under a lock) is
    installed where sshd reads keys for the responder user, and a *fresh* login with it
    is proven before anything else on the host proceeds. The pool then prefers it.

``responder.remove_access``
    At case close the key's lines are removed again; a fresh login with the MSP's own
    responder key must still work, else the case key is put back (never lose access).
"""

from __future__ import annotations

import fcntl
import io
import ipaddress
import os
import posixpath
import shlex
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ir_toolkit.actions import sshd
from ir_toolkit.facts import accounts as account_facts
from ir_toolkit.facts import files
from ir_toolkit.facts import sshd as sshd_facts
from ir_toolkit.actions.base import Action, ActionContext, ActionFailed, Outcome, Params, register
from ir_toolkit.actions.support import endpoint_as, passwd_entry, proven_login, read_files, record, write_file
from ir_toolkit.cases import CaseLayout
from ir_toolkit.fsutil import write_atomic
from ir_toolkit.transports.hostkeys import fingerprint
from ir_toolkit.transports.pool import responder_key_paths
from ir_toolkit.transports.probes import fresh_login
from ir_toolkit.transports.ssh import load_private_key


_case_key_lock = threading.Lock()
#: per case key file: generating one tenant's key (bcrypt) does not wait for another tenant's
_case_key_locks: dict[str, threading.Lock] = {}


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


def _tenant_lock(path: Path) -> threading.Lock:
    with _case_key_lock:
        return _case_key_locks.setdefault(str(path), threading.Lock())


def ensure_case_key(case_id: str, tenant: str, passphrase: str,
                    remember: Callable[[Path, paramiko.PKey], None] | None = None) -> tuple[Path, bool]:
    """The case's responder key pair for ``tenant``, generated once (thread and process safe), the private
    key encrypted at rest with ``passphrase`` (OpenSSH format, bcrypt KDF). Returns (path, created).

    ``remember(path, pkey)`` gets a key it generates, so it is used without decrypting the file again.
    """
    path = case_key_path(case_id, tenant)
    with _tenant_lock(path):  # one tenant's key generation (bcrypt) does not hold up another tenant's
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
            write_atomic(pub, public + f" irkit-responder-{case_id}-{tenant}\n".encode(), mode=0o644)
            write_atomic(path, private, mode=0o600)
            if remember is not None:
                plain = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption())
                remember(path, paramiko.Ed25519Key(file_obj=io.StringIO(plain.decode())))
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


def keyfile_for(config: dict[str, list[str]], user: str, home: str, uid: str) -> str:
    """Pure: the ``authorized_keys`` file sshd reads first for ``user`` under its effective ``config``."""
    patterns = " ".join(config.get("authorizedkeysfile", [".ssh/authorized_keys"])).split()
    for pattern in patterns:
        path = sshd_facts.expand_authorized_keys(pattern, user, home, uid)
        if path:
            return path
    raise ActionFailed("sshd reads no AuthorizedKeysFile for the responder (AuthorizedKeysFile none)")


def responder_keyfile(ctx: ActionContext, user: str) -> tuple[str, str, str]:
    """(authorized_keys path sshd reads first for ``user``, uid, home)."""
    entry = passwd_entry(ctx, user)
    if entry is None:
        raise ActionFailed(f"responder account {user!r} does not exist on the host")
    _, uid, home = entry
    daemon = sshd.locate(ctx)
    addr = sshd.client_address(ctx)
    # sshd -T and the file its default AuthorizedKeysFile names, in one command (when the config names
    # another file, that one is read when asked for; outside a step's memo this asks nothing)
    try:
        guess = [files.read_files([keyfile_for({}, user, home, uid)])]
    except ActionFailed:
        guess = []
    ctx.prefetch([sshd_facts.effective_config(daemon, user, addr), *guess])
    config = sshd.effective_config(ctx, daemon, user, addr)
    return keyfile_for(config, user, home, uid), uid, home


@dataclass(frozen=True)
class AccessDecision:
    """What ``responder.ensure_access`` does to the key file (pure function of its content)."""

    #: the case key is there with exactly irkit's options: nothing to write
    installed: bool
    #: lines of the case key with other options (an older install): removed before the new line
    stale_lines: int
    #: the file exists (a new one is created 0600, owned by the responder)
    exists: bool


def access_decision(content: str | None, blob: bytes, options: str) -> AccessDecision:
    """Pure: given the key file's content (None: no such file), the case key's blob and its options."""
    lines = (content or "").splitlines()
    mine = [line for line in lines if sshd_facts.key_blob(line.strip()) == blob]
    installed = any(line.startswith(options + " ") and sshd_facts.key_blob(line) == blob for line in mine)
    return AccessDecision(installed, 0 if installed else len(mine), content is not None)


def install_script(path: str, user: str) -> str:
    """Shell that appends stdin (the key line) to ``path``, creating the directory 0700 and the file 0600
    owned by ``user`` when they do not exist, and ending a last line without newline first.

    Two processes on a host whose file exists (``tail -c1``, ``cat``): the directory computed here (as
    ``dirname`` would), not by ``dirname`` on the host; the last byte compared in the shell (``x`` keeps a newline from being stripped by the
    command substitution; a NUL, which the shell drops, is not a newline: one is added), not ``od | tr``."""
    q = shlex.quote(path)
    owner = shlex.quote(user)
    return (f'f={q}; d={shlex.quote(posixpath.dirname(path) or ".")}; '
            f'if [ ! -d "$d" ]; then mkdir -p "$d" && chmod 700 "$d" && chown {owner} "$d"; fi; '
            f'new=0; [ -e "$f" ] || new=1; '
            f'if [ -s "$f" ]; then case "$(tail -c1 "$f"; echo x)" in "\nx") ;; *) echo >> "$f";; esac; fi; '
            f'umask 077; cat >> "$f" && if [ $new = 1 ]; then chown {owner} "$f" && chmod 600 "$f"; fi')


@register
class EnsureResponderAccess(Action):
    """Install and prove a per-case responder key before any credential is touched."""

    name = "responder.ensure_access"
    Params = EnsureAccessParams
    description = "install a per-case responder key and prove a fresh login with it"
    reuses_facts = True

    def _user(self, ctx: ActionContext, params: EnsureAccessParams) -> str:
        return params.user or ctx.host.user or ctx.inventory.msp.responder.user

    def _decision(self, ctx: ActionContext, path: str, blob: bytes, options: str) -> AccessDecision:
        return access_decision(read_files(ctx, [path]).get(path), blob, options)

    def plan_facts(self, ctx: ActionContext, params: EnsureAccessParams) -> list[Any]:
        return [account_facts.passwd_entry(self._user(ctx, params)), sshd_facts.daemon(), sshd_facts.client_address()]

    def plan(self, ctx: ActionContext, params: EnsureAccessParams) -> Outcome:
        user = self._user(ctx, params)
        key = case_key_path(ctx.case_id, ctx.host.tenant)
        path, _, _ = responder_keyfile(ctx, user)
        if not key.exists():
            return Outcome(True, f"would create the case's responder key and install it in {path}")
        blob = sshd_facts.key_blob(public_line(key))
        assert blob is not None
        if self._decision(ctx, path, blob, key_options(ctx.inventory)).installed:
            return Outcome(False, f"case responder key already in {path}")
        return Outcome(True, f"would install the case's responder key in {path}")

    def apply(self, ctx: ActionContext, params: EnsureAccessParams) -> Outcome:
        user = self._user(ctx, params)
        passphrase = case_key_passphrase(ctx)
        ctx.prefetch(self.plan_facts(ctx, params))  # the independent facts below, in one command
        _check_from(ctx)
        key_path, created = ensure_case_key(ctx.case_id, ctx.host.tenant, passphrase,
                                            remember=ctx.pool.remember_key if ctx.pool is not None else None)
        options = key_options(ctx.inventory)
        line = f"{options} {public_line(key_path)}"
        blob = sshd_facts.key_blob(line)
        assert blob is not None
        fp = fingerprint(blob)
        path, uid, home = responder_keyfile(ctx, user)
        changed = False
        decision = self._decision(ctx, path, blob, options)
        if not decision.installed:
            if decision.stale_lines:
                remove_key_lines(ctx, path, blob)  # an older line of this key without the options
            ctx.run(install_script(path, user), stdin=(line + "\n").encode(), check=True)
            changed = True
        # The proof: a brand-new connection with exactly this key, before anything else proceeds (made
        # here, never reused; later steps of this phase may reuse it while nothing changes: AccessProofs)
        pkey = _case_pkey(ctx, key_path, passphrase)
        if not proven_login(ctx, endpoint_as(ctx, user), pkey):
            record(ctx, "responder.access_failed", {"fingerprint": fp, "file": path}, outcome="failed")
            raise ActionFailed(f"installed the case responder key in {path} but a fresh login with it failed; "
                               "nothing else will be changed on this host")
        if ctx.pool is not None:
            ctx.pool.reload_keys()  # the pool prefers the case key from now on
        if changed:
            record(ctx, "responder.key_installed", {"fingerprint": fp, "file": path, "user": user,
                                                     "key_created": created, "options": options})
        # verified: the fresh login above is the end state's proof (verify would repeat exactly it)
        return Outcome(changed, f"case responder key {'installed in' if changed else 'already in'} {path}; "
                                "fresh login proven", {"fingerprint": fp, "file": path}, verified=True)

    def verify(self, ctx: ActionContext, params: EnsureAccessParams) -> Outcome:
        key_path = case_key_path(ctx.case_id, ctx.host.tenant)
        if not key_path.exists():
            return Outcome(False, "the case responder key does not exist", ok=False)
        ok = fresh_login(endpoint_as(ctx, self._user(ctx, params)),
                         _case_pkey(ctx, key_path, case_key_passphrase(ctx)), ctx.deadline)
        return Outcome(False, "fresh login with the case responder key works" if ok
                       else "fresh login with the case responder key FAILED", ok=ok)


def remove_key_lines(ctx: ActionContext, path: str, blob: bytes) -> int:
    """Remove every line of ``path`` that holds the key ``blob`` (any options); returns how many."""
    content = read_files(ctx, [path]).get(path)
    if content is None:
        return 0
    lines = content.splitlines(keepends=True)
    kept = [line for line in lines if sshd_facts.key_blob(line.strip()) != blob]
    if len(kept) != len(lines):
        write_file(ctx, path, "".join(kept))
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
        blob = sshd_facts.key_blob(public_line(key))
        return (key, blob) if blob else None

    def _present(self, ctx: ActionContext, path: str, blob: bytes) -> bool:
        decision = access_decision(read_files(ctx, [path]).get(path), blob, key_options(ctx.inventory))
        return decision.installed or decision.stale_lines > 0

    def _msp_key_works(self, ctx: ActionContext, user: str) -> bool:
        keys = [load_private_key(p) for p in responder_key_paths(ctx.inventory, None) if p.exists()]
        return any(fresh_login(endpoint_as(ctx, user), k, ctx.deadline) for k in keys)

    def plan(self, ctx: ActionContext, params: RemoveAccessParams) -> Outcome:
        found = self._blob(ctx)
        if found is None:
            return Outcome(False, "this case has no responder key for the tenant")
        path, _, _ = responder_keyfile(ctx, self._user(ctx, params))
        if not self._present(ctx, path, found[1]):
            return Outcome(False, f"case responder key not in {path}")
        return Outcome(True, f"would remove the case responder key from {path}")

    def apply(self, ctx: ActionContext, params: RemoveAccessParams) -> Outcome:
        found = self._blob(ctx)
        if found is None:
            return Outcome(False, "this case has no responder key for the tenant")
        key_path, blob = found
        user = self._user(ctx, params)
        path, _, _ = responder_keyfile(ctx, user)
        fp = fingerprint(blob)
        if not self._present(ctx, path, blob):
            return Outcome(False, f"case responder key not in {path}", {"fingerprint": fp})
        before = read_files(ctx, [path]).get(path, "")
        removed = remove_key_lines(ctx, path, blob)
        if not self._msp_key_works(ctx, user):
            write_file(ctx, path, before)  # never lose responder access
            record(ctx, "responder.key_removal_rolled_back", {"fingerprint": fp, "file": path}, outcome="failed")
            raise ActionFailed(f"after removing the case responder key from {path}, a fresh login with the "
                               "MSP's responder key failed: the case key was put back")
        if ctx.pool is not None:
            ctx.pool.reload_keys()
        record(ctx, "responder.key_removed", {"fingerprint": fp, "file": path, "user": user, "lines": removed})
        return Outcome(True, f"case responder key removed from {path}; the MSP's responder key logs in",
                       {"fingerprint": fp, "file": path, "lines": removed})

    def verify(self, ctx: ActionContext, params: RemoveAccessParams) -> Outcome:
        found = self._blob(ctx)
        if found is None:
            return Outcome(False, "this case has no responder key for the tenant")
        key_path, blob = found
        user = self._user(ctx, params)
        path, _, _ = responder_keyfile(ctx, user)
        problems = []
        if self._present(ctx, path, blob):
            problems.append(f"the case responder key is still in {path}")
        passphrase = ctx.keys.case_key_passphrase(ctx.case_id)
        if passphrase is not None and key_path.exists() and \
                fresh_login(endpoint_as(ctx, user), load_private_key(key_path, passphrase), ctx.deadline):
            problems.append("a fresh login with the case responder key still WORKS")
        if not self._msp_key_works(ctx, user):
            problems.append("a fresh login with the MSP's responder key FAILED")
        if problems:
            return Outcome(False, "; ".join(problems), ok=False)
        return Outcome(False, "case responder key gone: it logs in no more, the MSP's responder key does")
