"""Which suspended records a new enrollment opens a case for (gateway.core.automatic)."""

from __future__ import annotations

import datetime as dt

import pytest

from gateway.core.automatic import (
    AutomaticRules,
    Enrollment,
    Mismatch,
    SuspendedRecord,
    enrollment_for,
    mismatch,
    records_to_open,
)

EMPLOYEE, RESIDENT = 310, 390


def record(tid: str = "r1", agency: str = "320100", suspended: str = "2026-03-01", insurance: int = EMPLOYEE,
           registered: int = 1) -> SuspendedRecord:
    return SuspendedRecord(tid, agency, insurance, suspended, registered)


def enrollment(agency: str = "330100", enrolled: str = "2026-03-10", insurance: int = EMPLOYEE,
               chosen: frozenset[str] = frozenset(), reported: int = 10, mid: str = "e1") -> Enrollment:
    return Enrollment(mid, agency, insurance, enrolled, chosen, reported)


@pytest.mark.parametrize(("rec", "enr", "why"), [
    (record(), enrollment(), None),
    (record(agency="330200"), enrollment(), Mismatch.SAME_PROVINCE),
    (record(), enrollment(chosen=frozenset({"340100"})), Mismatch.NOT_CHOSEN),
    (record(), enrollment(chosen=frozenset({"320100"})), None),
    (record(suspended="2026-03-11"), enrollment(), Mismatch.ENROLLED_BEFORE_SUSPENSION),
    (record(suspended="2026-03-10"), enrollment(), None),  # the same day: no month insured twice
    (record(insurance=RESIDENT), enrollment(insurance=RESIDENT), Mismatch.RESIDENT_SAME_YEAR),
    (record(insurance=RESIDENT, suspended="2025-12-31"), enrollment(insurance=RESIDENT, enrolled="2026-01-01"), None),
    (record(insurance=RESIDENT), enrollment(insurance=EMPLOYEE), None),  # across schemes: in the same year
    (record(insurance=EMPLOYEE), enrollment(insurance=RESIDENT), None),
])
def test_mismatch(rec: SuspendedRecord, enr: Enrollment, why: Mismatch | None) -> None:
    assert mismatch(rec, enr) is why


def test_several_records_open_oldest_suspension_first() -> None:
    records = [record("late", "340100", "2026-02-01", registered=1), record("early", "320100", "2025-11-30",
               registered=5), record("same-day-later", "350100", "2026-02-01", registered=3),
               record("in-province", "330500", "2025-01-01")]
    assert [r.transfer_id for r in records_to_open(records, enrollment())] == ["early", "late", "same-day-later"]


def test_an_enrollment_that_names_one_record_opens_only_that_one() -> None:
    records = [record("a", "320100"), record("b", "340100")]
    assert [r.transfer_id for r in records_to_open(records, enrollment(chosen=frozenset({"340100"})))] == ["b"]


def test_a_new_record_takes_the_newest_matching_enrollment() -> None:
    waiting = [enrollment(mid="old", reported=1), enrollment(mid="new", reported=9),
               enrollment(mid="newest-but-chose-another", reported=12, chosen=frozenset({"440100"}))]
    found = enrollment_for(record(), waiting)
    assert found is not None and found.message_id == "new"
    assert enrollment_for(record(), [enrollment(agency="320500")]) is None


def test_retention_is_bounded() -> None:
    assert AutomaticRules().enrollment_retention == dt.timedelta(days=90)
    with pytest.raises(ValueError):
        AutomaticRules(enrollment_retention=dt.timedelta(days=400))
