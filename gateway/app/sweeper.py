"""The periodic sweep: closes cases whose transfer request the outbound side never answered.

Each expiry is a gateway-authored, signed CaseExpired message in the case's log, decided by the
case rules inside the store's transaction (so a notice that arrives at the same moment wins or
loses cleanly), and delivered to both sides.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import Callable

from gateway.core import case as case_rules
from gateway.core.errors import RuleViolation
from gateway.service.authored import GatewayAuthor
from gateway.service.metrics import Metrics
from gateway.store import Store
from mitransfer.v1 import admin_pb2, envelope_pb2, tracking_pb2

log = logging.getLogger("gateway.app.sweeper")


class CaseSweeper:
    def __init__(self, *, store: Store, author: GatewayAuthor, rules: case_rules.CaseRules, metrics: Metrics,
                 clock: Callable[[], dt.datetime], batch: int = 100) -> None:
        self._store = store
        self._author = author
        self._rules = rules
        self._metrics = metrics
        self._clock = clock
        self._batch = batch

    async def sweep_once(self) -> int:
        """Expire what is due now; returns how many cases expired."""
        now = self._clock()
        expired = 0
        for view in await self._store.idle_cases(tracking_pb2.CASE_STATE_OPENED, now - self._rules.request_expiry,
                                                 self._batch):
            case = view.case
            notice = admin_pb2.CaseExpired(
                message_id=str(uuid.uuid4()), transfer_id=case.transfer_id, outbound=case.outbound,
                inbound=case.inbound, after_days=self._rules.request_expiry.days,
            )
            notice.opened_at.FromDatetime(view.opened_at)
            notice.expired_at.FromDatetime(now)
            def decide(current: case_rules.Case | None, _index: case_rules.CaseIndex,
                       message_id: str = notice.message_id) -> case_rules.Decision:
                return case_rules.expire(current, message_id=message_id)

            try:
                await self._author.record(
                    kind=envelope_pb2.MESSAGE_KIND_CASE_EXPIRED, message_id=notice.message_id,
                    transfer_id=case.transfer_id, payload=notice, sides=(case.outbound, case.inbound), now=now,
                    decide=decide,
                )
            except RuleViolation:  # answered or closed meanwhile: nothing to expire
                continue
            expired += 1
            self._metrics.cases_expired.inc()
            log.info("expired", extra={"fields": {"transfer_id": case.transfer_id, "outbound": case.outbound,
                                                  "inbound": case.inbound}})
        return expired

    async def run(self, interval: float) -> None:
        while True:
            try:
                await self.sweep_once()
            except Exception:
                log.exception("sweep failed")
            await asyncio.sleep(interval)
