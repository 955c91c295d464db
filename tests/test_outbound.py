"""The Outbound Message parser and its events: real samples, hostile bodies, tolerated variations."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver.errors import InvalidMessage
from receiver.event import OUTBOUND_MESSAGE, Connection
from receiver.ids import checksum
from receiver.outbound import OutboundMessage, OutboundMessageParser, to_events
from receiver.wsdl import WsdlRegistry

# The real Salesforce samples ship with the repository under examples/ (CI clones it alone).
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SAMPLE_NAMES = ("contact_2_notifications.xml", "account_null_field_omitted.xml", "discount_rule_custom_object.xml")

TYPED = OutboundMessageParser(WsdlRegistry.load(EXAMPLES / "wsdl"))
UNTYPED = OutboundMessageParser(WsdlRegistry.empty())
CONNECTION = Connection("acme-prod", "salesforce")
RECEIVED_AT = "2026-01-02T03:04:05.678Z"

ORG15 = "00DD0000000muCU"
ORG = ORG15 + checksum(ORG15)
SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
OUT_NS = "http://soap.sforce.com/2005/09/outbound"
SF_NS = "urn:sobject.enterprise.soap.sforce.com"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"


def sample(name: str) -> bytes:
    return (EXAMPLES / "payloads" / name).read_bytes()


def id18(prefix: str, number: int) -> str:
    id15 = f"{prefix}{number:0{15 - len(prefix)}d}"
    return id15 + checksum(id15)


def notification(number: int = 1, *, fields: str = "<sf:Name>Acme</sf:Name>", object_name: str = "Account") -> str:
    return (
        f"<Notification><Id>{id18('04l57000017', number)}</Id>"
        f'<sObject xsi:type="sf:{object_name}" xmlns:sf="{SF_NS}">'
        f"<sf:Id>{id18('0015700000', number)}</sf:Id>{fields}</sObject></Notification>"
    )


def message(
    notifications: str | None = None,
    *,
    org: str = ORG15,
    url_org: str | None = None,
    headers: str | None = None,
) -> bytes:
    """An OM in Salesforce's own layout; ``headers`` replaces the five header elements."""
    url_org = url_org or org
    if headers is None:
        headers = (
            f"<OrganizationId>{org}</OrganizationId><ActionId>04k57000000TOUIAA4</ActionId>"
            "<SessionId>00DD0000000muCU!SECRET-SESSION</SessionId>"
            f"<EnterpriseUrl>https://eu4.salesforce.com/services/Soap/c/42.0/{url_org}</EnterpriseUrl>"
            f"<PartnerUrl>https://eu4.salesforce.com/services/Soap/u/42.0/{url_org}</PartnerUrl>"
        )
    body = notification() if notifications is None else notifications
    return (
        f'<soapenv:Envelope xmlns:soapenv="{SOAP_NS}" xmlns:xsi="{XSI_NS}"><soapenv:Body>'
        f'<notifications xmlns="{OUT_NS}">{headers}{body}</notifications>'
        "</soapenv:Body></soapenv:Envelope>"
    ).encode()


def reason_of(body: bytes, parser: OutboundMessageParser = TYPED) -> str:
    with pytest.raises(InvalidMessage) as caught:
        parser.parse(body)
    return caught.value.reason


def test_contact_sample_yields_both_notifications() -> None:
    """The two-Contact sample parses with its ids, object and fields, Email only where sent."""
    parsed = UNTYPED.parse(sample("contact_2_notifications.xml"))
    assert parsed.organization_id == "00D1I000003qqqEUAQ"
    assert parsed.action_id == "04k1I000000bmsHQAQ"
    assert parsed.enterprise_url == "https://na73.salesforce.com/services/Soap/c/41.0/00D1I000003qqqE"
    assert [n.id for n in parsed.notifications] == ["04l1I000000fztEQAQ", "04l1I000000fzt9QAA"]
    assert [n.record_id for n in parsed.notifications] == ["0031I0000081tbPQAQ", "0031I0000081tb0QAA"]
    assert {n.object for n in parsed.notifications} == {"Contact"}
    first, second = parsed.notifications
    assert first.fields == {
        "CreatedDate": "2017-12-11T21:49:24.000Z",
        "FirstName": "Jeraldine",
        "LastName": "Black",
        "Title": "White",
    }
    assert "Email" not in first.fields
    assert second.fields["Email"] == "drb24@cornell.edu"


def test_account_sample_leaves_omitted_null_field_absent() -> None:
    """The live-org Account sample keeps only the fields it carries; Id is the record id, not a field."""
    parsed = TYPED.parse(sample("account_null_field_omitted.xml"))
    (only,) = parsed.notifications
    assert (parsed.organization_id, only.id, only.object) == ("00Dxx0000001gPFEAY", "04lxx000000CaShAAK", "Account")
    assert only.record_id == "001xx000003DGb4AAG"
    assert only.fields == {"CreatedDate": "2026-09-09T19:01:52.000Z", "LastModifiedDate": "2026-09-09T19:01:52.000Z"}


def test_discount_rule_sample_is_typed_by_its_wsdl() -> None:
    """With the WSDL registered, doubles are floats, booleans bools, date-times ISO; strings stay strings."""
    (rule,) = TYPED.parse(sample("discount_rule_custom_object.xml")).notifications
    assert rule.object == "DiscountRule__c"
    assert rule.record_id == "a025700000OPgOjAAL"
    assert rule.fields["Discount__c"] == 0.0
    assert isinstance(rule.fields["Discount__c"], float)
    assert rule.fields["Price__c"] == 419.0
    assert isinstance(rule.fields["Price__c"], float)
    assert rule.fields["IsDeleted"] is False
    assert rule.fields["CreatedDate"] == "2017-05-02T11:53:53.000Z"
    assert rule.fields["LastModifiedDate"] == "2018-05-04T11:35:40.000Z"
    assert rule.fields["ContractTerm__c"] == "24"
    assert rule.fields["Product__c"] == "01t57000006qVLRAA2"


def test_discount_rule_sample_stays_strings_without_wsdl() -> None:
    """Without a registered WSDL every value is the string sent."""
    (rule,) = UNTYPED.parse(sample("discount_rule_custom_object.xml")).notifications
    assert rule.fields["Discount__c"] == "0.0"
    assert rule.fields["IsDeleted"] == "false"
    assert rule.fields["Price__c"] == "419.0"


def test_nil_field_is_none_and_omitted_field_is_absent() -> None:
    """xsi:nil gives None; a field that is not sent is not in the dict at all."""
    (parsed,) = TYPED.parse(message(notification(fields='<sf:Phone xsi:nil="true"/>'))).notifications
    assert parsed.fields == {"Phone": None}


def test_fields_to_null_name_fields_set_to_none() -> None:
    """Each fieldsToNull element adds the field it names as None, unless that field carries a value."""
    fields = "<sf:fieldsToNull>Phone</sf:fieldsToNull><sf:fieldsToNull>Name</sf:fieldsToNull><sf:Name>Acme</sf:Name>"
    (parsed,) = TYPED.parse(message(notification(fields=fields))).notifications
    assert parsed.fields == {"Phone": None, "Name": "Acme"}


def test_field_with_child_elements_becomes_a_dict() -> None:
    """A compound field keeps its parts' text in a nested dict."""
    fields = "<sf:Owner><sf:Name>Ada</sf:Name><sf:Email>ada@example.com</sf:Email></sf:Owner>"
    (parsed,) = UNTYPED.parse(message(notification(fields=fields))).notifications
    assert parsed.fields == {"Owner": {"Name": "Ada", "Email": "ada@example.com"}}


def test_fifteen_character_ids_are_normalized_to_eighteen() -> None:
    """15-character org, action, notification and record ids come out in their 18-character form."""
    body = sample("discount_rule_custom_object.xml")
    for id18_value in (b"00DD0000000muCUMAY", b"04k57000000TOUIAA4", b"04l570000176YSmAAM", b"a025700000OPgOjAAL"):
        body = body.replace(id18_value, id18_value[:15])
    parsed = TYPED.parse(body)
    assert (parsed.organization_id, parsed.action_id) == ("00DD0000000muCUMAY", "04k57000000TOUIAA4")
    assert (parsed.notifications[0].id, parsed.notifications[0].record_id) == (
        "04l570000176YSmAAM",
        "a025700000OPgOjAAL",
    )


def test_hundred_notifications_are_accepted() -> None:
    """Salesforce's maximum of 100 notifications in one message parses."""
    parsed = TYPED.parse(message("".join(notification(n) for n in range(100))))
    assert len(parsed.notifications) == 100
    assert len({n.id for n in parsed.notifications}) == 100


def test_hundred_and_one_notifications_are_refused() -> None:
    """One notification past the limit is refused as too_many_notifications."""
    assert reason_of(message("".join(notification(n) for n in range(101)))) == "too_many_notifications"


def test_message_without_notifications_is_refused() -> None:
    """A message with no Notification is refused as no_notifications."""
    assert reason_of(message("")) == "no_notifications"


def test_doctype_with_external_entity_is_refused_unread(tmp_path: Path) -> None:
    """A DOCTYPE naming a local file is refused before parsing; the file's content appears nowhere."""
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-FILE-CONTENT")
    body = message(notification(fields="<sf:Name>&xxe;</sf:Name>"))
    body = f'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file://{secret}">]>'.encode() + body
    with pytest.raises(InvalidMessage) as caught:
        TYPED.parse(body)
    assert caught.value.reason == "forbidden_dtd"
    assert "TOP-SECRET" not in f"{caught.value!s} {caught.value!r} {caught.value.__cause__!r}"


def test_doctype_in_utf16_body_is_refused() -> None:
    """The DTD check sees through UTF-16, whose NUL bytes hide an ASCII search."""
    body = b'<?xml version="1.0" encoding="UTF-16"?><!doctype x [<!ENTITY e "x">]>' + message()
    assert reason_of(body.decode().encode("utf-16")) == "forbidden_dtd"


def test_billion_laughs_is_refused_fast() -> None:
    """Nested entity definitions are refused without being expanded."""
    entities = "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10))
    body = f'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol0 "lol">{entities}]><lolz>&lol9;</lolz>'.encode()
    started = time.perf_counter()
    assert reason_of(body) == "forbidden_dtd"
    assert time.perf_counter() - started < 0.5


def test_twenty_thousand_nested_elements_are_refused_fast() -> None:
    """20,000 levels of nesting are refused as too_deep, quickly and without RecursionError."""
    body = b"<a>" * 20_000 + b"</a>" * 20_000
    started = time.perf_counter()
    assert reason_of(body) == "too_deep"
    assert time.perf_counter() - started < 1.0


def test_nesting_past_the_configured_depth_is_refused() -> None:
    """A field nested deeper than max_depth (but within libxml2's own cap) is refused as too_deep."""
    deep = "<sf:x>" * 150 + "1" + "</sf:x>" * 150
    assert reason_of(message(notification(fields=deep))) == "too_deep"


def test_too_many_elements_are_refused() -> None:
    """More elements than max_elements are refused as too_many_elements."""
    small = OutboundMessageParser(WsdlRegistry.empty(), max_elements=30)
    assert reason_of(message("".join(notification(n) for n in range(5))), small) == "too_many_elements"


def test_element_flood_is_refused_while_streaming() -> None:
    """A flood of tiny elements is counted while parsing and refused as too_many_elements."""
    body = b"<a>" + b"<b/>" * 60_000 + b"</a>"
    assert reason_of(body) == "too_many_elements"


def test_notifications_in_a_foreign_namespace_are_refused() -> None:
    """A notifications element outside the outbound namespace is refused as wrong_namespace."""
    assert reason_of(message().replace(OUT_NS.encode(), b"http://example.com/not-salesforce")) == "wrong_namespace"


def test_soap12_envelope_is_refused() -> None:
    """An Envelope in the SOAP 1.2 namespace is refused as wrong_namespace."""
    assert reason_of(message().replace(SOAP_NS.encode(), b"http://www.w3.org/2003/05/soap-envelope")) == (
        "wrong_namespace"
    )


def test_root_other_than_envelope_is_refused() -> None:
    """A body whose root is not a SOAP Envelope is refused as not_soap_envelope."""
    assert reason_of(b"<notifications/>") == "not_soap_envelope"


def test_envelope_without_body_is_refused() -> None:
    """An Envelope without a Body is refused as not_soap_envelope."""
    assert reason_of(f'<e:Envelope xmlns:e="{SOAP_NS}"><e:Header/></e:Envelope>'.encode()) == "not_soap_envelope"


@pytest.mark.parametrize("body", [b"", b"   ", b"<a>", b"not xml", b"<a></b>"])
def test_malformed_body_is_refused(body: bytes) -> None:
    """Empty or ill-formed bodies are refused as malformed_xml."""
    assert reason_of(body) == "malformed_xml"


def test_missing_organization_id_is_refused_by_name() -> None:
    """A message without OrganizationId is refused as missing_field, naming the field."""
    body = message().replace(f"<OrganizationId>{ORG15}</OrganizationId>".encode(), b"")
    with pytest.raises(InvalidMessage) as caught:
        TYPED.parse(body)
    assert (caught.value.reason, caught.value.detail) == ("missing_field", "OrganizationId is missing")


def test_org_id_not_starting_00d_is_refused() -> None:
    """An OrganizationId of another object type (001...) is refused as invalid_org_id."""
    assert reason_of(message(org="0015700000OPgOj")) == "invalid_org_id"


def test_wrong_checksum_is_refused() -> None:
    """An 18-character id whose checksum does not match is refused as invalid_id."""
    assert reason_of(message(headers=None, org=ORG15 + "AAA", url_org=ORG15)) == "invalid_id"
    bad_notification = notification().replace(id18("04l57000017", 1), id18("04l57000017", 1)[:15] + "ZZZ")
    assert reason_of(message(bad_notification)) == "invalid_id"


def test_org_id_differing_from_the_urls_is_refused() -> None:
    """An OrganizationId other than the one the URLs end with is refused as org_mismatch."""
    assert reason_of(message(url_org="00D1I000003qqqE")) == "org_mismatch"


def test_partner_url_alone_differing_is_refused() -> None:
    """The PartnerUrl is cross-checked too, not only the EnterpriseUrl."""
    body = message().replace(b"/u/42.0/" + ORG15.encode(), b"/u/42.0/00D1I000003qqqE")
    assert reason_of(body) == "org_mismatch"


def test_other_prefixes_and_default_namespaces_parse_alike() -> None:
    """Namespaces are matched by URI: other prefixes, default namespaces and an inherited xsi:type prefix."""
    expected = TYPED.parse(message())
    variant = (
        f'<Envelope xmlns="{SOAP_NS}" xmlns:i="{XSI_NS}" xmlns:obj="{SF_NS}"><Body>'
        f'<o:notifications xmlns:o="{OUT_NS}">'
        f"<o:OrganizationId>{ORG15}</o:OrganizationId><o:ActionId>04k57000000TOUIAA4</o:ActionId>"
        '<o:SessionId i:nil="true"/>'
        f"<o:EnterpriseUrl>https://eu4.salesforce.com/services/Soap/c/42.0/{ORG15}</o:EnterpriseUrl>"
        f"<o:PartnerUrl>https://eu4.salesforce.com/services/Soap/u/42.0/{ORG15}</o:PartnerUrl>"
        f"<o:Notification><o:Id>{id18('04l57000017', 1)}</o:Id>"
        f'<o:sObject i:type="obj:Account"><Id xmlns="{SF_NS}">{id18("0015700000", 1)}</Id>'
        f'<Name xmlns="{SF_NS}">Acme</Name></o:sObject></o:Notification>'
        "</o:notifications></Body></Envelope>"
    ).encode()
    assert TYPED.parse(variant) == expected


def test_unknown_extra_elements_are_tolerated() -> None:
    """Unknown elements in the SOAP Header, among the headers and in a Notification are ignored."""
    body = message(
        notification().replace("<Notification>", "<Notification><Priority>high</Priority>"),
        headers=None,
    )
    body = body.replace(
        b"<soapenv:Body>", b"<soapenv:Header><x:Trace xmlns:x='urn:x'>1</x:Trace></soapenv:Header><soapenv:Body>"
    )
    body = body.replace(b"<ActionId>", b"<ApiVersion>61.0</ApiVersion><x:y xmlns:x='urn:x'><z/></x:y><ActionId>")
    assert TYPED.parse(body) == TYPED.parse(message())


def test_reordered_elements_and_whitespace_are_tolerated() -> None:
    """Headers in reverse order, Id after sObject and padded ids parse like Salesforce's layout."""
    headers = (
        f"<PartnerUrl>https://eu4.salesforce.com/services/Soap/u/42.0/{ORG15}</PartnerUrl>"
        f"<EnterpriseUrl> https://eu4.salesforce.com/services/Soap/c/42.0/{ORG15} </EnterpriseUrl>"
        "<SessionId xsi:nil='true'/><ActionId>\n 04k57000000TOUIAA4\n</ActionId>"
        f"<OrganizationId>  {ORG15}\n</OrganizationId>"
    )
    original = notification()
    id_element = f"<Id>{id18('04l57000017', 1)}</Id>"
    swapped = original.replace(id_element, "").replace("</sObject>", f"</sObject> {id_element}")
    assert TYPED.parse(message(swapped, headers=headers)) == TYPED.parse(message())


def test_duplicate_organization_id_is_refused() -> None:
    """Two OrganizationId elements are ambiguous and refused as duplicate_element."""
    body = message().replace(b"<ActionId>", f"<OrganizationId>{ORG15}</OrganizationId><ActionId>".encode())
    assert reason_of(body) == "duplicate_element"


def test_sobject_without_type_is_refused() -> None:
    """An sObject without xsi:type names no object and is refused as missing_field."""
    assert reason_of(message(notification().replace('xsi:type="sf:Account" ', ""))) == "missing_field"


def test_sobject_type_with_undeclared_prefix_is_refused() -> None:
    """An xsi:type whose prefix is not declared is refused as invalid_object_type."""
    assert reason_of(message(notification().replace("sf:Account", "zz:Account"))) == "invalid_object_type"


def test_value_not_matching_its_wsdl_type_is_refused_without_the_value() -> None:
    """A double that is not a number is refused as invalid_field_value, naming field and type only."""
    fields = "<sf:Discount__c>lots-of-money</sf:Discount__c>"
    body = message(notification(fields=fields, object_name="DiscountRule__c"))
    with pytest.raises(InvalidMessage) as caught:
        TYPED.parse(body)
    assert caught.value.reason == "invalid_field_value"
    assert caught.value.detail == "DiscountRule__c.Discount__c is not a valid double"


def test_schema_catches_structure_the_reader_ignores() -> None:
    """A URL that is not http(s) fails the envelope schema; the detail does not quote it."""
    body = message().replace(b"https://eu4.salesforce.com/services/Soap/c", b"ftp://eu4.salesforce.com/services/Soap/c")
    with pytest.raises(InvalidMessage) as caught:
        TYPED.parse(body)
    assert caught.value.reason == "schema_violation"
    assert "EnterpriseUrl" in caught.value.detail
    assert "ftp" not in caught.value.detail


def test_session_id_with_content_under_nil_is_refused_without_quoting_it() -> None:
    """A nil SessionId that has content breaks the schema; the error does not carry the session id."""
    body = message().replace(b"<SessionId>", b'<SessionId xsi:nil="true">')
    with pytest.raises(InvalidMessage) as caught:
        TYPED.parse(body)
    assert caught.value.reason == "schema_violation"
    assert "SECRET-SESSION" not in f"{caught.value!s} {caught.value!r}"


def test_session_id_is_never_kept() -> None:
    """The SessionId appears in neither the parsed message nor its events."""
    body = sample("contact_2_notifications.xml").replace(b"REDACTED", b"Live.Session.Secret-7Hx2")
    parsed = TYPED.parse(body)
    events = to_events(parsed, CONNECTION, RECEIVED_AT)
    rendered = repr(parsed) + str(parsed) + repr(events) + orjson.dumps([e.structured() for e in events]).decode()
    assert "Live.Session.Secret" not in rendered


def test_utf16_body_parses_like_utf8() -> None:
    """A UTF-16 encoded message (with BOM) parses to the same message."""
    utf8 = sample("contact_2_notifications.xml")
    assert TYPED.parse(utf8.decode().encode("utf-16")) == TYPED.parse(utf8)


def test_events_follow_the_pinned_shape() -> None:
    """One event per notification, with the pinned attributes, key and data sections."""
    parsed = TYPED.parse(sample("discount_rule_custom_object.xml"))
    (event,) = to_events(parsed, CONNECTION, RECEIVED_AT)
    assert (event.type, event.id, event.organization_id) == (OUTBOUND_MESSAGE, "04l570000176YSmAAM", ORG)
    assert (event.object, event.subject) == ("DiscountRule__c", "a025700000OPgOjAAL")
    assert event.time == "2018-05-04T11:35:40.000Z"
    assert event.key == f"{ORG}:a025700000OPgOjAAL"
    assert event.source == f"/salesforce/orgs/{ORG}"
    assert event.data == {
        "organization_id": ORG,
        "connection": {"connection_id": "acme-prod", "integration": "salesforce"},
        "object": "DiscountRule__c",
        "record_id": "a025700000OPgOjAAL",
        "fields": parsed.notifications[0].fields,
        "received_at": RECEIVED_AT,
        "outbound_message": {
            "action_id": "04k57000000TOUIAA4",
            "notification_id": "04l570000176YSmAAM",
            "enterprise_url": "https://eu4.salesforce.com/services/Soap/c/42.0/00DD0000000muCU",
            "partner_url": "https://eu4.salesforce.com/services/Soap/u/42.0/00DD0000000muCU",
        },
    }


def test_event_time_falls_back_to_receipt_time() -> None:
    """Without a LastModifiedDate the event time is the receipt time."""
    events = to_events(UNTYPED.parse(sample("contact_2_notifications.xml")), CONNECTION, RECEIVED_AT)
    assert [event.time for event in events] == [RECEIVED_AT, RECEIVED_AT]


def test_untyped_last_modified_date_is_normalized_for_the_event_time() -> None:
    """An untyped LastModifiedDate with an offset still gives a UTC event time; the field stays as sent."""
    body = message(notification(fields="<sf:LastModifiedDate>2018-05-04T13:35:40+02:00</sf:LastModifiedDate>"))
    (event,) = to_events(UNTYPED.parse(body), CONNECTION, RECEIVED_AT)
    assert event.time == "2018-05-04T11:35:40.000Z"
    assert event.data["fields"]["LastModifiedDate"] == "2018-05-04T13:35:40+02:00"


def test_event_without_record_id_is_keyed_by_object() -> None:
    """A notification without a record Id is keyed by org and object, and has no subject."""
    body = message(notification().replace(f"<sf:Id>{id18('0015700000', 1)}</sf:Id>", ""))
    (event,) = to_events(TYPED.parse(body), CONNECTION, RECEIVED_AT)
    assert (event.key, event.subject) == (f"{ORG}:Account", None)


def _outcome(body: bytes) -> OutboundMessage | InvalidMessage:
    try:
        return TYPED.parse(body)
    except InvalidMessage as exc:
        return exc


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_give_a_message_or_invalid_message(body: bytes) -> None:
    """Any bytes at all end in an OutboundMessage or an InvalidMessage, never another exception."""
    assert isinstance(_outcome(body), OutboundMessage | InvalidMessage)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(SAMPLE_NAMES),
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.binary(max_size=8), st.integers(0, 8)), max_size=6),
)
def test_mutated_samples_give_a_message_or_invalid_message(name: str, edits: list[tuple[float, bytes, int]]) -> None:
    """Real samples with bytes replaced, inserted or cut still end in a message or an InvalidMessage."""
    body = sample(name)
    for where, insert, cut in edits:
        at = int(where * len(body))
        body = body[:at] + insert + body[at + cut :]
    assert isinstance(_outcome(body), OutboundMessage | InvalidMessage)


# Text of any characters XML can carry, escaped as a sender must.
xml_text = st.text(st.characters(blacklist_categories=["Cs", "Cc"]) | st.sampled_from("\t\n<>&'\""), max_size=40).map(
    lambda text: text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
)
typed_values = st.one_of(
    xml_text, st.sampled_from(["", "1e400", "NaN", "-0", "true", "2024-02-30T25:00:00Z", "2024-01-01T00:00:00Z"])
)
TYPED_FIELDS = ("Discount__c", "IsDeleted", "CreatedDate", "LastModifiedDate", "ContractTerm__c", "Id", "Name")
HEADER_NAMES = ("OrganizationId", "ActionId", "EnterpriseUrl", "PartnerUrl")
any_fields = st.lists(
    st.tuples(st.sampled_from(TYPED_FIELDS), typed_values, st.booleans()), max_size=6, unique_by=lambda field: field[0]
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    any_fields,
    st.sampled_from(["DiscountRule__c", "Account", "Contact", "x", "sf:", "1Bad"]),
    st.just({}) | st.dictionaries(st.sampled_from(HEADER_NAMES), xml_text),
)
def test_messages_with_any_field_values_end_in_events_or_invalid_message(
    fields: list[tuple[str, str, bool]], object_name: str, header_values: dict[str, str]
) -> None:
    """Typed and untyped fields, object names and header values of any text: events or InvalidMessage."""
    field_xml = "".join(
        f'<sf:{name} xsi:nil="true"/>' if nil else f"<sf:{name}>{value}</sf:{name}>" for name, value, nil in fields
    )
    body = message(notification(fields=field_xml, object_name=object_name))
    for name, value in header_values.items():
        start, end = body.index(f"<{name}>".encode()), body.index(f"</{name}>".encode())
        body = body[: start + len(name) + 2] + value.encode() + body[end:]
    try:
        events = to_events(TYPED.parse(body), CONNECTION, RECEIVED_AT)
    except InvalidMessage:
        return
    assert all(event.source == f"/salesforce/orgs/{ORG}" for event in events)


# --- bounds on namespaces and URLs (each was a CPU or memory denial of service) ---------------


def test_a_hundred_notifications_with_their_namespaces_pass_the_namespace_bound() -> None:
    """Each sObject declares its own prefix: 100 notifications are 100 declarations, and fine."""
    notifications = "".join(
        f'<Notification><Id>{id18("04l1I00000", n)}</Id><sObject xsi:type="sf:Account" '
        f'xmlns:sf="urn:sobject.enterprise.soap.sforce.com"><sf:Id>{id18("0011I00000", n)}</sf:Id>'
        "</sObject></Notification>"
        for n in range(100)
    )
    assert len(UNTYPED.parse(message(notifications)).notifications) == 100


def test_many_namespace_declarations_are_refused_before_validation() -> None:
    """100,000 declarations on the Envelope cost libxml2's schema validation 22 s: refused first."""
    declarations = "".join(f' xmlns:p{n}="urn:p"' for n in range(100_000))
    body = message().replace(b"<soapenv:Envelope ", f"<soapenv:Envelope{declarations} ".encode())
    started = time.monotonic()
    assert reason_of(body) == "too_many_namespaces"
    assert time.monotonic() - started < 5


def test_a_long_namespace_name_is_refused() -> None:
    """A 400 KB namespace on 10,000 elements cost 9 s and 4 GB in validation: refused first."""
    long_name = "urn:" + "u" * 400_000
    body = message().replace(
        f'<notifications xmlns="{OUT_NS}">'.encode(),
        f'<notifications xmlns="{OUT_NS}" xmlns:x="{long_name}">'.encode() + b"<x:a/>" * 10_000,
    )
    assert reason_of(body) == "namespace_too_long"


def test_an_overlong_url_is_refused_before_it_is_cached() -> None:
    """URLs are checked once per org and cached: one of megabytes is refused instead."""
    url = f"https://eu4.salesforce.com/services/Soap/c/42.0/{'x' * 5000}/{ORG15}"
    headers = (
        f"<OrganizationId>{ORG15}</OrganizationId><ActionId>04k57000000TOUIAA4</ActionId>"
        f"<SessionId>s</SessionId><EnterpriseUrl>{url}</EnterpriseUrl>"
        f"<PartnerUrl>https://eu4.salesforce.com/services/Soap/u/42.0/{ORG15}</PartnerUrl>"
    )
    assert reason_of(message(headers=headers)) == "invalid_field_value"
