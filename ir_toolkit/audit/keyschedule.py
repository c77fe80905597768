"""Which signing key is valid for which tree size, read from the log's own records.

* Record 1 (``audit.log_created``) names the log's first key (``params.key``).
* A rotation record at seq ``r`` (``audit.key_rotated``, params ``old_key`` and
  ``new_key``) must name the key valid at that point as ``old_key``. The
  checkpoint of size ``r`` is signed by the OLD key, which is how the old key
  authorises its successor; every checkpoint of a size greater than ``r`` must be
  signed by the new key. A signature by the old key after the rotation point,
  or by a new key without a rotation record, is not valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ir_toolkit.tlog.note import NoteError, Verifier, parse_vkey
from ir_toolkit.audit.records import ACTION_CREATED, ACTION_KEY_ROTATED, RecordError


@dataclass
class KeySchedule:
    origin: str | None = None
    genesis: Verifier | None = None
    rotations: list[tuple[int, Verifier, Verifier]] = field(default_factory=list)

    def observe(self, record: dict[str, Any]) -> None:
        """Fold one record in (only the genesis and rotation records matter)."""
        action = record.get("action")
        params = record.get("params") or {}
        seq = record.get("seq")
        if seq == 1:
            if action != ACTION_CREATED:
                raise RecordError(f"the first record must be {ACTION_CREATED}, not {action!r}")
            origin = params.get("origin")
            if not isinstance(origin, str) or not origin:
                raise RecordError("the first record does not name the log's origin")
            self.origin = origin
            key = params.get("key")
            if key is not None:
                try:
                    self.genesis = parse_vkey(key)
                except NoteError as exc:
                    raise RecordError(f"the first record names an invalid key: {exc}") from None
        elif action == ACTION_CREATED:
            raise RecordError(f"{ACTION_CREATED} may only be the first record")
        elif action == ACTION_KEY_ROTATED:
            try:
                old = parse_vkey(params.get("old_key", ""))
                new = parse_vkey(params.get("new_key", ""))
            except NoteError as exc:
                raise RecordError(f"key rotation record names an invalid key: {exc}") from None
            current = self.current
            if current is None or old != current:
                raise RecordError("key rotation record's old_key is not the key valid at this point")
            if new == old:
                raise RecordError("key rotation to the same key")
            self.rotations.append((int(seq), old, new))

    @property
    def current(self) -> Verifier | None:
        return self.rotations[-1][2] if self.rotations else self.genesis

    def key_for_size(self, size: int) -> Verifier | None:
        """The only key whose signature on a checkpoint of ``size`` is valid."""
        key = self.genesis
        for seq, _old, new in self.rotations:
            if seq < size:
                key = new
        return key

    def keys(self) -> list[Verifier]:
        out = [self.genesis] if self.genesis else []
        out.extend(new for _s, _o, new in self.rotations)
        return out

    def valid_range(self, key: Verifier) -> str:
        """Human description of the sizes a key may sign."""
        bounds: list[tuple[Verifier | None, int, int | None]] = []
        lo, key_now = 1, self.genesis
        for seq, _old, new in self.rotations:
            bounds.append((key_now, lo, seq))
            lo, key_now = seq + 1, new
        bounds.append((key_now, lo, None))
        for k, a, b in bounds:
            if k == key:
                return f"sizes {a}..{b}" if b is not None else f"sizes from {a}"
        return "no sizes"
