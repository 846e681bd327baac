"""Keys' validity windows: when a registered key may sign, judged at the time a message was accepted.

A key of the registry may carry `not_before`, `not_after` and `revoked_at` (RFC 3339 times). A
signature counts only if its key was valid at the moment the gateway accepted the message (the
receipt's `accepted_at`), never at the moment someone checks it: so a message accepted before a
key was retired or revoked still verifies years later, and a message accepted after a key's end
does not, whoever checks it. Retiring a key is setting its `not_after`, never deleting it (a
deleted key makes every message it signed unverifiable); revoking a compromised key is setting
`revoked_at` to the time from which nothing it signs is to be believed.

The window is half-open: valid from `not_before` (included) until `not_after` or `revoked_at`
(excluded); a missing bound does not bound.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Final

from mitransfer.protocol.errors import ProtocolError

NOT_YET_VALID: Final = "KEY_NOT_YET_VALID"
EXPIRED: Final = "KEY_EXPIRED"
REVOKED: Final = "KEY_REVOKED"


class KeyNotValid(ProtocolError):
    """A known key used outside its window. `reason` is KEY_NOT_YET_VALID, KEY_EXPIRED or
    KEY_REVOKED; `key_id` the key; `bound` the window's bound that was crossed."""

    def __init__(self, message: str, *, reason: str, key_id: str, bound: dt.datetime) -> None:
        super().__init__(message, reason=reason)
        self.key_id = key_id
        self.bound = bound


@dataclass(frozen=True)
class KeyWindow:
    """When a key may sign. Times are timezone-aware; None leaves that side open."""

    not_before: dt.datetime | None = None
    not_after: dt.datetime | None = None
    revoked_at: dt.datetime | None = None

    def problem_at(self, when: dt.datetime) -> tuple[str, dt.datetime] | None:
        """None if the key may sign at `when`; else (reason, the bound crossed). Revocation first:
        it is the reason a verifier most needs to hear."""
        if self.revoked_at is not None and when >= self.revoked_at:
            return REVOKED, self.revoked_at
        if self.not_before is not None and when < self.not_before:
            return NOT_YET_VALID, self.not_before
        if self.not_after is not None and when >= self.not_after:
            return EXPIRED, self.not_after
        return None

    def contains(self, when: dt.datetime) -> bool:
        return self.problem_at(when) is None

    def ends(self) -> dt.datetime | None:
        """The first moment the key is no longer valid (the earlier of not_after and revoked_at)."""
        ends = [t for t in (self.not_after, self.revoked_at) if t is not None]
        return min(ends) if ends else None

    def check(self, key_id: str, when: dt.datetime) -> None:
        """Raise KeyNotValid naming `key_id` unless it may sign at `when`."""
        problem = self.problem_at(when)
        if problem is None:
            return
        reason, bound = problem
        what = {REVOKED: "was revoked at", NOT_YET_VALID: "is not valid before", EXPIRED: "expired at"}[reason]
        raise KeyNotValid(f"key {key_id} {what} {_rfc3339(bound)}; the message was accepted at {_rfc3339(when)}",
                          reason=reason, key_id=key_id, bound=bound)


ALWAYS: Final = KeyWindow()
"""A key without bounds (what a registry entry without any of the three fields means)."""


def _rfc3339(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def parse_time(text: str) -> dt.datetime:
    """An RFC 3339 date-time with its offset ("2026-12-01T00:00:00Z", "…+08:00").

    Raises:
        ValueError: not a date-time, or one without an offset (a local time means nothing here).
    """
    parsed = dt.datetime.fromisoformat(text)
    if parsed.tzinfo is None or parsed.utcoffset() is None or "T" not in text.upper():
        raise ValueError("must be an RFC 3339 date-time with an offset, e.g. 2026-12-01T00:00:00+08:00")
    return parsed.astimezone(dt.UTC)
