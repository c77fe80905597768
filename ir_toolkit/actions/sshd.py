"""What sshd on a host really does: find the daemon serving us, read its effective config, reload it safely.

Used by the containment actions. Nothing here guesses paths: the daemon is the
``sshd`` ancestor of our own session, its config file and ``-o`` overrides come
from its command line, the effective settings from ``sshd -T`` run with those
same arguments, and a reload is ``sshd -t`` (refuse a broken config) followed
by SIGHUP to that daemon's pid (what ``systemctl reload ssh`` does too).

Also: parsing ``authorized_keys`` lines (options and comments do not matter,
the key blob's SHA256 fingerprint does) and expanding ``AuthorizedKeysFile``.
"""

from __future__ import annotations

import base64
import ipaddress
import shlex
import time
from dataclasses import dataclass, field

from ir_toolkit.actions.base import ActionContext, ActionFailed
from ir_toolkit.transports.hostkeys import fingerprint

_LOCATE = r"""
pid=$$; top=""
while [ -n "$pid" ] && [ "$pid" -gt 1 ] 2>/dev/null; do
  comm=$(cat /proc/$pid/comm 2>/dev/null) || break
  case "$comm" in
    sshd|sshd-session|sshd-auth) top=$pid ;;
    *) [ -n "$top" ] && break ;;
  esac
  pid=$(sed -n 's/^PPid:[[:space:]]*//p' /proc/$pid/status 2>/dev/null)
done
[ -n "$top" ] || { echo "no sshd ancestor" >&2; exit 3; }
echo "$top"
readlink /proc/$top/exe
readlink /proc/$top/cwd
tr '\0' '\n' < /proc/$top/cmdline
"""

# sshd options that take an argument, and those of them that shape the configuration
_WITH_ARG = set("cCEfghkop")
_CONFIG_ARGS = set("cfhop")


@dataclass
class SshdDaemon:
    """The listening sshd that serves our session."""

    pid: int
    exe: str
    config_file: str
    #: the daemon's own options that shape its configuration (``-f``, ``-o``, ``-h``, ``-p``, ``-c``)
    config_args: list[str] = field(default_factory=list)

    def command(self, *extra: str) -> str:
        """A shell command running this sshd binary with the daemon's config options plus ``extra``."""
        return " ".join(shlex.quote(a) for a in (self.exe, *self.config_args, *extra))


def parse_daemon_argv(argv: list[str]) -> tuple[list[str], str | None]:
    """Config-shaping options and the ``-f`` file from a daemon's argv (``argv[0]`` excluded)."""
    keep: list[str] = []
    config: str | None = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-") or len(arg) < 2:
            i += 1
            continue
        flags = arg[1:]
        for j, flag in enumerate(flags):
            if flag in _WITH_ARG:
                value = flags[j + 1:]
                if not value:
                    i += 1
                    value = argv[i] if i < len(argv) else ""
                if flag in _CONFIG_ARGS:
                    keep += [f"-{flag}", value]
                if flag == "f":
                    config = value
                break
        i += 1
    return keep, config


def _split_cmdline(lines: list[str]) -> list[str]:
    """argv of the daemon: NUL-separated, or the ``sshd: ARGV [listener] ...`` process title."""
    args = [line for line in lines if line != ""]
    if len(args) == 1 and args[0].startswith("sshd: "):
        title = args[0][len("sshd: "):]
        title = title.split(" [listener]", 1)[0]
        try:
            return shlex.split(title)
        except ValueError:
            return title.split()
    return args


def locate(ctx: ActionContext) -> SshdDaemon:
    """Find the sshd daemon whose child is running our commands."""
    result = ctx.run(_LOCATE)
    lines = result.text.split("\n")
    if not result.ok or len(lines) < 4 or not lines[0].strip().isdigit():
        raise ActionFailed("cannot find the sshd serving this session (is /proc readable?)")
    pid, exe, cwd = int(lines[0]), lines[1].strip(), lines[2].strip()
    argv = _split_cmdline(lines[3:])
    config_args, config = parse_daemon_argv(argv[1:])
    if exe.endswith(" (deleted)"):
        exe = exe[: -len(" (deleted)")]
    if not exe.startswith("/"):
        exe = argv[0] if argv and argv[0].startswith("/") else "/usr/sbin/sshd"
    if config is None:
        config = "/etc/ssh/sshd_config"
    elif not config.startswith("/"):
        config = f"{cwd.rstrip('/')}/{config}"
        config_args[config_args.index("-f") + 1] = config
    return SshdDaemon(pid=pid, exe=exe, config_file=config, config_args=config_args)


def client_address(ctx: ActionContext) -> str:
    """The address the host sees us connecting from (for ``Match Address`` evaluation)."""
    result = ctx.run('set -- $SSH_CONNECTION; echo "${1:-127.0.0.1}"')
    seen = result.text.strip() or "127.0.0.1"
    try:
        # host-reported: it goes into shell code (`sshd -T -C addr=...`), so only a real address is used
        return str(ipaddress.ip_address(seen))
    except ValueError:
        raise ActionFailed(f"the host reported an invalid client address {seen[:60]!r} in SSH_CONNECTION") from None


def effective_config(ctx: ActionContext, daemon: SshdDaemon, user: str, addr: str) -> dict[str, list[str]]:
    """``sshd -T`` for a connection by ``user`` from ``addr``: keyword -> values (lower-case keywords)."""
    spec = f"user={user},host={addr},addr={addr}"
    result = ctx.run(daemon.command("-T", "-C", spec))
    if not result.ok:
        err = result.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ActionFailed(f"`sshd -T` failed: {err[-1] if err else result.exit_status}")
    return parse_sshd_t(result.text)


def parse_sshd_t(text: str) -> dict[str, list[str]]:
    config: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        key, _, value = line.partition(" ")
        config.setdefault(key.lower(), []).append(value.strip())
    return config


def has_match_blocks(ctx: ActionContext, daemon: SshdDaemon) -> bool:
    """Does the config (or a file it includes) have ``Match`` blocks, i.e. may settings differ per user?"""
    q = shlex.quote(daemon.config_file)
    script = (f"cd /etc/ssh 2>/dev/null; files={q}; "
              f"for g in $(grep -hiE '^[[:space:]]*include[[:space:]]' {q} 2>/dev/null | "
              "sed -E 's/^[[:space:]]*[Ii][Nn][Cc][Ll][Uu][Dd][Ee][[:space:]]+//'); do files=\"$files $g\"; done; "
              "grep -qiE '^[[:space:]]*match[[:space:]]' $files 2>/dev/null && echo yes || echo no")
    return ctx.run(script).text.strip() != "no"


def effective_for_users(ctx: ActionContext, daemon: SshdDaemon, users: list[str], addr: str,
                        keywords: tuple[str, ...]) -> dict[str, dict[str, list[str]]]:
    """Selected ``sshd -T`` keywords for many users in one round trip (``Match User`` blocks differ per user;
    without any ``Match`` block one evaluation serves every user)."""
    if not users:
        return {}
    if not has_match_blocks(ctx, daemon):
        config = effective_config(ctx, daemon, users[0], addr)
        view = {k: v for k, v in config.items() if k in keywords}
        return {user: view for user in users}
    wanted = "|".join(keywords)
    script = "for u in " + " ".join(shlex.quote(u) for u in users) + "; do\n" + \
        f'  echo "@@user $u"\n  {daemon.command("-T", "-C")} "user=$u,host={addr},addr={addr}" 2>&1 ' + \
        f"| grep -iE '^({wanted}) ' || true\ndone\n"
    result = ctx.run(script)
    out: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in result.text.splitlines():
        if line.startswith("@@user "):
            current = out.setdefault(line[len("@@user "):], {})
            continue
        if current is not None and line.strip():
            key, _, value = line.partition(" ")
            current.setdefault(key.lower(), []).append(value.strip())
    return out


def test_config(ctx: ActionContext, daemon: SshdDaemon) -> str | None:
    """``sshd -t`` with the daemon's options: None when valid, else the error."""
    result = ctx.run(daemon.command("-t"))
    if result.ok:
        return None
    err = result.stderr.decode("utf-8", "replace").strip().splitlines()
    return err[-1] if err else f"exit {result.exit_status}"


def reload(ctx: ActionContext, daemon: SshdDaemon) -> None:
    """Validate the config, then SIGHUP the daemon (it re-executes itself and re-reads everything)."""
    problem = test_config(ctx, daemon)
    if problem:
        raise ActionFailed(f"sshd config does not validate; not reloading: {problem}")
    ctx.run(f"kill -HUP {daemon.pid}", check=True)
    # The daemon re-executes under the same pid; wait until it is back to a listener.
    for _ in range(50):
        state = ctx.run(f"cat /proc/{daemon.pid}/comm 2>/dev/null; tr '\\0' ' ' < /proc/{daemon.pid}/cmdline 2>/dev/null")
        if state.ok and "sshd" in state.text and "listener" in state.text:
            return
        time.sleep(0.05)


# --------------------------------------------------------------------------- authorized_keys

_KEY_TYPES = (
    "ssh-ed25519", "ssh-rsa", "ssh-dss", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
)


def _tokens(line: str) -> list[str]:
    """Split on whitespace outside double quotes (authorized_keys options may quote spaces)."""
    tokens: list[str] = []
    current = ""
    quoted = False
    escaped = False
    for ch in line:
        if escaped:
            current += ch
            escaped = False
        elif ch == "\\" and quoted:
            current += ch
            escaped = True
        elif ch == '"':
            current += ch
            quoted = not quoted
        elif ch in " \t" and not quoted:
            if current:
                tokens.append(current)
            current = ""
        else:
            current += ch
    if current:
        tokens.append(current)
    return tokens


def _blob_type(blob: bytes) -> str | None:
    if len(blob) < 4:
        return None
    size = int.from_bytes(blob[:4], "big")
    if size > 64 or len(blob) < 4 + size:
        return None
    try:
        return blob[4:4 + size].decode("ascii")
    except UnicodeDecodeError:
        return None


def key_blob(line: str) -> bytes | None:
    """The public key blob of an authorized_keys / .pub line, whatever its options and comment."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    tokens = _tokens(text)
    for i, token in enumerate(tokens[:-1]):
        if token in _KEY_TYPES or token.endswith("-cert-v01@openssh.com"):
            try:
                blob = base64.b64decode(tokens[i + 1], validate=True)
            except ValueError:
                continue
            if _blob_type(blob) == token:
                return blob
    return None


def line_fingerprint(line: str) -> str | None:
    blob = key_blob(line)
    return fingerprint(blob) if blob else None


def expand_authorized_keys(pattern: str, user: str, home: str, uid: str) -> str | None:
    """Expand one AuthorizedKeysFile token (%h, %u, %U, %%; relative = under home)."""
    if pattern.lower() == "none":
        return None
    out = ""
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "%" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            out += {"h": home, "u": user, "U": uid, "%": "%"}.get(nxt, "%" + nxt)
            i += 2
            continue
        out += ch
        i += 1
    if pattern.startswith("~/"):
        out = home.rstrip("/") + out[1:]
    if not out.startswith("/"):
        out = home.rstrip("/") + "/" + out
    return out


def fingerprint_hex(fp: str) -> str:
    """``SHA256:<base64>`` -> lower-case hex (how ``ssh-keygen -Ql`` lists KRL hashes)."""
    raw = fp.split(":", 1)[1]
    return base64.b64decode(raw + "=" * (-len(raw) % 4)).hex()
