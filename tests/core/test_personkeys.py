"""Person keys (gateway.core.personkeys): keyed, stable, rotatable, and never the number."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.personkeys import PersonKey, PersonKeys, is_key_id, lock_names, parse_secret
from mitransfer.protocol import idnumbers
from mitransfer.v1 import types_pb2

ID_CARD = types_pb2.CERTIFICATE_TYPE_RESIDENT_ID_CARD
OLD, NEW = b"o" * 32, b"n" * 32


def person(number: str = "11010519491231002X", kind: int = ID_CARD) -> types_pb2.Person:
    return types_pb2.Person(certificate_type=kind, certificate_number=number, name="张三")  # type: ignore[arg-type]


def test_the_key_is_hmac_sha256_of_type_and_number_under_the_secret() -> None:
    expected = hmac.new(OLD, b"mitransfer/person-key/v1\x0001\x0011010519491231002X", hashlib.sha256).digest()
    assert PersonKeys({"k1": OLD}, "k1").key(person()) == PersonKey("k1", expected)


def test_an_unkeyed_hash_of_the_number_is_not_the_key() -> None:
    key = PersonKeys({"k1": OLD}, "k1").key(person()).digest
    assert key != hashlib.sha256(b"01:11010519491231002X").digest()
    assert b"11010519491231002X" not in key


def test_the_check_character_case_and_surrounding_space_do_not_change_the_key() -> None:
    keys = PersonKeys({"k1": OLD}, "k1")
    assert keys.key(person("11010519491231002x")) == keys.key(person(" 11010519491231002X "))


def test_the_certificate_type_is_part_of_the_key() -> None:
    keys = PersonKeys({"k1": OLD}, "k1")
    assert keys.key(person("E12345678", types_pb2.CERTIFICATE_TYPE_FOREIGN_PASSPORT)) != keys.key(
        person("E12345678", types_pb2.CERTIFICATE_TYPE_OTHER))


def test_keys_under_every_secret_current_first() -> None:
    keys = PersonKeys({"a-old": OLD, "b-new": NEW, "c": b"c" * 32}, "b-new")
    assert [k.key_id for k in keys.keys(person())] == ["b-new", "a-old", "c"]
    assert keys.keys(person())[1] == PersonKeys({"a-old": OLD}, "a-old").key(person())


def test_replicas_in_the_middle_of_a_rotation_share_a_lock() -> None:
    before = PersonKeys({"old": OLD}, "old").keys(person())
    during = PersonKeys({"old": OLD, "new": NEW}, "new").keys(person())
    after = PersonKeys({"new": NEW}, "new").keys(person())
    assert set(lock_names(before)) & set(lock_names(during))
    assert set(lock_names(during)) & set(lock_names(after))
    assert list(lock_names(during)) == sorted(lock_names(during))


@given(st.integers(0, 999), st.integers(0, 999))
def test_different_people_have_different_keys(a: int, b: int) -> None:
    import datetime as dt

    keys = PersonKeys({"k": OLD}, "k")
    first = idnumbers.make("110105", dt.date(1980, 1, 1), a)
    second = idnumbers.make("110105", dt.date(1980, 1, 1), b)
    assert (keys.key(person(first)) == keys.key(person(second))) == (a == b)


@pytest.mark.parametrize(("secrets", "current", "problem"), [
    ({}, "k", "at least one"),
    ({"k": b"short"}, "k", "fewer than 32"),
    ({"bad id!": OLD}, "bad id!", "is not 1 to 32"),
    ({"k": OLD}, "other", "is not one of k"),
])
def test_refused_configurations(secrets: dict[str, bytes], current: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        PersonKeys(secrets, current)


def test_a_secret_file_is_hex() -> None:
    assert parse_secret(b"00" * 32 + b"\n") == bytes(32)
    with pytest.raises(ValueError, match="not hex"):
        parse_secret(b"not a secret")
    with pytest.raises(ValueError, match="16 bytes"):
        parse_secret(b"ab" * 16)


def test_key_ids() -> None:
    assert is_key_id("person-2026.1_a")
    assert not is_key_id("") and not is_key_id("-x") and not is_key_id("x" * 33) and not is_key_id("a b")
