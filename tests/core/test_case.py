"""The case state machine, every (state, event, side, funds) combination against a table written
from the rules (not derived from gateway.core.case.TRANSITIONS, so the two can disagree)."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from clients import automatic, builders
from clients.scenario import CasePlan, outbound_messages
from gateway.core import case as rules
from gateway.core.case import Case, Event, FundStatus, MessageRef, Side
from gateway.core.errors import RuleViolation
from gateway.core.messages import BusinessMessage
from gateway.core.personkeys import PersonKey, PersonKeys
from mitransfer.protocol.registry import RegionPolicy
from mitransfer.v1 import envelope_pb2, messages_pb2, tracking_pb2, types_pb2

S = tracking_pb2
Ack = messages_pb2.Acknowledgement
EMPLOYEE, RESIDENT = types_pb2.INSURANCE_TYPE_EMPLOYEE_BASIC, types_pb2.INSURANCE_TYPE_RESIDENT_BASIC
# The outbound region of every World (Nanjing, in Jiangsu) reviews transfers above 10,000 yuan.
POLICIES = {"32": RegionPolicy("32", review_above_fen=1_000_000)}
KEYS = PersonKeys({"test-1": bytes(range(32))}, "test-1")
OPEN = (S.CASE_STATE_OPENED, S.CASE_STATE_OUTBOUND_ACCEPTED, S.CASE_STATE_TABLE_SENT, S.CASE_STATE_FUNDS_SENT,
        S.CASE_STATE_HELD_FOR_REVIEW, S.CASE_STATE_INBOUND_ACCEPTED, S.CASE_STATE_FUNDS_CREDITED,
        S.CASE_STATE_AWAITING_FUND_RETURN, S.CASE_STATE_FUNDS_RETURNED, S.CASE_STATE_AWAITING_RESOLUTION)
CLOSED = (S.CASE_STATE_COMPLETED, S.CASE_STATE_REFUSED, S.CASE_STATE_INBOUND_REJECTED, S.CASE_STATE_WITHDRAWN,
          S.CASE_STATE_REVIEW_REJECTED, S.CASE_STATE_EXPIRED, S.CASE_STATE_CLOSED_BY_OPERATOR)
MESSAGE_EVENTS = [e for e in Event if e not in (Event.REVIEW_APPROVED, Event.REVIEW_REJECTED,
                                                 Event.OPERATOR_CLOSURE, Event.AUTOMATIC_REQUEST)]

# (state, event, side, funds expected) → next state. Everything absent is refused. In these
# worlds the application was lodged at the inbound side for OPENED (and AWAITING_RESOLUTION)
# cases and at the outbound side otherwise, and the balance (88,800 fen) is below the review
# threshold. They are applied cases: blockers close them (automatic cases: test_blockers_…).
ALLOWED = {
    **{(S.CASE_STATE_OPENED, Event.NOTICE_BLOCKED, Side.OUTBOUND, funds): S.CASE_STATE_REFUSED
       for funds in (True, False)},
    **{(S.CASE_STATE_AWAITING_RESOLUTION, event, side, funds): state
       for (event, side, state) in ((Event.BLOCKER_RESOLVED, Side.OUTBOUND, S.CASE_STATE_OPENED),
                                    (Event.NOTICE_REFUSED, Side.OUTBOUND, S.CASE_STATE_REFUSED),
                                    (Event.WITHDRAWAL, Side.INBOUND, S.CASE_STATE_WITHDRAWN))
       for funds in (True, False)},
    (S.CASE_STATE_OPENED, Event.NOTICE_ACCEPTED, Side.OUTBOUND, True): S.CASE_STATE_OUTBOUND_ACCEPTED,
    (S.CASE_STATE_OPENED, Event.NOTICE_ACCEPTED, Side.OUTBOUND, False): S.CASE_STATE_OUTBOUND_ACCEPTED,
    (S.CASE_STATE_OPENED, Event.NOTICE_REFUSED, Side.OUTBOUND, True): S.CASE_STATE_REFUSED,
    (S.CASE_STATE_OPENED, Event.NOTICE_REFUSED, Side.OUTBOUND, False): S.CASE_STATE_REFUSED,
    (S.CASE_STATE_OPENED, Event.WITHDRAWAL, Side.INBOUND, True): S.CASE_STATE_WITHDRAWN,
    (S.CASE_STATE_OPENED, Event.WITHDRAWAL, Side.INBOUND, False): S.CASE_STATE_WITHDRAWN,
    (S.CASE_STATE_OUTBOUND_ACCEPTED, Event.INFORMATION_TABLE, Side.OUTBOUND, True): S.CASE_STATE_TABLE_SENT,
    (S.CASE_STATE_OUTBOUND_ACCEPTED, Event.INFORMATION_TABLE, Side.OUTBOUND, False): S.CASE_STATE_TABLE_SENT,
    (S.CASE_STATE_OUTBOUND_ACCEPTED, Event.WITHDRAWAL, Side.OUTBOUND, True): S.CASE_STATE_WITHDRAWN,
    (S.CASE_STATE_OUTBOUND_ACCEPTED, Event.WITHDRAWAL, Side.OUTBOUND, False): S.CASE_STATE_WITHDRAWN,
    (S.CASE_STATE_TABLE_SENT, Event.WITHDRAWAL, Side.OUTBOUND, True): S.CASE_STATE_WITHDRAWN,
    (S.CASE_STATE_TABLE_SENT, Event.WITHDRAWAL, Side.OUTBOUND, False): S.CASE_STATE_WITHDRAWN,
    (S.CASE_STATE_TABLE_SENT, Event.FUND_TRANSFER, Side.OUTBOUND, True): S.CASE_STATE_FUNDS_SENT,
    (S.CASE_STATE_TABLE_SENT, Event.ACK_ACCEPTED, Side.INBOUND, False): S.CASE_STATE_INBOUND_ACCEPTED,
    (S.CASE_STATE_FUNDS_SENT, Event.ACK_ACCEPTED, Side.INBOUND, True): S.CASE_STATE_INBOUND_ACCEPTED,
    (S.CASE_STATE_TABLE_SENT, Event.ACK_REJECTED, Side.INBOUND, True): S.CASE_STATE_INBOUND_REJECTED,
    (S.CASE_STATE_TABLE_SENT, Event.ACK_REJECTED, Side.INBOUND, False): S.CASE_STATE_INBOUND_REJECTED,
    (S.CASE_STATE_FUNDS_SENT, Event.ACK_REJECTED, Side.INBOUND, True): S.CASE_STATE_AWAITING_FUND_RETURN,
    (S.CASE_STATE_AWAITING_FUND_RETURN, Event.FUND_RETURN, Side.INBOUND, True): S.CASE_STATE_FUNDS_RETURNED,
    (S.CASE_STATE_FUNDS_RETURNED, Event.ACK_FUNDS_RETURN_RECEIVED, Side.OUTBOUND, True): S.CASE_STATE_INBOUND_REJECTED,
    (S.CASE_STATE_INBOUND_ACCEPTED, Event.ACK_FUNDS_CREDITED, Side.INBOUND, True): S.CASE_STATE_FUNDS_CREDITED,
    (S.CASE_STATE_FUNDS_CREDITED, Event.ACK_TRANSFER_IN_COMPLETED, Side.INBOUND, True): S.CASE_STATE_COMPLETED,
    (S.CASE_STATE_INBOUND_ACCEPTED, Event.ACK_TRANSFER_IN_COMPLETED, Side.INBOUND, False): S.CASE_STATE_COMPLETED,
    **{(state, Event.ACK_RECEIVED, side, funds): state
       for state in OPEN for side in (Side.OUTBOUND, Side.INBOUND) for funds in (True, False)},
}

_STATES_WITH_FUNDS_ONLY = {S.CASE_STATE_FUNDS_SENT, S.CASE_STATE_FUNDS_CREDITED, S.CASE_STATE_HELD_FOR_REVIEW,
                           S.CASE_STATE_AWAITING_FUND_RETURN, S.CASE_STATE_FUNDS_RETURNED}


class NoOtherCases:
    def open_case_for(self, person: tuple[PersonKey, ...], outbound: str) -> str | None:
        return None


class OtherCase:
    def __init__(self, transfer_id: str) -> None:
        self.transfer_id = transfer_id

    def open_case_for(self, person: tuple[PersonKey, ...], outbound: str) -> str | None:
        return self.transfer_id


def apply(case: Case | None, message: BusinessMessage, index: object = None) -> Case:
    return rules.apply(case, message, policies=POLICIES, index=index or NoOtherCases(), keys=KEYS).case  # type: ignore[arg-type]


def transfer_request(plan: CasePlan) -> messages_pb2.TransferRequest:
    r = messages_pb2.TransferRequest(
        person=plan.person, outbound_insurance_type=plan.insurance_type, inbound_insurance_type=plan.insurance_type,
        channel=messages_pb2.TransferRequest.CHANNEL_ONLINE)
    r.header.CopyFrom(builders.header(plan.route.inbound, plan.route.outbound, plan.route.transfer_id))
    return r


class World:
    """One planned case and all of its possible messages, so any combination can be built."""

    def __init__(self, funds: bool) -> None:
        self.plan = CasePlan.synthetic("320100", "330100", insurance_type=EMPLOYEE if funds else RESIDENT,
                                       balance_fen=88_800 if funds else 0, seed=3)
        msgs = outbound_messages(self.plan) if funds else [
            *outbound_messages(self.plan),
            builders.fund_transfer(self.plan.route, 100, builders.fund_account("320100", receiving=False),
                                   builders.fund_account("330100", receiving=True), "X1", builders.today_in_china()),
        ]
        self.notice, self.table, self.fund = msgs
        self.refused = builders.outbound_notice_refused(self.plan.route, self.plan.person, self.plan.insurance_type,
                                                        [builders.reason(types_pb2.REASON_CODE_NOT_SUSPENDED)])
        self.blocked = builders.outbound_notice_refused(self.plan.route, self.plan.person, self.plan.insurance_type,
                                                        [builders.reason(types_pb2.REASON_CODE_ARREARS)])
        self.resolution = automatic.blocker_resolution(self.plan.route, [types_pb2.REASON_CODE_ARREARS])
        self.request = transfer_request(self.plan)
        self.withdrawal = messages_pb2.Withdrawal()
        self.funds = funds
        # The inbound side's "received" for the notice: something the outbound side can answer.
        self.inbound_ack = builders.acknowledgement(self.notice.header, Ack.STATUS_RECEIVED)
        # The inbound side's return of the funds, after rejecting the case (funds worlds only).
        self.fund_return = builders.fund_return(self.fund, builders.fund_account("330100", receiving=False),
                                                builders.fund_account("320100", receiving=True), "RET1",
                                                builders.today_in_china())

    def case(self, state: int) -> Case:
        opened = apply(None, self.notice)
        refs = {
            self.notice.header.message_id: MessageRef(envelope_pb2.MESSAGE_KIND_OUTBOUND_NOTICE, Side.OUTBOUND),
            self.table.header.message_id: MessageRef(envelope_pb2.MESSAGE_KIND_INFORMATION_TABLE, Side.OUTBOUND),
            self.fund.header.message_id: MessageRef(envelope_pb2.MESSAGE_KIND_FUND_TRANSFER, Side.OUTBOUND),
            self.inbound_ack.header.message_id: MessageRef(envelope_pb2.MESSAGE_KIND_ACKNOWLEDGEMENT, Side.INBOUND),
        }
        if state == S.CASE_STATE_FUNDS_RETURNED:
            refs[self.fund_return.header.message_id] = MessageRef(envelope_pb2.MESSAGE_KIND_FUND_RETURN, Side.INBOUND)
        funds_in = self.funds and state in (S.CASE_STATE_FUNDS_SENT, S.CASE_STATE_HELD_FOR_REVIEW,
                                            S.CASE_STATE_INBOUND_ACCEPTED, S.CASE_STATE_FUNDS_CREDITED,
                                            S.CASE_STATE_COMPLETED, S.CASE_STATE_AWAITING_FUND_RETURN,
                                            S.CASE_STATE_FUNDS_RETURNED)
        return replace(opened, state=state, balance_fen=self.plan.balance_fen,
                       applicant=opened.inbound if state in (S.CASE_STATE_OPENED, S.CASE_STATE_AWAITING_RESOLUTION)
                       else opened.outbound,
                       fund_message_id=self.fund.header.message_id if funds_in else None, messages=refs)

    def message(self, event: Event, side: Side) -> BusinessMessage:
        by_outbound: dict[Event, BusinessMessage] = {
            Event.NOTICE_ACCEPTED: self.notice, Event.NOTICE_REFUSED: self.refused,
            Event.INFORMATION_TABLE: self.table, Event.FUND_TRANSFER: self.fund,
            Event.NOTICE_BLOCKED: self.blocked, Event.BLOCKER_RESOLVED: self.resolution,
        }
        if event is Event.TRANSFER_REQUEST:
            return self.request if side is Side.INBOUND else _swapped(self.request)
        if event is Event.FUND_RETURN:
            return self.fund_return if side is Side.INBOUND else _swapped(self.fund_return)
        if event is Event.WITHDRAWAL:
            w = messages_pb2.Withdrawal(text="moved again")
            sender, receiver = ((self.plan.route.outbound, self.plan.route.inbound) if side is Side.OUTBOUND
                                else (self.plan.route.inbound, self.plan.route.outbound))
            w.header.CopyFrom(builders.header(sender, receiver, self.plan.route.transfer_id))
            return w
        if event in by_outbound:
            m = by_outbound[event]
            return m if side is Side.OUTBOUND else _swapped(m)
        status = {Event.ACK_RECEIVED: Ack.STATUS_RECEIVED, Event.ACK_ACCEPTED: Ack.STATUS_ACCEPTED,
                  Event.ACK_REJECTED: Ack.STATUS_REJECTED, Event.ACK_FUNDS_CREDITED: Ack.STATUS_FUNDS_CREDITED,
                  Event.ACK_TRANSFER_IN_COMPLETED: Ack.STATUS_TRANSFER_IN_COMPLETED,
                  Event.ACK_FUNDS_RETURN_RECEIVED: Ack.STATUS_FUNDS_RETURN_RECEIVED}[event]
        if side is Side.OUTBOUND:  # the outbound side answers an inbound message
            answering = (self.fund_return.header if event is Event.ACK_FUNDS_RETURN_RECEIVED
                         else self.inbound_ack.header)
        else:
            answering = self.fund.header if event is Event.ACK_FUNDS_CREDITED else self.table.header
        ack = messages_pb2.Acknowledgement(answers_message_id=answering.message_id, status=status)
        ack.header.CopyFrom(builders.header(answering.receiver, answering.sender, answering.transfer_id))
        if status == Ack.STATUS_REJECTED:
            ack.reasons.add(code=types_pb2.REASON_CODE_IDENTITY_MISMATCH)
        if status == Ack.STATUS_FUNDS_CREDITED:
            ack.credited_amount_fen = self.plan.balance_fen or 100
        if status == Ack.STATUS_ACCEPTED:
            today = builders.today_in_china()
            ack.inbound_enrollment_date.CopyFrom(types_pb2.Date(year=today.year, month=today.month, day=today.day))
            ack.inbound_insurance_type = self.plan.insurance_type
        return ack


def _swapped(m: BusinessMessage) -> BusinessMessage:
    """The same message sent by the other side."""
    swapped = type(m)()
    swapped.CopyFrom(m)  # type: ignore[arg-type]
    swapped.header.sender, swapped.header.receiver = m.header.receiver, m.header.sender
    return swapped


COMBINATIONS = [
    (state, event, side, funds)
    for state, event, side, funds in itertools.product(OPEN + CLOSED, MESSAGE_EVENTS, (Side.OUTBOUND, Side.INBOUND),
                                                       (True, False))
    if not (state in _STATES_WITH_FUNDS_ONLY and not funds)
]


@pytest.mark.parametrize(("state", "event", "side", "funds"), COMBINATIONS,
                         ids=[f"{rules.state_name(s)}-{e.value}-{d.value}-{'funds' if f else 'nofunds'}"
                              for s, e, d, f in COMBINATIONS])
def test_every_transition(state: int, event: Event, side: Side, funds: bool) -> None:
    world = World(funds)
    message = world.message(event, side)
    expected = ALLOWED.get((state, event, side, funds))
    if expected is None:
        with pytest.raises(RuleViolation) as refused:
            apply(world.case(state), message)
        assert refused.value.reason  # every refusal names its rule ...
        if state in CLOSED:
            assert refused.value.reason == "CASE_CLOSED"
        else:
            assert refused.value.metadata["state"] == rules.state_name(state)  # ... and the state
    else:
        after = apply(world.case(state), message)
        assert after.state == expected
        assert message.header.message_id in after.messages


def test_the_diagram_is_generated_from_the_table() -> None:
    """`scripts/gen_docs.py --check`, run by the suite: the integrators' guide holds the diagram
    of TRANSITIONS and the rulebook's table, and nothing else between their markers."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).parent.parent.parent
    spec = importlib.util.spec_from_file_location("gen_docs", root / "scripts" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    gen_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_docs)
    guide = (root / gen_docs.DOC).read_text(encoding="utf-8")
    assert all(begin in guide and end in guide for doc, begin, end, _ in gen_docs.SECTIONS if doc == gen_docs.DOC)
    assert f"```mermaid\n{rules.mermaid()}\n```" in guide
    assert gen_docs.render(guide) == guide


def test_second_notice_on_an_open_case_is_refused() -> None:
    world = World(True)
    with pytest.raises(RuleViolation) as refused:
        apply(world.case(S.CASE_STATE_OUTBOUND_ACCEPTED), world.notice)
    assert refused.value.reason == "STATE_FORBIDS_MESSAGE"


def test_notice_opens_and_refused_notice_closes() -> None:
    world = World(True)
    opened = apply(None, world.notice)
    assert opened.state == S.CASE_STATE_OUTBOUND_ACCEPTED and (opened.outbound, opened.inbound) == ("320100", "330100")
    refused = builders.outbound_notice_refused(world.plan.route, world.plan.person, EMPLOYEE,
                                               [builders.reason(types_pb2.REASON_CODE_ARREARS)])
    assert apply(None, refused).state == S.CASE_STATE_REFUSED


@pytest.mark.parametrize("first", ["table", "fund"])
def test_only_a_notice_opens_a_case(first: str) -> None:
    world = World(True)
    with pytest.raises(RuleViolation) as refused:
        apply(None, world.table if first == "table" else world.fund)
    assert refused.value.reason == "CASE_NOT_OPENED"


@pytest.mark.parametrize(("field", "reason"), [
    ("person", "PERSON_MISMATCH"), ("insurance", "INSURANCE_TYPE_MISMATCH"), ("date", "SUSPENSION_DATE_MISMATCH"),
])
def test_table_must_match_the_notice(field: str, reason: str) -> None:
    world = World(True)
    table = messages_pb2.InformationTable()
    table.CopyFrom(world.table)  # type: ignore[arg-type]
    if field == "person":
        table.person.certificate_number = builders.sample_person(99).certificate_number
    elif field == "insurance":
        table.insurance_type = RESIDENT
    else:
        table.suspension_date.year -= 1
    with pytest.raises(RuleViolation) as refused:
        apply(world.case(S.CASE_STATE_OUTBOUND_ACCEPTED), table)
    assert refused.value.reason == reason


def test_parties_must_be_the_cases_sides() -> None:
    world = World(True)
    table = messages_pb2.InformationTable()
    table.CopyFrom(world.table)  # type: ignore[arg-type]
    table.header.receiver = "330200"
    with pytest.raises(RuleViolation) as refused:
        apply(world.case(S.CASE_STATE_OUTBOUND_ACCEPTED), table)
    assert refused.value.reason == "PARTIES_MISMATCH"


def test_acknowledgements_must_answer_the_right_message() -> None:
    world = World(True)
    case = world.case(S.CASE_STATE_FUNDS_SENT)
    unknown = world.message(Event.ACK_ACCEPTED, Side.INBOUND)
    assert isinstance(unknown, messages_pb2.Acknowledgement)
    unknown.answers_message_id = builders.new_id()
    with pytest.raises(RuleViolation) as refused:
        apply(case, unknown)
    assert refused.value.reason == "ACK_TARGET_UNKNOWN"
    wrong_kind = world.message(Event.ACK_ACCEPTED, Side.INBOUND)
    assert isinstance(wrong_kind, messages_pb2.Acknowledgement)
    wrong_kind.answers_message_id = world.fund.header.message_id
    with pytest.raises(RuleViolation) as refused:
        apply(case, wrong_kind)
    assert refused.value.reason == "ACK_TARGET_WRONG_KIND"
    short = world.message(Event.ACK_FUNDS_CREDITED, Side.INBOUND)
    assert isinstance(short, messages_pb2.Acknowledgement)
    short.credited_amount_fen -= 1
    with pytest.raises(RuleViolation) as refused:
        apply(world.case(S.CASE_STATE_INBOUND_ACCEPTED), short)
    assert refused.value.reason == "CREDITED_AMOUNT_MISMATCH"


def test_zero_balance_employee_case_moves_no_funds() -> None:
    world = World(True)
    case = replace(world.case(S.CASE_STATE_TABLE_SENT), balance_fen=0)
    with pytest.raises(RuleViolation) as refused:
        apply(case, world.fund)
    assert refused.value.reason == "NO_FUNDS_FOR_ZERO_BALANCE"


def test_large_fund_transfer_is_held_then_reviewed() -> None:
    world = World(True)
    case = replace(world.case(S.CASE_STATE_TABLE_SENT), balance_fen=2_000_000)
    fund = messages_pb2.FundTransfer()
    fund.CopyFrom(world.fund)  # type: ignore[arg-type]
    fund.amount_fen = 2_000_000
    held = rules.apply(case, fund, policies=POLICIES, index=NoOtherCases(), keys=KEYS)
    assert held.case.state == S.CASE_STATE_HELD_FOR_REVIEW and held.hold_delivery
    assert held.fund_status is FundStatus.HELD
    at_threshold = rules.apply(replace(case, balance_fen=1_000_000), replace_amount(fund, 1_000_000),
                               policies=POLICIES, index=NoOtherCases(), keys=KEYS)
    assert at_threshold.case.state == S.CASE_STATE_FUNDS_SENT and not at_threshold.hold_delivery
    approved = rules.review(held.case, approved=True, message_id="d1")
    assert approved.case.state == S.CASE_STATE_FUNDS_SENT
    assert approved.release_message == fund.header.message_id and approved.fund_status is FundStatus.SENT
    rejected = rules.review(held.case, approved=False, message_id="d2")
    assert rejected.case.state == S.CASE_STATE_REVIEW_REJECTED and rejected.case.closed
    assert rejected.cancel_message == fund.header.message_id and rejected.fund_status is FundStatus.REJECTED
    # Decided already: the same decision again is the first one, the other is refused.
    assert rules.review(approved.case, approved=True, message_id="d3").replay_of == "d1"
    assert rules.review(rejected.case, approved=False, message_id="d3").replay_of == "d2"
    for decided, opposite in ((approved.case, False), (rejected.case, True)):
        with pytest.raises(RuleViolation) as refused:
            rules.review(decided, approved=opposite, message_id="d3")
        assert refused.value.reason == "REVIEW_ALREADY_DECIDED"
    with pytest.raises(RuleViolation) as refused:
        rules.review(case, approved=True, message_id="d4")
    assert refused.value.reason == "NOT_HELD_FOR_REVIEW"
    with pytest.raises(RuleViolation) as refused:
        apply(held.case, world.message(Event.WITHDRAWAL, Side.OUTBOUND))
    assert refused.value.reason == "WITHDRAWAL_AFTER_FUNDS"


def replace_amount(fund: messages_pb2.FundTransfer, amount: int) -> messages_pb2.FundTransfer:
    copy = messages_pb2.FundTransfer()
    copy.CopyFrom(fund)
    copy.amount_fen = amount
    return copy


def test_withdrawal_only_by_the_applicant() -> None:
    world = World(True)
    with pytest.raises(RuleViolation) as refused:
        apply(world.case(S.CASE_STATE_TABLE_SENT), world.message(Event.WITHDRAWAL, Side.INBOUND))
    assert refused.value.reason == "WITHDRAWAL_NOT_BY_APPLICANT"


def test_request_opens_and_the_notice_must_match_it() -> None:
    world = World(True)
    opened = apply(None, world.request)
    assert (opened.state, opened.applicant, opened.outbound, opened.inbound) == (
        S.CASE_STATE_OPENED, "330100", "320100", "330100")
    other = CasePlan.synthetic("320100", "330100", balance_fen=88_800, seed=4)
    notice = messages_pb2.OutboundNotice()
    notice.CopyFrom(world.notice)  # type: ignore[arg-type]
    notice.person.CopyFrom(other.person)
    with pytest.raises(RuleViolation) as refused:
        apply(opened, notice)
    assert refused.value.reason == "PERSON_MISMATCH"
    assert apply(opened, world.notice).state == S.CASE_STATE_OUTBOUND_ACCEPTED


@pytest.mark.parametrize("opener", ["request", "notice"])
def test_one_open_case_per_person_and_outbound_agency(opener: str) -> None:
    world = World(True)
    message = world.request if opener == "request" else world.notice
    with pytest.raises(RuleViolation) as refused:
        apply(None, message, OtherCase("earlier-case"))
    assert refused.value.reason == "CASE_ALREADY_OPEN"
    assert refused.value.metadata["open_transfer_id"] == "earlier-case"
    # A refusal opens nothing, so it needs no check.
    assert apply(None, world.refused, OtherCase("earlier-case")).state == S.CASE_STATE_REFUSED


class Asked:
    """An index that notes every question and answers "no open case"."""

    def __init__(self) -> None:
        self.questions: list[tuple[tuple[PersonKey, ...], str]] = []

    def open_case_for(self, person: tuple[PersonKey, ...], outbound: str) -> str | None:
        self.questions.append((person, outbound))
        return None


@pytest.mark.parametrize("name", ["request", "notice", "refused", "table", "fund", "inbound_ack"])
def test_index_question_is_what_apply_asks_of_a_new_case(name: str) -> None:
    """A store answers `index_question` before deciding, and the decision may ask nothing else."""
    world = World(True)
    message = getattr(world, name)
    asked = Asked()
    try:
        rules.apply(None, message, policies=POLICIES, index=asked, keys=KEYS)
    except RuleViolation as refused:  # only a request or a notice opens a case
        assert refused.reason == "CASE_NOT_OPENED"
    expected = rules.index_question(message, KEYS)
    assert asked.questions == ([] if expected is None else [expected])
    assert (expected is not None) == (name in ("request", "notice"))


@pytest.mark.parametrize("insurance", [types_pb2.INSURANCE_TYPE_CIVIL_SERVANT_SUBSIDY,
                                       types_pb2.INSURANCE_TYPE_MATERNITY])
def test_only_employee_and_resident_insurance_are_covered(insurance: int) -> None:
    world = World(True)
    notice = messages_pb2.OutboundNotice()
    notice.CopyFrom(world.notice)  # type: ignore[arg-type]
    notice.insurance_type = insurance  # type: ignore[assignment]
    with pytest.raises(RuleViolation) as refused:
        apply(None, notice)
    assert refused.value.reason == "INSURANCE_TYPE_NOT_COVERED"


def test_retired_employees_are_not_covered() -> None:
    world = World(True)
    notice = messages_pb2.OutboundNotice()
    notice.CopyFrom(world.notice)  # type: ignore[arg-type]
    notice.retired = True
    with pytest.raises(RuleViolation) as refused:
        apply(None, notice)
    assert refused.value.reason == "RETIRED_NOT_COVERED"


def test_acceptance_records_enrollment_for_continuity() -> None:
    world = World(True)
    after = apply(world.case(S.CASE_STATE_FUNDS_SENT), world.message(Event.ACK_ACCEPTED, Side.INBOUND))
    assert after.enrollment_date == builders.today_in_china().isoformat() and after.inbound_insurance_type == EMPLOYEE


def test_every_rule_is_in_the_rulebook_and_the_integration_guide() -> None:
    """Every reason the case rules and the Admin service raise is a rule of the rulebook, with the
    article it comes from, and the guide's generated table has it."""
    import re
    from pathlib import Path

    from gateway.core.rulebook import RULES

    root = Path(__file__).parent.parent.parent
    source = "".join((root / "gateway" / name).read_text()
                     for name in ("core/case.py", "service/admin.py", "store/index.py", "service/exchange.py"))
    named = set(re.findall(r'_violation\(\s*"([A-Z_]+)"', source))
    named |= set(re.findall(r'RuleViolation\([^;]*?reason="([A-Z_]+)"', source, re.DOTALL))
    index = (root / "gateway" / "store" / "index.py").read_text()  # the index's own NOT_FOUND answers too
    named |= set(re.findall(r'NotFound\([^;]*?reason="([A-Z_]+)"', index, re.DOTALL))
    codes = [rule.code for rule in RULES]
    assert len(codes) == len(set(codes)) and all(rule.source and rule.rule for rule in RULES)
    assert len(named) > 15 and sorted(named - set(codes)) == []
    guide = (root / "docs" / "integrating.md").read_text(encoding="utf-8")
    assert [code for code in codes if f"| `{code}` |" not in guide] == []


@pytest.mark.parametrize("state", OPEN + CLOSED)
def test_an_operator_closes_only_an_unanswered_request_or_a_case_waiting_for_its_blockers(state: int) -> None:
    world = World(True)
    if state in (S.CASE_STATE_OPENED, S.CASE_STATE_AWAITING_RESOLUTION):
        after = rules.close(world.case(state), message_id="c1")
        assert after.case.state == S.CASE_STATE_CLOSED_BY_OPERATOR and after.case.closed
        assert rules.close(after.case, message_id="c2").replay_of == "c1"  # closing again: the first closure
    else:
        with pytest.raises(RuleViolation) as refused:
            rules.close(world.case(state), message_id="c1")
        assert refused.value.reason == ("CASE_CLOSED" if state in CLOSED else "CASE_NOT_UNANSWERED")


@pytest.mark.parametrize(("policies", "held"), [
    ({}, False),                                                                   # none: the national default
    ({"32": RegionPolicy("32", review_above_fen=1_000_000)}, True),                # the outbound province's
    ({"32": RegionPolicy("32", review_above_fen=1_000_000),
      "320100": RegionPolicy("320100")}, False),                                    # the region's own wins
    ({"33": RegionPolicy("33", review_above_fen=1_000_000)}, False),               # the inbound side's is not asked
    ({"320100": RegionPolicy("320100", review_above_fen=1_999_999)}, True),
    ({"320100": RegionPolicy("320100", review_above_fen=2_000_000)}, False),       # above, not at
], ids=["no-policy", "province", "region-over-province", "inbound-policy", "just-above", "at-threshold"])
def test_whether_a_transfer_is_held_is_the_outbound_regions_policy(policies: dict[str, RegionPolicy],
                                                                  held: bool) -> None:
    world = World(True)
    case = replace(world.case(S.CASE_STATE_TABLE_SENT), balance_fen=2_000_000)
    decision = rules.apply(case, replace_amount(world.fund, 2_000_000), policies=policies, index=NoOtherCases(),
                           keys=KEYS)
    assert decision.hold_delivery is held
    assert decision.case.state == (S.CASE_STATE_HELD_FOR_REVIEW if held else S.CASE_STATE_FUNDS_SENT)


def _automatic(world: World) -> tuple[messages_pb2.TransferRequest, Case]:
    request = transfer_request(world.plan)
    request.channel = messages_pb2.TransferRequest.CHANNEL_AUTOMATIC
    decision = rules.open_automatic(None, request, message_id="auto-1", index=NoOtherCases(), keys=KEYS)
    return request, decision.case


def test_the_gateway_opens_an_automatic_case_as_if_the_person_applied_at_the_inbound_side() -> None:
    world = World(True)
    _, case = _automatic(world)
    assert (case.state, case.channel, case.applicant, case.outbound, case.inbound) == (
        S.CASE_STATE_OPENED, messages_pb2.TransferRequest.CHANNEL_AUTOMATIC, "330100", "320100", "330100")
    assert case.messages == {"auto-1": MessageRef(envelope_pb2.MESSAGE_KIND_AUTOMATIC_TRANSFER_REQUEST, Side.INBOUND)}
    # The outbound side answers it as any request: "received" for the gateway's request, then its notice.
    received = builders.acknowledgement(builders.header("330100", "320100", case.transfer_id), Ack.STATUS_RECEIVED)
    received.answers_message_id = "auto-1"
    received.header.sender, received.header.receiver = "320100", "330100"
    assert apply(case, received).state == S.CASE_STATE_OPENED
    assert apply(case, world.notice).state == S.CASE_STATE_OUTBOUND_ACCEPTED
    # The inbound side, the applicant, may withdraw it.
    assert apply(case, world.message(Event.WITHDRAWAL, Side.INBOUND)).state == S.CASE_STATE_WITHDRAWN


def test_an_automatic_case_opens_once_and_never_beside_an_open_case() -> None:
    world = World(True)
    request, case = _automatic(world)
    with pytest.raises(RuleViolation) as exists:
        rules.open_automatic(case, request, message_id="auto-2", index=NoOtherCases(), keys=KEYS)
    assert exists.value.reason == "CASE_EXISTS"
    with pytest.raises(RuleViolation) as busy:
        rules.open_automatic(None, request, message_id="auto-2", index=OtherCase("applied"), keys=KEYS)
    assert (busy.value.reason, busy.value.metadata["open_transfer_id"]) == ("CASE_ALREADY_OPEN", "applied")


@pytest.mark.parametrize("state", [*OPEN, *CLOSED])
@pytest.mark.parametrize("name", ["table", "fund", "inbound_ack", "withdrawal"])
def test_a_sender_that_is_no_side_of_the_case_learns_nothing_of_it(name: str, state: int) -> None:
    """From Anhui (340100), naming a Jiangsu → Zhejiang case in any state: the refusal is the one a
    transfer id never seen gets, word for word, with nothing of the case's sides or state."""
    world = World(True)
    case = world.case(state)
    message = getattr(world, name) if name != "withdrawal" else world.message(Event.WITHDRAWAL, Side.INBOUND)
    message.header.sender = "340100"
    with pytest.raises(RuleViolation) as existing:
        apply(case, message)
    with pytest.raises(RuleViolation) as unseen:
        apply(None, message)
    assert (existing.value.reason, existing.value.message, existing.value.metadata) == (
        unseen.value.reason, unseen.value.message, unseen.value.metadata) and unseen.value.reason == "CASE_NOT_OPENED"
    told = " ".join((existing.value.message, *existing.value.metadata.values()))
    assert "320100" not in told and "330100" not in told and existing.value.metadata["state"] == "NEW"


@pytest.mark.parametrize("name", ["request", "notice", "refused"])
def test_a_message_that_would_open_a_case_under_a_taken_id_says_only_that(name: str) -> None:
    world = World(True)
    case = world.case(S.CASE_STATE_TABLE_SENT)  # before the notice it is made from is changed
    message = getattr(world, name)
    message.header.sender = "340100"
    with pytest.raises(RuleViolation) as refused:
        apply(case, message)
    assert refused.value.reason == "TRANSFER_ID_IN_USE"
    assert refused.value.metadata == {"rule": "TRANSFER_ID_IN_USE", "transfer_id": world.plan.route.transfer_id}
    assert "320100" not in refused.value.message and "TABLE_SENT" not in refused.value.message



def test_blockers_keep_an_automatic_case_waiting_until_they_are_resolved() -> None:
    """Refused only for blockers, an automatic case waits (an applied one closes: the table above);
    it resumes with the outbound side's resolution, with no new application, and is then answered
    as any request. A refusal for another reason ends it, waiting or not."""
    world = World(True)
    _, case = _automatic(world)
    waiting = apply(case, world.blocked)
    assert waiting.state == S.CASE_STATE_AWAITING_RESOLUTION and not waiting.closed
    resumed = apply(waiting, world.resolution)
    assert resumed.state == S.CASE_STATE_OPENED
    assert apply(resumed, world.notice).state == S.CASE_STATE_OUTBOUND_ACCEPTED
    assert apply(waiting, world.refused).state == S.CASE_STATE_REFUSED
    assert apply(case, world.refused).state == S.CASE_STATE_REFUSED
    with pytest.raises(RuleViolation) as again:
        apply(waiting, world.blocked)
    assert again.value.reason == "STATE_FORBIDS_MESSAGE"
    with pytest.raises(RuleViolation) as early:
        apply(case, world.resolution)
    assert early.value.reason == "STATE_FORBIDS_MESSAGE"
    # A notice refused for blockers that opens a case (an application at the outbound side) closes it.
    assert apply(None, world.blocked).state == S.CASE_STATE_REFUSED


def test_a_refusal_is_blocked_only_when_every_reason_is_a_blocker() -> None:
    world = World(True)
    mixed = builders.outbound_notice_refused(world.plan.route, world.plan.person, world.plan.insurance_type,
                                             [builders.reason(types_pb2.REASON_CODE_ARREARS),
                                              builders.reason(types_pb2.REASON_CODE_OTHER, "已去世")])
    assert rules.event_of(mixed) is Event.NOTICE_REFUSED
    assert rules.event_of(world.blocked) is Event.NOTICE_BLOCKED
    for code in automatic.BLOCKERS:
        only = builders.outbound_notice_refused(world.plan.route, world.plan.person, world.plan.insurance_type,
                                                [builders.reason(code)])  # type: ignore[arg-type]
        assert rules.event_of(only) is Event.NOTICE_BLOCKED


def test_a_case_holds_a_bounded_number_of_messages() -> None:
    """Acknowledgements of receipt have no natural end: a party sending them without end is
    refused once the case holds MAX_CASE_MESSAGES, and nothing about the case changes."""
    world = World(True)
    case = world.case(S.CASE_STATE_TABLE_SENT)
    table = world.table.header
    accepted = 0
    while True:
        ack = messages_pb2.Acknowledgement(answers_message_id=table.message_id, status=Ack.STATUS_RECEIVED)
        ack.header.CopyFrom(builders.header(table.receiver, table.sender, table.transfer_id))
        try:
            case = apply(case, ack)
        except RuleViolation as refused:
            assert refused.reason == "CASE_MESSAGE_LIMIT"
            assert refused.metadata["limit"] == str(rules.MAX_CASE_MESSAGES)
            break
        accepted += 1
        assert accepted <= rules.MAX_CASE_MESSAGES  # the loop ends by the refusal, never by this
    assert len(case.messages) == rules.MAX_CASE_MESSAGES
    assert case.state == S.CASE_STATE_TABLE_SENT
