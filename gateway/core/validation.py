"""Stateless validation of the business messages (pure: no case, no I/O).

`validate` reports the violations of a message at once, each with its field path
(`periods[1].last_month`), so an integrator fixes a message in one round. Descriptions never
repeat a person's certificate number or name, and repeat any other value a caller sent only as
`gateway.core.text.shown` does (a short, escaped prefix). A repeated field's count is checked
before its items, so a message of a million empty periods costs one violation, not a million.

Every field is bounded where its meaning bounds it: dates no earlier than the scheme (1998) and no
later than a transfer can make sense of (a suspension not after today), months from 1950 (deemed
contribution years reach back before the scheme) to this month, one money cap for every amount,
no control or bidirectional formatting character in any text, and `header.created_at` within the
freshness window of `gateway.core.limits.MessageLimits`.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import Final

from google.protobuf import timestamp_pb2

from gateway.core.automatic import BLOCKERS
from gateway.core.continuity import Period, cumulative_bounds, month_index
from gateway.core.errors import FieldViolation, InvalidMessage
from gateway.core.limits import MessageLimits
from gateway.core.messages import BusinessMessage, IndexMessage
from gateway.core.text import shown, unsafe_description
from gateway.core.timestamps import micros, timestamp_micros
from gateway.core.workdays import local_date
from mitransfer.protocol import idnumbers
from mitransfer.v1 import automatic_pb2, messages_pb2, types_pb2

# One cap for every amount (balances, transfers, credits): 1e8 yuan, far above any personal
# account. One cap, so that no case can hold a balance its fund transfer could not move.
MAX_FUND_FEN: Final = 10_000_000_000
MAX_PERIODS: Final = 600  # a table's contribution periods: far more than a working life has
MAX_PSN_NO: Final = 30    # 人员编号 psn_no: 字符型 30 on the national platform
MAX_TEXT: Final = 500     # free text: a reason's, a withdrawal's
# No date of a transfer precedes the basic medical insurance scheme (国发〔1998〕44号).
EARLIEST_DATE: Final = dt.date(1998, 1, 1)
EARLIEST_MONTH: Final = (1950, 1)  # deemed contribution months (视同缴费) reach back before the scheme
# How far ahead a date may be: an inbound enrollment for next year's resident insurance is made
# months before it starts; a bank's value date may be set ahead, or recorded late.
DATE_HORIZON: Final = dt.timedelta(days=366)
DEFAULT_LIMITS: Final = MessageLimits()
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
MAX_REASONS: Final = len(_REASON_CODES) - 1  # each defined code once (not REASON_CODE_UNSPECIFIED)
_ACK_STATUSES: Final = frozenset(Ack.Status.values())
_CANONICAL_UUID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TIMESTAMP_SECONDS: Final = (-62_135_596_800, 253_402_300_799)  # 0001-01-01T00:00:00Z, 9999-12-31T23:59:59Z


def is_region_code(code: str) -> bool:
    """A 医保区划 code: 6 ASCII digits under a province prefix. Not a national list: codes such as
    329900 (a province's own level) are not GB/T 2260 codes but are valid here."""
    return len(code) == 6 and code.isascii() and code.isdigit() and code[:2] in PROVINCE_CODES


def validate(message: BusinessMessage, *, now: dt.datetime, limits: MessageLimits = DEFAULT_LIMITS) -> None:
    """Raise InvalidMessage listing the field violations of `message`; return if there is none."""
    v: list[FieldViolation] = []
    if isinstance(message, _INDEX_MESSAGES):
        _index_message(v, message, now, limits)
        if v:
            raise InvalidMessage(v)
        return
    _header(v, message.header, now, limits)
    if isinstance(message, messages_pb2.TransferRequest):
        _request(v, message, now)
    elif isinstance(message, messages_pb2.Withdrawal):
        _text(v, "text", message.text)
    elif isinstance(message, Notice):
        _notice(v, message, now)
    elif isinstance(message, messages_pb2.InformationTable):
        _table(v, message, now)
    elif isinstance(message, messages_pb2.FundTransfer):
        _fund(v, message, now)
    elif isinstance(message, messages_pb2.FundReturn):
        if not is_uuid(message.returns_message_id):
            _add(v, "returns_message_id", "must be a canonical lower-case UUID")
        _fund(v, message, now)
    elif isinstance(message, automatic_pb2.BlockerResolution):
        _resolution(v, message)
    else:
        _ack(v, message, now)
    if v:
        raise InvalidMessage(v)


def _add(v: list[FieldViolation], field: str, description: str) -> None:
    v.append(FieldViolation(field, description))


def is_uuid(value: str) -> bool:
    """Canonical form: what str(uuid.UUID(value)) gives back, lower-case 8-4-4-4-12 hex."""
    return _CANONICAL_UUID.fullmatch(value) is not None


def text_problem(value: str, limit: int = MAX_TEXT) -> str | None:
    """What is wrong with `value` as free text of at most `limit` characters; None if nothing is."""
    if len(value) > limit:
        return f"is longer than {limit} characters"
    return unsafe_description(value)


def timestamp_problem(ts: timestamp_pb2.Timestamp) -> str | None:
    """What is wrong with `ts` as a Timestamp (0001-01-01 to 9999-12-31, nanos 0 to 999,999,999)."""
    if not 0 <= ts.nanos < 1_000_000_000:
        return "nanos must be between 0 and 999,999,999"
    if not _TIMESTAMP_SECONDS[0] <= ts.seconds <= _TIMESTAMP_SECONDS[1]:
        return "is not between 0001-01-01 and 9999-12-31"
    return None


def _text(v: list[FieldViolation], field: str, value: str, limit: int = MAX_TEXT) -> None:
    """Free text: at most `limit` characters, nothing that displays otherwise than it is stored."""
    problem = text_problem(value, limit)
    if problem is not None:
        _add(v, field, problem)


def _span(delta: dt.timedelta) -> str:
    """`7 days`, `300 seconds`: a window as the configuration states it."""
    if delta >= dt.timedelta(days=1):
        return f"{delta / dt.timedelta(days=1):g} days"
    return f"{delta.total_seconds():g} seconds"


def _header(v: list[FieldViolation], h: messages_pb2.Header, now: dt.datetime, limits: MessageLimits) -> None:
    for name in ("message_id", "transfer_id"):
        if not is_uuid(getattr(h, name)):
            _add(v, f"header.{name}", "must be a canonical lower-case UUID")
    for name in ("sender", "receiver"):
        if not is_region_code(getattr(h, name)):
            _add(v, f"header.{name}", f"{shown(getattr(h, name))} is not a 6-digit 医保区划 code of a province")
    if h.sender and h.sender == h.receiver:
        _add(v, "header.receiver", "must differ from the sender")
    if not h.HasField("created_at"):
        _add(v, "header.created_at", "is required")
    elif not 0 <= h.created_at.nanos < 1_000_000_000:
        _add(v, "header.created_at", "nanos must be between 0 and 999,999,999")
    else:  # in epoch microseconds, as ToDatetime would truncate them (it costs more than this check)
        created = timestamp_micros(h.created_at)
        if created > micros(now + limits.max_clock_skew):
            _add(v, "header.created_at", f"is more than {_span(limits.max_clock_skew)} ahead of the gateway's clock")
        elif created < micros(now - limits.max_age):
            _add(v, "header.created_at", f"is more than {_span(limits.max_age)} old: a new message is submitted "
                 "soon after it is made (a retry of an accepted one is answered whatever its age)")


def _person(v: list[FieldViolation], p: types_pb2.Person, today: dt.date) -> None:
    if not p.certificate_type or p.certificate_type not in _CERTIFICATE_TYPES:
        _add(v, "person.certificate_type", "must be a defined certificate type")
    if not p.certificate_number:
        _add(v, "person.certificate_number", "is required")
    elif len(p.certificate_number) > 32:
        _add(v, "person.certificate_number", "is longer than 32 characters")
    elif (unsafe := unsafe_description(p.certificate_number)) is not None:
        _add(v, "person.certificate_number", unsafe)
    elif p.certificate_type == types_pb2.CERTIFICATE_TYPE_RESIDENT_ID_CARD:
        for problem in idnumbers.problems(p.certificate_number, today=today):
            _add(v, "person.certificate_number", problem)
    if not p.name.strip():
        _add(v, "person.name", "is required")
    else:
        _text(v, "person.name", p.name, 50)
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


def date_problem(d: types_pb2.Date, *, earliest: dt.date, latest: dt.date) -> str | None:
    """What is wrong with `d` as a date between `earliest` and `latest`; None if nothing is."""
    try:
        day = dt.date(d.year, d.month, d.day)
    except ValueError:
        if not 1 <= d.year <= 9999 or not 1 <= d.month <= 12:  # beyond any calendar: nothing worth repeating
            return "is not a calendar date"
        return f"{d.year:04d}-{d.month:02d}-{d.day:02d} is not a calendar date"
    if not earliest <= day <= latest:
        return f"{day.isoformat()} is not between {earliest.isoformat()} and {latest.isoformat()}"
    return None


def _request(v: list[FieldViolation], r: messages_pb2.TransferRequest, now: dt.datetime) -> None:
    _person(v, r.person, local_date(now))
    _insurance(v, r.outbound_insurance_type, "outbound_insurance_type")
    _insurance(v, r.inbound_insurance_type, "inbound_insurance_type")
    if not r.channel or r.channel not in _CHANNELS:
        _add(v, "channel", "must be a defined channel")
    elif r.channel == messages_pb2.TransferRequest.CHANNEL_AUTOMATIC:
        _add(v, "channel", "CHANNEL_AUTOMATIC is the gateway's own: an automatic case opens from an Enrollment")


def _date(v: list[FieldViolation], field: str, d: types_pb2.Date, present: bool, *, latest: dt.date,
          earliest: dt.date = EARLIEST_DATE) -> dt.date | None:
    """The date, or None if missing, not a calendar date, or outside [earliest, latest]."""
    if not present:
        _add(v, field, "is required")
        return None
    problem = date_problem(d, earliest=earliest, latest=latest)
    if problem is not None:
        _add(v, field, problem)
        return None
    return dt.date(d.year, d.month, d.day)


def _month(v: list[FieldViolation], field: str, ym: types_pb2.YearMonth, present: bool,
           today: dt.date) -> int | None:
    """The month as a count (year * 12 + month - 1), or None if missing or invalid."""
    if not present:
        _add(v, field, "is required")
        return None
    first, latest = EARLIEST_MONTH, (today.year, today.month)
    if not 1 <= ym.month <= 12 or not first <= (ym.year, ym.month) <= latest:
        shown_month = f"{ym.year:04d}-{ym.month:02d}" if 0 <= ym.year <= 9999 and 0 <= ym.month <= 99 else "it"
        _add(v, field, f"{shown_month} is not a month from {first[0]}-{first[1]:02d} to {latest[0]}-{latest[1]:02d}")
        return None
    return ym.year * 12 + ym.month - 1


def _reasons(v: list[FieldViolation], reasons: Sequence[types_pb2.Reason], *, required: bool, status: str) -> None:
    if required and not reasons:
        _add(v, "reasons", f"at least one reason is required when {status}")
    if not required and reasons:
        _add(v, "reasons", f"reasons are only for a refusal or rejection, not when {status}")
        return
    if len(reasons) > MAX_REASONS:
        _add(v, "reasons", f"at most {MAX_REASONS} reasons (each code once), not {len(reasons)}")
        return
    listed = list(reasons)
    seen: set[int] = set()
    for i, r in enumerate(listed):
        if not r.code or r.code not in _REASON_CODES:
            _add(v, f"reasons[{i}].code", "must be a defined reason code")
        elif r.code in seen:
            _add(v, f"reasons[{i}].code", "is listed twice")
        seen.add(r.code)
        if r.code == types_pb2.REASON_CODE_OTHER and not r.text.strip():
            _add(v, f"reasons[{i}].text", "is required for REASON_CODE_OTHER")
        _text(v, f"reasons[{i}].text", r.text)


def _notice(v: list[FieldViolation], n: messages_pb2.OutboundNotice, now: dt.datetime) -> None:
    today = local_date(now)
    _person(v, n.person, today)
    _insurance(v, n.insurance_type)
    _insurance(v, n.inbound_insurance_type, "inbound_insurance_type", optional=True)
    if n.outcome == Notice.OUTCOME_ACCEPTED:
        _suspension(v, n.suspension_date, n.HasField("suspension_date"), today)
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
    suspended = _suspension(v, t.suspension_date, t.HasField("suspension_date"), today)
    periods = _periods(v, t, suspended, today)
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


def _suspension(v: list[FieldViolation], d: types_pb2.Date, present: bool, today: dt.date) -> dt.date | None:
    """A suspension date: from the scheme's start, not after today."""
    suspended = _date(v, "suspension_date", d, present, latest=dt.date.max)
    _not_in_future(v, "suspension_date", suspended, today)
    return suspended if suspended is not None and suspended <= today else None


def _periods(v: list[FieldViolation], t: messages_pb2.InformationTable,
             suspended: dt.date | None, today: dt.date) -> list[Period] | None:
    """The periods as month indices, or None if any is invalid (the cumulative check then waits)."""
    if not t.periods:
        _add(v, "periods", "at least one contribution period is required")
        return None
    if len(t.periods) > MAX_PERIODS:  # before any period is looked at: one violation, however many
        _add(v, "periods", f"at most {MAX_PERIODS} contribution periods, not {len(t.periods)}")
        return None
    valid: list[Period] = []
    previous_first: int | None = None
    suspension_month = None if suspended is None else month_index(suspended.year, suspended.month)
    for i, p in enumerate(t.periods):
        path = f"periods[{i}]"
        ok = True
        if not is_region_code(p.pooling_region):
            _add(v, f"{path}.pooling_region", f"{shown(p.pooling_region)} is not a 医保区划 code")
        _insurance(v, p.insurance_type, f"{path}.insurance_type", optional=True)
        first = _month(v, f"{path}.first_month", p.first_month, p.HasField("first_month"), today)
        last = _month(v, f"{path}.last_month", p.last_month, p.HasField("last_month"), today)
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
        else:
            _text(v, f"{path}.{name}", value, 100)
    n = a.account_number
    if not (6 <= len(n) <= 34 and n.isascii() and n.isdigit()):
        _add(v, f"{path}.account_number", "must be 6 to 34 digits")


def _fund(v: list[FieldViolation], f: messages_pb2.FundTransfer | messages_pb2.FundReturn,
          now: dt.datetime) -> None:
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
    today = local_date(now)
    _date(v, "value_date", f.value_date, f.HasField("value_date"), earliest=today - DATE_HORIZON,
          latest=today + DATE_HORIZON)


def _ack(v: list[FieldViolation], a: messages_pb2.Acknowledgement, now: dt.datetime) -> None:
    if not is_uuid(a.answers_message_id):
        _add(v, "answers_message_id", "must be a canonical lower-case UUID")
    elif a.answers_message_id == a.header.message_id:
        _add(v, "answers_message_id", "a message cannot answer itself")
    if not a.status or a.status not in _ACK_STATUSES:
        _add(v, "status", "must be a defined status")
        return
    status = Ack.Status.Name(a.status).removeprefix("STATUS_").lower()
    _reasons(v, a.reasons, required=a.status == Ack.STATUS_REJECTED, status=status)
    if a.status == Ack.STATUS_FUNDS_CREDITED:
        if not 0 < a.credited_amount_fen <= MAX_FUND_FEN:
            _add(v, "credited_amount_fen", f"must be between 1 and {MAX_FUND_FEN} fen when funds are credited")
    elif a.credited_amount_fen:
        _add(v, "credited_amount_fen", "is only for STATUS_FUNDS_CREDITED")
    if a.status == Ack.STATUS_ACCEPTED:  # the inbound acceptance carries what continuity needs
        # Not before the scheme, and not more than a year ahead (next year's resident insurance is
        # enrolled in advance); with the suspension date's own window this also keeps it within
        # plausible reach of the suspension.
        _date(v, "inbound_enrollment_date", a.inbound_enrollment_date, a.HasField("inbound_enrollment_date"),
              latest=local_date(now) + DATE_HORIZON)
        _insurance(v, a.inbound_insurance_type, "inbound_insurance_type")
    else:
        if a.HasField("inbound_enrollment_date"):
            _add(v, "inbound_enrollment_date", "is only for STATUS_ACCEPTED")
        if a.inbound_insurance_type:
            _add(v, "inbound_insurance_type", "is only for STATUS_ACCEPTED")


# -- the suspended-record index's messages (gateway.core.automatic) ----------------------------------

_INDEX_MESSAGES: Final = (automatic_pb2.SuspendedRecord, automatic_pb2.SuspendedRecordWithdrawal,
                          automatic_pb2.Enrollment, automatic_pb2.EnrollmentOptOut)
_AUTOMATIC_INSURANCE: Final = frozenset({types_pb2.INSURANCE_TYPE_EMPLOYEE_BASIC,
                                         types_pb2.INSURANCE_TYPE_RESIDENT_BASIC})
_WITHDRAWAL_REASONS: Final = frozenset(automatic_pb2.SuspendedRecordWithdrawal.Reason.values()) - {0}
MAX_CHOSEN_AGENCIES: Final = 10  # a person's suspended records at once: a handful at most


def _index_message(v: list[FieldViolation], m: IndexMessage, now: dt.datetime, limits: MessageLimits) -> None:
    today = local_date(now)
    names_record = isinstance(m, automatic_pb2.SuspendedRecord | automatic_pb2.SuspendedRecordWithdrawal)
    _index_header(v, m.header, now, limits, names_record=names_record)
    if isinstance(m, automatic_pb2.SuspendedRecord):
        _certificate_only(v, m.person, today)
        _automatic_insurance(v, m.insurance_type)
        _date(v, "suspension_date", m.suspension_date, m.HasField("suspension_date"), latest=today)
    elif isinstance(m, automatic_pb2.SuspendedRecordWithdrawal):
        if m.reason not in _WITHDRAWAL_REASONS:
            _add(v, "reason", "must be a defined reason")
    elif isinstance(m, automatic_pb2.Enrollment):
        _person(v, m.person, today)
        _automatic_insurance(v, m.insurance_type)
        _date(v, "enrollment_date", m.enrollment_date, m.HasField("enrollment_date"), latest=today + DATE_HORIZON)
        _chosen_agencies(v, m)
    else:
        if not is_uuid(m.enrollment_message_id):
            _add(v, "enrollment_message_id", "must be a canonical lower-case UUID")
        _text(v, "text", m.text)


def _index_header(v: list[FieldViolation], h: messages_pb2.Header, now: dt.datetime, limits: MessageLimits, *,
                  names_record: bool) -> None:
    """The header rules of every message, but the receiver is the gateway (empty), and the transfer id
    names the record (a suspended record and its withdrawal) or nothing (an enrollment and its opt-out)."""
    found: list[FieldViolation] = []
    _header(found, h, now, limits)
    v.extend(f for f in found if f.field not in ("header.receiver", "header.transfer_id"))
    if h.receiver:
        _add(v, "header.receiver", "must be empty: the index's messages are addressed to the gateway")
    if names_record and not is_uuid(h.transfer_id):
        _add(v, "header.transfer_id", "must be a canonical lower-case UUID: the record's id, which becomes the"
             " transfer id of the case it opens")
    elif not names_record and h.transfer_id:
        _add(v, "header.transfer_id", "must be empty: an enrollment opens one case per matching record, each with"
             " the record's id")


def _certificate_only(v: list[FieldViolation], p: types_pb2.Person, today: dt.date) -> None:
    """A suspended record's person: the certificate and nothing more (the index needs no more)."""
    found: list[FieldViolation] = []
    _person(found, p, today)
    v.extend(f for f in found if f.field != "person.name")
    for name in ("name", "psn_no"):
        if getattr(p, name):
            _add(v, f"person.{name}", "must be empty: the index keeps a keyed hash of the certificate and needs"
                 " nothing else")


def _automatic_insurance(v: list[FieldViolation], value: int) -> None:
    if value not in _AUTOMATIC_INSURANCE:
        _add(v, "insurance_type", "must be 310 or 390: the insurance types the transfer measures cover")


def _chosen_agencies(v: list[FieldViolation], m: automatic_pb2.Enrollment) -> None:
    chosen = list(m.outbound_agencies)
    if len(chosen) > MAX_CHOSEN_AGENCIES:
        _add(v, "outbound_agencies", f"at most {MAX_CHOSEN_AGENCIES}")
        return
    seen: set[str] = set()
    for i, agency in enumerate(chosen):
        if not is_region_code(agency):
            _add(v, f"outbound_agencies[{i}]", f"{shown(agency)} is not a 6-digit 医保区划 code of a province")
        elif agency in seen:
            _add(v, f"outbound_agencies[{i}]", "is listed twice")
        elif agency[:2] == m.header.sender[:2]:
            _add(v, f"outbound_agencies[{i}]", "is in the enrollment's own province: the gateway opens transfers"
                 " across provinces only")
        seen.add(agency)


def _resolution(v: list[FieldViolation], m: automatic_pb2.BlockerResolution) -> None:
    """The blockers cleared: at least one, each once, each one a person can clear (在院未结算, 欠费,
    多重参保编号, 缴费信息不完整, 透支)."""
    if not m.resolved:
        _add(v, "resolved", "at least one blocker is required")
    elif len(m.resolved) > len(BLOCKERS):
        _add(v, "resolved", f"at most {len(BLOCKERS)} blockers, each once")
    else:
        seen: set[int] = set()
        for i, code in enumerate(m.resolved):
            if code not in BLOCKERS:
                _add(v, f"resolved[{i}]", "must be a blocker: unsettled hospital stay, arrears, multiple insured"
                     " numbers, incomplete contributions or an overdrawn account")
            elif code in seen:
                _add(v, f"resolved[{i}]", "is listed twice")
            seen.add(code)
    _text(v, "text", m.text)
