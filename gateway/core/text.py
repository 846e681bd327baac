"""What a caller's text may hold, and how a value a caller sent is shown back to anyone.

Text and code fields refuse the characters that make stored text read otherwise than it is
stored: control characters (C0 and C1, NUL, tab and line breaks among them), the line and
paragraph separators, the bidirectional formatting characters ("Trojan Source": an override
reverses what follows it on screen) and lone surrogates. An operator reading a log and a
reviewer reading a name must see what the gateway keeps. Other format characters (the
zero-width joiners some scripts need) and private-use characters (rare Chinese characters that
legacy systems encode there) are allowed.

`shown` is the one way a value a caller sent goes back into an error text, error metadata or a
log: a short prefix with everything unprintable escaped, and the length when it was cut. It is
for codes and identifiers; a person's name or certificate number is never shown at all.
"""

from __future__ import annotations

import re
from typing import Final

# C0 and C1 controls, line/paragraph separators, bidirectional marks, embeddings, overrides and
# isolates (U+061C, U+200E-F, U+202A-E, U+2066-9), lone surrogates.
_UNSAFE: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
                            "\ud800-\udfff]")
SHOWN_CHARACTERS: Final = 24  # how much of a caller's value an answer or a log repeats


def unsafe_character(text: str) -> str | None:
    """The first character a text field may not hold, as `U+202E`; None if there is none."""
    found = _UNSAFE.search(text)
    return None if found is None else f"U+{ord(found.group()):04X}"


def unsafe_description(text: str) -> str | None:
    """What a field's description says of a forbidden character in `text`, or None."""
    found = unsafe_character(text)
    if found is None:
        return None
    return f"contains a control, line-break or bidirectional formatting character ({found})"


def shown(value: str | bytes, limit: int = SHOWN_CHARACTERS) -> str:
    """`value` as an answer may repeat it: its first `limit` characters (bytes: bytes), quoted with
    every unprintable character escaped, and its length when it was longer."""
    head = repr(value[:limit])
    if len(value) <= limit:
        return head
    unit = "bytes" if isinstance(value, bytes) else "characters"
    return f"{head}… ({len(value)} {unit})"
