"""Signed JSON callbacks for tests: Standard Webhooks and terapi signatures computed for real."""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path
from typing import Any

from receiver.signatures import sign_standard_webhook, sign_terapi

SAMPLES = Path(__file__).resolve().parent.parent / "examples" / "payloads"
SECRET = "whsec_" + base64.b64encode(b"event-secret-for-tests-0123456789").decode()
ROTATED_SECRET = "whsec_" + base64.b64encode(b"rotated-secret-for-tests-98765432").decode()
TERAPI_SECRET = "terapi-webhook-secret-for-tests"
ORG = "00D1I000003qqqEUAQ"


def sample(name: str) -> Any:
    return json.loads((SAMPLES / name).read_text())


def key_of(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


def signed_headers(
    body: bytes,
    *,
    secret: str = SECRET,
    webhook_id: str | None = None,
    timestamp: int | None = None,
    org: str | None = ORG,
) -> dict[str, str]:
    webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time()) if timestamp is None else timestamp
    headers = {
        "Content-Type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign_standard_webhook(key_of(secret), webhook_id, timestamp, body),
    }
    if org is not None:
        headers["X-Salesforce-Org-Id"] = org
    return headers


def terapi_headers(body: bytes, *, header: str = "X-Terapi-Hmac-Sha256", secret: str = TERAPI_SECRET) -> dict[str, str]:
    return {"Content-Type": "application/json", header: sign_terapi(secret, body)}


def change_event(
    record_ids: list[str], change_type: str = "UPDATE", sequence: int = 1, **payload: Any
) -> dict[str, Any]:
    header = {
        "entityName": "Account",
        "recordIds": record_ids,
        "changeType": change_type,
        "changeOrigin": "com/salesforce/api/soap/63.0",
        "transactionKey": "0000be70-a756-e601-9202-32967602a6be",
        "sequenceNumber": sequence,
        "commitTimestamp": 1745500706000,
        "commitNumber": 1745500706683617281,
        "commitUser": "005ak00000EpjsfAAB",
        "changedFields": ["Name", "BillingAddress.City"],
    }
    return {
        "channel": "/data/AccountChangeEvent",
        "data": {
            "schema": "IeRuaY6cbI_HsV8Rv1Mc5g",
            "payload": {"ChangeEventHeader": header, **payload},
            "event": {"replayId": 6},
        },
    }


def platform_message(**event: Any) -> dict[str, Any]:
    """A minimal platform event message; ``event`` is its ``data.event`` (replayId, EventUuid)."""
    return {"channel": "/event/Low_Ink__e", "data": {"schema": "s1", "payload": {"Serial__c": "1"}, "event": event}}


def cdc_payload(**header: Any) -> dict[str, Any]:
    """A bare CDC payload on Account; ``header`` overrides fields of its ChangeEventHeader."""
    base = {
        "entityName": "Account",
        "changeType": "UPDATE",
        "recordIds": ["001ak00000IiFInAAN"],
        "changedFields": ["Name"],
        "transactionKey": "tx-1",
        "sequenceNumber": 3,
        "commitTimestamp": 1745500706000,
        "commitNumber": 42,
        "commitUser": "005ak00000EpjsfAAB",
    }
    return {"Name": "Acme", "ChangeEventHeader": {**base, **header}}
