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
    assert [bucket.take(100.0) for _ in range(3)] == [(True, 0.0)] * 3
    granted, wait = bucket.take(100.0)
    assert not granted and wait == pytest.approx(0.25)  # the next token in 1/rate
    granted, wait = bucket.take(100.1)
    assert not granted and wait == pytest.approx(0.15)  # refused calls take nothing
    assert bucket.take(100.25) == (True, 0.0)
    assert not bucket.full(100.25)
    assert bucket.full(101.0)


def test_a_call_within_its_patience_reserves_the_next_token_and_waits_for_it() -> None:
    bucket = TokenBucket(rate=10.0, capacity=1, now=0.0)
    assert bucket.take(0.0, patience=0.5) == (True, 0.0)
    waits = [bucket.take(0.0, patience=0.5) for _ in range(6)]
    assert [granted for granted, _ in waits] == [True] * 5 + [False]  # 0.1 … 0.5 s ahead, then too far
    assert [w for _, w in waits[:5]] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert waits[5][1] == pytest.approx(0.6)
    assert bucket.take(0.6, patience=0.0) == (True, 0.0)  # the debt is paid by then


@given(
    rate=st.floats(0.5, 1000.0),
    capacity=st.integers(1, 50),
    patience=st.sampled_from([0.0, 0.5, 2.0]),
    steps=st.lists(st.floats(0.0, 2.0), min_size=1, max_size=200),
)
def test_never_more_than_the_burst_plus_the_rate_over_any_run(
        rate: float, capacity: int, patience: float, steps: list[float]) -> None:
    """Tokens used by any moment never exceed capacity + rate × that moment (a paced call uses its
    token when its wait ends), and a refusal's wait is exact: after waiting it out (nothing else
    taken) the call gets its token at once."""
    now = 0.0
    bucket = TokenBucket(rate, capacity, now)
    used: list[float] = []
    for step in steps:
        now += step
        probe = copy.copy(bucket)  # the same state, to try a refusal's wait without using it
        granted, wait = bucket.take(now, patience)
        if granted:
            assert 0 <= wait <= patience
            used.append(now + wait)
        else:
            assert patience < wait <= patience + 1 / rate + 1e-9
            assert probe.take(now + wait + 1e-9) == (True, 0.0)
    for moment in sorted(used):
        assert sum(1 for u in used if u <= moment) <= capacity + rate * moment + 1e-6


def test_a_bucket_needs_a_rate_and_room_for_one() -> None:
    for rate, capacity in ((0.0, 1), (-1.0, 1), (math.inf, 1), (1.0, 0)):
        with pytest.raises(ValueError, match="TokenBucket"):
            TokenBucket(rate, capacity, 0.0)


def test_a_platforms_own_limits_replace_the_defaults_one_by_one() -> None:
    defaults = Quota(calls_in_flight=64, requests_per_second=200.0, burst=400, subscriptions=16, active_calls=8)
    own = defaults.for_platform(PlatformLimits(requests_per_second=5.0, subscriptions=2))
    assert own == Quota(calls_in_flight=64, requests_per_second=5.0, burst=400, subscriptions=2, active_calls=8)
    assert defaults.for_platform(PlatformLimits()) == defaults
