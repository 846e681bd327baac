"""The transparency log in the store, as operations of steps (`gateway.store.steps`).

Three tables and a counter (migration 4):

- `log_entries (leaf_index, entry)`: the leaves, each a serialized `mitransfer.v1.LogEntry`
  written once by the accept that made it (`append`), in the same transaction as the message,
  its leaf index taken from the same `log_head` row as its sequence: one log, one order, on
  every replica.
- `log_hashes (hash_index, hash)`: the tree's stored hashes by stored hash index
  (`mitransfer.protocol.tlog`): each written once, never changed; a root or proof reads
  O(log n) of them.
- `log_tree (size)`: how many leaves the stored hashes cover; `log_checkpoints`: the signed
  tree heads.

The accept (the hot path) only serializes its entries and inserts them. Hashing them into the
tree, and signing checkpoints, happen later in `publish`, a few hundred leaves per transaction
under the `log_tree` row's lock (replicas take turns; the hashes are the same whoever computes
them). A receipt names its leaf at once; a checkpoint covers it from the next publication on.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from typing import NamedTuple, TypeVar

from gateway.core.errors import NotFound, RuleViolation
from gateway.core.timestamps import from_micros, micros
from gateway.store.port import (
    AuditSink,
    CheckpointRecord,
    ConsistencyRecord,
    InclusionRecord,
    LoggedMessage,
    SignCheckpoint,
)
from gateway.store.steps import Batch, Query, QueryOne, Statement, Steps, marks
from mitransfer.protocol import tlog

PAGE = 2_000  # rows per query when a whole table is read (audit)
T = TypeVar("T")


class LogMeter:
    """The CPU time (this thread's) spent on the log's own work: serializing and inserting each
    accept's entries, extending the tree, signing checkpoints. Measured inside the operations, so
    it is exact where a driver runs an operation's steps on one thread without interleaving other
    work (SQLite's writer), and an upper bound where it awaits between steps (PostgreSQL)."""

    __slots__ = ("ns",)

    def __init__(self) -> None:
        self.ns = 0

    @property
    def seconds(self) -> float:
        return self.ns / 1e9


def metered(operation: Steps[T], meter: LogMeter) -> Steps[T]:
    """`operation`, its thread CPU time from first step to end added to `meter`."""
    start = time.thread_time_ns()
    try:
        return (yield from operation)
    finally:
        meter.ns += time.thread_time_ns() - start


class _Head(NamedTuple):
    sequence: int
    leaves: int


class _Size(NamedTuple):
    size: int


class _Entry(NamedTuple):
    leaf_index: int
    entry: bytes


class _Hash(NamedTuple):
    hash_index: int
    hash: bytes


class _Checkpoint(NamedTuple):
    tree_size: int
    root_hash: bytes
    note: bytes
    published_at: int


class _Leaf(NamedTuple):
    transfer_id: str
    leaf_index: int | None
    outbound: str
    inbound: str


def _record(row: _Checkpoint) -> CheckpointRecord:
    return CheckpointRecord(row.tree_size, bytes(row.root_hash), bytes(row.note), from_micros(row.published_at))


# --- the hot path ---------------------------------------------------------------------------------

def take_head(leaves: int) -> Steps[tuple[int, int]]:
    """Take the log's head for one message and its `leaves` entries: (sequence, first leaf index).

    One row hands out both numbers, so sequences stay gapless and leaves follow them in commit
    order across replicas; its lock is held only for the rest of the transaction.
    """
    return taken(leaves, (yield from head_query(leaves)))


def head_query(leaves: int) -> QueryOne[_Head]:
    """`take_head`'s query, for an operation that prefetches it with others (its result: `taken`)."""
    return QueryOne("UPDATE log_head SET sequence = sequence + 1, leaves = leaves + ? RETURNING sequence, leaves",
                    (leaves,), _Head)


def taken(leaves: int, head: _Head | None) -> tuple[int, int]:
    """(sequence, first leaf index) from what `head_query(leaves)` returned."""
    assert head is not None  # migration 2 made the row
    return head.sequence, head.leaves - leaves


def append(first: int, entries: Sequence[bytes]) -> Statement:
    """One statement writing `entries` at leaf indexes first, first + 1, …"""
    return Statement(
        f"INSERT INTO log_entries (leaf_index, entry) VALUES {', '.join('(?, ?)' for _ in entries)}",
        tuple(v for i, entry in enumerate(entries) for v in (first + i, entry)))


# --- the tree and its checkpoints -----------------------------------------------------------------

def _hashes(indexes: Sequence[int]) -> Steps[list[bytes]]:
    """The stored hashes at `indexes`, in that order. Raises LookupError if one is missing."""
    if not indexes:
        return []
    rows = yield from Query(f"SELECT hash_index, hash FROM log_hashes WHERE hash_index IN ({marks(len(indexes))})",
                            tuple(indexes), _Hash)
    found = {r.hash_index: bytes(r.hash) for r in rows}
    missing = [i for i in indexes if i not in found]
    if missing:
        raise LookupError(f"the log's stored hash {missing[0]} is missing")
    return [found[i] for i in indexes]


def integrate(limit: int) -> Steps[tuple[int, int]]:
    """Hash up to `limit` leaves logged since the stored tree was last extended into it; returns
    the tree's size now and the number of leaves logged. Holds the `log_tree` row until commit,
    so replicas take turns.

    Raises LookupError if an entry or stored hash the tree needs is missing (the store was altered).
    """
    tree = yield from QueryOne("UPDATE log_tree SET size = size RETURNING size", (), _Size)
    assert tree is not None  # migration 4 made the row
    head = yield from QueryOne("SELECT sequence, leaves FROM log_head", (), _Head)
    assert head is not None
    size, end = tree.size, min(head.leaves, tree.size + limit)
    if end <= size:
        return size, head.leaves
    rows = yield from Query("SELECT leaf_index, entry FROM log_entries WHERE leaf_index >= ? AND leaf_index < ?"
                            " ORDER BY leaf_index", (size, end), _Entry)
    if [r.leaf_index for r in rows] != list(range(size, end)):
        have = {r.leaf_index for r in rows}
        raise LookupError(f"the log's entry {min(set(range(size, end)) - have)} is missing")
    compact = tlog.CompactRange(size, (yield from _hashes(tlog.root_indexes(size))))
    stored = []
    for r in rows:
        at = tlog.stored_hash_index(0, compact.size)
        stored += [(at + i, h) for i, h in enumerate(compact.append(tlog.leaf_hash(bytes(r.entry))))]
    yield Batch("INSERT INTO log_hashes (hash_index, hash) VALUES (?, ?)", stored)
    yield Statement("UPDATE log_tree SET size = ?", (end,))
    return end, head.leaves


def _latest() -> Steps[CheckpointRecord | None]:
    row = yield from QueryOne("SELECT tree_size, root_hash, note, published_at FROM log_checkpoints"
                              " ORDER BY tree_size DESC LIMIT 1", (), _Checkpoint)
    return None if row is None else _record(row)


def _checkpoint(size: int) -> Steps[CheckpointRecord]:
    """The checkpoint of `size` (0: the latest). Raises NotFound (CHECKPOINT_NOT_FOUND)."""
    if size == 0:
        found = yield from _latest()
    else:
        row = yield from QueryOne("SELECT tree_size, root_hash, note, published_at FROM log_checkpoints"
                                  " WHERE tree_size = ?", (size,), _Checkpoint)
        found = None if row is None else _record(row)
    if found is None:
        raise NotFound("no checkpoint has been published yet" if size == 0 else f"no checkpoint of tree size {size}",
                       reason="CHECKPOINT_NOT_FOUND", metadata={"tree_size": str(size)})
    return found


def publish(sign: SignCheckpoint, now: dt.datetime, limit: int) -> Steps[CheckpointRecord | None]:
    """Extend the tree by up to `limit` leaves; sign and keep a checkpoint if it grew past the
    last one. None if there was nothing new to sign."""
    size, _ = yield from integrate(limit)
    latest = yield from _latest()
    if size == 0 or (latest is not None and latest.tree_size >= size):
        return None
    root = tlog.root_from(size, (yield from _hashes(tlog.root_indexes(size))))
    note = sign(size, root)
    yield Statement("INSERT INTO log_checkpoints (tree_size, root_hash, note, published_at) VALUES (?, ?, ?, ?)",
                         (size, root, note, micros(now)))
    return CheckpointRecord(size, root, note, now)


def latest_checkpoint() -> Steps[CheckpointRecord | None]:
    return (yield from _latest())


def leaves() -> Steps[int]:
    """How many entries the log holds (checkpointed or not)."""
    head = yield from QueryOne("SELECT sequence, leaves FROM log_head", (), _Head)
    return head.leaves if head is not None else 0


# --- proofs ---------------------------------------------------------------------------------------

def leaf_of(message_id: str) -> Steps[LoggedMessage | None]:
    """Where a message is in the log, and its case's sides (for a message to the suspended-record
    index, which belongs to no case: its sender as the one side)."""
    row = yield from QueryOne("SELECT m.transfer_id, m.leaf_index, c.outbound, c.inbound FROM messages m"
                              " JOIN cases c ON c.transfer_id = m.transfer_id WHERE m.message_id = ?"
                              " UNION ALL SELECT transfer_id, leaf_index, sender AS outbound, '' AS inbound"
                              " FROM index_messages WHERE message_id = ?",
                              (message_id, message_id), _Leaf)
    if row is None or row.leaf_index is None:
        return None
    return LoggedMessage(row.transfer_id, row.leaf_index, row.outbound, row.inbound)


def inclusion_proof(message_id: str, tree_size: int) -> Steps[InclusionRecord]:
    """See `Store.inclusion_proof`."""
    found = yield from leaf_of(message_id)
    if found is None:
        raise NotFound(f"no message {message_id}", reason="MESSAGE_NOT_FOUND", metadata={"message_id": message_id})
    leaf = found.leaf_index
    checkpoint = yield from _checkpoint(tree_size)
    if leaf >= checkpoint.tree_size:
        raise RuleViolation(f"message {message_id} is leaf {leaf}, after the checkpoint of tree size"
                            f" {checkpoint.tree_size}", reason="LEAF_NOT_IN_TREE",
                            metadata={"leaf_index": str(leaf), "tree_size": str(checkpoint.tree_size)})
    entry = yield from QueryOne("SELECT leaf_index, entry FROM log_entries WHERE leaf_index = ?", (leaf,), _Entry)
    if entry is None:
        raise LookupError(f"the log's entry {leaf} is missing")
    path = tlog.inclusion_proof(checkpoint.tree_size, leaf,
                                (yield from _hashes(tlog.inclusion_indexes(checkpoint.tree_size, leaf))))
    return InclusionRecord(leaf, bytes(entry.entry), tuple(path), checkpoint)


def consistency_proof(first: int, second: int) -> Steps[ConsistencyRecord]:
    """See `Store.consistency_proof`."""
    checkpoint = yield from _checkpoint(second)
    if not 0 <= first <= checkpoint.tree_size:
        raise RuleViolation(f"no consistency proof from tree size {first} to {checkpoint.tree_size}",
                            reason="TREE_SIZE_INVALID",
                            metadata={"first": str(first), "second": str(checkpoint.tree_size)})
    indexes = tlog.consistency_indexes(checkpoint.tree_size, first)
    proof = tlog.consistency_proof(checkpoint.tree_size, first, (yield from _hashes(indexes)))
    return ConsistencyRecord(first, tuple(proof), checkpoint)


# --- the audit's snapshot -------------------------------------------------------------------------

class _MessageRow(NamedTuple):
    sequence: int
    message_id: str
    fingerprint: bytes
    receipt: bytes
    leaf_index: int | None


class _CaseRow(NamedTuple):
    transfer_id: str
    state: int
    closed: int


class _FundRow(NamedTuple):
    transfer_id: str
    message_id: str
    amount_fen: int
    status: str


class _TotalRow(NamedTuple):
    outbound_province: str
    inbound_province: str
    status: str
    amount_fen: int
    transfers: int


def audit(sink: AuditSink, *, rows: bool = True) -> Steps[None]:
    """Hand everything `sink` takes to it, table by table, a page at a time (see AuditSink); with
    `rows` False, only the log's head, checkpoints and entries (an export)."""
    head = yield from QueryOne("SELECT sequence, leaves FROM log_head", (), _Head)
    tree = yield from QueryOne("SELECT size FROM log_tree", (), _Size)
    sink.head(head.sequence if head else 0, head.leaves if head else 0, tree.size if tree else 0)
    for cp in (yield from Query("SELECT tree_size, root_hash, note, published_at FROM log_checkpoints"
                               " ORDER BY tree_size", (), _Checkpoint)):
        sink.checkpoint(_record(cp))
    after = -1
    while True:
        entries = yield from Query("SELECT leaf_index, entry FROM log_entries WHERE leaf_index > ?"
                                   " ORDER BY leaf_index LIMIT ?", (after, PAGE), _Entry)
        for e in entries:
            sink.entry(e.leaf_index, bytes(e.entry))
        if len(entries) < PAGE:
            break
        after = entries[-1].leaf_index
    if not rows:
        return
    after = -1
    while True:
        hashes = yield from Query("SELECT hash_index, hash FROM log_hashes WHERE hash_index > ?"
                                  " ORDER BY hash_index LIMIT ?", (after, PAGE), _Hash)
        for h in hashes:
            sink.stored_hash(h.hash_index, bytes(h.hash))
        if len(hashes) < PAGE:
            break
        after = hashes[-1].hash_index
    after = -1
    while True:
        messages = yield from Query("SELECT sequence, message_id, fingerprint, receipt, leaf_index FROM messages"
                                    " WHERE sequence > ? UNION ALL SELECT sequence, message_id, fingerprint, receipt,"
                                    " leaf_index FROM index_messages WHERE sequence > ? ORDER BY sequence LIMIT ?",
                                    (after, after, PAGE), _MessageRow)
        for m in messages:
            sink.message(m.sequence, m.message_id, bytes(m.fingerprint), bytes(m.receipt), m.leaf_index)
        if len(messages) < PAGE:
            break
        after = messages[-1].sequence
    last = ""
    while True:
        cases = yield from Query("SELECT transfer_id, state, closed FROM cases WHERE transfer_id > ?"
                                 " ORDER BY transfer_id LIMIT ?", (last, PAGE), _CaseRow)
        for c in cases:
            sink.case(c.transfer_id, c.state, bool(c.closed))
        if len(cases) < PAGE:
            break
        last = cases[-1].transfer_id
    last = ""
    while True:
        funds = yield from Query("SELECT transfer_id, message_id, amount_fen, status FROM fund_movements"
                                 " WHERE transfer_id > ? ORDER BY transfer_id LIMIT ?", (last, PAGE), _FundRow)
        for f in funds:
            sink.fund(f.transfer_id, f.message_id, f.amount_fen, f.status)
        if len(funds) < PAGE:
            break
        last = funds[-1].transfer_id
    for t in (yield from Query("SELECT outbound_province, inbound_province, status, amount_fen, transfers"
                               " FROM fund_totals ORDER BY outbound_province, inbound_province, status", (),
                               _TotalRow)):
        sink.total(t.outbound_province, t.inbound_province, t.status, t.amount_fen, t.transfers)
