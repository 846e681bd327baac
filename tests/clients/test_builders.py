"""clients.builders and clients.roles: valid messages and the inbound role's
decisions, without a server. Where the gateway's own rules are importable, the reference flow is
also run through them, so both sides are shown to agree."""

from __future__ import annotations

import datetime as dt
import importlib
import re
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clients import builders, idnumbers
from clients.messages import BusinessMessage
from clients.roles import CaseOutcome, InboundCase, answer_as_inbound, outcome_for_outbound
from clients.scenario import CasePlan, plan_cases
from mitransfer.v1 import messages_pb2, types_pb2

Ack = messages_pb2.Acknowledgement
OUT, IN = "320100", "330100"
SUSPENDED = dt.date(2026, 5, 6)
LAST_YEAR = dt.date(builders.today_in_china().year - 1, 12, 31)  # resident → resident: enrolled a later year


def _table_and_funds(insurance: int, balance: int, seed: int = 3, inbound: int | None = None) -> tuple[
    messages_pb2.OutboundNotice, messages_pb2.InformationTable, messages_pb2.FundTransfer | None
]:
    inbound = insurance if inbound is None else inbound
    suspended = LAST_YEAR if insurance == inbound == builders.RESIDENT else SUSPENDED
    plan = CasePlan.synthetic(OUT, IN, insurance_type=insurance, balance_fen=balance, seed=seed,  # type: ignore[arg-type]
                              today=suspended, inbound_insurance_type=inbound)  # type: ignore[arg-type]
    notice = builders.outbound_notice_accepted(plan.route, plan.person, plan.insurance_type, suspended,
                                               inbound_insurance_type=plan.inbound_type)
    table = builders.information_table(plan.route, plan.person, plan.insurance_type, suspended, plan.periods, balance,
                                       inbound_insurance_type=plan.inbound_type)
    funds = None
    if plan.funds_expected:
        funds = builders.fund_transfer(plan.route, balance, builders.fund_account(OUT, receiving=False),
                                       builders.fund_account(IN, receiving=True), "REF0001", suspended)
    return notice, table, funds


# --- synthetic people ----------------------------------------------------------------------------

@given(st.integers(0, 10**6))
def test_sample_people_have_valid_numbers(seed: int) -> None:
    person = builders.sample_person(seed)
    assert idnumbers.is_valid(person.certificate_number, today=builders.today_in_china())
    assert person.certificate_type == types_pb2.CERTIFICATE_TYPE_RESIDENT_ID_CARD
    assert re.fullmatch(r"测试人员\d{4}", person.name)


@pytest.mark.parametrize(("number", "valid"), [
    ("11010519491231002X", True),    # the GB 11643 example
    ("110105194912310021", False),   # wrong check character
    ("110105194902310026", False),   # 31 February (check character right)
])
def test_is_valid_is_the_protocols_check(number: str, valid: bool) -> None:
    assert idnumbers.is_valid(number) is valid
    assert idnumbers.check_char("11010519491231002") == "X"


def test_sample_person_is_deterministic() -> None:
    assert builders.sample_person(1) == builders.sample_person(1)
    assert builders.sample_person(1).name == "测试人员0001"
    assert builders.sample_person(1).certificate_number != builders.sample_person(2).certificate_number


# --- headers, tables, fund transfers, acknowledgements --------------------------------------------

def test_headers_of_one_case() -> None:
    notice, table, funds = _table_and_funds(310, 12345)
    assert funds is not None
    ids = [m.header.message_id for m in (notice, table, funds)]
    assert len(set(ids)) == 3
    for m in (notice, table, funds):
        assert str(uuid.UUID(m.header.message_id, version=4)) == m.header.message_id  # lowercase uuid4
        assert m.header.transfer_id == notice.header.transfer_id
        assert (m.header.sender, m.header.receiver) == (OUT, IN)
        assert m.header.created_at.seconds > 0


@given(st.integers(0, 10**6), st.dates(dt.date(2000, 1, 1), dt.date(2040, 12, 31)))
def test_sample_periods_are_valid_and_cumulative_months_is_their_sum(seed: int, suspended: dt.date) -> None:
    periods = builders.sample_periods(OUT, suspended, seed)
    route = builders.Route.new(OUT, IN)
    table = builders.information_table(route, builders.sample_person(seed), builders.EMPLOYEE, suspended, periods, 1)
    assert table.cumulative_months == sum(p.months_paid for p in table.periods) > 0
    last = table.periods[-1].last_month
    assert (last.year, last.month) == (suspended.year, suspended.month)
    previous_end = None
    for p in table.periods:
        first, end = p.first_month.year * 12 + p.first_month.month, p.last_month.year * 12 + p.last_month.month
        assert first <= end and 0 <= p.months_paid <= end - first + 1
        assert previous_end is None or first > previous_end
        previous_end = end


def _period(first: tuple[int, int], last: tuple[int, int], paid: int) -> messages_pb2.ContributionPeriod:
    return builders.contribution_period(OUT, first, last, paid)


@pytest.mark.parametrize(("periods", "insurance", "balance"), [
    pytest.param([], 310, 0, id="no-periods"),
    pytest.param([_period((2020, 1), (2020, 12), 13)], 310, 0, id="more-months-paid-than-spanned"),
    pytest.param([_period((2021, 1), (2020, 12), 1)], 310, 0, id="reversed"),
    pytest.param([_period((2020, 1), (2020, 12), 10), _period((2020, 6), (2021, 3), 8)], 310, 0,
                 id="overlap-without-cumulative"),
    pytest.param([_period((2022, 1), (2022, 12), 12), _period((2020, 1), (2020, 12), 12)], 310, 0, id="unordered"),
    pytest.param([_period((2026, 1), (2026, 6), 6)], 310, 0, id="after-suspension-month"),
    pytest.param([_period((2020, 1), (2020, 13), 1)], 310, 0, id="month-13"),
    pytest.param([_period((2020, 1), (2020, 12), 12)], 390, 100, id="resident-with-balance"),
    pytest.param([_period((2020, 1), (2020, 12), 12)], 310, -1, id="negative-balance"),
])
def test_bad_tables_are_refused(periods: list[messages_pb2.ContributionPeriod], insurance: int, balance: int) -> None:
    with pytest.raises(ValueError):
        builders.information_table(builders.Route.new(OUT, IN), builders.sample_person(1), insurance,  # type: ignore[arg-type]
                                   SUSPENDED, periods, balance)


def test_overlapping_periods_count_shared_months_once() -> None:
    """Two regions for the same months (2020-06..2020-12): 18 months listed, 15 covered; the
    platform says how many it counts, within what the periods allow."""
    periods = [_period((2020, 1), (2020, 12), 10), _period((2020, 6), (2021, 3), 8)]
    build = lambda cumulative: builders.information_table(  # noqa: E731
        builders.Route.new(OUT, IN), builders.sample_person(1), builders.EMPLOYEE, SUSPENDED, periods, 0,
        cumulative_months=cumulative)
    assert [build(n).cumulative_months for n in (11, 15)] == [11, 15]
    for wrong in (10, 16, 18):
        with pytest.raises(ValueError, match="between 11 and 15"):
            build(wrong)


def test_months_counted_as_paid_count_and_the_period_keeps_its_scheme() -> None:
    periods = [builders.contribution_period(OUT, (2000, 1), (2009, 12), 60, months_deemed=60,
                                            insurance_type=builders.EMPLOYEE),
               builders.contribution_period(OUT, (2010, 1), (2010, 12), 12, insurance_type=builders.RESIDENT)]
    table = builders.information_table(builders.Route.new(OUT, IN), builders.sample_person(1), builders.EMPLOYEE,
                                       SUSPENDED, periods, 0)
    assert table.cumulative_months == 132
    assert [p.insurance_type for p in table.periods] == [builders.EMPLOYEE, builders.RESIDENT]
    with pytest.raises(ValueError, match=r"within 1\.\.120"):
        builders.information_table(builders.Route.new(OUT, IN), builders.sample_person(1), builders.EMPLOYEE,
                                   SUSPENDED, [builders.contribution_period(OUT, (2000, 1), (2009, 12), 61,
                                                                            months_deemed=60)], 0)


@pytest.mark.parametrize(("outbound", "inbound", "moved", "retained"), [
    (builders.EMPLOYEE, builders.EMPLOYEE, 5000, 0),
    (builders.EMPLOYEE, builders.RESIDENT, 0, 5000),
])
def test_balance_moves_only_between_employee_schemes(outbound: int, inbound: int, moved: int, retained: int) -> None:
    route = builders.Route.new(OUT, IN)
    table = builders.information_table(route, builders.sample_person(1), outbound, SUSPENDED,  # type: ignore[arg-type]
                                       builders.sample_periods(OUT, SUSPENDED, 1), 5000,
                                       inbound_insurance_type=inbound)  # type: ignore[arg-type]
    assert (table.account_balance_fen, table.account_balance_retained_fen) == (moved, retained)
    assert builders.balance_moves(outbound, inbound, 5000) is bool(moved)  # type: ignore[arg-type]


def test_notice_states_the_inbound_scheme_and_refuses_a_future_suspension() -> None:
    route, person = builders.Route.new(OUT, IN), builders.sample_person(1)
    same = builders.outbound_notice_accepted(route, person, builders.EMPLOYEE, SUSPENDED)
    cross = builders.outbound_notice_accepted(route, person, builders.EMPLOYEE, SUSPENDED,
                                              inbound_insurance_type=builders.RESIDENT)
    assert (same.inbound_insurance_type, cross.inbound_insurance_type) == (builders.EMPLOYEE, builders.RESIDENT)
    with pytest.raises(ValueError, match="after today"):
        builders.outbound_notice_accepted(route, person, builders.EMPLOYEE,
                                          builders.today_in_china() + dt.timedelta(days=1))


def test_sample_people_carry_a_valid_person_number() -> None:
    numbers = {builders.sample_person(seed).psn_no for seed in range(50)}
    assert len(numbers) == 50
    assert all(len(n) == builders.MAX_PSN_NO and n.isascii() and n.isalnum() for n in numbers)


def test_fund_transfer_fields() -> None:
    _, table, funds = _table_and_funds(310, 98765)
    assert funds is not None
    assert funds.amount_fen == table.account_balance_fen == 98765 and funds.currency == "CNY"
    for account in (funds.payer, funds.payee):
        assert 6 <= len(account.account_number) <= 34 and account.account_number.isdigit()
    assert funds.payer.account_number != funds.payee.account_number


_PAYER, _PAYEE = builders.fund_account(OUT, receiving=False), builders.fund_account(IN, receiving=True)


@pytest.mark.parametrize(("amount", "payer", "payee", "reference"), [
    pytest.param(0, _PAYER, _PAYEE, "R1", id="zero-amount"),
    pytest.param(10, _PAYER, _PAYER, "R1", id="payer-is-payee"),
    pytest.param(10, messages_pb2.FundAccount(account_number="12345"), _PAYEE, "R1", id="short-account"),
    pytest.param(10, messages_pb2.FundAccount(account_number="12345x"), _PAYEE, "R1", id="non-digit-account"),
    pytest.param(10, _PAYER, _PAYEE, "", id="empty-reference"),
    pytest.param(10, _PAYER, _PAYEE, "流水1", id="non-ascii-reference"),
])
def test_bad_fund_transfers_are_refused(amount: int, payer: Any, payee: Any, reference: str) -> None:
    with pytest.raises(ValueError):
        builders.fund_transfer(builders.Route.new(OUT, IN), amount, payer, payee, reference, SUSPENDED)


def test_acknowledgement_answers_with_sides_swapped() -> None:
    _, table, _ = _table_and_funds(390, 0)
    ack = builders.acknowledgement(table.header, Ack.STATUS_RECEIVED)
    assert ack.answers_message_id == table.header.message_id
    assert ack.header.transfer_id == table.header.transfer_id
    assert (ack.header.sender, ack.header.receiver) == (IN, OUT)
    assert ack.header.message_id != table.header.message_id


@pytest.mark.parametrize(("status", "kwargs"), [
    (Ack.STATUS_REJECTED, {}),
    (Ack.STATUS_ACCEPTED, {"reasons": [types_pb2.Reason(code=types_pb2.REASON_CODE_ARREARS)]}),
    (Ack.STATUS_ACCEPTED, {"inbound_insurance_type": types_pb2.INSURANCE_TYPE_EMPLOYEE_BASIC}),
    (Ack.STATUS_RECEIVED, {"inbound_enrollment_date": dt.date(2026, 12, 1),
                           "inbound_insurance_type": types_pb2.INSURANCE_TYPE_EMPLOYEE_BASIC}),
    (Ack.STATUS_FUNDS_CREDITED, {}),
    (Ack.STATUS_TRANSFER_IN_COMPLETED, {"credited_amount_fen": 5}),
])
def test_bad_acknowledgements_are_refused(status: int, kwargs: dict[str, Any]) -> None:
    _, table, _ = _table_and_funds(390, 0)
    with pytest.raises(ValueError):
        builders.acknowledgement(table.header, status, **kwargs)  # type: ignore[arg-type]


def test_refusal_needs_reasons_and_other_needs_text() -> None:
    route, person = builders.Route.new(OUT, IN), builders.sample_person(1)
    with pytest.raises(ValueError):
        builders.outbound_notice_refused(route, person, builders.EMPLOYEE, [])
    with pytest.raises(ValueError):
        builders.reason(types_pb2.REASON_CODE_OTHER)
    notice = builders.outbound_notice_refused(route, person, builders.EMPLOYEE,
                                              [builders.reason(types_pb2.REASON_CODE_ARREARS)])
    assert notice.outcome == messages_pb2.OutboundNotice.OUTCOME_REFUSED and not notice.HasField("suspension_date")


def test_today_in_china_crosses_midnight_utc() -> None:
    assert builders.today_in_china(dt.datetime(2026, 5, 6, 16, 30, tzinfo=dt.UTC)) == dt.date(2026, 5, 7)


# --- the inbound role -----------------------------------------------------------------------------

def _answer(messages: list[BusinessMessage]) -> tuple[InboundCase | None, list[Ack]]:
    """Feed a case's messages to the inbound role in order, as deliveries would come."""
    case: InboundCase | None = None
    sent: list[Ack] = []
    for message in messages:
        decision = answer_as_inbound(case, message)
        case = decision.case
        sent.extend(decision.acknowledgements)
    return case, sent


def _statuses(acks: list[Ack]) -> list[tuple[int, str]]:
    return [(a.status, a.answers_message_id) for a in acks]


def test_notice_is_remembered_without_answer() -> None:
    notice, _, _ = _table_and_funds(310, 500)
    decision = answer_as_inbound(None, notice)
    assert decision.acknowledgements == ()
    assert decision.case is not None and decision.case.transfer_id == notice.header.transfer_id


@pytest.mark.parametrize(("insurance", "balance"), [(390, 0), (310, 0)])
def test_table_without_funds_is_accepted_and_completed(insurance: int, balance: int) -> None:
    notice, table, funds = _table_and_funds(insurance, balance)
    assert funds is None
    case, acks = _answer([notice, table])
    assert case is None  # closed: nothing left to remember
    assert _statuses(acks) == [(Ack.STATUS_ACCEPTED, table.header.message_id),
                               (Ack.STATUS_TRANSFER_IN_COMPLETED, table.header.message_id)]
    for ack in acks:
        assert (ack.header.sender, ack.header.receiver, ack.header.transfer_id) == (IN, OUT, table.header.transfer_id)


def test_table_with_funds_waits_then_accepts_credits_and_completes() -> None:
    notice, table, funds = _table_and_funds(310, 123456)
    assert funds is not None
    case, acks = _answer([notice, table])
    assert acks == [] and case is not None and case.funds_expected and case.balance_fen == 123456
    decision = answer_as_inbound(case, funds)
    assert decision.case is None
    assert _statuses(list(decision.acknowledgements)) == [
        (Ack.STATUS_ACCEPTED, table.header.message_id),
        (Ack.STATUS_FUNDS_CREDITED, funds.header.message_id),
        (Ack.STATUS_TRANSFER_IN_COMPLETED, table.header.message_id),
    ]
    assert decision.acknowledgements[1].credited_amount_fen == 123456


def test_fund_transfer_with_another_amount_is_rejected() -> None:
    notice, table, funds = _table_and_funds(310, 1000)
    assert funds is not None
    funds.amount_fen = 999
    _, acks = _answer([notice, table, funds])
    assert _statuses(acks) == [(Ack.STATUS_REJECTED, table.header.message_id)]
    assert [r.code for r in acks[0].reasons] == [types_pb2.REASON_CODE_AMOUNT_MISMATCH]


def test_table_for_another_person_is_rejected() -> None:
    notice, table, _ = _table_and_funds(390, 0)
    table.person.CopyFrom(builders.sample_person(999))
    case, acks = _answer([notice, table])
    assert case is None
    assert _statuses(acks) == [(Ack.STATUS_REJECTED, table.header.message_id)]
    assert [r.code for r in acks[0].reasons] == [types_pb2.REASON_CODE_IDENTITY_MISMATCH]


@pytest.mark.parametrize(("suspended", "code"), [
    (builders.today_in_china(), types_pb2.REASON_CODE_RESIDENT_SAME_YEAR),
    (builders.today_in_china() + dt.timedelta(days=3), types_pb2.REASON_CODE_DUPLICATE_ENROLLMENT),
], ids=["resident-same-year", "enrolled-before-suspension"])
def test_inbound_role_rejects_what_the_measures_forbid(suspended: dt.date, code: int) -> None:
    """Resident → resident within the suspension's year, or an enrollment here (today) before the
    suspension: the reference inbound side rejects the table with the measures' reason."""
    route, person = builders.Route.new(OUT, IN), builders.sample_person(4)
    noticed = min(suspended, builders.today_in_china())  # the notice's own builder refuses a future date
    notice = builders.outbound_notice_accepted(route, person, builders.RESIDENT, noticed)
    table = builders.information_table(route, person, builders.RESIDENT, suspended,
                                       builders.sample_periods(OUT, suspended, 4), 0)
    case, acks = _answer([notice, table])
    assert case is None and _statuses(acks) == [(Ack.STATUS_REJECTED, table.header.message_id)]
    assert [r.code for r in acks[0].reasons] == [code]


def test_table_without_remembered_notice_is_still_answered() -> None:
    _, table, _ = _table_and_funds(390, 0)
    assert len(answer_as_inbound(None, table).acknowledgements) == 2


def test_fund_transfer_for_unknown_case_sends_nothing() -> None:
    _, _, funds = _table_and_funds(310, 1000)
    assert funds is not None
    decision = answer_as_inbound(None, funds)
    assert decision.acknowledgements == () and decision.unanswerable


def test_refused_notice_is_forgotten() -> None:
    route = builders.Route.new(OUT, IN)
    notice = builders.outbound_notice_refused(route, builders.sample_person(1), builders.EMPLOYEE,
                                              [builders.reason(types_pb2.REASON_CODE_UNSETTLED_HOSPITAL_STAY)])
    assert answer_as_inbound(None, notice).case is None


@pytest.mark.parametrize(("status", "outcome"), [
    (Ack.STATUS_TRANSFER_IN_COMPLETED, CaseOutcome.COMPLETED),
    (Ack.STATUS_REJECTED, CaseOutcome.REJECTED),
    (Ack.STATUS_ACCEPTED, None),
    (Ack.STATUS_FUNDS_CREDITED, None),
    (Ack.STATUS_RECEIVED, None),
])
def test_outbound_outcome(status: int, outcome: CaseOutcome | None) -> None:
    assert outcome_for_outbound(Ack(status=status)) is outcome  # type: ignore[arg-type]


# --- scenario plans -------------------------------------------------------------------------------

def test_plan_mix_and_directions() -> None:
    a, b = ("320100", "320500", "329900"), ("330100", "330200", "339900")
    plans = plan_cases(100, a, b, seed=1)
    assert sum(a_out for a_out, _ in plans) == 50
    for a_out, plan in plans:
        sources, targets = (a, b) if a_out else (b, a)
        assert plan.route.outbound in sources and plan.route.inbound in targets
        assert plan.insurance_type == builders.EMPLOYEE or plan.balance_fen == 0
    kinds = [(p.insurance_type, p.balance_fen > 0) for _, p in plans]
    assert sum(p.funds_expected for _, p in plans) == 70
    assert kinds.count((builders.EMPLOYEE, True)) == 80  # 10 of them to resident insurance: balance retained
    assert [p.inbound_type for _, p in plans].count(builders.RESIDENT) == 20
    assert kinds.count((builders.EMPLOYEE, False)) == 10
    assert kinds.count((builders.RESIDENT, False)) == 10
    assert len({p.route.transfer_id for _, p in plans}) == 100


# --- the gateway's own rules, where present -------------------------------------------------------

def _gateway(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        pytest.skip(f"{module} is not importable yet")


@pytest.mark.parametrize(("insurance", "balance", "inbound"), [
    (310, 250_000, 310), (310, 0, 310), (390, 0, 390), (310, 250_000, 390), (390, 0, 310)])
def test_reference_flow_fits_the_gateways_case_rules(insurance: int, balance: int, inbound: int) -> None:
    """Outbound messages and the inbound role's answers, in delivery order, through the gateway's
    state machine, which must end COMPLETED."""
    case_rules = _gateway("gateway.core.case")
    from mitransfer.v1 import tracking_pb2

    notice, table, funds = _table_and_funds(insurance, balance, inbound=inbound)
    assert (funds is not None) == (insurance == inbound == 310 and balance > 0)
    outbound: list[BusinessMessage] = [notice, table] + ([funds] if funds is not None else [])
    state = None
    memory: InboundCase | None = None

    class NoOtherCases:
        def open_case_for(self, person: object, outbound: str) -> None:
            return None

    index = NoOtherCases()
    keys = _gateway("gateway.core.personkeys").PersonKeys({"test-1": bytes(32)}, "test-1")
    for message in outbound:
        state = case_rules.apply(state, message, policies={}, index=index, keys=keys).case
        decision = answer_as_inbound(memory, message)
        memory = decision.case
        for ack in decision.acknowledgements:
            state = case_rules.apply(state, ack, policies={}, index=index, keys=keys).case
    assert state is not None and state.state == tracking_pb2.CASE_STATE_COMPLETED


def test_built_messages_pass_the_gateways_validation() -> None:
    validation = _gateway("gateway.core.validation")
    notice, table, funds = _table_and_funds(310, 4321)
    assert funds is not None
    _, acks = _answer([notice, table, funds])
    now = dt.datetime.now(dt.UTC)
    for message in [notice, table, funds, *acks]:
        validation.validate(message, now=now)


def test_outbound_cli_reads_a_cross_scheme_case_with_overlapping_periods() -> None:
    """`python -m clients.outbound --case case.json`: the inbound scheme, months counted as paid, a
    person number and the cumulative months of overlapping periods all reach the messages."""
    import argparse

    from clients.outbound import plan_from
    from clients.scenario import outbound_messages

    args = argparse.Namespace(outbound=None, inbound=None, insurance=None, inbound_insurance=None, balance_fen=None,
                              seed=7, transfer_id=None)
    described = {
        "from": OUT, "to": IN, "insurance": 310, "inbound_insurance": 390, "balance_fen": 5000,
        "suspension_date": "2026-05-06",
        "person": {"certificate_number": builders.sample_person(7).certificate_number, "name": "测试人员0007",
                   "psn_no": "32TEST000000000000000000000007"},
        "periods": [{"pooling_region": "320100", "first_month": "2019-01", "last_month": "2023-12", "months_paid": 48,
                     "months_deemed": 12},
                    {"pooling_region": "320500", "first_month": "2023-07", "last_month": "2026-05", "months_paid": 35,
                     "insurance_type": 390}],
        "cumulative_months": 89,
    }
    notice, table = outbound_messages(plan_from(args, described))
    assert notice.inbound_insurance_type == builders.RESIDENT
    assert (table.account_balance_fen, table.account_balance_retained_fen, table.cumulative_months) == (0, 5000, 89)
    assert table.person.psn_no == "32TEST000000000000000000000007"
    assert [(p.months_deemed, p.insurance_type) for p in table.periods] == [(12, 0), (0, builders.RESIDENT)]
