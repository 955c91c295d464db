"""Removing credentials from what is stored: the OM SessionId, URL tokens, signature headers.

An Outbound Message may carry a SessionId, a live API session of the sending user; it must
never reach a log, a recording, the quarantine or an event. Redaction works on the raw bytes
so that a payload that does not even parse is still stored without it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# Neither the start tag nor the content may hold a "<": an attempt at one "<" ends at the next
# one, so that no body (a megabyte of "<SessionId" without ">") costs more than linear time.
_SESSION_ID = re.compile(rb"<(?P<prefix>[A-Za-z_][\w.-]*:)?SessionId\b[^<>]*?(?:/>|>[^<]*</(?P=prefix)?SessionId\s*>)")
#: SessionId elements a body may hold and still be stored (an Outbound Message has one).
MAX_SESSION_IDS = 8
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
    encoding that hides ``<`` such as UTF-7's ``+ADw-``, or a field merely named after it); and
    for a body of more than ``MAX_SESSION_IDS`` SessionId elements.

    It runs for every recorded request, so the pattern is tried only where the name occurs (at
    the ``<`` before it), not at every tag. The last check is what makes it safe: each nil
    element carries the name once, so the name may occur no more often than nil elements do.
    """
    if b"\x00" in body and _WIDE_NAME.search(body) is not None:
        return UNREDACTABLE
    found = body.find(b"SessionId")
    if found == -1:
        return body
    parts: list[bytes] = []
    done = 0
    # Every "<" before this was tried already: the next occurrence looks no further back.
    tried = 0
    while found != -1:
        opening = body.rfind(b"<", max(done, tried), found)
        match = _SESSION_ID.match(body, opening) if opening != -1 else None
        if match is None:
            tried = found
            found = body.find(b"SessionId", found + len(b"SessionId"))
            continue
        if len(parts) == 2 * MAX_SESSION_IDS:
            # Each nil element is longer than a bare <SessionId/>: many would blow a 5 MiB body
            # up to 35 MB of recording. A message carries one SessionId.
            return UNREDACTABLE
        parts += (body[done:opening], _nil_element(match))
        done = match.end()
        found = body.find(b"SessionId", done)
    parts.append(body[done:])
    redacted = b"".join(parts)
    if redacted.count(b"SessionId") > redacted.count(_NIL_SESSION_TAIL):
        return UNREDACTABLE
    return redacted


def _nil_element(match: re.Match[bytes]) -> bytes:
    return match.expand(_NIL_SESSION) if match.group("prefix") else _NIL_SESSION_NO_PREFIX


def recorded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The allow-listed headers; signatures, Authorization and cookies never pass."""
    return {name: value for name, value in headers.items() if name.lower() in RECORDED_HEADERS}
