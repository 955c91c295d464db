"""Field types from Salesforce Outbound Message WSDLs, and typing of the values sent.

Salesforce generates one WSDL per Outbound Message action. Its enterprise sObject schema
declares, for the action's object, every field the message may carry with its XSD type. The
message itself carries only text, so without the WSDL ``0.0`` and ``false`` stay strings; with
it they become ``0.0`` and ``False``, and date-times become one canonical ISO-8601 form.

The registry is keyed by object name only: the message names its object (``sf:Account``) but
not the WSDL it was generated from, and two actions on one object declare the same field types.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from lxml import etree

from receiver.errors import ConfigurationError, InvalidMessage
from receiver.event import utc_of

WSDL_NS: Final = "http://schemas.xmlsoap.org/wsdl/"
XSD_NS: Final = "http://www.w3.org/2001/XMLSchema"
SOBJECT_NS: Final = "urn:sobject.enterprise.soap.sforce.com"

#: Turns the text of one field into its typed value; raises ``InvalidMessage``.
Coercer = Callable[[str], Any]

_SOBJECT_BASE: Final = f"{{{SOBJECT_NS}}}sObject"
_WSDL_SUFFIXES: Final = (".wsdl", ".xml")
_EMPTY: Final[Mapping[str, Coercer]] = MappingProxyType({})

# XSD lexical forms, checked before Python's own parsers, which accept more than XSD does
# (underscores, Unicode digits, ISO week dates): a value Salesforce would never send is refused.
_DATETIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:Z|[+-][0-9]{2}:[0-9]{2})?"
)
_CANONICAL_UTC = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z")
_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})(?:Z|[+-][0-9]{2}:[0-9]{2})?")
_DOUBLE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_BOOLEANS: Final = {"true": True, "1": True, "false": False, "0": False}


def normalize_datetime(text: str) -> str:
    """Return an ``xsd:dateTime`` as UTC ISO-8601 with milliseconds, e.g. ``2017-05-02T11:53:53.000Z``.

    Offsets are converted to UTC; a value without a zone is taken as UTC, the zone Salesforce
    stores every date-time in. Sub-millisecond digits are kept (as microseconds) when present.
    Raises ``ValueError`` when ``text`` is not a valid ``xsd:dateTime``.
    """
    candidate = text.strip()
    if _CANONICAL_UTC.fullmatch(candidate):
        # Salesforce's own form: validate the calendar values, keep the text.
        datetime.fromisoformat(candidate)
        return candidate
    if not _DATETIME.fullmatch(candidate):
        raise ValueError("not an xsd:dateTime")
    moment = datetime.fromisoformat(candidate)
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else utc_of(moment)
    timespec = "milliseconds" if moment.microsecond % 1000 == 0 else "microseconds"
    return moment.replace(tzinfo=None).isoformat(timespec=timespec) + "Z"


def _to_date(text: str) -> str:
    match = _DATE.fullmatch(text.strip())
    if match is None:
        raise ValueError("not an xsd:date")
    year, month, day = (int(part) for part in match.groups())
    return date(year, month, day).isoformat()


def _to_float(text: str) -> float:
    candidate = text.strip()
    # INF and NaN are valid XSD doubles but cannot travel in JSON, and Salesforce never sends them.
    if not _DOUBLE.fullmatch(candidate):
        raise ValueError("not a finite xsd:double")
    return float(candidate)


def _to_int(text: str) -> int:
    candidate = text.strip()
    if not _INTEGER.fullmatch(candidate):
        raise ValueError("not an xsd integer")
    return int(candidate)


def _to_bool(text: str) -> bool:
    try:
        return _BOOLEANS[text.strip()]
    except KeyError:
        raise ValueError("not an xsd:boolean") from None


#: XSD built-in type (local name) -> converter; every other type keeps the text as sent.
_CONVERTERS: Final[Mapping[str, Callable[[str], Any]]] = MappingProxyType(
    {
        "dateTime": normalize_datetime,
        "date": _to_date,
        "boolean": _to_bool,
        "double": _to_float,
        "float": _to_float,
        "int": _to_int,
        "long": _to_int,
        "short": _to_int,
        "byte": _to_int,
        "integer": _to_int,
    }
)


def _coerce_checked(convert: Callable[[str], Any], object_name: str, field_name: str, xsd_type: str, text: str) -> Any:
    try:
        return convert(text)
    except ValueError:
        # ``from None``: the ValueError may quote the value, and details never carry payload values.
        raise InvalidMessage(
            f"{object_name}.{field_name} is not a valid {xsd_type}", reason="invalid_field_value"
        ) from None


@dataclass(frozen=True, slots=True)
class WsdlRegistry:
    """Field types per object, from the Outbound Message WSDLs of a directory.

    ``objects`` maps object name -> field name -> type: the local name for XSD built-ins
    (``dateTime``, ``double``), Clark notation for other types (``{urn:enterprise.soap.sforce.com}ID``).
    """

    objects: Mapping[str, Mapping[str, str]]
    _coercers: Mapping[str, Mapping[str, Coercer]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Built once so that typing a field on the hot path is one dict lookup and one call.
        coercers = {
            object_name: MappingProxyType(
                {
                    field_name: partial(_coerce_checked, _CONVERTERS[xsd_type], object_name, field_name, xsd_type)
                    for field_name, xsd_type in fields.items()
                    if xsd_type in _CONVERTERS
                }
            )
            for object_name, fields in self.objects.items()
        }
        object.__setattr__(self, "_coercers", MappingProxyType(coercers))

    @classmethod
    def empty(cls) -> WsdlRegistry:
        """A registry that knows no object: every value stays the string sent."""
        return cls(MappingProxyType({}))

    @classmethod
    def load(cls, directory: Path) -> WsdlRegistry:
        """Read every ``*.wsdl`` and ``*.xml`` file of ``directory``; empty when it does not exist.

        Raises ``ConfigurationError`` naming the file when one is unreadable, not well-formed or
        not a WSDL, or when two files give one field different types.
        """
        if not directory.exists():
            return cls.empty()
        if not directory.is_dir():
            raise ConfigurationError(f"WSDL directory {directory} is not a directory")
        objects: dict[str, dict[str, str]] = {}
        origins: dict[tuple[str, str], Path] = {}
        paths = sorted(path for path in directory.iterdir() if path.suffix.lower() in _WSDL_SUFFIXES)
        for path in paths:
            for object_name, fields in read_wsdl(path).items():
                known = objects.setdefault(object_name, {})
                for field_name, xsd_type in fields.items():
                    if known.get(field_name, xsd_type) != xsd_type:
                        raise ConfigurationError(
                            f"WSDL {path} types {object_name}.{field_name} as {xsd_type}, "
                            f"but {origins[object_name, field_name]} as {known[field_name]}"
                        )
                    known[field_name] = xsd_type
                    origins.setdefault((object_name, field_name), path)
        return cls(MappingProxyType({name: MappingProxyType(fields) for name, fields in objects.items()}))

    def knows(self, object_name: str) -> bool:
        """True when a registered WSDL declares ``object_name``."""
        return object_name in self.objects

    def coercers_for(self, object_name: str) -> Mapping[str, Coercer]:
        """The coercers of the typed fields of one object; empty for an unknown object."""
        return self._coercers.get(object_name, _EMPTY)

    def coerce(self, object_name: str, field_name: str, text: str) -> Any:
        """The typed value of one field: the text sent unless the WSDL gives it a typed XSD type.

        Raises ``InvalidMessage`` (reason ``invalid_field_value``), naming the field and its type
        but never the value, when the text does not parse as the declared type.
        """
        coercer = self._coercers.get(object_name, _EMPTY).get(field_name)
        return text if coercer is None else coercer(text)


_WSDL_PARSER: Final = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, remove_comments=True, remove_pis=True
)


def read_wsdl(path: Path) -> dict[str, dict[str, str]]:
    """Object name -> field name -> type for each complexType extending ``ens:sObject`` in ``path``.

    Prefixes are resolved through each element's namespace declarations, so a WSDL that binds
    other prefixes to the same namespaces reads the same. Raises ``ConfigurationError`` naming
    the file when it is unreadable, not well-formed, or not a WSDL.
    """
    try:
        root = etree.parse(str(path), _WSDL_PARSER).getroot()
    except (OSError, etree.XMLSyntaxError) as exc:
        raise ConfigurationError(f"WSDL {path} cannot be read: {exc}") from exc
    if root.tag != f"{{{WSDL_NS}}}definitions":
        raise ConfigurationError(f"WSDL {path} is not a WSDL 1.1 document (root {root.tag})")
    objects: dict[str, dict[str, str]] = {}
    for schema in root.iter(f"{{{XSD_NS}}}schema"):
        if schema.get("targetNamespace") != SOBJECT_NS:
            continue
        for complex_type in schema.iterchildren(f"{{{XSD_NS}}}complexType"):
            name = complex_type.get("name")
            extension = complex_type.find(f"{{{XSD_NS}}}complexContent/{{{XSD_NS}}}extension")
            if name is None or extension is None:
                continue
            if _resolve_qname(extension, extension.get("base"), path) != _SOBJECT_BASE:
                continue
            objects[name] = _declared_fields(extension, path)
    return objects


def _declared_fields(extension: etree._Element, path: Path) -> dict[str, str]:
    fields: dict[str, str] = {}
    for element in extension.iter(f"{{{XSD_NS}}}element"):
        name = element.get("name")
        if name is not None:
            fields[name] = _short_type(_declared_type(element, path))
    return fields


def _declared_type(element: etree._Element, path: Path) -> str:
    type_name = element.get("type")
    if type_name is not None:
        return _resolve_qname(element, type_name, path)
    # An inline simple type: its restriction base is the type its values take.
    restriction = element.find(f"{{{XSD_NS}}}simpleType/{{{XSD_NS}}}restriction")
    if restriction is None:
        return f"{{{XSD_NS}}}anyType"
    return _resolve_qname(restriction, restriction.get("base"), path)


def _resolve_qname(element: etree._Element, qname: str | None, path: Path) -> str:
    """Clark notation of a QName-valued attribute, resolved with the element's in-scope prefixes."""
    if not qname:
        raise ConfigurationError(f"WSDL {path} line {element.sourceline}: a type reference is empty")
    prefix, _, local = qname.strip().rpartition(":")
    namespace = element.nsmap.get(prefix or None)
    if namespace is None:
        if prefix:
            raise ConfigurationError(f"WSDL {path} line {element.sourceline}: prefix {prefix!r} is not declared")
        return local
    return f"{{{namespace}}}{local}"


def _short_type(clark: str) -> str:
    prefix = f"{{{XSD_NS}}}"
    return clark[len(prefix) :] if clark.startswith(prefix) else clark
