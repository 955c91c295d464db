"""SessionId redaction on raw bytes: what is replaced, and what is withheld whole."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from receiver import redaction
from receiver.redaction import UNREDACTABLE, redact_session_id
from tests.om_payloads import SAMPLE_FILES, SESSION_ID, outbound_message, sample

BODY = outbound_message(1)


def test_a_session_id_becomes_a_nil_element() -> None:
    """The usual UTF-8 message keeps everything but the SessionId's value."""
    redacted = redact_session_id(BODY)
    assert SESSION_ID.encode() not in redacted
    assert b'<SessionId xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:nil="true"/>' in redacted
    assert redacted.startswith(BODY.split(b"<SessionId>")[0])


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-be", "utf-32", "utf-32-le"])
def test_a_message_in_a_wide_encoding_is_withheld(codec: str) -> None:
    """The parser accepts UTF-16 and UTF-32, where the byte patterns cannot see the element."""
    body = BODY.decode().replace('encoding="UTF-8"', f'encoding="{codec.upper()}"').encode(codec)
    assert redact_session_id(body) == UNREDACTABLE


@pytest.mark.parametrize(
    "body",
    [
        BODY.replace(b"<SessionId>", b"+ADw-SessionId+AD4-").replace(b"</SessionId>", b"+ADw-/SessionId+AD4-"),
        BODY.replace(b"<SessionId>", b"<SessionId><![CDATA[<").replace(b"</SessionId>", b"]]></SessionId>"),
        BODY.replace(b"<sf:LastName>", b"<sf:SessionId__c>x</sf:SessionId__c><sf:LastName>"),
    ],
    ids=["utf-7-hidden-tags", "cdata", "field-named-after-it"],
)
def test_a_name_left_outside_a_nil_element_withholds_the_body(body: bytes) -> None:
    """Markup the pattern cannot follow, or the name anywhere else, withholds the body rather than guess."""
    assert redact_session_id(body) == UNREDACTABLE


def test_a_body_without_the_name_is_kept_as_is() -> None:
    """Bytes that do not name a SessionId in any encoding are returned untouched."""
    body = outbound_message(1).replace(b"<SessionId>", b"<Other>").replace(b"</SessionId>", b"</Other>")
    assert redact_session_id(body) is body


# The pattern applied at every tag, as redaction first did: the faster search must agree with it.
_REFERENCE_LEFTOVER = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?SessionId\b[^>]*(?<!/)>")


def reference_redaction(body: bytes) -> bytes:
    if redaction._WIDE_NAME.search(body) is not None:
        return UNREDACTABLE
    if b"SessionId" not in body:
        return body
    redacted, replaced = redaction._SESSION_ID.subn(redaction._nil_element, body)
    if replaced > redaction.MAX_SESSION_IDS:
        return UNREDACTABLE
    if _REFERENCE_LEFTOVER.search(redacted) is not None or redacted.count(b"SessionId") > redacted.count(
        redaction._NIL_SESSION_TAIL
    ):
        return UNREDACTABLE
    return redacted


_FRAGMENTS = st.sampled_from(
    [
        b"<SessionId>",
        b"</SessionId>",
        b"<sf:SessionId>",
        b"</sf:SessionId>",
        b"<SessionId/>",
        b"<a:SessionId x='1'/>",
        b'<SessionId xsi:nil="true"/>',
        b"<SessionIdx:SessionId>",
        b"SessionId",
        b"<Session",
        b"Id>",
        b"<",
        b">",
        b"/",
        b":",
        b" ",
        b"00D!AQ.secret",
        b"<![CDATA[",
        b"]]>",
        b"<sf:LastName>",
        b"</sf:LastName>",
        redaction._NIL_SESSION_NO_PREFIX,
        b"\x00",
        b"S\x00e\x00s\x00s\x00i\x00o\x00n\x00I\x00d\x00",
    ]
)


@given(st.lists(_FRAGMENTS, max_size=12).map(b"".join))
@settings(max_examples=3000, deadline=None)
def test_the_search_agrees_with_the_pattern_applied_at_every_tag(body: bytes) -> None:
    assert redact_session_id(body) == reference_redaction(body)


def test_the_search_agrees_on_real_messages() -> None:
    for body in (BODY, outbound_message(100), *(sample(name) for name in SAMPLE_FILES)):
        assert redact_session_id(body) == reference_redaction(body)


def test_a_body_of_many_session_ids_is_withheld_not_blown_up() -> None:
    """400,000 bare <SessionId/> would become 35 MB of nil elements in a recording."""
    assert redact_session_id(b"<SessionId/>" * 400_000) == UNREDACTABLE
    eight = b"<a>" + b"<SessionId>s</SessionId>" * redaction.MAX_SESSION_IDS + b"</a>"
    assert redact_session_id(eight).count(redaction._NIL_SESSION_NO_PREFIX) == redaction.MAX_SESSION_IDS
    assert redact_session_id(eight.replace(b"</a>", b"<SessionId/></a>")) == UNREDACTABLE
