"""Salesforce record ids: 15-character case-sensitive ids and their 18-character form.

The 18-character form appends a 3-character checksum that encodes the case of the first 15
characters, so that case-insensitive systems can tell ids apart. For each 5-character chunk,
bit j is set when character j is an upper-case letter; the 5-bit value indexes ``_SUFFIX``.
"""

from __future__ import annotations

import re

from receiver.errors import InvalidMessage

_SUFFIX = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_ID_PATTERN = re.compile(r"[a-zA-Z0-9]{15}(?:[a-zA-Z0-9]{3})?")
ORG_ID_PREFIX = "00D"


# The checksum runs twice per notification (its id and its record's), so it is table-driven:
# translate maps each character to "1" (upper-case letter) or "0", and each 5-character run of
# those digits names its suffix letter directly (bit j of the chunk is character j).
_CASE_BITS = str.maketrans({chr(code): "1" if "A" <= chr(code) <= "Z" else "0" for code in range(128)})
_SUFFIX_OF_BITS = {
    "".join("1" if value >> bit & 1 else "0" for bit in range(5)): letter for value, letter in enumerate(_SUFFIX)
}


def checksum(id15: str) -> str:
    """The 3-character case checksum of a 15-character id (alphanumeric ASCII, as ids are)."""
    bits = id15.translate(_CASE_BITS)
    try:
        return _SUFFIX_OF_BITS[bits[0:5]] + _SUFFIX_OF_BITS[bits[5:10]] + _SUFFIX_OF_BITS[bits[10:15]]
    except KeyError:
        # Not ASCII: compute it character by character (such an id is refused anyway).
        return "".join(
            _SUFFIX[sum(1 << offset for offset, char in enumerate(id15[start : start + 5]) if "A" <= char <= "Z")]
            for start in (0, 5, 10)
        )


def normalize_id(value: str, *, what: str = "id") -> str:
    """Return the 18-character form of a 15- or 18-character Salesforce id.

    An 18-character id whose first 15 characters were case-folded (``00D5G000004XZ1AEAS``) gets
    their case back from the suffix. Raises ``InvalidMessage`` when the value is not 15 or 18
    alphanumerics, or when an 18-character id's checksum does not match its first 15 characters.
    """
    candidate = value.strip()
    if _ID_PATTERN.fullmatch(candidate) is None:
        raise InvalidMessage(f"{what} is not a 15- or 18-character Salesforce id", reason="invalid_id")
    expected = checksum(candidate[:15])
    if len(candidate) == 18:
        # Some tools upper-case the suffix; the checksum letters themselves are case-free.
        suffix = candidate[15:].upper()
        if suffix == expected:
            return candidate[:15] + expected
        restored = _restore_case(candidate[:15], suffix)
        if restored is None:
            raise InvalidMessage(f"{what} has a wrong 18-character checksum", reason="invalid_id")
        return restored + suffix
    return candidate + expected


def _restore_case(id15: str, suffix: str) -> str | None:
    """The case the suffix gives the 15 characters of an id a case-insensitive system folded
    (all upper or all lower case, which is what the 18-character form is made to survive);
    None when they were not folded or the suffix cannot be theirs (an upper-case digit)."""
    letters = [char for char in id15 if char.isalpha()]
    if not (all(char.isupper() for char in letters) or all(char.islower() for char in letters)):
        return None
    if any(char not in _SUFFIX for char in suffix):  # 6 to 9 are no checksum letters
        return None
    chars = []
    for position, char in enumerate(id15):
        upper = _SUFFIX.index(suffix[position // 5]) >> (position % 5) & 1
        if upper and not char.isalpha():
            return None
        chars.append(char.upper() if upper else char.lower())
    return "".join(chars)


def normalize_org_id(value: str) -> str:
    """Return the 18-character org id; raises ``InvalidMessage`` unless it starts ``00D``."""
    org_id = normalize_id(value, what="organization id")
    if not org_id.startswith(ORG_ID_PREFIX):
        raise InvalidMessage("organization id does not start with 00D", reason="invalid_org_id")
    return org_id


def is_valid_id(value: str) -> bool:
    """True when ``value`` is a well-formed 15- or 18-character id with a correct checksum."""
    try:
        normalize_id(value)
    except InvalidMessage:
        return False
    return True
