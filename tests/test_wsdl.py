"""The WSDL registry: field types from Salesforce-generated Outbound Message WSDLs, and value typing."""

from __future__ import annotations

from pathlib import Path

import pytest

from receiver.errors import ConfigurationError, InvalidMessage
from receiver.wsdl import WsdlRegistry, normalize_datetime

WSDL_DIR = Path(__file__).resolve().parents[1] / "examples" / "wsdl"
ENTERPRISE_ID = "{urn:enterprise.soap.sforce.com}ID"

REGISTRY = WsdlRegistry.load(WSDL_DIR)


def wsdl_text(name: str) -> str:
    return (WSDL_DIR / name).read_text()


def test_sample_wsdls_declare_their_objects_fields_and_types() -> None:
    """Both sample WSDLs load: each sObject extension maps its fields to their XSD types."""
    rule = REGISTRY.objects["DiscountRule__c"]
    assert dict(rule) == {
        "ContractTerm__c": "string",
        "CreatedDate": "dateTime",
        "Discount__c": "double",
        "IsDeleted": "boolean",
        "LastModifiedDate": "dateTime",
        "Name": "string",
        "Price__c": "double",
        "Product__c": ENTERPRISE_ID,
        "Type__c": "string",
    }
    account = REGISTRY.objects["Account"]
    assert account["BillingCity"] == "string"
    assert account["PartnerUserAccount__c"] == ENTERPRISE_ID
    assert REGISTRY.knows("Account")
    assert not REGISTRY.knows("Contact")


def test_missing_directory_gives_an_empty_registry(tmp_path: Path) -> None:
    """A WSDL directory that does not exist is no error: nothing is typed."""
    registry = WsdlRegistry.load(tmp_path / "absent")
    assert registry == WsdlRegistry.empty()
    assert dict(registry.objects) == {}


def test_empty_registry_keeps_strings() -> None:
    """An object the registry does not know keeps every value as the string sent."""
    assert WsdlRegistry.empty().coerce("DiscountRule__c", "Discount__c", " 0.0 ") == " 0.0 "


def test_malformed_wsdl_names_the_file(tmp_path: Path) -> None:
    """A WSDL that is not well-formed XML raises ConfigurationError naming the file."""
    broken = tmp_path / "broken.wsdl"
    broken.write_text(wsdl_text("account.wsdl")[:-200])
    with pytest.raises(ConfigurationError, match=r"broken\.wsdl"):
        WsdlRegistry.load(tmp_path)


def test_xml_that_is_not_a_wsdl_names_the_file(tmp_path: Path) -> None:
    """Well-formed XML whose root is not wsdl:definitions raises ConfigurationError naming the file."""
    (tmp_path / "notes.xml").write_text("<notes/>")
    with pytest.raises(ConfigurationError, match=r"notes\.xml"):
        WsdlRegistry.load(tmp_path)


def test_other_files_in_the_directory_are_ignored(tmp_path: Path) -> None:
    """Only *.wsdl and *.xml files are read: a README next to the WSDLs is harmless."""
    (tmp_path / "README.md").write_text("# not xml")
    (tmp_path / "account.wsdl").write_text(wsdl_text("account.wsdl"))
    assert set(WsdlRegistry.load(tmp_path).objects) == {"Account", "AggregateResult"}


def test_prefixes_are_resolved_by_namespace(tmp_path: Path) -> None:
    """A WSDL binding other prefixes to the same namespaces yields the same types."""
    text = (
        wsdl_text("discount_rule_custom_object.wsdl")
        .replace("xmlns:ens=", "xmlns:so=")
        .replace('"ens:', '"so:')
        .replace("xmlns:xsd=", "xmlns:x=")
        .replace('"xsd:', '"x:')
    )
    assert "ens:" not in text
    assert "xsd:" not in text
    (tmp_path / "renamed.wsdl").write_text(text)
    assert WsdlRegistry.load(tmp_path).objects["DiscountRule__c"] == REGISTRY.objects["DiscountRule__c"]


def test_conflicting_field_types_name_both_files(tmp_path: Path) -> None:
    """Two WSDLs typing one field differently raise ConfigurationError naming both files."""
    original = wsdl_text("discount_rule_custom_object.wsdl")
    (tmp_path / "a.wsdl").write_text(original)
    conflicting = original.replace(
        'name="Discount__c" nillable="true" minOccurs="0" type="xsd:double"',
        ('name="Discount__c" nillable="true" minOccurs="0" type="xsd:string"'),
    )
    assert conflicting != original
    (tmp_path / "b.wsdl").write_text(conflicting)
    with pytest.raises(ConfigurationError, match=r"b\.wsdl.*a\.wsdl"):
        WsdlRegistry.load(tmp_path)


@pytest.mark.parametrize(
    ("field", "text", "expected"),
    [
        ("CreatedDate", "2017-05-02T11:53:53.000Z", "2017-05-02T11:53:53.000Z"),
        ("CreatedDate", " 2017-05-02T13:53:53.250+02:00 ", "2017-05-02T11:53:53.250Z"),
        ("CreatedDate", "2017-05-02T11:53:53Z", "2017-05-02T11:53:53.000Z"),
        ("CreatedDate", "2017-05-02T11:53:53", "2017-05-02T11:53:53.000Z"),
        ("CreatedDate", "2017-05-02T11:53:53.123456-00:30", "2017-05-02T12:23:53.123456Z"),
        ("Discount__c", "0.0", 0.0),
        ("Discount__c", " 419 ", 419.0),
        ("Discount__c", "-1.5E3", -1500.0),
        ("IsDeleted", "false", False),
        ("IsDeleted", "true", True),
        ("IsDeleted", " 1 ", True),
        ("IsDeleted", "0", False),
        ("Name", " 244 Months ", " 244 Months "),
        ("Product__c", "01t57000006qVLRAA2", "01t57000006qVLRAA2"),
        ("Unknown__c", "0.0", "0.0"),
    ],
)
def test_values_take_their_declared_type(field: str, text: str, expected: object) -> None:
    """Each declared XSD type gives its Python value; strings, ids and unknown fields stay as sent."""
    value = REGISTRY.coerce("DiscountRule__c", field, text)
    assert value == expected
    assert type(value) is type(expected)


def test_integer_and_date_types_are_typed(tmp_path: Path) -> None:
    """int, long and short give ints; date gives YYYY-MM-DD, dropping a zone."""
    text = wsdl_text("discount_rule_custom_object.wsdl").replace(
        '<element name="Type__c" nillable="true" minOccurs="0" type="xsd:string"/>',
        '<element name="Count__c" type="xsd:int"/><element name="Big__c" type="xsd:long"/>'
        '<element name="Small__c" type="xsd:short"/><element name="Start__c" type="xsd:date"/>',
    )
    (tmp_path / "typed.wsdl").write_text(text)
    registry = WsdlRegistry.load(tmp_path)
    assert registry.coerce("DiscountRule__c", "Count__c", " 24 ") == 24
    assert registry.coerce("DiscountRule__c", "Big__c", "-9007199254740993") == -9007199254740993
    assert registry.coerce("DiscountRule__c", "Small__c", "+7") == 7
    assert registry.coerce("DiscountRule__c", "Start__c", "2017-05-02") == "2017-05-02"
    assert registry.coerce("DiscountRule__c", "Start__c", "2017-05-02+02:00") == "2017-05-02"
    with pytest.raises(InvalidMessage, match="Count__c is not a valid int"):
        registry.coerce("DiscountRule__c", "Count__c", "1_000")
    with pytest.raises(InvalidMessage, match="Start__c is not a valid date"):
        registry.coerce("DiscountRule__c", "Start__c", "2017-02-30")


@pytest.mark.parametrize(
    ("field", "text", "xsd_type"),
    [
        ("CreatedDate", "yesterday-at-noon", "dateTime"),
        ("CreatedDate", "2017-13-02T11:53:53.000Z", "dateTime"),
        ("CreatedDate", "2017-05-02", "dateTime"),
        ("Discount__c", "twelve-point-five", "double"),
        ("Discount__c", "INF", "double"),
        ("Discount__c", "", "double"),
        ("IsDeleted", "yes-please", "boolean"),
    ],
)
def test_values_not_of_their_type_are_refused_without_the_value(field: str, text: str, xsd_type: str) -> None:
    """A value that does not parse as its type raises invalid_field_value naming field and type, not value."""
    with pytest.raises(InvalidMessage) as caught:
        REGISTRY.coerce("DiscountRule__c", field, text)
    assert caught.value.reason == "invalid_field_value"
    assert caught.value.detail == f"DiscountRule__c.{field} is not a valid {xsd_type}"
    assert caught.value.__cause__ is None
    if text:
        assert text not in repr(caught.value)


def test_normalize_datetime_refuses_non_datetimes() -> None:
    """normalize_datetime raises ValueError for text that is not an xsd:dateTime."""
    with pytest.raises(ValueError, match="dateTime"):
        normalize_datetime("2017-05-02 11:53:53")


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_normalize_datetime_refuses_what_leaves_the_calendar_in_utc(text: str) -> None:
    """A valid xsd:dateTime that is before year 1 or after 9999 in UTC: ValueError, not OverflowError."""
    with pytest.raises(ValueError, match="out of range"):
        normalize_datetime(text)
