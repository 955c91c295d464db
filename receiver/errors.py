"""One exception root for everything the receiver refuses or fails to do.

Each error knows its HTTP status, its SOAP fault code (``Client`` when the sender is at
fault, ``Server`` when we are) and whether the sender should retry. One place, ``responses``,
turns them into SOAP Faults or problem+json bodies.
"""

from __future__ import annotations


class ReceiverError(Exception):
    """Root of the receiver's errors; ``reason`` is a short stable slug used in metrics."""

    status: int = 500
    reason: str = "internal_error"
    sender_at_fault: bool = False
    retryable: bool = True
    retry_after_s: int | None = None

    def __init__(self, detail: str, *, reason: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if reason is not None:
            self.reason = reason

    @property
    def soap_fault_code(self) -> str:
        return "soapenv:Client" if self.sender_at_fault else "soapenv:Server"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, reason={self.reason!r}, detail={self.detail!r})"


class ClientError(ReceiverError):
    """The request itself is wrong: resending it unchanged will not help."""

    sender_at_fault = True
    retryable = False


class InvalidMessage(ClientError):
    status = 400
    reason = "invalid_message"


class Unauthenticated(ClientError):
    status = 401
    reason = "unauthenticated"


class Forbidden(ClientError):
    status = 403
    reason = "forbidden"


class UnknownOrg(Forbidden):
    reason = "unknown_org"


class UnknownIntegration(ClientError):
    status = 404
    reason = "unknown_integration"


class PayloadTooLarge(ClientError):
    status = 413
    reason = "payload_too_large"


class EventTooLarge(PayloadTooLarge):
    """One event is larger than a Kafka request may be; resending cannot help."""

    reason = "event_too_large"


class RequestTimeout(ClientError):
    """The body, or the request head, did not arrive in time: a slow client must not hold the server."""

    status = 408
    reason = "request_timeout"


class ClientDisconnected(ClientError):
    """The client hung up before its body was whole (a Salesforce timeout, a dropped link).

    Nothing was accepted and no answer can reach it; 499 is nginx's status for this, used in
    metrics and recordings only. Salesforce resends the message.
    """

    status = 499
    reason = "client_disconnected"


class HeadersTooLarge(ClientError):
    """Too many request headers, or too many bytes of them; refused before they are all held."""

    status = 431
    reason = "headers_too_large"


class UnsupportedMediaType(ClientError):
    status = 415
    reason = "unsupported_media_type"


class Overloaded(ReceiverError):
    """Too much work in flight; the sender should come back later."""

    status = 503
    reason = "overloaded"
    sender_at_fault = False
    retryable = True

    def __init__(self, detail: str, *, retry_after_s: int = 1, reason: str | None = None) -> None:
        super().__init__(detail, reason=reason)
        self.retry_after_s = retry_after_s


class OrgOverloaded(Overloaded):
    """One org has ``max_requests_in_flight_per_org`` requests being published: it waits its turn."""

    status = 429
    reason = "org_overloaded"


class PublishFailed(ReceiverError):
    """The sink did not confirm every event; nothing may be acknowledged."""

    status = 503
    reason = "publish_failed"


class PublishTimeout(PublishFailed):
    reason = "publish_timeout"


class ShuttingDown(ReceiverError):
    """The shutdown deadline (``RECEIVER_SHUTDOWN_TIMEOUT_S``) cut the request off: not acked, to be resent."""

    status = 503
    reason = "shutting_down"
    retry_after_s = 5


class DuplicateInFlight(ReceiverError):
    """Another copy of the same event is being published right now; retry shortly."""

    status = 503
    reason = "duplicate_in_flight"
    retry_after_s = 1


class ConfigurationError(ReceiverError):
    """A setting or configuration file is unusable; raised at start-up only."""

    reason = "configuration_error"
    retryable = False
