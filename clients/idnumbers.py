"""Resident identity card numbers (GB 11643-1999): 6-digit region, birth date, sequence, check.

The check character is ISO 7064 MOD 11-2 over the first 17 digits; the gateway refuses a
number whose check character is wrong, so every number a platform sends must pass `is_valid`.
The rules are `mitransfer.protocol.idnumbers`, the very ones the gateway applies.
"""

from __future__ import annotations

import datetime as dt

from mitransfer.protocol import idnumbers


def check_char(first17: str) -> str:
    """The check character for 17 digits. Raises ValueError if they are not 17 digits."""
    return idnumbers.check_character(first17)


def is_valid(number: str, *, today: dt.date | None = None) -> bool:
    """18 characters, a real birth date, and the right check character (upper-case X).

    With `today`, the date of birth must also not be after it, as the gateway checks on receipt.
    """
    return not idnumbers.problems(number, today=today)


def make(region: str, birth: dt.date, sequence: int) -> str:
    """A well-formed number for `region` (6 digits), `birth` and `sequence` (0..999).

    Raises:
        ValueError: region not 6 digits, sequence outside 0..999.
    """
    return idnumbers.make(region, birth, sequence)
