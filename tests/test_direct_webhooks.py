"""Webhook POSTs skip Starlette's router (receiver.webhooks.DirectWebhooks): the same handler for
the same path as the routes give, and everything else still answered by the router."""

from __future__ import annotations

import pytest
from starlette.routing import Match

from receiver.app import create_app
from receiver.webhooks import WebhookEndpoints
from tests.conftest import SettingsFactory, live_receiver
from tests.om_payloads import outbound_message

PATHS = [
    "/webhooks/salesforce/outbound-messages",
    "/webhooks/salesforce-sandbox/events",
    "/webhooks/terapi",
    "/webhooks/terapi/events",
    "/webhooks/anything/outbound-messages",
    "/webhooks/salesforce/outbound-messages/",
    "/webhooks/salesforce/outbound-messages/x",
    "/webhooks//outbound-messages",
    "/webhooks/terapi/",
    "/webhooks/salesforce/other",
    "/webhooks/a/b/events",
    "/webhooks",
    "/healthz",
    "/outbound-messages",
]


@pytest.mark.parametrize("path", PATHS)
def test_the_direct_way_picks_what_the_routes_pick(make_settings: SettingsFactory, path: str) -> None:
    app = create_app(make_settings())
    endpoints: WebhookEndpoints = next(m.kwargs["endpoints"] for m in app.user_middleware if "endpoints" in m.kwargs)
    scope = {"type": "http", "method": "POST", "path": path, "root_path": ""}
    by_router = None
    for route in app.routes:
        match, child = route.matches(scope)
        if match is Match.FULL:
            by_router = (child["endpoint"], child["path_params"])
            break
    assert endpoints.handler_for(path) == by_router


async def test_what_the_direct_way_leaves_is_answered_by_the_router(make_settings: SettingsFactory) -> None:
    async with live_receiver(make_settings()) as client:
        assert (await client.get("/webhooks/salesforce/outbound-messages")).status_code == 405
        assert (await client.post("/webhooks/salesforce/nothing", content=b"x")).status_code == 404
        redirected = await client.post(
            "/webhooks/salesforce/outbound-messages/", content=outbound_message(1), follow_redirects=False
        )
        assert redirected.status_code == 307
        assert redirected.headers["location"].endswith("/webhooks/salesforce/outbound-messages")
