"""The transfer case as an explicit, table-driven state machine (pure: no I/O).

`apply(case, message, ...)` answers one question: given what the gateway knows of a case, may
this message be accepted, and what follows? The answer is a `Decision`: the case afterwards and
what the store must do besides recording the message (hold or release a delivery, move the fund
ledger). Every refusal is a `RuleViolation` (FAILED_PRECONDITION) whose reason names the rule
(`gateway.core.rulebook` lists them with the article each comes from), with the state in its
metadata. The store calls `apply` inside the transaction that records the message, so decision
and write are atomic and races resolve to exactly one winner.

`TRANSITIONS` is the whole process; the diagram in docs/integrating.md is generated from it (`mermaid()`).
"""

from __future__ import annotations

import datetime as dt
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Final, Protocol, TypeAlias

from gateway.core.automatic import BLOCKERS
from gateway.core.continuity import Period, insured_run, month_index
from gateway.core.errors import RuleViolation, StoreUnavailable
from gateway.core.messages import CaseMessage, MessageKind, kind_of
from gateway.core.personkeys import PersonKey, PersonKeys
from mitransfer.protocol.registry import RegionPolicy, policy_of
from mitransfer.v1 import automatic_pb2, envelope_pb2, messages_pb2, tracking_pb2, types_pb2

CaseState: TypeAlias = tracking_pb2.CaseState.ValueType
Channel: TypeAlias = messages_pb2.TransferRequest.Channel.ValueType
InsuranceType: TypeAlias = types_pb2.InsuranceType.ValueType
Ack = messages_pb2.Acknowledgement
_S = tracking_pb2
Policies: TypeAlias = Mapping[str, RegionPolicy]  # by 6-digit region or 2-digit province
NO_POLICIES: Final[Policies] = {}
EMPLOYEE: Final = types_pb2.INSURANCE_TYPE_EMPLOYEE_BASIC
RESIDENT: Final = types_pb2.INSURANCE_TYPE_RESIDENT_BASIC
UNSPECIFIED: Final = types_pb2.INSURANCE_TYPE_UNSPECIFIED
NO_CHANNEL: Final[Channel] = messages_pb2.TransferRequest.CHANNEL_UNSPECIFIED
AUTOMATIC: Final[Channel] = messages_pb2.TransferRequest.CHANNEL_AUTOMATIC

NEW: Final[CaseState] = _S.CASE_STATE_UNSPECIFIED  # "no case yet" in the table
CLOSED_STATES: Final[frozenset[CaseState]] = frozenset({
    _S.CASE_STATE_COMPLETED, _S.CASE_STATE_REFUSED, _S.CASE_STATE_INBOUND_REJECTED,
    _S.CASE_STATE_WITHDRAWN, _S.CASE_STATE_REVIEW_REJECTED, _S.CASE_STATE_EXPIRED,
    _S.CASE_STATE_CLOSED_BY_OPERATOR,
})
OPEN_STATES: Final[frozenset[CaseState]] = frozenset({
    _S.CASE_STATE_OPENED, _S.CASE_STATE_OUTBOUND_ACCEPTED, _S.CASE_STATE_TABLE_SENT, _S.CASE_STATE_FUNDS_SENT,
    _S.CASE_STATE_HELD_FOR_REVIEW, _S.CASE_STATE_INBOUND_ACCEPTED, _S.CASE_STATE_FUNDS_CREDITED,
    _S.CASE_STATE_AWAITING_FUND_RETURN, _S.CASE_STATE_FUNDS_RETURNED, _S.CASE_STATE_AWAITING_RESOLUTION,
})
_BEFORE_FUNDS: Final = frozenset({_S.CASE_STATE_OPENED, _S.CASE_STATE_OUTBOUND_ACCEPTED, _S.CASE_STATE_TABLE_SENT,
                                  _S.CASE_STATE_AWAITING_RESOLUTION})

# Who the measures cover: employee (310, not retired) and resident (390) basic insurance.
COVERED_INSURANCE: Final[frozenset[int]] = frozenset({EMPLOYEE, RESIDENT})
# Messages a case may hold from its platforms. A whole case, a return and a blocker included, is
# about twenty; acknowledgements of receipt have no natural end, and a case's view (GetCase, the
# audit) grows with every message, so the cap keeps what one party can add to it bounded.
MAX_CASE_MESSAGES: Final = 100


class Side(StrEnum):
    """Who sent a message."""

    OUTBOUND = "outbound"  # 转出地
    INBOUND = "inbound"    # 转入地
    REVIEWER = "reviewer"  # the national platform's reviewer, through the gateway
    OPERATOR = "operator"  # the national platform's operator, through the gateway
    GATEWAY = "gateway"    # the gateway itself (expiries of older cases)


class Event(StrEnum):
    """What a message means for the case: its kind, refined by outcome or status."""

    TRANSFER_REQUEST = "transfer_request"
    NOTICE_ACCEPTED = "notice_accepted"
    NOTICE_REFUSED = "notice_refused"
    NOTICE_BLOCKED = "notice_blocked"  # refused only for blockers the person can clear (BLOCKERS)
    INFORMATION_TABLE = "information_table"
    FUND_TRANSFER = "fund_transfer"
    REVIEW_APPROVED = "review_approved"
    REVIEW_REJECTED = "review_rejected"
    ACK_RECEIVED = "ack_received"
    ACK_ACCEPTED = "ack_accepted"
    ACK_REJECTED = "ack_rejected"
    ACK_FUNDS_CREDITED = "ack_funds_credited"
    ACK_TRANSFER_IN_COMPLETED = "ack_transfer_in_completed"
    FUND_RETURN = "fund_return"
    ACK_FUNDS_RETURN_RECEIVED = "ack_funds_return_received"
    WITHDRAWAL = "withdrawal"
    OPERATOR_CLOSURE = "operator_closure"
    AUTOMATIC_REQUEST = "automatic_request"  # the gateway opens a case from a record and an enrollment
    BLOCKER_RESOLVED = "blocker_resolved"


class Guard(StrEnum):
    """A condition on the case, beyond its state, that a transition requires."""

    FUNDS_EXPECTED = "funds expected"        # 310 → 310 with a positive balance
    NO_FUNDS_EXPECTED = "no funds expected"  # any other case: no money moves
    NOT_REVIEWED = "not reviewed by the outbound region"
    REVIEWED = "reviewed by the outbound region"
    BY_APPLICANT = "sent by the applicant's side"
    AUTOMATIC = "opened automatically"  # by the gateway, from a suspended record and an enrollment
    APPLIED = "opened by an application"


class FundStatus(StrEnum):
    """Where a case's personal-account money stands (the settlement ledger)."""

    HELD = "held"              # accepted, waiting for review
    SENT = "sent"              # on its way to the inbound side
    CREDITED = "credited"      # credited to the person's account at the inbound side
    REJECTED = "rejected"      # stopped in review: never released (or, stored before returns were
                               # tracked, rejected by the inbound side)
    RETURN_DUE = "return_due"  # the inbound side rejected the case: it owes the money back
    RETURNING = "returning"    # the inbound side sent it back; the outbound side has not confirmed
    RETURNED = "returned"      # the outbound side confirmed the money is back


@dataclass(frozen=True)
class Transition:
    event: Event
    side: Side
    sources: frozenset[CaseState]
    target: CaseState | None  # None: the state does not change
    guard: Guard | None = None


def _t(event: Event, side: Side, sources: set[CaseState] | frozenset[CaseState], target: CaseState | None,
       guard: Guard | None = None) -> Transition:
    return Transition(event, side, frozenset(sources), target, guard)


TRANSITIONS: Final[tuple[Transition, ...]] = (
    _t(Event.TRANSFER_REQUEST, Side.INBOUND, {NEW}, _S.CASE_STATE_OPENED),
    # 免申请: the request the person would have lodged at the inbound side, written by the gateway.
    _t(Event.AUTOMATIC_REQUEST, Side.GATEWAY, {NEW}, _S.CASE_STATE_OPENED),
    _t(Event.NOTICE_ACCEPTED, Side.OUTBOUND, {NEW, _S.CASE_STATE_OPENED}, _S.CASE_STATE_OUTBOUND_ACCEPTED),
    _t(Event.NOTICE_REFUSED, Side.OUTBOUND, {NEW, _S.CASE_STATE_OPENED}, _S.CASE_STATE_REFUSED),
    # Blockers close an applied case (the person applies again once they are cleared); an automatic
    # case, which nobody applied for, waits for them and resumes by itself.
    _t(Event.NOTICE_BLOCKED, Side.OUTBOUND, {NEW, _S.CASE_STATE_OPENED}, _S.CASE_STATE_REFUSED, Guard.APPLIED),
    _t(Event.NOTICE_BLOCKED, Side.OUTBOUND, {_S.CASE_STATE_OPENED}, _S.CASE_STATE_AWAITING_RESOLUTION,
       Guard.AUTOMATIC),
    _t(Event.BLOCKER_RESOLVED, Side.OUTBOUND, {_S.CASE_STATE_AWAITING_RESOLUTION}, _S.CASE_STATE_OPENED),
    _t(Event.NOTICE_REFUSED, Side.OUTBOUND, {_S.CASE_STATE_AWAITING_RESOLUTION}, _S.CASE_STATE_REFUSED),
    _t(Event.INFORMATION_TABLE, Side.OUTBOUND, {_S.CASE_STATE_OUTBOUND_ACCEPTED}, _S.CASE_STATE_TABLE_SENT),
    _t(Event.FUND_TRANSFER, Side.OUTBOUND, {_S.CASE_STATE_TABLE_SENT}, _S.CASE_STATE_FUNDS_SENT,
       Guard.NOT_REVIEWED),
    _t(Event.FUND_TRANSFER, Side.OUTBOUND, {_S.CASE_STATE_TABLE_SENT}, _S.CASE_STATE_HELD_FOR_REVIEW,
       Guard.REVIEWED),
    _t(Event.REVIEW_APPROVED, Side.REVIEWER, {_S.CASE_STATE_HELD_FOR_REVIEW}, _S.CASE_STATE_FUNDS_SENT),
    _t(Event.REVIEW_REJECTED, Side.REVIEWER, {_S.CASE_STATE_HELD_FOR_REVIEW}, _S.CASE_STATE_REVIEW_REJECTED),
    _t(Event.ACK_ACCEPTED, Side.INBOUND, {_S.CASE_STATE_TABLE_SENT}, _S.CASE_STATE_INBOUND_ACCEPTED,
       Guard.NO_FUNDS_EXPECTED),
    _t(Event.ACK_ACCEPTED, Side.INBOUND, {_S.CASE_STATE_FUNDS_SENT}, _S.CASE_STATE_INBOUND_ACCEPTED,
       Guard.FUNDS_EXPECTED),
    _t(Event.ACK_REJECTED, Side.INBOUND, {_S.CASE_STATE_TABLE_SENT}, _S.CASE_STATE_INBOUND_REJECTED),
    # Rejected after the funds reached the inbound side: the money goes back before the case closes.
    _t(Event.ACK_REJECTED, Side.INBOUND, {_S.CASE_STATE_FUNDS_SENT}, _S.CASE_STATE_AWAITING_FUND_RETURN),
    _t(Event.FUND_RETURN, Side.INBOUND, {_S.CASE_STATE_AWAITING_FUND_RETURN}, _S.CASE_STATE_FUNDS_RETURNED),
    _t(Event.ACK_FUNDS_RETURN_RECEIVED, Side.OUTBOUND, {_S.CASE_STATE_FUNDS_RETURNED},
       _S.CASE_STATE_INBOUND_REJECTED),
    _t(Event.ACK_FUNDS_CREDITED, Side.INBOUND, {_S.CASE_STATE_INBOUND_ACCEPTED}, _S.CASE_STATE_FUNDS_CREDITED,
       Guard.FUNDS_EXPECTED),
    _t(Event.ACK_TRANSFER_IN_COMPLETED, Side.INBOUND, {_S.CASE_STATE_FUNDS_CREDITED}, _S.CASE_STATE_COMPLETED,
       Guard.FUNDS_EXPECTED),
    _t(Event.ACK_TRANSFER_IN_COMPLETED, Side.INBOUND, {_S.CASE_STATE_INBOUND_ACCEPTED}, _S.CASE_STATE_COMPLETED,
       Guard.NO_FUNDS_EXPECTED),
    _t(Event.ACK_RECEIVED, Side.INBOUND, OPEN_STATES, None),
    _t(Event.ACK_RECEIVED, Side.OUTBOUND, OPEN_STATES, None),
    _t(Event.WITHDRAWAL, Side.INBOUND, _BEFORE_FUNDS, _S.CASE_STATE_WITHDRAWN, Guard.BY_APPLICANT),
    _t(Event.WITHDRAWAL, Side.OUTBOUND, _BEFORE_FUNDS, _S.CASE_STATE_WITHDRAWN, Guard.BY_APPLICANT),
    # An unanswered request is escalated (its outbound stage runs overdue), never closed by the
    # clock: only the applicant (withdrawal) or an operator's reasoned decision closes it. So is an
    # automatic case whose blockers are never cleared: nobody applied for it, the person may never
    # clear them, and nothing but an operator (or the inbound side's withdrawal) ends the wait.
    _t(Event.OPERATOR_CLOSURE, Side.OPERATOR, {_S.CASE_STATE_OPENED, _S.CASE_STATE_AWAITING_RESOLUTION},
       _S.CASE_STATE_CLOSED_BY_OPERATOR),
)

# Which earlier message each acknowledgement status must answer.
_ACK_ANSWERS: Final[Mapping[Event, MessageKind]] = {
    Event.ACK_ACCEPTED: envelope_pb2.MESSAGE_KIND_INFORMATION_TABLE,
    Event.ACK_REJECTED: envelope_pb2.MESSAGE_KIND_INFORMATION_TABLE,
    Event.ACK_FUNDS_CREDITED: envelope_pb2.MESSAGE_KIND_FUND_TRANSFER,
    Event.ACK_TRANSFER_IN_COMPLETED: envelope_pb2.MESSAGE_KIND_INFORMATION_TABLE,
    Event.ACK_FUNDS_RETURN_RECEIVED: envelope_pb2.MESSAGE_KIND_FUND_RETURN,
}
_ACK_EVENTS: Final[Mapping[int, Event]] = {
    Ack.STATUS_RECEIVED: Event.ACK_RECEIVED,
    Ack.STATUS_ACCEPTED: Event.ACK_ACCEPTED,
    Ack.STATUS_REJECTED: Event.ACK_REJECTED,
    Ack.STATUS_FUNDS_CREDITED: Event.ACK_FUNDS_CREDITED,
    Ack.STATUS_TRANSFER_IN_COMPLETED: Event.ACK_TRANSFER_IN_COMPLETED,
    Ack.STATUS_FUNDS_RETURN_RECEIVED: Event.ACK_FUNDS_RETURN_RECEIVED,
}
# The messages the gateway writes into a case's log, and who stands behind each.
_AUTHORED: Final[Mapping[int, Side]] = {
    envelope_pb2.MESSAGE_KIND_REVIEW_DECISION: Side.REVIEWER,
    envelope_pb2.MESSAGE_KIND_CASE_EXPIRED: Side.GATEWAY,
    envelope_pb2.MESSAGE_KIND_CASE_CLOSED: Side.OPERATOR,
    # written by the gateway, it stands for the person's application at the inbound side
    envelope_pb2.MESSAGE_KIND_AUTOMATIC_TRANSFER_REQUEST: Side.INBOUND,
}


@dataclass(frozen=True)
class MessageRef:
    """An earlier message of the case, as far as the rules need it."""

    kind: MessageKind
    side: Side


@dataclass(frozen=True)
class Case:
    """What the gateway knows of one case (a snapshot; the store persists it)."""

    transfer_id: str
    state: CaseState
    outbound: str
    inbound: str
    applicant: str                      # the agency where the application was lodged
    insurance_type: InsuranceType       # at the outbound side
    person_key: bytes                   # the person's key (`gateway.core.personkeys`) while the case is open
    suspension_date: str = ""           # ISO date, once the outbound notice accepted
    balance_fen: int | None = None      # transferred out, from the information table
    fund_message_id: str | None = None  # the fund transfer, once accepted
    # At the inbound side, fixed when the case opens (request, or the notice that opens it). Only
    # cases opened before it was required lack it; their table or acceptance states it.
    inbound_insurance_type: InsuranceType = UNSPECIFIED
    enrollment_date: str = ""           # ISO date, from the inbound acceptance
    channel: Channel = NO_CHANNEL       # how it opened: the request's channel (none: the outbound notice)
    retained_fen: int = 0               # 310 → 390: the balance that stays at the outbound side
    insured_months: int | None = None   # months insured without a break, from the table's periods
    waiting_period_months: int | None = None  # the inbound region's, fixed at the inbound acceptance
    messages: Mapping[str, MessageRef] = field(default_factory=dict)
    key_id: str = ""                    # the person-key secret `person_key` is under

    @property
    def closed(self) -> bool:
        return self.state in CLOSED_STATES

    @property
    def funds_expected(self) -> bool:
        """Money moves exactly when both sides are employee insurance (the only scheme with a
        personal account) and the balance is positive."""
        return (self.insurance_type == EMPLOYEE and self.inbound_insurance_type in (EMPLOYEE, UNSPECIFIED)
                and self.balance_fen is not None and self.balance_fen > 0)

    @property
    def switches_scheme(self) -> bool:
        """Between employee and resident insurance, one way or the other."""
        return {self.insurance_type, self.inbound_insurance_type} == {EMPLOYEE, RESIDENT}

    def decision_of(self, kind: MessageKind) -> str | None:
        """The message id of the gateway-written message of this kind in the case, if any."""
        return next((mid for mid, ref in self.messages.items() if ref.kind == kind), None)


@dataclass(frozen=True)
class Decision:
    """The case after a message, and what the store does besides recording the message."""

    case: Case
    hold_delivery: bool = False        # keep this message from its receiver until review
    release_message: str | None = None  # deliver this held message now
    cancel_message: str | None = None   # never deliver this held message
    fund_status: FundStatus | None = None  # the case's fund movement moves to this status
    replay_of: str | None = None       # nothing to record: answer with this earlier message's receipt


class CaseIndex(Protocol):
    """What the rules may ask about other cases (answered by the store, inside the transaction)."""

    def open_case_for(self, person: tuple[PersonKey, ...], outbound: str) -> str | None:
        """The transfer id of an open case at this outbound agency of the person whose keys (under
        every configured secret) are `person`, if any."""


def _is_case_person(case: Case, person: types_pb2.Person, keys: PersonKeys) -> bool:
    """Whether `person` is the case's person: their key under the secret the case is keyed under.

    Raises StoreUnavailable if this gateway does not hold that secret (it was removed while open
    cases were still keyed under it): the index's upkeep keys the case again under the current
    secret, from its opening message, within a round, and the message may be sent again then.
    """
    if case.key_id not in keys.key_ids:
        raise StoreUnavailable(f"case {case.transfer_id} is keyed under a person-key secret this gateway does not"
                               " hold; it is keyed again under the current one within an upkeep round: send again",
                               reason="STORE_UNAVAILABLE")
    return hmac.compare_digest(keys.key(person, case.key_id).digest, case.person_key)


def state_name(state: CaseState) -> str:
    return "NEW" if state == NEW else tracking_pb2.CaseState.Name(state).removeprefix("CASE_STATE_")


def side_of_stored(kind: MessageKind, sender: str, outbound: str) -> Side:
    """Who stands behind a message already in a case's log."""
    return _AUTHORED.get(kind) or (Side.OUTBOUND if sender == outbound else Side.INBOUND)


def _iso(d: types_pb2.Date) -> str:
    return f"{d.year:04d}-{d.month:02d}-{d.day:02d}"


def _insurance_name(value: InsuranceType) -> str:
    """`EMPLOYEE_BASIC (310)` for error texts."""
    known = value in types_pb2.InsuranceType.values()
    return f"{types_pb2.InsuranceType.Name(value).removeprefix('INSURANCE_TYPE_')} ({value})" if known else str(value)


def event_of(message: CaseMessage) -> Event:
    """The event a (validated) message stands for."""
    if isinstance(message, messages_pb2.TransferRequest):
        return Event.TRANSFER_REQUEST
    if isinstance(message, messages_pb2.OutboundNotice):
        if message.outcome == messages_pb2.OutboundNotice.OUTCOME_ACCEPTED:
            return Event.NOTICE_ACCEPTED
        blocked = all(r.code in BLOCKERS for r in message.reasons)
        return Event.NOTICE_BLOCKED if blocked else Event.NOTICE_REFUSED
    if isinstance(message, messages_pb2.InformationTable):
        return Event.INFORMATION_TABLE
    if isinstance(message, messages_pb2.FundTransfer):
        return Event.FUND_TRANSFER
    if isinstance(message, messages_pb2.FundReturn):
        return Event.FUND_RETURN
    if isinstance(message, messages_pb2.Withdrawal):
        return Event.WITHDRAWAL
    if isinstance(message, automatic_pb2.BlockerResolution):
        return Event.BLOCKER_RESOLVED
    return _ACK_EVENTS[message.status]


def _violation(rule: str, text: str, case: Case | None, **extra: str) -> RuleViolation:
    metadata = {"rule": rule, "state": state_name(case.state) if case else "NEW", **extra}
    if case is not None:
        metadata["transfer_id"] = case.transfer_id
    return RuleViolation(text, reason=rule, metadata=metadata)


def apply(case: Case | None, message: CaseMessage, *, policies: Policies, index: CaseIndex,
          keys: PersonKeys) -> Decision:
    """The decision on `message` (validated by gateway.core.validation), or RuleViolation.

    `case` is None for a transfer id the gateway has not seen; `policies` are the regions' own
    choices (the registry's), by region or province; `keys` the person-key secrets, under which a
    new case keeps its person and a message's person is compared with the case's.
    """
    header = message.header
    event = event_of(message)
    if case is None:
        case = _new_case(message, event, keys)
        side = Side.INBOUND if event is Event.TRANSFER_REQUEST else Side.OUTBOUND
        opening = True
    else:
        if header.sender not in (case.outbound, case.inbound):
            raise _not_a_party(message, event, keys)
        if case.closed:
            raise _violation("CASE_CLOSED", f"case {case.transfer_id} is closed ({state_name(case.state)})",
                             case, event=event.value)
        if len(case.messages) >= MAX_CASE_MESSAGES:
            raise _violation("CASE_MESSAGE_LIMIT", f"case {case.transfer_id} holds the most messages a case may"
                             f" ({MAX_CASE_MESSAGES})", case, limit=str(MAX_CASE_MESSAGES))
        side = _side(case, header.sender, header.receiver)
        opening = False
    transition = _transition(case, event, side, policies)
    facts, fund_status = _check_content(case, message, event, policies, keys, opening=opening)
    question = index_question(message, keys) if opening else None  # None: a refused notice, opening to close
    if question is not None:
        _check_one_open_case(case, index, question[0])
    target = case.state if transition.target is None else transition.target
    refs = {**case.messages, header.message_id: MessageRef(kind_of(message), side)}
    after = replace(case, state=target, messages=refs, **facts)
    if event is Event.FUND_TRANSFER:
        held = target == _S.CASE_STATE_HELD_FOR_REVIEW
        return Decision(after, hold_delivery=held, fund_status=FundStatus.HELD if held else FundStatus.SENT)
    return Decision(after, fund_status=fund_status)


def index_question(message: CaseMessage, keys: PersonKeys) -> tuple[tuple[PersonKey, ...], str] | None:
    """What `apply` asks its CaseIndex about `message` when its transfer has no case yet: the
    person's keys (under every secret, the current one first) and the outbound agency of the case
    it would open. None: it asks nothing (the message opens no case, or is a refused notice, which
    opens a case only to close it). A store answers it before deciding, so the decision runs once."""
    if isinstance(message, messages_pb2.TransferRequest):
        return keys.keys(message.person), message.header.receiver
    if isinstance(message, messages_pb2.OutboundNotice) and event_of(message) is Event.NOTICE_ACCEPTED:
        return keys.keys(message.person), message.header.sender
    return None


def review(case: Case | None, *, approved: bool, message_id: str) -> Decision:
    """The decision on a reviewer's approval or rejection of the case's held fund transfer.

    Decided on the case as committed, inside its transaction: if the case was decided already, the
    same decision is a replay of the earlier one (`replay_of`), the other is REVIEW_ALREADY_DECIDED.
    """
    event = Event.REVIEW_APPROVED if approved else Event.REVIEW_REJECTED
    if case is None:
        raise _violation("CASE_NOT_OPENED", "no such case", None, event=event.value)
    earlier = case.decision_of(envelope_pb2.MESSAGE_KIND_REVIEW_DECISION)
    if earlier is not None:
        approved_before = case.state != _S.CASE_STATE_REVIEW_REJECTED
        if approved_before == approved:
            return Decision(case, replay_of=earlier)
        raise _violation("REVIEW_ALREADY_DECIDED", f"case {case.transfer_id} was already "
                         f"{'approved' if approved_before else 'rejected'} in review", case,
                         decision_message_id=earlier)
    if case.closed:
        raise _violation("CASE_CLOSED", f"case {case.transfer_id} is closed ({state_name(case.state)})", case)
    transition = _transition(case, event, Side.REVIEWER, NO_POLICIES)
    assert transition.target is not None and case.fund_message_id is not None
    refs = {**case.messages, message_id: MessageRef(envelope_pb2.MESSAGE_KIND_REVIEW_DECISION, Side.REVIEWER)}
    after = replace(case, state=transition.target, messages=refs)
    if approved:
        return Decision(after, release_message=case.fund_message_id, fund_status=FundStatus.SENT)
    return Decision(after, cancel_message=case.fund_message_id, fund_status=FundStatus.REJECTED)


def open_automatic(case: Case | None, request: messages_pb2.TransferRequest, *, message_id: str,
                   index: CaseIndex, keys: PersonKeys) -> Decision:
    """The decision to open a case the gateway writes itself (免申请): `request` is the transfer
    request of its AutomaticTransferRequest, as if the person had applied at the inbound side
    (channel CHANNEL_AUTOMATIC). The request stands for the inbound side's application: the inbound
    agency is the applicant, may withdraw it, and the outbound side answers it as any request.

    Raises RuleViolation: the transfer id has a case already (CASE_EXISTS), an insurance type the
    measures do not cover, or the person has an open case at the outbound agency (CASE_ALREADY_OPEN).
    """
    if case is not None:
        raise _violation("CASE_EXISTS", f"transfer {case.transfer_id} has a case already", case)
    new = _new_case(request, Event.TRANSFER_REQUEST, keys)
    transition = _transition(new, Event.AUTOMATIC_REQUEST, Side.GATEWAY, NO_POLICIES)
    assert transition.target is not None
    _check_content(new, request, Event.TRANSFER_REQUEST, NO_POLICIES, keys, opening=True)
    _check_one_open_case(new, index, keys.keys(request.person))
    refs = {message_id: MessageRef(envelope_pb2.MESSAGE_KIND_AUTOMATIC_TRANSFER_REQUEST, Side.INBOUND)}
    return Decision(replace(new, state=transition.target, channel=AUTOMATIC, messages=refs))


def close(case: Case | None, *, message_id: str) -> Decision:
    """The decision on an operator's closure of a case whose request was never answered, or of an
    automatic case waiting for blockers nobody clears. Closing it again is a replay of the first
    closure (`replay_of`)."""
    if case is None:
        raise _violation("CASE_NOT_OPENED", "no such case", None, event=Event.OPERATOR_CLOSURE.value)
    earlier = case.decision_of(envelope_pb2.MESSAGE_KIND_CASE_CLOSED)
    if earlier is not None:
        return Decision(case, replay_of=earlier)
    if case.closed:
        raise _violation("CASE_CLOSED", f"case {case.transfer_id} is closed ({state_name(case.state)})", case)
    transition = _transition(case, Event.OPERATOR_CLOSURE, Side.OPERATOR, NO_POLICIES)
    assert transition.target is not None
    refs = {**case.messages, message_id: MessageRef(envelope_pb2.MESSAGE_KIND_CASE_CLOSED, Side.OPERATOR)}
    return Decision(replace(case, state=transition.target, messages=refs))


def _not_a_party(message: CaseMessage, event: Event, keys: PersonKeys) -> RuleViolation:
    """The refusal of a message whose sender is not a side of the case its transfer id names.

    It must tell the sender nothing of that case: not its sides, not its state, not that it
    exists. A message that could not open a case is refused exactly as for a transfer id the
    gateway has never seen. One that could (a request, a notice) would open a case under an
    unknown id, so its refusal cannot look like that; it says only that the id is taken (which the
    sender, holding the id, knows anyway), and nothing of the case.
    """
    h = message.header
    if event in (Event.TRANSFER_REQUEST, Event.NOTICE_ACCEPTED, Event.NOTICE_REFUSED, Event.NOTICE_BLOCKED):
        return RuleViolation(f"transfer id {h.transfer_id} is already in use: a new case needs a new transfer id",
                             reason="TRANSFER_ID_IN_USE",
                             metadata={"rule": "TRANSFER_ID_IN_USE", "transfer_id": h.transfer_id})
    try:
        _new_case(message, event, keys)
    except RuleViolation as as_if_unseen:
        return as_if_unseen
    raise AssertionError(f"{event} opens a case")  # the events above are the ones that open one


def _new_case(message: CaseMessage, event: Event, keys: PersonKeys) -> Case:
    """The case `message` opens, its person keyed under the current secret."""
    h = message.header
    if isinstance(message, messages_pb2.TransferRequest):
        key = keys.key(message.person)
        return Case(transfer_id=h.transfer_id, state=NEW, outbound=h.receiver, inbound=h.sender, applicant=h.sender,
                    insurance_type=message.outbound_insurance_type, channel=message.channel,
                    inbound_insurance_type=message.inbound_insurance_type, person_key=key.digest, key_id=key.key_id)
    if isinstance(message, messages_pb2.OutboundNotice):
        key = keys.key(message.person)
        return Case(transfer_id=h.transfer_id, state=NEW, outbound=h.sender, inbound=h.receiver, applicant=h.sender,
                    insurance_type=message.insurance_type, inbound_insurance_type=message.inbound_insurance_type,
                    person_key=key.digest, key_id=key.key_id)
    raise _violation("CASE_NOT_OPENED",
                     f"transfer {h.transfer_id} has no case yet: a transfer request or an outbound notice opens it",
                     None, event=event.value)


def _side(case: Case, sender: str, receiver: str) -> Side:
    if (sender, receiver) == (case.outbound, case.inbound):
        return Side.OUTBOUND
    if (sender, receiver) == (case.inbound, case.outbound):
        return Side.INBOUND
    raise _violation("PARTIES_MISMATCH",
                     f"case {case.transfer_id} is between outbound {case.outbound} and inbound {case.inbound}, "
                     f"not {sender} → {receiver}", case, sender=sender, receiver=receiver)


def _guard_holds(case: Case, guard: Guard | None, side: Side, policies: Policies) -> bool:
    balance = case.balance_fen or 0
    if guard is Guard.FUNDS_EXPECTED:
        return case.funds_expected
    if guard is Guard.NO_FUNDS_EXPECTED:
        return not case.funds_expected
    if guard in (Guard.NOT_REVIEWED, Guard.REVIEWED):  # the outbound region's own practice
        reviewed = policy_of(policies, case.outbound).reviews(balance)
        return case.funds_expected and reviewed == (guard is Guard.REVIEWED)
    if guard is Guard.BY_APPLICANT:
        return (case.outbound if side is Side.OUTBOUND else case.inbound) == case.applicant
    if guard in (Guard.AUTOMATIC, Guard.APPLIED):
        return (case.channel == AUTOMATIC) == (guard is Guard.AUTOMATIC)
    return True


def _transition(case: Case, event: Event, side: Side, policies: Policies) -> Transition:
    candidates = [t for t in TRANSITIONS if t.event is event and t.side is side and case.state in t.sources]
    for t in candidates:
        if _guard_holds(case, t.guard, side, policies):
            return t
    if event is Event.FUND_TRANSFER and case.fund_message_id is not None:
        raise _violation("FUND_TRANSFER_ALREADY_ACCEPTED", f"case {case.transfer_id} already has its fund transfer",
                         case)
    if event is Event.FUND_TRANSFER and candidates:
        if case.insurance_type != EMPLOYEE:
            rule = "NO_FUNDS_FOR_RESIDENT_INSURANCE"
        elif case.inbound_insurance_type not in (EMPLOYEE, UNSPECIFIED):
            rule = "NO_FUNDS_ACROSS_SCHEMES"
        else:
            rule = "NO_FUNDS_FOR_ZERO_BALANCE"
        raise _violation(rule, f"case {case.transfer_id} moves no personal-account funds", case)
    if event is Event.WITHDRAWAL and candidates:
        raise _violation("WITHDRAWAL_NOT_BY_APPLICANT",
                         f"only the applicant's side ({case.applicant}) may withdraw case {case.transfer_id}", case)
    if event is Event.WITHDRAWAL and case.fund_message_id is not None:
        raise _violation("WITHDRAWAL_AFTER_FUNDS",
                         f"case {case.transfer_id} can no longer be withdrawn: its funds have moved", case)
    if event in (Event.REVIEW_APPROVED, Event.REVIEW_REJECTED):
        raise _violation("NOT_HELD_FOR_REVIEW", f"case {case.transfer_id} has no fund transfer held for review", case)
    if event is Event.OPERATOR_CLOSURE:
        raise _violation("CASE_NOT_UNANSWERED", f"case {case.transfer_id} is neither a request waiting for its "
                         "outbound notice nor an automatic case waiting for its blockers: only those may be closed by "
                         "an operator", case)
    if candidates:  # the state fits, a guard does not: funds are awaited or not expected
        raise _violation("FUNDS_NOT_YET_SENT" if case.funds_expected else "NO_FUNDS_EXPECTED",
                         f"{event.value} does not fit case {case.transfer_id}: funds expected is "
                         f"{case.funds_expected}", case, event=event.value)
    raise _violation("STATE_FORBIDS_MESSAGE",
                     f"{side.value} side may not send {event.value} while case {case.transfer_id} is "
                     f"{state_name(case.state)}", case, event=event.value, side=side.value)


def _check_one_open_case(case: Case, index: CaseIndex, person: tuple[PersonKey, ...]) -> None:
    """One open case per person and outbound agency. The refusal names the open case in its
    metadata (`open_transfer_id`), which the gateway's edge keeps only for a caller that is a side
    of that case (gateway.service.exchange): whether the person has an open case there is what
    the rule is about; which case, and between whom, is its sides' business."""
    other = index.open_case_for(person, case.outbound)
    if other is not None and other != case.transfer_id:
        raise _violation("CASE_ALREADY_OPEN",
                         f"this person already has an open case at outbound agency {case.outbound}: one case at a "
                         "time per person and outbound agency", case, open_transfer_id=other)


def _covered(case: Case, insurance: int, what: str) -> None:
    if insurance not in COVERED_INSURANCE:
        raise _violation("INSURANCE_TYPE_NOT_COVERED",
                         f"{what} {insurance} is not covered by the transfer measures (310 or 390 only)", case)


# What a message's content adds to its case: the case fields it sets, and the status its fund
# movement moves to (None: unchanged).
_Facts: TypeAlias = tuple[dict[str, Any], FundStatus | None]
_NO_FACTS: Final[_Facts] = ({}, None)


def _same_inbound_insurance(case: Case, stated: InsuranceType, what: str) -> None:
    """A message that states the inbound insurance type must state the case's: it is fixed when the
    case opens, because it decides whether money moves."""
    if stated and case.inbound_insurance_type and stated != case.inbound_insurance_type:
        raise _violation("INSURANCE_TYPE_MISMATCH",
                         f"{what}'s inbound insurance type {_insurance_name(stated)} is not the case's "
                         f"{_insurance_name(case.inbound_insurance_type)}, fixed when it opened", case,
                         field="inbound_insurance_type")


def _check_content(case: Case, message: CaseMessage, event: Event, policies: Policies, keys: PersonKeys, *,
                   opening: bool) -> _Facts:
    """Rules comparing the message with the case so far; returns the facts it adds."""
    if isinstance(message, messages_pb2.TransferRequest):
        _covered(case, message.outbound_insurance_type, "outbound insurance type")
        _covered(case, message.inbound_insurance_type, "inbound insurance type")
        return _NO_FACTS
    if isinstance(message, messages_pb2.OutboundNotice):
        return _check_notice(case, message, event, keys, opening=opening)
    if isinstance(message, messages_pb2.InformationTable):
        return _check_table(case, message, keys)
    if isinstance(message, messages_pb2.FundTransfer):
        if message.amount_fen != case.balance_fen:
            raise _violation("FUND_AMOUNT_MISMATCH",
                             f"amount_fen {message.amount_fen} is not the table's balance {case.balance_fen}", case)
        return {"fund_message_id": message.header.message_id}, None
    if isinstance(message, messages_pb2.FundReturn):
        if message.returns_message_id != case.fund_message_id:
            raise _violation("RETURN_TARGET_UNKNOWN", f"returns_message_id {message.returns_message_id} is not the "
                             f"fund transfer of case {case.transfer_id}", case)
        if message.amount_fen != case.balance_fen:
            raise _violation("RETURN_AMOUNT_MISMATCH", f"amount_fen {message.amount_fen} is not the amount "
                             f"transferred {case.balance_fen}", case)
        return {}, FundStatus.RETURNING
    if isinstance(message, messages_pb2.Withdrawal | automatic_pb2.BlockerResolution):
        return _NO_FACTS
    return _check_acknowledgement(case, message, event, policies)


def _check_notice(case: Case, message: messages_pb2.OutboundNotice, event: Event, keys: PersonKeys, *,
                  opening: bool) -> _Facts:
    _covered(case, message.insurance_type, "insurance type")
    accepted = event is Event.NOTICE_ACCEPTED
    if opening:
        if accepted and not message.inbound_insurance_type:
            raise _violation("INBOUND_INSURANCE_TYPE_REQUIRED",
                             "an accepted outbound notice that opens a case must state inbound_insurance_type: it "
                             "decides whether the balance moves", case, field="inbound_insurance_type")
        if message.inbound_insurance_type:
            _covered(case, message.inbound_insurance_type, "inbound insurance type")
    else:
        if not _is_case_person(case, message.person, keys):
            raise _violation("PERSON_MISMATCH", "the notice's person is not the request's person", case)
        if message.insurance_type != case.insurance_type:
            raise _violation("INSURANCE_TYPE_MISMATCH", f"the notice's insurance type "
                             f"{_insurance_name(message.insurance_type)} is not the request's "
                             f"{_insurance_name(case.insurance_type)}", case, field="insurance_type")
        _same_inbound_insurance(case, message.inbound_insurance_type, "the notice")
    if accepted and message.retired and message.insurance_type == EMPLOYEE:
        raise _violation("RETIRED_NOT_COVERED",
                         "retired employees are not covered: refuse the case with REASON_CODE_RETIRED", case)
    return {"suspension_date": _iso(message.suspension_date) if accepted else ""}, None


def _check_table(case: Case, message: messages_pb2.InformationTable, keys: PersonKeys) -> _Facts:
    if not _is_case_person(case, message.person, keys):
        raise _violation("PERSON_MISMATCH", "the table's person is not the notice's person", case)
    if message.insurance_type != case.insurance_type:
        raise _violation("INSURANCE_TYPE_MISMATCH", f"the table's insurance type "
                         f"{_insurance_name(message.insurance_type)} is not the notice's "
                         f"{_insurance_name(case.insurance_type)}", case, field="insurance_type")
    _same_inbound_insurance(case, message.inbound_insurance_type, "the table")
    if _iso(message.suspension_date) != case.suspension_date:
        raise _violation("SUSPENSION_DATE_MISMATCH",
                         f"the table's suspension date is not the notice's {case.suspension_date}", case)
    inbound = case.inbound_insurance_type or message.inbound_insurance_type
    if case.insurance_type == EMPLOYEE and inbound not in (EMPLOYEE, UNSPECIFIED):
        if message.account_balance_fen:
            raise _violation("BALANCE_STAYS_AT_OUTBOUND", "employee → resident insurance: the personal-account "
                             "balance stays with the person at the outbound side; report it as "
                             "account_balance_retained_fen, with account_balance_fen 0", case,
                             field="account_balance_fen")
    elif message.account_balance_retained_fen:
        raise _violation("BALANCE_RETAINED_ONLY_ACROSS_SCHEMES", "a balance is retained at the outbound side only "
                         "from employee to resident insurance; here it moves as account_balance_fen", case,
                         field="account_balance_retained_fen")
    suspension = dt.date.fromisoformat(case.suspension_date)
    run = insured_run(_periods(message.periods), suspension_month=month_index(suspension.year, suspension.month))
    facts: dict[str, Any] = {"balance_fen": message.account_balance_fen,
                             "retained_fen": message.account_balance_retained_fen, "insured_months": run}
    if not case.inbound_insurance_type and message.inbound_insurance_type:
        facts["inbound_insurance_type"] = message.inbound_insurance_type
    return facts, None


def _periods(periods: Iterable[messages_pb2.ContributionPeriod]) -> list[Period]:
    """The table's periods as month indices (validation has checked them)."""
    return [Period(month_index(p.first_month.year, p.first_month.month),
                   month_index(p.last_month.year, p.last_month.month), p.months_paid + p.months_deemed)
            for p in periods]


def _check_acknowledgement(case: Case, message: messages_pb2.Acknowledgement, event: Event,
                           policies: Policies) -> _Facts:
    answered = case.messages.get(message.answers_message_id)
    if answered is None or answered.side is _side(case, message.header.sender, message.header.receiver):
        raise _violation("ACK_TARGET_UNKNOWN", f"answers_message_id {message.answers_message_id} is no message of "
                         f"case {case.transfer_id} sent to this side", case)
    wanted = _ACK_ANSWERS.get(event)
    if wanted is not None and answered.kind != wanted:
        raise _violation("ACK_TARGET_WRONG_KIND",
                         f"{event.value} must answer the {envelope_pb2.MessageKind.Name(wanted)}", case)
    if event is Event.ACK_ACCEPTED:
        return _check_acceptance(case, message, policies), None
    if event is Event.ACK_FUNDS_CREDITED:
        if message.credited_amount_fen != case.balance_fen:
            raise _violation("CREDITED_AMOUNT_MISMATCH", f"credited_amount_fen {message.credited_amount_fen} is not "
                             f"the amount sent {case.balance_fen}", case)
        return {}, FundStatus.CREDITED
    if event is Event.ACK_REJECTED and case.state == _S.CASE_STATE_FUNDS_SENT:
        return {}, FundStatus.RETURN_DUE
    if event is Event.ACK_FUNDS_RETURN_RECEIVED:
        return {}, FundStatus.RETURNED
    return _NO_FACTS


def _check_acceptance(case: Case, message: messages_pb2.Acknowledgement, policies: Policies) -> dict[str, Any]:
    """The inbound acceptance: the scheme it enrolled the person in, and when."""
    _covered(case, message.inbound_insurance_type, "inbound insurance type")
    _same_inbound_insurance(case, message.inbound_insurance_type, "the acceptance")
    inbound = case.inbound_insurance_type or message.inbound_insurance_type
    enrolled = _iso(message.inbound_enrollment_date)
    if enrolled < case.suspension_date:
        raise _violation("OVERLAPPING_COVERAGE", f"enrolled at the inbound side on {enrolled}, before the suspension "
                         f"on {case.suspension_date}: the same months would be insured twice (不得重复参保); "
                         "reject the table with REASON_CODE_DUPLICATE_ENROLLMENT", case,
                         field="inbound_enrollment_date")
    if case.insurance_type == RESIDENT and inbound == RESIDENT and enrolled[:4] <= case.suspension_date[:4]:
        raise _violation("RESIDENT_SAME_YEAR", f"resident → resident insurance within {case.suspension_date[:4]}: "
                         "the transfer is handled after the person enrolls for the next year at the inbound side; "
                         "reject the table with REASON_CODE_RESIDENT_SAME_YEAR", case,
                         field="inbound_enrollment_date")
    return {"inbound_insurance_type": inbound, "enrollment_date": enrolled,
            "waiting_period_months": policy_of(policies, case.inbound).waiting_period_months}


def mermaid() -> str:
    """The state diagram of TRANSITIONS in Mermaid syntax (docs/integrating.md embeds it)."""
    lines = ["stateDiagram-v2"]
    for t in TRANSITIONS:
        if t.target is None:
            continue
        label = t.event.value.replace("_", " ") + f" ({t.side.value})" + (f" [{t.guard.value}]" if t.guard else "")
        for source in sorted(t.sources):
            lines.append(f"    {'[*]' if source == NEW else state_name(source)} --> {state_name(t.target)}: {label}")
    for state in sorted(CLOSED_STATES - {_S.CASE_STATE_EXPIRED}):  # no longer reached
        lines.append(f"    {state_name(state)} --> [*]")
    return "\n".join(lines)
