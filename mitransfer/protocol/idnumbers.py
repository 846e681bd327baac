"""Citizen identity numbers (GB 11643-1999, 公民身份号码).

18 characters: a 6-digit address code, the birth date YYYYMMDD, a 3-digit sequence, and a check
character over the first 17 digits by ISO 7064 MOD 11-2 ("0"-"9" or an upper-case "X"). The
check catches every single wrong digit and every swap of two adjacent digits, which is why
the gateway refuses a number whose check character is wrong. Descriptions never repeat the number.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

_WEIGHTS: Final = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)  # 2**(17-i) mod 11
_CHECK: Final = "10X98765432"  # indexed by the weighted sum mod 11


def check_character(first17: str) -> str:
    """The check character for 17 digits.

    Raises:
        ValueError: not exactly 17 ASCII digits.
    """
    if len(first17) != 17 or not first17.isascii() or not first17.isdigit():
        raise ValueError("a check character is computed over exactly 17 digits")
    return _CHECK[sum(int(d) * w for d, w in zip(first17, _WEIGHTS, strict=True)) % 11]


def problems(number: str, *, today: dt.date | None) -> list[str]:
    """What is wrong with `number` as a resident ID number; an empty list means it is valid.

    With `today`, a date of birth after it is a problem too; with None, the date is not compared.
    """
    if len(number) != 18:
        return [f"must be 18 characters, not {len(number)}"]
    body, check = number[:17], number[17]
    if not body.isascii() or not body.isdigit():
        return ["the first 17 characters must be digits"]
    found: list[str] = []
    try:
        born = dt.date(int(body[6:10]), int(body[10:12]), int(body[12:14]))
    except ValueError:
        found.append("characters 7-14 are not a calendar date of birth")
    else:
        if today is not None and born > today:
            found.append("the date of birth is in the future")
    if check == "x":
        found.append("the check character X must be upper case")
    elif check != check_character(body):
        found.append("the check character does not match (GB 11643-1999, ISO 7064 MOD 11-2)")
    return found


def make(region: str, birth: dt.date, sequence: int) -> str:
    """A well-formed number for `region` (6 digits), `birth` and `sequence` (0..999).

    Raises:
        ValueError: the region is not 6 ASCII digits, the sequence outside 0..999, or the year
            of birth not of four digits.
    """
    if len(region) != 6 or not region.isascii() or not region.isdigit() or not 0 <= sequence <= 999:
        raise ValueError("region must be 6 digits and sequence 0..999")
    if not 1000 <= birth.year <= 9999:
        raise ValueError("the year of birth must have four digits")
    first17 = f"{region}{birth:%Y%m%d}{sequence:03d}"
    return first17 + check_character(first17)
