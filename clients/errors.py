"""The client's errors: one base, split by who is at fault.

`VerificationError`: the gateway or a peer sent data that does not verify (never act on it).
`GatewayRejected`: the gateway refused our request; resending the same bytes fails the same way.
`GatewayUnavailable`: the gateway could not be reached or could not commit before the deadline;
resending the same signed message later is safe.
`RegistryError`: our own configuration (the registry file) is unusable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # grpc only for the annotation: this module stays importable without it
    import grpc


class ClientError(Exception):
    """Base of every error raised by this library."""


class RegistryError(ClientError):
    """The registry file is missing, malformed or inconsistent; fix the configuration."""


class VerificationError(ClientError):
    """A signature, key or receipt does not check out. `reason` is a stable UPPER_SNAKE code."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class GatewayRejected(ClientError):
    """The gateway refused the call, with the google.rpc.Status details it sent.

    `reason` is ErrorInfo.reason (a stable code such as "FUND_AMOUNT_MISMATCH"; "" if absent),
    `metadata` ErrorInfo.metadata (the case's state, the field a rule is about, …) and
    `field_violations` the BadRequest (field path, description) pairs.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: str = "",
        field_violations: Sequence[tuple[str, str]] = (),
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})
        self.field_violations = tuple(field_violations)
        # With violations, they are the whole story (the gateway's message only summarizes them):
        # each is said once, in full.
        said = "; ".join(f"{path}: {text}" for path, text in self.field_violations) or message
        super().__init__(f"{code.name} {reason or '-'}: {said}")


class GatewayUnavailable(ClientError):
    """Retries ran out before the overall deadline; the last status is kept.

    Resending the very same SignedMessage later is safe (Submit is idempotent by message id).
    """

    def __init__(self, code: grpc.StatusCode, message: str, attempts: int) -> None:
        self.code = code
        self.message = message
        self.attempts = attempts
        super().__init__(f"{code.name} after {attempts} attempt(s): {message}")
