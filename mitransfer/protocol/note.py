"""Signed notes (C2SP signed-note, the format of Go's golang.org/x/mod/sumdb/note).

A note is UTF-8 text ending in a newline, a blank line, then one or more signature lines:

    <text, each line ending in \\n>
    \\n
    — <key name> <base64(key ID (4 bytes, big-endian) || signature)>\\n

The signature covers the text, final newline included. A verifier knows keys by (name, key ID);
it ignores signatures by keys it does not know, fails the note if a known key's signature does
not verify, and fails it if no known key signed it.

Key IDs. The spec assigns a signature type byte per algorithm and recommends
key ID = SHA-256(name || 0x0A || type || public key)[:4]. For this protocol's suites
(`mitransfer.protocol.suites`):

- ed25519: type 0x01, the 32-byte public key, exactly as the spec and Go's note package;
- ecdsa-p256-sha256: type 0x02 as github.com/transparency-dev/formats (and Sigstore's Rekor)
  define it: key ID = SHA-256(DER SubjectPublicKeyInfo)[:4], the name not hashed; signatures are
  ASN.1 DER ECDSA over SHA-256(text);
- any other suite (SM2 with SM3, say): type 0xff, which the spec reserves for types without an
  assigned byte and asks to be followed by a longer identifier. Here:
  key ID = SHA-256(name || 0x0A || 0xff || "mitransfer.v1/" || suite name || 0x0A || DER SPKI)[:4],
  and the signature is the suite's own over the text.

Pure: parsing and formatting raise `NoteError` (reasons NOTE_MALFORMED, NOTE_UNVERIFIED,
NOTE_SIGNATURE_INVALID); keys are `suites.VerifyingKey`, signing is any callable.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from mitransfer.protocol.errors import ProtocolError
from mitransfer.protocol.suites import VerifyingKey

_DASH: Final = "\u2014"  # em dash
MAX_SIGNATURES: Final = 100  # the spec asks verifiers to accept at least 16
MAX_NOTE_BYTES: Final = 1 << 20
_SPACES = re.compile(r"\s", re.UNICODE)

ED25519_TYPE: Final = 0x01
ECDSA_TYPE: Final = 0x02
OTHER_TYPE: Final = 0xFF
OTHER_TYPE_PREFIX: Final = b"mitransfer.v1/"


class NoteError(ProtocolError):
    """A note that is malformed (NOTE_MALFORMED), signed by no known key (NOTE_UNVERIFIED), or
    whose known key's signature does not verify (NOTE_SIGNATURE_INVALID)."""


@dataclass(frozen=True)
class Signature:
    """One signature line: the key's name and ID, and the signature bytes after the ID."""

    name: str
    key_id: int
    signature: bytes

    def line(self) -> str:
        blob = self.key_id.to_bytes(4, "big") + self.signature
        return f"{_DASH} {self.name} {base64.b64encode(blob).decode('ascii')}\n"


@dataclass(frozen=True)
class Note:
    """A note's text and its signature lines (verified or not, as the function returning it says)."""

    text: str
    signatures: tuple[Signature, ...]

    def encode(self) -> bytes:
        """The note as it is sent: text, blank line, signature lines."""
        return (self.text + "\n" + "".join(s.line() for s in self.signatures)).encode("utf-8")


def valid_name(name: str) -> bool:
    """A key name: non-empty, no Unicode space, no plus sign."""
    return bool(name) and not _SPACES.search(name) and "+" not in name


def _spki_der(key: VerifyingKey) -> bytes:
    """The key's DER SubjectPublicKeyInfo, from its PEM (any suite writes SPKI PEM)."""
    lines = key.public_pem().decode("ascii").strip().splitlines()
    return base64.b64decode("".join(line for line in lines if not line.startswith("-----")))


def public_key_bytes(key: VerifyingKey) -> bytes:
    """Type byte || public key, as a verifier key (vkey) and the key ID encode them."""
    der = _spki_der(key)
    if key.algorithm == "ed25519":
        return bytes([ED25519_TYPE]) + der[-32:]  # an Ed25519 SPKI ends with the 32-byte key
    if key.algorithm == "ecdsa-p256-sha256":
        return bytes([ECDSA_TYPE]) + der
    return bytes([OTHER_TYPE]) + OTHER_TYPE_PREFIX + key.algorithm.encode("ascii") + b"\n" + der


def key_id(name: str, key: VerifyingKey) -> int:
    """The 32-bit key ID of `key` under `name` (see the module's table)."""
    encoded = public_key_bytes(key)
    if encoded[0] == ECDSA_TYPE:
        digest = hashlib.sha256(encoded[1:]).digest()
    else:
        digest = hashlib.sha256(name.encode("utf-8") + b"\n" + encoded).digest()
    return int.from_bytes(digest[:4], "big")


def verifier_key(name: str, key: VerifyingKey) -> str:
    """The key as a vkey string, `<name>+<hex key ID>+<base64(type || public key)>`.

    Raises NoteError (NOTE_MALFORMED) if the name cannot be a key name.
    """
    if not valid_name(name):
        raise NoteError(f"{name[:80]!r} cannot be a key name (empty, a space or a plus sign)", reason="NOTE_MALFORMED")
    return f"{name}+{key_id(name, key):08x}+{base64.b64encode(public_key_bytes(key)).decode('ascii')}"


def _verify(key: VerifyingKey, text: bytes, signature: bytes) -> bool:
    # ECDSA's note signature is over the text like the suite's own (SHA-256 inside the suite).
    return key.verify(signature, text)


@dataclass(frozen=True)
class NoteSigner:
    """A named key that signs notes: its public half (for the key ID) and how to sign with it.

    `sign` takes the text's bytes; the gateway passes its `Signer.sign`, so whatever key and
    suite sign receipts sign checkpoints the same way.
    """

    name: str
    key: VerifyingKey
    sign: Callable[[bytes], bytes]

    @property
    def key_id(self) -> int:
        return key_id(self.name, self.key)


def sign(text: str, signers: Sequence[NoteSigner]) -> bytes:
    """`text` signed by each signer, as a note.

    Raises NoteError (NOTE_MALFORMED) if the text is not note text (empty, not ending in a
    newline, a control character) or a signer's name is not a key name.
    """
    _check_text(text)
    if not signers:
        raise NoteError("a note needs at least one signature", reason="NOTE_MALFORMED")
    data = text.encode("utf-8")
    signatures = []
    for s in signers:
        if not valid_name(s.name):
            raise NoteError(f"{s.name[:80]!r} cannot be a key name", reason="NOTE_MALFORMED")
        signatures.append(Signature(s.name, s.key_id, s.sign(data)))
    return Note(text, tuple(signatures)).encode()


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise NoteError("a note's text must end with a newline", reason="NOTE_MALFORMED")
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise NoteError("a note's text holds a control character", reason="NOTE_MALFORMED")


def parse(message: bytes) -> Note:
    """Split a note into its text and (unverified) signature lines.

    Raises NoteError (NOTE_MALFORMED): not UTF-8, a control character, no blank line before the
    signatures, a malformed signature line, too many of them, or too large.
    """
    if len(message) > MAX_NOTE_BYTES:
        raise NoteError(f"a note of {len(message)} bytes is larger than {MAX_NOTE_BYTES}", reason="NOTE_MALFORMED")
    try:
        decoded = message.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NoteError("a note must be UTF-8", reason="NOTE_MALFORMED") from exc
    if any(ord(c) < 0x20 and c != "\n" for c in decoded):
        raise NoteError("a note holds a control character", reason="NOTE_MALFORMED")
    split = decoded.rfind("\n\n")
    if split < 0:
        raise NoteError("a note has no blank line before its signatures", reason="NOTE_MALFORMED")
    text, block = decoded[:split + 1], decoded[split + 2:]
    if not block.endswith("\n"):
        raise NoteError("a note's last signature line must end with a newline", reason="NOTE_MALFORMED")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"a note with more than {MAX_SIGNATURES} signatures", reason="NOTE_MALFORMED")
    return Note(text, tuple(_signature(line) for line in lines))


def _signature(line: str) -> Signature:
    prefix = _DASH + " "
    if not line.startswith(prefix):
        raise NoteError("a signature line must start with an em dash and a space", reason="NOTE_MALFORMED")
    name, space, blob64 = line[len(prefix):].partition(" ")
    if not space or not valid_name(name):
        raise NoteError("a signature line has no valid key name", reason="NOTE_MALFORMED")
    try:
        blob = base64.b64decode(blob64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise NoteError(f"the signature of key {name[:80]} is not base64", reason="NOTE_MALFORMED") from exc
    if len(blob) < 5:
        raise NoteError(f"the signature of key {name[:80]} is too short", reason="NOTE_MALFORMED")
    return Signature(name, int.from_bytes(blob[:4], "big"), blob[4:])


KeyLookup = Callable[[str, int], VerifyingKey | None]
"""(key name, key ID) → the key it names, or None if the verifier does not know (or trust) it."""


def known_keys(keys: Iterable[tuple[str, VerifyingKey]]) -> KeyLookup:
    """A lookup over (name, key) pairs; a (name, ID) pair shared by two keys is refused when
    asked for (someone controls the key list; better to say so than to pick one)."""
    table: dict[tuple[str, int], list[VerifyingKey]] = {}
    for name, key in keys:
        table.setdefault((name, key_id(name, key)), []).append(key)

    def lookup(name: str, kid: int) -> VerifyingKey | None:
        found = table.get((name, kid), [])
        if len(found) > 1:
            raise NoteError(f"two known keys share the name {name[:80]} and ID {kid:08x}", reason="NOTE_MALFORMED")
        return found[0] if found else None

    return lookup


def open_note(message: bytes, lookup: KeyLookup) -> Note:
    """Parse a note and verify its signatures by the keys `lookup` knows.

    Returns the note with only its verified signatures.

    Raises:
        NoteError: NOTE_MALFORMED (see `parse`), NOTE_SIGNATURE_INVALID (a known key's signature
            does not verify: the whole note is refused), NOTE_UNVERIFIED (no known key signed it).
    """
    note = parse(message)
    text = note.text.encode("utf-8")
    verified = []
    for s in note.signatures:
        key = lookup(s.name, s.key_id)
        if key is None:
            continue
        if not _verify(key, text, s.signature):
            raise NoteError(f"the signature of key {s.name[:80]}+{s.key_id:08x} ({key.key_id}) does not verify",
                            reason="NOTE_SIGNATURE_INVALID")
        verified.append(s)
    if not verified:
        names = ", ".join(f"{s.name[:80]}+{s.key_id:08x}" for s in note.signatures[:4])
        raise NoteError(f"no known key signed this note (signed by {names})", reason="NOTE_UNVERIFIED")
    return Note(note.text, tuple(verified))
