"""Builders of valid business messages, and synthetic people for tests and demos.

Every builder fills the header (new uuid4 message id, the case's transfer id, sender, receiver,
creation time) and checks the rules the gateway validates, raising ValueError early rather
than letting the gateway answer INVALID_ARGUMENT. Outbound messages go from the case's outbound
agency to its inbound agency; acknowledgements answer a header and go the other way.
"""

from __future__ import annotations

import datetime as dt
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

from clients import idnumbers
from mitransfer.v1 import messages_pb2, types_pb2

# China Standard Time has had no daylight saving since 1991, so a fixed offset is exact and
# needs no tz database.
CHINA_TZ: Final = dt.timezone(dt.timedelta(hours=8), "CST")

Ack = messages_pb2.Acknowledgement
EMPLOYEE: Final = types_pb2.INSURANCE_TYPE_EMPLOYEE_BASIC  # 310, has a personal account
RESIDENT: Final = types_pb2.INSURANCE_TYPE_RESIDENT_BASIC  # 390, no personal account
UNSPECIFIED: Final = types_pb2.INSURANCE_TYPE_UNSPECIFIED
InsuranceType: TypeAlias = types_pb2.InsuranceType.ValueType
MAX_PSN_NO: Final = 30


def balance_moves(outbound: InsuranceType, inbound: InsuranceType, balance_fen: int) -> bool:
    """Whether a fund transfer is due: employee → employee (310 → 310) with a positive balance.
    From employee to resident insurance the balance stays with the person at the outbound side."""
    return outbound == EMPLOYEE and inbound == EMPLOYEE and balance_fen > 0


def new_id() -> str:
    """A new message or transfer id: a lowercase uuid4 string."""
    return str(uuid.uuid4())


def today_in_china(now: dt.datetime | None = None) -> dt.date:
    """The calendar date in Beijing (dates in the messages are Beijing dates)."""
    return (now or dt.datetime.now(dt.UTC)).astimezone(CHINA_TZ).date()


@dataclass(frozen=True)
class Route:
    """One case: its transfer id and its two agencies (6-character 医保区划 codes)."""

    transfer_id: str
    outbound: str  # 转出地经办机构
    inbound: str   # 转入地经办机构

    @classmethod
    def new(cls, outbound: str, inbound: str) -> Route:
        """A new case with a fresh transfer id."""
        if outbound == inbound:
            raise ValueError("outbound and inbound agency must differ")
        return cls(new_id(), outbound, inbound)

    def header(self, *, created_at: dt.datetime | None = None) -> messages_pb2.Header:
        """A header for an outbound message of this case (outbound → inbound)."""
        return header(self.outbound, self.inbound, self.transfer_id, created_at=created_at)


def header(
    sender: str, receiver: str, transfer_id: str, *, message_id: str | None = None,
    created_at: dt.datetime | None = None,
) -> messages_pb2.Header:
    h = messages_pb2.Header(message_id=message_id or new_id(), transfer_id=transfer_id,
                            sender=sender, receiver=receiver)
    h.created_at.FromDatetime(created_at or dt.datetime.now(dt.UTC))
    return h


def proto_date(d: dt.date) -> types_pb2.Date:
    return types_pb2.Date(year=d.year, month=d.month, day=d.day)


def reason(code: types_pb2.ReasonCode.ValueType, text: str = "") -> types_pb2.Reason:
    """A refusal or rejection reason; REASON_CODE_OTHER needs a text."""
    if code == types_pb2.REASON_CODE_OTHER and not text:
        raise ValueError("REASON_CODE_OTHER needs a text")
    return types_pb2.Reason(code=code, text=text)


def outbound_notice_accepted(
    route: Route, person: types_pb2.Person, insurance_type: types_pb2.InsuranceType.ValueType,
    suspension_date: dt.date, *, inbound_insurance_type: InsuranceType | None = None,
    created_at: dt.datetime | None = None,
) -> messages_pb2.OutboundNotice:
    """转出通知（同意转出）: opens the case (or answers the request that opened it); the relationship
    is suspended on `suspension_date`, which is not after today.

    `inbound_insurance_type`: the scheme at the inbound side, which a notice that opens the case
    must state (it decides whether the balance moves); None: the same scheme as the outbound side.
    Raises ValueError for a suspension date after today (Beijing).
    """
    if suspension_date > today_in_china(created_at):
        raise ValueError("a suspension date after today: report a suspension once it is done")
    notice = messages_pb2.OutboundNotice(
        header=route.header(created_at=created_at), person=person, insurance_type=insurance_type,
        outcome=messages_pb2.OutboundNotice.OUTCOME_ACCEPTED,
        inbound_insurance_type=insurance_type if inbound_insurance_type is None else inbound_insurance_type,
    )
    notice.suspension_date.CopyFrom(proto_date(suspension_date))
    return notice


def outbound_notice_refused(
    route: Route, person: types_pb2.Person, insurance_type: types_pb2.InsuranceType.ValueType,
    reasons: Sequence[types_pb2.Reason], *, created_at: dt.datetime | None = None,
) -> messages_pb2.OutboundNotice:
    """转出通知（不予转出）: opens and closes the case. Raises ValueError without reasons."""
    if not reasons:
        raise ValueError("a refusal needs at least one reason")
    return messages_pb2.OutboundNotice(
        header=route.header(created_at=created_at), person=person, insurance_type=insurance_type,
        outcome=messages_pb2.OutboundNotice.OUTCOME_REFUSED, reasons=reasons,
    )


def contribution_period(
    pooling_region: str, first: tuple[int, int], last: tuple[int, int], months_paid: int, *,
    months_deemed: int = 0, insurance_type: InsuranceType = UNSPECIFIED,
) -> messages_pb2.ContributionPeriod:
    """One period; `first` and `last` are (year, month), both inclusive. `months_deemed`: months
    counted as paid (视同缴费); `insurance_type`: the period's scheme when it is not the table's."""
    return messages_pb2.ContributionPeriod(
        pooling_region=pooling_region, months_paid=months_paid, months_deemed=months_deemed,
        insurance_type=insurance_type,
        first_month=types_pb2.YearMonth(year=first[0], month=first[1]),
        last_month=types_pb2.YearMonth(year=last[0], month=last[1]),
    )


def information_table(
    route: Route, person: types_pb2.Person, insurance_type: types_pb2.InsuranceType.ValueType,
    suspension_date: dt.date, periods: Sequence[messages_pb2.ContributionPeriod], account_balance_fen: int,
    *, inbound_insurance_type: InsuranceType = UNSPECIFIED, cumulative_months: int | None = None,
    created_at: dt.datetime | None = None,
) -> messages_pb2.InformationTable:
    """《参保人员基本医疗保险信息表》.

    Person, insurance type and suspension date must be the notice's (the gateway compares them).
    `account_balance_fen` is the person's personal-account balance: transferred out for employee →
    employee insurance, reported as retained at the outbound side (`account_balance_retained_fen`)
    when `inbound_insurance_type` is resident insurance. `cumulative_months`: computed as the sum
    of months paid and counted as paid when the periods are disjoint; required when they overlap
    (which months were paid twice is the platform's knowledge).

    Raises ValueError if there are no periods, if they are not oldest first, pay more months than
    they span or end after the suspension month, if the cumulative months do not fit the periods,
    or if the balance is negative or non-zero for 390.
    """
    spans = _check_periods(periods, suspension_date)
    lower, upper = _cumulative_bounds(spans)
    if cumulative_months is None:
        if lower != upper:
            raise ValueError("the periods overlap: give cumulative_months, the months counted once")
        cumulative_months = lower
    elif not lower <= cumulative_months <= upper:
        raise ValueError(f"cumulative_months must be between {lower} and {upper} for these periods")
    if account_balance_fen < 0:
        raise ValueError("account balance cannot be negative")
    if insurance_type != EMPLOYEE and account_balance_fen != 0:
        raise ValueError("only employee insurance (310) has a personal-account balance")
    retained = insurance_type == EMPLOYEE and inbound_insurance_type not in (EMPLOYEE, UNSPECIFIED)
    table = messages_pb2.InformationTable(
        header=route.header(created_at=created_at), person=person, insurance_type=insurance_type,
        periods=periods, cumulative_months=cumulative_months,
        account_balance_fen=0 if retained else account_balance_fen,
        account_balance_retained_fen=account_balance_fen if retained else 0,
        inbound_insurance_type=inbound_insurance_type,
    )
    table.suspension_date.CopyFrom(proto_date(suspension_date))
    return table


def _month_index(ym: types_pb2.YearMonth) -> int:
    return ym.year * 12 + ym.month - 1


def _check_periods(periods: Sequence[messages_pb2.ContributionPeriod],
                   suspension_date: dt.date) -> list[tuple[int, int, int]]:
    """(first, last, counted) month indices of valid periods; raises ValueError otherwise."""
    if not periods:
        raise ValueError("a table needs at least one contribution period")
    previous_first = -1
    spans = []
    for i, p in enumerate(periods):
        first, last = _month_index(p.first_month), _month_index(p.last_month)
        if not (1 <= p.first_month.month <= 12 and 1 <= p.last_month.month <= 12) or first > last:
            raise ValueError(f"periods[{i}]: months out of range or reversed")
        if first < previous_first:
            raise ValueError(f"periods[{i}]: precedes the period before it (oldest first)")
        counted = p.months_paid + p.months_deemed
        if p.months_paid < 0 or p.months_deemed < 0 or not 1 <= counted <= last - first + 1:
            raise ValueError(f"periods[{i}]: months_paid + months_deemed must be within 1..{last - first + 1}")
        if last > suspension_date.year * 12 + suspension_date.month - 1:
            raise ValueError(f"periods[{i}]: ends after the suspension month")
        previous_first = first
        spans.append((first, last, counted))
    return spans


def _cumulative_bounds(spans: Sequence[tuple[int, int, int]]) -> tuple[int, int]:
    """The cumulative months the periods allow, the same month never counted twice (the gateway's
    rule CUMULATIVE_MONTHS): exactly the sum when disjoint, a range when they overlap."""
    total = sum(counted for _, _, counted in spans)
    covered = {m for first, last, _ in spans for m in range(first, last + 1)}
    shared = sum(last - first + 1 for first, last, _ in spans) - len(covered)
    return max(total - shared, max(counted for _, _, counted in spans)), min(total, len(covered))


def fund_account(agency: str, *, receiving: bool) -> messages_pb2.FundAccount:
    """A synthetic agency fund account (基金支出户 / 收入户) derived from the agency code."""
    number = f"62{agency}{int(receiving)}{zlib.crc32(agency.encode()) % 10**9:09d}"
    role = "医保基金收入户" if receiving else "医保基金支出户"
    return messages_pb2.FundAccount(bank_name="测试银行", account_name=f"{agency}{role}（测试）",
                                    account_number=number)


def fund_transfer(
    route: Route, amount_fen: int, payer: messages_pb2.FundAccount, payee: messages_pb2.FundAccount,
    bank_reference: str, value_date: dt.date, *, created_at: dt.datetime | None = None,
) -> messages_pb2.FundTransfer:
    """个人账户余额划转 in CNY. `amount_fen` must equal the table's balance (the gateway checks).

    Raises ValueError for a non-positive amount, account numbers that are not 6..34 digits,
    payer == payee, or a bank reference that is empty or not printable ASCII.
    """
    _check_money(amount_fen, payer, payee, bank_reference)
    transfer = messages_pb2.FundTransfer(
        header=route.header(created_at=created_at), amount_fen=amount_fen, currency="CNY",
        payer=payer, payee=payee, bank_reference=bank_reference,
    )
    transfer.value_date.CopyFrom(proto_date(value_date))
    return transfer


def fund_return(
    returned: messages_pb2.FundTransfer, payer: messages_pb2.FundAccount, payee: messages_pb2.FundAccount,
    bank_reference: str, value_date: dt.date, *, created_at: dt.datetime | None = None,
) -> messages_pb2.FundReturn:
    """资金退回 of the fund transfer `returned`, from its receiver (the inbound agency, which rejected
    the case after the money arrived) back to its sender: the whole amount, in CNY.

    Raises ValueError as `fund_transfer` does for the accounts and the bank reference.
    """
    _check_money(returned.amount_fen, payer, payee, bank_reference)
    h = returned.header
    back = messages_pb2.FundReturn(
        header=header(h.receiver, h.sender, h.transfer_id, created_at=created_at),
        returns_message_id=h.message_id, amount_fen=returned.amount_fen, currency="CNY", payer=payer, payee=payee,
        bank_reference=bank_reference,
    )
    back.value_date.CopyFrom(proto_date(value_date))
    return back


def _check_money(amount_fen: int, payer: messages_pb2.FundAccount, payee: messages_pb2.FundAccount,
                 bank_reference: str) -> None:
    if amount_fen <= 0:
        raise ValueError("amount_fen must be positive")
    for side, account in (("payer", payer), ("payee", payee)):
        n = account.account_number
        if not (6 <= len(n) <= 34 and n.isascii() and n.isdigit()):
            raise ValueError(f"{side}.account_number must be 6..34 digits")
    if payer.account_number == payee.account_number:
        raise ValueError("payer and payee must be different accounts")
    if not bank_reference or not all(" " <= c <= "~" for c in bank_reference):
        raise ValueError("bank_reference must be non-empty printable ASCII")


def acknowledgement(
    answering: messages_pb2.Header, status: Ack.Status.ValueType, *,
    reasons: Sequence[types_pb2.Reason] = (), credited_amount_fen: int = 0,
    inbound_enrollment_date: dt.date | None = None,
    inbound_insurance_type: types_pb2.InsuranceType.ValueType = types_pb2.INSURANCE_TYPE_UNSPECIFIED,
    created_at: dt.datetime | None = None,
) -> Ack:
    """回执 answering the message whose header is `answering`: same case, sides swapped.

    Raises ValueError if REJECTED has no reasons, another status has reasons, FUNDS_CREDITED
    has no positive credited amount (or another status has one), or ACCEPTED lacks the inbound
    enrollment date and insurance type (or another status has them).
    """
    if (status == Ack.STATUS_REJECTED) != bool(reasons):
        raise ValueError("reasons are required for, and only for, STATUS_REJECTED")
    if (status == Ack.STATUS_FUNDS_CREDITED) != (credited_amount_fen > 0):
        raise ValueError("a positive credited amount is required for, and only for, STATUS_FUNDS_CREDITED")
    accepted = status == Ack.STATUS_ACCEPTED
    if accepted != (inbound_enrollment_date is not None) or accepted != bool(inbound_insurance_type):
        raise ValueError("the inbound enrollment date and insurance type are required for, and only for, "
                         "STATUS_ACCEPTED")
    ack = Ack(
        header=header(answering.receiver, answering.sender, answering.transfer_id, created_at=created_at),
        answers_message_id=answering.message_id, status=status, reasons=reasons,
        credited_amount_fen=credited_amount_fen, inbound_insurance_type=inbound_insurance_type,
    )
    if inbound_enrollment_date is not None:
        ack.inbound_enrollment_date.CopyFrom(proto_date(inbound_enrollment_date))
    return ack


def transfer_request(
    route: Route, person: types_pb2.Person, outbound_insurance_type: types_pb2.InsuranceType.ValueType,
    inbound_insurance_type: types_pb2.InsuranceType.ValueType, *,
    channel: messages_pb2.TransferRequest.Channel.ValueType = messages_pb2.TransferRequest.CHANNEL_ONLINE,
    created_at: dt.datetime | None = None,
) -> messages_pb2.TransferRequest:
    """转移申请 from the inbound agency (where the person applied) to the outbound agency."""
    return messages_pb2.TransferRequest(
        header=header(route.inbound, route.outbound, route.transfer_id, created_at=created_at), person=person,
        outbound_insurance_type=outbound_insurance_type, inbound_insurance_type=inbound_insurance_type,
        channel=channel,
    )


def withdrawal(route: Route, *, by_inbound: bool, text: str = "",
               created_at: dt.datetime | None = None) -> messages_pb2.Withdrawal:
    """撤回申请 from the applicant's side: the inbound agency if the person applied there."""
    sender, receiver = (route.inbound, route.outbound) if by_inbound else (route.outbound, route.inbound)
    return messages_pb2.Withdrawal(header=header(sender, receiver, route.transfer_id, created_at=created_at), text=text)


# Real county-level region codes of several provinces, used as birth places of synthetic people.
_BIRTH_REGIONS: Final = ("320102", "320506", "330106", "330203", "340104", "110105", "310115", "440305")


def sample_person(seed: int) -> types_pb2.Person:
    """A clearly synthetic person ("测试人员0001") with a valid resident ID number and a synthetic
    national person number (psn_no, 30 digits, "TEST" nowhere a real number has it).

    Deterministic in `seed`; born between 1960 and 2004.
    """
    birth = dt.date(1960, 1, 1) + dt.timedelta(days=(seed * 7919) % (45 * 365))
    region = _BIRTH_REGIONS[seed % len(_BIRTH_REGIONS)]
    number = idnumbers.make(region, birth, seed % 1000)
    return types_pb2.Person(certificate_type=types_pb2.CERTIFICATE_TYPE_RESIDENT_ID_CARD,
                            certificate_number=number, name=f"测试人员{seed % 10000:04d}",
                            psn_no=f"{region[:2]}TEST{seed % 10**24:024d}")


def sample_periods(pooling_region: str, suspension_date: dt.date, seed: int) -> list[messages_pb2.ContributionPeriod]:
    """Two plausible periods at one region ending in the suspension month, one month unpaid."""
    end = suspension_date.year * 12 + suspension_date.month - 1
    first_len, second_len = 12 + seed % 48, 24 + seed % 36

    def ym(index: int) -> tuple[int, int]:
        return index // 12, index % 12 + 1

    second_first = end - second_len + 1
    first_last = second_first - 2  # a one-month gap between employers
    return [
        contribution_period(pooling_region, ym(first_last - first_len + 1), ym(first_last), first_len),
        contribution_period(pooling_region, ym(second_first), ym(end), second_len - 1),
    ]
