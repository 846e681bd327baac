"""Stateless validation of the business messages (pure: no case, no I/O).

`validate` reports every violation of a message at once, each with its field path
(`periods[1].last_month`), so an integrator fixes a message in one round. Descriptions never
repeat a person's certificate number or name.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from typing import Final

from gateway.core.continuity import Period, cumulative_bounds, month_index
from gateway.core.errors import FieldViolation, InvalidMessage
from gateway.core.messages import BusinessMessage
from gateway.core.timestamps import micros, timestamp_micros
from gateway.core.workdays import local_date
from mitransfer.protocol import idnumbers
from mitransfer.v1 import messages_pb2, types_pb2

CLOCK_SKEW: Final = dt.timedelta(minutes=5)
EARLIEST: Final = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
MAX_FUND_FEN: Final = 10_000_000_000  # 1e8 yuan: a sanity cap, far above any personal account
MAX_PERIODS: Final = 600  # a table's contribution periods: far more than a working life has
MAX_PSN_NO: Final = 30    # 人员编号 psn_no: 字符型 30 on the national platform
PROVINCE_CODES: Final = frozenset({
    "11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34", "35", "36", "37", "41", "42",
    "43", "44", "45", "46", "50", "51", "52", "53", "54", "61", "62", "63", "64", "65", "71", "81", "82",
})
_RESIDENT_TYPES: Final = frozenset({types_pb2.INSURANCE_TYPE_RESIDENT_BASIC,
                                    types_pb2.INSURANCE_TYPE_RESIDENT_CRITICAL_ILLNESS})
Ack = messages_pb2.Acknowledgement
Notice = messages_pb2.OutboundNotice
# The enums' defined numbers, once: the generated `values()` builds a list on every call.
_CERTIFICATE_TYPES: Final = frozenset(types_pb2.CertificateType.values())
_INSURANCE_TYPES: Final = frozenset(types_pb2.InsuranceType.values())
_CHANNELS: Final = frozenset(messages_pb2.TransferRequest.Channel.values())
_REASON_CODES: Final = frozenset(types_pb2.ReasonCode.values())
_ACK_STATUSES: Final = frozenset(Ack.Status.values())
_CANONICAL_UUID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_EARLIEST_US: Final = micros(EARLIEST)


def is_region_code(code: str) -> bool:
    """A 医保区划 code: 6 ASCII digits under a province prefix. Not a national list: codes such as
    329900 (a province's own level) are not GB/T 2260 codes but are valid here."""
    return len(code) == 6 and code.isascii() and code.isdigit() and code[:2] in PROVINCE_CODES


def validate(message: BusinessMessage, *, now: dt.datetime) -> None:
    """Raise InvalidMessage listing every field violation of `message`; return if there is none."""
    v: list[FieldViolation] = []
    _header(v, message.header, now)
    if isinstance(message, messages_pb2.TransferRequest):
        _request(v, message, now)
    elif isinstance(message, messages_pb2.Withdrawal):
        if len(message.text) > 500:
            _add(v, "text", "is longer than 500 characters")
    elif isinstance(message, Notice):
        _notice(v, message, now)
    elif isinstance(message, messages_pb2.InformationTable):
        _table(v, message, now)
    elif isinstance(message, messages_pb2.FundTransfer):
        _fund(v, message)
    else:
        _ack(v, message)
    if v:
        raise InvalidMessage(v)


def _add(v: list[FieldViolation], field: str, description: str) -> None:
    v.append(FieldViolation(field, description))


def _is_uuid(value: str) -> bool:
    """Canonical form: what str(uuid.UUID(value)) gives back, lower-case 8-4-4-4-12 hex."""
    return _CANONICAL_UUID.fullmatch(value) is not None


def _header(v: list[FieldViolation], h: messages_pb2.Header, now: dt.datetime) -> None:
    for name in ("message_id", "transfer_id"):
        if not _is_uuid(getattr(h, name)):
            _add(v, f"header.{name}", "must be a canonical lower-case UUID")
    for name in ("sender", "receiver"):
        if not is_region_code(getattr(h, name)):
            _add(v, f"header.{name}", f"{getattr(h, name)!r} is not a 6-digit 医保区划 code of a province")
    if h.sender and h.sender == h.receiver:
        _add(v, "header.receiver", "must differ from the sender")
    if not h.HasField("created_at"):
        _add(v, "header.created_at", "is required")
    elif not 0 <= h.created_at.nanos < 1_000_000_000:
        _add(v, "header.created_at", "nanos must be between 0 and 999,999,999")
    else:  # in epoch microseconds, as ToDatetime would truncate them (it costs more than this check)
        created = timestamp_micros(h.created_at)
        if created > micros(now + CLOCK_SKEW):
            _add(v, "header.created_at", "is more than 5 minutes in the future")
        elif created < _EARLIEST_US:
            _add(v, "header.created_at", "is before 2000-01-01")


def _person(v: list[FieldViolation], p: types_pb2.Person, today: dt.date) -> None:
    if not p.certificate_type or p.certificate_type not in _CERTIFICATE_TYPES:
        _add(v, "person.certificate_type", "must be a defined certificate type")
    if not p.certificate_number:
        _add(v, "person.certificate_number", "is required")
    elif len(p.certificate_number) > 32:
        _add(v, "person.certificate_number", "is longer than 32 characters")
    elif p.certificate_type == types_pb2.CERTIFICATE_TYPE_RESIDENT_ID_CARD:
        for problem in idnumbers.problems(p.certificate_number, today=today):
            _add(v, "person.certificate_number", problem)
    if not p.name.strip():
        _add(v, "person.name", "is required")
    elif len(p.name) > 50:
        _add(v, "person.name", "is longer than 50 characters")
    elif any(ord(c) < 32 or ord(c) == 127 for c in p.name):
        _add(v, "person.name", "contains control characters")
    if p.psn_no and not (len(p.psn_no) <= MAX_PSN_NO and p.psn_no.isascii() and p.psn_no.isalnum()):
        _add(v, "person.psn_no", f"must be 1 to {MAX_PSN_NO} ASCII letters and digits when present")


def _insurance(v: list[FieldViolation], value: int, field: str = "insurance_type", *, optional: bool = False) -> None:
    if optional and not value:
        return
    if not value or value not in _INSURANCE_TYPES:
        _add(v, field, "must be a defined insurance type")


def _not_in_future(v: list[FieldViolation], field: str, day: dt.date | None, today: dt.date) -> None:
    """A suspension has happened: 中止参保 is a fact the outbound side reports, not a plan."""
    if day is not None and day > today:
        _add(v, field, f"is after today ({today.isoformat()}, Asia/Shanghai): a suspension is reported once done")


def _request(v: list[FieldViolation], r: messages_pb2.TransferRequest, now: dt.datetime) -> None:
    _person(v, r.person, local_date(now))
    _insurance(v, r.outbound_insurance_type, "outbound_insurance_type")
    _insurance(v, r.inbound_insurance_type, "inbound_insurance_type")
    if not r.channel or r.channel not in _CHANNELS:
        _add(v, "channel", "must be a defined channel")


def _date(v: list[FieldViolation], field: str, d: types_pb2.Date, present: bool) -> dt.date | None:
    if not present:
        _add(v, field, "is required")
        return None
    try:
        return dt.date(d.year, d.month, d.day)
    except ValueError:
        _add(v, field, f"{d.year:04d}-{d.month:02d}-{d.day:02d} is not a calendar date")
        return None


def _month(v: list[FieldViolation], field: str, ym: types_pb2.YearMonth, present: bool) -> int | None:
    """The month as a count (year * 12 + month - 1), or None if missing or invalid."""
    if not present:
        _add(v, field, "is required")
        return None
    if not 1950 <= ym.year <= 2100 or not 1 <= ym.month <= 12:
        _add(v, field, f"{ym.year:04d}-{ym.month:02d} is not a month between 1950 and 2100")
        return None
    return ym.year * 12 + ym.month - 1


def _reasons(v: list[FieldViolation], reasons: Iterable[types_pb2.Reason], *, required: bool, status: str) -> None:
    listed = list(reasons)
    if required and not listed:
        _add(v, "reasons", f"at least one reason is required when {status}")
    if not required and listed:
        _add(v, "reasons", f"reasons are only for a refusal or rejection, not when {status}")
    seen: set[int] = set()
    for i, r in enumerate(listed):
        if not r.code or r.code not in _REASON_CODES:
            _add(v, f"reasons[{i}].code", "must be a defined reason code")
        elif r.code in seen:
            _add(v, f"reasons[{i}].code", "is listed twice")
        seen.add(r.code)
        if r.code == types_pb2.REASON_CODE_OTHER and not r.text.strip():
            _add(v, f"reasons[{i}].text", "is required for REASON_CODE_OTHER")
        if len(r.text) > 500:
            _add(v, f"reasons[{i}].text", "is longer than 500 characters")


def _notice(v: list[FieldViolation], n: messages_pb2.OutboundNotice, now: dt.datetime) -> None:
    today = local_date(now)
    _person(v, n.person, today)
    _insurance(v, n.insurance_type)
    _insurance(v, n.inbound_insurance_type, "inbound_insurance_type", optional=True)
    if n.outcome == Notice.OUTCOME_ACCEPTED:
        suspended = _date(v, "suspension_date", n.suspension_date, n.HasField("suspension_date"))
        _not_in_future(v, "suspension_date", suspended, today)
        _reasons(v, n.reasons, required=False, status="accepted")
    elif n.outcome == Notice.OUTCOME_REFUSED:
        if n.HasField("suspension_date"):
            _add(v, "suspension_date", "a refused case is not suspended")
        _reasons(v, n.reasons, required=True, status="refused")
    else:
        _add(v, "outcome", "must be ACCEPTED or REFUSED")


def _table(v: list[FieldViolation], t: messages_pb2.InformationTable, now: dt.datetime) -> None:
    today = local_date(now)
    _person(v, t.person, today)
    _insurance(v, t.insurance_type)
    _insurance(v, t.inbound_insurance_type, "inbound_insurance_type", optional=True)
    suspended = _date(v, "suspension_date", t.suspension_date, t.HasField("suspension_date"))
    _not_in_future(v, "suspension_date", suspended, today)
    periods = _periods(v, t, suspended)
    if periods is not None:
        lower, upper = cumulative_bounds(periods)
        if not lower <= t.cumulative_months <= upper:
            expected = f"{lower}" if lower == upper else f"between {lower} and {upper}"
            _add(v, "cumulative_months", f"is {t.cumulative_months}, but the periods' months paid and counted "
                 f"as paid make {expected} (the same month never counts twice)")
    for name in ("account_balance_fen", "account_balance_retained_fen"):
        balance = getattr(t, name)
        if not 0 <= balance <= MAX_FUND_FEN:
            _add(v, name, f"must be between 0 and {MAX_FUND_FEN} fen")
        elif balance > 0 and t.insurance_type in _RESIDENT_TYPES:
            _add(v, name, "must be 0: resident insurance has no personal account")
    if t.account_balance_fen > 0 and t.account_balance_retained_fen > 0:
        _add(v, "account_balance_retained_fen", "a balance is either transferred out or retained, not both")


def _periods(v: list[FieldViolation], t: messages_pb2.InformationTable,
             suspended: dt.date | None) -> list[Period] | None:
    """The periods as month indices, or None if any is invalid (the cumulative check then waits)."""
    if not t.periods:
        _add(v, "periods", "at least one contribution period is required")
        return None
    if len(t.periods) > MAX_PERIODS:
        _add(v, "periods", f"at most {MAX_PERIODS} contribution periods")
        return None
    valid: list[Period] = []
    previous_first: int | None = None
    suspension_month = None if suspended is None else month_index(suspended.year, suspended.month)
    for i, p in enumerate(t.periods):
        path = f"periods[{i}]"
        ok = True
        if not is_region_code(p.pooling_region):
            _add(v, f"{path}.pooling_region", f"{p.pooling_region!r} is not a 医保区划 code")
        _insurance(v, p.insurance_type, f"{path}.insurance_type", optional=True)
        first = _month(v, f"{path}.first_month", p.first_month, p.HasField("first_month"))
        last = _month(v, f"{path}.last_month", p.last_month, p.HasField("last_month"))
        if first is None or last is None:
            continue
        if first > last:
            _add(v, f"{path}.last_month", "is before first_month")
            continue
        span = last - first + 1
        if p.months_paid < 0 or p.months_deemed < 0:
            _add(v, f"{path}.months_paid", "months_paid and months_deemed must not be negative")
            ok = False
        elif not 1 <= p.months_paid + p.months_deemed <= span:
            _add(v, f"{path}.months_paid", f"months_paid + months_deemed must be between 1 and the {span} "
                 "months of the period")
            ok = False
        if previous_first is not None and first < previous_first:
            _add(v, f"{path}.first_month", "precedes the period before: periods are listed oldest first")
            ok = False
        if suspension_month is not None and last > suspension_month:
            _add(v, f"{path}.last_month", "is after the suspension month")
            ok = False
        previous_first = first
        if ok:
            valid.append(Period(first, last, p.months_paid + p.months_deemed))
    return valid if len(valid) == len(t.periods) else None


def _account(v: list[FieldViolation], path: str, a: messages_pb2.FundAccount) -> None:
    for name in ("bank_name", "account_name"):
        value = getattr(a, name)
        if not value.strip():
            _add(v, f"{path}.{name}", "is required")
        elif len(value) > 100:
            _add(v, f"{path}.{name}", "is longer than 100 characters")
    n = a.account_number
    if not (6 <= len(n) <= 34 and n.isascii() and n.isdigit()):
        _add(v, f"{path}.account_number", "must be 6 to 34 digits")


def _fund(v: list[FieldViolation], f: messages_pb2.FundTransfer) -> None:
    if not 0 < f.amount_fen <= MAX_FUND_FEN:
        _add(v, "amount_fen", f"must be between 1 and {MAX_FUND_FEN} fen")
    if f.currency != "CNY":
        _add(v, "currency", "must be CNY")
    _account(v, "payer", f.payer)
    _account(v, "payee", f.payee)
    if f.payer.account_number and f.payer.account_number == f.payee.account_number:
        _add(v, "payee.account_number", "must differ from the payer's account")
    ref = f.bank_reference
    if not ref:
        _add(v, "bank_reference", "is required")
    elif len(ref) > 64 or not ref.isascii() or not ref.isprintable():
        _add(v, "bank_reference", "must be at most 64 printable ASCII characters")
    _date(v, "value_date", f.value_date, f.HasField("value_date"))


def _ack(v: list[FieldViolation], a: messages_pb2.Acknowledgement) -> None:
    if not _is_uuid(a.answers_message_id):
        _add(v, "answers_message_id", "must be a canonical lower-case UUID")
    elif a.answers_message_id == a.header.message_id:
        _add(v, "answers_message_id", "a message cannot answer itself")
    if not a.status or a.status not in _ACK_STATUSES:
        _add(v, "status", "must be a defined status")
        return
    status = Ack.Status.Name(a.status).removeprefix("STATUS_").lower()
    _reasons(v, a.reasons, required=a.status == Ack.STATUS_REJECTED, status=status)
    if a.status == Ack.STATUS_FUNDS_CREDITED:
        if a.credited_amount_fen <= 0:
            _add(v, "credited_amount_fen", "must be positive when funds are credited")
    elif a.credited_amount_fen:
        _add(v, "credited_amount_fen", "is only for STATUS_FUNDS_CREDITED")
    if a.status == Ack.STATUS_ACCEPTED:  # the inbound acceptance carries what continuity needs
        _date(v, "inbound_enrollment_date", a.inbound_enrollment_date, a.HasField("inbound_enrollment_date"))
        _insurance(v, a.inbound_insurance_type, "inbound_insurance_type")
    else:
        if a.HasField("inbound_enrollment_date"):
            _add(v, "inbound_enrollment_date", "is only for STATUS_ACCEPTED")
        if a.inbound_insurance_type:
            _add(v, "inbound_insurance_type", "is only for STATUS_ACCEPTED")
