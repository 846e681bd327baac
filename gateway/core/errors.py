"""The gateway's errors: one base, split by who is at fault.

`CallerError`s are the sending platform's to fix (bad field, bad signature, wrong state,
conflicting replay); `ServiceError`s are ours (storage unavailable). Each carries a stable
`reason` code (UPPER_SNAKE, for google.rpc.ErrorInfo) and, for bad fields, the field paths.
They are mapped to gRPC status codes in one place: `gateway.service.status`.
Texts never contain personal data beyond what the caller itself sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

# Violations an InvalidMessage reports (in its BadRequest and, the first five, in its text); the
# rest are counted. A caller fixing a message needs the first few; a hostile one gets no more.
REPORTED_VIOLATIONS: Final = 10
_SUMMARIZED: Final = 5


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: its path in the message (`periods[1].last_month`) and what is wrong."""

    field: str
    description: str


class GatewayError(Exception):
    """Base of every error the gateway reports to a caller."""

    def __init__(self, message: str, *, reason: str, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})


class CallerError(GatewayError):
    """The caller's fault: resending the same request will fail the same way (over a quota: until
    the time it names has passed)."""


class InvalidMessage(CallerError):
    """A field is missing or malformed (INVALID_ARGUMENT).

    `violations` keeps the first REPORTED_VIOLATIONS found, `total` counts them all: the answer
    stays small however many a message has (validation checks counts before items, so the list
    it builds is bounded too).
    """

    def __init__(
        self,
        violations: Iterable[FieldViolation],
        *,
        reason: str = "FIELD_INVALID",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        found = tuple(violations)
        if not found:
            raise ValueError("InvalidMessage needs at least one violation")
        self.total = len(found)
        self.violations = found[:REPORTED_VIOLATIONS]
        summary = "; ".join(f"{v.field}: {v.description}" for v in found[:_SUMMARIZED])
        more = self.total - _SUMMARIZED
        if more > 0:
            summary += f"; and {more} more"
        super().__init__(f"invalid message: {summary}", reason=reason, metadata=metadata)


class SignatureRejected(CallerError):
    """Unknown signing key or a signature that does not verify (UNAUTHENTICATED)."""


class Unauthenticated(CallerError):
    """The caller's certificate does not prove who it is: its chain does not verify, it is outside
    its validity, or it is revoked (UNAUTHENTICATED)."""


class NotPermitted(CallerError):
    """The authenticated platform may not do this (PERMISSION_DENIED)."""


class RuleViolation(CallerError):
    """The message is well formed but the case or a business rule forbids it (FAILED_PRECONDITION)."""


class RegistryRefused(CallerError):
    """A registry version that may not replace the one in force (FAILED_PRECONDITION): older,
    or the same version with other contents."""


class IdempotencyConflict(CallerError):
    """A message id already used for different bytes (ALREADY_EXISTS)."""


class NotFound(CallerError):
    """No such case or delivery (NOT_FOUND)."""


class QuotaExceeded(CallerError):
    """The caller is over one of its limits (RESOURCE_EXHAUSTED): too many calls in flight, too
    many per second, or too many subscriptions open. The same request succeeds once the caller is
    back within its share: `retry_after` is the seconds to wait first (google.rpc.RetryInfo),
    `subject` who is limited (`platform:jiangsu`) and `limit` the limit's name as the configuration
    and the registry call it (google.rpc.QuotaFailure)."""

    def __init__(self, message: str, *, reason: str, subject: str, limit: str, retry_after: float,
                 metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.subject = subject
        self.limit = limit
        self.retry_after = retry_after


class SubscriptionStalled(CallerError):
    """A subscription stream that acknowledged nothing of what it held for the visibility timeout
    (ABORTED): the gateway ends it, so that what it held goes to the platform's other streams.
    The same subscription opened again works, once its receiver reads and acknowledges."""


class ServiceError(GatewayError):
    """Our fault: the same request may succeed later."""


class StoreUnavailable(ServiceError):
    """The store cannot commit now (UNAVAILABLE); nothing was receipted."""


class SigningUnavailable(ServiceError):
    """No signing key of the gateway is valid now (UNAVAILABLE); nothing was receipted."""
