"""A witness: a second person or machine that cosigns checkpoints it has checked for consistency.

The protocol core follows c2sp.org/tlog-witness ``add-checkpoint``:
:meth:`Witness.add_checkpoint` takes the size the caller believes the witness
last saw (``old``), a consistency proof from that size, and the new signed
checkpoint. The witness

* checks the log's signature on the checkpoint (keys pinned per origin),
* refuses with :class:`WitnessConflict` (HTTP 409 in the spec) when ``old`` is not
  the size it stored,
* refuses a checkpoint smaller than the one it cosigned (rollback/truncation),
  one of equal size with another root, or one whose consistency proof fails
  (HTTP 422) - writing the cosigned and the presented checkpoints out as
  evidence,
* otherwise persists the new state atomically (under an ``flock``) and only
  then returns a cosignature (type 0x04, ``cosignature/v1``).

So once a witness cosigned size N, no shorter or inconsistent history of that
log can be cosigned by it. :func:`witness_case` is the log side used by
``irkit audit witness``: it reads a case's latest checkpoint, builds the
consistency proof from the records and submits it.

State directory (``--witness-dir`` or ``$IRKIT_WITNESS_DIR``)::

    witness.key / witness.vkey       the witness's cosigning key (encrypted) and verifier key
    logs/<origin>/state.json         the largest checkpoint cosigned for that origin
    logs/<origin>/cosigned/<size>.note
    logs/<origin>/conflicts/<stamp>/ evidence of refused checkpoints
"""

from __future__ import annotations

import base64
import datetime as _dt
import fcntl
import json
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ir_toolkit.audit import layout
from ir_toolkit.tlog.merkle import consistency_proof, verify_consistency
from ir_toolkit.tlog.note import (
    ALG_COSIGNATURE_V1,
    NoteError,
    Signer,
    UnverifiedNote,
    Verifier,
    b64encode,
    open_note,
    parse_checkpoint,
    parse_note,
    parse_vkey,
    sign_note,
)
from ir_toolkit.errors import InputError, VerificationFailed
from ir_toolkit.fsutil import write_atomic
from ir_toolkit.secrets.keystore import get_passphrase, open_private, seal_private

WITNESS_DIR_ENV = "IRKIT_WITNESS_DIR"
WITNESS_PASSPHRASE_ENV = "IRKIT_WITNESS_PASSPHRASE"
KEY_FILE = "witness.key"
VKEY_FILE = "witness.vkey"


class WitnessConflict(VerificationFailed):
    """The request's old size is not what the witness stored (409): retry with the right size."""


class WitnessRefused(VerificationFailed):
    """The witness will not cosign (rollback, fork, bad proof or signature)."""

    def __init__(self, message: str, evidence: Path | None = None) -> None:
        super().__init__(message + (f"; evidence in {evidence}" if evidence else ""))
        self.evidence = evidence


@dataclass
class WitnessState:
    origin: str
    size: int
    root: bytes
    log_keys: list[str]
    checkpoint: str

    def to_json(self) -> dict[str, Any]:
        return {"origin": self.origin, "size": self.size, "root": b64encode(self.root),
                "log_keys": self.log_keys, "checkpoint": self.checkpoint,
                "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WitnessState:
        return cls(data["origin"], int(data["size"]), base64.b64decode(data["root"]),
                   list(data.get("log_keys", [])), data.get("checkpoint", ""))


def witness_dir(explicit: str | Path | None = None) -> Path:
    value = explicit or os.environ.get(WITNESS_DIR_ENV)
    if not value:
        raise InputError(f"no witness state directory: pass --witness-dir DIR or set {WITNESS_DIR_ENV} "
                         "(the witness keeps its own key and state, apart from the responder's)")
    return Path(value).expanduser().absolute()


def default_witness_name() -> str:
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()) or "localhost"
    return f"{host}/irkit-witness"


class Witness:
    """A witness's key and per-log state in one directory."""

    def __init__(self, directory: Path, signer: Signer) -> None:
        self.directory = directory
        self.signer = signer

    # ------------------------------------------------------------------ keys

    @staticmethod
    def exists(directory: Path) -> bool:
        return (directory / KEY_FILE).exists()

    @staticmethod
    def init(directory: Path, passphrase: str, *, name: str | None = None) -> str:
        """Create the witness cosigning key; returns its verifier key (type 0x04)."""
        if (directory / KEY_FILE).exists():
            raise InputError(f"a witness key already exists in {directory}")
        try:
            signer = Signer.generate(name or default_witness_name(), ALG_COSIGNATURE_V1)
        except NoteError as exc:
            raise InputError(f"invalid witness name: {exc}") from None
        header = {"kind": "witness-cosigning", "algorithm": "ed25519", "name": signer.name,
                  "public": b64encode(signer.public), "verifier_key": signer.verifier_key()}
        doc = seal_private(signer.seed(), passphrase, header)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(directory / KEY_FILE, (json.dumps(doc, indent=1) + "\n").encode(), overwrite=False)
        write_atomic(directory / VKEY_FILE, (signer.verifier_key() + "\n").encode(), mode=0o644)
        return signer.verifier_key()

    @classmethod
    def load(cls, directory: Path, passphrase: str) -> Witness:
        path = directory / KEY_FILE
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputError(f"no witness key in {directory}: run irkit audit witness --init") from None
        except ValueError:
            raise InputError(f"{path}: damaged witness key file") from None
        seed = open_private(doc, passphrase, path)
        signer = Signer.from_seed(doc["name"], seed, ALG_COSIGNATURE_V1)
        if b64encode(signer.public) != doc.get("public"):
            raise InputError(f"{path}: damaged witness key")
        return cls(directory, signer)

    @staticmethod
    def verifier_key(directory: Path) -> str:
        try:
            return (directory / VKEY_FILE).read_text().strip()
        except FileNotFoundError:
            raise InputError(f"no witness key in {directory}: run irkit audit witness --init") from None

    # ------------------------------------------------------------------ state

    def _log_dir(self, origin: str) -> Path:
        return self.directory / "logs" / layout.safe_name(origin)

    def state(self, origin: str) -> WitnessState | None:
        path = self._log_dir(origin) / "state.json"
        try:
            return WitnessState.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError) as exc:
            raise InputError(f"{path}: damaged witness state: {exc}") from None

    def pin_log_keys(self, origin: str, keys: list[str]) -> None:
        """Trust these log verifier keys for ``origin`` (before the first cosignature, or to add a key)."""
        for key in keys:
            parse_vkey(key)
        state = self.state(origin)
        log_dir = self._log_dir(origin)
        log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        pins = log_dir / "log_keys.json"
        known = json.loads(pins.read_text()) if pins.exists() else []
        for key in [*(state.log_keys if state else []), *keys]:
            if key not in known:
                known.append(key)
        write_atomic(pins, (json.dumps(known, indent=1) + "\n").encode(), mode=0o644)

    def log_keys(self, origin: str) -> list[Verifier]:
        pins = self._log_dir(origin) / "log_keys.json"
        keys = json.loads(pins.read_text()) if pins.exists() else []
        return [parse_vkey(k) for k in keys]

    def _evidence(self, origin: str, reason: str, presented: str, proof: list[bytes], old: int) -> Path:
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        target = self._log_dir(origin) / "conflicts" / stamp
        target.mkdir(parents=True, exist_ok=True, mode=0o700)
        state = self.state(origin)
        if state is not None:
            (target / "cosigned.note").write_text(state.checkpoint)
        (target / "presented.note").write_text(presented)
        (target / "consistency-proof.txt").write_text(
            f"old {old}\n" + "".join(b64encode(h) + "\n" for h in proof))
        (target / "README.txt").write_text(
            f"The witness refused to cosign a checkpoint of {origin}: {reason}\n"
            "cosigned.note is the largest checkpoint this witness cosigned; presented.note is the refused one.\n")
        return target

    # ------------------------------------------------------------------ add-checkpoint

    def add_checkpoint(self, old: int, proof: list[bytes], note: str, *, now: int | None = None) -> str:
        """Check and cosign ``note`` (see the module docstring); returns the cosigned note."""
        try:
            text, _sigs = parse_note(note)
            cp = parse_checkpoint(text)
        except NoteError as exc:
            raise WitnessRefused(f"malformed checkpoint: {exc}") from None
        log_dir = self._log_dir(cp.origin)
        log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_fd = os.open(log_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            return self._add_locked(old, proof, note, cp, now)
        finally:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
            os.close(lock_fd)

    def _add_locked(self, old: int, proof: list[bytes], note: str, cp: Any, now: int | None) -> str:
        keys = self.log_keys(cp.origin)
        if not keys:
            raise WitnessRefused(f"no log key pinned for {cp.origin}: pass --log-key")
        try:
            opened = open_note(note, keys)
        except UnverifiedNote:
            raise WitnessRefused(f"checkpoint of {cp.origin} (size {cp.size}) is not signed by a pinned log key") \
                from None
        except NoteError as exc:
            raise WitnessRefused(f"checkpoint of {cp.origin}: {exc}") from None
        if not any(not v.is_cosigner for v in opened.verified_by):
            raise WitnessRefused(f"checkpoint of {cp.origin} carries no log signature")
        state = self.state(cp.origin)
        stored = state.size if state else 0
        if old != stored:
            raise WitnessConflict(f"witness holds size {stored} for {cp.origin}, the request assumed {old}")
        if state is not None:
            if cp.size < state.size:
                ev = self._evidence(cp.origin, f"size {cp.size} < cosigned {state.size} (rollback)", note, proof, old)
                raise WitnessRefused(f"refusing to cosign {cp.origin} at size {cp.size}: smaller than the size "
                                     f"{state.size} already cosigned (rollback or truncation)", ev)
            if cp.size == state.size:
                if cp.root != state.root or proof:
                    ev = self._evidence(cp.origin, "same size, different root (fork)", note, proof, old)
                    raise WitnessRefused(f"refusing to cosign {cp.origin}: size {cp.size} with a root different "
                                         "from the one already cosigned (fork)", ev)
            elif not verify_consistency(state.size, cp.size, proof, state.root, cp.root):
                ev = self._evidence(cp.origin, "consistency proof failed (fork or rewritten history)", note,
                                    proof, old)
                raise WitnessRefused(f"refusing to cosign {cp.origin} at size {cp.size}: it is not an append-only "
                                     f"extension of the cosigned size {state.size} (fork or rewritten history)", ev)
        elif proof:
            raise WitnessRefused("a first checkpoint needs no consistency proof")
        # Log signature lines are kept; our cosignature is added (C2SP: one line per key).
        existing = [s for s in opened.sigs + opened.unverified if s.key_id != self.signer.key_id]
        cosigned = sign_note(text_of(note), [self.signer], existing=existing,
                             timestamp=int(time.time()) if now is None else now)
        new_state = WitnessState(cp.origin, cp.size, cp.root, [k.vkey for k in keys], cosigned)
        log_dir = self._log_dir(cp.origin)
        write_atomic(log_dir / "cosigned" / f"{cp.size}.note", cosigned.encode(), mode=0o644)
        write_atomic(log_dir / "state.json", (json.dumps(new_state.to_json(), indent=1) + "\n").encode())
        return cosigned


def text_of(note: str) -> str:
    return parse_note(note)[0]


# --------------------------------------------------------------------------- the log side


def witness_case(witness: Witness, case_id: str, *, log_keys: list[str] | None = None) -> dict[str, Any]:
    """Have ``witness`` check and cosign the latest checkpoint of ``case_id``'s audit log.

    First the witness verifies the whole log with its pinned log keys
    (:func:`~ir_toolkit.audit.verify.verify_case`), so it only ever cosigns a
    log that verifies; then it runs the add-checkpoint protocol with a
    consistency proof built from the records.
    """
    from ir_toolkit.audit.verify import scan_log, verify_case

    directory = layout.audit_dir(case_id)
    try:
        note = (directory / layout.CHECKPOINT_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"case {case_id} has no signed checkpoint to witness") from None
    try:
        cp = parse_checkpoint(text_of(note))
    except NoteError as exc:
        raise VerificationFailed(f"case {case_id}: damaged checkpoint: {exc}") from None
    first_use = not witness.log_keys(cp.origin)
    if log_keys:
        witness.pin_log_keys(cp.origin, log_keys)
    pinned = [k.vkey for k in witness.log_keys(cp.origin)]
    if not pinned:
        raise InputError(f"the witness has no log key for {cp.origin}: pass --log-key VKEY "
                         "(the responder's verifier key, from `irkit keys show`)")
    result = verify_case(case_id, key=pinned)
    if not result.ok:
        raise WitnessRefused(f"the audit log of case {case_id} does not verify: {result.reason}")
    # Keys introduced by authenticated rotation records become pinned too.
    new_keys = [k for k in result.log_keys if k not in pinned]
    if new_keys:
        witness.pin_log_keys(cp.origin, new_keys)
    state = witness.state(cp.origin)
    old = state.size if state else 0
    proof: list[bytes] = []
    if state is not None and cp.size > state.size:
        scan = scan_log(directory / layout.LOG_FILE, case_id)
        leaves = [scan.hashes[i * 32:(i + 1) * 32] for i in range(cp.size)]
        proof = consistency_proof(leaves, state.size)
    cosigned = witness.add_checkpoint(old, proof, note)
    copy = directory / layout.WITNESSED_DIR / f"{layout.safe_name(witness.signer.name)}-{cp.size}.note"
    write_atomic(copy, cosigned.encode(), mode=0o644)
    return {"origin": cp.origin, "size": cp.size, "previous_size": old, "first_use": first_use,
            "pinned_log_keys": pinned + new_keys, "witness_key": witness.signer.verifier_key(),
            "cosigned": cosigned, "saved": str(witness._log_dir(cp.origin) / "cosigned" / f"{cp.size}.note"),
            "case_copy": str(copy)}


def witness_passphrase() -> str:
    return get_passphrase(env=WITNESS_PASSPHRASE_ENV, what="the witness key")
