"""The one place where gateway errors become gRPC statuses with google.rpc details."""

from __future__ import annotations

from typing import Final

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway.core.errors import (
    GatewayError,
    IdempotencyConflict,
    InvalidMessage,
    NotFound,
    NotPermitted,
    QuotaExceeded,
    RegistryRefused,
    RuleViolation,
    SignatureRejected,
    SigningUnavailable,
    StoreUnavailable,
    SubscriptionStalled,
    Unauthenticated,
)

ERROR_DOMAIN: Final = "transfer-gateway.mitransfer.v1"

_CODES: Final[tuple[tuple[type[GatewayError], grpc.StatusCode], ...]] = (
    (InvalidMessage, grpc.StatusCode.INVALID_ARGUMENT),
    (SignatureRejected, grpc.StatusCode.UNAUTHENTICATED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (NotPermitted, grpc.StatusCode.PERMISSION_DENIED),
    (RuleViolation, grpc.StatusCode.FAILED_PRECONDITION),
    (RegistryRefused, grpc.StatusCode.FAILED_PRECONDITION),
    (IdempotencyConflict, grpc.StatusCode.ALREADY_EXISTS),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (QuotaExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (SubscriptionStalled, grpc.StatusCode.ABORTED),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
    (SigningUnavailable, grpc.StatusCode.UNAVAILABLE),
)


def grpc_code(error: GatewayError) -> grpc.StatusCode:
    for cls, code in _CODES:
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.INTERNAL


def to_status(error: GatewayError) -> grpc.Status:
    """A grpc.Status carrying ErrorInfo (reason, domain, metadata); for bad fields, BadRequest with
    the first violations (ErrorInfo's `violations` then counts them all); over a quota, RetryInfo
    (when to try again) and QuotaFailure (who, which limit)."""
    code = grpc_code(error)
    details = []
    metadata = dict(error.metadata)
    if isinstance(error, InvalidMessage) and error.total > len(error.violations):
        metadata["violations"] = str(error.total)
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=metadata)
    details.append(_pack(info))
    if isinstance(error, InvalidMessage):
        bad = error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in error.violations
        ])
        details.append(_pack(bad))
    if isinstance(error, QuotaExceeded):
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(max(1_000_000, round(error.retry_after * 1e9)))  # never "now": at least 1 ms
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
        details.append(_pack(error_details_pb2.QuotaFailure(violations=[
            error_details_pb2.QuotaFailure.Violation(subject=error.subject, description=error.limit)])))
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=error.message, details=details)
    return rpc_status.to_status(status)


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed
