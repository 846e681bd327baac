"""The periodic reading of the store into gauges: delivery backlog, cases per stage and owner
against their deadlines, finished stages as judged now, requests escalated unanswered, funds, and
whether the working-day calendar is official or a fallback.

Stage gauges are kept current by this reading, not only when messages arrive, so a case that
silently passes its deadline shows as overdue within one interval. Each reading first brings this
replica's calendar in step with the store's (`CalendarKeeper.sync`): a notice loaded through any
replica is counted on by every one within an interval.

Each round starts with a write probe (`Store.probe_write`, gateway.store.probe): a store that
cannot write (a full disk, a read-only file system, a standby) may answer every read, and a
gateway that cannot commit can receipt nothing. A failed probe or reading turns health
NOT_SERVING and logs an error within one interval; the first round that writes and reads again
turns it back. The accept path's own failures are not counted: under load a transient failure
would flip health for everyone, and once health says NOT_SERVING no traffic comes to prove the
store is back; the probe answers in both cases.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from gateway.core.errors import StoreUnavailable
from gateway.core.sla import Sla
from gateway.core.text import shown
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
        also: Sequence[Callable[[dt.datetime], Awaitable[None]]] = (), replica: str = "gateway",
    ) -> None:
        """`platforms` gives the registry's platforms at each reading (a reload may change them);
        `also` are more readings of the same interval (the registry's version, keys' expiry);
        `replica` names this process's write-probe row."""
        self.replica = replica
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

    async def probe_store(self) -> None:
        """One write probe. Raises StoreUnavailable when the store cannot write."""
        await self._store.probe_write(self.replica, self._clock())

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
        """A round every `interval` seconds (see `check_once`)."""
        while True:
            await self.check_once()
            await asyncio.sleep(interval)

    async def check_once(self) -> bool:
        """Probe the store's writes, read every gauge, and report a change of the store's state
        (logged, the gauge, health). Whether the store wrote and read."""
        ok = True
        try:
            await self.probe_store()
            await self.refresh_once()
        except StoreUnavailable as err:
            ok = False
            if self._store_ok:
                # Its words are the database's (an errno, SQLite's or PostgreSQL's message), cut short.
                log.error("store unavailable", extra={"fields": {"reason": err.reason,
                                                                 "detail": shown(err.message, 200)}})
        except Exception:
            log.exception("monitor reading failed")
        self._metrics.store_available.set(1 if ok else 0)
        if ok != self._store_ok:
            self._store_ok = ok
            if ok:
                log.info("store available again")
            if self._on_store is not None:
                await self._on_store(ok)
        return ok
