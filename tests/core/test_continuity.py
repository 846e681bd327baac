"""Benefit continuity: the gap in whole months, back-payment up to 3 months, waiting period beyond."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.continuity import add_months, continuity


@pytest.mark.parametrize(("suspended", "enrolled", "gap", "continuous", "benefits_from"), [
    pytest.param("2026-03-15", "2026-04-01", 0, True, "2026-04-01", id="next-month"),
    pytest.param("2026-03-15", "2026-03-20", 0, True, "2026-03-20", id="same-month"),
    pytest.param("2026-03-15", "2025-12-01", 0, True, "2025-12-01", id="enrolled-before-suspension"),
    pytest.param("2026-03-31", "2026-07-01", 3, True, "2026-07-01", id="three-month-gap-back-paid"),
    pytest.param("2026-03-31", "2026-08-01", 4, False, "2027-02-01", id="four-month-gap-waits-6"),
    pytest.param("2025-12-10", "2026-05-31", 4, False, "2026-11-30", id="across-new-year-clamped"),
])
def test_named_cases(suspended: str, enrolled: str, gap: int, continuous: bool, benefits_from: str) -> None:
    found = continuity(dt.date.fromisoformat(suspended), dt.date.fromisoformat(enrolled), waiting_period_months=6)
    assert (found.gap_months, found.continuous, found.benefits_from.isoformat()) == (gap, continuous, benefits_from)
    assert found.waiting_period_months == (0 if continuous else 6)


@pytest.mark.parametrize("months", [-1, 7])
def test_waiting_period_is_at_most_six_months(months: int) -> None:
    with pytest.raises(ValueError):
        continuity(dt.date(2026, 1, 1), dt.date(2026, 12, 1), waiting_period_months=months)


@given(st.dates(dt.date(2000, 1, 1), dt.date(2040, 12, 31)), st.dates(dt.date(2000, 1, 1), dt.date(2040, 12, 31)),
       st.integers(0, 6))
def test_properties(suspended: dt.date, enrolled: dt.date, waiting: int) -> None:
    found = continuity(suspended, enrolled, waiting_period_months=waiting)
    assert found.gap_months >= 0
    assert found.continuous == (found.gap_months <= 3)
    assert found.benefits_from >= enrolled
    assert found.benefits_from == add_months(enrolled, found.waiting_period_months)
