"""A platform as a witness of the gateway's transparency log.

The gateway logs every message it accepts in an append-only Merkle tree and signs its head as a
checkpoint (C2SP tlog-checkpoint; `mitransfer.protocol.checkpoint`). A platform that keeps the
last checkpoint it verified, and checks that each new one extends it (a consistency proof), and
that its own receipts are in the tree (inclusion proofs), catches a gateway, or anyone with its
database, that rewrites, reorders or cuts history: the rewritten log cannot extend what it kept.

`CheckpointStore` keeps one checkpoint per log origin in a folder (a small file each, 0600,
replaced atomically); `Witness` holds the checks, pure apart from that store. `PlatformClient`'s
`witness_receipt` runs them against a live gateway.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clients.errors import VerificationError
from clients.signing import KeyRing
from mitransfer.protocol import checkpoint as checkpoints
from mitransfer.protocol import entries, note, suites, tlog
from mitransfer.protocol.checkpoint import Checkpoint
from mitransfer.protocol.errors import ProtocolError
from mitransfer.v1 import envelope_pb2

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class CheckpointStore:
    """The last verified checkpoint of each log, one file per origin under `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, origin: str) -> Path:
        return self.folder / (_UNSAFE.sub("_", origin) + ".checkpoint")

    def latest(self, origin: str) -> bytes | None:
        """The signed note kept for `origin`, or None. Raises OSError if it cannot be read."""
        try:
            return self._path(origin).read_bytes()
        except FileNotFoundError:
            return None

    def keep(self, origin: str, signed: bytes) -> None:
        """Replace the kept note of `origin` atomically (written 0600, then renamed)."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        final = self._path(origin)
        temporary = final.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(signed)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)


@dataclass
class Witness:
    """Checks checkpoints and proofs against the registry's gateway keys and the kept checkpoint."""

    keyring: KeyRing
    store: CheckpointStore

    @property
    def origin(self) -> str:
        return self.keyring.log_origin

    def open(self, signed: bytes, when: dt.datetime | None = None) -> Checkpoint:
        """Verify a checkpoint's signature with the registry's gateway keys and read it.

        `when` is a time the checkpoint was signed at or after (the acceptance time of a receipt
        it includes): a key whose window (not_after, revoked_at) ended by then cannot have signed
        it and does not count, as the gateway's own `log verify` judges. None: every gateway key
        of the registry counts (a checkpoint this witness verified when it kept it).

        Raises VerificationError (CHECKPOINT_INVALID) naming what is wrong.
        """
        def usable(key: suites.VerifyingKey) -> bool:
            ends = key.window.ends()
            return when is None or ends is None or when < ends

        lookup = note.known_keys((self.origin, key.key) for key in self.keyring.gateway_keys.values()
                                 if usable(key.key))
        try:
            return checkpoints.open_checkpoint(signed, self.origin, lookup)
        except ProtocolError as exc:
            raise VerificationError(f"checkpoint of {self.origin}: {exc}", reason="CHECKPOINT_INVALID") from exc

    def kept(self) -> Checkpoint | None:
        """The last checkpoint this platform verified and kept, verified again."""
        signed = self.store.latest(self.origin)
        return None if signed is None else self.open(signed)

    def advance(self, signed: bytes, proof: Sequence[bytes], when: dt.datetime | None = None) -> Checkpoint:
        """Accept a new checkpoint if it extends the kept one (`proof`: the consistency proof from
        the kept tree size to the new one), and keep it.

        Raises:
            VerificationError: CHECKPOINT_INVALID (bad signature or format), LOG_ROLLED_BACK (a
                smaller tree than one already seen), LOG_FORKED (the new tree does not extend the
                kept one: history was rewritten). The kept checkpoint is left as it was.
        """
        new = self.open(signed, when)
        old = self.kept()
        if old is not None:
            if new.size < old.size:
                raise VerificationError(f"the gateway shows tree size {new.size}, after {old.size} was seen",
                                        reason="LOG_ROLLED_BACK")
            try:
                tlog.check_consistency(proof, new.size, new.root_hash, old.size, old.root_hash)
            except ProtocolError as exc:
                raise VerificationError(f"the checkpoint of tree size {new.size} does not extend the kept one of"
                                        f" size {old.size}: {exc}", reason="LOG_FORKED") from exc
            if new.size == old.size:
                return old
        self.store.keep(self.origin, signed)
        return new

    def check_receipt(self, receipt: envelope_pb2.Receipt, *, leaf_index: int, entry: bytes,
                      proof: Sequence[bytes], head: Checkpoint) -> None:
        """Check that a receipt's message is at its leaf in the tree of `head` (a checkpoint this
        witness verified). The receipt's own signature is `KeyRing.verify_receipt`'s to check.

        Raises VerificationError (RECEIPT_NOT_LOGGED).
        """
        try:
            entries.check_receipt_included(receipt.body, leaf_index=leaf_index, entry=entry, proof=proof,
                                           checkpoint=head)
        except ProtocolError as exc:
            raise VerificationError(f"receipt not in the log's tree of size {head.size}: {exc}",
                                    reason="RECEIPT_NOT_LOGGED") from exc
