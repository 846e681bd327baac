"""The periodic reading of the store into gauges: delivery backlog, cases per stage and owner
against their deadlines, finished stages as judged now, requests escalated unanswered, funds, and
whether the working-day calendar is official or a fallback.

Stage gauges are kept current by this reading, not only when messages arrive, so a case that
silently passes its deadline shows as overdue within one interval. Each reading first brings this
replica's calendar in step with the store's (`CalendarKeeper.sync`): a notice loaded through any
replica is counted on by every one within an interval.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from gateway.core.errors import StoreUnavailable
from gateway.core.sla import Sla
from gateway.core.workdays import DaySource, local_date
from gateway.service.calendar import CalendarKeeper
from gateway.service.metrics import Metrics
from gateway.store import Store

log = logging.getLogger("gateway.app.monitor")

# How far ahead the calendar must be known: the longest limit (15 working days) with holidays.
CALENDAR_HORIZON: Final = dt.timedelta(days=60)


class Monitor:
    def __init__(
        self, *, store: Store, metrics: Metrics, sla: Sla, calendar: CalendarKeeper,
        platforms: Callable[[], Sequence[str]], clock: Callable[[], dt.datetime],
        on_calendar: Callable[[list[int]], Awaitable[None]] | None = None,
        on_store: Callable[[bool], Awaitable[None]] | None = None,
        also: Sequence[Callable[[dt.datetime], Awaitable[None]]] = (),
    ) -> None:
        """`platforms` gives the registry's platforms at each reading (a reload may change them);
        `also` are more readings of the same interval (the registry's version, keys' expiry)."""
        self._store = store
        self._calendar = calendar
        self._metrics = metrics
        self._sla = sla
        self._platforms = platforms
        self._also = tuple(also)
        self._clock = clock
        self._on_calendar = on_calendar
        self._on_store = on_store
        self._reported_unknown: list[int] | None = None
        self._store_ok = True

    @staticmethod
    def horizon_years(now: dt.datetime) -> range:
        """The years from today to the horizon, whose working days deadlines may need."""
        return range(local_date(now).year, local_date(now + CALENDAR_HORIZON).year + 1)

    async def refresh_once(self) -> None:
        """One reading of every gauge."""
        await self._calendar.sync()
        now = self._clock()
        self._metrics.observe_backlog(await self._store.delivery_stats(), now.timestamp(), list(self._platforms()))
        self._metrics.observe_dead_letters(await self._store.dead_letter_counts())
        self._metrics.observe_stages(await self._store.stage_counts(now, self._sla.calendar.due_soon_before(now)))
        self._metrics.observe_stage_totals(await self._store.stage_totals())
        self._metrics.observe_escalations(await self._store.escalations(now))
        self._metrics.observe_funds(await self._store.fund_totals())
        self._metrics.log_leaves.set(await self._store.log_leaves())
        await self._check_calendar(now)
        for reading in self._also:
            await reading(now)

    async def _check_calendar(self, now: dt.datetime) -> None:
        calendar, years = self._sla.calendar, self.horizon_years(now)
        unknown = calendar.unknown_years(years)
        for year in {*years, *frozenset(calendar.fallback_years)}:  # the writer adds to it
            self._metrics.calendar_fallback.labels(str(year)).set(
                1 if calendar.source(year) is DaySource.FALLBACK else 0)
        if unknown != self._reported_unknown:
            if unknown:
                log.warning("working-day calendar unknown; counting Monday to Friday without holidays",
                            extra={"fields": {"years": unknown,
                                              "fix": "load the State Council's notice for the year:"
                                                     " transfer-gateway calendar load FILE"}})
            elif self._reported_unknown:
                log.info("working-day calendar known again", extra={"fields": {"years": []}})
            self._reported_unknown = unknown
            if self._on_calendar is not None:
                await self._on_calendar(unknown)

    async def run(self, interval: float) -> None:
        """Read every `interval` seconds; report the store unreachable (and back) as it changes."""
        while True:
            ok = True
            try:
                await self.refresh_once()
            except StoreUnavailable as err:
                ok = False
                if self._store_ok:
                    log.error("store unavailable", extra={"fields": {"reason": err.reason}})
            except Exception:
                log.exception("monitor reading failed")
            if ok != self._store_ok:
                self._store_ok = ok
                if ok:
                    log.info("store available again")
                if self._on_store is not None:
                    await self._on_store(ok)
            await asyncio.sleep(interval)
