"""What the tables hold, as the operations read it: the delivery states, a case's row and how it
becomes a `gateway.core.case.Case` (the write path decides on it, the views show it).

Times are stored as integer microseconds since the epoch, converted exactly (page tokens and
deadlines compare them).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import NamedTuple, Protocol

from gateway.core.case import Case, CaseState, Channel, InsuranceType, MessageRef, side_of_stored
from gateway.core.messages import MessageKind
from gateway.core.timestamps import from_micros
from gateway.store.steps import QueryOne
from mitransfer.v1 import tracking_pb2

# deliveries.state
PENDING = tracking_pb2.DELIVERY_STATE_PENDING
IN_FLIGHT = tracking_pb2.DELIVERY_STATE_IN_FLIGHT
ACKNOWLEDGED = tracking_pb2.DELIVERY_STATE_ACKNOWLEDGED
DEAD_LETTER = tracking_pb2.DELIVERY_STATE_DEAD_LETTER
HELD = tracking_pb2.DELIVERY_STATE_HELD
CANCELLED = tracking_pb2.DELIVERY_STATE_CANCELLED


class CaseRow(NamedTuple):
    """A case's columns as its rules see them (`CASE_COLUMNS`, in this order)."""

    state: CaseState
    outbound: str
    inbound: str
    applicant: str
    insurance_type: InsuranceType
    inbound_insurance_type: InsuranceType
    key_id: str
    person_key: bytes
    suspension_date: str
    enrollment_date: str
    balance_fen: int | None
    fund_message_id: str | None
    channel: Channel
    retained_fen: int
    insured_months: int | None
    waiting_period_months: int | None
    opened_at: int  # not a rule's: the key of the case's messages (messages.case_opened_at)


CASE_COLUMNS = ", ".join(CaseRow._fields)

# A message's sequence from its id (one parameter): deliveries are keyed by sequence.
SEQUENCE_OF = "SELECT sequence FROM messages WHERE message_id = ?"


class CaseMessage(Protocol):
    """What a case's rules know of each of its messages: any row with these columns."""

    @property
    def message_id(self) -> str: ...

    @property
    def kind(self) -> MessageKind: ...

    @property
    def sender(self) -> str: ...


def case_query(transfer_id: str) -> QueryOne[CaseRow]:
    """The case's row as committed (None: there is none); `case_from` makes it a Case."""
    return QueryOne(f"SELECT {CASE_COLUMNS} FROM cases WHERE transfer_id = ?", (transfer_id,), CaseRow)


def case_from(transfer_id: str, row: CaseRow, messages: Iterable[CaseMessage]) -> Case:
    outbound = row.outbound
    refs = {m.message_id: MessageRef(m.kind, side_of_stored(m.kind, m.sender, outbound)) for m in messages}
    return Case(
        transfer_id=transfer_id, state=row.state, outbound=outbound, inbound=row.inbound,
        applicant=row.applicant, insurance_type=row.insurance_type,
        inbound_insurance_type=row.inbound_insurance_type, person_key=bytes(row.person_key), key_id=row.key_id,
        suspension_date=row.suspension_date, enrollment_date=row.enrollment_date, balance_fen=row.balance_fen,
        fund_message_id=row.fund_message_id, channel=row.channel, retained_fen=row.retained_fen,
        insured_months=row.insured_months, waiting_period_months=row.waiting_period_months, messages=refs,
    )


def opt_time(value: int | None) -> dt.datetime | None:
    return None if value is None else from_micros(value)
