"""Outbound Message bodies for tests: the real samples, and generated ones of any size."""

from __future__ import annotations

from pathlib import Path

from receiver.ids import checksum

SAMPLES = Path(__file__).resolve().parent.parent / "examples" / "payloads"
SAMPLE_FILES = ("contact_2_notifications.xml", "account_null_field_omitted.xml", "discount_rule_custom_object.xml")
ORG15 = "00D1I000003qqqE"
ORG = ORG15 + checksum(ORG15)
SESSION_ID = "00D1I000003qqqE!AQ0AQLive.Session.Value-7Hx2"
NOTIFICATION_PREFIX = "04l1I00000"


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def id18(prefix: str, number: int) -> str:
    id15 = f"{prefix}{number:0{15 - len(prefix)}d}"
    return id15 + checksum(id15)


def outbound_message(
    count: int,
    *,
    org15: str = ORG15,
    url_org15: str | None = None,
    session_id: str = SESSION_ID,
    start: int = 0,
    object_name: str = "Contact",
    organization_element: str | None = None,
    notification_prefix: str = NOTIFICATION_PREFIX,
) -> bytes:
    """A Contact OM with ``count`` notifications numbered from ``start``.

    ``notification_prefix`` (10 characters) makes ids no earlier run used: a shared Redis keeps
    dedupe marks for 25 h, so fixed ids would be duplicates on the next run.
    """
    url_org = url_org15 or org15
    notifications = "".join(
        f"""
   <Notification>
    <Id>{id18(notification_prefix, start + i)}</Id>
    <sObject xsi:type="sf:{object_name}" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
     <sf:Id>{id18("0031I00000", start + i)}</sf:Id>
     <sf:LastName>Name {start + i}</sf:LastName>
    </sObject>
   </Notification>"""
        for i in range(count)
    )
    org_element = (
        organization_element if organization_element is not None else f"<OrganizationId>{org15}</OrganizationId>"
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"
 xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
 <soapenv:Body>
  <notifications xmlns="http://soap.sforce.com/2005/09/outbound">
   {org_element}
   <ActionId>04k1I000000bmsHQAQ</ActionId>
   <SessionId>{session_id}</SessionId>
   <EnterpriseUrl>https://na73.salesforce.com/services/Soap/c/41.0/{url_org}</EnterpriseUrl>
   <PartnerUrl>https://na73.salesforce.com/services/Soap/u/41.0/{url_org}</PartnerUrl>{notifications}
  </notifications>
 </soapenv:Body>
</soapenv:Envelope>""".encode()


def notification_ids(count: int, start: int = 0, *, notification_prefix: str = NOTIFICATION_PREFIX) -> set[str]:
    return {id18(notification_prefix, start + i) for i in range(count)}
