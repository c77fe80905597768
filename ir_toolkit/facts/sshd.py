"""What sshd on a host really does, as facts: the daemon serving our session, its effective config
(``sshd -T``), and ``authorized_keys`` lines.

Nothing here guesses paths: the daemon is the ``sshd`` ancestor of our own session, its config
file and ``-o`` overrides come from its command line, the effective settings from ``sshd -T``
run with those same arguments. ``authorized_keys`` lines are parsed the way sshd reads them
(options and comments do not matter, the key blob's SHA256 fingerprint does).

Hostile output: the daemon's executable and config paths go into shell commands (quoted) and
must be absolute and free of control characters; ``sshd -T`` values that become file paths
likewise; a per-user listing may only answer for the users asked about, once each.
"""

from __future__ import annotations

import base64
import ipaddress
import shlex
from dataclasses import dataclass, field

from ir_toolkit.facts.base import FactError, Output, Query, integer, lines_of, no_control, printable
from ir_toolkit.transports.hostkeys import fingerprint

# Shell builtins only in the walk (read, case): no process per ancestor (this runs on every host at plan time)
_LOCATE = r"""
pid=$$; top=""
while [ -n "$pid" ] && [ "$pid" -gt 1 ] 2>/dev/null; do
  read -r comm 2>/dev/null < /proc/$pid/comm || break
  case "$comm" in
    sshd|sshd-session|sshd-auth) top=$pid ;;
    *) [ -n "$top" ] && break ;;
  esac
  ppid=""
  while read -r key value; do
    case "$key" in PPid:) ppid=$value; break ;; esac
  done 2>/dev/null < /proc/$pid/status
  pid=$ppid
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


def daemon() -> Query[SshdDaemon]:
    """The sshd daemon whose child runs our commands (its pid, binary, config file and options)."""
    fact = "sshd.daemon"

    def parse(out: Output) -> SshdDaemon:
        lines = out.text.split("\n")
        if not out.ok or len(lines) < 4 or not lines[0].strip().isdigit():
            raise FactError(fact, "cannot find the sshd serving this session (is /proc readable?)")
        lines_of(fact, out.text, max_lines=4096)
        pid = integer(fact, "pid", lines[0].strip(), low=1, high=1 << 22)
        exe, cwd = lines[1].strip(), lines[2].strip()
        argv = _split_cmdline(lines[3:])
        for value in (exe, cwd, *argv):
            no_control(fact, "daemon argument", value)
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

    return Query(fact, _LOCATE, parse)


def client_address() -> Query[str]:
    """The address the host sees us connecting from (for ``Match Address`` evaluation)."""
    fact = "sshd.client_address"

    def parse(out: Output) -> str:
        seen = out.text.strip() or "127.0.0.1"
        try:
            # host-reported: it goes into shell code (`sshd -T -C addr=...`), so only a real address is used
            return str(ipaddress.ip_address(seen))
        except ValueError:
            raise FactError(fact, f"the host reported an invalid client address {printable(seen[:60])!r} "
                                  "in SSH_CONNECTION") from None

    return Query(fact, 'set -- $SSH_CONNECTION; echo "${1:-127.0.0.1}"', parse)


def parse_sshd_t(text: str, fact: str = "sshd.effective_config") -> dict[str, list[str]]:
    """``sshd -T`` output: keyword -> values (lower-case keywords; repeated keywords keep every value)."""
    config: dict[str, list[str]] = {}
    for line in lines_of(fact, text, max_lines=20_000, max_line=16 * 1024):
        if not line.strip():
            continue
        key, _, value = line.partition(" ")
        key = key.lower()
        if not key.isascii() or not key.isalnum():
            raise FactError(fact, f"{printable(key[:40])!r} is not an sshd keyword")
        config.setdefault(key, []).append(no_control(fact, key, value.strip()))
    return config


def effective_config(daemon: SshdDaemon, user: str, addr: str) -> Query[dict[str, list[str]]]:
    """``sshd -T`` for a connection by ``user`` from ``addr``: keyword -> values."""
    fact = "sshd.effective_config"

    def parse(out: Output) -> dict[str, list[str]]:
        if not out.ok:
            raise FactError(fact, f"`sshd -T` failed: {out.last_error()}")
        return parse_sshd_t(out.text, fact)

    return Query(fact, daemon.command("-T", "-C", f"user={user},host={addr},addr={addr}"), parse)


def has_match_blocks(daemon: SshdDaemon) -> Query[bool]:
    """Does the config (or a file it includes) have ``Match`` blocks, i.e. may settings differ per user?
    (Anything but a plain ``no`` counts as yes: the per-user evaluation is the safe side.)"""
    q = shlex.quote(daemon.config_file)
    script = (f"cd /etc/ssh 2>/dev/null; files={q}; "
              f"for g in $(grep -hiE '^[[:space:]]*include[[:space:]]' {q} 2>/dev/null | "
              "sed -E 's/^[[:space:]]*[Ii][Nn][Cc][Ll][Uu][Dd][Ee][[:space:]]+//'); do files=\"$files $g\"; done; "
              "grep -qiE '^[[:space:]]*match[[:space:]]' $files 2>/dev/null && echo yes || echo no")
    return Query("sshd.has_match_blocks", script, lambda out: out.text.strip() != "no")


def effective_for_users(daemon: SshdDaemon, users: list[str], addr: str,
                        keywords: tuple[str, ...]) -> Query[dict[str, dict[str, list[str]]]]:
    """Selected ``sshd -T`` keywords for many users in one round trip (``Match User`` blocks differ per user)."""
    fact = "sshd.effective_for_users"
    wanted = "|".join(keywords)
    script = "for u in " + " ".join(shlex.quote(u) for u in users) + "; do\n" + \
        f'  echo "@@user $u"\n  {daemon.command("-T", "-C")} "user=$u,host={addr},addr={addr}" 2>&1 ' + \
        f"| grep -iE '^({wanted}) ' || true\ndone\n"

    def parse(out: Output) -> dict[str, dict[str, list[str]]]:
        asked = set(users)
        result: dict[str, dict[str, list[str]]] = {}
        current: dict[str, list[str]] | None = None
        for line in lines_of(fact, out.text, max_line=16 * 1024):
            if line.startswith("@@user "):
                name = line[len("@@user "):]
                if name not in asked:
                    raise FactError(fact, f"the host answered for {printable(name[:60])!r}, who was not asked about")
                if name in result:
                    raise FactError(fact, f"two answers for {name!r}")
                current = result[name] = {}
                continue
            if current is not None and line.strip():
                key, _, value = line.partition(" ")
                if key.lower() in keywords:
                    current.setdefault(key.lower(), []).append(no_control(fact, key.lower(), value.strip()))
        return result

    return Query(fact, script, parse)


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


@dataclass(frozen=True)
class KeyLine:
    """One key line of an ``authorized_keys`` file: its index, fingerprint and whole text."""

    index: int
    fingerprint: str
    text: str


def authorized_keys(content: str, fact: str = "sshd.authorized_keys") -> list[KeyLine]:
    """The key lines of an ``authorized_keys`` file (comments, blank and unparseable lines skipped, as
    sshd skips them). Indexes count ``str.splitlines()`` lines — the same split the actions use to
    rewrite the file, so a stray ``\\r`` cannot shift which line is removed. A line longer than 1 MiB
    (sshd itself reads far less) is refused."""
    out: list[KeyLine] = []
    for i, line in enumerate(content.splitlines()):
        if len(line) > 1 << 20:
            raise FactError(fact, f"line {i + 1} is {len(line)} characters long")
        blob = key_blob(line)
        if blob is not None:
            out.append(KeyLine(i, fingerprint(blob), line))
    return out


# --------------------------------------------------------------------------- key revocation lists

@dataclass(frozen=True)
class KrlListing:
    """The file sshd's ``RevokedKeys`` names: whether it exists, is a binary KRL, and the keys it revokes
    (lower-case hex SHA-256 of each key blob, as ``ssh-keygen -Q -l`` lists hashes)."""

    exists: bool
    is_krl: bool
    hashes: frozenset[str] = frozenset()


_HEX64 = frozenset("0123456789abcdef")


def key_hashes(lines: list[str]) -> set[str]:
    """Hex SHA-256 of every public key / ``hash: SHA256:<hex>`` line (other lines are not revocations)."""
    import hashlib

    found: set[str] = set()
    for line in lines:
        if line.startswith("hash: SHA256:"):
            # irkit's own entries list as hex; keys revoked by key list as base64 with a comment
            token = line.split("SHA256:", 1)[1].split()[0] if line.split("SHA256:", 1)[1].split() else ""
            if len(token) == 64 and set(token.lower()) <= _HEX64:
                found.add(token.lower())
            elif len(token) == 43:
                try:
                    raw = base64.b64decode(token + "=", validate=True)
                except ValueError:
                    continue
                if len(raw) == 32:
                    found.add(raw.hex())
            continue
        blob = key_blob(line)
        if blob:
            found.add(hashlib.sha256(blob).hexdigest())
    return found


def krl_listing(path: str) -> Query[KrlListing]:
    """``path`` as a KRL (``ssh-keygen -Q -l``); a plain key list is read as a file (:func:`key_hashes`)."""
    fact = "sshd.krl"
    q = shlex.quote(path)

    def parse(out: Output) -> KrlListing:
        if out.exit_status == 9:
            return KrlListing(False, False)
        lines = lines_of(fact, out.text, max_lines=1_000_000, max_line=16 * 1024)
        magic = lines[0] if lines else ""
        if not magic.startswith("SSHKRL\\n\\0"):
            return KrlListing(True, False)
        return KrlListing(True, True, frozenset(key_hashes(lines[1:])))

    return Query(fact, f"[ -f {q} ] || exit 9; head -c 8 {q} | od -An -c | tr -d ' \\n'; echo; "
                       f"ssh-keygen -Q -l -f {q} 2>/dev/null || true", parse)
