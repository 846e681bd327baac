"""The one place where gateway errors become gRPC statuses with google.rpc details."""

from __future__ import annotations

from typing import Final

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway.core.errors import (
    GatewayError,
    IdempotencyConflict,
    InvalidMessage,
    NotFound,
    NotPermitted,
    RuleViolation,
    SignatureRejected,
    StoreUnavailable,
)

ERROR_DOMAIN: Final = "transfer-gateway.mitransfer.v1"

_CODES: Final[tuple[tuple[type[GatewayError], grpc.StatusCode], ...]] = (
    (InvalidMessage, grpc.StatusCode.INVALID_ARGUMENT),
    (SignatureRejected, grpc.StatusCode.UNAUTHENTICATED),
    (NotPermitted, grpc.StatusCode.PERMISSION_DENIED),
    (RuleViolation, grpc.StatusCode.FAILED_PRECONDITION),
    (IdempotencyConflict, grpc.StatusCode.ALREADY_EXISTS),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
)


def grpc_code(error: GatewayError) -> grpc.StatusCode:
    for cls, code in _CODES:
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.INTERNAL


def to_status(error: GatewayError) -> grpc.Status:
    """A grpc.Status carrying ErrorInfo (reason, domain, metadata) and, for bad fields, BadRequest
    with the first violations; ErrorInfo's `violations` then counts them all."""
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
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=error.message, details=details)
    return rpc_status.to_status(status)


def _pack(message: error_details_pb2.ErrorInfo | error_details_pb2.BadRequest) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed
