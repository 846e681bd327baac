"""How large and how fresh a submitted message may be, and the transport limits that follow.

The sizes are budgeted end to end, so that whatever the gateway accepts it can also deliver:

- a platform sets its gRPC receive limit (`grpc.max_receive_message_length`) to at least
  `PLATFORM_RECEIVE_BYTES`, gRPC's own default of 4 MiB (docs/integrating.md says so);
- the gateway sends nothing larger (`grpc.max_send_message_length`), so a response too large for
  a platform fails at the gateway, visibly, not at the platform;
- a delivery is a stored SignedMessage plus its receipt and attempt number, at most
  `DELIVERY_OVERHEAD_BYTES` more; so `max_message_bytes` may be at most the receive limit less
  that overhead, and the default is far below it: a table of 600 contribution periods (the most
  the rules allow) is about 20 KiB;
- gRPC itself reads requests up to twice `max_message_bytes` (`grpc_receive_bytes`), so a message
  a little too large is answered INVALID_ARGUMENT / MESSAGE_TOO_LARGE with the limit; anything
  larger is cut off by gRPC before it is buffered (RESOURCE_EXHAUSTED).

The freshness window bounds `header.created_at` both ways for a message submitted the first
time. A byte-identical retry of an accepted message is answered with its receipt whatever its
age (gateway.service.exchange looks the message up before it refuses a stale one).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Final

from gateway.core.settings import setting

PLATFORM_RECEIVE_BYTES: Final = 4 * 1024 * 1024  # gRPC's default receive limit: platforms keep at least this
DELIVERY_OVERHEAD_BYTES: Final = 4096  # a Delivery's bytes beyond its SignedMessage: receipt (~300 B), attempt
# The largest valid message of any kind is about 27 KiB (an outbound notice refused with all 13
# reason codes, each with 500 four-byte characters of text): a smaller limit would refuse valid
# messages.
MIN_MESSAGE_BYTES: Final = 32 * 1024
MAX_MESSAGE_BYTES: Final = PLATFORM_RECEIVE_BYTES - DELIVERY_OVERHEAD_BYTES


@dataclass(frozen=True)
class MessageLimits:
    """What Submit takes: the size of a SignedMessage and the age of its `header.created_at`."""

    max_message_bytes: int = setting(
        64 * 1024, "Largest SignedMessage Submit takes, in serialized bytes (a table of 600 contribution periods,"
        " the most the rules allow, is about 20 KiB); larger is INVALID_ARGUMENT, MESSAGE_TOO_LARGE.",
        unit="bytes", minimum=MIN_MESSAGE_BYTES, maximum=MAX_MESSAGE_BYTES)
    max_age: dt.timedelta = setting(
        dt.timedelta(days=7), "How old header.created_at may be when a message is first submitted (a"
        " byte-identical retry of an accepted message is answered with its receipt whatever its age).",
        key="max_age_days", unit="days", minimum=1, maximum=366)
    max_clock_skew: dt.timedelta = setting(
        dt.timedelta(minutes=5), "How far header.created_at may be ahead of the gateway's clock.",
        key="max_clock_skew_seconds", unit="seconds", minimum=0, maximum=3600)

    def __post_init__(self) -> None:
        if not MIN_MESSAGE_BYTES <= self.max_message_bytes <= MAX_MESSAGE_BYTES:
            raise ValueError(f"max_message_bytes must be {MIN_MESSAGE_BYTES} to {MAX_MESSAGE_BYTES}")
        if not dt.timedelta(days=1) <= self.max_age <= dt.timedelta(days=366):
            raise ValueError("max_age must be between 1 and 366 days")
        if not dt.timedelta(0) <= self.max_clock_skew <= dt.timedelta(hours=1):
            raise ValueError("max_clock_skew must be between 0 and 1 hour")

    @property
    def grpc_receive_bytes(self) -> int:
        """The largest request gRPC reads at all (`grpc.max_receive_message_length`)."""
        return 2 * self.max_message_bytes

    @property
    def grpc_send_bytes(self) -> int:
        """The largest response the gateway sends (`grpc.max_send_message_length`)."""
        return PLATFORM_RECEIVE_BYTES
