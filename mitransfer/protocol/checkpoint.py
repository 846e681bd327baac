"""Checkpoints (C2SP tlog-checkpoint): a log's tree head as the text of a signed note.

    <origin>\\n
    <tree size, decimal, no leading zero>\\n
    <root hash, base64>\\n
    \\n
    — <key name> <base64(key ID || signature)>\\n

The origin names the log (the registry's `gateway.log_origin`); the gateway signs with the key
name equal to the origin, as the spec recommends, so its key is found by (origin, key ID) among
the registry's gateway keys. Extension lines (after the root hash) are allowed by the spec and
ignored here; the gateway writes none.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from mitransfer.protocol import note
from mitransfer.protocol.note import KeyLookup, NoteError, NoteSigner
from mitransfer.protocol.tlog import HASH_SIZE

MAX_TREE_SIZE: Final = (1 << 63) - 1


@dataclass(frozen=True)
class Checkpoint:
    """A signed tree head: the log's name, how many leaves, and the root over them."""

    origin: str
    size: int
    root_hash: bytes

    def text(self) -> str:
        """The note text: origin, size and root, each on its line."""
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root_hash).decode('ascii')}\n"


def parse_text(text: str) -> Checkpoint:
    """Read a checkpoint's note text.

    Raises NoteError (CHECKPOINT_MALFORMED) for fewer than three lines, a size that is not a
    canonical decimal, or a root that is not the base64 of 32 bytes.
    """
    lines = text.split("\n")
    if len(lines) < 4 or lines[-1] != "" or any(not line for line in lines[:-1]):
        raise NoteError("a checkpoint is at least three non-empty lines", reason="CHECKPOINT_MALFORMED")
    origin, size_text, root_text = lines[0], lines[1], lines[2]
    if not size_text.isascii() or not size_text.isdigit() or str(int(size_text)) != size_text \
            or int(size_text) > MAX_TREE_SIZE:
        raise NoteError("a checkpoint's tree size must be a decimal number without leading zeros",
                        reason="CHECKPOINT_MALFORMED")
    try:
        root = base64.b64decode(root_text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise NoteError("a checkpoint's root hash is not base64", reason="CHECKPOINT_MALFORMED") from exc
    if len(root) != HASH_SIZE:
        raise NoteError("a checkpoint's root hash must be 32 bytes", reason="CHECKPOINT_MALFORMED")
    return Checkpoint(origin, int(size_text), root)


def sign(checkpoint: Checkpoint, signers: Sequence[NoteSigner]) -> bytes:
    """The checkpoint as a signed note. Raises NoteError if a signer's name is not a key name."""
    return note.sign(checkpoint.text(), signers)


def open_checkpoint(signed: bytes, origin: str, lookup: KeyLookup) -> Checkpoint:
    """Verify a signed checkpoint of the log named `origin` and read it.

    Only signatures whose key name is the origin count: a checkpoint of another log, or one
    signed only by keys `lookup` does not know under that name, is refused.

    Raises:
        NoteError: NOTE_MALFORMED, NOTE_UNVERIFIED, NOTE_SIGNATURE_INVALID (see `note.open_note`),
            CHECKPOINT_MALFORMED, or CHECKPOINT_ORIGIN (the text names another log).
    """
    opened = note.open_note(signed, lambda name, kid: lookup(name, kid) if name == origin else None)
    checkpoint = parse_text(opened.text)
    if checkpoint.origin != origin:
        raise NoteError(f"a checkpoint of log {checkpoint.origin[:80]!r}, not {origin[:80]!r}",
                        reason="CHECKPOINT_ORIGIN")
    return checkpoint
