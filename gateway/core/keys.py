"""The gateway's own signing keys in rotation, and judging a signer's key by the time of acceptance.

The gateway may hold several signing keys at once (`[signing] keys` in the configuration); the
registry's `gateway.keys` give each its window. `GatewaySigner.at(when)` is the key that signs at
`when`: among the configured keys valid then, the one whose window began last. So a rotation is
configuration and registry only: publish the new key with a `not_before`, give the old one a
`not_after` at the same moment, configure both, and at that moment receipts, notices and
checkpoints switch from one to the other, on every replica, with no restart; whatever the old key
signed before its end still verifies against the registry. Receipts are signed at their
`accepted_at`, inside the store's transaction, so a receipt's key is always valid at its time.

`platform_key_at` is the other side: the key a platform signed with must be its own, and valid
when the gateway accepts the message.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from gateway.core.errors import SignatureRejected, SigningUnavailable
from gateway.core.registry import LiveRegistry, Platform
from gateway.core.signing import LocalSigner, VerifyingKey
from gateway.core.text import shown
from mitransfer.protocol.validity import KeyNotValid

_EARLIEST = dt.datetime.min.replace(tzinfo=dt.UTC)


class GatewaySigner:
    """The gateway's signing keys; `at(when)` picks the one that signs at a time.

    Satisfies the tlog's and receipts' need for "the current key" without knowing how many
    there are: callers sign with `signer.at(when)` and never name a key.
    """

    def __init__(self, signers: Sequence[LocalSigner], registry: LiveRegistry) -> None:
        if not signers:
            raise ValueError("the gateway needs at least one signing key")
        self._signers = tuple(signers)
        self._registry = registry

    @property
    def signers(self) -> tuple[LocalSigner, ...]:
        """Every configured key, in configuration order."""
        return self._signers

    def at(self, when: dt.datetime) -> LocalSigner:
        """The key that signs at `when`.

        Raises:
            SigningUnavailable: no configured key is a registry gateway key valid at `when` (all
                expired or revoked, or the next not yet begun): nothing can be receipted.
        """
        keys = self._registry.current.gateway_keys
        chosen: LocalSigner | None = None
        chosen_start = _EARLIEST
        for signer in self._signers:
            key = keys.get(signer.key_id)
            if key is None or not key.window.contains(when):
                continue
            start = key.window.not_before or _EARLIEST
            if chosen is None or start > chosen_start:
                chosen, chosen_start = signer, start
        if chosen is None:
            raise SigningUnavailable(
                f"no configured signing key ({', '.join(s.key_id for s in self._signers)}) is a registry gateway key "
                f"valid at {when.isoformat()}", reason="SIGNING_KEY_UNAVAILABLE")
        return chosen


def platform_key_at(platform: Platform, key_id: str, when: dt.datetime) -> VerifyingKey:
    """The calling platform's own key `key_id`, valid at `when`.

    Raises:
        SignatureRejected: UNKNOWN_SIGNING_KEY (not a key of this platform: another platform's
            valid key does not count either), or KEY_EXPIRED / KEY_REVOKED / KEY_NOT_YET_VALID
            naming the key and the bound it crossed.
    """
    key = platform.keys.get(key_id)
    if key is None:
        raise SignatureRejected(f"key_id {shown(key_id)} is not a signing key of platform {platform.id}",
                                reason="UNKNOWN_SIGNING_KEY", metadata={"key_id": shown(key_id)})
    try:
        key.window.check(key_id, when)
    except KeyNotValid as exc:
        raise SignatureRejected(f"{exc}: sign with a key of platform {platform.id} valid now", reason=exc.reason,
                                metadata={"key_id": key_id, "bound": exc.bound.isoformat()}) from exc
    return key
