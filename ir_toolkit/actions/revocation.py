"""``ssh_keys.revoke``: the MSP's shared SSH keys removed everywhere sshd looks, and revoked in a KRL.

By fingerprint — whatever a line's options or comment — every matching line goes
from every authorized_keys file sshd would read: all users, ``AuthorizedKeysFile``
as sshd itself evaluates it (``sshd -T``, per user when ``Match`` blocks exist)
plus ``authorized_keys``/``authorized_keys2``. The keys are added (``hash:
SHA256:...``) to the KRL that sshd's ``RevokedKeys`` names; when sshd has none,
``/etc/ssh/irkit-revoked-keys.krl`` is created first and then configured (the
config is validated with ``sshd -t``, sshd reloaded, and a fresh responder login
proven — or the old config is put back). A copy of the key planted anywhere else
is then refused too. irkit's own responder keys are never revoked.

Verification: no file holds the keys, the KRL lists them, sshd uses it, a login
attempt with the private key (``probe_keys``, or the private key found next to
the inventory's ``public_key_file``) FAILS as root, the responder and the shared
accounts, and the responder's fresh login still works.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import paramiko
from pydantic import field_validator

from ir_toolkit.actions import sshd
from ir_toolkit.actions.base import DESTROYS_CREDENTIALS, Action, ActionContext, ActionFailed, Outcome, Params, register
from ir_toolkit.facts import accounts as account_facts
from ir_toolkit.facts import files
from ir_toolkit.facts import sshd as sshd_facts
from ir_toolkit.actions.responder import case_key_path, public_line
from ir_toolkit.actions.support import (
    all_users,
    endpoint_as,
    read_files,
    record,
    responder_access,
    responder_access_works,
    responder_pkeys,
    write_file,
)
from ir_toolkit.errors import IrkitError
from ir_toolkit.facts.accounts import PasswdEntry
from ir_toolkit.secrets.references import expand_path, is_reference, parse_ref
from ir_toolkit.transports.hostkeys import fingerprint
from ir_toolkit.transports.probes import login_with_key
from ir_toolkit.transports.ssh import TransportError, load_private_key


DEFAULT_KRL = "/etc/ssh/irkit-revoked-keys.krl"
_KRL_MAGIC = b"SSHKRL\n\0"
_NO_KEYGEN = "irkit:no-ssh-keygen"


@dataclasses.dataclass
class RevokeTarget:
    fingerprint: str
    name: str
    public_line: str | None = None


@dataclasses.dataclass
class KeyFileHit:
    path: str
    user: str
    lines: list[int]
    content: str


@dataclasses.dataclass
class RevokeState:
    daemon: sshd_facts.SshdDaemon
    hits: list[KeyFileHit]
    revoked_keys: str          # what sshd -T says RevokedKeys is ("none" if unset)
    krl_path: str              # where the KRL is (or will be)
    krl_exists: bool
    krl_is_krl: bool
    in_krl: set[str]           # fingerprints the KRL already revokes
    files_checked: int

    @property
    def configured(self) -> bool:
        return self.revoked_keys != "none" and self.revoked_keys == self.krl_path


class RevokeParams(Params):
    #: also revoke these (fingerprints ``SHA256:...`` or public key lines), besides the inventory's shared keys
    keys: list[str] = []
    #: revoke the inventory's ``msp.shared_credentials.ssh_keys``
    from_inventory: bool = True
    #: KRL file to create when sshd has no RevokedKeys yet
    krl_path: str = DEFAULT_KRL
    #: private key files (``file:PATH``) that must no longer log in: the verification attempt
    probe_keys: list[str] = []
    #: also probe with the private key found next to an inventory ``public_key_file`` (``X`` for ``X.pub``)
    probe_sibling_keys: bool = True
    #: accounts to attempt those logins as (default: root, the responder user and the shared accounts)
    probe_users: list[str] = []

    @field_validator("probe_keys")
    @classmethod
    def _refs(cls, value: list[str]) -> list[str]:
        for item in value:
            if not is_reference(item) or not item.startswith("file:"):
                raise ValueError("probe_keys are file:PATH references to private key files, never inline keys")
        return value

    @field_validator("krl_path")
    @classmethod
    def _abs(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("krl_path must be an absolute path")
        return value


def revoke_targets(ctx: ActionContext, params: RevokeParams) -> list[RevokeTarget]:
    """The keys to revoke, by fingerprint; refuses to include irkit's own responder keys."""
    targets: dict[str, RevokeTarget] = {}

    def add_line(text: str, name: str) -> None:
        blob = sshd_facts.key_blob(text)
        if blob is None:
            raise ActionFailed(f"{name}: not an OpenSSH public key")
        fp = fingerprint(blob)
        targets.setdefault(fp, RevokeTarget(fp, name, text.strip()))

    if params.from_inventory:
        for i, key in enumerate(ctx.inventory.msp.shared_credentials.ssh_keys):
            name = key.name or f"shared key {i + 1}"
            if key.fingerprint:
                targets.setdefault(key.fingerprint, RevokeTarget(key.fingerprint, name))
            elif key.public_key:
                add_line(key.public_key, name)
            elif key.public_key_file:
                path = expand_path(key.public_key_file)
                try:
                    text = path.read_text()
                except OSError as exc:
                    raise ActionFailed(f"{name}: cannot read {path}: {exc.strerror}") from None
                add_line(text.strip().splitlines()[0] if text.strip() else "", name)
    for item in params.keys:
        if item.startswith("SHA256:"):
            targets.setdefault(item, RevokeTarget(item, item))
        else:
            add_line(item, "playbook key")
    ours = responder_fingerprints(ctx)
    clash = sorted(set(targets) & ours)
    if clash:
        raise ActionFailed(f"refusing to revoke {', '.join(clash)}: it is irkit's own responder key "
                           "(revoking it would lock the responders out)")
    return list(targets.values())


def responder_fingerprints(ctx: ActionContext) -> set[str]:
    fps: set[str] = set()
    for key in responder_pkeys(ctx):
        fps.add(fingerprint(key.asbytes()))
    case_key = case_key_path(ctx.case_id, ctx.host.tenant)
    if case_key.with_name(case_key.name + ".pub").exists():
        blob = sshd_facts.key_blob(public_line(case_key))
        if blob:
            fps.add(fingerprint(blob))
    return fps


def key_file_candidates(users: list[PasswdEntry], per_user: dict[str, dict[str, list[str]]]) -> dict[str, str]:
    """Pure: every authorized_keys file sshd would read (its ``AuthorizedKeysFile`` per user, plus
    ``authorized_keys`` and ``authorized_keys2``) -> the user it belongs to (first user wins)."""
    candidates: dict[str, str] = {}
    for user, uid, home in users:
        patterns = " ".join(per_user.get(user, {}).get("authorizedkeysfile", [])).split()
        patterns += [".ssh/authorized_keys", ".ssh/authorized_keys2"]
        for pattern in patterns:
            path = sshd_facts.expand_authorized_keys(pattern, user, home, uid)
            if path and path not in candidates:
                candidates[path] = user
    return candidates


def revocation_state(daemon: sshd_facts.SshdDaemon, candidates: dict[str, str], contents: dict[str, str],
                     revoked_keys: str, krl_path: str, listing: sshd_facts.KrlListing,
                     targets: list[RevokeTarget]) -> RevokeState:
    """Pure: the revocation's state from the host's facts — which files hold which target lines, which
    targets the KRL already revokes, whether sshd uses it."""
    wanted = {t.fingerprint for t in targets}
    hits = []
    for path, content in contents.items():
        lines = [k.index for k in sshd_facts.authorized_keys(content) if k.fingerprint in wanted]
        if lines:
            hits.append(KeyFileHit(path, candidates.get(path, ""), lines, content))
    in_krl = {t.fingerprint for t in targets if sshd_facts.fingerprint_hex(t.fingerprint) in listing.hashes}
    return RevokeState(daemon, hits, revoked_keys, krl_path, listing.exists, listing.is_krl, in_krl, len(contents))


def sshd_config_with_krl(current: str, krl_path: str, case_id: str) -> str:
    """Pure: the sshd config with ``RevokedKeys`` first (sshd takes the first value of a keyword, so a
    later ``RevokedKeys none`` in the file or an Include cannot undo it)."""
    if any(ch in krl_path for ch in "\n\r\"") or not krl_path.startswith("/"):
        raise ActionFailed(f"refusing KRL path {krl_path[:80]!r} (absolute, one line, no quotes)")
    return (f"# Added by irkit (case {case_id}): keys revoked during incident response.\n"
            f"RevokedKeys {krl_path}\n" + current)


def _krl_listing(ctx: ActionContext, path: str) -> sshd_facts.KrlListing:
    listing = ctx.fact(sshd_facts.krl_listing(path))
    if listing.exists and not listing.is_krl:
        content = read_files(ctx, [path]).get(path, "")
        return sshd_facts.KrlListing(True, False, frozenset(sshd_facts.key_hashes(content.splitlines())))
    return listing


def inspect_revocation(ctx: ActionContext, targets: list[RevokeTarget], params: RevokeParams) -> RevokeState:
    # in three commands, not seven: each stage's independent facts in one (ctx.prefetch; none is kept
    # past a command that changes the host)
    ctx.prefetch([sshd_facts.daemon(), sshd_facts.client_address(), account_facts.passwd_all()])
    daemon = sshd.locate(ctx)
    addr = sshd.client_address(ctx)
    users = all_users(ctx)
    names = [u for u, _, _ in users]
    ctx.prefetch([sshd_facts.has_match_blocks(daemon),
                  *(sshd_facts.effective_config(daemon, n, addr) for n in dict.fromkeys([*names[:1], "root"]))])
    per_user = sshd.effective_for_users(ctx, daemon, [u for u, _, _ in users], addr,
                                        ("authorizedkeysfile", "revokedkeys"))
    root_view = per_user.get("root") or sshd.effective_config(ctx, daemon, "root", addr)
    revoked_keys = (root_view.get("revokedkeys") or ["none"])[0]
    candidates = key_file_candidates(users, per_user)
    krl_path = revoked_keys if revoked_keys != "none" else params.krl_path
    if candidates:
        ctx.prefetch([files.read_files(list(candidates)), sshd_facts.krl_listing(krl_path)])
    contents = read_files(ctx, list(candidates))
    return revocation_state(daemon, candidates, contents, revoked_keys, krl_path, _krl_listing(ctx, krl_path),
                            targets)


@register
class RevokeSshKeys(Action):
    """Remove the MSP's shared SSH keys everywhere sshd looks and revoke them in a KRL."""

    name = "ssh_keys.revoke"
    Params = RevokeParams
    description = "remove shared keys from every authorized_keys file and revoke them in sshd's KRL"
    destructive = True
    destroys = DESTROYS_CREDENTIALS
    reuses_facts = True

    def plan_facts(self, ctx: ActionContext, params: RevokeParams) -> list[Any]:
        return [sshd_facts.daemon(), sshd_facts.client_address(), account_facts.passwd_all()]

    def plan(self, ctx: ActionContext, params: RevokeParams) -> Outcome:
        targets = revoke_targets(ctx, params)
        if not targets:
            return Outcome(False, "no keys to revoke")
        state = inspect_revocation(ctx, targets, params)
        todo = []
        if state.hits:
            todo.append(f"remove {sum(len(h.lines) for h in state.hits)} key line(s) from "
                        f"{len(state.hits)} file(s)")
        missing = [t for t in targets if t.fingerprint not in state.in_krl]
        if missing:
            todo.append(f"add {len(missing)} key(s) to the KRL {state.krl_path}")
        if not state.configured:
            todo.append("configure sshd RevokedKeys and reload sshd")
        if not todo:
            return Outcome(False, f"{len(targets)} key(s) already revoked")
        return Outcome(True, "would " + "; ".join(todo))

    def apply(self, ctx: ActionContext, params: RevokeParams) -> Outcome:
        targets = revoke_targets(ctx, params)
        if not targets:
            return Outcome(False, "no keys to revoke")
        state = inspect_revocation(ctx, targets, params)
        details: dict[str, Any] = {"fingerprints": [t.fingerprint for t in targets], "krl": state.krl_path}
        changed = False
        # 1. the KRL first: sshd must never point at a missing KRL (it would refuse every key)
        missing = [t for t in targets if t.fingerprint not in state.in_krl]
        if missing:
            self._update_krl(ctx, state, missing)
            details["krl_added"] = [t.fingerprint for t in missing]
            changed = True
        # 2. every authorized_keys line holding one of the keys, whatever its options and comment
        removed = []
        for hit in state.hits:
            kept = [line for i, line in enumerate(hit.content.splitlines()) if i not in set(hit.lines)]
            write_file(ctx, hit.path, "\n".join(kept) + ("\n" if kept else ""))
            removed.append({"file": hit.path, "user": hit.user, "lines": len(hit.lines)})
        if removed:
            details["removed"] = removed
            changed = True
        # 3. sshd must use the KRL: configure RevokedKeys and reload, proving responder access after
        if not state.configured:
            self._configure_sshd(ctx, state)
            details["configured"] = state.daemon.config_file
            changed = True
        if changed:
            record(ctx, "ssh_keys.revoked", details)
        n_lines = sum(r["lines"] for r in removed)
        return Outcome(changed, (f"revoked {len(targets)} key(s): {n_lines} line(s) removed from {len(removed)} "
                                 f"file(s), KRL {state.krl_path}") if changed else
                       f"{len(targets)} key(s) already revoked", details)

    def _update_krl(self, ctx: ActionContext, state: RevokeState, missing: list[RevokeTarget]) -> None:
        spec = "".join(f"hash: {t.fingerprint}\n" for t in missing)
        q = ctx.quote(state.krl_path)
        if state.krl_exists and state.krl_is_krl:
            cmd = f"ssh-keygen -q -k -u -f {q} - && chmod 644 {q}"
        elif state.krl_exists:
            # a plain list of public keys: convert it into a KRL that revokes those keys too
            cmd = (f"tmp={q}.irkit-tmp.$$; {{ cat {q}; echo; cat; }} | ssh-keygen -q -k -f \"$tmp\" - && "
                   f"chmod 644 \"$tmp\" && mv -f \"$tmp\" {q}")
        else:
            cmd = (f"mkdir -p \"$(dirname {q})\" && tmp={q}.irkit-tmp.$$ && ssh-keygen -q -k -f \"$tmp\" - && "
                   f"chmod 644 \"$tmp\" && mv -f \"$tmp\" {q}")
        # is ssh-keygen there? asked in the same command (one channel): exit 127 with irkit's mark if not
        result = ctx.run(f"command -v ssh-keygen >/dev/null 2>&1 || {{ echo {_NO_KEYGEN} >&2; exit 127; }}; {cmd}",
                         stdin=spec.encode())
        if result.exit_status == 127 and _NO_KEYGEN.encode() in result.stderr:
            raise ActionFailed("ssh-keygen (openssh-client) is not installed on the host: cannot write the KRL")
        if not result.ok:
            err = result.stderr.decode("utf-8", "replace").strip().splitlines()
            raise ActionFailed(f"`ssh-keygen` exited {result.exit_status}" + (f": {err[-1][:200]}" if err else ""))

    def _configure_sshd(self, ctx: ActionContext, state: RevokeState) -> None:
        daemon = state.daemon
        if state.revoked_keys != "none":
            # sshd already uses a KRL/list (maybe set by -o): we updated that very file; nothing to configure
            return
        config = daemon.config_file
        q = ctx.quote(config)
        backup = config + ".irkit-backup"
        current = read_files(ctx, [config]).get(config)
        if current is None:
            raise ActionFailed(f"sshd config {config} is not readable")
        ctx.run(f"cp -p {q} {ctx.quote(backup)}", check=True)
        write_file(ctx, config, sshd_config_with_krl(current, state.krl_path, ctx.case_id))
        problem = sshd.test_config(ctx, daemon)
        if problem:
            ctx.run(f"cp -p {ctx.quote(backup)} {q}", check=True)
            raise ActionFailed(f"sshd rejected the RevokedKeys setting ({problem}); config restored")
        sshd.reload(ctx, daemon, tested=True)  # `sshd -t` just passed on this very config
        if not responder_access_works(ctx):
            # never lose responder access: put the old config back and reload again
            ctx.run(f"cp -p {ctx.quote(backup)} {q}", check=True)
            sshd.reload(ctx, daemon)
            raise ActionFailed("after enabling RevokedKeys a fresh responder login failed; config restored")

    def verify(self, ctx: ActionContext, params: RevokeParams) -> Outcome:
        targets = revoke_targets(ctx, params)
        if not targets:
            return Outcome(False, "no keys to revoke")
        state = inspect_revocation(ctx, targets, params)
        problems = []
        if state.hits:
            problems.append("still in " + ", ".join(h.path for h in state.hits))
        missing = [t.fingerprint for t in targets if t.fingerprint not in state.in_krl]
        if missing:
            problems.append(f"{len(missing)} key(s) not in the KRL")
        if state.revoked_keys == "none":
            problems.append("sshd RevokedKeys is not set")
        access = responder_access(ctx, reuse=True)
        if not access.ok:
            problems.append("responder login FAILED")
        attempts = self._probe(ctx, params, {t.fingerprint for t in targets}, problems)
        if problems:
            return Outcome(False, "; ".join(problems), ok=False)
        return Outcome(False, f"{len(targets)} key(s) in no authorized_keys file and in the KRL; "
                              f"{attempts} login attempt(s) with the revoked key refused; responder login works"
                              + access.note(), {"attempts": attempts})

    def _probe(self, ctx: ActionContext, params: RevokeParams, wanted: set[str], problems: list[str]) -> int:
        users = list(params.probe_users) or sorted(
            {"root", ctx.conn.endpoint.user, *(a.user for a in ctx.inventory.msp.shared_credentials.accounts
                                              if (a.os or ctx.host.os) == ctx.host.os)})
        attempts = 0
        refs = list(params.probe_keys)
        if params.probe_sibling_keys and params.from_inventory:
            for key in ctx.inventory.msp.shared_credentials.ssh_keys:
                if key.public_key_file and key.public_key_file.endswith(".pub"):
                    sibling = expand_path(key.public_key_file[: -len(".pub")])
                    given = {str(parse_ref(r).path) for r in refs if r.startswith("file:")}
                    if sibling.is_file() and str(sibling) not in given:
                        refs.append(f"file:{sibling}")
        for ref in refs:
            sref = parse_ref(ref)
            try:
                pkey = load_private_key(sref.path)
            except (TransportError, IrkitError, paramiko.SSHException, ValueError) as exc:
                problems.append(f"cannot load probe key {ref}: {exc}")
                continue
            if fingerprint(pkey.asbytes()) not in wanted:
                problems.append(f"probe key {ref} is not one of the revoked keys")
                continue
            for user in users:
                attempts += 1
                if login_with_key(endpoint_as(ctx, user), pkey, ctx.deadline):
                    problems.append(f"the revoked key STILL logs in as {user}")
        return attempts
