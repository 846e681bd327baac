"""The log's audit: recompute the tree, the settlement ledger and the cases' states from the
transparency log's entries alone, check every signed checkpoint against them, and compare the
store's mutable rows with what the log says.

`LogAudit` takes what a store's `audit` streams (or an exported bundle: then there are no rows
and only the log and its checkpoints are checked) and collects `Finding`s, each naming the entry
(leaf index, message id) or the row, and what differs. Pure: no I/O; memory grows with the
number of messages (a few dozen bytes each) and the tree's stored hashes (32 bytes each).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from google.protobuf.message import DecodeError

from gateway.core.case import CLOSED_STATES
from gateway.core.sla import province
from gateway.core.timestamps import datetime_of
from mitransfer.protocol import checkpoint, entries, tlog
from mitransfer.protocol.errors import ProtocolError
from mitransfer.protocol.note import KeyLookup
from mitransfer.v1 import envelope_pb2, log_pb2, tracking_pb2

MAX_PER_KIND: Final = 20  # findings of one kind listed; the rest are counted


def _state(value: int) -> str:
    try:
        return tracking_pb2.CaseState.Name(value).removeprefix("CASE_STATE_")  # type: ignore[arg-type]
    except ValueError:
        return f"state {value}"


class SignedHead(Protocol):
    """A kept checkpoint, as a store or a bundle holds it."""

    @property
    def tree_size(self) -> int: ...

    @property
    def root_hash(self) -> bytes: ...

    @property
    def note(self) -> bytes: ...


@dataclass(frozen=True)
class Finding:
    """One disagreement: where (`subject`: an entry, a case, a fund movement, a checkpoint) and what."""

    kind: str     # a stable word: entry, sequence, hash, checkpoint, message, case, fund, totals, head
    subject: str  # "entry 41 (message 7f…)", "case T-1", "checkpoint of tree size 120"
    problem: str

    def line(self) -> str:
        return f"{self.subject}: {self.problem}"


@dataclass(slots=True)
class _Message:
    """A logged message, kept small (a million of them are held at once): digests, not bodies."""

    leaf: int
    message_id: str
    fingerprint: bytes
    receipt_digest: bytes  # SHA-256 of the receipt body as logged
    seen: bool = False


@dataclass(slots=True)
class _Movement:
    fund_message_id: str
    amount_fen: int
    status: str
    leaf: int
    message_id: str
    pair: tuple[str, str]
    seen: bool = False  # its row was found in the store


@dataclass(slots=True)
class _CaseState:
    state: int
    leaf: int
    message_id: str
    seen: bool = False  # its row was found in the store


@dataclass
class LedgerLine:
    """Fund movements of one province pair and status, as the log adds them up."""

    outbound_province: str
    inbound_province: str
    status: str
    amount_fen: int = 0
    transfers: int = 0


KeysAt = Callable[[dt.datetime | None], KeyLookup]
"""The gateway keys a checkpoint may be signed by, given the newest acceptance time in its tree
(the earliest it can have been signed; None for a tree without a dated message)."""


@dataclass
class LogAudit:
    """Feed it in the order `gateway.store.AuditSink` says, then call `finish()`."""

    origin: str
    keys_at: KeysAt
    with_rows: bool = True  # False for a bundle: only the log and its checkpoints are checked
    findings: list[Finding] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    _head: tuple[int, int, int] | None = None
    _checkpoints: list[SignedHead] = field(default_factory=list)
    _tree: tlog.CompactRange = field(default_factory=tlog.CompactRange)
    _hashes: list[bytes] = field(default_factory=list)
    _next: int = 0
    _last_sequence: int = 0
    _last_message: str | None = None
    _newest: dt.datetime | None = None
    _messages: dict[int, _Message] = field(default_factory=dict)
    _cases: dict[str, _CaseState] = field(default_factory=dict)
    _funds: dict[str, _Movement] = field(default_factory=dict)
    _totals: dict[tuple[str, str, str], tuple[int, int]] = field(default_factory=dict)
    _verified: int = 0
    _leaves_named: bool = False

    def _find(self, kind: str, subject: str, problem: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if self.counts[kind] <= MAX_PER_KIND:
            self.findings.append(Finding(kind, subject, problem))

    # --- the log ---------------------------------------------------------------------------

    def head(self, sequence: int, leaves: int, tree_size: int) -> None:
        self._head = (sequence, leaves, tree_size)

    def checkpoint(self, record: SignedHead) -> None:
        self._checkpoints.append(record)
        self._checkpoints.sort(key=lambda c: c.tree_size)

    def entry(self, leaf_index: int, data: bytes) -> None:
        if leaf_index != self._next:
            missing = f"{self._next}" if leaf_index == self._next + 1 else f"{self._next} to {leaf_index - 1}"
            self._find("entry", f"entry {missing}", "missing from the log (deleted, or the log was cut)"
                       if leaf_index > self._next else f"out of order (after entry {self._next - 1})")
        self._next = leaf_index + 1
        position = self._tree.size
        self._hashes += self._tree.append(tlog.leaf_hash(data))
        try:
            entry = entries.read_entry(data)
        except ProtocolError:
            self._find("entry", f"entry {leaf_index}", "is not a LogEntry")
            entry = log_pb2.LogEntry()
        which = entry.WhichOneof("entry")
        if which == "message":
            self._logged_message(leaf_index, entry.message)
        elif which == "fund_status":
            self._logged_fund(leaf_index, entry.fund_status)
        self._check_checkpoints(position + 1)

    def _logged_message(self, leaf: int, logged: log_pb2.LoggedMessage) -> None:
        try:
            body = envelope_pb2.ReceiptBody.FromString(logged.receipt_body)
        except DecodeError:
            self._find("entry", f"entry {leaf}", "its receipt body does not parse")
            return
        subject = f"entry {leaf} (message {body.message_id[:64]})"
        # Receipts from before the log existed name no leaf (0), and only those come first: once a
        # receipt named its leaf, every later one names its own.
        if body.leaf_index != leaf and (body.leaf_index != 0 or self._leaves_named):
            self._find("entry", subject, f"its receipt names leaf {body.leaf_index}: entries were moved")
        self._leaves_named = self._leaves_named or body.leaf_index != 0
        if body.sequence != self._last_sequence + 1:
            self._find("sequence", subject, f"sequence {body.sequence} follows {self._last_sequence}: "
                       + ("a message is missing from the log" if body.sequence > self._last_sequence + 1
                          else "messages are out of order"))
        self._last_sequence = max(self._last_sequence, body.sequence)
        self._last_message = body.message_id
        self._messages[body.sequence] = _Message(leaf, body.message_id, logged.fingerprint,
                                                 hashlib.sha256(logged.receipt_body).digest())
        if body.HasField("accepted_at"):
            accepted = datetime_of(body.accepted_at)
            self._newest = accepted if self._newest is None else max(self._newest, accepted)
        if logged.case_state:
            self._cases[body.transfer_id] = _CaseState(logged.case_state, leaf, body.message_id)

    def _logged_fund(self, leaf: int, change: log_pb2.FundStatusChange) -> None:
        subject = f"entry {leaf} (fund movement of case {change.transfer_id[:64]})"
        if change.message_id != self._last_message:
            self._find("entry", subject, f"made by message {change.message_id[:64]}, which is not the entry before it")
        status = entries.FUND_STATUS_NAMES.get(change.status)
        if status is None:
            self._find("entry", subject, f"unknown status {change.status}")
            return
        pair = (province(change.outbound), province(change.inbound))
        known = self._funds.get(change.transfer_id)
        if change.previous == log_pb2.FUND_STATUS_UNSPECIFIED:
            if known is not None:
                self._find("entry", subject, "creates a fund movement the case already has")
                self._add(known.pair, known.status, -known.amount_fen, -1)
            self._funds[change.transfer_id] = _Movement(change.fund_message_id, change.amount_fen, status, leaf,
                                                        change.message_id, pair)
            self._add(pair, status, change.amount_fen, 1)
            return
        previous = entries.FUND_STATUS_NAMES.get(change.previous, "?")
        if known is None:
            self._find("entry", subject, f"moves from {previous} a fund movement the log never created")
            self._funds[change.transfer_id] = known = _Movement(change.fund_message_id, change.amount_fen, previous,
                                                                leaf, change.message_id, pair)
            self._add(pair, previous, change.amount_fen, 1)
        elif known.status != previous:
            self._find("entry", subject, f"moves from {previous}, but the log left it {known.status}")
        self._add(known.pair, known.status, -known.amount_fen, -1)
        known.status, known.leaf, known.message_id = status, leaf, change.message_id
        self._add(known.pair, status, known.amount_fen, 1)

    def _add(self, pair: tuple[str, str], status: str, fen: int, transfers: int) -> None:
        key = (*pair, status)
        was = self._totals.get(key, (0, 0))
        self._totals[key] = (was[0] + fen, was[1] + transfers)

    def _check_checkpoints(self, size: int) -> None:
        for head in self._checkpoints:
            if head.tree_size == size:
                self._check_checkpoint(head, self._tree.root())

    def _check_checkpoint(self, head: SignedHead, root: bytes) -> None:
        subject = f"checkpoint of tree size {head.tree_size}"
        try:
            signed = checkpoint.open_checkpoint(head.note, self.origin, self.keys_at(self._newest))
        except ProtocolError as err:
            self._find("checkpoint", subject, f"its note does not verify with the registry's gateway keys ({err})")
            return
        if signed.size != head.tree_size or signed.root_hash != head.root_hash:
            self._find("checkpoint", subject, "the signed note says another tree than the stored columns")
        if signed.root_hash != root:
            self._find("checkpoint", subject, "the log's entries do not give the signed root: an entry up to leaf "
                       f"{head.tree_size - 1} was changed, removed or moved")
            return
        self._verified += 1

    def stored_hash(self, index: int, value: bytes) -> None:
        if index >= len(self._hashes):
            self._find("hash", f"stored hash {index}", "belongs to no entry in the log (entries were removed)")
        elif self._hashes[index] != value:
            level, n = tlog.split_stored_hash_index(index)
            where = f"entry {n}" if level == 0 else f"entries {n << level} to {((n + 1) << level) - 1}"
            self._find("hash", f"stored hash {index}", f"differs from the hash of {where} recomputed from the log")

    # --- the rows ----------------------------------------------------------------------------

    def message(self, sequence: int, message_id: str, fingerprint: bytes, receipt: bytes,
                leaf_index: int | None) -> None:
        logged = self._messages.get(sequence)
        subject = f"message {message_id[:64]} (sequence {sequence})"
        if logged is None:
            self._find("message", subject, "is not in the log")
            return
        logged.seen = True
        if logged.message_id != message_id:
            self._find("message", subject, f"the log's entry {logged.leaf} has message {logged.message_id[:64]}"
                       " at that sequence")
            return
        if logged.fingerprint != fingerprint:
            self._find("message", subject, f"its fingerprint differs from entry {logged.leaf}'s")
        try:
            body = envelope_pb2.Receipt.FromString(receipt).body
        except DecodeError:
            body = b""
        if hashlib.sha256(body).digest() != logged.receipt_digest:
            self._find("message", subject, f"its stored receipt differs from the one entry {logged.leaf} logged")
        if leaf_index is not None and leaf_index != logged.leaf:
            self._find("message", subject, f"points at leaf {leaf_index}; the log has it at entry {logged.leaf}")

    def case(self, transfer_id: str, state: int, closed: bool) -> None:
        logged = self._cases.get(transfer_id)
        if logged is not None:
            logged.seen = True
        if logged is None:
            self._find("case", f"case {transfer_id[:64]}", f"is {_state(state)} in the store, but no logged "
                       "message states where it stands")
            return
        where = f"entry {logged.leaf} (message {logged.message_id[:64]})"
        if state != logged.state:
            self._find("case", f"case {transfer_id[:64]}", f"the store says {_state(state)}, the log says "
                       f"{_state(logged.state)} ({where})")
        elif closed != (logged.state in CLOSED_STATES):
            self._find("case", f"case {transfer_id[:64]}", f"the store has it {'closed' if closed else 'open'}, but "
                       f"{_state(logged.state)} ({where}) is {'closed' if not closed else 'open'}")

    def fund(self, transfer_id: str, message_id: str, amount_fen: int, status: str) -> None:
        logged = self._funds.get(transfer_id)
        subject = f"fund movement of case {transfer_id[:64]}"
        if logged is not None:
            logged.seen = True
        if logged is None:
            self._find("fund", subject, f"{amount_fen} fen {status} in the store, never in the log")
            return
        where = f"entry {logged.leaf} (message {logged.message_id[:64]})"
        if amount_fen != logged.amount_fen:
            difference = amount_fen - logged.amount_fen
            self._find("fund", subject, f"amount {amount_fen} fen in the store, {logged.amount_fen} fen in the log "
                       f"({difference:+,} fen; {where})")
        if status != logged.status:
            self._find("fund", subject, f"status {status} in the store, {logged.status} in the log ({where})")
        if message_id != logged.fund_message_id:
            self._find("fund", subject, f"made by message {message_id[:64]} in the store, "
                       f"{logged.fund_message_id[:64]} in the log")

    def total(self, outbound_province: str, inbound_province: str, status: str, amount_fen: int,
              transfers: int) -> None:
        key = (outbound_province, inbound_province, status)
        logged = self._totals.pop(key, (0, 0))
        if (amount_fen, transfers) != logged:
            self._find("totals", f"fund totals {outbound_province}→{inbound_province} {status}",
                       f"{amount_fen} fen in {transfers} transfers in the store, {logged[0]} fen in "
                       f"{logged[1]} in the log")

    # --- the end -----------------------------------------------------------------------------

    def finish(self) -> list[Finding]:
        """The findings once everything was fed (empty: the store and its log agree)."""
        size = self._tree.size
        for head in self._checkpoints:
            if head.tree_size > size:
                self._find("checkpoint", f"checkpoint of tree size {head.tree_size}",
                           f"the log has only {size} entries: entries {size} to {head.tree_size - 1} are missing "
                           "(the log was cut)")
        if self._head is not None:
            sequence, leaves, tree_size = self._head
            if leaves != self._next:
                self._find("head", "the log's head", f"says {leaves} entries, the log has {self._next}")
            if self.with_rows and sequence != self._last_sequence:
                self._find("head", "the log's head", f"says sequence {sequence}, the last logged message has "
                           f"{self._last_sequence}")
            if tree_size > self._next:
                self._find("head", "the stored tree", f"covers {tree_size} entries, the log has {self._next}")
        if self.with_rows:
            for message in self._messages.values():
                if not message.seen:
                    self._find("message", f"entry {message.leaf} (message {message.message_id[:64]})",
                               "the store has no such message (deleted)")
            for transfer_id, logged in self._cases.items():
                if not logged.seen:
                    self._find("case", f"case {transfer_id[:64]}", f"the store has no such case (entry {logged.leaf})")
            for transfer_id, movement in self._funds.items():
                if not movement.seen:
                    self._find("fund", f"fund movement of case {transfer_id[:64]}",
                               f"the store has no such movement (entry {movement.leaf})")
            for (out_p, in_p, status), (fen, count) in self._totals.items():
                if fen or count:
                    self._find("totals", f"fund totals {out_p}→{in_p} {status}",
                               f"missing from the store; the log has {fen} fen in {count} transfers")
        return self.findings

    def ledger(self) -> list[LedgerLine]:
        """The fund totals by province pair and status, as the log adds them up."""
        lines: dict[tuple[str, str, str], LedgerLine] = {}
        for movement in self._funds.values():
            key = (*movement.pair, movement.status)
            line = lines.setdefault(key, LedgerLine(*key))
            line.amount_fen += movement.amount_fen
            line.transfers += 1
        return [lines[k] for k in sorted(lines)]

    @property
    def entries(self) -> int:
        return self._tree.size

    @property
    def checkpoints_verified(self) -> int:
        return self._verified

    @property
    def checkpoints(self) -> int:
        return len(self._checkpoints)

    @property
    def root(self) -> bytes:
        return self._tree.root()
