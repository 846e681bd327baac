"""The token bucket's arithmetic and a platform's own limits over the defaults."""

from __future__ import annotations

import copy
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.quota import Quota, TokenBucket
from mitransfer.protocol.registry import PlatformLimits


def test_a_full_bucket_gives_its_burst_then_one_token_per_interval() -> None:
    bucket = TokenBucket(rate=4.0, capacity=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == pytest.approx(0.25)  # the next token in 1/rate
    assert bucket.take(100.1) == pytest.approx(0.15)  # refused calls take nothing
    assert bucket.take(100.25) == 0.0
    assert not bucket.full(100.25)
    assert bucket.full(101.0)


@given(
    rate=st.floats(0.5, 1000.0),
    capacity=st.integers(1, 50),
    steps=st.lists(st.floats(0.0, 2.0), min_size=1, max_size=200),
)
def test_never_more_than_the_burst_plus_the_rate_over_any_run(rate: float, capacity: int, steps: list[float]) -> None:
    """Taken tokens never exceed capacity + rate × elapsed, and a refusal's wait is exact: after
    waiting it out (and nothing else taken) the next call is admitted."""
    now = 0.0
    bucket = TokenBucket(rate, capacity, now)
    taken = 0
    for step in steps:
        now += step
        wait = bucket.take(now)
        if wait == 0.0:
            taken += 1
        else:
            assert 0 < wait <= 1 / rate + 1e-9
            probe = copy.copy(bucket)  # the same state, to try the wait without using it
            assert probe.take(now + wait + 1e-9) == 0.0
        assert taken <= capacity + rate * now + 1e-6


def test_a_bucket_needs_a_rate_and_room_for_one() -> None:
    for rate, capacity in ((0.0, 1), (-1.0, 1), (math.inf, 1), (1.0, 0)):
        with pytest.raises(ValueError, match="TokenBucket"):
            TokenBucket(rate, capacity, 0.0)


def test_a_platforms_own_limits_replace_the_defaults_one_by_one() -> None:
    defaults = Quota(calls_in_flight=64, requests_per_second=200.0, burst=400, subscriptions=16, active_calls=8)
    own = defaults.for_platform(PlatformLimits(requests_per_second=5.0, subscriptions=2))
    assert own == Quota(calls_in_flight=64, requests_per_second=5.0, burst=400, subscriptions=2, active_calls=8)
    assert defaults.for_platform(PlatformLimits()) == defaults
