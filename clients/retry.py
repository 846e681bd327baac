"""When and how long to wait before calling the gateway again.

Retrying Submit is safe only because the gateway is idempotent by message id AND the retry
resends the identical SignedMessage; `PlatformClient` guarantees the second part.

A refusal that says when to come back (RESOURCE_EXHAUSTED over a quota carries a
google.rpc.RetryInfo) is waited out at least that long: `next_wait` takes the longer of it and
the policy's own backoff, so a throttled client neither hammers the gateway nor falls in step
with the others it throttled.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

# The gateway could not answer or commit now: the same request may succeed later.
RETRYABLE: Final = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
})

# The request itself is wrong (or not allowed): resending it fails the same way. A subscription
# stops on these; on any other error it reopens.
PERMANENT: Final = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNIMPLEMENTED,
})


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, bounded by an overall deadline per call."""

    initial_backoff: float = 0.05  # seconds; the first wait is uniform in [0, initial_backoff]
    max_backoff: float = 2.0       # cap on the wait before any one attempt
    multiplier: float = 2.0        # growth of the cap per attempt
    deadline: float = 30.0         # seconds for one call, all attempts and waits included
    attempt_timeout: float = 10.0  # gRPC deadline of a single attempt

    def __post_init__(self) -> None:
        if not (0 < self.initial_backoff <= self.max_backoff and self.multiplier >= 1
                and self.deadline > 0 and self.attempt_timeout > 0):
            raise ValueError("RetryPolicy: need 0 < initial <= max backoff, multiplier >= 1, positive times")

    def backoffs(self, rng: random.Random | None = None) -> Iterator[float]:
        """The waits before the 2nd, 3rd, ... attempt. Full jitter spreads the retries of many
        clients after one outage, instead of having them all return at the same instant."""
        rng = rng or random.Random()
        cap = self.initial_backoff
        while True:
            yield rng.uniform(0, cap)
            cap = min(cap * self.multiplier, self.max_backoff)


def retry_delay(err: grpc.aio.AioRpcError) -> float | None:
    """The seconds a refusal's google.rpc.RetryInfo asks to wait, or None if it names none."""
    try:
        status = rpc_status.from_call(err)
    except ValueError:  # details inconsistent with the status line: none to trust
        return None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            seconds: float = info.retry_delay.ToNanoseconds() / 1e9
            return max(0.0, seconds)
    return None


def next_wait(err: grpc.aio.AioRpcError, backoffs: Iterator[float]) -> float:
    """How long to wait before the next attempt after `err`: the policy's next backoff, or what
    the gateway's RetryInfo asks if that is longer."""
    backoff = next(backoffs)
    asked = retry_delay(err)
    return backoff if asked is None else max(asked, backoff)
