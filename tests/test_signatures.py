"""Standard Webhooks signatures and terapi's body HMAC, checked with real HMACs."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from starlette.datastructures import Headers

from receiver.errors import ConfigurationError, Unauthenticated
from receiver.signatures import (
    parse_webhook_secret,
    sign_standard_webhook,
    sign_terapi,
    verify_standard_webhook,
    verify_terapi_signature,
)

KEY = b"k" * 24
OTHER_KEY = b"o" * 24
SECRET = "whsec_" + base64.b64encode(KEY).decode()
NOW = 1_750_000_000
TOLERANCE_S = 300
BODY = b'{"channel": "/event/Low_Ink__e", "data": {"payload": {}}}'
TERAPI_SECRET = "terapi-webhook-secret"


def signature(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The v1 signature computed here, independently of the module under test."""
    digest = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def webhook_headers(signature_header: str, *, webhook_id: str = "msg_1", timestamp: int = NOW) -> dict[str, str]:
    return {"webhook-id": webhook_id, "webhook-timestamp": str(timestamp), "webhook-signature": signature_header}


def verify(headers: dict[str, str] | Headers, body: bytes = BODY, keys: tuple[bytes, ...] = (KEY,)) -> str:
    return verify_standard_webhook(headers, body, keys, tolerance_s=TOLERANCE_S, now=NOW)


def reason_of(excinfo: pytest.ExceptionInfo[Unauthenticated]) -> str:
    return excinfo.value.reason


# --- secrets -------------------------------------------------------------------------------


def test_whsec_secret_gives_its_key_bytes() -> None:
    """whsec_<base64> decodes to the raw HMAC key."""
    assert parse_webhook_secret(SECRET) == KEY


def test_whsec_secret_without_padding_is_accepted() -> None:
    """A secret that lost its '=' padding still gives the same key."""
    key = b"x" * 20
    assert parse_webhook_secret("whsec_" + base64.b64encode(key).decode().rstrip("=")) == key


@pytest.mark.parametrize(
    "secret",
    [
        base64.b64encode(KEY).decode(),
        "whsec_not*base64*at*all!",
        "whsec_" + base64.b64encode(b"short").decode(),
        "whsec_",
    ],
    ids=["no-prefix", "not-base64", "too-short", "empty"],
)
def test_bad_secret_is_a_configuration_error_that_quotes_no_secret(secret: str) -> None:
    """A malformed secret is refused at start-up and the message holds none of it."""
    with pytest.raises(ConfigurationError) as excinfo:
        parse_webhook_secret(secret)
    body_of_secret = secret.removeprefix("whsec_")
    assert not body_of_secret or body_of_secret not in str(excinfo.value)


# --- Standard Webhooks ---------------------------------------------------------------------


def test_published_test_vector_is_reproduced() -> None:
    """The signing matches the Standard Webhooks reference libraries' test vector."""
    key = parse_webhook_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    signed = sign_standard_webhook(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert signed == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_valid_signature_returns_the_webhook_id() -> None:
    """A body signed with the configured key is accepted and its webhook-id returned."""
    assert verify(webhook_headers(signature(KEY, "msg_1", NOW, BODY))) == "msg_1"


def test_sign_standard_webhook_matches_an_independent_hmac() -> None:
    """sign_standard_webhook computes HMAC-SHA256 of 'id.timestamp.body' in base64."""
    assert sign_standard_webhook(KEY, "msg_1", NOW, BODY) == signature(KEY, "msg_1", NOW, BODY)


def test_wrong_secret_is_a_bad_signature() -> None:
    """A signature made with another key is refused."""
    with pytest.raises(Unauthenticated) as excinfo:
        verify(webhook_headers(signature(OTHER_KEY, "msg_1", NOW, BODY)))
    assert reason_of(excinfo) == "bad_signature"


def test_rotated_secret_matches_the_second_key() -> None:
    """During a rotation any configured key may have signed the body."""
    headers = webhook_headers(signature(KEY, "msg_1", NOW, BODY))
    assert verify(headers, keys=(OTHER_KEY, KEY)) == "msg_1"


def test_one_matching_signature_among_several_is_enough() -> None:
    """The header may carry several space-separated signatures; one match suffices."""
    header = " ".join([signature(OTHER_KEY, "msg_1", NOW, BODY), "v1a,c2lnbmVk", signature(KEY, "msg_1", NOW, BODY)])
    assert verify(webhook_headers(header)) == "msg_1"


def test_unknown_versions_and_undecodable_entries_do_not_match() -> None:
    """Entries that are not v1 base64 are skipped, so they alone never authenticate."""
    good = signature(KEY, "msg_1", NOW, BODY).removeprefix("v1,")
    with pytest.raises(Unauthenticated) as excinfo:
        verify(webhook_headers(f"v2,{good} v1,!!!not-base64 v1a,{good}"))
    assert reason_of(excinfo) == "bad_signature"


def test_no_keys_configured_is_a_bad_signature() -> None:
    """With no secret for the sender nothing can match."""
    with pytest.raises(Unauthenticated) as excinfo:
        verify(webhook_headers(signature(KEY, "msg_1", NOW, BODY)), keys=())
    assert reason_of(excinfo) == "bad_signature"


def test_tampered_body_is_a_bad_signature() -> None:
    """Changing one byte of the body breaks the signature."""
    headers = webhook_headers(signature(KEY, "msg_1", NOW, BODY))
    with pytest.raises(Unauthenticated) as excinfo:
        verify(headers, body=BODY.replace(b"Low_Ink", b"Low_Inc"))
    assert reason_of(excinfo) == "bad_signature"


def test_changed_webhook_id_is_a_bad_signature() -> None:
    """The webhook-id is signed: a replay under a fresh id is refused."""
    headers = webhook_headers(signature(KEY, "msg_1", NOW, BODY), webhook_id="msg_2")
    with pytest.raises(Unauthenticated) as excinfo:
        verify(headers)
    assert reason_of(excinfo) == "bad_signature"


def test_stale_timestamp_is_refused() -> None:
    """A timestamp older than the tolerance is refused even with a good signature."""
    sent_at = NOW - TOLERANCE_S - 1
    with pytest.raises(Unauthenticated) as excinfo:
        verify(webhook_headers(signature(KEY, "msg_1", sent_at, BODY), timestamp=sent_at))
    assert reason_of(excinfo) == "stale_timestamp"


def test_future_timestamp_is_refused() -> None:
    """A timestamp further ahead than the tolerance is refused too."""
    sent_at = NOW + TOLERANCE_S + 1
    with pytest.raises(Unauthenticated) as excinfo:
        verify(webhook_headers(signature(KEY, "msg_1", sent_at, BODY), timestamp=sent_at))
    assert reason_of(excinfo) == "future_timestamp"


@pytest.mark.parametrize("offset", [-TOLERANCE_S, TOLERANCE_S])
def test_timestamp_at_the_edge_of_the_tolerance_is_accepted(offset: int) -> None:
    """The window includes its bounds, in both directions."""
    sent_at = NOW + offset
    assert verify(webhook_headers(signature(KEY, "msg_1", sent_at, BODY), timestamp=sent_at)) == "msg_1"


@pytest.mark.parametrize("timestamp", ["soon", "1.75e9", "-5", "³", "9" * 40])
def test_timestamp_that_is_not_integer_seconds_is_invalid(timestamp: str) -> None:
    """Only plain decimal seconds are a timestamp."""
    headers = webhook_headers(signature(KEY, "msg_1", NOW, BODY))
    headers["webhook-timestamp"] = timestamp
    with pytest.raises(Unauthenticated) as excinfo:
        verify(headers)
    assert reason_of(excinfo) == "invalid_timestamp"


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_is_reported_as_such(missing: str) -> None:
    """Each of the three headers is required."""
    headers = webhook_headers(signature(KEY, "msg_1", NOW, BODY))
    del headers[missing]
    with pytest.raises(Unauthenticated) as excinfo:
        verify(headers)
    assert reason_of(excinfo) == "missing_signature_headers"


def test_starlette_headers_are_looked_up_case_insensitively() -> None:
    """Headers as a Starlette request holds them, sent in any case, verify."""
    headers = Headers(
        raw=[
            (b"Webhook-Id", b"msg_1"),
            (b"WEBHOOK-TIMESTAMP", str(NOW).encode()),
            (b"Webhook-Signature", signature(KEY, "msg_1", NOW, BODY).encode()),
        ]
    )
    assert verify(headers) == "msg_1"


def test_plain_dict_with_capitalised_keys_verifies() -> None:
    """A hand-written dict (replay, tests) need not lower-case its keys."""
    headers = {
        "Webhook-Id": "msg_1",
        "Webhook-Timestamp": str(NOW),
        "Webhook-Signature": signature(KEY, "msg_1", NOW, BODY),
    }
    assert verify(headers) == "msg_1"


def test_errors_never_echo_the_signature() -> None:
    """The detail of a refusal does not quote what the sender offered."""
    offered = signature(OTHER_KEY, "msg_1", NOW, BODY)
    with pytest.raises(Unauthenticated) as excinfo:
        verify(webhook_headers(offered))
    assert offered.removeprefix("v1,") not in excinfo.value.detail


# --- terapi --------------------------------------------------------------------------------


def terapi_hex(body: bytes, secret: str = TERAPI_SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize("header", ["X-Terapi-Hmac-Sha256", "X-Nango-Hmac-Sha256"])
def test_terapi_hex_hmac_is_accepted_under_either_header_name(header: str) -> None:
    """terapi's header and the upstream Nango name both carry the hex HMAC of the body."""
    verify_terapi_signature(Headers({header: terapi_hex(BODY)}), BODY, TERAPI_SECRET)


def test_terapi_upper_case_hex_is_accepted() -> None:
    """Hex digits are case-free."""
    verify_terapi_signature({"x-terapi-hmac-sha256": terapi_hex(BODY).upper()}, BODY, TERAPI_SECRET)


def test_sign_terapi_matches_an_independent_hmac() -> None:
    """sign_terapi is the hex HMAC-SHA256 of the raw body."""
    assert sign_terapi(TERAPI_SECRET, BODY) == terapi_hex(BODY)


def test_terapi_wrong_secret_is_a_bad_signature() -> None:
    """An HMAC made with another secret is refused."""
    with pytest.raises(Unauthenticated) as excinfo:
        verify_terapi_signature({"x-terapi-hmac-sha256": terapi_hex(BODY, "other")}, BODY, TERAPI_SECRET)
    assert reason_of(excinfo) == "bad_signature"


def test_terapi_tampered_body_is_a_bad_signature() -> None:
    """The HMAC covers every byte of the body."""
    with pytest.raises(Unauthenticated) as excinfo:
        verify_terapi_signature({"x-terapi-hmac-sha256": terapi_hex(BODY)}, BODY + b" ", TERAPI_SECRET)
    assert reason_of(excinfo) == "bad_signature"


def test_terapi_non_hex_signature_is_a_bad_signature() -> None:
    """A header that is not hex cannot match."""
    with pytest.raises(Unauthenticated) as excinfo:
        verify_terapi_signature({"x-terapi-hmac-sha256": "zz-not-hex"}, BODY, TERAPI_SECRET)
    assert reason_of(excinfo) == "bad_signature"


def test_terapi_missing_header_is_reported_as_such() -> None:
    """Without either header the request is unauthenticated."""
    with pytest.raises(Unauthenticated) as excinfo:
        verify_terapi_signature({"content-type": "application/json"}, BODY, TERAPI_SECRET)
    assert reason_of(excinfo) == "missing_signature_headers"


def test_terapi_empty_secret_is_a_configuration_error() -> None:
    """An empty secret would let anyone sign, so it is refused outright."""
    with pytest.raises(ConfigurationError):
        verify_terapi_signature({"x-terapi-hmac-sha256": terapi_hex(BODY, "")}, BODY, "")
