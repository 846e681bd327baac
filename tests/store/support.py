"""What the store's tests share: both engines behind one factory, a settable clock, and messages
and decisions small enough to read in a test."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from gateway.core.case import Case, CaseIndex, Decision, MessageRef, Side
from gateway.core.personkeys import PersonKey, PersonKeys
from gateway.core.sla import Sla
from gateway.core.timestamps import timestamp_of
from gateway.core.workdays import WorkingCalendar
from gateway.store import IncomingMessage, IssuedReceipt, MakeReceipt, Store
from gateway.store.base import SQLStore
from gateway.store.postgres import PostgresConfig, PostgresStore
from gateway.store.sqlite import SQLiteConfig, SQLiteStore
from mitransfer.v1 import envelope_pb2, tracking_pb2
from tests.support import drop_schema, postgres_url

T0 = dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.UTC)
SLA = Sla(WorkingCalendar())
KEYS = PersonKeys({"test-1": bytes(range(32))}, "test-1")  # the person-key secrets of the stores' tests


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


# Another store on the same database each call (a restart, a second replica). Typed as the
# drivers' base so that engine-level tests can run operations of their own; the contract suite
# uses only the `Store` port of what it makes.
Factory = Callable[[], SQLStore]


@contextmanager
def sqlite_store(tmp: Path, clock: Callable[[], dt.datetime]) -> Iterator[Factory]:
    yield lambda: SQLiteStore(SQLiteConfig(path=tmp / "store.db"), clock, SLA)


@contextmanager
def postgres_store(tmp: Path, clock: Callable[[], dt.datetime]) -> Iterator[Factory]:
    """Stores in a schema of their own on the test server, dropped afterwards."""
    url, schema = postgres_url(), f"store_{uuid.uuid4().hex[:12]}"
    try:
        yield lambda: PostgresStore(PostgresConfig(url=url, schema=schema), clock, SLA)
    finally:
        drop_schema(url, schema)


ENGINES = {"sqlite": sqlite_store, "postgresql": postgres_store}


def incoming(transfer_id: str, *, kind: int = envelope_pb2.MESSAGE_KIND_OUTBOUND_NOTICE,
             body: bytes = b"notice", message_id: str | None = None, receiver_platform: str = "zhejiang",
             sender: str = "320100", receiver: str = "330100", amount: int = 0,
             opens_case_of: tuple[tuple[PersonKey, ...], str] | None = None) -> IncomingMessage:
    return IncomingMessage(
        message_id=message_id or str(uuid.uuid4()), transfer_id=transfer_id, kind=kind, sender=sender,
        receiver=receiver, deliveries=((receiver_platform, receiver),), created_at=T0,
        fingerprint=hashlib.sha256(body).digest(), signed_message=body, fund_amount_fen=amount,
        opens_case_of=opens_case_of,
    )


def named(person: bytes) -> tuple[PersonKey, ...]:
    """The keys of a person whose cases `opened(…, person=person)` opens: a question about them."""
    return (PersonKey(KEYS.current, person),)


def opened(m: IncomingMessage, person: bytes | None = None) -> Case:
    return Case(transfer_id=m.transfer_id, state=tracking_pb2.CASE_STATE_OUTBOUND_ACCEPTED, outbound=m.sender,
                inbound=m.receiver, applicant=m.sender, insurance_type=310,
                person_key=person or m.transfer_id.encode(), key_id=KEYS.current, suspension_date="2026-11-01",
                messages={m.message_id: MessageRef(m.kind, Side.OUTBOUND)})


def same(case: Case | None, _index: CaseIndex) -> Decision:
    assert case is not None
    return Decision(case)


def opening(m: IncomingMessage) -> Callable[[Case | None, CaseIndex], Decision]:
    return lambda case, _index: Decision(case or opened(m))


def receipt_for(m: IncomingMessage) -> MakeReceipt:
    """An unsigned receipt of `m` (the store keeps what it is given; signing is the service's)."""

    def make(sequence: int, leaf_index: int, at: dt.datetime) -> IssuedReceipt:
        body = envelope_pb2.ReceiptBody(
            message_id=m.message_id, transfer_id=m.transfer_id, kind=m.kind, sender=m.sender, receiver=m.receiver,
            sequence=sequence, leaf_index=leaf_index, accepted_at=timestamp_of(at)).SerializeToString()
        return IssuedReceipt(envelope_pb2.Receipt(body=body, key_id="test").SerializeToString(), body)

    return make


async def open_case(store: Store) -> IncomingMessage:
    m = incoming(str(uuid.uuid4()))
    await store.accept(m, opening(m), receipt_for(m))
    return m
