"""Field validation: a table of named bad inputs, each refused on the right field path, and
property tests over money and contribution periods. Valid messages come from the reference
client's builders, so the client and the gateway are held to the same rules."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clients import builders
from clients.scenario import CasePlan, outbound_messages
from gateway.core.errors import REPORTED_VIOLATIONS, InvalidMessage
from gateway.core.limits import MessageLimits
from gateway.core.messages import BusinessMessage
from gateway.core.validation import MAX_FUND_FEN, MAX_PERIODS, is_region_code, validate
from gateway.core.workdays import CHINA
from mitransfer.v1 import messages_pb2, types_pb2

NOW = dt.datetime.now(dt.UTC)
Ack = messages_pb2.Acknowledgement
Notice = messages_pb2.OutboundNotice


def valid() -> dict[str, BusinessMessage]:
    plan = CasePlan.synthetic("320100", "330100", insurance_type=types_pb2.INSURANCE_TYPE_EMPLOYEE_BASIC,
                              balance_fen=1_234_567, seed=42)
    notice, table, fund = outbound_messages(plan)
    return {
        "notice": notice, "table": table, "fund": fund,
        "ack": accepted(table.header),
        "refused": builders.outbound_notice_refused(plan.route, plan.person, plan.insurance_type,
                                                    [builders.reason(types_pb2.REASON_CODE_ARREARS)]),
        "request": request(plan),
        "withdrawal": withdrawal(plan),
    }


def request(plan: CasePlan) -> messages_pb2.TransferRequest:
    r = messages_pb2.TransferRequest(person=plan.person, outbound_insurance_type=plan.insurance_type,
                                     inbound_insurance_type=plan.insurance_type,
                                     channel=messages_pb2.TransferRequest.CHANNEL_COUNTER)
    r.header.CopyFrom(builders.header(plan.route.inbound, plan.route.outbound, plan.route.transfer_id))
    return r


def withdrawal(plan: CasePlan) -> messages_pb2.Withdrawal:
    w = messages_pb2.Withdrawal(text="不再转移")
    w.header.CopyFrom(builders.header(plan.route.inbound, plan.route.outbound, plan.route.transfer_id))
    return w


def accepted(table: messages_pb2.Header) -> messages_pb2.Acknowledgement:
    ack = messages_pb2.Acknowledgement(
        answers_message_id=table.message_id, status=Ack.STATUS_ACCEPTED,
        inbound_insurance_type=types_pb2.INSURANCE_TYPE_EMPLOYEE_BASIC,
        inbound_enrollment_date=builders.proto_date(builders.today_in_china()))
    ack.header.CopyFrom(builders.header(table.receiver, table.sender, table.transfer_id))
    return ack


def violations(message: BusinessMessage) -> list[str]:
    with pytest.raises(InvalidMessage) as caught:
        validate(message, now=NOW)
    return [v.field for v in caught.value.violations]


def _bump_check(n: str) -> str:
    return n[:-1] + ("0" if n[-1] != "0" else "1")


Mutation = Callable[[BusinessMessage], object]
# (name, which valid message, how to break it, the field that must be named)
CASES: list[tuple[str, str, Mutation, str]] = [
    ("message-id-not-uuid", "notice", lambda m: setattr(m.header, "message_id", "42"), "header.message_id"),
    ("message-id-upper-case", "notice", lambda m: setattr(m.header, "message_id", m.header.message_id.upper()),
     "header.message_id"),
    ("transfer-id-missing", "table", lambda m: m.header.ClearField("transfer_id"), "header.transfer_id"),
    ("sender-five-digits", "notice", lambda m: setattr(m.header, "sender", "32010"), "header.sender"),
    ("sender-unknown-province", "notice", lambda m: setattr(m.header, "sender", "990100"), "header.sender"),
    ("receiver-letters", "fund", lambda m: setattr(m.header, "receiver", "33A100"), "header.receiver"),
    ("receiver-is-sender", "notice", lambda m: setattr(m.header, "receiver", m.header.sender), "header.receiver"),
    ("created-at-missing", "ack", lambda m: m.header.ClearField("created_at"), "header.created_at"),
    ("created-at-future", "notice",
     lambda m: m.header.created_at.FromDatetime(NOW + dt.timedelta(hours=1)), "header.created_at"),
    ("created-at-ancient", "notice",
     lambda m: m.header.created_at.FromDatetime(dt.datetime(1999, 1, 1, tzinfo=dt.UTC)), "header.created_at"),
    ("created-at-negative-nanos", "fund", lambda m: setattr(m.header.created_at, "nanos", -1), "header.created_at"),
    ("created-at-nanos-past-a-second", "ack",
     lambda m: setattr(m.header.created_at, "nanos", 1_500_000_000), "header.created_at"),
    ("certificate-type-missing", "notice", lambda m: m.person.ClearField("certificate_type"),
     "person.certificate_type"),
    ("certificate-type-undefined", "notice", lambda m: setattr(m.person, "certificate_type", 55),
     "person.certificate_type"),
    ("id-check-digit-wrong", "notice",
     lambda m: setattr(m.person, "certificate_number", _bump_check(m.person.certificate_number)),
     "person.certificate_number"),
    ("id-too-short", "table", lambda m: setattr(m.person, "certificate_number", "3201021990"),
     "person.certificate_number"),
    ("name-missing", "notice", lambda m: setattr(m.person, "name", "  "), "person.name"),
    ("name-control-character", "notice", lambda m: setattr(m.person, "name", "张\x00三"), "person.name"),
    ("insurance-type-missing", "notice", lambda m: m.ClearField("insurance_type"), "insurance_type"),
    ("insurance-type-undefined", "table", lambda m: setattr(m, "insurance_type", 311), "insurance_type"),
    ("outcome-missing", "notice", lambda m: m.ClearField("outcome"), "outcome"),
    ("accepted-without-suspension", "notice", lambda m: m.ClearField("suspension_date"), "suspension_date"),
    ("accepted-with-reasons", "notice", lambda m: m.reasons.add(code=types_pb2.REASON_CODE_ARREARS), "reasons"),
    ("suspension-february-30", "notice",
     lambda m: m.suspension_date.CopyFrom(types_pb2.Date(year=2026, month=2, day=30)), "suspension_date"),
    ("refused-without-reasons", "refused", lambda m: m.ClearField("reasons"), "reasons"),
    ("refused-other-without-text", "refused", lambda m: m.reasons.add(code=types_pb2.REASON_CODE_OTHER),
     "reasons[1].text"),
    ("refused-reason-twice", "refused", lambda m: m.reasons.add(code=types_pb2.REASON_CODE_ARREARS),
     "reasons[1].code"),
    ("refused-undefined-reason", "refused", lambda m: setattr(m.reasons[0], "code", 77), "reasons[0].code"),
    ("table-without-periods", "table", lambda m: m.ClearField("periods"), "periods"),
    ("period-region-invalid", "table", lambda m: setattr(m.periods[0], "pooling_region", "3201"),
     "periods[0].pooling_region"),
    ("period-reversed", "table",
     lambda m: m.periods[0].last_month.CopyFrom(types_pb2.YearMonth(year=1990, month=1)), "periods[0].last_month"),
    ("period-month-13", "table", lambda m: setattr(m.periods[0].first_month, "month", 13),
     "periods[0].first_month"),
    ("period-months-paid-zero", "table", lambda m: setattr(m.periods[0], "months_paid", 0),
     "periods[0].months_paid"),
    ("period-after-suspension", "table",
     lambda m: m.periods[-1].last_month.CopyFrom(types_pb2.YearMonth(year=2099, month=12)),
     f"periods[{-1}].last_month"),
    ("cumulative-months-wrong", "table", lambda m: setattr(m, "cumulative_months", m.cumulative_months + 1),
     "cumulative_months"),
    ("balance-negative", "table", lambda m: setattr(m, "account_balance_fen", -1), "account_balance_fen"),
    ("resident-with-balance", "table",
     lambda m: setattr(m, "insurance_type", types_pb2.INSURANCE_TYPE_RESIDENT_BASIC), "account_balance_fen"),
    ("fund-zero", "fund", lambda m: setattr(m, "amount_fen", 0), "amount_fen"),
    ("fund-negative", "fund", lambda m: setattr(m, "amount_fen", -5), "amount_fen"),
    ("fund-above-cap", "fund", lambda m: setattr(m, "amount_fen", MAX_FUND_FEN + 1), "amount_fen"),
    ("fund-currency-usd", "fund", lambda m: setattr(m, "currency", "USD"), "currency"),
    ("fund-payer-account-letters", "fund", lambda m: setattr(m.payer, "account_number", "62220ABC1234"),
     "payer.account_number"),
    ("fund-payee-bank-missing", "fund", lambda m: setattr(m.payee, "bank_name", ""), "payee.bank_name"),
    ("fund-same-accounts", "fund", lambda m: setattr(m.payee, "account_number", m.payer.account_number),
     "payee.account_number"),
    ("fund-reference-missing", "fund", lambda m: setattr(m, "bank_reference", ""), "bank_reference"),
    ("fund-reference-non-ascii", "fund", lambda m: setattr(m, "bank_reference", "流水1"), "bank_reference"),
    ("fund-value-date-missing", "fund", lambda m: m.ClearField("value_date"), "value_date"),
    ("ack-answers-nothing", "ack", lambda m: setattr(m, "answers_message_id", ""), "answers_message_id"),
    ("ack-answers-itself", "ack", lambda m: setattr(m, "answers_message_id", m.header.message_id),
     "answers_message_id"),
    ("ack-status-missing", "ack", lambda m: m.ClearField("status"), "status"),
    ("ack-rejected-without-reasons", "ack", lambda m: setattr(m, "status", Ack.STATUS_REJECTED), "reasons"),
    ("ack-credited-without-amount", "ack", lambda m: setattr(m, "status", Ack.STATUS_FUNDS_CREDITED),
     "credited_amount_fen"),
    ("ack-accepted-without-enrollment", "ack", lambda m: m.ClearField("inbound_enrollment_date"),
     "inbound_enrollment_date"),
    ("ack-accepted-without-inbound-type", "ack", lambda m: m.ClearField("inbound_insurance_type"),
     "inbound_insurance_type"),
    ("ack-enrollment-on-completion", "ack", lambda m: setattr(m, "status", Ack.STATUS_TRANSFER_IN_COMPLETED),
     "inbound_enrollment_date"),
    ("request-channel-missing", "request", lambda m: m.ClearField("channel"), "channel"),
    ("request-inbound-type-missing", "request", lambda m: m.ClearField("inbound_insurance_type"),
     "inbound_insurance_type"),
    ("request-id-check-digit", "request",
     lambda m: setattr(m.person, "certificate_number", _bump_check(m.person.certificate_number)),
     "person.certificate_number"),
    ("withdrawal-text-too-long", "withdrawal", lambda m: setattr(m, "text", "字" * 501), "text"),
    ("ack-amount-on-accept", "ack", lambda m: setattr(m, "credited_amount_fen", 10), "credited_amount_fen"),
    # Text and code fields hold nothing that displays otherwise than it is stored.
    ("name-right-to-left-override", "notice", lambda m: setattr(m.person, "name", "张\u202e三"), "person.name"),
    ("name-line-break", "table", lambda m: setattr(m.person, "name", "张\n三"), "person.name"),
    ("name-c1-control", "request", lambda m: setattr(m.person, "name", "张\x85三"), "person.name"),
    ("name-line-separator", "notice", lambda m: setattr(m.person, "name", "张\u2028三"), "person.name"),
    ("certificate-number-nul", "notice",
     lambda m: (setattr(m.person, "certificate_type", 8), setattr(m.person, "certificate_number", "E1234\x005")),
     "person.certificate_number"),
    ("withdrawal-text-nul", "withdrawal", lambda m: setattr(m, "text", "不再\x00转移"), "text"),
    ("reason-text-isolate", "refused", lambda m: setattr(m.reasons[0], "text", "欠费\u2067x\u2069"),
     "reasons[0].text"),
    ("reason-text-carriage-return", "refused", lambda m: setattr(m.reasons[0], "text", "a\rb"), "reasons[0].text"),
    ("bank-name-tab", "fund", lambda m: setattr(m.payer, "bank_name", "银行\t分行"), "payer.bank_name"),
    ("account-name-bidi-mark", "fund", lambda m: setattr(m.payee, "account_name", "\u200f账户"),
     "payee.account_name"),
    # Every date and amount within what its meaning allows.
    ("suspension-year-one", "notice",
     lambda m: m.suspension_date.CopyFrom(types_pb2.Date(year=1, month=1, day=1)), "suspension_date"),
    ("suspension-before-the-scheme", "table",
     lambda m: m.suspension_date.CopyFrom(types_pb2.Date(year=1997, month=12, day=31)), "suspension_date"),
    ("suspension-year-9999", "notice",
     lambda m: m.suspension_date.CopyFrom(types_pb2.Date(year=9999, month=12, day=31)), "suspension_date"),
    ("enrollment-year-9999", "ack",
     lambda m: m.inbound_enrollment_date.CopyFrom(types_pb2.Date(year=9999, month=12, day=31)),
     "inbound_enrollment_date"),
    ("enrollment-before-the-scheme", "ack",
     lambda m: m.inbound_enrollment_date.CopyFrom(types_pb2.Date(year=1990, month=6, day=1)),
     "inbound_enrollment_date"),
    ("enrollment-int32-year", "ack",
     lambda m: m.inbound_enrollment_date.CopyFrom(types_pb2.Date(year=2**31 - 1, month=1, day=1)),
     "inbound_enrollment_date"),
    ("value-date-year-9999", "fund",
     lambda m: m.value_date.CopyFrom(types_pb2.Date(year=9999, month=12, day=31)), "value_date"),
    ("value-date-two-years-back", "fund",
     lambda m: m.value_date.CopyFrom(types_pb2.Date(year=NOW.year - 2, month=1, day=1)), "value_date"),
    ("period-month-next-year", "table",
     lambda m: m.periods[0].first_month.CopyFrom(types_pb2.YearMonth(year=NOW.year + 1, month=1)),
     "periods[0].first_month"),
    ("period-month-before-1950", "table",
     lambda m: m.periods[0].first_month.CopyFrom(types_pb2.YearMonth(year=1949, month=12)),
     "periods[0].first_month"),
    ("balance-int64-max", "table", lambda m: setattr(m, "account_balance_fen", 2**63 - 1), "account_balance_fen"),
    ("retained-int64-max", "table",
     lambda m: (setattr(m, "account_balance_fen", 0), setattr(m, "account_balance_retained_fen", 2**63 - 1)),
     "account_balance_retained_fen"),
    ("credited-int64-max", "ack",
     lambda m: (setattr(m, "status", Ack.STATUS_FUNDS_CREDITED), m.ClearField("inbound_enrollment_date"),
                m.ClearField("inbound_insurance_type"), setattr(m, "credited_amount_fen", 2**63 - 1)),
     "credited_amount_fen"),
    ("created-at-eight-days-old", "fund",
     lambda m: m.header.created_at.FromDatetime(NOW - dt.timedelta(days=8)), "header.created_at"),
    ("created-at-year-2000", "table",
     lambda m: m.header.created_at.FromDatetime(dt.datetime(2000, 1, 2, tzinfo=dt.UTC)), "header.created_at"),
    ("created-at-huge-seconds", "ack", lambda m: setattr(m.header.created_at, "seconds", 2**62),
     "header.created_at"),
    ("reasons-more-than-codes", "refused",
     lambda m: [m.reasons.add(code=types_pb2.REASON_CODE_OTHER, text="x") for _ in range(13)], "reasons"),
]


def test_valid_messages_pass() -> None:
    for message in valid().values():
        validate(message, now=NOW)


@pytest.mark.parametrize(("which", "mutate", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_named_bad_input(which: str, mutate: Mutation, field: str) -> None:
    message = valid()[which]
    mutate(message)
    fields = violations(message)
    if field.startswith("periods[-1]"):
        field = field.replace("-1", str(len(message.periods) - 1))  # type: ignore[union-attr]
    assert field in fields


def test_every_fault_is_reported_at_once() -> None:
    fund = valid()["fund"]
    assert isinstance(fund, messages_pb2.FundTransfer)
    fund.amount_fen = 0
    fund.currency = "usd"
    fund.header.sender = "1"
    assert {"amount_fen", "currency", "header.sender"} <= set(violations(fund))


def test_descriptions_never_repeat_personal_data() -> None:
    notice = valid()["notice"]
    assert isinstance(notice, Notice)
    notice.person.certificate_number = _bump_check(notice.person.certificate_number)
    notice.person.name = "名" * 51
    with pytest.raises(InvalidMessage) as caught:
        validate(notice, now=NOW)
    text = caught.value.message + " ".join(v.description for v in caught.value.violations)
    assert notice.person.certificate_number not in text and notice.person.name not in text


@pytest.mark.parametrize("code", ["320100", "329900", "110000", "820000", "659001"])
def test_region_codes_accepted_without_a_national_list(code: str) -> None:
    assert is_region_code(code)


@pytest.mark.parametrize("code", ["", "32010", "3201000", "000100", "990100", "32O100", "３２0100"])
def test_region_codes_refused(code: str) -> None:
    assert not is_region_code(code)


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_fund_amounts(amount: int) -> None:
    fund = valid()["fund"]
    assert isinstance(fund, messages_pb2.FundTransfer)
    fund.amount_fen = amount
    if 0 < amount <= MAX_FUND_FEN:
        validate(fund, now=NOW)
    else:
        assert "amount_fen" in violations(fund)


@st.composite
def period_lists(draw: st.DrawFn) -> list[tuple[int, int, int]]:
    """Ordered, non-overlapping periods as (first, last, months_paid) month counts before 2026-01."""
    start = draw(st.integers(1990 * 12, 2010 * 12))
    out = []
    for _ in range(draw(st.integers(1, 6))):
        first = start + draw(st.integers(0, 24))
        last = first + draw(st.integers(0, 60))
        if last >= 2026 * 12:
            break
        out.append((first, last, draw(st.integers(1, last - first + 1))))
        start = last + 1
    return out or [(2000 * 12, 2000 * 12 + 11, 12)]


def _ym(count: int) -> types_pb2.YearMonth:
    return types_pb2.YearMonth(year=count // 12, month=count % 12 + 1)


@given(period_lists(), st.booleans())
def test_ordered_periods_with_the_right_sum_pass_and_out_of_order_ones_do_not(
    periods: list[tuple[int, int, int]], reorder: bool
) -> None:
    table = valid()["table"]
    assert isinstance(table, messages_pb2.InformationTable)
    del table.periods[:]
    for first, last, paid in periods:
        table.periods.add(pooling_region="320100", first_month=_ym(first), last_month=_ym(last), months_paid=paid)
    table.cumulative_months = sum(p for _, _, p in periods)
    if reorder and len(periods) > 1:
        table.periods[0].CopyFrom(table.periods[1])  # the second period listed first: out of order
        table.periods[1].first_month.CopyFrom(_ym(periods[0][0]))
        table.periods[1].last_month.CopyFrom(_ym(periods[0][1]))
        table.periods[1].months_paid = periods[0][2]
        assert "periods[1].first_month" in violations(table)
    else:
        validate(table, now=NOW)


@given(period_lists(), st.integers(0, 30), st.integers(0, 40))
def test_overlapping_periods_count_each_month_once(periods: list[tuple[int, int, int]], shift: int,
                                                   offset: int) -> None:
    """The periods twice, the copy at another region `shift` months later (overlapping them):
    cumulative months are accepted exactly within the bounds of months counted once."""
    table = valid()["table"]
    assert isinstance(table, messages_pb2.InformationTable)
    del table.periods[:]
    listed = sorted([*periods, *((f + shift, last + shift, paid) for f, last, paid in periods)])
    listed = [(f, last, paid) for f, last, paid in listed if last < 2026 * 12]
    for first, last, paid in listed:
        table.periods.add(pooling_region="320500", first_month=_ym(first), last_month=_ym(last), months_paid=paid)
    covered = {m for f, last, _ in listed for m in range(f, last + 1)}
    total = sum(p for _, _, p in listed)
    shared = sum(last - f + 1 for f, last, _ in listed) - len(covered)
    lower, upper = max(total - shared, max(p for _, _, p in listed)), min(total, len(covered))
    table.cumulative_months = lower + offset - 20
    if lower <= table.cumulative_months <= upper:
        validate(table, now=NOW)
    else:
        assert "cumulative_months" in violations(table)


@pytest.mark.parametrize(("psn_no", "ok"), [
    ("", True), ("3301TEST000000000000000000001", True), ("A" * 30, True),
    ("A" * 31, False), ("33 01", False), ("３３０１", False), ("33-01", False), ("33\n01", False),
])
def test_person_number_is_optional_and_checked_when_present(psn_no: str, ok: bool) -> None:
    table = valid()["table"]
    assert isinstance(table, messages_pb2.InformationTable)
    table.person.psn_no = psn_no
    if ok:
        validate(table, now=NOW)
    else:
        assert violations(table) == ["person.psn_no"]


def test_suspension_after_today_is_refused_in_notice_and_table() -> None:
    tomorrow = (NOW + dt.timedelta(days=1)).astimezone(CHINA).date()
    for name in ("notice", "table"):
        message = valid()[name]
        assert isinstance(message, messages_pb2.OutboundNotice | messages_pb2.InformationTable)
        message.suspension_date.CopyFrom(types_pb2.Date(year=tomorrow.year, month=tomorrow.month, day=tomorrow.day))
        assert "suspension_date" in violations(message)


@pytest.mark.parametrize(("paid", "deemed", "ok"), [(12, 0, True), (0, 12, True), (6, 6, True), (7, 6, False),
                                                    (0, 0, False), (-1, 5, False)])
def test_months_counted_as_paid_share_the_period_with_months_paid(paid: int, deemed: int, ok: bool) -> None:
    table = valid()["table"]
    assert isinstance(table, messages_pb2.InformationTable)
    del table.periods[:]
    table.periods.add(pooling_region="320100", first_month=_ym(2020 * 12), last_month=_ym(2020 * 12 + 11),
                      months_paid=paid, months_deemed=deemed, insurance_type=types_pb2.INSURANCE_TYPE_RESIDENT_BASIC)
    table.cumulative_months = paid + deemed
    if ok:
        validate(table, now=NOW)
    else:
        assert "periods[0].months_paid" in violations(table)


def test_balances_transferred_and_retained_are_checked() -> None:
    table = valid()["table"]
    assert isinstance(table, messages_pb2.InformationTable)
    table.account_balance_fen, table.account_balance_retained_fen = 100, 100
    assert violations(table) == ["account_balance_retained_fen"]
    table.account_balance_fen, table.account_balance_retained_fen = 0, -1
    assert violations(table) == ["account_balance_retained_fen"]


def test_the_freshness_window_is_the_configured_one_both_ways() -> None:
    fund = valid()["fund"]
    limits = MessageLimits(max_age=dt.timedelta(days=2), max_clock_skew=dt.timedelta(seconds=30))
    for created, fresh in ((NOW - dt.timedelta(days=1, hours=23), True), (NOW - dt.timedelta(days=2, minutes=1), False),
                           (NOW + dt.timedelta(seconds=29), True), (NOW + dt.timedelta(seconds=31), False)):
        fund.header.created_at.FromDatetime(created)
        if fresh:
            validate(fund, now=NOW, limits=limits)
        else:
            with pytest.raises(InvalidMessage) as caught:
                validate(fund, now=NOW, limits=limits)
            assert [v.field for v in caught.value.violations] == ["header.created_at"]


def test_a_million_periods_cost_one_violation() -> None:
    table = valid()["table"]
    assert isinstance(table, messages_pb2.InformationTable)
    empty = messages_pb2.ContributionPeriod()
    table.periods.extend([empty] * 1_000_000)
    with pytest.raises(InvalidMessage) as caught:
        validate(table, now=NOW)
    assert [(v.field, caught.value.total) for v in caught.value.violations] == [("periods", 1)]


def test_answers_list_the_first_violations_and_count_the_rest() -> None:
    table = valid()["table"]
    assert isinstance(table, messages_pb2.InformationTable)
    del table.periods[:]
    table.periods.extend([messages_pb2.ContributionPeriod()] * MAX_PERIODS)  # each: region, both months
    with pytest.raises(InvalidMessage) as caught:
        validate(table, now=NOW)
    error = caught.value
    assert len(error.violations) == REPORTED_VIOLATIONS and error.total >= 3 * MAX_PERIODS
    assert error.message.endswith(f"and {error.total - 5} more") and len(error.message) < 1000


def test_a_caller_value_is_repeated_only_as_a_short_escaped_prefix() -> None:
    notice = valid()["notice"]
    notice.header.sender = "3\u202e" + "9" * 1_000_000
    with pytest.raises(InvalidMessage) as caught:
        validate(notice, now=NOW)
    [description] = [v.description for v in caught.value.violations if v.field == "header.sender"]
    assert len(description) < 120 and "\u202e" not in description and "\\u202e" in description
    assert "(1000002 characters)" in description
