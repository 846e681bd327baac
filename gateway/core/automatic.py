"""Automatic transfer (免申请): which suspended records a new enrollment opens a case for (pure).

An outbound platform registers each suspended record (中止参保) in the gateway's index; an inbound
platform reports each new enrollment. Both are kept under the person's key
(`gateway.core.personkeys`), and whichever arrives second finds the first: the gateway then opens
the case itself, as if the person had applied at the inbound side. This module says which pairs
match, in what order, and how long an enrollment waits for a record; the store finds the
candidates (same person, under the locks that make the second arrival see the first) and asks.

A record and an enrollment match when
- they are in different provinces (a move inside one province is that province's own business:
  Zhejiang's 自动归集 and Jiangsu's 免申请 already handle it on the province's one platform);
- the enrollment named no outbound agency, or named the record's (a person with several suspended
  records may choose which to transfer, as Jiangsu lets them);
- the enrollment is not before the suspension (不得重复参保: the same months would be insured twice);
- resident → resident insurance, the enrollment is in a later year than the suspension (原则上当年度
  在转入地不再办理转移接续手续).
Each rule would otherwise refuse the case later; a pair that fails one opens nothing.

Several matching records open one case each, the oldest suspension first. A record that arrives
while enrollments wait is matched with the newest one: a person's latest enrollment is where they
are insured now.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from gateway.core.settings import setting
from mitransfer.v1 import types_pb2

RESIDENT: Final = types_pb2.INSURANCE_TYPE_RESIDENT_BASIC
DEFAULT_RETENTION: Final = dt.timedelta(days=90)
# What the person must clear at the outbound side before a transfer (江苏 免申请: 若存在转出地在院费用
# 未结算、历史欠费、多重参保编号或缴费信息不完整等情形，需先完成前置处理方可办理; and an overdrawn personal
# account). An automatic case refused for these alone waits for them to be resolved instead of closing.
BLOCKERS: Final[frozenset[int]] = frozenset({
    types_pb2.REASON_CODE_UNSETTLED_HOSPITAL_STAY, types_pb2.REASON_CODE_ARREARS,
    types_pb2.REASON_CODE_MULTIPLE_INSURED_NUMBERS, types_pb2.REASON_CODE_INCOMPLETE_CONTRIBUTIONS,
    types_pb2.REASON_CODE_ACCOUNT_OVERDRAWN,
})


@dataclass(frozen=True)
class AutomaticRules:
    """How long the index keeps what it has not matched yet."""

    enrollment_retention: dt.timedelta = setting(
        DEFAULT_RETENTION, "How long a reported enrollment waits for the outbound side to register the person's"
        " suspended record (both orders happen: suspensions are often recorded in a monthly batch). A record"
        " registered later than this opens nothing; the person can still apply.",
        key="enrollment_retention_days", unit="days", minimum=1, maximum=366)

    def __post_init__(self) -> None:
        if not dt.timedelta(days=1) <= self.enrollment_retention <= dt.timedelta(days=366):
            raise ValueError("enrollment_retention must be between 1 and 366 days")


@dataclass(frozen=True)
class SuspendedRecord:
    """A suspended record in the index, as matching needs it."""

    transfer_id: str       # the record's id, chosen by the outbound platform: the id of the case it opens
    agency: str            # the outbound agency holding the record
    insurance_type: int    # at the outbound side
    suspension_date: str   # ISO date
    registered: int        # the log sequence of its registration: among equal dates, the older first


@dataclass(frozen=True)
class Enrollment:
    """A reported enrollment in the index, as matching needs it."""

    message_id: str
    agency: str              # the inbound agency
    insurance_type: int      # at the inbound side
    enrollment_date: str     # ISO date
    chosen: frozenset[str]   # outbound agencies the person chose to transfer from; empty: any
    reported: int            # the log sequence of the report: the newer one is where the person is now


class Mismatch(StrEnum):
    """Why a record and an enrollment of one person open no case."""

    SAME_PROVINCE = "same_province"
    NOT_CHOSEN = "not_chosen"
    ENROLLED_BEFORE_SUSPENSION = "enrolled_before_suspension"
    RESIDENT_SAME_YEAR = "resident_same_year"


def province(agency: str) -> str:
    return agency[:2]


def mismatch(record: SuspendedRecord, enrollment: Enrollment) -> Mismatch | None:
    """Why this pair opens no case, or None if it opens one."""
    if province(record.agency) == province(enrollment.agency):
        return Mismatch.SAME_PROVINCE
    if enrollment.chosen and record.agency not in enrollment.chosen:
        return Mismatch.NOT_CHOSEN
    if enrollment.enrollment_date < record.suspension_date:
        return Mismatch.ENROLLED_BEFORE_SUSPENSION
    if (record.insurance_type == RESIDENT and enrollment.insurance_type == RESIDENT
            and enrollment.enrollment_date[:4] <= record.suspension_date[:4]):
        return Mismatch.RESIDENT_SAME_YEAR
    return None


def records_to_open(records: Iterable[SuspendedRecord], enrollment: Enrollment) -> list[SuspendedRecord]:
    """The records an enrollment opens a case for, in the order to open them: oldest suspension first."""
    matching = [r for r in records if mismatch(r, enrollment) is None]
    return sorted(matching, key=lambda r: (r.suspension_date, r.registered, r.transfer_id))


def enrollment_for(record: SuspendedRecord, enrollments: Iterable[Enrollment]) -> Enrollment | None:
    """The waiting enrollment a newly registered record opens its case with: the newest that matches."""
    matching = [e for e in enrollments if mismatch(record, e) is None]
    return max(matching, key=lambda e: (e.reported, e.message_id), default=None)
