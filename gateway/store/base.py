"""What both drivers share: the `Store` port's operations, written once.

Each method names the operation it runs and how: `write` (a transaction that may change
anything; SQLite runs it on its writer thread in a group commit, PostgreSQL on a pooled
connection, retried after a deadlock) or `read` (a consistent snapshot that changes nothing;
SQLite runs it on its reader connection, beside the writer). A driver supplies those two, and its
lifecycle (`open`, `close`, `on_wake`); everything else is here. `read` and `write` take any
operation of steps; the rest of the gateway sees only the `Store` port.

Adding an operation to the port: write its steps (see `gateway.store.steps`), add its method to
`gateway.store.port.Store`, and add it here as one line: `return await self.write(lambda: …)`.
Both engines then run it, and the contract suite (tests/store/test_contract.py) should say what
it promises.
"""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TypeAlias, TypeVar

from gateway.core.personkeys import PersonKey
from gateway.core.sla import Sla
from gateway.core.timestamps import micros
from gateway.core.workdays import YearNotice
from gateway.store import calendar, deliveries, index, probe, registry_documents, reports, transparency, views, writes
from gateway.store.port import (
    AcceptOutcome,
    CaseQuery,
    CaseView,
    CheckpointRecord,
    Claim,
    ConsistencyRecord,
    DeadLetter,
    DeadLetterCount,
    DeadLetterQuery,
    Decide,
    DeliveryStats,
    Escalation,
    HeldQuery,
    HeldTransfer,
    InclusionRecord,
    IncomingMessage,
    IndexCount,
    IndexMessage,
    IndexOutcome,
    LeaseEnd,
    LoggedMessage,
    MakeIndexReceipt,
    MakeReceipt,
    OpenCase,
    Retimed,
    SettlementLine,
    SignCheckpoint,
    StageCount,
    StageTotal,
    StaleEntry,
    StoredCalendar,
    StoredRegistry,
    WakeCallback,
)
from gateway.store.steps import Keys, Steps

T = TypeVar("T")
INTEGRATE_BATCH = 2_000  # leaves hashed into the stored tree per transaction
# An operation not yet started: a driver makes a fresh one for every attempt at its transaction.
Operation: TypeAlias = Callable[[], Steps[T]]


class SQLStore(ABC):
    """The `Store` port over the store's SQL operations; a driver makes it run."""

    def __init__(self, clock: Callable[[], dt.datetime], sla: Sla) -> None:
        self._clock = clock  # the acceptance time of each message, read under its case's lock
        self._sla = sla      # the deadlines of the stages each accept starts
        self._log_meter = transparency.LogMeter()

    @abstractmethod
    async def open(self) -> None:
        """Migrate the schema (`gateway.store.migrations.migrate`) and start serving. Raises StoreUnavailable."""

    @abstractmethod
    async def close(self) -> None:
        """Finish what was queued, then release the database."""

    @abstractmethod
    def on_wake(self, callback: WakeCallback) -> None:
        """See `gateway.store.port.Store.on_wake`."""

    @abstractmethod
    async def write(self, operation: Operation[T], *, keys: Keys | None = None) -> T:
        """Run `operation` in a transaction and commit it, perhaps with others that share none of
        its `keys` (None: with no other), each as if alone. Raises what it raises, the schema's
        refusals as `decision.constraint_violation`, StoreUnavailable."""

    @abstractmethod
    async def read(self, operation: Operation[T]) -> T:
        """Run `operation` on one consistent snapshot. Raises what it raises, StoreUnavailable."""

    async def accept(self, message: IncomingMessage, decide: Decide, make_receipt: MakeReceipt) -> AcceptOutcome:
        return await self.write(lambda: writes.accept(message, decide, make_receipt, self._clock, self._sla,
                                                      self._log_meter), keys=writes.accept_keys(message))

    async def claim_deliveries(
        self, platform: str, agencies: frozenset[str] | None, *, limit: int, lease: dt.timedelta,
        max_attempts: int, now: dt.datetime,
    ) -> Claim:
        return await self.write(lambda: deliveries.claim_deliveries(
            platform, agencies, limit=limit, lease=lease, max_attempts=max_attempts, now=now),
            keys=(f"claims:{platform}",))  # two claims in one transaction would lease the same rows

    async def ack_delivery(self, platform: str, message_id: str, now: dt.datetime) -> None:
        await self.write(lambda: deliveries.ack_delivery(platform, message_id, now), keys=())  # one row, once

    async def end_leases(self, platform: str, ends: Sequence[LeaseEnd], now: dt.datetime) -> None:
        await self.write(lambda: deliveries.end_leases(platform, ends, now), keys=(f"claims:{platform}",))

    async def acknowledged(self, platform: str, message_ids: Sequence[str]) -> set[str]:
        return await self.read(lambda: deliveries.acknowledged(platform, message_ids))

    async def lease_expiries(self, platforms: Sequence[str]) -> dict[str, dt.datetime]:
        return await self.read(lambda: deliveries.lease_expiries(platforms))

    async def dead_letters(self, query: DeadLetterQuery) -> list[DeadLetter]:
        return await self.read(lambda: deliveries.dead_letters(query))

    async def dead_letter_counts(self) -> list[DeadLetterCount]:
        return await self.read(deliveries.dead_letter_counts)

    async def redrive(self, platform: str, message_ids: Sequence[str] | None, now: dt.datetime) -> int:
        return await self.write(lambda: deliveries.redrive(platform, message_ids, now))

    async def get_case(self, transfer_id: str) -> CaseView | None:
        return await self.read(lambda: views.get_case(transfer_id))

    async def list_cases(self, query: CaseQuery) -> list[CaseView]:
        return await self.read(lambda: views.list_cases(query))

    async def probe_write(self, replica: str, now: dt.datetime) -> None:
        await self.write(lambda: probe.probe(replica, micros(now)))

    async def receipt_of(self, message_id: str) -> bytes | None:
        return await self.read(lambda: views.receipt_of(message_id))

    async def latest_registry(self) -> StoredRegistry | None:
        return await self.read(registry_documents.latest)

    async def latest_registry_version(self) -> int:
        return await self.read(registry_documents.latest_version)

    async def publish_registry(self, document: StoredRegistry) -> StoredRegistry:
        stored_at = int(self._clock().timestamp() * 1_000_000)
        return await self.write(lambda: registry_documents.publish(document, stored_at))

    async def held_transfers(self, query: HeldQuery) -> list[HeldTransfer]:
        return await self.read(lambda: reports.held_transfers(query))

    async def settlement(self, start: dt.datetime, end: dt.datetime) -> list[SettlementLine]:
        return await self.read(lambda: reports.settlement(start, end))

    async def fund_totals(self) -> list[SettlementLine]:
        return await self.read(reports.fund_totals)

    async def delivery_stats(self) -> list[DeliveryStats]:
        return await self.read(reports.delivery_stats)

    async def stage_counts(self, now: dt.datetime, due_soon_before: dt.datetime) -> list[StageCount]:
        return await self.read(lambda: reports.stage_counts(now, due_soon_before))

    async def stage_totals(self) -> list[StageTotal]:
        return await self.read(reports.stage_totals)

    async def escalations(self, now: dt.datetime) -> list[Escalation]:
        return await self.read(lambda: reports.escalations(now))

    async def calendar(self) -> StoredCalendar:
        return await self.read(calendar.read_calendar)

    async def load_calendar(self, notices: dict[int, YearNotice], now: dt.datetime) -> int:
        return await self.write(lambda: calendar.load_calendar(notices, now))

    async def retime_stages(self, batch: int = 500) -> Retimed:
        """Batches until one finds fewer stale stages than it may take: each its own transaction,
        so a large backlog never holds the writer (or a case's writers) for long."""
        total = Retimed(0, 0, 0, 0)
        while True:
            seen, done = await self.write(lambda: calendar.retime_batch(self._sla, batch))
            total = total.plus(done)
            if seen < batch:
                return total

    async def publish_checkpoint(self, sign: SignCheckpoint) -> CheckpointRecord | None:
        while True:  # the tree catches up a batch per transaction, then the checkpoint is signed
            size, leaves = await self.write(lambda: transparency.metered(
                transparency.integrate(INTEGRATE_BATCH), self._log_meter))
            if size >= leaves:
                break
        return await self.write(lambda: transparency.metered(
            transparency.publish(sign, self._clock(), INTEGRATE_BATCH), self._log_meter))

    def log_cpu_seconds(self) -> float:
        return self._log_meter.seconds

    async def latest_checkpoint(self) -> CheckpointRecord | None:
        return await self.read(transparency.latest_checkpoint)

    async def log_leaves(self) -> int:
        return await self.read(transparency.leaves)

    async def leaf_of(self, message_id: str) -> LoggedMessage | None:
        return await self.read(lambda: transparency.leaf_of(message_id))

    async def inclusion_proof(self, message_id: str, tree_size: int) -> InclusionRecord:
        return await self.read(lambda: transparency.inclusion_proof(message_id, tree_size))

    async def consistency_proof(self, first: int, second: int) -> ConsistencyRecord:
        return await self.read(lambda: transparency.consistency_proof(first, second))

    async def submit_index(self, message: IndexMessage, open_case: OpenCase,
                           make_receipt: MakeIndexReceipt) -> IndexOutcome:
        # Alone in its transaction (keys None): the cases it may open, and their requests, are known
        # only once it has matched, so no key could keep another write off them beforehand.
        return await self.write(lambda: index.submit(message, open_case, make_receipt, self._clock, self._sla),
                                keys=None)

    async def lapse_enrollments(self, now: dt.datetime, limit: int) -> int:
        return await self.write(lambda: index.lapse_enrollments(now, limit))

    async def stale_index_entries(self, current_key_id: str, limit: int, *, unkeyed_only: bool = False
                                  ) -> list[StaleEntry]:
        return await self.read(lambda: index.stale_entries(current_key_id, limit, unkeyed_only=unkeyed_only))

    async def rekey_index_entry(self, entry: StaleEntry, new: PersonKey) -> bool:
        return await self.write(lambda: index.rekey(entry, new))

    async def index_counts(self) -> list[IndexCount]:
        return await self.read(index.index_counts)
