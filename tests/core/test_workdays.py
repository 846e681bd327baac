"""The working-day calendar and deadline counting, on real dates of the State Council's notices."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.workdays import CHINA, CalendarFileError, DaySource, WorkingCalendar, load_notices, start_of


def at(y: int, m: int, d: int, h: int = 10, minute: int = 0) -> dt.datetime:
    return dt.datetime(y, m, d, h, minute, tzinfo=CHINA)


def test_official_days_come_from_the_notice() -> None:
    cal = WorkingCalendar()
    assert not cal.is_working_day(dt.date(2025, 10, 1))    # National Day
    assert cal.is_working_day(dt.date(2025, 9, 28))         # a Sunday worked (调休)
    assert cal.is_working_day(dt.date(2026, 2, 14))         # a Saturday worked before Spring Festival
    assert not cal.is_working_day(dt.date(2026, 2, 16))     # Spring Festival, a Monday
    assert cal.source(2026) is DaySource.OFFICIAL
    assert cal.fallback_years == set()


def test_national_day_week_is_skipped_and_the_make_up_saturday_counts() -> None:
    # Accepted Tue 30 Sep 2025; 1–8 Oct off; Sat 11 Oct worked: day one is Thu 9 Oct, day ten Tue 21 Oct.
    assert WorkingCalendar().deadline(at(2025, 9, 30), 10) == start_of(dt.date(2025, 10, 22))


def test_spring_festival_make_up_saturday_is_day_one() -> None:
    # Accepted Fri 13 Feb 2026: Sat 14 Feb is worked (day one), 15–23 Feb off, then 24–27 Feb.
    assert WorkingCalendar().deadline(at(2026, 2, 13), 5) == start_of(dt.date(2026, 2, 28))


def test_the_start_day_is_the_local_day_in_shanghai() -> None:
    # 16:30 UTC on 13 Feb is 00:30 on Sat 14 Feb in Shanghai: that (worked) day is the start day.
    started = dt.datetime(2026, 2, 13, 16, 30, tzinfo=dt.UTC)
    assert WorkingCalendar().deadline(started, 1) == start_of(dt.date(2026, 2, 25))


def test_a_case_opened_on_new_years_eve() -> None:
    # 1–3 Jan 2026 off, Sun 4 Jan worked: fifteen working days end on Thu 22 Jan.
    assert WorkingCalendar().deadline(at(2025, 12, 31, 15), 15) == start_of(dt.date(2026, 1, 23))


def test_a_deadline_in_an_unknown_year_falls_back_to_monday_to_friday_without_raising() -> None:
    cal = WorkingCalendar()
    deadline = cal.deadline(at(2026, 12, 31, 15), 15)
    assert deadline == start_of(dt.date(2027, 1, 22))  # Fri 1 Jan 2027 counted as a working day
    assert cal.fallback_years == {2027}
    assert cal.unknown_years(range(2026, 2028)) == [2027]


def test_an_override_file_supplies_an_unknown_year(tmp_path: Path) -> None:
    notice = tmp_path / "calendar.toml"
    notice.write_text(  # test data in the notice's shape, not the real 2027 notice
        '[2027]\nsource = "test data"\nholidays = ["2027-01-01", "2027-01-04..2027-01-06"]\n'
        'workdays = ["2027-01-09"]\n', encoding="utf-8")
    cal = WorkingCalendar.load(notice)
    assert cal.source(2027) is DaySource.NOTICE
    # 1 Jan and 4–6 Jan off, Sat 9 Jan worked: 7 Jan (1), 8 (2), 9 (3), 11 (4), 12 (5).
    assert cal.deadline(at(2027, 1, 1), 5) == start_of(dt.date(2027, 1, 13))
    assert cal.fallback_years == set()


@pytest.mark.parametrize(("text", "complaint"), [
    ('[2027]\nholidays = ["2027-13-01"]\n', "not a date"),
    ('[2027]\nholidays = ["2027-12-30..2028-01-02"]\n', "must lie in 2027"),
    ('[2027]\nholidays = ["2027-01-01"]\nworkdays = ["2027-01-01"]\n', "both holiday and workday"),
    ('[2027]\nholiday = ["2027-01-01"]\n', "unknown keys"),
    ('[next]\nholidays = []\n', "are years"),
    ('[2027]\nholidays = "2027-01-01"\n', "list of dates"),
    ('[2027\n', "Expected"),
])
def test_a_bad_override_file_is_refused_with_the_reason(tmp_path: Path, text: str, complaint: str) -> None:
    path = tmp_path / "calendar.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CalendarFileError, match=complaint):
        load_notices(path)


def test_elapsed_counts_working_hours_only() -> None:
    cal = WorkingCalendar()
    assert cal.elapsed(at(2026, 3, 2, 9), at(2026, 3, 2, 20, 15)) == pytest.approx(11.25 / 24)
    assert cal.elapsed(at(2026, 3, 6, 12), at(2026, 3, 9, 12)) == pytest.approx(1.0)  # Fri noon → Mon noon
    assert cal.elapsed(at(2025, 10, 1, 0), at(2025, 10, 8, 23)) == 0.0                # the holiday week
    assert cal.elapsed(at(2026, 3, 3), at(2026, 3, 2)) == 0.0


def test_due_soon_reaches_the_end_of_the_next_working_day() -> None:
    cal = WorkingCalendar()
    assert cal.due_soon_before(at(2026, 3, 6, 15)) == start_of(dt.date(2026, 3, 10))  # Fri → end of Mon
    assert cal.due_soon_before(at(2025, 9, 30, 15)) == start_of(dt.date(2025, 10, 10))  # → end of Thu 9 Oct


DAYS = st.dates(min_value=dt.date(2004, 1, 1), max_value=dt.date(2028, 12, 31))


@given(day=DAYS, n=st.integers(min_value=1, max_value=40))
def test_adding_working_days_lands_on_the_nth_working_day(day: dt.date, n: int) -> None:
    cal = WorkingCalendar()
    end = cal.add_working_days(day, n)
    assert end > day and cal.is_working_day(end)
    assert cal.working_days_between(day, end) == n
    assert cal.working_days_between(day, end - dt.timedelta(days=1)) == n - 1


@given(day=DAYS, hour=st.integers(0, 23), n=st.integers(min_value=1, max_value=20))
def test_a_deadline_is_a_local_midnight_after_the_start(day: dt.date, hour: int, n: int) -> None:
    cal = WorkingCalendar()
    started = dt.datetime.combine(day, dt.time(hour), CHINA)
    deadline = cal.deadline(started, n)
    assert deadline > started and deadline.astimezone(CHINA).time() == dt.time()
    assert cal.is_working_day(deadline.astimezone(CHINA).date() - dt.timedelta(days=1))
    assert 0.0 <= cal.elapsed(started, deadline) <= n + 1


def test_the_shipped_example_is_the_2026_notice_day_for_day() -> None:
    example = Path(__file__).resolve().parent.parent.parent / "deploy" / "calendar" / "example.toml"
    overridden, official = WorkingCalendar.load(example), WorkingCalendar()
    assert overridden.source(2026) is DaySource.NOTICE
    day = dt.date(2026, 1, 1)
    while day.year == 2026:
        assert overridden.is_working_day(day) == official.is_working_day(day), day
        day += dt.timedelta(days=1)
