"""Salesforce Outbound Messages: hardened parsing of the SOAP request and one event per notification.

Nothing in an Outbound Message is signed, so the parser is the first line of defence: the XML
is loaded by ``safe_xml`` (no DTD, no entities, bounded depth and element count), the SOAP
structure is checked by namespace URI (senders pick arbitrary prefixes), the envelope is
validated against ``schemas/outbound-envelope.xsd`` and the org id cross-checked with the URLs.

It is strict on what routing and dedupe rely on (org id, ids, structure) and tolerant of what
senders vary: element order, extra elements, whitespace, 15-character ids, omitted null fields.

The ``SessionId`` is a credential: its shape is validated by the schema, its value is never read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any, Final, cast

from lxml import etree

from receiver.errors import ConfigurationError, InvalidMessage
from receiver.event import OUTBOUND_MESSAGE, CloudEvent, Connection
from receiver.ids import normalize_id, normalize_org_id
from receiver.safe_xml import PARSER_OPTIONS, SafeXmlParser
from receiver.wsdl import WsdlRegistry, normalize_datetime

SOAP_ENVELOPE_NS: Final = "http://schemas.xmlsoap.org/soap/envelope/"
OUTBOUND_NS: Final = "http://soap.sforce.com/2005/09/outbound"
XSI_NS: Final = "http://www.w3.org/2001/XMLSchema-instance"


def _schema_file(name: str) -> Path:
    """A file of ``schemas/``: at the top of a source checkout, or shipped as ``receiver.schemas``."""
    in_checkout = Path(__file__).resolve().parents[1] / "schemas" / name
    if in_checkout.is_file():
        return in_checkout
    return Path(str(files("receiver.schemas").joinpath(name)))


ENVELOPE_SCHEMA_PATH: Final = _schema_file("outbound-envelope.xsd")

_ENVELOPE: Final = f"{{{SOAP_ENVELOPE_NS}}}Envelope"
_BODY: Final = f"{{{SOAP_ENVELOPE_NS}}}Body"
_NOTIFICATIONS: Final = f"{{{OUTBOUND_NS}}}notifications"
_NOTIFICATION: Final = f"{{{OUTBOUND_NS}}}Notification"
_NOTIFICATION_ID: Final = f"{{{OUTBOUND_NS}}}Id"
_SOBJECT: Final = f"{{{OUTBOUND_NS}}}sObject"
_XSI_TYPE: Final = f"{{{XSI_NS}}}type"
_XSI_NIL: Final = f"{{{XSI_NS}}}nil"
_HEADERS: Final = {
    f"{{{OUTBOUND_NS}}}{name}": name
    for name in ("OrganizationId", "ActionId", "SessionId", "EnterpriseUrl", "PartnerUrl")
}
_REQUIRED_HEADERS: Final = ("OrganizationId", "ActionId", "EnterpriseUrl", "PartnerUrl")
_NIL_VALUES: Final = frozenset({"true", "1"})
_SPECIAL_FIELDS: Final = frozenset({"Id", "fieldsToNull"})

# The org id Salesforce appends to both API URLs, e.g. .../services/Soap/c/60.0/00Dxx0000001gPF.
#: EnterpriseUrl and PartnerUrl are an instance's API URLs, well under 200 characters.
MAX_URL_LENGTH: Final = 2048
_URL_ORG_ID = re.compile(r"/([a-zA-Z0-9]{15}(?:[a-zA-Z0-9]{3})?)/?$")
# Object API names go into a Kafka header and the message key: letters, digits, underscores.
_OBJECT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,254}")
_SCHEMA_ELEMENT = re.compile(r"Element '(?:\{[^}]*\})?([^']+)'")
_ID18 = re.compile(r"[a-zA-Z0-9]{18}")
# An org and its actions send message after message: their ids are normalized once, not per
# request. Only results are cached (never errors), so hostile ids cannot fill the caches.
_org_id: Final = lru_cache(maxsize=4096)(normalize_org_id)


@dataclass(frozen=True, slots=True)
class Notification:
    """One record change: ``fields`` holds typed values, ``None`` for nil; omitted fields are absent."""

    id: str
    object: str
    record_id: str | None
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """A validated Outbound Message; every id is in its 18-character form. Holds no SessionId."""

    organization_id: str
    action_id: str
    enterprise_url: str
    partner_url: str
    notifications: tuple[Notification, ...]


class OutboundMessageParser:
    """Turns the raw body of an Outbound Message request into an ``OutboundMessage``.

    Built once at start-up: the libxml2 parser, the envelope schema and the limit checks are
    compiled here, so ``parse`` constructs nothing but the tree.
    """

    __slots__ = ("_max_notifications", "_schema", "_wsdl", "_xml")

    def __init__(
        self, wsdl: WsdlRegistry, *, max_depth: int = 100, max_elements: int = 50_000, max_notifications: int = 100
    ) -> None:
        """Raises ``ValueError`` for a limit below 1, ``ConfigurationError`` when the schema is unusable."""
        if min(max_depth, max_elements, max_notifications) < 1:
            raise ValueError("parser limits must be at least 1")
        self._wsdl = wsdl
        self._max_notifications = max_notifications
        self._xml = SafeXmlParser(max_depth=max_depth, max_elements=max_elements)
        self._schema = _load_schema(ENVELOPE_SCHEMA_PATH)

    @property
    def wsdl(self) -> WsdlRegistry:
        """The field types it applies."""
        return self._wsdl

    def parse(self, body: bytes) -> OutboundMessage:
        """Parse and validate one request body.

        Raises ``InvalidMessage`` with reason ``malformed_xml``, ``forbidden_dtd``, ``too_deep``,
        ``too_many_elements``, ``not_soap_envelope``, ``wrong_namespace``, ``missing_field``,
        ``duplicate_element``, ``no_notifications``, ``too_many_notifications``, ``invalid_id``,
        ``invalid_org_id``, ``org_mismatch``, ``invalid_object_type``, ``invalid_field_value`` or
        ``schema_violation``. Details name elements, never their values.
        """
        soap_body = _single_child(self._envelope(body), _BODY, "Body", missing_reason="not_soap_envelope")
        notifications = _single_child(soap_body, _NOTIFICATIONS, "notifications", missing_reason="missing_field")
        message = self._read_message(notifications)
        # After reading, so that common faults get their precise reason; the schema then catches
        # what reading does not look at (child elements in ids, a nil SessionId with content).
        if not self._schema.validate(notifications):
            raise _schema_violation(self._schema)
        return message

    def _envelope(self, body: bytes) -> etree._Element:
        root = self._xml.parse(body)
        if root.tag != _ENVELOPE:
            if _local_name(root.tag) == "Envelope":
                raise InvalidMessage("Envelope is not in the SOAP 1.1 namespace", reason="wrong_namespace")
            raise InvalidMessage("the root element is not a SOAP Envelope", reason="not_soap_envelope")
        return root

    def _read_message(self, notifications: etree._Element) -> OutboundMessage:
        headers: dict[str, etree._Element] = {}
        items: list[etree._Element] = []
        for child in notifications:
            tag = child.tag
            if tag == _NOTIFICATION:
                if len(items) == self._max_notifications:
                    raise InvalidMessage(
                        f"more than {self._max_notifications} notifications", reason="too_many_notifications"
                    )
                items.append(child)
                continue
            name = _HEADERS.get(tag)
            if name is None:
                continue  # an element Salesforce may add later, or a sender's extra
            if name in headers:
                raise InvalidMessage(f"{name} appears more than once", reason="duplicate_element")
            headers[name] = child
        for name in _REQUIRED_HEADERS:
            if name not in headers:
                raise _missing(notifications, name, name)
        if not items:
            error = _missing(notifications, "Notification", "Notification")
            if error.reason == "missing_field":
                error = InvalidMessage("the message holds no Notification", reason="no_notifications")
            raise error
        organization_id = _org_id(_text(headers["OrganizationId"]).strip())
        return OutboundMessage(
            organization_id=organization_id,
            action_id=_action_id(_text(headers["ActionId"]).strip()),
            enterprise_url=_checked_url(headers["EnterpriseUrl"], "EnterpriseUrl", organization_id),
            partner_url=_checked_url(headers["PartnerUrl"], "PartnerUrl", organization_id),
            notifications=tuple(self._read_notification(item) for item in items),
        )

    def _read_notification(self, item: etree._Element) -> Notification:
        # One pass finds both in the common case; otherwise _single_child names what is wrong,
        # in the same order as always (the Id first).
        notification_id = sobject = None
        ids = sobjects = 0
        for child in item:
            tag = child.tag
            if tag == _NOTIFICATION_ID:
                notification_id = child
                ids += 1
            elif tag == _SOBJECT:
                sobject = child
                sobjects += 1
        if ids != 1 or notification_id is None:
            notification_id = _single_child(item, _NOTIFICATION_ID, "Notification Id", missing_reason="missing_field")
        if sobjects != 1 or sobject is None:
            sobject = _single_child(item, _SOBJECT, "sObject", missing_reason="missing_field")
        object_name = _object_name(sobject)
        record_id, fields = self._read_fields(sobject, object_name)
        return Notification(
            normalize_id(_text(notification_id), what="Notification Id"), object_name, record_id, fields
        )

    def _read_fields(self, sobject: etree._Element, object_name: str) -> tuple[str | None, dict[str, Any]]:
        coercers = self._wsdl.coercers_for(object_name)
        fields: dict[str, Any] = {}
        record_id: str | None = None
        seen_id = False
        nulled: list[str] = []
        for element in sobject:
            # The common case (a plain field with text) is inlined: this loop runs once per field.
            tag = element.tag
            name = tag[tag.find("}") + 1 :]
            nil = element.get(_XSI_NIL)
            if nil is None and name not in _SPECIAL_FIELDS and name not in fields and not len(element):
                coercer = coercers.get(name)
                text = element.text or ""
                fields[name] = text if coercer is None else coercer(text)
            elif name == "Id":
                if seen_id:
                    raise InvalidMessage(f"{object_name}.Id appears more than once", reason="duplicate_element")
                seen_id = True
                record_id = None if _is_nil(element) else normalize_id(_text(element), what=f"{object_name}.Id")
            elif name == "fieldsToNull":
                # The sObject's way of saying "set these fields to null": each names one field.
                if not _is_nil(element):
                    nulled.append(_text(element).strip())
            elif name in fields:
                raise InvalidMessage(f"{object_name}.{name} appears more than once", reason="duplicate_element")
            elif _is_nil(element):
                fields[name] = None
            elif len(element):
                # Compound values are rare in Outbound Messages; keep their parts as sent.
                fields[name] = {_local_name(part.tag): None if _is_nil(part) else _text(part) for part in element}
            else:
                coercer = coercers.get(name)
                fields[name] = _text(element) if coercer is None else coercer(_text(element))
        for name in nulled:
            # A field sent with a value wins over fieldsToNull naming it.
            if name and name not in fields:
                fields[name] = None
        return record_id, fields


def to_events(message: OutboundMessage, connection: Connection, received_at: str) -> list[CloudEvent]:
    """One ``com.salesforce.outbound_message`` CloudEvent per notification, in message order.

    ``time`` is the record's ``LastModifiedDate`` when it is a valid date-time, else
    ``received_at``. The key keeps one record's events on one partition. Raises nothing.
    """
    org_id = message.organization_id
    events: list[CloudEvent] = []
    for notification in message.notifications:
        record_id = notification.record_id
        data = {
            "organization_id": org_id,
            "connection": connection.as_dict(),
            "object": notification.object,
            "record_id": record_id,
            "fields": dict(notification.fields),
            "received_at": received_at,
            "outbound_message": {
                "action_id": message.action_id,
                "notification_id": notification.id,
                "enterprise_url": message.enterprise_url,
                "partner_url": message.partner_url,
            },
        }
        events.append(
            CloudEvent(
                type=OUTBOUND_MESSAGE,
                id=notification.id,
                organization_id=org_id,
                connection=connection,
                time=_event_time(notification.fields.get("LastModifiedDate"), received_at),
                key=f"{org_id}:{record_id if record_id is not None else notification.object}",
                data=data,
                object=notification.object,
                subject=record_id,
            )
        )
    return events


def _event_time(last_modified: Any, received_at: str) -> str:
    if isinstance(last_modified, str):
        try:
            return normalize_datetime(last_modified)
        except ValueError:
            pass  # not a date-time (a hand-written message): the receipt time is the best we have
    return received_at


def _load_schema(path: Path) -> etree.XMLSchema:
    try:
        return etree.XMLSchema(etree.parse(str(path), etree.XMLParser(**PARSER_OPTIONS)))
    except (OSError, etree.XMLSyntaxError, etree.XMLSchemaParseError) as exc:
        raise ConfigurationError(f"envelope schema {path} is unusable: {exc}") from exc


def _local_name(tag: object) -> str:
    if not isinstance(tag, str):
        return ""  # comments, processing instructions and entities have no name
    return tag[tag.find("}") + 1 :]


def _text(element: etree._Element) -> str:
    return element.text or ""


def _is_nil(element: etree._Element) -> bool:
    nil = element.get(_XSI_NIL)
    return nil is not None and nil.strip() in _NIL_VALUES


def _single_child(parent: etree._Element, tag: str, label: str, *, missing_reason: str) -> etree._Element:
    found: etree._Element | None = None
    for child in parent.iterchildren(tag):  # filtered in C; findall would go through ElementPath
        if found is not None:
            raise InvalidMessage(f"{label} appears more than once", reason="duplicate_element")
        found = child
    if found is not None:
        return found
    error = _missing(parent, _local_name(tag), label)
    if error.reason == "missing_field" and missing_reason != "missing_field":
        error = InvalidMessage(f"{label} is missing", reason=missing_reason)
    raise error


def _missing(parent: etree._Element, local_name: str, label: str) -> InvalidMessage:
    """The error for an absent element: ``wrong_namespace`` when it is there under another namespace."""
    if any(_local_name(child.tag) == local_name for child in parent):
        return InvalidMessage(f"{label} is not in the expected namespace", reason="wrong_namespace")
    return InvalidMessage(f"{label} is missing", reason="missing_field")


def _checked_url(element: etree._Element, name: str, organization_id: str) -> str:
    url = _text(element).strip()
    if len(url) > MAX_URL_LENGTH:
        # Before the cache: 4,096 cached URLs of megabytes each would be gigabytes per worker.
        raise InvalidMessage(f"{name} is longer than {MAX_URL_LENGTH} characters", reason="invalid_field_value")
    return _checked_url_text(url, name, organization_id)


# An org's URLs are the same in every message it sends: check each once. Only successes are
# cached (an error propagates), so hostile values cannot fill the cache with failures.
@lru_cache(maxsize=4096)
def _checked_url_text(url: str, name: str, organization_id: str) -> str:
    match = _URL_ORG_ID.search(url)
    if match is None:
        raise InvalidMessage(f"{name} does not end with an organization id", reason="org_mismatch")
    try:
        url_org_id = _org_id(match.group(1))
    except InvalidMessage:
        raise InvalidMessage(f"{name} does not end with a valid organization id", reason="org_mismatch") from None
    if url_org_id != organization_id:
        raise InvalidMessage(f"OrganizationId differs from the organization id of {name}", reason="org_mismatch")
    return url


@lru_cache(maxsize=4096)
def _action_id(text: str) -> str:
    try:
        return normalize_id(text, what="ActionId")
    except InvalidMessage:
        # The ActionId only informs consumers (routing and dedupe never use it), and a message
        # captured from a live org carries one whose checksum does not match: refusing it would
        # lose the notifications over a field nobody keys on. Its shape is still checked.
        if _ID18.fullmatch(text):
            return text
        raise


def _object_name(sobject: etree._Element) -> str:
    declared = sobject.get(_XSI_TYPE)
    if declared is None:
        raise InvalidMessage("sObject has no xsi:type", reason="missing_field")
    # xsi:type is a QName: its prefix is resolved with the sObject's own in-scope declarations.
    prefix, _, local = declared.strip().rpartition(":")
    if prefix and prefix not in sobject.nsmap:
        raise InvalidMessage("the xsi:type prefix of sObject is not declared", reason="invalid_object_type")
    if not _OBJECT_NAME.fullmatch(local):
        raise InvalidMessage("the xsi:type of sObject is not an object name", reason="invalid_object_type")
    return local


def _schema_violation(schema: etree.XMLSchema) -> InvalidMessage:
    # libxml2 messages quote offending values; keep only the element name, the rule and the line.
    # (The validator's log is shared between threads, so under concurrency this detail may
    # describe another request's violation; the verdict itself is per call.)
    entries: list[Any] = list(cast("Iterable[Any]", schema.error_log))  # lxml-stubs leave the log untyped
    if not entries:
        return InvalidMessage("notifications does not match the envelope schema", reason="schema_violation")
    entry = entries[0]
    match = _SCHEMA_ELEMENT.match(entry.message)
    where = match.group(1) if match else "notifications"
    return InvalidMessage(
        f"{where} does not match the envelope schema ({entry.type_name}, line {entry.line})",
        reason="schema_violation",
    )
