"""Errors of the protocol helpers: one base, a ValueError with a stable `reason` code.

The gateway turns them into its caller errors (`gateway.core.errors`) and the reference client
into `VerificationError` or `RegistryError` (`clients.errors`); nothing here knows either side.
Messages never repeat a person's data; they name the field or the key.
"""

from __future__ import annotations


class ProtocolError(ValueError):
    """Data that does not fit the protocol. `reason` is a stable UPPER_SNAKE code."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class UnknownKind(ProtocolError):
    """A message kind that is not in the table asked (reason UNKNOWN_KIND). `kind` is its number."""

    def __init__(self, kind: int, message: str) -> None:
        super().__init__(message, reason="UNKNOWN_KIND")
        self.kind = int(kind)


class UndecodablePayload(ProtocolError):
    """Payload bytes that do not parse as the kind's message (reason PAYLOAD_UNDECODABLE).

    `message_name` is the expected message's short name and `detail` the decoder's own words.
    """

    def __init__(self, message_name: str, detail: str) -> None:
        super().__init__(f"payload is not a {message_name}", reason="PAYLOAD_UNDECODABLE")
        self.message_name = message_name
        self.detail = detail


class UnusableKey(ProtocolError):
    """A key that cannot be used as declared.

    Reasons: UNKNOWN_ALGORITHM (no suite of that name), SUITE_UNAVAILABLE (a suite whose library
    is an optional extra not installed here; the message names the extra), KEY_UNREADABLE (not a
    PEM key the suite can read), KEY_ALGORITHM_MISMATCH (a key of another algorithm than
    declared, or one no suite holds).
    """


class RegistryFormatError(ProtocolError):
    """The registry document is malformed or inconsistent. `field` is where (`agencies[3].platform`).

    Reasons: REGISTRY_MALFORMED (not JSON, a field missing or of the wrong type or form),
    DUPLICATE_ID (a platform, agency, key id or certificate URI listed twice), UNKNOWN_PLATFORM,
    AGENCY_OUTSIDE_PROVINCES, KEY_UNUSABLE (a key that does not fit its algorithm).
    """

    def __init__(self, message: str, *, reason: str, field: str) -> None:
        super().__init__(message, reason=reason)
        self.field = field
