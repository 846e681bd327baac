"""The storage port: everything the gateway keeps, behind one small interface (`Store`) and the
records that cross it.

Implementations: `gateway.store.sqlite` (embedded default, one process) and
`gateway.store.postgres` (shared by several replicas); both run the operations of
`gateway.store.writes`, `.views` and `.reports` through `gateway.store.base`. Every
implementation passes the contract suite in tests/store/test_contract.py. Guarantees an
implementation must give:

- `accept` is atomic: the message, its case update, its delivery and its receipt are committed
  together or not at all; the receipt exists only once all of it is durable.
- Idempotency is decided inside that transaction: a known message id with the same fingerprint
  returns the stored receipt (`replayed=True`) and writes nothing; with another fingerprint it
  raises IdempotencyConflict.
- The case decision (`decide`) runs inside the transaction, on the case as committed, so two
  racing messages for one case are decided one after the other. It runs once per attempt at the
  transaction, and a store may attempt a transaction again (after a rollback it did not cause),
  so `decide` must be pure. The only question it may ask the `CaseIndex` is the one its message
  names in `IncomingMessage.opens_case_of`, answered before it runs; any other raises
  UnaskedQuestion. At most one open case per person and outbound agency, and at most one fund
  movement per case, are also enforced by the schema: that refusal is the last word when two
  replicas decide at once. A decision that says the message repeats an earlier one of the case
  (`Decision.replay_of`: the same review decision, the same closure) writes nothing and answers
  with that message's receipt.
- A stage's deadline is counted on the calendar version the store holds (`calendar`); a stage
  counted on an older one, or on a year only the fallback knew, is counted again by
  `retime_stages`, and a finished one judged again, so every replica's deadlines converge.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple, Protocol

from gateway.core.automatic import Enrollment, SuspendedRecord
from gateway.core.case import Case, CaseIndex, Decision
from gateway.core.messages import MessageKind
from gateway.core.personkeys import PersonKey
from gateway.core.sla import Owner, Stage, Timeliness
from gateway.core.workdays import YearNotice


class StoredRegistry(NamedTuple):
    """One published registry document: its version, the SHA-256 of its bytes, the bytes."""

    version: int
    digest: bytes
    document: bytes


@dataclass(frozen=True)
class IncomingMessage:
    """A verified, validated message ready to be stored."""

    message_id: str
    transfer_id: str
    kind: MessageKind
    sender: str
    receiver: str
    deliveries: tuple[tuple[str, str], ...]  # (platform, agency) pairs that receive it
    created_at: dt.datetime
    fingerprint: bytes     # SHA-256 of PAE(payload_type, payload): the idempotency fingerprint
    signed_message: bytes  # the SignedMessage exactly as received
    ack_status: int = 0    # for acknowledgements, their status
    fund_amount_fen: int = 0  # for fund transfers, the amount moved
    created_by_gateway: bool = False  # a review decision: the gateway wrote and signed it
    # (the person's keys under every secret, outbound agency) of the case this message opens if
    # its transfer has none yet: the one question its decision asks the CaseIndex
    # (gateway.core.case.index_question).
    opens_case_of: tuple[tuple[PersonKey, ...], str] | None = None


@dataclass(frozen=True)
class StageRecord:
    """A time-limited stage of a case (see gateway.core.sla)."""

    stage: Stage
    started_at: dt.datetime
    deadline: dt.datetime
    finished_at: dt.datetime | None = None
    owner: Owner | None = None  # None: the stage's usual owner (gateway.core.sla.STAGES)
    provisional: bool = False   # counted on a year the calendar did not know yet


@dataclass(frozen=True)
class AcceptOutcome:
    receipt: bytes   # serialized Receipt
    sequence: int
    replayed: bool   # True: this message was accepted before; nothing was written now
    outbound: str = ""  # the case's agencies (empty on a replay)
    inbound: str = ""
    finished_stages: tuple[StageRecord, ...] = ()  # stages this message finished
    opened: bool = False  # this message opened its case
    channel: int = 0      # the case's channel (TransferRequest.Channel; 0: opened by the outbound notice)
    # An automatic case this message completed: when its enrollment was accepted (the clock of
    # "enrollment to completion").
    enrolled_at: dt.datetime | None = None


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery leased to a subscriber: attempt `attempt` is its lease (the store's own token for
    it: a later lease of the same delivery has a higher attempt)."""

    message_id: str
    receiver: str     # the agency it is addressed to (a message may go to two agencies of one platform)
    transfer_id: str
    signed_message: bytes
    receipt: bytes
    attempt: int

    @property
    def size(self) -> int:
        """Bytes of what goes on the stream: the signed message and its receipt (the Delivery
        message adds a few bytes of framing)."""
        return len(self.signed_message) + len(self.receipt)


class DeadReason(StrEnum):
    """Why a delivery went to the dead-letter state (its `reason`, in the store and in Admin)."""

    UNACKNOWLEDGED = "UNACKNOWLEDGED"  # its leases expired unacknowledged `max_attempts` times
    STREAM_ENDED = "STREAM_ENDED"  # the receiver's stream ended each time it was the first unacknowledged
    TOO_LARGE = "TOO_LARGE"  # larger than the gateway may send: never put on a stream


@dataclass(frozen=True)
class DeadLettered:
    """A delivery a claim or the end of a lease put in the dead-letter state."""

    message_id: str
    receiver: str
    transfer_id: str
    attempts: int
    reason: DeadReason


@dataclass(frozen=True)
class Claim:
    """What one claim leased, and what it gave up on instead (expired after its last attempt)."""

    deliveries: list[ClaimedDelivery]
    dead_lettered: list[DeadLettered]


@dataclass(frozen=True)
class LeaseEnd:
    """What becomes of one lease that ends without an acknowledgement (`attempt` names the lease:
    a delivery leased again since is left alone)."""

    message_id: str
    receiver: str
    attempt: int
    counted: bool  # False: the attempt did not happen (never sent, or not the stream's fault): undone
    dead: DeadReason | None = None  # given up on: the dead-letter state, with this reason


@dataclass(frozen=True)
class DeadLetter:
    """A delivery in the dead-letter state, as operators list it."""

    platform: str
    receiver: str
    message_id: str
    transfer_id: str
    kind: MessageKind
    sequence: int
    attempts: int
    reason: str
    dead_at: dt.datetime | None  # None: dead-lettered before the store kept when
    size_bytes: int  # the signed message's


@dataclass(frozen=True)
class DeadLetterQuery:
    """Filters of `dead_letters`; the letters come in log order."""

    platform: str | None = None  # one receiving platform; None: every one
    after: tuple[int, str] | None = None  # (sequence, receiver) of the previous page's last letter
    limit: int = 100


@dataclass(frozen=True)
class DeadLetterCount:
    platform: str
    kind: MessageKind
    reason: str
    count: int


@dataclass(frozen=True)
class MessageView:
    """One message of a case with its delivery progress (for Tracking)."""

    message_id: str
    kind: MessageKind
    sender: str
    receiver: str
    sequence: int
    created_at: dt.datetime
    accepted_at: dt.datetime
    ack_status: int
    delivery_state: int
    delivery_attempts: int
    delivered_at: dt.datetime | None
    acknowledged_at: dt.datetime | None


@dataclass(frozen=True)
class CaseView:
    case: Case
    opened_at: dt.datetime
    updated_at: dt.datetime
    messages: Sequence[MessageView]
    stages: Sequence[StageRecord] = ()  # in the order they started


@dataclass(frozen=True)
class CaseQuery:
    """Filters of `list_cases`; every one given must hold. Cases come oldest opened first."""

    agencies: frozenset[str] | None = None   # cases with one of these agencies as a side; None: all
    states: frozenset[int] = frozenset()     # any of these states; empty: all
    deadline_between: tuple[dt.datetime, dt.datetime] | None = None  # an unfinished stage's deadline in (a, b]
    outbound_province: str = ""
    inbound_province: str = ""
    opened_from: dt.datetime | None = None
    opened_before: dt.datetime | None = None
    after: tuple[dt.datetime, str] | None = None  # (opened_at, transfer_id) of the previous page's last case
    owner: Owner | None = None  # with deadline_between: only stages this side owns
    limit: int = 100


@dataclass(frozen=True)
class StageCount:
    """Unfinished stages of one kind and province pair, against their deadlines at a reading."""

    stage: Stage
    outbound_province: str
    inbound_province: str
    open: int
    overdue: int   # deadline passed
    due_soon: int  # deadline not passed, before the due-soon limit
    owner: Owner = Owner.BOTH
    owner_province: str = ""  # the province answerable for it ("" for the whole case)


@dataclass(frozen=True)
class StageTotal:
    """Finished stages of one kind, owner and province pair with one result, as judged now."""

    stage: Stage
    owner: Owner
    owner_province: str
    outbound_province: str
    inbound_province: str
    result: Timeliness  # ON_TIME or LATE
    stages: int


@dataclass(frozen=True)
class Escalation:
    """Transfer requests of one province pair the outbound side left unanswered past its limit."""

    outbound_province: str
    inbound_province: str
    requests: int


@dataclass(frozen=True)
class StoredCalendar:
    """The notices every replica counts deadlines on, and their version (0: none loaded yet)."""

    version: int
    notices: dict[int, YearNotice]


@dataclass(frozen=True)
class Retimed:
    """What counting stages again on a newer calendar changed."""

    retimed: int      # stages whose deadline was counted again
    rejudged: int     # of them, finished stages judged again
    now_on_time: int  # judged late before, on time now
    now_late: int     # judged on time before, late now

    def plus(self, other: Retimed) -> Retimed:
        return Retimed(self.retimed + other.retimed, self.rejudged + other.rejudged,
                       self.now_on_time + other.now_on_time, self.now_late + other.now_late)


@dataclass(frozen=True)
class HeldQuery:
    """Filters of `held_transfers`; they come oldest first (held since, then transfer id)."""

    provinces: frozenset[str] = frozenset()  # outbound provinces (2 digits); empty: every one
    after: tuple[dt.datetime, str] | None = None  # (held_since, transfer_id) of the previous page's last
    limit: int = 100


@dataclass(frozen=True)
class HeldTransfer:
    transfer_id: str
    message_id: str
    outbound: str
    inbound: str
    amount_fen: int
    held_since: dt.datetime


@dataclass(frozen=True)
class SettlementLine:
    """Fund transfers of one province pair accepted in a period, by their status now (fen)."""

    outbound_province: str
    inbound_province: str
    sent_fen: int
    credited_fen: int
    held_fen: int
    rejected_fen: int   # rejected in review or by the inbound side, wherever the money is now
    in_flight_fen: int  # away from the outbound side, not credited: sent, or rejected and not yet back
    transfers: int
    returned_fen: int = 0         # back with the outbound side: returned, or stopped in review
    awaiting_return_fen: int = 0  # rejected by the inbound side, not yet confirmed back


@dataclass(frozen=True)
class DeliveryStats:
    """Per receiving platform: what waits, since when, and what was given up."""

    platform: str
    pending: int
    in_flight: int
    dead_letters: int
    oldest_undelivered_at: dt.datetime | None


class IssuedReceipt(NamedTuple):
    """A receipt as `MakeReceipt` signs it: the serialized Receipt, and its serialized ReceiptBody
    exactly as signed (what the transparency log keeps of it)."""

    receipt: bytes
    body: bytes


@dataclass(frozen=True)
class CheckpointRecord:
    """A signed checkpoint the store keeps (C2SP tlog-checkpoint, `mitransfer.protocol.checkpoint`)."""

    tree_size: int
    root_hash: bytes
    note: bytes  # the signed note
    published_at: dt.datetime


class LoggedMessage(NamedTuple):
    """Where a message is in the transparency log, and the sides of its case."""

    transfer_id: str
    leaf_index: int
    outbound: str
    inbound: str


@dataclass(frozen=True)
class InclusionRecord:
    """The proof that the tree of `checkpoint` holds the entry at `leaf_index`."""

    leaf_index: int
    entry: bytes               # the serialized LogEntry
    hashes: tuple[bytes, ...]  # audit path, the leaf's sibling first
    checkpoint: CheckpointRecord


@dataclass(frozen=True)
class ConsistencyRecord:
    """The proof that the tree of `checkpoint` extends the tree of `first` leaves."""

    first: int
    hashes: tuple[bytes, ...]
    checkpoint: CheckpointRecord


class AuditSink(Protocol):
    """What `transparency.audit` hands over, in this order, from one consistent snapshot: the log's
    head, its checkpoints (by size), its entries and stored hashes (by index), then the mutable
    rows the log must agree with (messages by sequence, cases, fund movements, fund totals)."""

    def head(self, sequence: int, leaves: int, tree_size: int) -> None: ...

    def checkpoint(self, record: CheckpointRecord) -> None: ...

    def entry(self, leaf_index: int, entry: bytes) -> None: ...

    def stored_hash(self, index: int, value: bytes) -> None: ...

    def message(self, sequence: int, message_id: str, fingerprint: bytes, receipt: bytes,
                leaf_index: int | None) -> None: ...

    def case(self, transfer_id: str, state: int, closed: bool) -> None: ...

    def fund(self, transfer_id: str, message_id: str, amount_fen: int, status: str) -> None: ...

    def total(self, outbound_province: str, inbound_province: str, status: str, amount_fen: int,
              transfers: int) -> None: ...


Decide = Callable[[Case | None, CaseIndex], Decision]
WakeCallback = Callable[[str | None, str | None], None]
MakeReceipt = Callable[[int, int, dt.datetime], IssuedReceipt]
"""(sequence, leaf index, acceptance time) → the signed receipt; called inside the accept's transaction."""
SignCheckpoint = Callable[[int, bytes], bytes]
"""(tree size, root hash) → the signed checkpoint note."""


# -- the suspended-record index (gateway.store.index) ------------------------------------------

@dataclass(frozen=True)
class RecordRegistration:
    """A suspended record to add: `transfer_id` is its id (and its case's, if it opens one)."""

    transfer_id: str
    agency: str
    insurance_type: int
    suspension_date: str  # ISO date
    keys: tuple[PersonKey, ...]  # the person's keys, the current secret's first


@dataclass(frozen=True)
class RecordWithdrawal:
    transfer_id: str
    agency: str


@dataclass(frozen=True)
class EnrollmentReport:
    agency: str
    insurance_type: int
    enrollment_date: str  # ISO date
    chosen: frozenset[str]  # outbound agencies the person chose; empty: any
    keys: tuple[PersonKey, ...]
    retention: dt.timedelta  # how long it waits for records


@dataclass(frozen=True)
class OptOut:
    enrollment_message_id: str
    agency: str


IndexFacts = RecordRegistration | RecordWithdrawal | EnrollmentReport | OptOut


@dataclass(frozen=True)
class IndexMessage:
    """A verified, validated message to the index, ready to be stored."""

    message_id: str
    kind: MessageKind
    sender: str
    transfer_id: str  # the record's id, or empty
    created_at: dt.datetime
    fingerprint: bytes     # SHA-256 of PAE(payload_type, payload)
    signed_message: bytes  # the SignedMessage exactly as received
    facts: IndexFacts


@dataclass(frozen=True)
class Opening:
    """A suspended record and an enrollment that open a case: what the gateway's request needs."""

    record: SuspendedRecord
    record_message_id: str
    enrollment: Enrollment
    enrollment_signed: bytes  # the signed Enrollment as received (the person is in it)
    enrolled_at: dt.datetime  # when the gateway accepted the enrollment


@dataclass(frozen=True)
class AuthoredOpening:
    """The gateway's AutomaticTransferRequest for an opening, signed and ready to be accepted."""

    message: IncomingMessage  # its opens_case_of names the person's keys and the outbound agency
    decide: Decide
    make_receipt: MakeReceipt


OpenCase = Callable[[Opening, dt.datetime], AuthoredOpening]
MakeIndexReceipt = Callable[[int, int, dt.datetime, Sequence[str], dt.datetime | None], IssuedReceipt]
"""(sequence, leaf index, acceptance time, transfer ids of the cases opened, waiting until) → the
signed receipt; called inside the transaction."""


@dataclass(frozen=True)
class OpenedCase:
    transfer_id: str
    request: IncomingMessage  # the gateway's request that opened it (its deliveries: both sides)
    outcome: AcceptOutcome


@dataclass(frozen=True)
class IndexOutcome:
    receipt: bytes
    sequence: int
    replayed: bool
    opened: tuple[OpenedCase, ...] = field(default=())


@dataclass(frozen=True)
class IndexCount:
    """Entries waiting in the index, and open cases, by kind and by the secret they are keyed under."""

    kind: str  # "record", "enrollment" or "case"
    key_id: str
    entries: int


@dataclass(frozen=True)
class StaleEntry:
    """A waiting entry, or an open case, keyed under another secret than the current one (or, for
    a case from before cases were keyed, under none), with the signed message it came in (the
    case's opening message) to key it again."""

    kind: str  # "record", "enrollment" or "case"
    entry_id: str  # the record's or the case's transfer id, or the enrollment's message id
    key_id: str
    person_key: bytes
    signed_message: bytes




class UnaskedQuestion(LookupError):
    """A decision asked the case index about a case its message did not name in
    `IncomingMessage.opens_case_of`: a defect of the caller (INTERNAL), never a guess."""


class Store(Protocol):
    async def open(self) -> None:
        """Create or migrate the schema and start serving."""

    async def close(self) -> None:
        """Finish what was queued, then release the database."""

    def on_wake(self, callback: WakeCallback) -> None:
        """Call `callback(platform, None)` when another process commits work for that platform,
        `callback(platform, message_id)` when another process records its acknowledgement of
        `message_id`, and `callback(None, None)` when such news may have been missed (every
        platform may have work)."""

    async def accept(self, message: IncomingMessage, decide: Decide, make_receipt: MakeReceipt) -> AcceptOutcome:
        """Store a message with its case update and delivery; see the module docstring.

        Raises: IdempotencyConflict; any CallerError that `decide` raises (RuleViolation
        CASE_ALREADY_OPEN also when the schema refuses a second open case); UnaskedQuestion;
        StoreUnavailable.
        """

    async def claim_deliveries(
        self, platform: str, agencies: frozenset[str] | None, *, limit: int, lease: dt.timedelta,
        max_attempts: int, now: dt.datetime,
    ) -> Claim:
        """Lease up to `limit` deliveries for `platform` (only the oldest unacknowledged one of each
        case, a dead letter included: a case is delivered in order). A delivery whose lease expired
        after `max_attempts` attempts goes to the dead-letter state instead (UNACKNOWLEDGED)."""

    async def ack_delivery(self, platform: str, message_id: str, now: dt.datetime) -> None:
        """Mark a delivery acknowledged (idempotent; a dead letter too). Raises NotFound if
        `platform` is not its receiver."""

    async def end_leases(self, platform: str, ends: Sequence[LeaseEnd], now: dt.datetime) -> None:
        """End leases without an acknowledgement, each as its `LeaseEnd` says: visible again at
        `now`, its attempt undone unless counted, or dead-lettered. A lease the delivery no longer
        is in (acknowledged, or leased again) is left alone."""

    async def acknowledged(self, platform: str, message_ids: Sequence[str]) -> set[str]:
        """Which of `message_ids` `platform` has acknowledged."""

    async def lease_expiries(self, platforms: Sequence[str]) -> dict[str, dt.datetime]:
        """For each of `platforms` with a delivery in flight, when its earliest lease ends."""

    async def dead_letters(self, query: DeadLetterQuery) -> list[DeadLetter]:
        """A page of dead letters, in log order."""

    async def dead_letter_counts(self) -> list[DeadLetterCount]:
        """Dead letters per receiving platform, kind and reason."""

    async def redrive(self, platform: str, message_ids: Sequence[str] | None, now: dt.datetime) -> int:
        """Put `platform`'s dead letters (those of `message_ids`, or every one) back in the queue
        with their attempts at zero; how many."""

    async def get_case(self, transfer_id: str) -> CaseView | None:
        """The case with all its messages, or None."""

    async def receipt_of(self, message_id: str) -> bytes | None:
        """The stored receipt of a message, or None."""

    async def probe_write(self, replica: str, now: dt.datetime) -> None:
        """Commit one small write (`replica`'s row of the write probes): the store can write now.
        Raises StoreUnavailable when it cannot (gateway.store.probe)."""

    async def latest_registry(self) -> StoredRegistry | None:
        """The highest registry version published, or None."""

    async def latest_registry_version(self) -> int:
        """The highest registry version published (0: none)."""

    async def publish_registry(self, document: StoredRegistry) -> StoredRegistry:
        """Store a registry version unless stored already; what the store holds under that version."""

    async def held_transfers(self, query: HeldQuery) -> list[HeldTransfer]:
        """Fund transfers held for review, oldest first, a page at a time."""

    async def settlement(self, start: dt.datetime, end: dt.datetime) -> list[SettlementLine]:
        """Fund transfers accepted in [start, end), per province pair, by their status now."""

    async def fund_totals(self) -> list[SettlementLine]:
        """Every fund transfer ever accepted, per province pair, by its status now: totals kept by
        each accept, so reading them costs the same however many there are."""

    async def delivery_stats(self) -> list[DeliveryStats]:
        """Backlog figures per receiving platform that has any delivery."""

    async def list_cases(self, query: CaseQuery) -> list[CaseView]:
        """A page of cases matching `query`, with their stages but without their messages."""

    async def stage_counts(self, now: dt.datetime, due_soon_before: dt.datetime) -> list[StageCount]:
        """Unfinished stages per stage, owner and province pair: open, overdue at `now`, due soon."""

    async def stage_totals(self) -> list[StageTotal]:
        """Every finished stage, per stage, owner, province pair and result as judged now: totals
        kept by each accept and each judgement counted again."""

    async def escalations(self, now: dt.datetime) -> list[Escalation]:
        """Transfer requests still unanswered after the outbound side's limit, per province pair."""

    async def calendar(self) -> StoredCalendar:
        """The notices every replica counts on, with their version."""

    async def load_calendar(self, notices: dict[int, YearNotice], now: dt.datetime) -> int:
        """Keep `notices` in place of what the store held for their years; the new version."""

    async def retime_stages(self, batch: int = 500) -> Retimed:
        """Count again, on the calendar of the store's `Sla`, every stage counted on an older
        version that is unfinished or was counted on a year the calendar did not know (a finished
        one is judged again, and the stage totals follow); in transactions of `batch` stages."""

    async def publish_checkpoint(self, sign: SignCheckpoint) -> CheckpointRecord | None:
        """Extend the stored tree over the leaves logged since it was last extended, then, if it
        grew past the last checkpoint, sign and keep a checkpoint of it. None if it did not grow.
        Replicas may call it at once: one signs, the others find nothing to do."""

    async def latest_checkpoint(self) -> CheckpointRecord | None:
        """The checkpoint of the largest tree signed so far, or None before the first."""

    async def log_leaves(self) -> int:
        """How many entries the transparency log holds, checkpointed or not."""

    def log_cpu_seconds(self) -> float:
        """CPU time this process has spent on the log's upkeep so far (entries, tree, checkpoints)."""

    async def leaf_of(self, message_id: str) -> LoggedMessage | None:
        """Where an accepted message is in the log (and its case's sides), or None."""

    async def inclusion_proof(self, message_id: str, tree_size: int) -> InclusionRecord:
        """The proof that the checkpoint of `tree_size` (0: the latest) holds the message's entry.

        Raises NotFound (MESSAGE_NOT_FOUND, CHECKPOINT_NOT_FOUND), RuleViolation
        (LEAF_NOT_IN_TREE: that checkpoint is older than the message)."""

    async def consistency_proof(self, first: int, second: int) -> ConsistencyRecord:
        """The proof that the checkpoint of `second` (0: the latest) extends the tree of `first` leaves.

        Raises NotFound (CHECKPOINT_NOT_FOUND), RuleViolation (TREE_SIZE_INVALID: first > second)."""
    async def submit_index(self, message: IndexMessage, open_case: OpenCase,
                           make_receipt: MakeIndexReceipt) -> IndexOutcome:
        """Store a message to the suspended-record index with what it does, atomically: a record or
        an enrollment, the cases it opens with its match (one per record, ever, however the two race),
        their requests, stages and deliveries. Idempotent by message id like `accept`.

        Raises: IdempotencyConflict; NotFound (RECORD_NOT_FOUND, ENROLLMENT_NOT_FOUND); RuleViolation
        (TRANSFER_ID_IN_USE, RECORD_ALREADY_REGISTERED, RECORD_NOT_WAITING, ENROLLMENT_NOT_WAITING,
        CASE_ALREADY_OPEN when another replica opened the person's case at that agency meanwhile);
        StoreUnavailable.
        """

    async def lapse_enrollments(self, now: dt.datetime, limit: int) -> int:
        """Up to `limit` enrollments past their waiting period stop waiting (their keys are dropped)."""

    async def stale_index_entries(self, current_key_id: str, limit: int, *, unkeyed_only: bool = False
                                  ) -> list[StaleEntry]:
        """Waiting index entries and open cases keyed under another secret than the current one
        (`unkeyed_only`: only the open cases from before cases were keyed)."""

    async def rekey_index_entry(self, entry: StaleEntry, new: PersonKey) -> bool:
        """Key `entry` under `new` if it is still as read; whether it was."""

    async def index_counts(self) -> list[IndexCount]:
        """Entries waiting in the index, and open cases, by kind and key id."""
