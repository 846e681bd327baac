"""A platform's two roles in a case, as pure decisions: no gRPC, no storage, no clock but `now`.

Inbound (转入地): from what it remembers of a case and the message just delivered, decide which
acknowledgements to send, in order, and what to remember next:

    notice accepted               → remember the person and insurance type; nothing to send
    notice refused                → the case is closed; forget it
    table, no funds expected      → ACCEPTED(table), TRANSFER_IN_COMPLETED(table); forget
    table, funds expected         → remember the table; wait for the fund transfer
    fund transfer = table balance → ACCEPTED(table), FUNDS_CREDITED(transfer), TRANSFER_IN_COMPLETED(table)
    table for another person      → REJECTED(table, IDENTITY_MISMATCH)
    fund transfer ≠ table balance → REJECTED(table, AMOUNT_MISMATCH)
    fund transfer, table unknown  → unanswerable (our memory was lost): leave it unacknowledged

Funds are expected for employee insurance (310) with a positive balance. The acknowledgements
must be submitted in the order given: the gateway's state machine accepts them only so.

Outbound (转出地): an acknowledgement TRANSFER_IN_COMPLETED completes the case, REJECTED ends it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from enum import StrEnum

from clients.builders import EMPLOYEE, acknowledgement, reason, today_in_china
from clients.messages import BusinessMessage
from mitransfer.v1 import messages_pb2, types_pb2

Ack = messages_pb2.Acknowledgement


@dataclass(frozen=True)
class InboundCase:
    """What the inbound side remembers of one open case between deliveries.

    A real platform keeps this in its own database, written in the same transaction as the
    delivery it came from.
    """

    transfer_id: str
    person: types_pb2.Person | None = None      # from the outbound notice
    insurance_type: types_pb2.InsuranceType.ValueType = types_pb2.INSURANCE_TYPE_UNSPECIFIED
    table: messages_pb2.Header | None = None    # the information table's header, once it came
    balance_fen: int = 0                        # the table's personal-account balance

    @property
    def funds_expected(self) -> bool:
        return self.insurance_type == EMPLOYEE and self.balance_fen > 0


@dataclass(frozen=True)
class InboundDecision:
    """The answer to one delivered message."""

    case: InboundCase | None                   # what to remember now; None: nothing (closed or unknown)
    acknowledgements: tuple[Ack, ...] = ()     # to submit, in this order
    unanswerable: str = ""                     # why it cannot be answered: leave it unacknowledged


def answer_as_inbound(
    case: InboundCase | None, message: BusinessMessage, *, now: dt.datetime | None = None
) -> InboundDecision:
    """Decide the inbound side's answer to `message`, given what is remembered of its case."""
    if isinstance(message, messages_pb2.OutboundNotice):
        if message.outcome != messages_pb2.OutboundNotice.OUTCOME_ACCEPTED:
            return InboundDecision(None)
        return InboundDecision(InboundCase(message.header.transfer_id, message.person, message.insurance_type))
    if isinstance(message, messages_pb2.InformationTable):
        return _on_table(case, message, now)
    if isinstance(message, messages_pb2.FundTransfer):
        return _on_fund_transfer(case, message, now)
    return InboundDecision(case)  # an acknowledgement from the outbound side needs no answer


def _on_table(
    case: InboundCase | None, table: messages_pb2.InformationTable, now: dt.datetime | None
) -> InboundDecision:
    h = table.header
    if case is not None and case.person is not None and not _same_person(case.person, table.person):
        reject = reason(types_pb2.REASON_CODE_IDENTITY_MISMATCH)
        return InboundDecision(None, (acknowledgement(h, Ack.STATUS_REJECTED, reasons=[reject], created_at=now),))
    remembered = replace(case or InboundCase(h.transfer_id, table.person, table.insurance_type),
                         insurance_type=table.insurance_type, table=h, balance_fen=table.account_balance_fen)
    if remembered.funds_expected:
        return InboundDecision(remembered)
    return InboundDecision(None, (
        _accept(h, remembered, now),
        acknowledgement(h, Ack.STATUS_TRANSFER_IN_COMPLETED, created_at=now),
    ))


def _accept(table: messages_pb2.Header, case: InboundCase, now: dt.datetime | None) -> Ack:
    """Acceptance with what the gateway needs for continuity: enrolled here today, same scheme."""
    return acknowledgement(table, Ack.STATUS_ACCEPTED, inbound_enrollment_date=today_in_china(now),
                           inbound_insurance_type=case.insurance_type, created_at=now)


def _on_fund_transfer(
    case: InboundCase | None, transfer: messages_pb2.FundTransfer, now: dt.datetime | None
) -> InboundDecision:
    if case is None or case.table is None:
        # Deliveries of a case come in order, so this means our own memory of the case was lost.
        return InboundDecision(case, unanswerable="fund transfer for a case whose table is not remembered")
    table = case.table
    if transfer.amount_fen != case.balance_fen:
        reject = reason(types_pb2.REASON_CODE_AMOUNT_MISMATCH)
        return InboundDecision(None, (acknowledgement(table, Ack.STATUS_REJECTED, reasons=[reject],
                                                      created_at=now),))
    return InboundDecision(None, (
        _accept(table, case, now),
        acknowledgement(transfer.header, Ack.STATUS_FUNDS_CREDITED, credited_amount_fen=transfer.amount_fen,
                        created_at=now),
        acknowledgement(table, Ack.STATUS_TRANSFER_IN_COMPLETED, created_at=now),
    ))


def _same_person(a: types_pb2.Person, b: types_pb2.Person) -> bool:
    return (a.certificate_type, a.certificate_number) == (b.certificate_type, b.certificate_number)


class CaseOutcome(StrEnum):
    """How a case ended, as the outbound side learns it."""

    COMPLETED = "completed"  # 转入完成
    REJECTED = "rejected"    # 转入地退回


def outcome_for_outbound(ack: Ack) -> CaseOutcome | None:
    """The end of the case an acknowledgement announces to the outbound side, if it is one."""
    if ack.status == Ack.STATUS_TRANSFER_IN_COMPLETED:
        return CaseOutcome.COMPLETED
    if ack.status == Ack.STATUS_REJECTED:
        return CaseOutcome.REJECTED
    return None
