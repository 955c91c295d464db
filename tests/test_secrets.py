"""A full flow with known secrets, then a search for them everywhere the receiver writes.

A real ``sf-receiver serve`` process (debug logs, JSON) is given an Outbound Message token, a
Standard Webhooks secret, a terapi webhook secret and a terapi secret key (spoken to the terapi
stand-in), and is sent Outbound Messages carrying a realistic SessionId: accepted, from an
unknown org (quarantined), malformed, with a wrong token, in UTF-16, in CDATA; signed events,
refused events, a terapi forward. After a graceful stop, no secret, in any encoding, may be in
its log, in any file under its data directory (events, quarantine, recordings, gzipped or not,
bodies stored as base64 decoded), in /metrics, or in any answer it gave.
"""

from __future__ import annotations

import base64
import gzip
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from receiver.signatures import sign_standard_webhook, sign_terapi
from tests.conftest import EXAMPLE_ORG_MAP, EXAMPLE_WSDL_DIR
from tests.event_payloads import key_of, sample
from tests.om_payloads import ORG15, outbound_message
from tests.processes import running_receiver
from tests.terapi_standin import run_standin

OUTBOUND_TOKEN = "omtok-7Qm2vX9pL4sR8tK1wZ6yB3nC5dF0gH"
EVENT_SECRET = "whsec_" + base64.b64encode(b"known-event-secret-for-the-secrets-test").decode()
TERAPI_WEBHOOK_SECRET = "terapi-whk-9fJ2kL5mN8pQ1rS4tU7vW0xY3z"
TERAPI_SECRET_KEY = "sk-terapi-live-4e8d2c1b9a7f6e5d4c3b2a1f0e9d8c7b"
# The shape of a real one: the org id, "!", then a long token with dots and underscores.
SESSION_ID = (
    f"{ORG15}!AQ4AQHj7Yw2.mK9xT3vB_pR8sL1nQ6cF0dG5hJ2kZ4aE7iO9uY3tW6rP1qS8oN5mL2kJ9hG6fD3sA0zX7cV4bN1"
    "mQ8wE5rT2yU9iO6pA3sD0fG7hJ4kL1zX8cV5bN2m"
)
UNKNOWN_ORG15 = "00D000000000009"
TERAPI_ORG15 = "00D5g000004Xz1A"
OM_PATH = "/webhooks/salesforce/outbound-messages"
SOAP = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'}


def secret_forms() -> dict[str, list[bytes]]:
    """Every secret, and every encoding of it that a body or a log could carry."""
    secrets = {
        "outbound token": OUTBOUND_TOKEN,
        "event secret": EVENT_SECRET,
        "event secret key (base64)": EVENT_SECRET.removeprefix("whsec_"),
        "terapi webhook secret": TERAPI_WEBHOOK_SECRET,
        "terapi secret key": TERAPI_SECRET_KEY,
        "session id": SESSION_ID,
        # Only what follows the org id: the org id itself is no secret.
        "session id token": SESSION_ID.split("!", 1)[1],
    }
    codecs = ("utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be")
    forms = {name: [value.encode(codec) for codec in codecs] for name, value in secrets.items()}
    forms["event secret key (raw)"] = [key_of(EVENT_SECRET)]
    return forms


def blobs_under(directory: Path) -> Iterator[tuple[str, bytes]]:
    """Every file's bytes (gunzipped), and every ``body_base64`` in its JSON lines, decoded."""
    for path in sorted(directory.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        yield str(path.relative_to(directory)), data
        for number, line in enumerate(data.splitlines()):
            try:
                document = json.loads(line)
            except ValueError:
                continue
            if isinstance(document, dict) and isinstance(document.get("body_base64"), str):
                yield f"{path.name} line {number} body_base64", base64.b64decode(document["body_base64"])


def leaks(blobs: list[tuple[str, bytes]]) -> list[str]:
    forms = secret_forms()
    return [
        f"{secret} in {where}"
        for where, data in blobs
        for secret, encodings in forms.items()
        if any(encoding in data for encoding in encodings)
    ]


def utf16(body: bytes) -> bytes:
    return body.replace(b'encoding="UTF-8"', b'encoding="UTF-16"').decode().encode("utf-16")


def signed_event(body: bytes, org: str, *, secret: str = EVENT_SECRET) -> dict[str, str]:
    webhook_id, timestamp = f"msg_secrets_{org}", int(time.time())
    return {
        "Content-Type": "application/json",
        "X-Salesforce-Org-Id": org,
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign_standard_webhook(key_of(secret), webhook_id, timestamp, body),
    }


def terapi_signed(body: bytes, secret: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-Terapi-Hmac-Sha256": sign_terapi(secret, body)}


@pytest.mark.slow
async def test_no_secret_reaches_logs_files_metrics_or_answers(tmp_path: Path) -> None:
    """Token, webhook secrets, terapi key and SessionId are nowhere after a full flow."""
    data_dir = tmp_path / "var"
    event = json.dumps(sample("platform_event_low_ink.json")).encode()
    forward = json.dumps(
        {
            "from": "salesforce",
            "type": "forward",
            "connectionId": "acme-terapi",
            "providerConfigKey": "salesforce",
            "payload": {**sample("platform_event_low_ink.json"), "organizationId": TERAPI_ORG15},
        }
    ).encode()
    answers: list[tuple[str, bytes]] = []
    async with run_standin(secret_key=TERAPI_SECRET_KEY) as standin:
        standin.add_connection("acme-terapi", "salesforce", org_id=TERAPI_ORG15)
        settings = {
            "data_dir": data_dir,
            "org_map_file": EXAMPLE_ORG_MAP,
            "wsdl_dir": EXAMPLE_WSDL_DIR,
            "log_level": "debug",
            "log_format": "json",
            "outbound_token": OUTBOUND_TOKEN,
            "event_secrets": EVENT_SECRET,
            "terapi_webhook_secret": TERAPI_WEBHOOK_SECRET,
            "terapi_base_url": standin.base_url,
            "terapi_secret_key": TERAPI_SECRET_KEY,
        }
        async with (
            running_receiver(settings, tmp_path / "logs") as receiver,
            httpx.AsyncClient(base_url=receiver.base_url, timeout=30) as client,
        ):
            with_token = f"{OM_PATH}?token={OUTBOUND_TOKEN}"
            accepted = outbound_message(2, session_id=SESSION_ID, start=8100)
            cdata = outbound_message(1, session_id=f"<![CDATA[{SESSION_ID}]]>", start=8200)
            requests = [
                ("accepted", with_token, accepted, SOAP, 200),
                ("utf-16", with_token, utf16(outbound_message(1, session_id=SESSION_ID, start=8300)), SOAP, 200),
                ("cdata", with_token, cdata, SOAP, 200),
                ("unknown org", with_token, outbound_message(1, org15=UNKNOWN_ORG15, session_id=SESSION_ID), SOAP, 403),
                ("malformed", with_token, accepted[: accepted.index(b"</SessionId>") + 20], SOAP, 400),
                ("wrong token", f"{OM_PATH}?token=not-{OUTBOUND_TOKEN[:6]}", accepted, SOAP, 401),
                ("terapi org", with_token, outbound_message(1, org15=TERAPI_ORG15, session_id=SESSION_ID), SOAP, 200),
                ("event", "/webhooks/salesforce/events", event, signed_event(event, ORG15), 200),
                ("event unknown org", "/webhooks/salesforce/events", event, signed_event(event, UNKNOWN_ORG15), 403),
                (
                    "event forged",
                    "/webhooks/salesforce/events",
                    event,
                    signed_event(event, ORG15, secret="whsec_AAAA"),
                    401,
                ),
                ("terapi forward", "/webhooks/terapi", forward, terapi_signed(forward, TERAPI_WEBHOOK_SECRET), 200),
                ("terapi forged", "/webhooks/terapi", forward, terapi_signed(forward, "not-the-secret"), 401),
            ]
            for name, path, body, headers, status in requests:
                response = await client.post(path, content=body, headers=headers)
                assert response.status_code == status, (name, response.text)
                answers.append((f"answer to {name}", response.content + str(response.headers).encode()))
            for path in ("/metrics", "/readyz", "/healthz"):
                response = await client.get(path)
                answers.append((path, response.content + str(response.headers).encode()))
            receiver.terminate()
            assert await receiver.wait(30) == 0
            log = receiver.log_path.read_bytes()
    assert standin.list_calls(), "the terapi secret key was used"
    blobs = [("log", log), *answers, *blobs_under(data_dir)]
    assert any(where.startswith("recordings") for where, _ in blobs), "recordings were written"
    assert leaks(blobs) == []
