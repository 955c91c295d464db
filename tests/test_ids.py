"""Salesforce id checksums: the table-driven computation against the definition."""

from __future__ import annotations

import string
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from receiver.errors import InvalidMessage
from receiver.ids import checksum, normalize_id

_ID_ALPHABET = string.ascii_letters + string.digits


def _definition(id15: str) -> str:
    suffix = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
    letters = []
    for start in (0, 5, 10):
        bits = sum(1 << offset for offset, char in enumerate(id15[start : start + 5]) if "A" <= char <= "Z")
        letters.append(suffix[bits])
    return "".join(letters)


@given(st.text(alphabet=_ID_ALPHABET, min_size=15, max_size=15))
def test_checksum_matches_the_definition(id15: str) -> None:
    """Every 15-character id gets the checksum Salesforce defines."""
    assert checksum(id15) == _definition(id15)


@given(st.text(max_size=20))
def test_checksum_of_odd_input_matches_the_definition(text: str) -> None:
    """Short, long or non-ASCII input still gets the definition's answer (normalize_id refuses it)."""
    assert checksum(text) == _definition(text)


@pytest.mark.parametrize(
    "folded",
    ["00D5G000004XZ1AEAS", "00d5g000004xz1aeas", "00D5g000004Xz1Aeas", "001A0000006VM9RIAC", "001a0000006vm9riac"],
)
def test_a_case_folded_18_character_id_gets_its_case_back(folded: str) -> None:
    """What the 18-character form exists for: a system that folded case still names the record."""
    expected = {"00D": "00D5g000004Xz1AEAS", "001": "001A0000006Vm9rIAC"}[folded[:3].upper()]
    assert normalize_id(folded) == expected


@pytest.mark.parametrize(
    "wrong",
    [
        "00D5g000004Xz1AEAT",  # a typo in the suffix
        "00D5G000004XZ1AEAT",  # folded, and the suffix makes a digit upper case
        "00D5g000004xz1AEAS",  # mixed case that is not the suffix's
        "00D5G000004XZ1A999",  # folded, and a suffix of digits no checksum has (6 to 9)
    ],
)
def test_an_18_character_id_whose_suffix_is_not_its_own_is_refused(wrong: str) -> None:
    """Case is restored only for a folded id, and only where the suffix marks letters."""
    with pytest.raises(InvalidMessage) as caught:
        normalize_id(wrong)
    assert caught.value.reason == "invalid_id"


@given(st.text(alphabet=_ID_ALPHABET, min_size=15, max_size=15), st.sampled_from([str.upper, str.lower]))
def test_any_folded_18_character_id_normalizes_to_the_original(id15: str, fold: Callable[[str], str]) -> None:
    """Upper- or lower-casing a whole 18-character id loses nothing."""
    original = id15 + _definition(id15)
    assert normalize_id(fold(original)) == original
