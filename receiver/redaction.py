"""Removing credentials from what is stored: the OM SessionId, URL tokens, signature headers.

An Outbound Message may carry a SessionId, a live API session of the sending user; it must
never reach a log, a recording, the quarantine or an event. Redaction works on the raw bytes
so that a payload that does not even parse is still stored without it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# Content without "<" only: the scan stops at the next tag, so hostile input stays linear.
_SESSION_ID = re.compile(rb"<(?P<prefix>[A-Za-z_][\w.-]*:)?SessionId\b[^>]*?(?:/>|>[^<]*</(?P=prefix)?SessionId\s*>)")
# An opening SessionId tag left after the substitution (CDATA, comments, odd markup inside).
_LEFTOVER = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?SessionId\b[^>]*(?<!/)>")
#: Stored instead of a body whose SessionId could not be redacted with certainty.
UNREDACTABLE = b"<!-- body withheld: its SessionId could not be redacted -->"
_NIL_SESSION = rb'<\g<prefix>SessionId xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:nil="true"/>'
_NIL_SESSION_NO_PREFIX = b'<SessionId xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:nil="true"/>'
_NIL_SESSION_TAIL = b'SessionId xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:nil="true"/>'
# The parser accepts UTF-16 and UTF-32, where the name has NUL bytes between its letters.
_WIDE_NAME = re.compile(b"\x00{1,3}".join(re.escape(bytes([letter])) for letter in b"SessionId"))

#: Headers worth keeping for a replay or an investigation; everything else is dropped.
RECORDED_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "soapaction",
        "user-agent",
        "x-salesforce-org-id",
        "x-request-id",
        "webhook-id",
        "webhook-timestamp",
        "x-forwarded-for",
    }
)


def redact_session_id(body: bytes) -> bytes:
    """The body with every SessionId element replaced by a nil one.

    ``UNREDACTABLE`` instead when that cannot be done with certainty: a body in UTF-16 or UTF-32,
    or with the name left anywhere but in a nil element (markup the pattern cannot follow, an
    encoding that hides ``<`` such as UTF-7's ``+ADw-``, or a field merely named after it).
    """
    if _WIDE_NAME.search(body) is not None:
        return UNREDACTABLE
    if b"SessionId" not in body:
        return body

    def replace(match: re.Match[bytes]) -> bytes:
        prefix = match.group("prefix")
        if prefix:
            return match.expand(_NIL_SESSION)
        return _NIL_SESSION_NO_PREFIX

    redacted = _SESSION_ID.sub(replace, body)
    if _LEFTOVER.search(redacted) is not None or redacted.count(b"SessionId") > redacted.count(_NIL_SESSION_TAIL):
        return UNREDACTABLE
    return redacted


def recorded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The allow-listed headers; signatures, Authorization and cookies never pass."""
    return {name: value for name, value in headers.items() if name.lower() in RECORDED_HEADERS}
