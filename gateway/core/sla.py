"""The legal time limits of a case, as stages with deadlines on the working-day calendar (pure).

Stages (《基本医疗保险关系转移接续暂行办法》; limits are configuration):
- outbound 转出: from the case's opening until the outbound side has done its part (the table
  sent and, when funds are expected, the fund transfer sent) or the case closes — 10 working days;
- review 复核: a large fund transfer held until a reviewer decides — 1 working day;
- inbound 转入: from the information table's acceptance until transfer-in completes (or the
  inbound side rejects) — 5 working days;
- total 全程: from opening until the case closes — 15 working days.

Each stage is active exactly while a predicate on the case holds; it starts when the predicate
becomes true and finishes when it becomes false, so the store can keep stages from a case's
state before and after each message without knowing the rules.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from gateway.core.case import Case
from gateway.core.settings import setting
from gateway.core.workdays import WorkingCalendar, local_date
from mitransfer.v1 import tracking_pb2

_S = tracking_pb2


class Stage(StrEnum):
    OUTBOUND = "outbound"
    REVIEW = "review"
    INBOUND = "inbound"
    TOTAL = "total"


class Timeliness(StrEnum):
    ON_TIME = "on_time"    # unfinished with more than one working day left, or finished in time
    DUE_SOON = "due_soon"  # unfinished, its last day is today or the next working day
    OVERDUE = "overdue"    # unfinished past its deadline
    LATE = "late"          # finished after its deadline


_OUTBOUND_OPEN: Final = frozenset({_S.CASE_STATE_OPENED, _S.CASE_STATE_OUTBOUND_ACCEPTED})
_INBOUND_OPEN: Final = frozenset({
    _S.CASE_STATE_TABLE_SENT, _S.CASE_STATE_FUNDS_SENT, _S.CASE_STATE_HELD_FOR_REVIEW,
    _S.CASE_STATE_INBOUND_ACCEPTED, _S.CASE_STATE_FUNDS_CREDITED,
})

ACTIVE: Final[Mapping[Stage, Callable[[Case], bool]]] = {
    Stage.OUTBOUND: lambda c: c.state in _OUTBOUND_OPEN or (c.state == _S.CASE_STATE_TABLE_SENT and c.funds_expected),
    Stage.REVIEW: lambda c: c.state == _S.CASE_STATE_HELD_FOR_REVIEW,
    Stage.INBOUND: lambda c: c.state in _INBOUND_OPEN,
    Stage.TOTAL: lambda c: not c.closed,
}


@dataclass(frozen=True)
class Limits:
    """Working days allowed per stage. The measures' own limits are the most a region may allow
    (regions are encouraged to go faster), so they bound the configuration."""

    outbound: int = setting(10, "Working days the outbound agency has to send the information table"
                            " (and the funds); the measures allow at most 10.", key="outbound_working_days",
                            unit="working days", minimum=1, maximum=10)
    inbound: int = setting(5, "Working days the inbound agency has to complete the transfer once it has"
                           " everything; the measures allow at most 5.", key="inbound_working_days",
                           unit="working days", minimum=1, maximum=5)
    total: int = setting(15, "Working days the whole case may take; the measures allow at most 15.",
                         key="total_working_days", unit="working days", minimum=1, maximum=15)
    review: int = setting(1, "Working days a reviewer has to decide on a held fund transfer.",
                          key="review_working_days", unit="working days", minimum=1)

    def __post_init__(self) -> None:
        if min(self.outbound, self.inbound, self.total, self.review) < 1:
            raise ValueError("every limit is at least one working day")

    def of(self, stage: Stage) -> int:
        limit: int = getattr(self, stage.value)  # the fields are named as the stages
        return limit


@dataclass(frozen=True)
class StageStart:
    stage: Stage
    deadline: dt.datetime


@dataclass(frozen=True)
class StageChanges:
    """What a message did to the case's stages (all at the message's acceptance time)."""

    started: tuple[StageStart, ...] = ()
    finished: tuple[Stage, ...] = ()


@dataclass(frozen=True)
class StageTiming:
    """A stage of one case as Tracking shows it."""

    stage: Stage
    started_at: dt.datetime
    deadline: dt.datetime
    finished_at: dt.datetime | None
    working_days_used: int      # working days of the limit used (day one is the day after the start)
    working_days_elapsed: float  # working time actually taken, in days (fractions count)
    timeliness: Timeliness


class Sla:
    """The limits on one calendar: what a change of case state starts and finishes, and how a
    stage stands at a given instant."""

    def __init__(self, calendar: WorkingCalendar, limits: Limits | None = None) -> None:
        self.calendar = calendar
        self.limits = limits or Limits()

    def changes(self, before: Case | None, after: Case, at: dt.datetime) -> StageChanges:
        started, finished = [], []
        for stage, active in ACTIVE.items():
            was, now = before is not None and active(before), active(after)
            if now and not was:
                started.append(StageStart(stage, self.calendar.deadline(at, self.limits.of(stage))))
            elif was and not now:
                finished.append(stage)
        return StageChanges(tuple(started), tuple(finished))

    def timing(self, stage: Stage, started_at: dt.datetime, deadline: dt.datetime,
               finished_at: dt.datetime | None, now: dt.datetime) -> StageTiming:
        end = finished_at or now
        return StageTiming(
            stage=stage, started_at=started_at, deadline=deadline, finished_at=finished_at,
            working_days_used=self.calendar.working_days_between(local_date(started_at), local_date(end)),
            working_days_elapsed=self.calendar.elapsed(started_at, end),
            timeliness=self.timeliness(deadline, finished_at, now),
        )

    def timeliness(self, deadline: dt.datetime, finished_at: dt.datetime | None, now: dt.datetime) -> Timeliness:
        if finished_at is not None:
            return Timeliness.ON_TIME if finished_at < deadline else Timeliness.LATE
        if now >= deadline:
            return Timeliness.OVERDUE
        return Timeliness.DUE_SOON if deadline <= self.calendar.due_soon_before(now) else Timeliness.ON_TIME


def province(agency: str) -> str:
    """The province of a pooling region code (its first two digits): the finest label metrics use."""
    return agency[:2]
