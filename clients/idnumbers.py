"""Resident identity card numbers (GB 11643-1999): 6-digit region, birth date, sequence, check.

The check character is ISO 7064 MOD 11-2 over the first 17 digits; the gateway refuses a
number whose check character is wrong, so every number a platform sends must pass `is_valid`.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

_WEIGHTS: Final = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK_CHARS: Final = "10X98765432"


def check_char(first17: str) -> str:
    """The check character for 17 digits. Raises ValueError if they are not 17 digits."""
    if len(first17) != 17 or not first17.isascii() or not first17.isdigit():
        raise ValueError("need exactly 17 digits")
    return _CHECK_CHARS[sum(int(d) * w for d, w in zip(first17, _WEIGHTS, strict=True)) % 11]


def is_valid(number: str) -> bool:
    """18 characters, a real birth date, and the right check character (upper-case X)."""
    if len(number) != 18 or not number[:17].isascii() or not number[:17].isdigit():
        return False
    try:
        dt.date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return False
    return number[17] == check_char(number[:17])


def make(region: str, birth: dt.date, sequence: int) -> str:
    """A well-formed number for `region` (6 digits), `birth` and `sequence` (0..999)."""
    if len(region) != 6 or not region.isdigit() or not 0 <= sequence <= 999:
        raise ValueError("region must be 6 digits and sequence 0..999")
    first17 = f"{region}{birth:%Y%m%d}{sequence:03d}"
    return first17 + check_char(first17)
