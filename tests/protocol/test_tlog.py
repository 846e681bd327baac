"""The Merkle tree against RFC 6962/9162: the reference vectors of the Certificate Transparency
implementations, a direct transcription of the RFC's recursive definitions, and hypothesis over
tree sizes. A proof that checks here checks with any RFC 9162 verifier, and the other way round."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mitransfer.protocol import tlog
from mitransfer.protocol.tlog import ProofError, Tree

# The leaves and hashes every CT implementation tests against (RFC 6962's reference tree).
LEAVES = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                      "606162636465666768696a6b6c6d6e6f")]
ROOTS = [bytes.fromhex(h) for h in (
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
)]
# Complete subtrees of that tree, by level and position.
NODES = [[bytes.fromhex(h) for h in level] for level in (
    ("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
     "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
     "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
     "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
     "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
     "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
     "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
     "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1"),
    ("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
     "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
     "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
     "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
    ("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
     "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
    ("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",),
)]
# (leaf index, tree size, audit path)
INCLUSION = [
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]
# (old size, new size, proof)
CONSISTENCY = [
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]


def reference() -> Tree:
    tree = Tree()
    for leaf in LEAVES:
        tree.append(leaf)
    return tree


# --- the RFC's recursive definitions, transcribed (RFC 9162 §2.1.1, §2.1.3.1, §2.1.4.1) ----------

def mth(leaves: Sequence[bytes]) -> bytes:
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1 << ((n - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


def path(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return [*path(m, leaves[:k]), mth(leaves[k:])]
    return [*path(m - k, leaves[k:]), mth(leaves[:k])]


def subproof(m: int, leaves: Sequence[bytes], whole: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if whole else [mth(leaves)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return [*subproof(m, leaves[:k], whole), mth(leaves[k:])]
    return [*subproof(m - k, leaves[k:], False), mth(leaves[:k])]


# --- vectors --------------------------------------------------------------------------------------

def test_roots_of_the_reference_tree_for_every_size() -> None:
    tree = reference()
    assert [tree.root(n) for n in range(len(LEAVES) + 1)] == ROOTS
    assert ROOTS[0] == tlog.EMPTY_ROOT
    assert tlog.leaf_hash(b"") == ROOTS[1]


def test_every_complete_subtree_is_stored_at_its_index() -> None:
    tree = reference()
    for level, hashes in enumerate(NODES):
        for n, expected in enumerate(hashes):
            assert tree.hashes[tlog.stored_hash_index(level, n)] == expected
    assert len(tree.hashes) == tlog.stored_hash_count(8) == sum(len(level) for level in NODES)


@pytest.mark.parametrize(("index", "size", "expected"), INCLUSION)
def test_inclusion_proofs_match_the_reference(index: int, size: int, expected: list[str]) -> None:
    tree = reference()
    proof = tree.inclusion(index, size)
    assert [h.hex() for h in proof] == expected
    leaf = tlog.leaf_hash(LEAVES[index])
    tlog.check_inclusion(proof, size, ROOTS[size], index, leaf)
    wrong = [
        (proof, size, ROOTS[size], index + 1 if index + 1 < size else index - 1, leaf),  # another leaf
        (proof, size * 2, ROOTS[size], index, leaf),                                     # another size
        (proof, size, ROOTS[size], index, tlog.leaf_hash(b"not it")),                    # another leaf hash
        (proof, size, ROOTS[0], index, leaf),                                            # another root
        ([*proof, ROOTS[size]], size, ROOTS[size], index, leaf),                         # trailing hash
        ([ROOTS[size], *proof], size, ROOTS[size], index, leaf),                         # leading hash
        (proof[:-1], size, ROOTS[size], index, leaf),                                    # one missing
    ]
    for args in wrong:
        with pytest.raises(ProofError):
            tlog.check_inclusion(*args)


@pytest.mark.parametrize(("old", "new", "expected"), CONSISTENCY)
def test_consistency_proofs_match_the_reference(old: int, new: int, expected: list[str]) -> None:
    tree = reference()
    proof = tree.consistency(old, new)
    assert [h.hex() for h in proof] == expected
    tlog.check_consistency(proof, new, ROOTS[new], old, ROOTS[old])
    wrong = [
        (proof, new, ROOTS[new], old - 1, ROOTS[old]),
        (proof, new, ROOTS[new], old + 1, ROOTS[old]),
        (proof, new, ROOTS[old], old, ROOTS[new]),      # roots swapped
        (proof, new * 2, ROOTS[new], old, ROOTS[old]),
        ([], new, ROOTS[new], old, ROOTS[old]),
        (proof[:-1], new, ROOTS[new], old, ROOTS[old]),
        ([*proof, ROOTS[new]], new, ROOTS[new], old, ROOTS[old]),
        ([proof[0], *proof], new, ROOTS[new], old, ROOTS[old]),
    ]
    for args in wrong:
        with pytest.raises(ProofError):
            tlog.check_consistency(*args)


def test_edge_sizes() -> None:
    tree = reference()
    tlog.check_consistency([], 8, ROOTS[8], 0, ROOTS[0])       # every tree extends the empty one
    tlog.check_consistency([], 8, ROOTS[8], 8, ROOTS[8])
    tlog.check_inclusion([], 1, ROOTS[1], 0, tlog.leaf_hash(LEAVES[0]))
    with pytest.raises(ProofError):
        tlog.check_consistency([], 8, ROOTS[8], 8, ROOTS[7])    # same size, another root: a fork
    with pytest.raises(ProofError):
        tlog.check_consistency([], 7, ROOTS[7], 8, ROOTS[8])    # a log never shrinks
    with pytest.raises(ProofError):
        tlog.check_inclusion([], 8, ROOTS[8], 8, tlog.leaf_hash(b""))
    with pytest.raises(ValueError):
        tree.inclusion(8, 8)
    with pytest.raises(ValueError):
        tree.consistency(9, 8)
    with pytest.raises(ValueError):
        tree.root(9)


# --- every size -----------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(entries=st.lists(st.binary(max_size=8), min_size=1, max_size=70), data=st.data())
def test_proofs_equal_the_rfc_definitions_and_verify(entries: list[bytes], data: st.DataObject) -> None:
    tree = Tree()
    for entry in entries:
        tree.append(entry)
    size = data.draw(st.integers(1, len(entries)), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    old = data.draw(st.integers(1, size), label="old")
    assert tree.root(size) == mth(entries[:size])
    proof = tree.inclusion(index, size)
    assert proof == path(index, entries[:size])
    tlog.check_inclusion(proof, size, tree.root(size), index, tlog.leaf_hash(entries[index]))
    consistency = tree.consistency(old, size)
    assert consistency == ([] if old == size else subproof(old, entries[:size], True))
    tlog.check_consistency(consistency, size, tree.root(size), old, tree.root(old))
    if proof:  # any flipped bit in any hash of the proof is caught
        at = data.draw(st.integers(0, 32 * len(proof) * 8 - 1), label="bit")
        bad = [bytearray(h) for h in proof]
        bad[at // 256][(at // 8) % 32] ^= 1 << (at % 8)
        with pytest.raises(ProofError):
            tlog.check_inclusion([bytes(h) for h in bad], size, tree.root(size), index,
                                 tlog.leaf_hash(entries[index]))
    if consistency:
        at = data.draw(st.integers(0, 32 * len(consistency) * 8 - 1), label="bit")
        bad = [bytearray(h) for h in consistency]
        bad[at // 256][(at // 8) % 32] ^= 1 << (at % 8)
        with pytest.raises(ProofError):
            tlog.check_consistency([bytes(h) for h in bad], size, tree.root(size), old, tree.root(old))


@settings(max_examples=200, deadline=None)
@given(index=st.integers(0, 1 << 40))
def test_stored_hash_indexes_split_back(index: int) -> None:
    level, n = tlog.split_stored_hash_index(index)
    assert tlog.stored_hash_index(level, n) == index


def test_stored_hash_count_follows_the_tree() -> None:
    tree = Tree()
    for i in range(130):
        assert len(tree.hashes) == tlog.stored_hash_count(i)
        tree.append(i.to_bytes(2, "big"))


def test_reads_stay_logarithmic() -> None:
    """Roots and proofs read O(log n) stored hashes, however large the log."""
    for size in (1, 2, 1000, 1 << 20, (1 << 40) + 12345):
        assert len(tlog.root_indexes(size)) <= size.bit_length()
        assert len(tlog.inclusion_indexes(size, size // 3)) <= 2 * size.bit_length()
        assert len(tlog.consistency_indexes(size, max(1, size // 7))) <= 2 * size.bit_length()
        assert len(tlog.append_indexes(size)) <= size.bit_length()


@settings(max_examples=30, deadline=None)
@given(count=st.integers(0, 100), start=st.integers(0, 100))
def test_a_compact_range_extends_a_stored_tree(count: int, start: int) -> None:
    """Resumed from the stored hashes of its edge, a compact range stores what the whole tree
    would, and knows its root."""
    tree = Tree()
    for i in range(start):
        tree.append(i.to_bytes(2, "big"))
    compact = tlog.CompactRange(start, tree.read(tlog.root_indexes(start)))
    for i in range(start, start + count):
        new = compact.append(tlog.leaf_hash(i.to_bytes(2, "big")))
        at = tlog.stored_hash_index(0, i)
        tree.append(i.to_bytes(2, "big"))
        assert tree.hashes[at:] == new
        assert compact.root() == tree.root()
    with pytest.raises(ValueError):
        tlog.CompactRange(3, [])
