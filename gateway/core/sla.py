"""The time limits of a case, as stages with deadlines on the working-day calendar (pure).

Each stage is **owned** by the side whose clock it is, so that a province is never shown late
for another's delay (《基本医疗保险关系转移接续暂行办法》; limits are configuration):
- outbound 转出 (outbound agency): from the case's opening until the outbound side has done its
  part — the table sent and, when funds are due, the fund transfer sent — or the case closes;
  10 working days ("转出地经办机构10个工作日内完成……转出，生成并上传《信息表》，同时划转……余额");
- review 复核 (the outbound province's reviewers): a fund transfer held under the outbound
  region's policy, until a reviewer decides; 1 working day;
- inbound 转入 (inbound agency): from when the inbound side has all it needs — the table and, when
  funds are due, the fund transfer released to it — until transfer-in completes or it rejects;
  5 working days ("转入地经办机构收到信息后，5个工作日内……完成转入，并接收职工医保个人账户金额");
- return 退回 (inbound agency): after it rejected a case whose funds it received, until it sends
  them back; 5 working days;
- return receipt 退回确认 (outbound agency): from the return until it confirms the money is back;
  5 working days;
- resolution 解除阻断 (the person, with the outbound agency): an automatic case refused only for
  blockers the person must clear (在院未结算, 欠费, …), until the outbound side reports them resolved;
  no agency's clock (20 working days to draw attention, not a legal limit). An applied case so
  refused closes, and the person applies again once the blockers are cleared: the outbound and
  total stages of the automatic case likewise end at the refusal and start again at the
  resolution, as for a new application;
- total 全程 (both): from opening until the case closes, but for the wait for a resolution;
  15 working days.

Each stage is active exactly while a predicate on the case holds; it starts when the predicate
becomes true and finishes when it becomes false, so the store keeps stages from a case's state
before and after each message without knowing the rules. New stages (and new owners) are new
entries of `STAGES`.
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
    RETURN = "return"
    RETURN_RECEIPT = "return_receipt"
    RESOLUTION = "resolution"


class Owner(StrEnum):
    """Whose clock a stage is."""

    OUTBOUND = "outbound"  # the outbound agency
    INBOUND = "inbound"    # the inbound agency
    REVIEWER = "reviewer"  # the reviewers of the outbound province's held transfers
    BOTH = "both"          # the whole case: no single side's clock
    PERSON = "person"      # the person, clearing blockers with the outbound agency: no agency's clock


class Timeliness(StrEnum):
    ON_TIME = "on_time"    # unfinished with more than one working day left, or finished in time
    DUE_SOON = "due_soon"  # unfinished, its last day is today or the next working day
    OVERDUE = "overdue"    # unfinished past its deadline
    LATE = "late"          # finished after its deadline


@dataclass(frozen=True)
class StageRule:
    owner: Owner
    active: Callable[[Case], bool]


_OUTBOUND_OPEN: Final = frozenset({_S.CASE_STATE_OPENED, _S.CASE_STATE_OUTBOUND_ACCEPTED})
_INBOUND_HAS_ALL: Final = frozenset({
    _S.CASE_STATE_FUNDS_SENT, _S.CASE_STATE_INBOUND_ACCEPTED, _S.CASE_STATE_FUNDS_CREDITED,
})

STAGES: Final[Mapping[Stage, StageRule]] = {
    Stage.OUTBOUND: StageRule(Owner.OUTBOUND, lambda c: c.state in _OUTBOUND_OPEN
                              or (c.state == _S.CASE_STATE_TABLE_SENT and c.funds_expected)),
    Stage.REVIEW: StageRule(Owner.REVIEWER, lambda c: c.state == _S.CASE_STATE_HELD_FOR_REVIEW),
    Stage.INBOUND: StageRule(Owner.INBOUND, lambda c: c.state in _INBOUND_HAS_ALL
                             or (c.state == _S.CASE_STATE_TABLE_SENT and not c.funds_expected)),
    Stage.RETURN: StageRule(Owner.INBOUND, lambda c: c.state == _S.CASE_STATE_AWAITING_FUND_RETURN),
    Stage.RETURN_RECEIPT: StageRule(Owner.OUTBOUND, lambda c: c.state == _S.CASE_STATE_FUNDS_RETURNED),
    Stage.RESOLUTION: StageRule(Owner.PERSON, lambda c: c.state == _S.CASE_STATE_AWAITING_RESOLUTION),
    Stage.TOTAL: StageRule(Owner.BOTH, lambda c: not c.closed and c.state != _S.CASE_STATE_AWAITING_RESOLUTION),
}


def owner_agency(owner: Owner, outbound: str, inbound: str) -> str:
    """The agency whose clock it is ("" for the reviewers, both sides and the person)."""
    return outbound if owner is Owner.OUTBOUND else inbound if owner is Owner.INBOUND else ""


def owner_province(owner: Owner, outbound: str, inbound: str) -> str:
    """The province answerable for a stage: the owning agency's; the outbound province for a review
    (its region's policy holds the transfer, its reviewers decide) and for a resolution (the
    blockers are at its agency); "" for the whole case."""
    if owner is Owner.BOTH:
        return ""
    return province(inbound if owner is Owner.INBOUND else outbound)


@dataclass(frozen=True)
class Limits:
    """Working days allowed per stage. The measures' own limits are the most a region may allow
    (regions are encouraged to go faster), so they bound the configuration."""

    outbound: int = setting(10, "Working days the outbound agency has to send the information table"
                            " (and the funds); the measures allow at most 10.", key="outbound_working_days",
                            unit="working days", minimum=1, maximum=10)
    inbound: int = setting(5, "Working days the inbound agency has to complete the transfer once it has"
                           " everything (the table, and the funds released when due); the measures allow at"
                           " most 5.", key="inbound_working_days", unit="working days", minimum=1, maximum=5)
    total: int = setting(15, "Working days the whole case may take; the measures allow at most 15.",
                         key="total_working_days", unit="working days", minimum=1, maximum=15)
    review: int = setting(1, "Working days a reviewer has to decide on a held fund transfer.",
                          key="review_working_days", unit="working days", minimum=1)
    return_: int = setting(5, "Working days the inbound agency has to send back the funds of a case it"
                           " rejected after they arrived.", key="return_working_days", unit="working days",
                           minimum=1)
    return_receipt: int = setting(5, "Working days the outbound agency has to confirm returned funds arrived.",
                                  key="return_receipt_working_days", unit="working days", minimum=1)
    resolution: int = setting(20, "Working days after which an automatic case still waiting for its blockers to"
                              " be resolved shows as overdue (the person's wait, on no agency's clock; the"
                              " measures set no limit).", key="resolution_working_days", unit="working days",
                              minimum=1)

    def __post_init__(self) -> None:
        if min(self.outbound, self.inbound, self.total, self.review, self.return_, self.return_receipt,
               self.resolution) < 1:
            raise ValueError("every limit is at least one working day")

    def of(self, stage: Stage) -> int:
        limit: int = getattr(self, _LIMIT_FIELDS[stage])
        return limit


_LIMIT_FIELDS: Final = {stage: "return_" if stage is Stage.RETURN else stage.value for stage in Stage}


@dataclass(frozen=True)
class StageStart:
    stage: Stage
    owner: Owner
    deadline: dt.datetime
    provisional: bool  # counted on a fallback year: counted again when its notice is loaded


@dataclass(frozen=True)
class StageChanges:
    """What a message did to the case's stages (all at the message's acceptance time)."""

    started: tuple[StageStart, ...] = ()
    finished: tuple[Stage, ...] = ()
    calendar_version: int = 0  # the version of the calendar the started stages were counted on


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
    stage stands at a given instant. The calendar is replaced, whole, when a notice is loaded
    (`use`); each computation reads it once."""

    def __init__(self, calendar: WorkingCalendar, limits: Limits | None = None) -> None:
        self.calendar = calendar
        self.limits = limits or Limits()

    def use(self, calendar: WorkingCalendar) -> None:
        """Count on `calendar` from now on (a newer version of the store's calendar)."""
        self.calendar = calendar

    def changes(self, before: Case | None, after: Case, at: dt.datetime) -> StageChanges:
        started, finished = [], []
        calendar = self.calendar
        for stage, rule in STAGES.items():
            was, now = before is not None and rule.active(before), rule.active(after)
            if now and not was:
                started.append(self._start(calendar, stage, rule.owner, at))
            elif was and not now:
                finished.append(stage)
        return StageChanges(tuple(started), tuple(finished), calendar.version)

    def start(self, stage: Stage, started_at: dt.datetime, calendar: WorkingCalendar | None = None) -> StageStart:
        """The deadline of a stage started at `started_at`, on `calendar` (default: the current one)."""
        return self._start(calendar or self.calendar, stage, STAGES[stage].owner, started_at)

    def _start(self, calendar: WorkingCalendar, stage: Stage, owner: Owner, at: dt.datetime) -> StageStart:
        deadline = calendar.deadline(at, self.limits.of(stage))
        return StageStart(stage, owner, deadline, calendar.provisional(at, deadline))

    def timing(self, stage: Stage, started_at: dt.datetime, deadline: dt.datetime,
               finished_at: dt.datetime | None, now: dt.datetime) -> StageTiming:
        calendar = self.calendar
        end = finished_at or now
        return StageTiming(
            stage=stage, started_at=started_at, deadline=deadline, finished_at=finished_at,
            working_days_used=calendar.working_days_between(local_date(started_at), local_date(end)),
            working_days_elapsed=calendar.elapsed(started_at, end),
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
