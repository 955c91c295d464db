"""The one place that turns outcomes and errors into HTTP answers.

Outbound Messages get SOAP 1.1: an ``Ack`` of ``true`` only when every notification is stored,
and a Fault otherwise (Salesforce retries anything that is not an Ack). JSON endpoints get
``{"accepted", "duplicates"}`` or RFC 9457 problem details.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

import orjson
from starlette.responses import Response

from receiver.errors import ReceiverError

SOAP_CONTENT_TYPE = "text/xml; charset=utf-8"
PROBLEM_CONTENT_TYPE = "application/problem+json"

_ACK = (
    b'<?xml version="1.0" encoding="UTF-8"?>'
    b'<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
    b"<soapenv:Body>"
    b'<notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>true</Ack></notificationsResponse>'
    b"</soapenv:Body></soapenv:Envelope>"
)
_FAULT = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
    "<soapenv:Body><soapenv:Fault>"
    "<faultcode>{code}</faultcode><faultstring>{reason}: {detail}</faultstring>"
    "</soapenv:Fault></soapenv:Body></soapenv:Envelope>"
)


def _retry_headers(error: ReceiverError) -> dict[str, str]:
    if error.retry_after_s is not None:
        return {"Retry-After": str(error.retry_after_s)}
    return {}


class _SoapAck(Response):
    """The Ack, every time the same bytes and headers: built once, copied per answer."""

    media_type = SOAP_CONTENT_TYPE
    _template = Response(_ACK, media_type=SOAP_CONTENT_TYPE).raw_headers

    def __init__(self) -> None:  # Response's own would render and encode the same headers again
        self.status_code = 200
        self.background = None
        self.body = _ACK
        self.raw_headers = list(self._template)  # a copy: middleware may add to a response's list


def soap_ack() -> Response:
    return _SoapAck()


def soap_fault(error: ReceiverError) -> Response:
    body = _FAULT.format(code=error.soap_fault_code, reason=escape(error.reason), detail=escape(error.detail))
    return Response(
        body.encode(), status_code=error.status, media_type=SOAP_CONTENT_TYPE, headers=_retry_headers(error)
    )


def accepted(accepted_count: int, duplicate_count: int) -> Response:
    return Response(
        orjson.dumps({"accepted": accepted_count, "duplicates": duplicate_count}), media_type="application/json"
    )


def problem(error: ReceiverError, instance: str | None = None) -> Response:
    body: dict[str, object] = {
        "type": f"https://github.com/salesforce-event-receiver/docs/errors#{error.reason}",
        "title": error.reason.replace("_", " "),
        "status": error.status,
        "detail": error.detail,
        "reason": error.reason,
        "retryable": error.retryable,
    }
    if instance is not None:
        body["instance"] = instance
    return Response(
        orjson.dumps(body), status_code=error.status, media_type=PROBLEM_CONTENT_TYPE, headers=_retry_headers(error)
    )
