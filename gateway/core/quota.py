"""What each platform may ask of the gateway at once and over time, and the arithmetic of it (pure).

Every caller (a platform, an operator) has its own share: calls in flight at once, a request
rate with a burst above it (a token bucket), and subscription streams open at once. The defaults
are the configuration's `[quota]`; a platform's entry in the registry may set its own
(`mitransfer.protocol.registry.PlatformLimits`). Going over any of them is refused at once with
`QuotaExceeded` (RESOURCE_EXHAUSTED, with when to try again), never queued without bound: what a
caller has in flight is what it holds of the gateway's memory.

Calls within their share still compete for the gateway's one event loop and its store; the order
they are served in is `gateway.service.admission`'s (fair, per caller), not first come first served.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gateway.core.settings import setting
from mitransfer.protocol.registry import PlatformLimits


@dataclass(frozen=True)
class Quota:
    """One caller's share. The `[quota]` table holds the defaults; see `for_platform`."""

    calls_in_flight: int = setting(
        64, "Calls one platform may have in flight at once, those waiting for their turn included; more are"
        " refused (RESOURCE_EXHAUSTED, CALLS_IN_FLIGHT_EXCEEDED). Subscriptions do not count.", minimum=1)
    requests_per_second: float = setting(
        200.0, "Calls (and subscriptions opened) one platform may make per second, sustained; a call over it"
        " waits for its turn if that comes within a second, and is refused (RESOURCE_EXHAUSTED, RATE_EXCEEDED)"
        " with the time until it comes otherwise.", key="requests_per_second", minimum=0.001)
    burst: int = setting(
        400, "Calls one platform may make at once above that rate after a quiet spell (the token bucket's"
        " size).", minimum=1)
    subscriptions: int = setting(
        16, "Subscribe streams one platform may have open at once; more are refused (RESOURCE_EXHAUSTED,"
        " SUBSCRIPTIONS_EXCEEDED).", minimum=1)
    # Enough places for the store's group commit to group: the calls waiting for one commit are the
    # next batch, so 8 held each fsync'd commit to at most 8 accepts and left the event loop idle
    # while it ran (~20 % more CPU per message than 32 under the benchmark's load); beyond 32 the
    # gain is within noise while another platform's call may queue behind more at the writer.
    active_calls: int = setting(
        32, "Calls in progress at once (from their start to their answer), all platforms together; more wait,"
        " each platform's in a queue of its own, and the queues take turns (round-robin), so one platform's"
        " load does not queue another's calls behind it. Within them, one call's own work runs at a time,"
        " in the same turns.", minimum=1)

    def for_platform(self, limits: PlatformLimits) -> Quota:
        """This quota with a platform's own limits from the registry in place of the defaults."""
        return Quota(
            calls_in_flight=limits.calls_in_flight or self.calls_in_flight,
            requests_per_second=limits.requests_per_second or self.requests_per_second,
            burst=limits.burst or self.burst,
            subscriptions=limits.subscriptions or self.subscriptions,
            active_calls=self.active_calls,
        )


class TokenBucket:
    """`rate` tokens a second, at most `capacity` kept; a call takes one.

    A call may also take a token not yet there, if it comes within `patience` seconds: it is
    reserved (the bucket goes into debt) and the call waits for it, so that a caller sending faster
    than its rate is paced rather than refused, as long as its backlog stays short. Times are
    seconds on any monotonic clock, given by the caller, so the arithmetic is exact in tests. Not
    thread-safe: one event loop owns it.
    """

    __slots__ = ("_at", "_capacity", "_rate", "_tokens")

    def __init__(self, rate: float, capacity: int, now: float) -> None:
        if not (rate > 0 and math.isfinite(rate) and capacity >= 1):
            raise ValueError("TokenBucket needs a positive finite rate and a capacity of at least 1")
        self._rate = rate
        self._capacity = float(capacity)
        self._tokens = float(capacity)  # a caller starts with a full burst
        self._at = now

    def take(self, now: float, patience: float = 0.0) -> tuple[bool, float]:
        """Take a token: (True, seconds to wait before using it: 0.0 when one was there), the token
        reserved; or, when the next would come more than `patience` seconds from now, (False,
        seconds until it comes), nothing taken."""
        if now > self._at:
            self._tokens = min(self._capacity, self._tokens + (now - self._at) * self._rate)
            self._at = now
        wait = max(0.0, (1.0 - self._tokens) / self._rate)
        if wait > patience:
            return False, wait
        self._tokens -= 1.0
        return True, wait

    def full(self, now: float) -> bool:
        """Whether the bucket has refilled completely (then it may be forgotten and made anew)."""
        return self._tokens + max(0.0, now - self._at) * self._rate >= self._capacity
