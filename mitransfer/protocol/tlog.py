"""The transparency log's Merkle tree (RFC 9162, as RFC 6962 before it): hashes and proofs.

    leaf hash  = SHA-256(0x00 || entry)
    node hash  = SHA-256(0x01 || left || right)
    empty tree = SHA-256("")

The tree over n leaves splits at the largest power of two below n, so every tree size has one
root and every prefix of the log is itself a tree (RFC 9162 §2.1). Proofs are plain lists of
32-byte hashes, in RFC 9162's order (§2.1.3 inclusion, §2.1.4 consistency), so any RFC 6962 or
9162 verifier checks them.

Storage follows Go's golang.org/x/mod/sumdb/tlog: every hash of a complete subtree is kept at a
*stored hash index* (Crosby and Wallach's post-order numbering), written once when the leaf that
completes it is appended and never changed. A log of n leaves has fewer than 2n of them; a root,
an inclusion proof or a consistency proof needs at most about 2·log₂ n of them. Each reader of the
tree comes in two halves, so that a store can fetch the hashes in its own way (sans-I/O): a
function naming the stored indexes it needs, and one computing the answer from those hashes, in
that order. `Tree` keeps them in memory (verification, tests).

Everything here is pure and raises `ProofError` (reason PROOF_INVALID) for a proof that does not
check, or ValueError for impossible arguments (a leaf outside the tree).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Final

from mitransfer.protocol.errors import ProtocolError

HASH_SIZE: Final = 32
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()
"""The root of the tree with no leaves."""

HashReader = Callable[[Sequence[int]], Sequence[bytes]]
"""Reads the hashes at the given stored hash indexes, in the order asked."""


class ProofError(ProtocolError):
    """A proof, a root or a stored hash that does not agree with the tree (reason PROOF_INVALID)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="PROOF_INVALID")


def leaf_hash(entry: bytes) -> bytes:
    """The hash of a leaf holding `entry` (RFC 9162 §2.1.1: SHA-256(0x00 || entry))."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an interior node (SHA-256(0x01 || left || right))."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n ≥ 2): where RFC 9162 splits a tree of n leaves."""
    return 1 << ((n - 1).bit_length() - 1)


# --- stored hash indexes --------------------------------------------------------------------------

def stored_hash_index(level: int, n: int) -> int:
    """Where the hash of the n-th subtree of 2**level leaves is stored.

    Leaf n's own hash comes right after the hashes its predecessors completed; a subtree's hash
    right after its rightmost leaf's, one more for every level above it.
    """
    for _ in range(level):
        n = 2 * n + 1
    i = 0
    while n > 0:
        i += n
        n >>= 1
    return i + level


def split_stored_hash_index(index: int) -> tuple[int, int]:
    """(level, n) of a stored hash index: the inverse of `stored_hash_index`."""
    n = index // 2
    at = stored_hash_index(0, n)
    while True:
        after = at + 1 + _trailing_ones(n)  # leaf n+1's hash comes after n's and those n completes
        if after > index:
            break
        n += 1
        at = after
    level = index - at
    return level, n >> level


def _trailing_ones(n: int) -> int:
    return ((n + 1) & -(n + 1)).bit_length() - 1


def stored_hash_count(size: int) -> int:
    """How many hashes a tree of `size` leaves has stored."""
    if size == 0:
        return 0
    return stored_hash_index(0, size - 1) + 1 + _trailing_ones(size - 1)


def append_indexes(n: int) -> list[int]:
    """The stored hashes that appending leaf n needs: the roots of the subtrees it completes' left
    halves, in increasing index order."""
    m = _trailing_ones(n)
    return [stored_hash_index(i, (n >> i) - 1) for i in reversed(range(m))]


def append_hashes(n: int, leaf: bytes, old: Sequence[bytes]) -> list[bytes]:
    """The hashes to store, from `stored_hash_index(0, n)` on, when leaf n with hash `leaf` is
    appended; `old` are the hashes at `append_indexes(n)`. One, plus one per subtree it completes
    (two on average)."""
    hashes = [leaf]
    h = leaf
    for left in reversed(old):
        h = node_hash(left, h)
        hashes.append(h)
    return hashes


# --- roots ----------------------------------------------------------------------------------------

def _subtree_indexes(lo: int, hi: int, need: list[int]) -> list[int]:
    """The stored hashes making up the (possibly incomplete) subtree of leaves [lo, hi): its
    complete subtrees, largest first."""
    while lo < hi:
        k = _split(hi - lo + 1)
        level = k.bit_length() - 1
        need.append(stored_hash_index(level, lo >> level))
        lo += k
    return need


def _subtree_hash(lo: int, hi: int, hashes: Sequence[bytes], at: int) -> tuple[bytes, int]:
    """The hash of leaves [lo, hi) from `hashes[at:]` as `_subtree_indexes` named them; returns it
    with the position after the hashes used."""
    count = 0
    while lo < hi:
        lo += _split(hi - lo + 1)
        count += 1
    h = hashes[at + count - 1]
    for i in range(count - 2, -1, -1):
        h = node_hash(hashes[at + i], h)
    return h, at + count


def root_indexes(size: int) -> list[int]:
    """The stored hashes the root of a tree of `size` leaves is computed from (≤ 1 + log₂ size)."""
    return _subtree_indexes(0, size, [])


def root_from(size: int, hashes: Sequence[bytes]) -> bytes:
    """The root of a tree of `size` leaves from the hashes at `root_indexes(size)`."""
    if size == 0:
        return EMPTY_ROOT
    _check_count(hashes, root_indexes(size))
    return _subtree_hash(0, size, hashes, 0)[0]


def tree_hash(size: int, read: HashReader) -> bytes:
    """The root of a tree of `size` leaves, reading its stored hashes once."""
    return root_from(size, read(root_indexes(size))) if size else EMPTY_ROOT


def _check_count(hashes: Sequence[bytes], indexes: Sequence[int]) -> None:
    if len(hashes) != len(indexes):
        raise ValueError(f"{len(indexes)} stored hashes were asked for and {len(hashes)} given")


# --- inclusion proofs (RFC 9162 §2.1.3) -----------------------------------------------------------

def _inclusion_indexes(lo: int, hi: int, n: int, need: list[int]) -> list[int]:
    if lo + 1 == hi:
        return need
    k = _split(hi - lo)
    if n < lo + k:
        _inclusion_indexes(lo, lo + k, n, need)
        return _subtree_indexes(lo + k, hi, need)
    _subtree_indexes(lo, lo + k, need)
    return _inclusion_indexes(lo + k, hi, n, need)


def _inclusion(lo: int, hi: int, n: int, hashes: Sequence[bytes], at: int) -> tuple[list[bytes], int]:
    if lo + 1 == hi:
        return [], at
    k = _split(hi - lo)
    if n < lo + k:
        proof, at = _inclusion(lo, lo + k, n, hashes, at)
        sibling, at = _subtree_hash(lo + k, hi, hashes, at)
    else:
        sibling, at = _subtree_hash(lo, lo + k, hashes, at)
        proof, at = _inclusion(lo + k, hi, n, hashes, at)
    proof.append(sibling)
    return proof, at


def _check_leaf(size: int, index: int) -> None:
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size} leaves")


def inclusion_indexes(size: int, index: int) -> list[int]:
    """The stored hashes an inclusion proof of leaf `index` in the tree of `size` leaves needs.

    Raises ValueError if the leaf is not in that tree.
    """
    _check_leaf(size, index)
    return _inclusion_indexes(0, size, index, [])


def inclusion_proof(size: int, index: int, hashes: Sequence[bytes]) -> list[bytes]:
    """The inclusion proof (audit path, leaf's sibling first) from the hashes at `inclusion_indexes`."""
    _check_count(hashes, inclusion_indexes(size, index))
    return _inclusion(0, size, index, hashes, 0)[0]


def prove_inclusion(size: int, index: int, read: HashReader) -> list[bytes]:
    """The proof that the tree of `size` leaves holds leaf `index`. Raises ValueError as
    `inclusion_indexes` does."""
    return inclusion_proof(size, index, read(inclusion_indexes(size, index)))


def root_from_inclusion(proof: Sequence[bytes], size: int, index: int, leaf: bytes) -> bytes:
    """The root an inclusion proof implies for leaf `index` with hash `leaf` (RFC 9162 §2.1.3.2).

    Raises ProofError if the proof has the wrong length or the leaf is outside the tree.
    """
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of {size} leaves")
    if any(len(h) != HASH_SIZE for h in proof) or len(leaf) != HASH_SIZE:
        raise ProofError("a proof holds 32-byte hashes only")
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            raise ProofError("the inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the inclusion proof is shorter than the tree is deep")
    return r


def check_inclusion(proof: Sequence[bytes], size: int, root: bytes, index: int, leaf: bytes) -> None:
    """Check that the tree of `size` leaves with root `root` holds `leaf` at `index`.

    Raises ProofError if it does not.
    """
    if root_from_inclusion(proof, size, index, leaf) != root:
        raise ProofError(f"the inclusion proof of leaf {index} does not lead to the root of tree size {size}")


# --- consistency proofs (RFC 9162 §2.1.4) ---------------------------------------------------------

def _consistency_indexes(lo: int, hi: int, n: int, need: list[int]) -> list[int]:
    if n == hi:
        return need if lo == 0 else _subtree_indexes(lo, hi, need)
    k = _split(hi - lo)
    if n <= lo + k:
        _consistency_indexes(lo, lo + k, n, need)
        return _subtree_indexes(lo + k, hi, need)
    _subtree_indexes(lo, lo + k, need)
    return _consistency_indexes(lo + k, hi, n, need)


def _consistency(lo: int, hi: int, n: int, hashes: Sequence[bytes], at: int) -> tuple[list[bytes], int]:
    if n == hi:
        if lo == 0:
            return [], at
        h, at = _subtree_hash(lo, hi, hashes, at)
        return [h], at
    k = _split(hi - lo)
    if n <= lo + k:
        proof, at = _consistency(lo, lo + k, n, hashes, at)
        other, at = _subtree_hash(lo + k, hi, hashes, at)
    else:
        other, at = _subtree_hash(lo, lo + k, hashes, at)
        proof, at = _consistency(lo + k, hi, n, hashes, at)
    proof.append(other)
    return proof, at


def _check_sizes(old: int, new: int) -> None:
    if not 0 <= old <= new:
        raise ValueError(f"no consistency proof from tree size {old} to {new}")


def consistency_indexes(new: int, old: int) -> list[int]:
    """The stored hashes a consistency proof from tree size `old` to `new` needs.

    Raises ValueError unless 0 ≤ old ≤ new.
    """
    _check_sizes(old, new)
    return [] if old in (0, new) else _consistency_indexes(0, new, old, [])


def consistency_proof(new: int, old: int, hashes: Sequence[bytes]) -> list[bytes]:
    """The consistency proof from the hashes at `consistency_indexes(new, old)`; empty when the
    old tree is empty or the same size."""
    _check_count(hashes, consistency_indexes(new, old))
    return [] if old in (0, new) else _consistency(0, new, old, hashes, 0)[0]


def prove_consistency(new: int, old: int, read: HashReader) -> list[bytes]:
    """The proof that the tree of `new` leaves extends the tree of `old` leaves."""
    return consistency_proof(new, old, read(consistency_indexes(new, old)))


def check_consistency(proof: Sequence[bytes], new: int, new_root: bytes, old: int, old_root: bytes) -> None:
    """Check that the tree of `new` leaves with root `new_root` extends the tree of `old` leaves
    with root `old_root` (RFC 9162 §2.1.4.2).

    Raises ProofError if it does not, or if old > new (a log never shrinks).
    """
    if not 0 <= old <= new:
        raise ProofError(f"tree size {new} cannot extend tree size {old}")
    if any(len(h) != HASH_SIZE for h in proof):
        raise ProofError("a proof holds 32-byte hashes only")
    if old == new:
        if proof:
            raise ProofError("two trees of the same size need an empty consistency proof")
        if new_root != old_root:
            raise ProofError(f"two different roots for tree size {new}")
        return
    if old == 0:
        if proof:
            raise ProofError("every tree extends the empty tree: the proof must be empty")
        return
    if not proof:
        raise ProofError(f"an empty consistency proof from tree size {old} to {new}")
    path = list(proof)
    if old & (old - 1) == 0:  # a power of two: the old root is itself a node of the new tree
        path.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("the consistency proof is longer than it can be")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the consistency proof is shorter than it must be")
    if fr != old_root:
        raise ProofError(f"the consistency proof does not lead to the root of tree size {old}")
    if sr != new_root:
        raise ProofError(f"the consistency proof does not lead to the root of tree size {new}")


# --- a tree in memory -----------------------------------------------------------------------------

class Tree:
    """A log's stored hashes in memory, appended leaf by leaf: what a verifier rebuilds from the
    entries alone, and the reference the store's hashes are compared with."""

    def __init__(self) -> None:
        self.hashes: list[bytes] = []  # by stored hash index
        self.size = 0

    def read(self, indexes: Sequence[int]) -> list[bytes]:
        return [self.hashes[i] for i in indexes]

    def append(self, entry: bytes) -> int:
        """Add a leaf holding `entry`; returns its index."""
        return self.append_hash(leaf_hash(entry))

    def append_hash(self, leaf: bytes) -> int:
        """Add a leaf whose hash is `leaf`; returns its index."""
        n = self.size
        self.hashes.extend(append_hashes(n, leaf, self.read(append_indexes(n))))
        self.size += 1
        return n

    def root(self, size: int | None = None) -> bytes:
        """The root of the tree of its first `size` leaves (all by default)."""
        size = self.size if size is None else size
        if not 0 <= size <= self.size:
            raise ValueError(f"no tree of size {size} in a log of {self.size} leaves")
        return tree_hash(size, self.read)

    def inclusion(self, index: int, size: int | None = None) -> list[bytes]:
        return prove_inclusion(self.size if size is None else size, index, self.read)

    def consistency(self, old: int, new: int | None = None) -> list[bytes]:
        return prove_consistency(self.size if new is None else new, old, self.read)


class CompactRange:
    """The right edge of a tree: the hashes of its complete subtrees, largest first (the stored
    hashes at `root_indexes(size)`). That is all a log needs to append leaves and compute its
    root, in O(log n) memory: how the gateway extends its stored tree, and how a verifier
    recomputes a log of any length."""

    def __init__(self, size: int = 0, edge: Sequence[bytes] = ()) -> None:
        if len(edge) != size.bit_count():
            raise ValueError(f"a tree of {size} leaves has {size.bit_count()} complete subtrees on its edge, "
                             f"not {len(edge)}")
        self.size = size
        self.edge = list(edge)

    def append(self, leaf: bytes) -> list[bytes]:
        """Add a leaf whose hash is `leaf`; returns the hashes to store from
        `stored_hash_index(0, n)` on, n being the leaf's index."""
        n = self.size
        m = _trailing_ones(n)
        hashes = append_hashes(n, leaf, self.edge[len(self.edge) - m:])
        del self.edge[len(self.edge) - m:]
        self.edge.append(hashes[-1])
        self.size += 1
        return hashes

    def root(self) -> bytes:
        return root_from(self.size, self.edge)
