"""Citizen identity numbers (GB 11643-1999, 公民身份号码).

18 characters: a 6-digit address code, the birth date YYYYMMDD, a 3-digit sequence, and a check
character over the first 17 digits by ISO 7064 MOD 11-2. The check catches every single wrong
digit and every swap of two adjacent digits, which is why the gateway insists on it.
Pure functions; descriptions never repeat the number.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

_WEIGHTS: Final = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK: Final = "10X98765432"


def check_character(first17: str) -> str:
    """The check character for 17 digits. Raises ValueError unless given exactly 17 ASCII digits."""
    if len(first17) != 17 or not first17.isascii() or not first17.isdigit():
        raise ValueError("a check character is computed over exactly 17 digits")
    return _CHECK[sum(int(d) * w for d, w in zip(first17, _WEIGHTS, strict=True)) % 11]


def problems(number: str, *, today: dt.date) -> list[str]:
    """What is wrong with `number` as a resident ID number; an empty list means it is valid."""
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
        if born > today:
            found.append("the date of birth is in the future")
    if check == "x":
        found.append("the check character X must be upper case")
    elif check != check_character(body):
        found.append("the check character does not match (GB 11643-1999, ISO 7064 MOD 11-2)")
    return found
