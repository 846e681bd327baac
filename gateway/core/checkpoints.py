"""The gateway's checkpoints: signed with its signer like its receipts, checked with the
registry's gateway keys.

A checkpoint is a C2SP signed note (`mitransfer.protocol.checkpoint`) whose key name is the log's
origin (the registry's `gateway.log_origin`) and whose key ID is computed from the registry's
public key of the signing key id (`mitransfer.protocol.note.key_id`): whatever key and suite sign
receipts sign checkpoints, and a verifier finds the key by (origin, key ID) among the registry's
gateway keys.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping

from gateway.core.keys import GatewaySigner
from gateway.core.registry import LiveRegistry
from gateway.core.signing import Signer, VerifyingKey
from mitransfer.protocol import checkpoint, note
from mitransfer.protocol.checkpoint import Checkpoint
from mitransfer.protocol.note import KeyLookup, NoteSigner


def checkpoint_signer(origin: str, current: Callable[[], Signer],
                      gateway_keys: Mapping[str, VerifyingKey]) -> Callable[[int, bytes], bytes]:
    """(tree size, root hash) → the signed checkpoint note, signed by `current()`: the gateway's
    signer at the moment of signing (so a rotation of the receipt-signing key moves checkpoints
    with it), its key ID computed from the registry's public key of the same key id.

    The returned function raises KeyError if the signer's key id is not a registry gateway key
    (start-up checks that it is).
    """
    def sign(size: int, root: bytes) -> bytes:
        signer = current()
        named = NoteSigner(origin, gateway_keys[signer.key_id], signer.sign)
        return checkpoint.sign(Checkpoint(origin, size, root), [named])

    return sign


def rotating_checkpoint_signer(signer: GatewaySigner, registry: LiveRegistry,
                               clock: Callable[[], dt.datetime]) -> Callable[[int, bytes], bytes]:
    """(tree size, root hash) → the checkpoint note signed, under the registry's log origin, by the
    gateway key that signs at that moment (`GatewaySigner.at`): a rotation changes checkpoints' key
    when it changes receipts'.

    Raises SigningUnavailable (from `at`) when no configured key is valid now.
    """

    def sign(size: int, root: bytes) -> bytes:
        key = signer.at(clock())
        current = registry.current
        return checkpoint_signer(current.log_origin, lambda: key, current.gateway_keys)(size, root)

    return sign


def checkpoint_keys(origin: str, gateway_keys: Mapping[str, VerifyingKey], when: dt.datetime | None) -> KeyLookup:
    """The registry's gateway keys as a note verifier knows them, under the log's origin.

    `when` is the time the checkpoint is judged at (the newest acceptance time in its tree): it
    was signed then or later, so a key whose window ended (not_after, revoked_at) at or before
    `when` cannot have signed it and does not count. None: every gateway key counts.
    """
    def usable(key: VerifyingKey) -> bool:
        ends = key.window.ends()
        return when is None or ends is None or when < ends

    return note.known_keys((origin, key) for key in gateway_keys.values() if usable(key))
