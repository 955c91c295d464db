"""Org resolution through terapi, end to end: a live receiver asking the terapi stand-in."""

from __future__ import annotations

import asyncio
import json

import httpx
import orjson

from receiver.file_sink import EVENTS_FILE, QUARANTINE_FILE
from receiver.settings import Settings
from tests.conftest import SettingsFactory, live_receiver
from tests.event_payloads import TERAPI_SECRET, sample, terapi_headers
from tests.om_payloads import SESSION_ID, outbound_message
from tests.terapi_standin import DEFAULT_SECRET_KEY, run_standin
from tests.test_outbound_endpoint import OM_PATH, SOAP, is_ack

ORG15 = "00D5g000004Xz1A"
ORG = "00D5g000004Xz1AEAS"


def terapi_settings(make_settings: SettingsFactory, base_url: str) -> Settings:
    return make_settings(
        org_map_file=None,
        terapi_base_url=base_url,
        terapi_secret_key=DEFAULT_SECRET_KEY,
        terapi_unknown_org_refresh_interval_s=0.2,
        terapi_webhook_secret=TERAPI_SECRET,
    )


def forward_of(connection_id: str) -> dict[str, object]:
    """A terapi forward of the platform-event sample, from a connection of integration salesforce."""
    return {
        "from": "salesforce",
        "type": "forward",
        "connectionId": connection_id,
        "providerConfigKey": "salesforce",
        "payload": sample("platform_event_low_ink.json"),
    }


async def post_forward(settings: Settings, forward: dict[str, object]) -> httpx.Response:
    body = json.dumps(forward).encode()
    async with live_receiver(settings) as client:
        return await client.post("/webhooks/terapi", content=body, headers=terapi_headers(body))


async def test_om_of_a_terapi_org_names_its_connection(make_settings: SettingsFactory) -> None:
    """An OM from an org known to terapi is acked and its event names the terapi connection."""
    async with run_standin() as standin:
        standin.add_connection("acme-prod", "salesforce", org_id=ORG15)
        settings = terapi_settings(make_settings, standin.base_url)
        async with live_receiver(settings) as client:
            assert (await client.get("/readyz")).status_code == 200
            response = await client.post(OM_PATH, content=outbound_message(1, org15=ORG15), headers=SOAP)
            assert is_ack(response)
    event = orjson.loads((settings.data_dir / EVENTS_FILE).read_bytes())
    assert event["terapiconnectionid"] == "acme-prod"
    assert event["data"]["connection"] == {"connection_id": "acme-prod", "integration": "salesforce"}


async def test_unknown_org_is_quarantined_then_accepted_once_terapi_has_it(make_settings: SettingsFactory) -> None:
    """Unknown org: 403 and quarantined; the stand-in adds the connection; the resend is acked."""
    async with run_standin() as standin:
        settings = terapi_settings(make_settings, standin.base_url)
        body = outbound_message(1, org15=ORG15)
        async with live_receiver(settings) as client:
            assert (await client.post(OM_PATH, content=body, headers=SOAP)).status_code == 403
            quarantined = orjson.loads((settings.data_dir / QUARANTINE_FILE).read_bytes())
            assert quarantined["organization_id"] == ORG and SESSION_ID not in quarantined["body"]
            standin.add_connection("acme-late", "salesforce", org_id=ORG)
            await asyncio.sleep(0.3)
            assert is_ack(await client.post(OM_PATH, content=body, headers=SOAP))
    event = orjson.loads((settings.data_dir / EVENTS_FILE).read_bytes())
    assert event["terapiconnectionid"] == "acme-late"


async def test_sandbox_connection_does_not_serve_the_production_path(make_settings: SettingsFactory) -> None:
    """A salesforce-sandbox connection resolves on the sandbox path only."""
    async with run_standin() as standin:
        standin.add_connection("acme-sandbox", "salesforce-sandbox", org_id=ORG15)
        settings = terapi_settings(make_settings, standin.base_url)
        body = outbound_message(1, org15=ORG15)
        async with live_receiver(settings) as client:
            assert (await client.post(OM_PATH, content=body, headers=SOAP)).status_code == 403
            sandbox = await client.post("/webhooks/salesforce-sandbox/outbound-messages", content=body, headers=SOAP)
            assert is_ack(sandbox)


async def test_terapi_forward_takes_the_org_from_the_connection(make_settings: SettingsFactory) -> None:
    """A terapi forward needs no org in its payload: the connection's org is used."""
    async with run_standin() as standin:
        standin.add_connection("acme-prod", "salesforce", org_id=ORG15)
        settings = terapi_settings(make_settings, standin.base_url)
        response = await post_forward(settings, forward_of("acme-prod"))
    assert response.status_code == 200, response.text
    event = orjson.loads((settings.data_dir / EVENTS_FILE).read_bytes())
    assert event["sforgid"] == ORG and event["terapiconnectionid"] == "acme-prod"


async def test_readyz_waits_for_the_first_terapi_load(make_settings: SettingsFactory) -> None:
    """While terapi rejects the key, /readyz is 503 and says why; the service stays up."""
    async with run_standin(secret_key="another-key") as standin:
        settings = terapi_settings(make_settings, standin.base_url)
        async with live_receiver(settings) as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["connections_ready"] is False
            assert (await client.get("/healthz")).status_code == 200


async def test_a_flood_of_unknown_orgs_costs_terapi_one_refresh(make_settings: SettingsFactory) -> None:
    """100 concurrent OMs from 100 unknown orgs: 403 each, and terapi sees one list call, no reads."""
    async with run_standin() as standin:
        standin.add_connection("acme-prod", "salesforce", org_id=ORG15)
        settings = make_settings(
            org_map_file=None,
            terapi_base_url=standin.base_url,
            terapi_secret_key=DEFAULT_SECRET_KEY,
            terapi_unknown_org_refresh_interval_s=60.0,
        )
        orgs = [f"00D5g{number:010d}" for number in range(100)]
        async with live_receiver(settings) as client:
            calls_after_start = len(standin.calls)
            answers = await asyncio.gather(
                *(
                    client.post(OM_PATH, content=outbound_message(1, org15=org, start=index), headers=SOAP)
                    for index, org in enumerate(orgs)
                )
            )
        assert [answer.status_code for answer in answers] == [403] * 100
        flood_calls = standin.calls[calls_after_start:]
        # One listing for the whole flood; nothing new to read, so no connection reads.
        assert len([call for call in flood_calls if call[1] == "/connections"]) == 1
        assert len(flood_calls) == 1


async def test_a_forward_of_a_connection_not_yet_indexed_is_403_and_quarantined(make_settings: SettingsFactory) -> None:
    """No org to be had (the connection is unknown, the payload names none): kept for replay, not a 400."""
    async with run_standin() as standin:
        settings = terapi_settings(make_settings, standin.base_url)
        forward = forward_of("created-a-minute-ago")
        response = await post_forward(settings, forward)
    assert response.status_code == 403, response.text
    assert response.json()["reason"] == "unknown_connection"
    quarantined = orjson.loads((settings.data_dir / QUARANTINE_FILE).read_bytes())
    assert quarantined["reason"] == "unknown_connection"
    assert orjson.loads(quarantined["body"]) == forward
    assert not (settings.data_dir / EVENTS_FILE).exists() or (settings.data_dir / EVENTS_FILE).read_bytes() == b""
