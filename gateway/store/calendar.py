"""The working-day calendar every replica counts on, as operations of steps (`gateway.store.steps`):
the State Council's notices kept in the store with a version, and the stages counted again when
the version moves.

Why in the store: a deadline must not depend on which replica counted it. Each replica holds the
store's calendar in memory (`gateway.core.workdays.WorkingCalendar`, built from `read_calendar`)
and stamps every stage it starts with that calendar's version. A load raises the version; every
replica reads the new notices within one monitor interval, and `retime_batch` counts again every
stage stamped with an older version that is unfinished or was provisional (counted on a year
only the Monday-to-Friday fallback knew). A finished stage counted again is judged again, and the
stage totals move with it. A replica that started a stage on the old calendar just before it
heard of the new one stamped it with the old version, so the next pass counts it again too: the
deadlines converge, whatever replica counted them first.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from gateway.core.sla import Sla, Stage, Timeliness
from gateway.core.timestamps import from_micros, micros
from gateway.core.workdays import YearNotice, year_notice
from gateway.store.port import Retimed, StoredCalendar
from gateway.store.steps import Query, QueryOne, SkipLocked, Statement, Steps
from gateway.store.writes import add_to_stage_totals


class _Head(NamedTuple):
    version: int


class _Year(NamedTuple):
    calendar_year: int
    source: str
    holidays: str
    workdays: str
    loaded_at: int


def _days(text: str) -> list[dt.date]:
    return [dt.date.fromisoformat(day) for day in text.split(",") if day]


def _text(days: Iterable[dt.date]) -> str:
    return ",".join(day.isoformat() for day in sorted(days))


def read_calendar() -> Steps[StoredCalendar]:
    """The notices and their version. Raises CalendarFileError if a stored year is not a notice
    (written only by `load_calendar`, which checks it: a defect or a hand edit)."""
    head = yield from QueryOne("SELECT version FROM calendar_head", (), _Head)
    years = yield from Query("SELECT calendar_year, source, holidays, workdays, loaded_at FROM calendar_years"
                             " ORDER BY calendar_year", (), _Year)
    notices = {y.calendar_year: year_notice(y.calendar_year, _days(y.holidays), _days(y.workdays), y.source,
                                            from_micros(y.loaded_at)) for y in years}
    return StoredCalendar(head.version if head is not None else 0, notices)


def load_calendar(notices: Mapping[int, YearNotice], now: dt.datetime) -> Steps[int]:
    """Keep `notices` in place of the store's for their years; raise the version and return it."""
    for year, notice in sorted(notices.items()):
        yield from Statement(
            "INSERT INTO calendar_years (calendar_year, source, holidays, workdays, loaded_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (calendar_year) DO UPDATE SET source = excluded.source, holidays = excluded.holidays,"
            " workdays = excluded.workdays, loaded_at = excluded.loaded_at",
            (year, notice.source, _text(notice.holidays), _text(notice.workdays), micros(now)))
    head = yield from QueryOne("UPDATE calendar_head SET version = version + 1 RETURNING version", (), _Head)
    assert head is not None  # migration 4 made the row
    return head.version


class _Stale(NamedTuple):
    transfer_id: str
    stage: str
    started_at: int
    deadline: int
    finished_at: int | None
    calendar_version: int
    owner: str
    owner_province: str
    outbound_province: str
    inbound_province: str


def retime_batch(sla: Sla, limit: int) -> Steps[tuple[int, Retimed]]:
    """Count again up to `limit` stages stamped with an older calendar version than `sla`'s that are
    unfinished or provisional; (stages looked at, what changed). Rows another replica is counting
    at the same moment are skipped, and a row it counted meanwhile is left as it counted it."""
    calendar = sla.calendar  # one calendar for the whole batch, whatever replaces it meanwhile
    stale = yield from Query(
        "SELECT s.transfer_id, s.stage, s.started_at, s.deadline, s.finished_at, s.calendar_version, s.owner,"
        " s.owner_province, s.outbound_province, s.inbound_province FROM case_stages s"
        " WHERE s.calendar_version < ? AND (s.finished_at IS NULL OR s.provisional = 1)"
        " ORDER BY s.calendar_version LIMIT ?", (calendar.version, limit), _Stale, lock=SkipLocked("s"))
    retimed = rejudged = now_on_time = now_late = 0
    for row in stale:
        stage = Stage(row.stage)
        counted = sla.start(stage, from_micros(row.started_at), calendar)
        changed = yield from Statement(
            "UPDATE case_stages SET deadline = ?, provisional = ?, calendar_version = ?"
            " WHERE transfer_id = ? AND stage = ? AND calendar_version = ?",
            (micros(counted.deadline), int(counted.provisional), calendar.version, row.transfer_id, row.stage,
             row.calendar_version))
        if not changed:
            continue
        retimed += 1
        if row.finished_at is None:
            continue
        rejudged += 1
        finished = from_micros(row.finished_at)
        was = sla.timeliness(from_micros(row.deadline), finished, finished)
        now = sla.timeliness(counted.deadline, finished, finished)
        if was is not now:
            if now is Timeliness.ON_TIME:
                now_on_time += 1
            else:
                now_late += 1
            yield from add_to_stage_totals(stage, row, [(was, -1), (now, 1)])
    return len(stale), Retimed(retimed, rejudged, now_on_time, now_late)
