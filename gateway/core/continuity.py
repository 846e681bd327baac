"""Benefit continuity (待遇衔接) after a transfer: pure date arithmetic.

The measures: a contribution gap of at most 3 months may be back-paid, and benefits then cover
the gap retroactively; a longer gap may carry a waiting period of at most 6 months before
benefits start. The gap is counted in whole calendar months strictly between the month of
suspension at the outbound side and the month of enrollment at the inbound side: suspended in
March and enrolled in April is no gap; enrolled in August is a gap of 4 (April to July).
"""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass
from typing import Final

MAX_BACK_PAY_MONTHS: Final = 3
MAX_WAITING_MONTHS: Final = 6


@dataclass(frozen=True)
class Continuity:
    gap_months: int
    continuous: bool
    waiting_period_months: int
    benefits_from: dt.date


def add_months(day: dt.date, months: int) -> dt.date:
    """The same day `months` later, clamped to the end of a shorter month."""
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    return dt.date(year, month + 1, min(day.day, calendar.monthrange(year, month + 1)[1]))


def continuity(suspended: dt.date, enrolled: dt.date, *, waiting_period_months: int) -> Continuity:
    """Raises ValueError if the configured waiting period is outside 0..6 months."""
    if not 0 <= waiting_period_months <= MAX_WAITING_MONTHS:
        raise ValueError(f"a waiting period is 0 to {MAX_WAITING_MONTHS} months")
    gap = max(0, (enrolled.year * 12 + enrolled.month) - (suspended.year * 12 + suspended.month) - 1)
    if gap <= MAX_BACK_PAY_MONTHS:
        return Continuity(gap, True, 0, enrolled)
    return Continuity(gap, False, waiting_period_months, add_months(enrolled, waiting_period_months))
