"""The responder's keys for one run, unlocked once (``run/`` asks for the passphrase; nothing else does).

Actions get a :class:`KeyProvider` in their context and never prompt: the escrow private
key (needed to reconcile and verify rotations, and for ``escrow:`` BMC references) is
unlocked with the passphrase the run service obtained, at most once per run, under a lock.
While planning, actions get :meth:`KeyProvider.locked`, which refuses private keys.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ir_toolkit.errors import InputError
from ir_toolkit.redaction import register_secret


def derive_case_key_passphrase(passphrase: str, case_id: str) -> str:
    import base64

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"irkit-case-responder-key-v1",
               info=case_id.encode()).derive(passphrase.encode())
    value = base64.b64encode(raw).decode()
    register_secret(value)
    return value


class KeysLocked(InputError):
    """A private key was asked for where none is unlocked (planning, or a run without keys)."""


class KeyProvider:
    def __init__(self, passphrase: str | None, *, directory: Path | None = None) -> None:
        if passphrase:
            register_secret(passphrase)
        self._passphrase = passphrase
        self._directory = directory
        self._lock = threading.Lock()
        #: unlocked keys, shared with the views :meth:`with_co_recipients` makes
        self._cache: dict[str, Any] = {}
        self._co_escrow: tuple[Any, ...] = ()
        self._co_evidence: tuple[Any, ...] = ()

    def with_co_recipients(self, *, escrow: Sequence[Any] = (), evidence: Sequence[Any] = ()) -> KeyProvider:
        """This provider (same passphrase, same unlocked keys), whose escrow entries and evidence
        bundles are also encrypted to ``escrow`` / ``evidence`` public keys: an agent runs steps with
        its own keys and adds the controller's, which came in the controller's signed envelope, so the
        controller can read what the agent escrowed and collected without the agent holding the
        controller's private keys."""
        view = copy.copy(self)  # shares _lock and _cache
        view._co_escrow = tuple(escrow)
        view._co_evidence = tuple(evidence)
        return view

    @classmethod
    def locked(cls) -> KeyProvider:
        """A provider that holds no passphrase: public keys only."""
        return cls(None)

    @classmethod
    def unlock(cls, *, directory: Path | None = None) -> KeyProvider:
        """Ask for the passphrase once (``$IRKIT_KEY_PASSPHRASE`` or a prompt on the main thread)."""
        from ir_toolkit.secrets.keystore import get_passphrase

        return cls(get_passphrase(), directory=directory)

    def _need(self, what: str) -> str:
        if self._passphrase is None:
            raise KeysLocked(f"the {what} is not unlocked here (planning changes nothing and holds no private key)")
        return self._passphrase

    def signer(self) -> Any:
        """The audit signing key (:class:`ir_toolkit.tlog.note.Signer`)."""
        from ir_toolkit.secrets.keystore import load_signing_key

        with self._lock:
            if "signer" not in self._cache:
                self._cache["signer"] = load_signing_key(self._need("signing key"), directory=self._directory)
            return self._cache["signer"]

    def escrow_private_key(self) -> Any:
        """The escrow recipient's private key (X25519), unlocked on first use."""
        from ir_toolkit.secrets.keystore import load_escrow_private_key

        with self._lock:
            if "escrow" not in self._cache:
                from ir_toolkit.secrets.keystore import ESCROW_KEY

                path = self._directory / ESCROW_KEY if self._directory is not None else None
                self._cache["escrow"] = load_escrow_private_key(self._need("escrow key"), path)
            return self._cache["escrow"]

    def case_key_passphrase(self, case_id: str) -> str | None:
        """The passphrase that encrypts the case's responder keys at rest (derived from the keys
        passphrase with HKDF, bound to the case; None while locked)."""
        if self._passphrase is None:
            return None
        return derive_case_key_passphrase(self._passphrase, case_id)

    def escrow_public_key(self) -> Any:
        from ir_toolkit.secrets.keystore import escrow_public_key

        return escrow_public_key(self._directory)

    def evidence_public_key(self) -> Any:
        """The evidence recipient (bundles are encrypted to it; never the escrow key)."""
        from ir_toolkit.secrets.keystore import evidence_public_key

        return evidence_public_key(self._directory)

    def escrow_recipients(self) -> list[Any]:
        """Who every new escrow entry is encrypted to: this keystore's escrow key, then any co-recipient."""
        from ir_toolkit.secrets.escrow import unique_recipients

        return unique_recipients([self.escrow_public_key(), *self._co_escrow])

    def evidence_recipients(self) -> list[Any]:
        """Who every evidence bundle is encrypted to: this keystore's evidence key, then any co-recipient."""
        from ir_toolkit.secrets.escrow import unique_recipients

        return unique_recipients([self.evidence_public_key(), *self._co_evidence])
