"""Admission: each caller's share of the gateway, and the order in which calls within their share
are served.

Every call of the gateway's own services passes here first (`gateway.service.instrument` wraps
each handler), keyed by the caller's certificate:

1. **Rate**: a token bucket per caller (`gateway.core.quota.TokenBucket`); over it, the call is
   refused at once with the seconds until the next token.
2. **Calls in flight**: at most `calls_in_flight` of a caller's calls at once, those waiting for
   their turn included; more are refused at once. What a caller has in flight is what it holds of
   the gateway's memory (its requests), so this bounds it.
3. **Turns** (`FairGate`): at most `active_calls` calls, all callers together, do their work at
   once (parse, verify, validate, store); the rest wait in a queue per caller, and the queues take
   turns. A platform with 64 calls waiting and one with 1 each get the next free place in turn,
   so the second's call waits for at most one of the first's, not for all of them (as it would
   on the event loop and the store's writer, first come first served).

Subscriptions count apart (`subscription`): a rate token to open one, and at most
`subscriptions` open at once; their deliveries are the router's (`gateway.service.routing`).

Refusals are `QuotaExceeded` (RESOURCE_EXHAUSTED with RetryInfo and QuotaFailure) and are counted
in `transfer_gateway_throttled_total{caller,limit}`; they are not logged one by one (a flood
would flood the log).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

from gateway.core.errors import QuotaExceeded
from gateway.core.quota import Quota, TokenBucket
from gateway.core.registry import LiveRegistry
from gateway.service.auth import peer_names
from gateway.service.metrics import Metrics

# What a refusal for calls in flight or subscriptions suggests waiting: how long a place takes to
# free is not known when refusing (a call lasts milliseconds, a subscription hours).
IN_FLIGHT_RETRY: Final = 0.25
SUBSCRIPTION_RETRY: Final = 5.0
UNREGISTERED: Final = "unregistered"


class FairGate:
    """At most `width` holders at once; waiters queue per key, and the queues take turns.

    `enter(key)` returns at once while there is room and nobody waits; otherwise it waits in
    `key`'s queue. `leave()` hands the place to the first waiter of the next queue in turn (that
    queue then goes to the back of the line), or frees it. A waiter cancelled while waiting leaves
    its queue; one cancelled just as it was handed the place passes it on. One event loop owns it.
    """

    def __init__(self, width: int) -> None:
        if width < 1:
            raise ValueError("FairGate needs a width of at least 1")
        self._width = width
        self._active = 0
        self._queues: dict[str, deque[asyncio.Future[None]]] = {}
        self._turns: deque[str] = deque()  # keys with waiters, the next to be served first

    @property
    def active(self) -> int:
        return self._active

    def waiting(self, key: str) -> int:
        queue = self._queues.get(key)
        return len(queue) if queue is not None else 0

    async def enter(self, key: str) -> None:
        if self._active < self._width and not self._turns:
            self._active += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            self._turns.append(key)
        queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed the place as it was cancelled
                self.leave()
            else:
                self._forget(key, waiter)
            raise

    def leave(self) -> None:
        while self._turns:
            key = self._turns.popleft()
            queue = self._queues[key]
            waiter = queue.popleft()
            if queue:
                self._turns.append(key)
            else:
                del self._queues[key]
            if not waiter.done():
                waiter.set_result(None)  # the place passes to it: `active` stays the same
                return
        self._active -= 1

    def _forget(self, key: str, waiter: asyncio.Future[None]) -> None:
        queue = self._queues.get(key)
        if queue is None or waiter not in queue:
            return
        queue.remove(waiter)
        if not queue:
            del self._queues[key]
            self._turns.remove(key)


@dataclass
class _Caller:
    """One caller's share and what it uses of it now."""

    label: str    # platform or operator id, or "unregistered": bounded, for metrics
    subject: str  # as QuotaFailure names it: "platform:jiangsu"
    quota: Quota
    bucket: TokenBucket
    in_flight: int = 0
    subscriptions: int = 0


class Admission:
    """Each caller's limits (see the module docstring). `clock` is monotonic seconds."""

    def __init__(self, registry: LiveRegistry, quota: Quota, metrics: Metrics,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._registry = registry
        self._quota = quota
        self._metrics = metrics
        self._clock = clock
        self._gate = FairGate(quota.active_calls)
        self._callers: dict[tuple[str, ...], _Caller] = {}  # by certificate SANs: registered callers only
        self._by_subject: dict[str, _Caller] = {}  # the same, by who they are (kept across registry reloads)
        self._read_from = registry.current  # the registry version the SANs were looked up in
        self._unregistered: _Caller | None = None

    @property
    def gate(self) -> FairGate:
        return self._gate

    def caller(self, context: Any) -> _Caller:
        """The caller of `context`: its platform or operator by certificate, else one shared
        `unregistered` caller (the service refuses it anyway; it may not crowd anyone meanwhile)."""
        registry = self._registry.current
        if registry is not self._read_from:  # a newer registry: look again (limits may have changed)
            self._callers.clear()
            self._read_from = registry
        names = peer_names(context)
        known = self._callers.get(names)
        if known is not None:
            return known
        for name in names:
            platform = registry.platform_by_uri(name)
            if platform is not None:
                return self._remember(names, platform.id, f"platform:{platform.id}",
                                      self._quota.for_platform(platform.limits))
            operator = registry.operator_by_uri(name)
            if operator is not None:
                return self._remember(names, operator.id, f"operator:{operator.id}", self._quota)
        if self._unregistered is None:
            self._unregistered = self._new(UNREGISTERED, UNREGISTERED, self._quota)
        return self._unregistered

    def _remember(self, names: tuple[str, ...], label: str, subject: str, quota: Quota) -> _Caller:
        """One share per identity, whichever of its SANs comes first; what it uses now (calls in
        flight, subscriptions) is kept when a reload changes its limits."""
        caller = self._by_subject.get(subject)
        if caller is None:
            caller = self._by_subject[subject] = self._new(label, subject, quota)
        elif caller.quota != quota:
            if (caller.quota.requests_per_second, caller.quota.burst) != (quota.requests_per_second, quota.burst):
                caller.bucket = TokenBucket(quota.requests_per_second, quota.burst, self._clock())
            caller.quota = quota
        self._callers[names] = caller
        return caller

    def _new(self, label: str, subject: str, quota: Quota) -> _Caller:
        return _Caller(label, subject, quota, TokenBucket(quota.requests_per_second, quota.burst, self._clock()))

    def call(self, context: Any) -> _Admitted:
        """`async with admission.call(context):` around a unary call's work. Raises QuotaExceeded
        (on entering) when the caller is over its rate or its calls in flight."""
        caller = self.caller(context)
        self._take_token(caller)
        if caller.in_flight >= caller.quota.calls_in_flight:
            raise self._refuse(caller, "calls_in_flight", caller.quota.calls_in_flight, IN_FLIGHT_RETRY,
                               f"{caller.subject} has {caller.in_flight} calls in flight, its limit",
                               reason="CALLS_IN_FLIGHT_EXCEEDED")
        return _Admitted(self._gate, caller)

    def subscription(self, context: Any) -> _Subscribed:
        """`with admission.subscription(context):` around a subscription's life. Raises
        QuotaExceeded when the caller is over its rate or has its limit of subscriptions open."""
        caller = self.caller(context)
        self._take_token(caller)
        if caller.subscriptions >= caller.quota.subscriptions:
            raise self._refuse(caller, "subscriptions", caller.quota.subscriptions, SUBSCRIPTION_RETRY,
                               f"{caller.subject} has {caller.subscriptions} subscriptions open, its limit",
                               reason="SUBSCRIPTIONS_EXCEEDED")
        return _Subscribed(caller, self._metrics)

    def _take_token(self, caller: _Caller) -> None:
        wait = caller.bucket.take(self._clock())
        if wait > 0:
            quota = caller.quota
            raise self._refuse(caller, "requests_per_second", quota.requests_per_second, wait,
                               f"{caller.subject} is over its rate of {quota.requests_per_second:g} requests per"
                               f" second (burst {quota.burst})", reason="RATE_EXCEEDED")

    def _refuse(self, caller: _Caller, limit: str, allowed: float, retry_after: float, text: str, *,
                reason: str) -> QuotaExceeded:
        self._metrics.throttled.labels(caller.label, limit).inc()
        return QuotaExceeded(
            f"{text} ({limit} {allowed:g}); retry in {retry_after:.3g} s", reason=reason, subject=caller.subject,
            limit=limit, retry_after=retry_after, metadata={"limit": limit, "allowed": f"{allowed:g}"})


class _Admitted:
    """A unary call's place: counted in its caller's calls in flight from creation, at work once
    its turn comes (`async with`)."""

    __slots__ = ("_caller", "_gate")

    def __init__(self, gate: FairGate, caller: _Caller) -> None:
        self._gate = gate
        self._caller = caller
        caller.in_flight += 1

    async def __aenter__(self) -> None:
        try:
            await self._gate.enter(self._caller.subject)
        except BaseException:
            self._caller.in_flight -= 1
            raise

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._gate.leave()
        self._caller.in_flight -= 1


class _Subscribed:
    """A subscription's place among its caller's open subscriptions."""

    __slots__ = ("_caller", "_metrics")

    def __init__(self, caller: _Caller, metrics: Metrics) -> None:
        self._caller = caller
        self._metrics = metrics

    def __enter__(self) -> None:
        self._caller.subscriptions += 1
        self._metrics.subscriptions.labels(self._caller.label).set(self._caller.subscriptions)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._caller.subscriptions -= 1
        self._metrics.subscriptions.labels(self._caller.label).set(self._caller.subscriptions)
