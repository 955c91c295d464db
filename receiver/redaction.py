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
    """The body with every SessionId element replaced by a nil one."""
    if b"SessionId" not in body:
        return body

    def replace(match: re.Match[bytes]) -> bytes:
        prefix = match.group("prefix")
        if prefix:
            return match.expand(_NIL_SESSION)
        return _NIL_SESSION_NO_PREFIX

    redacted = _SESSION_ID.sub(replace, body)
    if _LEFTOVER.search(redacted) is not None:
        return UNREDACTABLE
    return redacted


def recorded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The allow-listed headers; signatures, Authorization and cookies never pass."""
    return {name: value for name, value in headers.items() if name.lower() in RECORDED_HEADERS}
