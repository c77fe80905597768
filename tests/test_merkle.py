"""RFC 6962 / RFC 9162 Merkle hashing, proofs and verification.

Known answers: the RFC 6962 empty-tree and 8-leaf roots and the published
proofs for the transparency-dev/merkle test leaves; the malformed-proof
catalogue of transparency-dev/merkle's test-vector generator is rebuilt here
(bit flips, garbage before/after, wrong sizes and indices, swapped roots,
empty proofs, the size-0 policy); and an independent oracle (the
decomposition algorithm of the Go reference library, written from scratch)
is compared with the RFC 9162 bit-walk on thousands of random inputs.
"""

from __future__ import annotations

import hashlib
import random

import pytest

from ir_toolkit.tlog.merkle import (
    EMPTY_ROOT,
    CompactRange,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_hash,
    verify_consistency,
    verify_inclusion,
)

LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f")]
ROOTS = [bytes.fromhex(h) for h in (
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
)]
H = [leaf_hash(x) for x in LEAVES]
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


def _h(*hexes: str) -> list[bytes]:
    return [bytes.fromhex(x) for x in hexes]


# (leaf index 0-based, tree size, known proof)
INCLUSION = [
    (0, 1, []),
    (0, 8, _h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
              "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
              "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")),
    (5, 8, _h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
              "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
              "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")),
    (2, 3, _h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")),
    (1, 5, _h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
              "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
              "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")),
]
# (size1, size2, known proof)
CONSISTENCY = [
    (1, 1, []),
    (1, 8, _h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
              "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
              "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")),
    (6, 8, _h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
              "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
              "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")),
    (2, 5, _h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
              "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")),
    (6, 7, _h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
              "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
              "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")),
]


# --------------------------------------------------------------------------- reference implementations


def ref_mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1 MTH, literally (recursive, on raw entries)."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + ref_mth(leaves[:k]) + ref_mth(leaves[k:])).digest()


def _node(a: bytes, b: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + a + b).digest()


def _decomp(index: int, size: int) -> tuple[int, int]:
    inner = (index ^ (size - 1)).bit_length()
    border = bin(index >> inner).count("1")
    return inner, border


def _chain_inner(seed: bytes, proof: list[bytes], index: int) -> bytes:
    for i, h in enumerate(proof):
        seed = _node(seed, h) if (index >> i) & 1 == 0 else _node(h, seed)
    return seed


def _chain_inner_right(seed: bytes, proof: list[bytes], index: int) -> bytes:
    for i, h in enumerate(proof):
        if (index >> i) & 1:
            seed = _node(h, seed)
    return seed


def _chain_border_right(seed: bytes, proof: list[bytes]) -> bytes:
    for h in proof:
        seed = _node(h, seed)
    return seed


def oracle_inclusion(leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes) -> bool:
    """The decomposition algorithm (as in transparency-dev/merkle), plus the 32-byte rule."""
    if index >= size or len(leaf) != 32 or len(root) != 32 or any(len(p) != 32 for p in proof):
        return False
    inner, border = _decomp(index, size)
    if len(proof) != inner + border:
        return False
    r = _chain_inner(leaf, proof[:inner], index)
    return _chain_border_right(r, proof[inner:]) == root


def oracle_consistency(size1: int, size2: int, proof: list[bytes], root1: bytes, root2: bytes) -> bool:
    if size2 < size1 or size1 == 0:
        return False
    if size1 == size2:
        return not proof and root1 == root2
    if not proof or len(root1) != 32 or len(root2) != 32 or any(len(p) != 32 for p in proof):
        return False
    inner, border = _decomp(size1 - 1, size2)
    shift = (size1 & -size1).bit_length() - 1
    inner -= shift
    seed, start = proof[0], 1
    if size1 == 1 << shift:
        seed, start = root1, 0
    if len(proof) != start + inner + border:
        return False
    proof = proof[start:]
    mask = (size1 - 1) >> shift
    h1 = _chain_border_right(_chain_inner_right(seed, proof[:inner], mask), proof[inner:])
    if h1 != root1:
        return False
    h2 = _chain_border_right(_chain_inner(seed, proof[:inner], mask), proof[inner:])
    return h2 == root2


# --------------------------------------------------------------------------- known answers


def test_empty_tree_root_is_sha256_of_nothing():
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert root_hash([]) == EMPTY_ROOT == CompactRange().root()


def test_leaf_hash_of_empty_entry():
    assert leaf_hash(b"").hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"


def test_roots_of_the_rfc_test_leaves():
    for n in range(1, 9):
        assert root_hash(H[:n]) == ROOTS[n - 1] == ref_mth(LEAVES[:n])
    acc = CompactRange()
    for n, h in enumerate(H, start=1):
        acc.append(h)
        assert acc.root() == ROOTS[n - 1]


def test_no_duplication_of_odd_nodes():
    # CVE-2012-2459: duplicating the last node would make [a,b,c] and [a,b,c,c] collide.
    three, four = H[:3], H[:3] + [H[2]]
    assert root_hash(three) != root_hash(four)


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_known_inclusion_proofs(index, size, proof):
    assert inclusion_proof(H[:size], index) == proof
    assert verify_inclusion(H[index], index, size, proof, ROOTS[size - 1])


@pytest.mark.parametrize(("size1", "size2", "proof"), CONSISTENCY)
def test_known_consistency_proofs(size1, size2, proof):
    assert consistency_proof(H[:size2], size1) == proof
    assert verify_consistency(size1, size2, proof, ROOTS[size1 - 1], ROOTS[size2 - 1])


def test_proof_generation_rejects_bad_arguments():
    for bad in (-1, 8, 9):
        with pytest.raises(ValueError):
            inclusion_proof(H, bad)
    for bad in (0, -1, 9):
        with pytest.raises(ValueError):
            consistency_proof(H, bad)


# --------------------------------------------------------------------------- the mutation catalogue


def _inclusion_probes():
    for index, size, proof in INCLUSION:
        root, leaf = ROOTS[size - 1], H[index]
        yield (index, size, root, leaf, proof, "happy path", True)
        probes = [
            (index - 1, size, root, leaf, proof, "leafIdx sub 1"),
            (index + 1, size, root, leaf, proof, "leafIdx plus 1"),
            (index ^ 2, size, root, leaf, proof, "leafIdx XOR 2"),
            (index, size * 2, root, leaf, proof, "treeSize mul 2"),
            (index, size // 2, root, leaf, proof, "treeSize div 2"),
            (index, size, root, b"WrongLeaf", proof, "wrong leaf"),
            (index, size, EMPTY_ROOT, leaf, proof, "empty root"),
            (index, size, SOME_HASH, leaf, proof, "random root"),
            (index, size, root, leaf, proof + [b""], "trailing garbage"),
            (index, size, root, leaf, proof + [root], "trailing root"),
            (index, size, root, leaf, [b""] + proof, "preceding garbage"),
            (index, size, root, leaf, [root] + proof, "preceding root"),
        ]
        for i in range(len(proof)):
            bad = list(proof)
            bad[i] = bytes([bad[i][0] ^ 8]) + bad[i][1:]
            probes.append((index, size, root, leaf, bad, f"modified proof[{i}] bit 3"))
        if proof:
            probes.append((index, size, root, leaf, proof[:-1], "removed component"))
        if len(proof) > 1:
            probes.append((index, size, root, leaf, [proof[0], SOME_HASH] + proof[1:], "inserted component"))
        for p in probes:
            yield (*p, False)
    data_hash = leaf_hash(b"data")
    for root, leaf, desc, ok in ((data_hash, data_hash, "matching root and leaf", True),
                                 (data_hash, b"", "empty leaf", False),
                                 (b"", data_hash, "empty root", False),
                                 (b"", b"", "empty root and leaf", False)):
        yield (0, 1, root, leaf, [], f"single entry: {desc}", ok)
    for index, size in ((0, 0), (0, 1), (1, 0), (2, 1)):
        yield (index, size, b"", SOME_HASH, [], f"static {index}/{size}: random leaf", False)
        yield (index, size, EMPTY_ROOT, b"", [], f"static {index}/{size}: empty root", False)
        yield (index, size, EMPTY_ROOT, SOME_HASH, [], f"static {index}/{size}: empty root, random leaf", False)
    yield (0, 1, ROOTS[0], H[0], [], "one-leaf tree", True)
    yield (2**64 - 1, 8, ROOTS[7], H[0], INCLUSION[1][2], "index wrapped below zero", False)


@pytest.mark.parametrize("probe", list(_inclusion_probes()), ids=lambda p: p[5])
def test_inclusion_vector_catalogue(probe):
    index, size, root, leaf, proof, _desc, want = probe
    assert verify_inclusion(leaf, index, size, proof, root) is want
    assert oracle_inclusion(leaf, index, size, proof, root) is want


def _consistency_probes():
    for size1, size2, proof in CONSISTENCY:
        root1, root2 = ROOTS[size1 - 1], ROOTS[size2 - 1]
        yield (size1, size2, root1, root2, proof, "happy path", True)
        if not proof:
            continue
        probes = [
            (size1 - 1, size2, root1, root2, proof, "size1 sub 1"),
            (size1 + 1, size2, root1, root2, proof, "size1 plus 1"),
            (size1 ^ 2, size2, root1, root2, proof, "size1 XOR 2"),
            (size1, size2 * 2, root1, root2, proof, "size2 mul 2"),
            (size1, size2 // 2, root1, root2, proof, "size2 div 2"),
            (size1, size2, b"WrongRoot", root2, proof, "wrong root1"),
            (size1, size2, root1, b"WrongRoot", proof, "wrong root2"),
            (size1, size2, root2, root1, proof, "swapped roots"),
            (size1, size2, root1, root2, [], "empty proof"),
            (size1, size2, root1, root2, proof + [b""], "trailing garbage"),
            (size1, size2, root1, root2, proof + [root1], "trailing root1"),
            (size1, size2, root1, root2, proof + [root2], "trailing root2"),
            (size1, size2, root1, root2, [b""] + proof, "preceding garbage"),
            (size1, size2, root1, root2, [root1] + proof, "preceding root1"),
            (size1, size2, root1, root2, [root2] + proof, "preceding root2"),
            (size1, size2, root1, root2, [proof[0]] + proof, "preceding proof[0]"),
            (size1, size2, root1, root2, proof[:-1], "truncated proof"),
        ]
        for i in range(len(proof)):
            bad = list(proof)
            bad[i] = bytes([bad[i][0] ^ 16]) + bad[i][1:]
            probes.append((size1, size2, root1, root2, bad, f"modified proof[{i}] bit 4"))
        for p in probes:
            yield (*p, False)
    r1, r2 = b"don't care 1", b"don't care 2"
    yield from [
        (0, 0, r1, r2, [], "sizes are equal (zero) but roots are not", False),
        (1, 1, r1, r2, [], "sizes are equal (one) but roots are not", False),
        (0, 0, r1, r1, [], "sizes are equal (zero) and proof is empty", False),
        (0, 1, r1, r2, [], "size1 is zero and does not equal size2", False),
        (1, 1, r2, r2, [], "sizes are equal (one) and proof is empty", True),
        (1, 0, r1, r2, [], "size1 is greater than size2", False),
        (2, 1, r1, r2, [], "size1 is greater than size2 again", False),
        (1, 2, r1, r2, [], "sizes do not match and proof is empty", False),
        (0, 0, EMPTY_ROOT, r2, [], "roots do not match and sizes are zero", False),
        (1, 1, EMPTY_ROOT, r2, [], "roots do not match and sizes are one", False),
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], "sizes match, proof not empty, sizes zero", False),
        (1, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], "sizes match, proof not empty, sizes one", False),
        (0, 1, EMPTY_ROOT, r2, [], "size1 is zero and size2 is not zero", False),
        (0, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], "consistency check on empty tree is useless", False),
    ]


@pytest.mark.parametrize("probe", list(_consistency_probes()), ids=lambda p: p[5])
def test_consistency_vector_catalogue(probe):
    size1, size2, root1, root2, proof, _desc, want = probe
    assert verify_consistency(size1, size2, proof, root1, root2) is want
    assert oracle_consistency(size1, size2, proof, root1, root2) is want


# --------------------------------------------------------------------------- exhaustive and random


def test_every_proof_of_small_trees_verifies_and_matches_the_reference():
    entries = [bytes([i]) * (i % 5) for i in range(40)]
    hashes = [leaf_hash(e) for e in entries]
    for n in range(1, 41):
        root = root_hash(hashes[:n])
        assert root == ref_mth(entries[:n])
        for i in range(n):
            proof = inclusion_proof(hashes[:n], i)
            assert verify_inclusion(hashes[i], i, n, proof, root)
            assert oracle_inclusion(hashes[i], i, n, proof, root)
            # A wrong size may share the path's shape; whatever the answer, both algorithms agree.
            assert verify_inclusion(hashes[i], i, n + 1, proof, root) == oracle_inclusion(
                hashes[i], i, n + 1, proof, root)
            assert not verify_inclusion(hashes[i], i, 2 * n + 2, proof, root)
        for m in range(1, n + 1):
            proof = consistency_proof(hashes[:n], m)
            r1 = root_hash(hashes[:m])
            assert verify_consistency(m, n, proof, r1, root)
            assert oracle_consistency(m, n, proof, r1, root)


def test_random_malformed_proofs_agree_with_the_oracle():
    rng = random.Random(6962)
    hashes = [leaf_hash(bytes([i])) for i in range(70)]
    roots = [root_hash(hashes[:n]) for n in range(71)]
    accepted = 0
    for _ in range(6000):
        n = rng.randint(1, 70)
        kind = rng.random()
        if kind < 0.5:
            i = rng.randint(0, n - 1)
            proof = inclusion_proof(hashes[:n], i)
            index, size, root, leaf = i, n, roots[n], hashes[i]
            mutation = rng.randint(0, 7)
            if mutation == 1 and proof:
                proof = proof[:-1]
            elif mutation == 2:
                proof = proof + [rng.choice(hashes)]
            elif mutation == 3:
                index = rng.randint(0, 80)
            elif mutation == 4:
                size = rng.randint(0, 80)
            elif mutation == 5 and proof:
                j = rng.randrange(len(proof))
                proof = proof[:j] + [proof[j][:31]] + proof[j + 1:]
            elif mutation == 6 and len(proof) > 1:
                proof = list(reversed(proof))
            elif mutation == 7:
                leaf = rng.choice(hashes)
            got = verify_inclusion(leaf, index, size, proof, root)
            assert got == oracle_inclusion(leaf, index, size, proof, root)
        else:
            m = rng.randint(1, n)
            proof = consistency_proof(hashes[:n], m)
            s1, s2, r1, r2 = m, n, roots[m], roots[n]
            mutation = rng.randint(0, 6)
            if mutation == 1 and proof:
                proof = proof[1:]
            elif mutation == 2:
                proof = [rng.choice(hashes)] + proof
            elif mutation == 3:
                s1 = rng.randint(0, 80)
            elif mutation == 4:
                s2 = rng.randint(0, 80)
            elif mutation == 5:
                r1 = roots[rng.randint(0, 70)]
            elif mutation == 6 and proof:
                j = rng.randrange(len(proof))
                proof = proof[:j] + [bytes(32)] + proof[j + 1:]
            got = verify_consistency(s1, s2, proof, r1, r2)
            assert got == oracle_consistency(s1, s2, proof, r1, r2)
        accepted += got
    assert accepted > 1000  # the unmutated cases (and harmless mutations) still verify


def test_hashes_that_are_not_32_bytes_are_rejected():
    proof = inclusion_proof(H, 3)
    assert not verify_inclusion(H[3][:31], 3, 8, proof, ROOTS[7])
    assert not verify_inclusion(H[3], 3, 8, proof, ROOTS[7] + b"\0")
    assert not verify_inclusion(H[3], 3, 8, proof[:-1] + [proof[-1] + b"\0"], ROOTS[7])
    cproof = consistency_proof(H, 3)
    assert not verify_consistency(3, 8, cproof, ROOTS[2][:16], ROOTS[7])
    assert not verify_consistency(3, 8, [p + b"x" for p in cproof], ROOTS[2], ROOTS[7])


def test_compact_range_matches_root_hash_at_every_size():
    acc = CompactRange()
    hashes = [leaf_hash(str(i).encode()) for i in range(300)]
    for n, h in enumerate(hashes, start=1):
        acc.append(h)
        if n % 17 == 0 or n < 20:
            assert acc.root() == root_hash(hashes[:n])
    other = CompactRange()
    other.extend(b"".join(hashes))
    assert other.root() == acc.root() and other.size == 300
