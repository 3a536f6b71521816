"""Versions of any length and Flyway's dotted ones: parsing, order, the stored key."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from migsync.core.version import Version, VersionError


@pytest.mark.parametrize(
    ("text", "parts", "shown"),
    [
        ("0001", (1,), "1"),
        ("20150100000001000000", (20150100000001000000,), "20150100000001000000"),
        ("1.2.10", (1, 2, 10), "1.2.10"),
        ("1_2", (1, 2), "1.2"),
        ("1.0", (1,), "1"),
        ("0", (0,), "0"),
        ("2.0.0", (2,), "2"),
    ],
)
def test_parse_and_show(text: str, parts: tuple[int, ...], shown: str) -> None:
    version = Version.parse(text)
    assert version.parts == parts
    assert version.text == str(version) == shown
    assert Version.from_key(version.key) == version


def test_order_is_numeric_part_by_part() -> None:
    ordered = [
        "0",
        "1",
        "1.1",
        "1.2",
        "1.2.9",
        "1.2.10",
        "2",
        "10",
        "20150100000001000000",
        "20150100000001000001",
    ]
    versions = [Version.parse(t) for t in ordered]
    assert sorted(reversed(versions)) == versions
    assert sorted(v.key for v in reversed(versions)) == [v.key for v in versions]


def test_trailing_zero_parts_are_the_same_version() -> None:
    assert Version.parse("1.0") == Version.parse("1") == Version.parse("01.00.0")
    assert len({Version.parse("1.0"), Version.parse("1")}) == 1


@pytest.mark.parametrize("text", ["", "a", "1.", ".1", "1..2", "-1", "1.2a", " 1", "1 "])
def test_not_versions(text: str) -> None:
    with pytest.raises(VersionError, match="is not a version"):
        Version.parse(text)


def test_a_part_of_a_hundred_digits_is_refused() -> None:
    assert Version.parse("9" * 99).parts == (int("9" * 99),)
    with pytest.raises(VersionError, match="more than 99 digits"):
        Version.parse("9" * 100)


@pytest.mark.parametrize("key", ["", "1", "025", "01.02", "x1", "0312", "0201"])
def test_bad_keys(key: str) -> None:
    with pytest.raises(VersionError):
        Version.from_key(key)


@given(st.lists(st.lists(st.integers(0, 10**30), min_size=1, max_size=4), min_size=2, max_size=8))
def test_property_key_order_is_version_order(raw: list[list[int]]) -> None:
    versions = [Version(tuple(parts)) for parts in raw]
    assert sorted(versions, key=lambda v: v.key) == sorted(versions)
    for version in versions:
        assert Version.from_key(version.key) == version == Version.parse(version.text)


def test_a_one_part_version_is_the_int_it_was() -> None:
    assert Version.parse("0042") == 42 and Version.parse("42") == 42
    assert {Version.parse("42"): "x"}[42] == "x" and hash(Version.parse("42")) == hash(42)
    assert Version.parse("2") < 10 < Version.parse("20150100000001000000")
    assert Version.parse("1.2") != 1 and Version.parse("1.2") > 1
    assert Version.parse("1") != "1"  # text is not a version: parse it
