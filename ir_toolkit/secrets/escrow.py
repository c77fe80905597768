"""Escrow: every secret irkit sets on a host, envelope-encrypted and fsynced *before* it is applied.

Layout: one append-only JSON-lines file per (tenant, host, account) in the case::

    $IRKIT_HOME/cases/<case>/escrow/<tenant>/<host>/<account>.jsonl

Two kinds of line:

* ``{"type": "secret", "id": ..., "msp", "tenant", "host", "account", "kind", "created",
  "envelope": {...}}`` — a new secret, born ``pending``;
* ``{"type": "state", "id": ..., "state": "applied" | "verified" | "rolled_back", "at", "note"}``.

An entry's state is its last state line: ``pending -> applied -> verified`` or
``-> rolled_back`` (a pending entry can go straight to ``verified`` or
``rolled_back`` when a resumed run *reconciles* it by testing which password
logs in). Every append is fsynced, file and directory, before :meth:`Escrow.put`
returns, so a secret is on disk before anyone applies it; a torn last line left
by a crash is ignored (and terminated before the next append).

Envelope (hybrid encryption with ``cryptography``): a random 256-bit data key
encrypts the secret with AES-256-GCM (or ChaCha20-Poly1305); the data key is
wrapped for each recipient — X25519 ECDH with an ephemeral key + HKDF-SHA256 +
AES-256-GCM, or RSA-OAEP-SHA256. The entry's identity (case, MSP, tenant, host,
account, id, creation time) is the AEAD's associated data, so a ciphertext moved
to another entry does not decrypt. Listing never decrypts anything.
"""

from __future__ import annotations

import base64
import datetime as dt
import fcntl
import hashlib
import json
import os
import secrets as _secrets
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ir_toolkit.cases import CaseLayout
from ir_toolkit.canonical import sorted_compact
from ir_toolkit.errors import FileInputError, InputError, VerificationFailed
from ir_toolkit.home import irkit_home
from ir_toolkit.redaction import register_secret
from ir_toolkit.timeutil import parse_stamp, stamp, utc_now

PENDING = "pending"
APPLIED = "applied"
VERIFIED = "verified"
ROLLED_BACK = "rolled_back"
STATES = (PENDING, APPLIED, VERIFIED, ROLLED_BACK)
#: allowed state changes (pending may jump when a resumed run reconciles it)
TRANSITIONS: dict[str, frozenset[str]] = {
    PENDING: frozenset({APPLIED, VERIFIED, ROLLED_BACK}),
    APPLIED: frozenset({VERIFIED, ROLLED_BACK}),
    VERIFIED: frozenset(),
    ROLLED_BACK: frozenset(),
}
#: states whose secret may be the one on the host (a resumed run must reconcile them)
UNSETTLED = (PENDING, APPLIED)

DATA_ALGS = ("AES-256-GCM", "ChaCha20-Poly1305")
_X25519_WRAP = "X25519-HKDF-SHA256+AES-256-GCM"
_RSA_WRAP = "RSA-OAEP-SHA256"
_HKDF_INFO = b"irkit-escrow-v1 key-wrap"
FORMAT_VERSION = 1

PublicKey = Union[x25519.X25519PublicKey, rsa.RSAPublicKey]
PrivateKey = Union[x25519.X25519PrivateKey, rsa.RSAPrivateKey]

_locks_guard = threading.Lock()
_path_locks: dict[str, threading.Lock] = {}


def _path_lock(path: Path) -> threading.Lock:
    """One lock per escrow file, so appends for different hosts fsync in parallel."""
    with _locks_guard:
        return _path_locks.setdefault(str(path), threading.Lock())


def utcnow() -> dt.datetime:
    """The clock (one place, so tests can move it)."""
    return utc_now()


def _iso(when: dt.datetime) -> str:
    return stamp(when)


def parse_time(text: str) -> dt.datetime:
    return parse_stamp(text)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


# --------------------------------------------------------------------------- keys


def key_id(public_key: PublicKey) -> str:
    """``SHA256:<base64>`` of the recipient's SubjectPublicKeyInfo DER."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "SHA256:" + base64.b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")


def unique_recipients(keys: Sequence[PublicKey]) -> list[PublicKey]:
    """``keys`` in order, each key once (by :func:`key_id`): a run's own key may also be a co-recipient."""
    seen: set[str] = set()
    out: list[PublicKey] = []
    for key in keys:
        kid = key_id(key)
        if kid not in seen:
            seen.add(kid)
            out.append(key)
    return out


def load_public_key(path: str | Path) -> PublicKey:
    """A recipient public key: PEM (X25519 or RSA) or an OpenSSH ``ssh-rsa`` line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"escrow recipient {path}: cannot read: {exc.strerror}") from None
    try:
        if data.lstrip().startswith(b"ssh-"):
            key: Any = serialization.load_ssh_public_key(data.strip())
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise InputError(f"escrow recipient {path}: not a public key ({exc})") from None
    if not isinstance(key, (x25519.X25519PublicKey, rsa.RSAPublicKey)):
        raise InputError(f"escrow recipient {path}: only X25519 and RSA keys can be escrow recipients")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        raise InputError(f"escrow recipient {path}: RSA keys under 2048 bits are refused")
    return key


def load_private_key_file(path: str | Path, passphrase: str | bytes | None = None) -> PrivateKey:
    """A recipient's private key (PEM PKCS#8, optionally encrypted with ``passphrase``)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"escrow key {path}: cannot read: {exc.strerror}") from None
    pw = passphrase.encode() if isinstance(passphrase, str) else passphrase
    try:
        key: Any = serialization.load_pem_private_key(data, password=pw)
    except TypeError as exc:
        if "encrypted" in str(exc) and pw is None:
            raise InputError(f"escrow key {path} is encrypted: set IRKIT_KEY_PASSPHRASE or enter the passphrase") from None
        raise InputError(f"escrow key {path}: {exc}") from None
    except ValueError:
        raise InputError(f"escrow key {path}: not a private key, or wrong passphrase") from None
    if not isinstance(key, (x25519.X25519PrivateKey, rsa.RSAPrivateKey)):
        raise InputError(f"escrow key {path}: only X25519 and RSA keys can decrypt the escrow")
    return key


def is_encrypted_key_file(path: str | Path) -> bool:
    try:
        return b"ENCRYPTED" in Path(path).read_bytes()[:200]
    except OSError:
        return False


# --------------------------------------------------------------------------- envelope


def _wrap(dek: bytes, recipient: PublicKey, aad: bytes) -> dict[str, str]:
    kid = key_id(recipient)
    if isinstance(recipient, x25519.X25519PublicKey):
        ephemeral = x25519.X25519PrivateKey.generate()
        epk = ephemeral.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        rpk = recipient.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        kek = HKDF(hashes.SHA256(), 32, salt=epk + rpk, info=_HKDF_INFO).derive(ephemeral.exchange(recipient))
        nonce = os.urandom(12)
        return {"kid": kid, "alg": _X25519_WRAP, "epk": _b64(epk), "nonce": _b64(nonce),
                "wrapped": _b64(AESGCM(kek).encrypt(nonce, dek, aad))}
    wrapped = recipient.encrypt(dek, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(),
                                                  label=aad))
    return {"kid": kid, "alg": _RSA_WRAP, "wrapped": _b64(wrapped)}


def _unwrap(entry: dict[str, str], private_key: PrivateKey, aad: bytes) -> bytes:
    if entry["alg"] == _X25519_WRAP:
        if not isinstance(private_key, x25519.X25519PrivateKey):
            raise InputError("escrow: this entry's key is wrapped for an X25519 key")
        epk = _unb64(entry["epk"])
        rpk = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        shared = private_key.exchange(x25519.X25519PublicKey.from_public_bytes(epk))
        kek = HKDF(hashes.SHA256(), 32, salt=epk + rpk, info=_HKDF_INFO).derive(shared)
        return AESGCM(kek).decrypt(_unb64(entry["nonce"]), _unb64(entry["wrapped"]), aad)
    if entry["alg"] == _RSA_WRAP:
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise InputError("escrow: this entry's key is wrapped for an RSA key")
        return private_key.decrypt(_unb64(entry["wrapped"]), padding.OAEP(
            mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=aad))
    raise InputError(f"escrow: unknown key-wrap algorithm {entry['alg']!r}")


def _aead(alg: str, key: bytes) -> AESGCM | ChaCha20Poly1305:
    if alg == "AES-256-GCM":
        return AESGCM(key)
    if alg == "ChaCha20-Poly1305":
        return ChaCha20Poly1305(key)
    raise InputError(f"escrow: unknown data algorithm {alg!r}")


def seal(secret: bytes, recipients: Sequence[PublicKey], aad: bytes, *, data_alg: str = "AES-256-GCM") -> dict[str, Any]:
    """Encrypt ``secret`` once with a fresh data key, wrapped for every recipient."""
    if not recipients:
        raise InputError("escrow: no recipient public key (run `irkit keys init`)")
    kids = [key_id(r) for r in recipients]
    if len(set(kids)) != len(kids):
        raise InputError("escrow: the same recipient key is listed twice")
    dek = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(12)
    return {
        "data_alg": data_alg,
        "nonce": _b64(nonce),
        "ciphertext": _b64(_aead(data_alg, dek).encrypt(nonce, secret, aad)),
        "recipients": [_wrap(dek, r, aad) for r in recipients],
    }


def open_sealed(envelope: dict[str, Any], private_key: PrivateKey, aad: bytes) -> bytes:
    """Decrypt an envelope with one recipient's private key (InputError if it is not a recipient)."""
    kid = key_id(private_key.public_key())
    for wrapped in envelope.get("recipients", []):
        if wrapped.get("kid") == kid:
            break
    else:
        raise InputError(f"escrow: key {kid} is not a recipient of this entry")
    try:
        dek = _unwrap(wrapped, private_key, aad)
        return _aead(envelope["data_alg"], dek).decrypt(_unb64(envelope["nonce"]), _unb64(envelope["ciphertext"]), aad)
    except (InvalidTag, ValueError):
        raise InputError("escrow: entry does not decrypt (tampered with, or moved from another entry)") from None


# --------------------------------------------------------------------------- entries


@dataclass
class EscrowEntry:
    """One escrowed secret and its state history (never its plaintext)."""

    id: str
    case: str
    msp: str
    tenant: str
    host: str
    account: str
    kind: str
    created: dt.datetime
    envelope: dict[str, Any]
    state: str = PENDING
    updated: dt.datetime | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    #: position in the file (later entries are newer)
    seq: int = 0

    def header(self) -> dict[str, Any]:
        return {"v": FORMAT_VERSION, "id": self.id, "case": self.case, "msp": self.msp, "tenant": self.tenant,
                "host": self.host, "account": self.account, "kind": self.kind, "created": _iso(self.created)}

    def aad(self) -> bytes:
        return sorted_compact(self.header())

    def state_time(self, state: str) -> dt.datetime | None:
        for item in reversed(self.history):
            if item["state"] == state:
                return parse_time(item["at"])
        return None

    @property
    def recipients(self) -> list[str]:
        return [r.get("kid", "?") for r in self.envelope.get("recipients", [])]

    def summary(self) -> dict[str, Any]:
        """What ``escrow list`` shows: states and dates, never the secret."""
        return {
            "tenant": self.tenant, "host": self.host, "account": self.account, "id": self.id,
            "kind": self.kind, "state": self.state, "created": _iso(self.created),
            "updated": _iso(self.updated or self.created), "case": self.case,
            "recipients": len(self.recipients),
            "note": self.history[-1].get("note") if self.history else None,
        }

    def decrypt(self, private_key: PrivateKey) -> str:
        """The plaintext secret (registered for redaction before it is returned)."""
        value = open_sealed(self.envelope, private_key, self.aad()).decode("utf-8")
        register_secret(value)
        return value


def _check_name(what: str, value: str) -> str:
    if not value or "/" in value or value.startswith(".") or "\0" in value or len(value) > 253:
        raise InputError(f"escrow: invalid {what} name {value!r}")
    return value


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(path: Path) -> None:
    """Create ``path`` and missing parents (mode 0700), fsyncing each new entry's parent directory."""
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            pass
        _fsync_dir(directory.parent)


class Escrow:
    """The escrow of one case."""

    def __init__(self, case_id: str) -> None:
        self.case_id = case_id
        self.root = CaseLayout.of(case_id).escrow

    # ---- paths
    def path(self, tenant: str, host: str, account: str) -> Path:
        return (self.root / _check_name("tenant", tenant) / _check_name("host", host)
                / f"{_check_name('account', account)}.jsonl")

    def files(self) -> Iterator[Path]:
        if self.root.is_dir():
            yield from sorted(self.root.glob("*/*/*.jsonl"))

    # ---- writing
    def _append(self, path: Path, record: dict[str, Any]) -> None:
        line = sorted_compact(record) + b"\n"
        with _path_lock(path):
            _make_dirs(path.parent)
            created = not path.exists()
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                size = os.fstat(fd).st_size
                if size:
                    # a crash mid-write leaves a line without its newline: end it so this one parses
                    if os.pread(fd, 1, size - 1) != b"\n":
                        line = b"\n" + line
                view = memoryview(line)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                _fsync_dir(path.parent)

    def put(self, *, msp: str, tenant: str, host: str, account: str, secret: str,
            recipients: Sequence[PublicKey], kind: str = "password", data_alg: str = "AES-256-GCM",
            now: dt.datetime | None = None) -> EscrowEntry:
        """Encrypt and durably record a new secret as ``pending``; only then may it be applied."""
        register_secret(secret)
        if data_alg not in DATA_ALGS:
            raise InputError(f"escrow: data algorithm must be one of {', '.join(DATA_ALGS)}")
        entry = EscrowEntry(id=_secrets.token_hex(8), case=self.case_id, msp=msp, tenant=tenant, host=host,
                            account=account, kind=kind, created=now or utcnow(), envelope={})
        path = self.path(tenant, host, account)  # validates the names
        entry.envelope = seal(secret.encode("utf-8"), recipients, entry.aad(), data_alg=data_alg)
        self._append(path, {"type": "secret", **entry.header(), "state": PENDING, "envelope": entry.envelope})
        entry.history.append({"state": PENDING, "at": _iso(entry.created)})
        return entry

    def set_state(self, entry: EscrowEntry, state: str, *, note: str | None = None,
                  now: dt.datetime | None = None) -> EscrowEntry:
        """Record a state change (fsynced). Refuses changes the state machine does not allow."""
        if state not in STATES:
            raise InputError(f"escrow: unknown state {state!r}")
        current = self.get(entry.tenant, entry.host, entry.account, entry.id)
        if state == current.state:
            return current
        if state not in TRANSITIONS[current.state]:
            raise InputError(f"escrow: entry {entry.id} cannot go from {current.state} to {state}")
        when = now or utcnow()
        record: dict[str, Any] = {"type": "state", "id": entry.id, "state": state, "at": _iso(when)}
        if note:
            record["note"] = note
        self._append(self.path(entry.tenant, entry.host, entry.account), record)
        current.state, current.updated = state, when
        current.history.append({k: v for k, v in record.items() if k in ("state", "at", "note")})
        entry.state, entry.updated, entry.history = current.state, current.updated, list(current.history)
        return current

    # ---- reading
    def history(self, tenant: str, host: str, account: str) -> list[EscrowEntry]:
        """Every entry of one account on one host, oldest first."""
        return read_file(self.path(tenant, host, account))

    def entries(self, *, tenant: str | None = None, host: str | None = None,
                account: str | None = None) -> list[EscrowEntry]:
        found: list[EscrowEntry] = []
        for path in self.files():
            for entry in read_file(path):
                if ((tenant is None or entry.tenant == tenant) and (host is None or entry.host == host)
                        and (account is None or entry.account == account)):
                    found.append(entry)
        return found

    def get(self, tenant: str, host: str, account: str, entry_id: str) -> EscrowEntry:
        for entry in self.history(tenant, host, account):
            if entry.id == entry_id:
                return entry
        raise InputError(f"escrow: no entry {entry_id} for {tenant}/{host}/{account} in case {self.case_id}")

    def current(self, tenant: str, host: str, account: str) -> EscrowEntry | None:
        """The newest verified entry: the secret the host is known to accept."""
        for entry in reversed(self.history(tenant, host, account)):
            if entry.state == VERIFIED:
                return entry
        return None

    def unsettled(self, tenant: str, host: str, account: str) -> list[EscrowEntry]:
        """Entries that may or may not be on the host (a run stopped between escrow and verify), newest first."""
        return [e for e in reversed(self.history(tenant, host, account)) if e.state in UNSETTLED]


def _log() -> Any:
    from ir_toolkit.log import get_logger

    return get_logger("escrow")


def _bound_to(path: Path) -> dict[str, str] | None:
    """The case/tenant/host/account an escrow file's place names (``.../cases/<case>/escrow/<t>/<h>/<a>.jsonl``)."""
    parts = path.parts
    if len(parts) >= 6 and parts[-4] == "escrow" and path.suffix == ".jsonl":
        return {"case": parts[-5], "tenant": parts[-3], "host": parts[-2], "account": path.stem}
    return None


def read_file(path: Path) -> list[EscrowEntry]:
    """Fold one escrow file into entries (a torn last line from a crash is ignored).

    Every secret record must belong to the file it sits in: its case, tenant, host
    and account must be the ones the file's path names. A record copied into
    another host's file (its ciphertext still decrypts: the AAD binds the header,
    not the file) is refused with :class:`VerificationFailed` instead of being
    used - irkit would otherwise send host A's password to host B.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    bound = _bound_to(path)
    lines = data.split(b"\n")
    entries: dict[str, EscrowEntry] = {}
    order: list[str] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError:
            # A crash mid-append leaves a torn line (the next append terminates it). Such a
            # line was never acknowledged, so its secret was never applied: skip it.
            _log().warning("escrow: skipped an unreadable (torn) line", path=str(path), line=number)
            continue
        kind = record.get("type")
        try:
            if kind == "secret" and bound is not None:
                wrong = {k: record.get(k) for k, v in bound.items() if record.get(k) != v}
                if wrong:
                    raise VerificationFailed(
                        f"{path}:{number}: escrow record {record.get('id')} is for "
                        + ", ".join(f"{k} {w!r}" for k, w in sorted(wrong.items()))
                        + f", not this file's {', '.join(f'{k} {bound[k]!r}' for k in sorted(wrong))}: "
                        "refused (copied between escrow files?)")
            if kind == "secret":
                entry = EscrowEntry(
                    id=record["id"], case=record["case"], msp=record["msp"], tenant=record["tenant"],
                    host=record["host"], account=record["account"], kind=record.get("kind", "password"),
                    created=parse_time(record["created"]), envelope=record["envelope"], state=PENDING,
                    seq=len(order),
                )
                entry.history.append({"state": PENDING, "at": record["created"]})
                entries[entry.id] = entry
                order.append(entry.id)
            elif kind == "state":
                if record["id"] not in entries:
                    _log().warning("escrow: state for an unknown entry", path=str(path), line=number)
                    continue
                entry = entries[record["id"]]
                entry.state = record["state"]
                entry.updated = parse_time(record["at"])
                entry.history.append({k: record[k] for k in ("state", "at", "note") if k in record})
        except (KeyError, ValueError, TypeError):
            raise FileInputError(str(path), number, None, "malformed escrow record") from None
    return [entries[i] for i in order]


def all_cases(msp: str, tenant: str, host: str, account: str) -> list[EscrowEntry]:
    """The entries for one account across every case in ``$IRKIT_HOME`` (oldest first)."""
    cases = irkit_home() / "cases"
    found: list[EscrowEntry] = []
    if not cases.is_dir():
        return found
    for path in sorted(cases.glob(f"*/escrow/{tenant}/{host}/{account}.jsonl")):
        found.extend(e for e in read_file(path) if e.msp == msp)
    return sorted(found, key=lambda e: (e.created, e.seq))


def last_verified(msp: str, tenant: str, host: str, account: str) -> EscrowEntry | None:
    """The newest verified entry for an account in any case (what ``rotate --due`` dates from)."""
    verified = [e for e in all_cases(msp, tenant, host, account) if e.state == VERIFIED]
    return verified[-1] if verified else None


def newest_first(entries: Iterable[EscrowEntry]) -> list[EscrowEntry]:
    return sorted(entries, key=lambda e: (e.created, e.seq), reverse=True)


def resolve_reference(case_id: str, target: str, private_key: PrivateKey | None = None) -> str:
    """The secret an ``escrow:TENANT/HOST/ACCOUNT`` reference names: the newest verified entry of the case.

    Decrypts with ``private_key`` or the responder's escrow key (``irkit keys init``; asks for the passphrase).
    """
    parts = target.split("/")
    if len(parts) != 3 or not all(parts):
        raise InputError(f"escrow reference escrow:{target}: use escrow:TENANT/HOST/ACCOUNT")
    tenant, host, account = parts
    entry = Escrow(case_id).current(tenant, host, account)
    if entry is None:
        raise InputError(f"escrow:{target}: no verified secret in case {case_id}")
    if private_key is None:
        from ir_toolkit.secrets.keystore import get_passphrase, load_escrow_private_key

        private_key = load_escrow_private_key(get_passphrase())
    return entry.decrypt(private_key)
