"""Admission: each caller's share of the gateway, and the order in which calls within their share
are served.

Every call of the gateway's own services passes here first (`gateway.service.instrument` wraps
each handler), keyed by the caller's certificate:

1. **Calls in flight**: at most `calls_in_flight` of a caller's calls at once, those waiting for
   their turn included; more are refused at once. What a caller has in flight is what it holds of
   the gateway's memory (its requests), so this bounds it.
2. **Rate**: a token bucket per caller (`gateway.core.quota.TokenBucket`). A call over the rate
   waits for its token if it comes within `RATE_PATIENCE` (a second), and is refused with the
   seconds until it comes otherwise: a caller keeping its calls in flight busy is paced to its
   rate, and the gateway's one event loop keeps room for everyone else's calls (a flood served as
   fast as the loop goes would slow every other call's network steps, which no gate here orders).
3. **Places** (`FairGate` of `active_calls` places): at most that many calls, all callers
   together, are in progress at once, from their start to their answer; more wait in a queue per
   caller, and the queues take turns. This bounds what queues on the event loop and at the
   store's writer (which commits what queued as one batch) ahead of any call.
4. **Turns** (`FairGate` of one place): within its place, a call's own work, from its start to
   its first wait (for the store, nearly always: parsing, the signature check, validation and the
   decision before it are where its CPU goes), runs when its turn comes, the callers again taking
   turns. The one event loop runs one step at a time anyway: the gate decides whose step comes
   next, where the loop's ready queue would take them first come first served.

So a platform with 64 calls in flight and one with a single call: the second's call waits for
one of the first's to finish for a place, then for at most one of theirs to take its turn, not
for all of them. A call waiting for the store holds its place but not the turn: the loop keeps
working while the store commits.

Subscriptions count apart (`subscription`): a rate token to open one, and at most
`subscriptions` open at once; their deliveries are the router's (`gateway.service.routing`).

Refusals are `QuotaExceeded` (RESOURCE_EXHAUSTED with RetryInfo and QuotaFailure) and are counted
in `transfer_gateway_throttled_total{caller,limit}`; they are not logged one by one (a flood
would flood the log).
"""

from __future__ import annotations

import asyncio
import time
import types
from collections import deque
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, TypeVar

from gateway.core.errors import QuotaExceeded
from gateway.core.quota import Quota, TokenBucket
from gateway.core.registry import LiveRegistry
from gateway.service.auth import peer_names
from gateway.service.metrics import Metrics

# What a refusal for calls in flight or subscriptions suggests waiting: how long a place takes to
# free is not known when refusing (a call lasts milliseconds, a subscription hours).
RATE_PATIENCE: Final = 1.0  # seconds a call over its caller's rate waits for its token before it is refused instead
IN_FLIGHT_RETRY: Final = 0.25
SUBSCRIPTION_RETRY: Final = 5.0
UNREGISTERED: Final = "unregistered"
T = TypeVar("T")


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
        self._places = FairGate(quota.active_calls)
        self._turns = FairGate(1)
        self._callers: dict[tuple[str, ...], _Caller] = {}  # by certificate SANs: registered callers only
        self._by_subject: dict[str, _Caller] = {}  # the same, by who they are (kept across registry reloads)
        self._read_from = registry.current  # the registry version the SANs were looked up in
        self._unregistered: _Caller | None = None

    @property
    def places(self) -> FairGate:
        return self._places

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
        (on entering) when the caller is over its calls in flight, or over its rate by more than
        `RATE_PATIENCE` (a call within it waits for its token, counted in flight meanwhile)."""
        caller = self.caller(context)
        if caller.in_flight >= caller.quota.calls_in_flight:
            raise self._refuse(caller, "calls_in_flight", caller.quota.calls_in_flight, IN_FLIGHT_RETRY,
                               f"{caller.subject} has {caller.in_flight} calls in flight, its limit",
                               reason="CALLS_IN_FLIGHT_EXCEEDED")
        paced = self._take_token(caller, RATE_PATIENCE)
        return _Admitted(self._places, self._turns, caller, paced)

    def subscription(self, context: Any) -> _Subscribed:
        """`with admission.subscription(context):` around a subscription's life. Raises
        QuotaExceeded when the caller is over its rate or has its limit of subscriptions open."""
        caller = self.caller(context)
        if caller.subscriptions >= caller.quota.subscriptions:
            raise self._refuse(caller, "subscriptions", caller.quota.subscriptions, SUBSCRIPTION_RETRY,
                               f"{caller.subject} has {caller.subscriptions} subscriptions open, its limit",
                               reason="SUBSCRIPTIONS_EXCEEDED")
        self._take_token(caller, 0.0)
        return _Subscribed(caller, self._metrics)

    def _take_token(self, caller: _Caller, patience: float) -> float:
        """The seconds the call waits for its token (0.0: none). Raises QuotaExceeded RATE_EXCEEDED
        when the token would come more than `patience` seconds from now."""
        granted, wait = caller.bucket.take(self._clock(), patience)
        if not granted:
            quota = caller.quota
            raise self._refuse(caller, "requests_per_second", quota.requests_per_second, wait,
                               f"{caller.subject} is over its rate of {quota.requests_per_second:g} requests per"
                               f" second (burst {quota.burst})", reason="RATE_EXCEEDED")
        return wait

    def _refuse(self, caller: _Caller, limit: str, allowed: float, retry_after: float, text: str, *,
                reason: str) -> QuotaExceeded:
        self._metrics.throttled.labels(caller.label, limit).inc()
        return QuotaExceeded(
            f"{text} ({limit} {allowed:g}); retry in {retry_after:.3g} s", reason=reason, subject=caller.subject,
            limit=limit, retry_after=retry_after, metadata={"limit": limit, "allowed": f"{allowed:g}"})


class _Admitted:
    """A unary call's place: counted in its caller's calls in flight from creation to the end of
    the `async with`, which it enters once it has a place and its turn; `first_step` runs the
    call, giving the turn back at its first wait."""

    __slots__ = ("_caller", "_paced", "_places", "_turn", "_turns")

    def __init__(self, places: FairGate, turns: FairGate, caller: _Caller, paced: float) -> None:
        self._places = places
        self._turns = turns
        self._caller = caller
        self._paced = paced  # seconds to wait for its rate token first
        self._turn = False
        caller.in_flight += 1

    async def __aenter__(self) -> _Admitted:
        subject = self._caller.subject
        try:
            if self._paced > 0:
                await asyncio.sleep(self._paced)
            await self._places.enter(subject)
        except BaseException:
            self._caller.in_flight -= 1
            raise
        try:
            await self._turns.enter(subject)
        except BaseException:
            self._places.leave()
            self._caller.in_flight -= 1
            raise
        self._turn = True
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._give_back()
        self._places.leave()
        self._caller.in_flight -= 1

    def first_step(self, call: Awaitable[T]) -> Awaitable[T]:
        """`call`, run with the turn held until it first waits (or ends)."""
        return _until_first_wait(call, self._give_back)

    def _give_back(self) -> None:
        if self._turn:
            self._turn = False
            self._turns.leave()


@types.coroutine
def _until_first_wait(call: Awaitable[T], first_wait: Callable[[], None]) -> Generator[Any, Any, T]:
    """Run `call` as `await call` would, calling `first_wait()` once, when it first suspends or
    ends: `yield from` with a hook after its first step. What the task throws in (a cancellation)
    goes to `call`; closing this closes `call`."""
    steps = call.__await__()
    try:
        pending = steps.send(None)
    except StopIteration as done:
        first_wait()
        return done.value  # type: ignore[no-any-return]
    except BaseException:
        first_wait()
        raise
    first_wait()
    while True:
        try:
            sent = yield pending
        except GeneratorExit:
            steps.close()
            raise
        except BaseException as thrown:
            try:
                pending = steps.throw(thrown)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
        else:
            try:
                pending = steps.send(sent)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]


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
