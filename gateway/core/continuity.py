"""Benefit continuity (待遇衔接) and contribution months after a transfer: pure month arithmetic.

The measures (医保办发〔2021〕43号):
- a contribution gap of at most 3 months may be back-paid, and benefits then cover the gap
  retroactively; a longer gap may carry a waiting period of at most 6 months, each pooling
  region's own choice ("各统筹地区可根据自身情况，对中断缴费3个月以上的，设置不超过6个月的待遇享受等待期");
- for a switch between employee and resident insurance the back-payment rule holds for people
  insured without a break for 2 years or more ("已连续2年（含）以上参保的，因就业等个人状态变化在职工医保
  和居民医保间切换参保关系，中断缴费3个月（含）以内的，可按转入地规定补缴……中断期间的待遇可追溯享受");
- contribution years accumulate across regions, and the same months never count twice
  ("不得重复参保和重复享受待遇").

The gap is counted in whole calendar months strictly between the month of suspension at the
outbound side and the month of enrollment at the inbound side: suspended in March and enrolled in
April is no gap; enrolled in August is a gap of 4 (April to July).

Months are counted as indices (year * 12 + month - 1) so that periods compare and subtract.
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, NamedTuple

MAX_BACK_PAY_MONTHS: Final = 3
MAX_WAITING_MONTHS: Final = 6
SWITCH_MIN_INSURED_MONTHS: Final = 24  # 已连续2年（含）以上参保


class ContinuityRule(StrEnum):
    """Which rule decided a case's continuity (Tracking shows it)."""

    CONTINUOUS = "CONTINUOUS"                          # gap ≤ 3 months: back-pay, benefits retroactive
    SWITCH_UNDER_TWO_YEARS = "SWITCH_UNDER_TWO_YEARS"  # switch of scheme after < 24 months insured
    WAITING_PERIOD = "WAITING_PERIOD"                  # gap > 3 months: the region's waiting period


@dataclass(frozen=True)
class Continuity:
    gap_months: int
    continuous: bool
    waiting_period_months: int
    benefits_from: dt.date
    rule: ContinuityRule


class Period(NamedTuple):
    """A contribution period as month indices, with the months it counts (paid + counted as paid)."""

    first: int    # month index of the first month
    last: int     # month index of the last month (inclusive)
    counted: int  # months_paid + months_deemed, at most last - first + 1

    @property
    def months(self) -> int:
        return self.last - self.first + 1


def month_index(year: int, month: int) -> int:
    return year * 12 + month - 1


def add_months(day: dt.date, months: int) -> dt.date:
    """The same day `months` later, clamped to the end of a shorter month."""
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    return dt.date(year, month + 1, min(day.day, calendar.monthrange(year, month + 1)[1]))


def cumulative_bounds(periods: Iterable[Period]) -> tuple[int, int]:
    """The least and greatest cumulative months the periods allow, the same month never counted
    twice: (lower, upper). Disjoint periods allow exactly the sum of their counted months.

    Overlapping periods (two regions, or two schemes, for the same months) allow a range, because
    which months of a period were paid is not in the table: at most the sum and at most the months
    they cover together; at least the sum less the months they share, and at least any one
    period's own count.
    """
    listed = list(periods)
    if not listed:
        return 0, 0
    total = sum(p.counted for p in listed)
    covered: set[int] = set()
    for p in listed:
        covered.update(range(p.first, p.last + 1))
    shared = sum(p.months for p in listed) - len(covered)
    return max(total - shared, max(p.counted for p in listed)), min(total, len(covered))


def insured_run(periods: Iterable[Period], *, suspension_month: int) -> int:
    """Months insured without a break up to the suspension: the run of covered months that ends in
    the suspension month or the month before it (0 when the last covered month is earlier: the
    break is right before the suspension).

    A period that counts fewer months than it spans has a break somewhere inside; where is not in
    the table, so its counted months are taken as its last ones (the break at its start).
    """
    covered: set[int] = set()
    for p in periods:
        covered.update(range(p.last - p.counted + 1, min(p.last, suspension_month) + 1))
    month = suspension_month if suspension_month in covered else suspension_month - 1
    run = 0
    while month in covered:
        run += 1
        month -= 1
    return run


def continuity(suspended: dt.date, enrolled: dt.date, *, waiting_period_months: int, switch: bool = False,
               insured_months: int | None = None) -> Continuity:
    """The continuity of a case suspended at the outbound side and enrolled at the inbound side.

    `switch`: the case moves between employee and resident insurance; then a gap within 3 months is
    continuous only after `insured_months` ≥ 24 (None: not known, as for cases from before the
    table carried enough to count it, and the switch rule is not applied).

    Raises ValueError if the waiting period is outside 0..6 months.
    """
    if not 0 <= waiting_period_months <= MAX_WAITING_MONTHS:
        raise ValueError(f"a waiting period is 0 to {MAX_WAITING_MONTHS} months")
    gap = max(0, (enrolled.year * 12 + enrolled.month) - (suspended.year * 12 + suspended.month) - 1)
    if gap > MAX_BACK_PAY_MONTHS:
        return Continuity(gap, False, waiting_period_months, add_months(enrolled, waiting_period_months),
                          ContinuityRule.WAITING_PERIOD)
    if switch and insured_months is not None and insured_months < SWITCH_MIN_INSURED_MONTHS:
        # Not the retroactive case of the measures: benefits start with the new enrollment, and
        # the waiting period (for gaps over 3 months only) does not apply either.
        return Continuity(gap, False, 0, enrolled, ContinuityRule.SWITCH_UNDER_TWO_YEARS)
    return Continuity(gap, True, 0, enrolled, ContinuityRule.CONTINUOUS)
