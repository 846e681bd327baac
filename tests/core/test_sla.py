"""Stages, their owners and deadlines along a case (gateway.core.sla), independent of storage."""

from __future__ import annotations

import datetime as dt

import pytest

from gateway.core.case import Case
from gateway.core.sla import STAGES, Limits, Owner, Sla, Stage, Timeliness, owner_agency, owner_province
from gateway.core.workdays import CHINA, WorkingCalendar, YearNotice, start_of
from mitransfer.v1 import tracking_pb2

S = tracking_pb2
T = dt.datetime(2026, 3, 2, 10, tzinfo=CHINA)  # a Monday
SLA = Sla(WorkingCalendar())


def case(state: int, balance: int | None = None, insurance: int = 310, inbound: int | None = None) -> Case:
    return Case(transfer_id="t", state=state, outbound="320100", inbound="330100", applicant="330100",
                insurance_type=insurance, person_key=b"p", balance_fen=balance,
                inbound_insurance_type=insurance if inbound is None else inbound)


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
        (set(), set()),                          # the table is in, but the funds are due: outbound's clock runs on
        ({Stage.REVIEW}, {Stage.OUTBOUND}),      # the funds left the outbound side, held: the reviewers' clock
        ({Stage.INBOUND}, {Stage.REVIEW}),       # released: now the inbound side has all it needs
        (set(), set()),
        (set(), set()),
        (set(), {Stage.INBOUND, Stage.TOTAL}),
    ]


def test_the_inbound_clock_starts_with_the_funds_when_they_are_due() -> None:
    """Not reviewed: the fund transfer itself gives the inbound side all it needs."""
    assert walk(case(S.CASE_STATE_OUTBOUND_ACCEPTED), case(S.CASE_STATE_TABLE_SENT, balance=500),
                case(S.CASE_STATE_FUNDS_SENT, balance=500))[1:] == [
        (set(), set()), ({Stage.INBOUND}, {Stage.OUTBOUND})]


def test_across_schemes_no_funds_are_awaited() -> None:
    """310 → 390 with a balance: it stays at the outbound side, so the table finishes the outbound
    stage and starts the inbound one."""
    assert walk(case(S.CASE_STATE_OUTBOUND_ACCEPTED, inbound=390),
                case(S.CASE_STATE_TABLE_SENT, balance=500, inbound=390))[1] == ({Stage.INBOUND}, {Stage.OUTBOUND})


def test_a_return_runs_the_inbound_sides_then_the_outbound_sides_clock() -> None:
    assert walk(
        case(S.CASE_STATE_FUNDS_SENT, balance=500),
        case(S.CASE_STATE_AWAITING_FUND_RETURN, balance=500),
        case(S.CASE_STATE_FUNDS_RETURNED, balance=500),
        case(S.CASE_STATE_INBOUND_REJECTED, balance=500),
    )[1:] == [
        ({Stage.RETURN}, {Stage.INBOUND}),
        ({Stage.RETURN_RECEIPT}, {Stage.RETURN}),
        (set(), {Stage.RETURN_RECEIPT, Stage.TOTAL}),
    ]


def test_each_stage_has_its_owner_and_answerable_province() -> None:
    owners = {stage: rule.owner for stage, rule in STAGES.items()}
    assert owners == {Stage.OUTBOUND: Owner.OUTBOUND, Stage.REVIEW: Owner.REVIEWER, Stage.INBOUND: Owner.INBOUND,
                      Stage.RETURN: Owner.INBOUND, Stage.RETURN_RECEIPT: Owner.OUTBOUND, Stage.TOTAL: Owner.BOTH,
                      Stage.RESOLUTION: Owner.PERSON}
    started = SLA.changes(None, case(S.CASE_STATE_OPENED), T).started
    assert {(s.stage, s.owner) for s in started} == {(Stage.OUTBOUND, Owner.OUTBOUND), (Stage.TOTAL, Owner.BOTH)}
    assert [owner_province(o, "320100", "330100") for o in Owner] == ["32", "33", "32", "", "32"]
    assert [owner_agency(o, "320100", "330100") for o in Owner] == ["320100", "330100", "", "", ""]


def test_blockers_stop_an_automatic_cases_clocks_and_the_resolution_starts_them_again() -> None:
    """As for an applied case refused for blockers and applied for again once they are cleared: the
    outbound and total stages end at the refusal and start again at the resolution; the wait between
    is the person's, on no agency's clock."""
    assert walk(
        case(S.CASE_STATE_OPENED),
        case(S.CASE_STATE_AWAITING_RESOLUTION),
        case(S.CASE_STATE_OPENED),
        case(S.CASE_STATE_OUTBOUND_ACCEPTED),
    ) == [
        ({Stage.OUTBOUND, Stage.TOTAL}, set()),
        ({Stage.RESOLUTION}, {Stage.OUTBOUND, Stage.TOTAL}),
        ({Stage.OUTBOUND, Stage.TOTAL}, {Stage.RESOLUTION}),
        (set(), set()),
    ]
    started = SLA.changes(case(S.CASE_STATE_OPENED), case(S.CASE_STATE_AWAITING_RESOLUTION), T).started
    assert [(s.stage, s.owner, s.deadline) for s in started] == [
        (Stage.RESOLUTION, Owner.PERSON, SLA.calendar.deadline(T, 20))]


def test_a_resident_case_finishes_outbound_with_the_table() -> None:
    assert walk(case(S.CASE_STATE_OUTBOUND_ACCEPTED, insurance=390),
                case(S.CASE_STATE_TABLE_SENT, balance=0, insurance=390))[1] == ({Stage.INBOUND}, {Stage.OUTBOUND})


@pytest.mark.parametrize("end", [S.CASE_STATE_REFUSED, S.CASE_STATE_WITHDRAWN, S.CASE_STATE_EXPIRED,
                                 S.CASE_STATE_CLOSED_BY_OPERATOR])
def test_a_case_closed_early_finishes_what_ran(end: int) -> None:
    assert walk(case(S.CASE_STATE_OPENED), case(end)) == [
        ({Stage.OUTBOUND, Stage.TOTAL}, set()), (set(), {Stage.OUTBOUND, Stage.TOTAL})]


def test_every_open_state_has_the_total_stage_and_no_closed_one_has_any() -> None:
    """But for the wait for a resolution: an automatic case refused for blockers runs the person's
    stage alone, as an applied case so refused would run nothing until applied for again."""
    for state in tracking_pb2.CaseState.values():
        if state == S.CASE_STATE_UNSPECIFIED:
            continue
        c = case(state, balance=100)
        active = {stage for stage, rule in STAGES.items() if rule.active(c)}
        if state == S.CASE_STATE_AWAITING_RESOLUTION:
            assert active == {Stage.RESOLUTION}
            continue
        assert (Stage.TOTAL in active) == (not c.closed)
        assert not c.closed or not active


def test_a_deadline_counting_an_unknown_year_is_provisional_until_its_notice() -> None:
    """Begun 2026-12-24 (Thursday) with 2027 unknown: ten working days end on 2027-01-07, counting
    2027-01-01 as a working day. With a notice making it a holiday, they end a day later."""
    begun = dt.datetime(2026, 12, 24, 15, tzinfo=CHINA)
    fallback = SLA.start(Stage.OUTBOUND, begun)
    assert (fallback.deadline, fallback.provisional) == (start_of(dt.date(2027, 1, 8)), True)
    notice = WorkingCalendar({2027: YearNotice(holidays=frozenset({dt.date(2027, 1, 1)}))}, version=1)
    known = SLA.start(Stage.OUTBOUND, begun, notice)
    assert (known.deadline, known.provisional) == (start_of(dt.date(2027, 1, 9)), False)
    assert not SLA.start(Stage.OUTBOUND, dt.datetime(2026, 3, 2, tzinfo=CHINA)).provisional
    changes = Sla(notice).changes(None, case(S.CASE_STATE_OPENED), begun)
    assert changes.calendar_version == 1 and not any(s.provisional for s in changes.started)


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
