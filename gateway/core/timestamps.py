"""Exact conversions between aware UTC datetimes, integer microseconds since the epoch and
protobuf Timestamps.

The store keeps times as integer microseconds; messages carry Timestamps. protobuf's
`ToDatetime`/`FromDatetime` do the same conversions at several times the cost, which matters on
the per-message path; elsewhere either way is fine.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from google.protobuf import timestamp_pb2

EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND: Final = dt.timedelta(microseconds=1)


def micros(t: dt.datetime) -> int:
    """Microseconds since the epoch, exactly (no float rounding)."""
    return (t - EPOCH) // _MICROSECOND


def from_micros(value: int) -> dt.datetime:
    return EPOCH + value * _MICROSECOND


def timestamp_micros(ts: timestamp_pb2.Timestamp) -> int:
    """A Timestamp in microseconds since the epoch, truncated as `ToDatetime` truncates (a valid
    Timestamp's nanos are 0 to 999,999,999)."""
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def datetime_of(ts: timestamp_pb2.Timestamp) -> dt.datetime:
    """`ts.ToDatetime(dt.UTC)` for a valid Timestamp."""
    return from_micros(timestamp_micros(ts))


def timestamp_of(t: dt.datetime) -> timestamp_pb2.Timestamp:
    """`Timestamp().FromDatetime(t)` for an aware datetime."""
    since = t - EPOCH
    return timestamp_pb2.Timestamp(seconds=since.days * 86_400 + since.seconds, nanos=since.microseconds * 1000)
