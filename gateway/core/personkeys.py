"""Person keys of the suspended-record index: a keyed hash of a person's certificate, so the index
can match a new enrollment with a suspended record without ever holding the certificate number.

    key = HMAC-SHA-256(secret, "mitransfer/person-key/v1" 0x00 <certificate type, 2 digits> 0x00 <number>)

The number is taken as sent, upper-cased (an ID card's check character X is the only letter a
resident ID number has; platforms disagree on its case more often than on anything else). The
secret is the gateway's alone: no platform can compute a key, so nobody can test a guessed number
against the index, and the index's rows without the secret give nothing that a dictionary of the
~10⁹ plausible ID numbers could be matched against (a plain SHA-256 of them could be, in minutes).

Secrets rotate. Each has an id; new entries are keyed under the current one, and a lookup is made
under every configured secret, so an entry still under the old secret matches until it is keyed
again (from the signed message it came in, by the index's upkeep) and the old secret is retired:

1. add the new secret to every replica (not current yet); 2. make it current on every replica;
3. wait until the index holds no entry under the old id (the `transfer_gateway_index_entries`
gauge, by key id); 4. remove the old secret.

At every step any two replicas share a secret, which is what their locks need (`lock_names`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from mitransfer.v1 import types_pb2

MIN_SECRET_BYTES: Final = 32  # HMAC-SHA-256's own block of security: a shorter secret weakens the key
_DOMAIN: Final = b"mitransfer/person-key/v1\x00"
_KEY_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")


def is_key_id(value: str) -> bool:
    """A secret's id: 1 to 32 ASCII letters, digits, `.`, `_` or `-`, starting with a letter or digit."""
    return _KEY_ID.fullmatch(value) is not None


def parse_secret(text: bytes) -> bytes:
    """The secret of a secret file: hex digits (whitespace around them ignored), as
    `openssl rand -hex 32` writes them.

    Raises ValueError saying what is wrong (never repeating the file's content).
    """
    digits = text.strip()
    try:
        secret = bytes.fromhex(digits.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError("not hex digits (write one with `openssl rand -hex 32`)") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"{len(secret)} bytes; a person-key secret has at least {MIN_SECRET_BYTES}"
                         " (`openssl rand -hex 32`)")
    return secret


@dataclass(frozen=True)
class PersonKey:
    """A person's key under one secret."""

    key_id: str
    digest: bytes  # 32 bytes


class PersonKeys:
    """The gateway's person-key secrets by id, and which one new entries are keyed under."""

    def __init__(self, secrets: Mapping[str, bytes], current: str) -> None:
        """Raises ValueError: no secrets, a bad id, a short secret, or `current` not among them."""
        if not secrets:
            raise ValueError("at least one person-key secret is needed")
        for key_id, secret in secrets.items():
            if not is_key_id(key_id):
                raise ValueError(f"person-key secret id {key_id[:40]!r} is not 1 to 32 letters, digits, . _ or -")
            if len(secret) < MIN_SECRET_BYTES:
                raise ValueError(f"person-key secret {key_id} has {len(secret)} bytes, fewer than {MIN_SECRET_BYTES}")
        if current not in secrets:
            raise ValueError(f"the current person-key secret {current[:40]!r} is not one of "
                             f"{', '.join(sorted(secrets))}")
        self._secrets: Mapping[str, bytes] = MappingProxyType(dict(secrets))
        self.current = current

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._secrets)

    def key(self, person: types_pb2.Person, key_id: str | None = None) -> PersonKey:
        """The person's key under `key_id` (default: the current secret). Raises KeyError for an
        id that is not configured."""
        chosen = self.current if key_id is None else key_id
        return PersonKey(chosen, _digest(self._secrets[chosen], person.certificate_type,
                                         person.certificate_number))

    def keys(self, person: types_pb2.Person) -> tuple[PersonKey, ...]:
        """The person's key under every secret, the current one first: what a lookup matches."""
        others = sorted(k for k in self._secrets if k != self.current)
        return tuple(self.key(person, key_id) for key_id in (self.current, *others))


def lock_names(keys: tuple[PersonKey, ...]) -> tuple[str, ...]:
    """The names of the locks a writer of one person's index entries takes, in the order to take
    them (sorted, so two writers never wait for each other in a cycle): one per key. Two replicas
    configured with different secrets during a rotation still share one, so they still exclude
    each other."""
    return tuple(sorted(f"person:{k.digest.hex()}" for k in keys))


def _digest(secret: bytes, certificate_type: int, number: str) -> bytes:
    message = _DOMAIN + f"{certificate_type:02d}".encode() + b"\x00" + number.strip().upper().encode()
    return hmac.new(secret, message, hashlib.sha256).digest()
