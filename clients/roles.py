"""A platform's two roles in a case, as pure decisions: no gRPC, no storage, no clock but `now`.

Inbound (转入地): from what it remembers of a case and the message just delivered, decide which
acknowledgements to send, in order, and what to remember next:

    notice accepted               → remember the person and both insurance types; nothing to send
    notice refused                → the case is closed; forget it
    table, no funds expected      → ACCEPTED(table), TRANSFER_IN_COMPLETED(table); forget
    table, funds expected         → remember the table; wait for the fund transfer
    fund transfer = table balance → ACCEPTED(table), FUNDS_CREDITED(transfer), TRANSFER_IN_COMPLETED(table)
    table for another person      → REJECTED(table, IDENTITY_MISMATCH)
    enrolled before the suspension→ REJECTED(table, DUPLICATE_ENROLLMENT): the same months would be
                                    insured twice
    resident → resident, same year→ REJECTED(table, RESIDENT_SAME_YEAR): handled after the person
                                    enrolls here for the next year
    fund transfer ≠ table balance → REJECTED(table, AMOUNT_MISMATCH), then a FundReturn of the money
                                    that arrived (the case waits for its return)
    fund transfer, table unknown  → unanswerable (our memory was lost): leave it unacknowledged

The reference platform enrolls the person on the day it accepts (a real one uses its records).
Funds are expected for employee → employee insurance (310 → 310) with a positive balance; from
employee to resident insurance the balance stays at the outbound side. The acknowledgements must
be submitted in the order given: the gateway's state machine accepts them only so.

Outbound (转出地): an acknowledgement TRANSFER_IN_COMPLETED completes the case, REJECTED ends it;
a FundReturn of a rejected case is answered FUNDS_RETURN_RECEIVED (`answer_as_outbound`), which
closes it. A real platform confirms only once its bank shows the money back.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from enum import StrEnum

from clients.builders import (
    RESIDENT,
    acknowledgement,
    balance_moves,
    fund_account,
    fund_return,
    reason,
    today_in_china,
)
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
    # Ours: the scheme the person joins here, as the notice (or the request we sent) stated it.
    inbound_insurance_type: types_pb2.InsuranceType.ValueType = types_pb2.INSURANCE_TYPE_UNSPECIFIED
    table: messages_pb2.Header | None = None    # the information table's header, once it came
    balance_fen: int = 0                        # the table's personal-account balance transferred out

    @property
    def funds_expected(self) -> bool:
        return balance_moves(self.insurance_type, self.inbound_insurance_type or self.insurance_type,
                             self.balance_fen)


@dataclass(frozen=True)
class InboundDecision:
    """The answer to one delivered message."""

    case: InboundCase | None                   # what to remember now; None: nothing (closed or unknown)
    acknowledgements: tuple[Ack, ...] = ()     # to submit, in this order
    returns: tuple[messages_pb2.FundReturn, ...] = ()  # to submit after them: money sent back
    unanswerable: str = ""                     # why it cannot be answered: leave it unacknowledged


def answer_as_inbound(
    case: InboundCase | None, message: BusinessMessage, *, now: dt.datetime | None = None
) -> InboundDecision:
    """Decide the inbound side's answer to `message`, given what is remembered of its case."""
    if isinstance(message, messages_pb2.OutboundNotice):
        if message.outcome != messages_pb2.OutboundNotice.OUTCOME_ACCEPTED:
            return InboundDecision(None)
        return InboundDecision(InboundCase(message.header.transfer_id, message.person, message.insurance_type,
                                           message.inbound_insurance_type))
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
    if not remembered.inbound_insurance_type:
        remembered = replace(remembered, inbound_insurance_type=table.inbound_insurance_type or table.insurance_type)
    refusal = _enrollment_refusal(remembered, table, today_in_china(now))
    if refusal is not None:
        return InboundDecision(None, (acknowledgement(h, Ack.STATUS_REJECTED, reasons=[reason(refusal)],
                                                      created_at=now),))
    if remembered.funds_expected:
        return InboundDecision(remembered)
    return InboundDecision(None, (
        _accept(h, remembered, now),
        acknowledgement(h, Ack.STATUS_TRANSFER_IN_COMPLETED, created_at=now),
    ))


def _enrollment_refusal(case: InboundCase, table: messages_pb2.InformationTable,
                        enrolled: dt.date) -> types_pb2.ReasonCode.ValueType | None:
    """Why enrolling the person here on `enrolled` breaks a rule of the measures, if it does."""
    s = table.suspension_date
    suspended = dt.date(s.year, s.month, s.day)
    if enrolled < suspended:  # 不得重复参保
        return types_pb2.REASON_CODE_DUPLICATE_ENROLLMENT
    if case.insurance_type == RESIDENT and case.inbound_insurance_type == RESIDENT and enrolled.year <= suspended.year:
        return types_pb2.REASON_CODE_RESIDENT_SAME_YEAR  # 原则上当年度不再办理
    return None


def _accept(table: messages_pb2.Header, case: InboundCase, now: dt.datetime | None) -> Ack:
    """Acceptance with what the gateway needs for continuity: enrolled here today, in the scheme the
    case was opened for."""
    return acknowledgement(table, Ack.STATUS_ACCEPTED, inbound_enrollment_date=today_in_china(now),
                           inbound_insurance_type=case.inbound_insurance_type or case.insurance_type, created_at=now)


def _on_fund_transfer(
    case: InboundCase | None, transfer: messages_pb2.FundTransfer, now: dt.datetime | None
) -> InboundDecision:
    if case is None or case.table is None:
        # Deliveries of a case come in order, so this means our own memory of the case was lost.
        return InboundDecision(case, unanswerable="fund transfer for a case whose table is not remembered")
    table = case.table
    if transfer.amount_fen != case.balance_fen:
        # Rejected after the money arrived: it goes back, whole, to the account it came from.
        reject = reason(types_pb2.REASON_CODE_AMOUNT_MISMATCH)
        back = fund_return(transfer, fund_account(transfer.header.receiver, receiving=False), transfer.payer,
                           f"RET{transfer.header.message_id.replace('-', '')[:20].upper()}", today_in_china(now),
                           created_at=now)
        return InboundDecision(None, (acknowledgement(table, Ack.STATUS_REJECTED, reasons=[reject],
                                                      created_at=now),), (back,))
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


def answer_as_outbound(message: BusinessMessage, *, now: dt.datetime | None = None) -> tuple[Ack, ...]:
    """What the outbound side answers to a message from the inbound side: a fund return is
    confirmed (FUNDS_RETURN_RECEIVED), which closes the rejected case; nothing else needs an answer."""
    if isinstance(message, messages_pb2.FundReturn):
        return (acknowledgement(message.header, Ack.STATUS_FUNDS_RETURN_RECEIVED, created_at=now),)
    return ()


def outcome_for_outbound(ack: Ack) -> CaseOutcome | None:
    """The end of the case an acknowledgement announces to the outbound side, if it is one."""
    if ack.status == Ack.STATUS_TRANSFER_IN_COMPLETED:
        return CaseOutcome.COMPLETED
    if ack.status == Ack.STATUS_REJECTED:
        return CaseOutcome.REJECTED
    return None
