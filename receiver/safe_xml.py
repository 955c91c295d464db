"""Loading untrusted XML with lxml: no DTD, no entities, no network, bounded depth and size.

Outbound Messages are unsigned and come from the internet, so libxml2 must never process an
entity declaration (external entities read local files, nested ones explode: billion laughs)
and a body must not be able to spend unbounded memory or time on its tree.
"""

from __future__ import annotations

import re
from typing import Any, Final

from lxml import etree

from receiver.errors import InvalidMessage

PARSER_OPTIONS: Final[dict[str, Any]] = {
    "resolve_entities": False,
    "no_network": True,
    "load_dtd": False,
    "dtd_validation": False,
    "huge_tree": False,
    "remove_comments": True,
    "remove_pis": True,
}
#: Namespace declarations in one body, and the length of one namespace name or prefix: a
#: 100-notification message has 104 declarations, none over 60 characters.
MAX_NAMESPACE_DECLARATIONS: Final = 512
MAX_NAMESPACE_LENGTH: Final = 512
# The slow, streaming parse only serves bodies with more tags than elements allowed.
_STREAM_CHUNK: Final = 64 * 1024


def _declaration_pattern(*keywords: str) -> re.Pattern[bytes]:
    # UTF-16 and UTF-32 put NUL bytes around each ASCII character: allowing up to three between
    # characters makes one pattern find the keyword in UTF-8, UTF-16 and UTF-32 of either byte
    # order, and the leading literal ``<`` lets the regex engine skip ahead quickly.
    gap = rb"\x00{0,3}"

    def spread(text: str) -> bytes:
        return gap.join(re.escape(char.encode()) for char in text)

    alternatives = b"|".join(spread(keyword[2:]) for keyword in keywords)
    return re.compile(spread("<!") + gap + b"(?:" + alternatives + b")", re.IGNORECASE)


# No Outbound Message has a DTD; refusing one before parsing means libxml2 never processes
# entity declarations at all (external entities, billion laughs). A false positive needs
# "<!DOCTYPE" inside a comment or CDATA section, which Salesforce does not send.
_DECLARATION = _declaration_pattern("<!DOCTYPE", "<!ENTITY")


class SafeXmlParser:
    """Parses bodies into trees under the limits; built once, as the compiled checks are reused."""

    __slots__ = ("_count_elements", "_exceeds_depth", "_max_elements", "_xml")

    def __init__(self, *, max_depth: int, max_elements: int) -> None:
        self._max_elements = max_elements
        self._xml = etree.XMLParser(**PARSER_OPTIONS)
        # XPath runs in C: counting and depth checks cost microseconds even for 100 notifications.
        # libxml2 itself refuses nesting past 256 levels, so the tree is never deeper than that.
        self._count_elements = etree.XPath("count(//*)")
        self._exceeds_depth = etree.XPath("boolean(/*" + "/*" * max_depth + ")")

    def parse(self, body: bytes) -> etree._Element:
        """The root element of ``body``.

        Raises ``InvalidMessage`` with reason ``forbidden_dtd``, ``malformed_xml``, ``too_deep`` or
        ``too_many_elements``; details never quote the body.
        """
        if _DECLARATION.search(body):
            raise InvalidMessage("the body declares a DTD or entities", reason="forbidden_dtd")
        try:
            if body.count(b"<") > self._max_elements:
                root = self._parse_streaming(body)
            else:
                root = etree.fromstring(body, self._xml)
        except etree.XMLSyntaxError as exc:
            # ``from None``: libxml2 messages can quote bytes of the body, the SessionId among them.
            raise _syntax_error(exc) from None
        if root.getroottree().docinfo.internalDTD is not None:
            # Reached only by encodings the byte pattern does not cover (EBCDIC); nothing was
            # loaded or expanded, as the parser resolves no entities.
            raise InvalidMessage("the body declares a DTD", reason="forbidden_dtd")
        if float(self._count_elements(root)) > self._max_elements:  # type: ignore[arg-type]
            raise _too_many_elements(self._max_elements)
        if self._exceeds_depth(root):
            raise InvalidMessage("the body nests elements too deeply", reason="too_deep")
        _check_namespaces(root)
        return root

    def _parse_streaming(self, body: bytes) -> etree._Element:
        # Counting while parsing refuses a flood of tiny elements before it is all in memory.
        # A pull parser per call is acceptable here: real messages never take this path.
        parser = etree.XMLPullParser(events=("start",), **PARSER_OPTIONS)
        seen = 0
        for offset in range(0, len(body), _STREAM_CHUNK):
            parser.feed(body[offset : offset + _STREAM_CHUNK])
            seen += sum(1 for _ in parser.read_events())
            if seen > self._max_elements:
                raise _too_many_elements(self._max_elements)
        return parser.close()


def _check_namespaces(root: etree._Element) -> None:
    """Raises ``InvalidMessage`` (``too_many_namespaces``, ``namespace_too_long``) past the bounds.

    Schema validation and lxml's ``.tag`` and ``nsmap`` cost grow with the declarations in
    scope and with the length of namespace names times the elements using them: 100,000
    declarations on the Envelope cost libxml2's validator 22 s, and a 400 KB namespace name
    on 10,000 elements 9 s and 4 GB. Salesforce declares one namespace per sObject and four
    more, all short. Walking the declarations costs about 2 us for one notification.
    """
    for declared, (_, (prefix, name)) in enumerate(etree.iterwalk(root, events=("start-ns",)), start=1):
        if declared > MAX_NAMESPACE_DECLARATIONS:
            raise InvalidMessage(
                f"the body declares more than {MAX_NAMESPACE_DECLARATIONS} namespaces", reason="too_many_namespaces"
            )
        if len(name) > MAX_NAMESPACE_LENGTH or len(prefix or "") > MAX_NAMESPACE_LENGTH:
            raise InvalidMessage(
                f"a namespace name or prefix is longer than {MAX_NAMESPACE_LENGTH} characters",
                reason="namespace_too_long",
            )


def _syntax_error(exc: etree.XMLSyntaxError) -> InvalidMessage:
    # The exception's own message, not its error_log: a shared parser's log keeps earlier parses' errors.
    message = str(exc.msg)
    if message.startswith("Excessive depth"):
        return InvalidMessage("the body nests elements too deeply", reason="too_deep")
    if "amplification" in message:
        return InvalidMessage("the body expands entities", reason="forbidden_dtd")
    line, column = exc.position
    return InvalidMessage(f"the body is not well-formed XML (line {line}, column {column})", reason="malformed_xml")


def _too_many_elements(limit: int) -> InvalidMessage:
    return InvalidMessage(f"the body has more than {limit} elements", reason="too_many_elements")
