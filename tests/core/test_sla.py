"""Stages and their deadlines along a case (gateway.core.sla), independent of storage."""

from __future__ import annotations

import datetime as dt

import pytest

from gateway.core.case import Case
from gateway.core.sla import ACTIVE, Limits, Sla, Stage, Timeliness
from gateway.core.workdays import CHINA, WorkingCalendar, start_of
from mitransfer.v1 import tracking_pb2

S = tracking_pb2
T = dt.datetime(2026, 3, 2, 10, tzinfo=CHINA)  # a Monday
SLA = Sla(WorkingCalendar())


def case(state: int, balance: int | None = None, insurance: int = 310) -> Case:
    return Case(transfer_id="t", state=state, outbound="320100", inbound="330100", applicant="330100",
                insurance_type=insurance, person_key=b"p", balance_fen=balance)


def walk(*cases: Case) -> list[tuple[set[Stage], set[Stage]]]:
    """(started, finished) at each step of a case's life."""
    steps, before = [], None
    for after in cases:
        changes = SLA.changes(before, after, T)
        steps.append(({s.stage for s in changes.started}, set(changes.finished)))
        before = after
    return steps


def test_an_employee_case_with_funds_and_review_runs_every_stage() -> None:
    assert walk(
        case(S.CASE_STATE_OPENED),
        case(S.CASE_STATE_OUTBOUND_ACCEPTED),
        case(S.CASE_STATE_TABLE_SENT, balance=2_000_000),
        case(S.CASE_STATE_HELD_FOR_REVIEW, balance=2_000_000),
        case(S.CASE_STATE_FUNDS_SENT, balance=2_000_000),
        case(S.CASE_STATE_INBOUND_ACCEPTED, balance=2_000_000),
        case(S.CASE_STATE_FUNDS_CREDITED, balance=2_000_000),
        case(S.CASE_STATE_COMPLETED, balance=2_000_000),
    ) == [
        ({Stage.OUTBOUND, Stage.TOTAL}, set()),
        (set(), set()),
        ({Stage.INBOUND}, set()),               # the table is in: inbound's clock runs; outbound still owes funds
        ({Stage.REVIEW}, {Stage.OUTBOUND}),     # the funds left the outbound side
        (set(), {Stage.REVIEW}),
        (set(), set()),
        (set(), set()),
        (set(), {Stage.INBOUND, Stage.TOTAL}),
    ]


def test_a_resident_case_finishes_outbound_with_the_table() -> None:
    assert walk(case(S.CASE_STATE_OUTBOUND_ACCEPTED, insurance=390),
                case(S.CASE_STATE_TABLE_SENT, balance=0, insurance=390))[1] == ({Stage.INBOUND}, {Stage.OUTBOUND})


@pytest.mark.parametrize("end", [S.CASE_STATE_REFUSED, S.CASE_STATE_WITHDRAWN, S.CASE_STATE_EXPIRED])
def test_a_case_closed_early_finishes_what_ran(end: int) -> None:
    assert walk(case(S.CASE_STATE_OPENED), case(end)) == [
        ({Stage.OUTBOUND, Stage.TOTAL}, set()), (set(), {Stage.OUTBOUND, Stage.TOTAL})]


def test_every_open_state_has_the_total_stage_and_no_closed_one_has_any() -> None:
    for state in tracking_pb2.CaseState.values():
        if state == S.CASE_STATE_UNSPECIFIED:
            continue
        c = case(state, balance=100)
        active = {stage for stage, holds in ACTIVE.items() if holds(c)}
        assert (Stage.TOTAL in active) == (not c.closed)
        assert not c.closed or not active


def test_deadlines_use_the_configured_limits() -> None:
    sla = Sla(WorkingCalendar(), Limits(outbound=3, inbound=2, total=4, review=1))
    started = sla.changes(None, case(S.CASE_STATE_OPENED), T).started
    assert {s.stage: s.deadline for s in started} == {
        Stage.OUTBOUND: start_of(dt.date(2026, 3, 6)), Stage.TOTAL: start_of(dt.date(2026, 3, 7))}
    with pytest.raises(ValueError):
        Limits(review=0)


def test_timeliness_at_the_edges() -> None:
    deadline = start_of(dt.date(2026, 3, 6))  # last day Thu 5 Mar
    assert SLA.timeliness(deadline, None, T) is Timeliness.ON_TIME
    assert SLA.timeliness(deadline, None, dt.datetime(2026, 3, 4, 9, tzinfo=CHINA)) is Timeliness.DUE_SOON
    assert SLA.timeliness(deadline, None, deadline - dt.timedelta(microseconds=1)) is Timeliness.DUE_SOON
    assert SLA.timeliness(deadline, None, deadline) is Timeliness.OVERDUE
    assert SLA.timeliness(deadline, deadline - dt.timedelta(seconds=1), deadline) is Timeliness.ON_TIME
    assert SLA.timeliness(deadline, deadline, deadline) is Timeliness.LATE


def test_timing_reports_working_days_used_and_elapsed() -> None:
    timing = SLA.timing(Stage.INBOUND, T, start_of(dt.date(2026, 3, 10)), None,
                        dt.datetime(2026, 3, 9, 12, tzinfo=CHINA))  # the next Monday, noon
    assert timing.working_days_used == 5   # Tue … Fri and Monday
    assert timing.working_days_elapsed == pytest.approx(14 / 24 + 4 + 0.5)
    assert timing.timeliness is Timeliness.DUE_SOON
