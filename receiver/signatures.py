"""Proving that a JSON push is genuine: Standard Webhooks signatures and terapi's body HMAC.

Both checks run on the raw request bytes before anything parses them, so a forged body never
reaches the JSON parser. Every comparison goes through ``hmac.compare_digest`` so the time it
takes says nothing about how much of a guess was right. Error details name the check that
failed, never a secret, a signature or a payload value.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from pydantic import SecretStr

from receiver.errors import ConfigurationError, Unauthenticated

WEBHOOK_SECRET_PREFIX: Final = "whsec_"  # noqa: S105 -- the format's prefix, not a secret
#: Shorter keys are guessable; the Standard Webhooks specification recommends 24 to 64 bytes.
MIN_WEBHOOK_KEY_BYTES: Final = 16
SIGNATURE_VERSION: Final = "v1"

WEBHOOK_ID_HEADER: Final = "webhook-id"
WEBHOOK_TIMESTAMP_HEADER: Final = "webhook-timestamp"
WEBHOOK_SIGNATURE_HEADER: Final = "webhook-signature"
TERAPI_SIGNATURE_HEADER: Final = "x-terapi-hmac-sha256"
#: terapi is built on Nango and some deployments still send the upstream header name.
NANGO_SIGNATURE_HEADER: Final = "x-nango-hmac-sha256"


@dataclass(frozen=True, slots=True)
class WebhookKeys:
    """The HMAC keys of the configured ``whsec_`` secrets: shared, per org (18-character ids),
    per integration. Built once by the endpoints and by replay, which signs with them."""

    shared: list[bytes]
    by_org: dict[str, list[bytes]]
    by_integration: dict[str, list[bytes]]

    @classmethod
    def parse(
        cls,
        shared: Iterable[SecretStr],
        by_org: Mapping[str, Iterable[SecretStr]],
        by_integration: Mapping[str, Iterable[SecretStr]],
    ) -> WebhookKeys:
        """Raises ``ConfigurationError`` for a secret that is not a usable ``whsec_`` one."""
        return cls(
            _keys(shared),
            {org: _keys(secrets) for org, secrets in by_org.items()},
            {integration: _keys(secrets) for integration, secrets in by_integration.items()},
        )


def _keys(secrets: Iterable[SecretStr]) -> list[bytes]:
    return [parse_webhook_secret(secret.get_secret_value()) for secret in secrets]


def parse_webhook_secret(secret: str) -> bytes:
    """Return the HMAC key of a ``whsec_<base64>`` secret.

    Raises ``ConfigurationError`` when the prefix is missing, the rest is not base64, or the
    key is shorter than ``MIN_WEBHOOK_KEY_BYTES``; the message never quotes the secret.
    """
    candidate = secret.strip()
    if not candidate.startswith(WEBHOOK_SECRET_PREFIX):
        raise ConfigurationError("webhook secret must start with 'whsec_'", reason="invalid_webhook_secret")
    encoded = candidate[len(WEBHOOK_SECRET_PREFIX) :]
    # Secrets copied from some dashboards lose their '=' padding; the key is the same.
    encoded += "=" * (-len(encoded) % 4)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigurationError(
            "webhook secret is not valid base64 after 'whsec_'", reason="invalid_webhook_secret"
        ) from exc
    if len(key) < MIN_WEBHOOK_KEY_BYTES:
        raise ConfigurationError(
            f"webhook secret key is shorter than {MIN_WEBHOOK_KEY_BYTES} bytes", reason="invalid_webhook_secret"
        )
    return key


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Look ``name`` (lower case) up whatever the case of the mapping's keys."""
    value = headers.get(name)
    if value is not None:
        return value
    # Starlette's Headers and lower-cased dicts answer above; a plain dict written by hand
    # (replay, tests) may carry 'Webhook-Id'.
    for key, candidate in headers.items():
        if key.lower() == name:
            return candidate
    return None


def _standard_webhook_digest(key: bytes, webhook_id: str, timestamp: str, body: bytes) -> bytes:
    # Feeding the body separately avoids copying a body of several megabytes per key.
    mac = hmac.new(key, f"{webhook_id}.{timestamp}.".encode(), hashlib.sha256)
    mac.update(body)
    return mac.digest()


def sign_standard_webhook(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` entry ``v1,<base64>`` for one key (used by replay and tests)."""
    digest = _standard_webhook_digest(key, webhook_id, str(timestamp), body)
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def _offered_signatures(header: str) -> list[bytes]:
    """The decoded ``v1`` signatures of a header; other versions (``v1a`` asymmetric) are skipped."""
    offered = []
    for entry in header.split():
        version, _, encoded = entry.partition(",")
        if version != SIGNATURE_VERSION:
            continue
        try:
            offered.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    return offered


def verify_standard_webhook(
    headers: Mapping[str, str],
    body: bytes,
    keys: Sequence[bytes],
    *,
    tolerance_s: int,
    now: float | None = None,
) -> str:
    """Check a Standard Webhooks signature on the raw ``body`` and return the ``webhook-id``.

    ``keys`` holds every key currently valid for the sender (several during a rotation); one
    match with any offered ``v1`` signature is enough. The timestamp must lie within
    ``tolerance_s`` of ``now`` in both directions, which bounds how long a captured request
    can be replayed.

    Raises ``Unauthenticated`` with reason ``missing_signature_headers``,
    ``invalid_timestamp``, ``stale_timestamp``, ``future_timestamp`` or ``bad_signature``.
    """
    webhook_id = _header(headers, WEBHOOK_ID_HEADER)
    timestamp = _header(headers, WEBHOOK_TIMESTAMP_HEADER)
    signature = _header(headers, WEBHOOK_SIGNATURE_HEADER)
    if not webhook_id or not timestamp or not signature:
        raise Unauthenticated(
            "webhook-id, webhook-timestamp and webhook-signature headers are required",
            reason="missing_signature_headers",
        )
    timestamp = timestamp.strip()
    # isdigit() alone accepts non-ASCII digits such as '³', which int() then refuses.
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 12:
        raise Unauthenticated("webhook-timestamp is not integer seconds", reason="invalid_timestamp")
    current = time.time() if now is None else now
    sent_at = int(timestamp)
    if sent_at < current - tolerance_s:
        raise Unauthenticated("webhook-timestamp is too old", reason="stale_timestamp")
    if sent_at > current + tolerance_s:
        raise Unauthenticated("webhook-timestamp is in the future", reason="future_timestamp")
    offered = _offered_signatures(signature)
    if offered:
        for key in keys:
            expected = _standard_webhook_digest(key, webhook_id, timestamp, body)
            # No early exit inside the offered list: the work does not depend on which matched.
            matched = False
            for candidate in offered:
                matched |= hmac.compare_digest(expected, candidate)
            if matched:
                return webhook_id
    raise Unauthenticated("no webhook-signature matches a configured secret", reason="bad_signature")


def sign_terapi(secret: str, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``body`` that terapi sends in ``X-Terapi-Hmac-Sha256``."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_terapi_signature(headers: Mapping[str, str], body: bytes, secret: str) -> None:
    """Check terapi's hex HMAC-SHA256 of the raw ``body`` (``X-Terapi-Hmac-Sha256``, or the
    upstream ``X-Nango-Hmac-Sha256`` when the first is absent).

    Raises ``Unauthenticated`` with reason ``missing_signature_headers`` or ``bad_signature``,
    and ``ConfigurationError`` for an empty secret, with which anyone could sign.
    """
    if not secret:
        raise ConfigurationError("terapi webhook secret is empty", reason="invalid_webhook_secret")
    offered = _header(headers, TERAPI_SIGNATURE_HEADER)
    if offered is None:
        offered = _header(headers, NANGO_SIGNATURE_HEADER)
    if not offered:
        raise Unauthenticated("X-Terapi-Hmac-Sha256 header is required", reason="missing_signature_headers")
    try:
        candidate = bytes.fromhex(offered.strip())
    except ValueError as exc:
        raise Unauthenticated("X-Terapi-Hmac-Sha256 is not hex", reason="bad_signature") from exc
    expected = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, candidate):
        raise Unauthenticated("X-Terapi-Hmac-Sha256 does not match the body", reason="bad_signature")
