"""The working-day calendar this replica counts on, kept in step with the store's.

The State Council's notices live in the store (`gateway.store.calendar`), so every replica
counts deadlines on the same days. `CalendarKeeper.sync` reads the store's calendar; when its
version moved, the replica counts on the new one from then on (`Sla.use`) and counts again the
stages stamped with an older version (`Store.retime_stages`), judging again those that finished
while their year was on the Monday-to-Friday fallback. It runs at start-up, on every monitor
reading, and right after a load through this replica (`load`).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping

from gateway.core.sla import Sla
from gateway.core.workdays import WorkingCalendar, YearNotice
from gateway.service.metrics import Metrics
from gateway.store import Retimed, Store

log = logging.getLogger("gateway.calendar")


class CalendarKeeper:
    def __init__(self, *, store: Store, sla: Sla, metrics: Metrics) -> None:
        self._store = store
        self._sla = sla
        self._metrics = metrics

    @property
    def calendar(self) -> WorkingCalendar:
        return self._sla.calendar

    async def sync(self) -> Retimed:
        """Count on the store's calendar if it is newer than this replica's, then count again every
        stage an older one counted. Raises StoreUnavailable."""
        stored = await self._store.calendar()
        if stored.version != self._sla.calendar.version:
            self._sla.use(WorkingCalendar(stored.notices, stored.version))
            self._metrics.calendar_version.set(stored.version)
            log.info("working-day calendar", extra={"fields": {
                "version": stored.version, "years": sorted(stored.notices)}})
        retimed = await self._store.retime_stages()
        if retimed.retimed:
            self._metrics.observe_rejudged(retimed)
            log.info("stages counted again on the calendar", extra={"fields": {
                "version": self._sla.calendar.version, "retimed": retimed.retimed, "rejudged": retimed.rejudged,
                "now_on_time": retimed.now_on_time, "now_late": retimed.now_late}})
        return retimed

    async def load(self, notices: Mapping[int, YearNotice], now: dt.datetime) -> tuple[int, Retimed]:
        """Keep `notices` in the store for every replica, then sync; (the new version, what it
        changed). Raises StoreUnavailable."""
        version = await self._store.load_calendar(dict(notices), now)
        log.info("calendar notices loaded", extra={"fields": {"version": version, "years": sorted(notices)}})
        return version, await self.sync()

    async def seed(self, notices: Mapping[int, YearNotice], now: dt.datetime) -> None:
        """Load the notices of a calendar file (`[sla] calendar_file`) for the years the store does
        not have yet: the store's, once loaded, win. Raises StoreUnavailable."""
        stored = await self._store.calendar()
        missing = {year: notice for year, notice in notices.items() if year not in stored.notices}
        if missing:
            await self.load(missing, now)
