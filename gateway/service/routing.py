"""Store-and-forward delivery to subscribed platforms: windows, wake-ups and what becomes of the
leases a stream leaves unacknowledged.

Deliveries live in the store (`gateway.store.deliveries`); the router leases them for
subscription streams and hands them out in log order. Its rules:

- **A window per subscription.** A stream holds at most `window` deliveries unacknowledged, counted
  from lease to acknowledgement (or the lease's end): not from "yielded" to "read", since gRPC
  accepts megabytes of a stream its client is not reading, so what was yielded may sit in buffers.
  A subscriber that does not read holds at most its window, and claims nothing more.
- **Wake-ups, not polls.** A subscription with room and nothing to do waits. A new message or an
  acknowledgement for its platform (from this process, or from another through the store's
  notifications) wakes one idle subscription of the platform; if its claim fills its window, it
  wakes the next (the work is shared in turns). Leases ending are one timer for the whole process,
  not a poll per stream; that timer also asks the store, once per visibility timeout, when leases
  other processes hold will end. Idle subscriptions cost nothing.
- **A stream that ends** (its client went away, failed, or the connection was cut) returns what
  it held: the leases it never sent without an attempt counted, and of those it sent only the
  first unacknowledged one counts (the one its receiver failed on, if any: a delivery larger than
  the receiver takes, say, ends the stream each time it is sent first). The others leased with it
  go back untouched, so one poisoned delivery reaches the dead-letter state alone
  (STREAM_ENDED), and the rest are delivered.
- **A stream that stalls** (a lease it holds ran out and nothing it held was acknowledged since
  the lease began) is ended, ABORTED SUBSCRIPTION_STALLED, its leases returned the same way:
  its deliveries go to the platform's other streams. (While a stream is stuck writing to a client
  that does not read, ending it means cancelling its handler: its client, not reading, never
  hears the end.)
- **A delivery larger than the gateway may send** goes to the dead-letter state (TOO_LARGE)
  without being put on any stream.

Within a case the order holds across all of this: the store leases only a case's oldest
unacknowledged delivery (`gateway.store.deliveries`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import heapq
import itertools
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final

from gateway.core.errors import StoreUnavailable, SubscriptionStalled
from gateway.core.settings import setting
from gateway.service.metrics import Metrics
from gateway.store import Claim, ClaimedDelivery, DeadReason, LeaseEnd, Store

log = logging.getLogger("gateway.routing")

DELIVERY_FRAMING: Final = 64  # bytes a Delivery adds around its signed message and receipt (tags, lengths, attempt)
_STORE_RETRY: Final = 1.0  # seconds before a stream asks a store that failed again
_EARLY: Final = 0.05  # share of a lease's time by which the router ends it before the store would
_STUCK_WRITE: Final = 1.0  # seconds a stalled stream may still be writing before its handler is cancelled


@dataclass(frozen=True)
class DeliveryConfig:
    visibility_timeout: float = setting(
        30.0, "An unacknowledged delivery is delivered again after this.", key="visibility_timeout_seconds",
        unit="seconds", minimum=0.01)
    max_attempts: int = setting(10, "Unacknowledged attempts before a delivery goes to the dead-letter state.",
                                minimum=1)
    window: int = setting(
        64, "Deliveries one subscription stream holds unacknowledged at once, from lease to acknowledgement; a"
        " subscriber that does not read holds at most this many.", minimum=1)


@dataclass(eq=False)
class _Lease:
    delivery: ClaimedDelivery
    granted: float  # loop time
    expires: float  # loop time
    sent: int = 0   # the order it was put on the stream (1, 2, …); 0: not sent


@dataclass(eq=False)
class _Platform:
    """The subscriptions of one platform in this process."""

    subscriptions: set[Subscription] = field(default_factory=set)
    idle: deque[Subscription] = field(default_factory=deque)  # room and nothing found: woken in this order
    generation: int = 0  # bumped by every wake-up, so a claim racing one looks again
    holders: dict[str, set[Subscription]] = field(default_factory=dict)  # message id → who holds a lease of it


class Subscription:
    """One Subscribe stream: `async with router.subscribe(…) as s: async for delivery in s: …`.

    Iterating waits for work and yields leased deliveries; it ends when the router closes, and
    raises SubscriptionStalled when the router ends a stalled stream. Leaving the `async with`
    (however) returns what the stream still holds (see the module docstring)."""

    def __init__(self, router: Router, platform: str, agencies: frozenset[str] | None, window: int) -> None:
        self.platform = platform
        self.agencies = agencies
        self.window = window
        self.held: dict[tuple[str, str], _Lease] = {}  # (message id, receiver) → its lease
        self.unsent: deque[_Lease] = deque()
        self.wake = asyncio.Event()
        self.look = True    # there may be work: claim before waiting
        self.idle = False   # waiting in its platform's idle line
        self.writing = False  # a delivery was yielded and the stream has not asked for the next yet
        self.ended: str | None = None  # "closed" or "stalled"
        self.last_ack = asyncio.get_running_loop().time()
        self.sent = 0  # deliveries put on the stream so far
        self._router = router
        self._task = asyncio.current_task()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._router._leave(self)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> ClaimedDelivery:
        self.writing = False
        lease = await self._router._next(self)
        self.sent += 1
        lease.sent = self.sent
        self.writing = True
        return lease.delivery

    def cancel(self) -> None:
        """End the stream from outside while it is stuck writing (its handler task is cancelled)."""
        if self._task is not None:
            self._task.cancel()


class Router:
    """Leases deliveries for subscription streams, one process's (see the module docstring).
    `start()` before streams open, `close()` then `wait_closed()` when draining."""

    def __init__(self, store: Store, config: DeliveryConfig, clock: Callable[[], dt.datetime], metrics: Metrics,
                 *, max_delivery_bytes: int) -> None:
        self._store = store
        self._config = config
        self._clock = clock
        self._metrics = metrics
        self._max_delivery_bytes = max_delivery_bytes
        self._platforms: dict[str, _Platform] = {}
        self._expiries: list[tuple[float, int, Subscription, _Lease]] = []  # a heap, by lease end
        self._order = itertools.count()
        self._remote: dict[str, float] = {}  # platform → loop time its earliest lease in the store ends
        self._replan = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def start(self) -> None:
        if self._timer is None:
            self._timer = asyncio.create_task(self._run_timer())

    def close(self) -> None:
        """End every subscription stream (the gateway is draining); what they hold goes back."""
        self._closed = True
        for state in self._platforms.values():
            for subscription in list(state.subscriptions):
                self._end(subscription, "closed")
        if self._timer is not None:
            self._timer.cancel()

    async def wait_closed(self) -> None:
        """Until every lease being returned is back in the store (and, once closed, the timer has
        stopped): before the store closes."""
        if self._closed and self._timer is not None:
            await asyncio.gather(self._timer, return_exceptions=True)
            self._timer = None
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    # -- news ------------------------------------------------------------------------------

    def notify(self, platform: str | None) -> None:
        """There may be new deliveries for `platform` (None: for every platform)."""
        for name in (self._platforms if platform is None else (platform,)):
            state = self._platforms.get(name)
            if state is not None:
                state.generation += 1
                self._wake_one(state)

    def acknowledged(self, platform: str, message_id: str) -> None:
        """`platform` acknowledged `message_id` (here or on another replica): the stream that held
        it has room again, and the next message of its case may go out."""
        state = self._platforms.get(platform)
        if state is None:
            return
        state.generation += 1
        holders = state.holders.pop(message_id, set())
        now = asyncio.get_running_loop().time()
        for subscription in holders:
            for key in [k for k in subscription.held if k[0] == message_id]:
                lease = subscription.held.pop(key)
                if not lease.sent:
                    subscription.unsent.remove(lease)
            subscription.last_ack = now
            self._wake(subscription)
        if not holders:
            self._wake_one(state)

    def on_store_wake(self, platform: str | None, acknowledged: str | None) -> None:
        """The store's news from other processes (`Store.on_wake`)."""
        if platform is not None and acknowledged is not None:
            self.acknowledged(platform, acknowledged)
        else:
            self.notify(platform)

    # -- streams ---------------------------------------------------------------------------

    def subscribe(self, platform: str, agencies: frozenset[str] | None) -> Subscription:
        subscription = Subscription(self, platform, agencies, self._config.window)
        self._platforms.setdefault(platform, _Platform()).subscriptions.add(subscription)
        if self._closed:
            subscription.ended = "closed"
        return subscription

    async def _next(self, subscription: Subscription) -> _Lease:
        state = self._platforms[subscription.platform]
        while True:
            if subscription.ended == "closed":
                raise StopAsyncIteration
            if subscription.ended == "stalled":
                raise SubscriptionStalled(
                    f"subscription of platform {subscription.platform} acknowledged nothing of what it held within"
                    f" {self._config.visibility_timeout:g} s; its deliveries go to the platform's other streams",
                    reason="SUBSCRIPTION_STALLED", metadata={"platform": subscription.platform})
            if subscription.unsent:
                return subscription.unsent.popleft()
            room = subscription.window - len(subscription.held)
            if room > 0 and subscription.look:
                subscription.look = False
                generation = state.generation
                full = await self._claim(subscription, state, room)
                if full or subscription.agencies is not None:
                    self._wake_one(state)  # there may be more: the next idle stream takes its turn
                if state.generation != generation:
                    subscription.look = True  # news came during the claim: look again
                continue
            if room > 0 and not subscription.idle:
                subscription.idle = True
                state.idle.append(subscription)
            await subscription.wake.wait()
            subscription.wake.clear()

    async def _claim(self, subscription: Subscription, state: _Platform, room: int) -> bool:
        """Lease up to `room` deliveries into the stream; whether it got as many (there may be more)."""
        platform = subscription.platform
        began = asyncio.get_running_loop().time()  # before the store's clock is read for the lease
        claiming = asyncio.ensure_future(self._store.claim_deliveries(
            platform, subscription.agencies, limit=room, lease=dt.timedelta(seconds=self._config.visibility_timeout),
            max_attempts=self._config.max_attempts, now=self._clock()))
        try:
            claim = await asyncio.shield(claiming)
        except StoreUnavailable as err:
            log.warning("claim failed; the stream asks again shortly", extra={"fields": {
                "platform": platform, "reason": err.reason}})
            asyncio.get_running_loop().call_later(_STORE_RETRY, self._wake, subscription)
            return False
        except asyncio.CancelledError:  # the stream went away mid-claim: what it leased goes back
            claiming.add_done_callback(lambda done: self._undo_claim(platform, done))
            raise
        self._metrics.delivery_claims.labels(platform).inc()
        for dead in claim.dead_lettered:
            self._dead_lettered(platform, dead.message_id, dead.transfer_id, dead.attempts, dead.reason)
        self._lease_or_refuse(subscription, state, claim, began)
        return len(claim.deliveries) + len(claim.dead_lettered) >= room

    def _lease_or_refuse(self, subscription: Subscription, state: _Platform, claim: Claim, began: float) -> None:
        """Hold what the claim leased, except what is too large to send: dead-lettered at once.
        A lease ends here `_EARLY` of its time before it ends in the store."""
        now = asyncio.get_running_loop().time()
        expires = began + self._config.visibility_timeout * (1 - _EARLY)
        too_large = []
        for delivery in claim.deliveries:
            if delivery.size + DELIVERY_FRAMING > self._max_delivery_bytes:
                too_large.append(LeaseEnd(delivery.message_id, delivery.receiver, delivery.attempt, counted=True,
                                          dead=DeadReason.TOO_LARGE))
                self._dead_lettered(subscription.platform, delivery.message_id, delivery.transfer_id,
                                    delivery.attempt, DeadReason.TOO_LARGE, size=delivery.size)
                continue
            lease = _Lease(delivery, granted=now, expires=expires)
            subscription.held[(delivery.message_id, delivery.receiver)] = lease
            subscription.unsent.append(lease)
            state.holders.setdefault(delivery.message_id, set()).add(subscription)
            self._push_expiry(subscription, lease)
        if too_large:
            self._in_background(self._store.end_leases(subscription.platform, too_large, self._clock()))

    def _undo_claim(self, platform: str, done: asyncio.Future[Claim]) -> None:
        if done.cancelled() or done.exception() is not None:
            return
        ends = [LeaseEnd(d.message_id, d.receiver, d.attempt, counted=False) for d in done.result().deliveries]
        if ends:
            self._in_background(self._store.end_leases(platform, ends, self._clock()))

    def _leave(self, subscription: Subscription) -> None:
        """The stream is over, however it ended: return what it holds."""
        state = self._platforms.get(subscription.platform)
        if state is None or subscription not in state.subscriptions:
            return
        state.subscriptions.discard(subscription)
        if not state.subscriptions:
            del self._platforms[subscription.platform]
            self._remote.pop(subscription.platform, None)
        subscription.ended = subscription.ended or "left"
        ends = self._release(subscription, state, counting=subscription.ended != "closed")
        if ends:
            self._in_background(self._end_leases(subscription.platform, ends))

    def _release(self, subscription: Subscription, state: _Platform, *, counting: bool) -> list[LeaseEnd]:
        """Take every lease off `subscription`: none counted, but the first sent if `counting`."""
        leases = list(subscription.held.values())
        subscription.held.clear()
        subscription.unsent.clear()
        for lease in leases:
            holders = state.holders.get(lease.delivery.message_id)
            if holders is not None:
                holders.discard(subscription)
                if not holders:
                    del state.holders[lease.delivery.message_id]
        sent = sorted((lease for lease in leases if lease.sent), key=lambda lease: lease.sent)
        first = sent[0] if counting and sent else None
        ends = []
        for lease in leases:
            d = lease.delivery
            dead = None
            if lease is first and d.attempt >= self._config.max_attempts:
                dead = DeadReason.STREAM_ENDED
                self._dead_lettered(subscription.platform, d.message_id, d.transfer_id, d.attempt, dead, size=d.size)
            ends.append(LeaseEnd(d.message_id, d.receiver, d.attempt, counted=lease is first, dead=dead))
        return ends

    async def _end_leases(self, platform: str, ends: Sequence[LeaseEnd]) -> None:
        await self._store.end_leases(platform, ends, self._clock())
        self.notify(platform)  # what came back is claimable now

    def _end(self, subscription: Subscription, reason: str) -> None:
        """End the stream at its next step. A stalled one still writing a second later is stuck
        handing a delivery to a client that does not read: its handler is cancelled."""
        subscription.ended = reason
        subscription.wake.set()
        if reason == "stalled" and subscription.writing:
            asyncio.get_running_loop().call_later(_STUCK_WRITE, self._cancel_if_stuck, subscription,
                                                  subscription.sent)

    @staticmethod
    def _cancel_if_stuck(subscription: Subscription, sent: int) -> None:
        if subscription.writing and subscription.sent == sent:
            subscription.cancel()

    # -- waking ----------------------------------------------------------------------------

    def _wake(self, subscription: Subscription) -> None:
        subscription.look = True
        subscription.idle = False
        subscription.wake.set()

    def _wake_one(self, state: _Platform) -> None:
        """Wake the first idle stream of the platform (and any filtered by agency before it, whose
        claim may not see the work)."""
        while state.idle:
            subscription = state.idle.popleft()
            if not subscription.idle or subscription.ended is not None:
                continue
            self._wake(subscription)
            if subscription.agencies is None:
                return

    # -- the one timer ---------------------------------------------------------------------

    def _push_expiry(self, subscription: Subscription, lease: _Lease) -> None:
        earliest = self._expiries[0][0] if self._expiries else None
        heapq.heappush(self._expiries, (lease.expires, next(self._order), subscription, lease))
        if earliest is None or lease.expires < earliest:
            self._replan.set()

    async def _run_timer(self) -> None:
        """End leases as they run out, and look for the ends of other processes' leases once per
        visibility timeout; sleep in between."""
        loop = asyncio.get_running_loop()
        next_look = loop.time()
        while not self._closed:
            now = loop.time()
            try:
                await self._expire(now)
                if now >= next_look:
                    next_look = now + self._config.visibility_timeout
                    await self._look_at_store(now)
            except StoreUnavailable as err:
                log.warning("lease check failed; trying again", extra={"fields": {"reason": err.reason}})
            except Exception:  # never let the timer die: streams would wait for ever
                log.exception("lease timer failed; carrying on")
            for platform, due in list(self._remote.items()):
                if due <= now:
                    del self._remote[platform]
                    self.notify(platform)
            wake_at = min(next_look, *self._remote.values(), self._expiries[0][0] if self._expiries else next_look)
            self._replan.clear()
            with contextlib.suppress(TimeoutError):  # time's up: the next lease ends, or look again
                await asyncio.wait_for(self._replan.wait(), max(0.0, wake_at - loop.time()))

    async def _expire(self, now: float) -> None:
        due: dict[Subscription, list[_Lease]] = {}
        while self._expiries and self._expiries[0][0] <= now:
            _, _, subscription, lease = heapq.heappop(self._expiries)
            key = (lease.delivery.message_id, lease.delivery.receiver)
            if subscription.held.get(key) is lease:
                due.setdefault(subscription, []).append(lease)
        for subscription, leases in due.items():
            await self._expired(subscription, leases)

    async def _expired(self, subscription: Subscription, leases: list[_Lease]) -> None:
        """Leases of `subscription` ran out (here, a little before the store's own ends, so that
        this decides and not another stream's claim). Acknowledged elsewhere: room again. Sent
        and not acknowledged: the attempt counts, claimable at once. Never sent: undone. And if
        the stream acknowledged nothing since they began, it has stalled: ended, all it holds
        returned (only the first it sent counted)."""
        platform = subscription.platform
        state = self._platforms.get(platform)
        if state is None or subscription.ended is not None:
            return
        acked = await self._store.acknowledged(platform, sorted({lease.delivery.message_id for lease in leases}))
        for message_id in acked:
            self.acknowledged(platform, message_id)
        left = [lease for lease in leases if lease.delivery.message_id not in acked
                and subscription.held.get((lease.delivery.message_id, lease.delivery.receiver)) is lease]
        if not left:
            return
        if subscription.last_ack < min(lease.granted for lease in left):
            ends = self._release(subscription, state, counting=True)
            log.warning("subscription stalled; ended", extra={"fields": {
                "platform": platform, "held": len(ends), "visibility_timeout_seconds":
                self._config.visibility_timeout}})
            self._end(subscription, "stalled")
            await self._end_leases(platform, ends)
            return
        ends = []
        for lease in left:
            d = lease.delivery
            del subscription.held[(d.message_id, d.receiver)]
            holders = state.holders.get(d.message_id)
            if holders is not None:
                holders.discard(subscription)
            if not lease.sent:
                subscription.unsent.remove(lease)
            ends.append(LeaseEnd(d.message_id, d.receiver, d.attempt, counted=bool(lease.sent)))
        self._wake(subscription)
        await self._end_leases(platform, ends)

    async def _look_at_store(self, now: float) -> None:
        """When do leases of the platforms subscribed here end, whoever holds them?"""
        platforms = sorted(self._platforms)
        if not platforms:
            return
        wall = self._clock()
        for platform, ends in (await self._store.lease_expiries(platforms)).items():
            if platform in self._platforms:
                self._remote[platform] = now + max(0.0, (ends - wall).total_seconds())

    # -- reporting -------------------------------------------------------------------------

    def _dead_lettered(self, platform: str, message_id: str, transfer_id: str, attempts: int, reason: DeadReason,
                       *, size: int | None = None) -> None:
        log.warning("dead-lettered", extra={"fields": {
            "platform": platform, "message_id": message_id, "transfer_id": transfer_id, "attempts": attempts,
            "reason": reason.value, **({"size_bytes": size} if size is not None else {})}})

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(self._logged(work))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    async def _logged(work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except StoreUnavailable as err:  # the leases run out by themselves: nothing is lost
            log.warning("returning leases failed; they come back when they run out", extra={"fields": {
                "reason": err.reason}})
