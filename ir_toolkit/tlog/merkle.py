"""RFC 6962 / RFC 9162 §2.1 Merkle tree hashing, proofs and proof verification.

* leaf hash  = SHA-256(0x00 || entry)
* node hash  = SHA-256(0x01 || left || right)
* empty tree = SHA-256("")
* split point k = the largest power of two smaller than n; odd nodes are never
  duplicated (the Bitcoin CVE-2012-2459 mistake).

The verifiers follow RFC 9162 §2.1.3.2 (inclusion) and §2.1.4.2 (consistency)
step by step and reject malformed input (index >= size, size1 > size2, a
consistency "proof" from size 0, wrong proof lengths, hashes that are not 32
bytes) by returning ``False``; they never raise on bad proofs.

Two policy choices match the transparency-dev/merkle reference library:
consistency from size 0 is never valid (not even 0 -> 0), and for equal sizes
the proof must be empty and the roots are compared byte for byte.

:class:`CompactRange` keeps the O(log n) right border of a growing tree, so a
writer or a streaming verifier gets the root at any size without keeping every
node.
"""

from __future__ import annotations

import hashlib

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data)."""
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return _sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _mth(hashes: list[bytes], lo: int, hi: int) -> bytes:
    """MTH of leaves ``hashes[lo:hi]`` (hi > lo), iteratively via a compact range."""
    stack: list[bytes] = []
    count = 0
    for i in range(lo, hi):
        h = hashes[i]
        c = count
        while c & 1:
            h = node_hash(stack.pop(), h)
            c >>= 1
        stack.append(h)
        count += 1
    h = stack[-1]
    for left in reversed(stack[:-1]):
        h = node_hash(left, h)
    return h


def root_hash(leaf_hashes: list[bytes]) -> bytes:
    """The RFC 6962 tree head of ``leaf_hashes`` (SHA-256 of nothing for an empty list)."""
    if not leaf_hashes:
        return EMPTY_ROOT
    return _mth(leaf_hashes, 0, len(leaf_hashes))


def inclusion_proof(leaf_hashes: list[bytes], index: int) -> list[bytes]:
    """PATH(index, D[n]) of RFC 9162 §2.1.3.1: the audit path of leaf ``index``."""
    n = len(leaf_hashes)
    if not 0 <= index < n:
        raise ValueError(f"leaf index {index} is outside a tree of size {n}")
    proof: list[bytes] = []
    lo, hi, m = 0, n, index
    # Walk down from the root, collecting siblings; emitted bottom-up at the end.
    while hi - lo > 1:
        k = _split(hi - lo)
        if m < k:
            proof.append(_mth(leaf_hashes, lo + k, hi))
            hi = lo + k
        else:
            proof.append(_mth(leaf_hashes, lo, lo + k))
            lo, m = lo + k, m - k
    proof.reverse()
    return proof


def consistency_proof(leaf_hashes: list[bytes], size1: int) -> list[bytes]:
    """PROOF(size1, D[n]) of RFC 9162 §2.1.4.1, with the whole list as the newer tree.

    ``size1`` must satisfy ``0 < size1 <= n``; the proof for ``size1 == n`` is empty.
    """
    n = len(leaf_hashes)
    if not 0 < size1 <= n:
        raise ValueError(f"no consistency proof from size {size1} to size {n}")
    # SUBPROOF(m, D[lo:hi], b), unrolled: the recursion only ever descends one side.
    proof: list[bytes] = []
    lo, hi, m, complete = 0, n, size1, True
    while True:
        size = hi - lo
        if m == size:
            if not complete:
                proof.append(_mth(leaf_hashes, lo, hi))
            break
        k = _split(size)
        if m <= k:
            proof.append(_mth(leaf_hashes, lo + k, hi))
            hi = lo + k
        else:
            proof.append(_mth(leaf_hashes, lo, lo + k))
            lo, m, complete = lo + k, m - k, False
    proof.reverse()
    return proof


def _is_hash(value: object) -> bool:
    return isinstance(value, (bytes, bytearray)) and len(value) == HASH_SIZE


def verify_inclusion(leaf_hash: bytes, index: int, size: int, proof: list[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2: does ``proof`` show leaf ``index`` with ``leaf_hash`` in the tree ``root``?"""
    if not (isinstance(index, int) and isinstance(size, int)) or index < 0 or size < 0:
        return False
    if index >= size:
        return False
    if not _is_hash(leaf_hash) or not _is_hash(root) or not all(_is_hash(p) for p in proof):
        return False
    fn, sn = index, size - 1
    r = bytes(leaf_hash)
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == bytes(root)


def verify_consistency(size1: int, size2: int, proof: list[bytes], root1: bytes, root2: bytes) -> bool:
    """RFC 9162 §2.1.4.2: is the tree ``root2`` of ``size2`` an append-only extension of ``root1``?"""
    if not (isinstance(size1, int) and isinstance(size2, int)) or size1 < 0 or size2 < 0:
        return False
    if size1 > size2:
        return False
    if size1 == 0:
        return False  # a proof from the empty tree proves nothing (policy, as transparency-dev)
    if size1 == size2:
        return len(proof) == 0 and bytes(root1) == bytes(root2)
    # 0 < size1 < size2 from here on: RFC 9162 §2.1.4.2 steps 1-6.
    if not proof:
        return False
    if not _is_hash(root1) or not _is_hash(root2) or not all(_is_hash(p) for p in proof):
        return False
    path = [bytes(p) for p in proof]
    if size1 & (size1 - 1) == 0:  # an exact power of two
        path.insert(0, bytes(root1))
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == bytes(root1) and sr == bytes(root2) and sn == 0


class CompactRange:
    """The right border of a growing tree: append leaf hashes, read the root at any time."""

    __slots__ = ("_stack", "size")

    def __init__(self) -> None:
        self._stack: list[bytes] = []
        self.size = 0

    def append(self, leaf: bytes) -> None:
        h = leaf
        count = self.size
        stack = self._stack
        while count & 1:
            h = _sha256(b"\x01" + stack.pop() + h).digest()
            count >>= 1
        stack.append(h)
        self.size += 1

    def extend(self, leaves: bytes | list[bytes]) -> None:
        """Append many leaf hashes (a list, or a bytes blob of 32-byte hashes)."""
        if isinstance(leaves, (bytes, bytearray, memoryview)):
            view = bytes(leaves)
            for off in range(0, len(view), HASH_SIZE):
                self.append(view[off:off + HASH_SIZE])
        else:
            for leaf in leaves:
                self.append(leaf)

    def root(self) -> bytes:
        if not self._stack:
            return EMPTY_ROOT
        h = self._stack[-1]
        for left in reversed(self._stack[:-1]):
            h = node_hash(left, h)
        return h

    def copy(self) -> CompactRange:
        other = CompactRange()
        other._stack = list(self._stack)
        other.size = self.size
        return other
