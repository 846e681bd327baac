"""GB 11643-1999 ID numbers: the MOD 11-2 check catches every single substitution and every
adjacent transposition; named bad inputs are refused without repeating the number."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.idnumbers import check_character, problems

TODAY = dt.date(2026, 11, 22)


@st.composite
def valid_numbers(draw: st.DrawFn) -> str:
    region = draw(st.text("0123456789", min_size=6, max_size=6))
    born = draw(st.dates(min_value=dt.date(1900, 1, 1), max_value=TODAY))
    sequence = draw(st.text("0123456789", min_size=3, max_size=3))
    body = f"{region}{born:%Y%m%d}{sequence}"
    return body + check_character(body)


def test_reference_example_is_valid() -> None:
    assert problems("11010519491231002X", today=TODAY) == []
    assert check_character("11010519491231002") == "X"


@given(valid_numbers())
def test_built_numbers_are_valid(number: str) -> None:
    assert problems(number, today=TODAY) == []


@given(valid_numbers(), st.integers(0, 17), st.sampled_from("0123456789X"))
def test_every_single_substitution_is_caught(number: str, position: int, replacement: str) -> None:
    if number[position] == replacement or (position < 17 and replacement == "X"):
        return
    changed = number[:position] + replacement + number[position + 1:]
    assert problems(changed, today=TODAY) != []


@given(valid_numbers(), st.integers(0, 16))
def test_every_adjacent_transposition_is_caught(number: str, position: int) -> None:
    a, b = number[position], number[position + 1]
    if a == b or (position == 16 and b == "X"):
        return
    swapped = number[:position] + b + a + number[position + 2:]
    assert problems(swapped, today=TODAY) != []


@pytest.mark.parametrize(("number", "expected"), [
    pytest.param("11010519491231002", "18 characters", id="too-short"),
    pytest.param("11010519491231002XX", "18 characters", id="too-long"),
    pytest.param("1101051949123100AX", "digits", id="letter-in-body"),
    pytest.param("11010519491231002x", "upper case", id="lower-case-x"),
    pytest.param("110105194902300021", "date of birth", id="february-30"),
    pytest.param("110105209912310010", "future", id="born-in-the-future"),
    pytest.param("110105194912310021", "check character", id="wrong-check"),
    pytest.param("１１0105194912310021", "digits", id="full-width-digits"),
])
def test_named_bad_numbers(number: str, expected: str) -> None:
    found = problems(number, today=TODAY)
    assert any(expected in p for p in found), found
    assert all(number not in p for p in found)


@pytest.mark.parametrize("body", ["", "1234", "1101051949123100A", "１１010519491231002"])
def test_check_character_needs_17_digits(body: str) -> None:
    with pytest.raises(ValueError):
        check_character(body)
