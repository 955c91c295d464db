"""Salesforce id checksums: the table-driven computation against the definition."""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from receiver.ids import checksum

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
