"""GB 11643-1999 ID numbers: the MOD 11-2 check catches every single substitution and every
adjacent transposition; named bad inputs are refused without repeating the number."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mitransfer.protocol.idnumbers import check_character, make, problems

TODAY = dt.date(2026, 11, 22)
DIGITS = "0123456789"


@st.composite
def valid_numbers(draw: st.DrawFn) -> str:
    region = draw(st.text(DIGITS, min_size=6, max_size=6))
    born = draw(st.dates(min_value=dt.date(1900, 1, 1), max_value=TODAY))
    return make(region, born, draw(st.integers(0, 999)))


@pytest.mark.parametrize(("first17", "check"), [
    ("11010519491231002", "X"),  # the standard's own example
    ("44052418800101001", "4"),
])
def test_check_character_vectors(first17: str, check: str) -> None:
    assert check_character(first17) == check
    assert problems(first17 + check, today=TODAY) == []


@given(valid_numbers())
def test_made_numbers_are_valid(number: str) -> None:
    assert problems(number, today=TODAY) == []


def test_make_lays_out_region_birth_and_sequence() -> None:
    assert make("110105", dt.date(1949, 12, 31), 2) == "11010519491231002X"


@pytest.mark.parametrize(("region", "birth", "sequence"), [
    pytest.param("11010", dt.date(1990, 1, 1), 1, id="region-too-short"),
    pytest.param("１１0105", dt.date(1990, 1, 1), 1, id="region-full-width"),
    pytest.param("110105", dt.date(1990, 1, 1), 1000, id="sequence-too-large"),
    pytest.param("110105", dt.date(1990, 1, 1), -1, id="sequence-negative"),
    pytest.param("110105", dt.date(999, 1, 1), 1, id="three-digit-year"),
])
def test_make_refuses_what_cannot_be_a_number(region: str, birth: dt.date, sequence: int) -> None:
    with pytest.raises(ValueError):
        make(region, birth, sequence)


def _neighbours(number: str) -> set[str]:
    """Every number one substituted character or one adjacent swap away from `number`."""
    body, check = number[:17], number[17]
    near = {body[:i] + c + body[i + 1:] + check for i in range(17) for c in DIGITS if c != body[i]}
    near |= {body + c for c in DIGITS + "X" if c != check}
    near |= {number[:i] + number[i + 1] + number[i] + number[i + 2:] for i in range(17) if number[i] != number[i + 1]}
    return near


@given(valid_numbers())
def test_every_single_substitution_and_adjacent_swap_is_caught(number: str) -> None:
    near = _neighbours(number)
    assert len(near) >= 17 * 9 + 10  # the substitutions alone
    assert [n for n in near if not problems(n, today=TODAY)] == []


def test_the_check_character_is_what_catches_them() -> None:
    """A neighbour with a real birth date and only digits is refused for its check character alone."""
    near = _neighbours("11010519491231002X")
    for changed in near:
        found = problems(changed, today=TODAY)
        if changed[:17].isdigit() and changed[17] != "x" and not any("date" in p for p in found):
            assert found == ["the check character does not match (GB 11643-1999, ISO 7064 MOD 11-2)"]


@pytest.mark.parametrize(("number", "expected"), [
    pytest.param("11010519491231002", "18 characters", id="too-short"),
    pytest.param("11010519491231002XX", "18 characters", id="too-long"),
    pytest.param("1101051949123100AX", "digits", id="letter-in-body"),
    pytest.param("A1010519491231002X", "digits", id="letter-first"),
    pytest.param("11010519491231002x", "upper case", id="lower-case-x"),
    pytest.param("110105194902300021", "date of birth", id="february-30"),
    pytest.param("110105194902310026", "date of birth", id="february-31-right-check"),
    pytest.param("110105209912310010", "future", id="born-in-the-future"),
    pytest.param("110105194912310021", "check character", id="wrong-check"),
    pytest.param("１１0105194912310021", "digits", id="full-width-digits"),
])
def test_named_bad_numbers(number: str, expected: str) -> None:
    found = problems(number, today=TODAY)
    assert any(expected in p for p in found), found
    assert all(number not in p for p in found)


def test_without_today_the_birth_date_is_not_compared() -> None:
    future = make("110105", dt.date(2099, 12, 31), 1)
    assert problems(future, today=None) == []
    assert problems(future, today=TODAY) == ["the date of birth is in the future"]


@pytest.mark.parametrize("body", ["", "1234", "1101051949123100A", "１１010519491231002", "110105194912310021"])
def test_check_character_needs_17_digits(body: str) -> None:
    with pytest.raises(ValueError):
        check_character(body)
