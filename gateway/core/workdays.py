"""China's official working-day calendar and how the gateway counts deadlines on it (pure: no I/O
beyond reading a notice file when asked).

Where a day's status comes from, first match wins:
1. a **notice**: the State Council's yearly notice as data (holidays and 调休 make-up working
   days), loaded into the store for every replica (`Admin.LoadCalendar`, `transfer-gateway
   calendar load`), for years the `chinese-calendar` package does not know yet;
2. the **`chinese-calendar` package** (knows 2004–2026 in 1.11.0, raises for other years);
3. the **fallback**: Monday–Friday. Every year answered this way is recorded, so the gateway can
   say so in its logs, a metric and its health service; it never raises. A deadline that counts
   a fallback day is **provisional**: it is counted again when the year's notice is loaded.

How a deadline is counted (《民法典》第二百零一条、第二百零三条 applied to working days):
- a stage starts at an instant; the day it starts on (Asia/Shanghai) is not counted: **day one is
  the first working day after it**;
- a limit of N working days ends at **24:00 Asia/Shanghai of the N-th working day** (the deadline
  is the first instant after it: 00:00 of the next calendar day);
- a stage is **overdue** once the deadline passes unfinished (or finished after it: late), and
  **due soon** while it is unfinished and its last day is today or the next working day.
"""

from __future__ import annotations

import datetime as dt
import functools
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Final
from zoneinfo import ZoneInfo

import chinese_calendar

CHINA = ZoneInfo("Asia/Shanghai")
_DAY = dt.timedelta(days=1)
MAX_SOURCE: Final = 200  # characters of a notice's source text


class DaySource(StrEnum):
    NOTICE = "notice"      # a notice loaded into the store
    OFFICIAL = "official"  # the chinese-calendar package
    FALLBACK = "fallback"  # Monday–Friday, no holidays known


@dataclass(frozen=True)
class YearNotice:
    """One year's notice: the holidays (days off that would be working days) and the make-up
    working days (weekend days that are worked)."""

    holidays: frozenset[dt.date] = frozenset()
    workdays: frozenset[dt.date] = frozenset()
    source: str = ""                       # the notice's title or reference
    loaded_at: dt.datetime | None = None   # when it was loaded into the store


class CalendarFileError(ValueError):
    """A notice is not a valid calendar year (the message says which year and day)."""


def year_notice(year: int, holidays: Iterable[dt.date], workdays: Iterable[dt.date], source: str = "",
                loaded_at: dt.datetime | None = None) -> YearNotice:
    """A checked notice. Raises CalendarFileError for a day outside `year`, a day listed as both a
    holiday and a working day, a year outside 2000..2100 or an overlong source."""
    if not 2000 <= year <= 2100:
        raise CalendarFileError(f"{year} is not a year between 2000 and 2100")
    off, on = frozenset(holidays), frozenset(workdays)
    outside = sorted(d for d in off | on if d.year != year)
    if outside:
        raise CalendarFileError(f"[{year}] lists {outside[0].isoformat()}, which is not in {year}")
    both = sorted(off & on)
    if both:
        raise CalendarFileError(f"[{year}] lists {both[0].isoformat()} as both holiday and workday")
    if len(source) > MAX_SOURCE:
        raise CalendarFileError(f"[{year}] source is longer than {MAX_SOURCE} characters")
    return YearNotice(off, on, source, loaded_at)


def _dates(year: int, key: str, values: object) -> frozenset[dt.date]:
    """Parse `["2027-01-01", "2027-02-05..2027-02-11", …]` (single days or inclusive ranges)."""
    if not isinstance(values, list):
        raise CalendarFileError(f"[{year}] {key}: expected a list of dates")
    days: set[dt.date] = set()
    for value in values:
        first, _, last = str(value).partition("..")
        try:
            start = dt.date.fromisoformat(first)
            end = dt.date.fromisoformat(last) if last else start
        except ValueError as err:
            raise CalendarFileError(f"[{year}] {key}: {value!r} is not a date or a date range") from err
        if end < start or start.year != year or end.year != year:
            raise CalendarFileError(f"[{year}] {key}: {value!r} must lie in {year}, first day first")
        while start <= end:
            days.add(start)
            start += _DAY
    return frozenset(days)


def load_notices(path: Path) -> dict[int, YearNotice]:
    """Read a notice file: one TOML table per year with `holidays`, `workdays` and `source`.

    Raises CalendarFileError naming the file and what is wrong.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise CalendarFileError(f"{path}: {err}") from err
    notices: dict[int, YearNotice] = {}
    for key, table in data.items():
        if not key.isdigit() or not isinstance(table, dict):
            raise CalendarFileError(f"{path}: top-level tables are years, got {key!r}")
        year = int(key)
        unknown = set(table) - {"holidays", "workdays", "source"}
        if unknown:
            raise CalendarFileError(f"{path}: [{year}] has unknown keys {sorted(unknown)}")
        try:
            notices[year] = year_notice(year, _dates(year, "holidays", table.get("holidays", [])),
                                        _dates(year, "workdays", table.get("workdays", [])),
                                        str(table.get("source", "")))
        except CalendarFileError as err:
            raise CalendarFileError(f"{path}: {err}") from err
    return notices


@functools.cache
def package_knows(year: int) -> bool:
    """Whether the chinese-calendar package has the official calendar of `year`."""
    try:
        chinese_calendar.is_workday(dt.date(year, 6, 1))
    except NotImplementedError:
        return False
    return True


@dataclass
class WorkingCalendar:
    """Working days per China's official calendar; see the module docstring.

    An instance is one version of the calendar and never changes its answers: loading a notice
    makes a new instance (`with_notices`), so a deadline is counted on one calendar throughout.
    """

    notices: Mapping[int, YearNotice] = field(default_factory=dict)
    version: int = 0                                      # the store's calendar version it was built from
    fallback_years: set[int] = field(default_factory=set)  # years answered Monday–Friday so far
    # Answers so far: every accepted message counts a few dozen days for its deadlines.
    _days: dict[dt.date, bool] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: Path | None) -> WorkingCalendar:
        return cls(load_notices(path) if path is not None else {})

    def with_notices(self, notices: Mapping[int, YearNotice], version: int) -> WorkingCalendar:
        """This calendar with `notices` in place of the ones it had, as store version `version`."""
        return WorkingCalendar(dict(notices), version)

    def source(self, year: int) -> DaySource:
        if year in self.notices:
            return DaySource.NOTICE
        return DaySource.OFFICIAL if package_knows(year) else DaySource.FALLBACK

    def unknown_years(self, years: Iterable[int]) -> list[int]:
        """The years among `years` that only the Monday–Friday fallback can answer."""
        return sorted(y for y in set(years) if self.source(y) is DaySource.FALLBACK)

    def is_working_day(self, day: dt.date) -> bool:
        known = self._days.get(day)
        if known is None:
            known = self._days[day] = self._is_working_day(day)
        return known

    def _is_working_day(self, day: dt.date) -> bool:
        notice = self.notices.get(day.year)
        if notice is not None:
            if day in notice.workdays:
                return True
            return day.weekday() < 5 and day not in notice.holidays
        try:
            return bool(chinese_calendar.is_workday(day))
        except NotImplementedError:
            self.fallback_years.add(day.year)
            return day.weekday() < 5

    def add_working_days(self, day: dt.date, n: int) -> dt.date:
        """The n-th working day after `day` (n ≥ 1); `day` itself is never counted."""
        if n < 1:
            raise ValueError("n must be at least 1")
        while n:
            day += _DAY
            if self.is_working_day(day):
                n -= 1
        return day

    def working_days_between(self, first: dt.date, last: dt.date) -> int:
        """Working days in (first, last]: how many of a stage's days are used by `last`."""
        count, day = 0, first
        while day < last:
            day += _DAY
            count += self.is_working_day(day)
        return count

    def deadline(self, started_at: dt.datetime, working_days: int) -> dt.datetime:
        """The first instant after a limit of `working_days` counted from `started_at`."""
        last_day = self.add_working_days(local_date(started_at), working_days)
        return start_of(last_day + _DAY)

    def provisional(self, started_at: dt.datetime, deadline: dt.datetime) -> bool:
        """Whether the days counted for this deadline include a year only the fallback answers."""
        first, last = local_date(started_at) + _DAY, local_date(deadline) - _DAY
        return any(self.source(year) is DaySource.FALLBACK for year in range(first.year, last.year + 1))

    def due_soon_before(self, now: dt.datetime) -> dt.datetime:
        """Deadlines at or before this (and not yet passed) are due soon: their last day is today
        or the next working day."""
        return start_of(self.add_working_days(local_date(now), 1) + _DAY)

    def elapsed(self, start: dt.datetime, end: dt.datetime) -> float:
        """Working days elapsed between two instants, in fractions of a day: only the hours that
        fall on working days count (a stage done in 11 hours of one working day took 0.46)."""
        if end <= start:
            return 0.0
        seconds, cursor = 0.0, start.astimezone(CHINA)
        end = end.astimezone(CHINA)
        while cursor < end:
            next_midnight = start_of(cursor.date() + _DAY)
            if self.is_working_day(cursor.date()):
                seconds += (min(end, next_midnight) - cursor).total_seconds()
            cursor = next_midnight
        return seconds / 86_400


def local_date(t: dt.datetime) -> dt.date:
    return t.astimezone(CHINA).date()


def start_of(day: dt.date) -> dt.datetime:
    """00:00 Asia/Shanghai of `day`, as an aware datetime."""
    return dt.datetime.combine(day, dt.time(), CHINA)
