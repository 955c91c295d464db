"""The source allow-list and the client address behind proxies: the rules, then a live server.

Loopback is a whole /8 on Linux: a client bound to 127.0.0.2 is a real second source address.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from ipaddress import ip_address

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from receiver.access import client_address, parse_address, parse_networks
from receiver.app import create_app
from receiver.errors import ConfigurationError
from receiver.settings import Settings
from tests.conftest import SettingsFactory
from tests.event_payloads import SECRET, signed_headers
from tests.om_payloads import outbound_message
from tests.servers import receiver_server_options, run_uvicorn

OM_PATH = "/webhooks/salesforce/outbound-messages"
EVENTS_PATH = "/webhooks/salesforce/events"
SOAP = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'}
PROXIES = parse_networks(["10.0.0.0/8", "192.168.1.1"])
PEER_PROXY = ip_address("10.1.2.3")


def addresses(*texts: str) -> list[str]:
    return list(texts)


def test_an_untrusted_peer_is_the_client_whatever_it_forwards() -> None:
    """X-Forwarded-For from a peer that is not a trusted proxy is ignored."""
    peer = ip_address("198.51.100.7")
    assert client_address(peer, addresses("203.0.113.9"), PROXIES) == peer


def test_behind_a_trusted_proxy_the_forwarded_client_is_believed() -> None:
    """The address a trusted proxy appended is the client."""
    assert client_address(PEER_PROXY, addresses("203.0.113.9"), PROXIES) == ip_address("203.0.113.9")


def test_the_walk_starts_from_the_right_and_skips_trusted_proxies() -> None:
    """Entries left of the first untrusted hop were written by the client: a spoofed one loses."""
    chain = addresses("1.1.1.1", "203.0.113.9", "192.168.1.1", "10.9.9.9")
    assert client_address(PEER_PROXY, chain, PROXIES) == ip_address("203.0.113.9")


def test_a_trusted_proxy_without_forwarded_for_is_the_client() -> None:
    """No X-Forwarded-For: the proxy itself made the request."""
    assert client_address(PEER_PROXY, [], PROXIES) == PEER_PROXY


def test_when_every_hop_is_trusted_the_leftmost_is_the_client() -> None:
    """A request from inside passes only trusted proxies; its origin is the leftmost hop."""
    assert client_address(PEER_PROXY, addresses("10.0.0.5", "192.168.1.1"), PROXIES) == ip_address("10.0.0.5")


@pytest.mark.parametrize("garbage", ["unknown", "", "_hidden", "203.0.113.9.1", "::g"])
def test_a_hop_that_is_not_an_address_makes_the_client_unknown(garbage: str) -> None:
    """A trusted proxy passing on something that is not an address fails closed."""
    assert client_address(PEER_PROXY, addresses("203.0.113.9", garbage), PROXIES) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("203.0.113.9", "203.0.113.9"),
        (" 203.0.113.9:4711 ", "203.0.113.9"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]:4711", "2001:db8::1"),
        ("::ffff:203.0.113.9", "203.0.113.9"),
    ],
)
def test_address_forms_proxies_write_are_read(text: str, expected: str) -> None:
    """Ports, brackets and IPv4-mapped IPv6 are read as the plain address."""
    assert parse_address(text) == ip_address(expected)


ipv4 = st.ip_addresses(v=4).map(str)


@given(st.lists(ipv4, max_size=5), st.lists(ipv4, max_size=5))
def test_nothing_an_untrusted_peer_sends_changes_its_address(forwarded: list[str], more: list[str]) -> None:
    """Whatever X-Forwarded-For says, a peer outside the trusted proxies is its own client."""
    peer = ip_address("198.51.100.7")
    assert client_address(peer, forwarded + more, PROXIES) == peer


@given(st.lists(st.text(max_size=20) | ipv4, max_size=5))
def test_what_the_client_prepends_never_changes_the_answer(prepended: list[str]) -> None:
    """Entries left of a real, untrusted hop cannot change who the client is."""
    real = addresses("203.0.113.9", "192.168.1.1")
    assert client_address(PEER_PROXY, prepended + real, PROXIES) == ip_address("203.0.113.9")


@pytest.mark.parametrize(
    ("setting", "value"),
    [("allowed_cidrs", "10.0.0.7/8"), ("allowed_cidrs", "salesforce"), ("trusted_proxies", "10.0.0.0/33")],
)
def test_an_unusable_network_stops_start_up_naming_the_setting(
    make_settings: SettingsFactory, setting: str, value: str
) -> None:
    """A typo in a CIDR (host bits set, not an address) is a configuration error, not a wider list."""
    with pytest.raises(ConfigurationError) as excinfo:
        make_settings(**{setting: f"203.0.113.0/24,{value}"})
    assert f"RECEIVER_{setting.upper()}" in excinfo.value.detail
    assert value in excinfo.value.detail


# -- on a live server -------------------------------------------------------------------------


@asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[str]:
    async with run_uvicorn(create_app(settings), **receiver_server_options(settings)) as base_url:
        yield base_url


def client_from(base_url: str, source: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base_url, transport=httpx.AsyncHTTPTransport(local_address=source), timeout=10)


async def test_allowed_source_is_acked_and_another_is_refused_with_a_fault(make_settings: SettingsFactory) -> None:
    """127.0.0.1 on the list is served; 127.0.0.2 off it gets a 403 SOAP Client Fault."""
    async with (
        served(make_settings(allowed_cidrs="127.0.0.1/32")) as base_url,
        client_from(base_url, "127.0.0.1") as inside,
        client_from(base_url, "127.0.0.2") as outside,
    ):
        assert (await inside.post(OM_PATH, content=outbound_message(1), headers=SOAP)).status_code == 200
        refused = await outside.post(OM_PATH, content=outbound_message(1), headers=SOAP)
        metrics = (await inside.get("/metrics")).text
    assert refused.status_code == 403
    assert refused.headers["content-type"].startswith("text/xml")
    assert b"soapenv:Client" in refused.content and b"source_not_allowed" in refused.content
    assert 'receiver_requests_rejected_total{kind="request",reason="source_not_allowed",status="403"} 1.0' in metrics


async def test_refused_events_get_problem_json(make_settings: SettingsFactory) -> None:
    """A JSON endpoint refuses an outside source with an RFC 9457 problem."""
    body = b'{"channel": "/event/A__e", "data": {"payload": {}, "event": {"replayId": 1}}}'
    async with (
        served(make_settings(allowed_cidrs="127.0.0.1", event_secrets=SECRET)) as base_url,
        client_from(base_url, "127.0.0.2") as outside,
    ):
        refused = await outside.post(EVENTS_PATH, content=body, headers=signed_headers(body))
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["reason"] == "source_not_allowed"


async def test_probes_and_metrics_are_not_behind_the_allow_list(make_settings: SettingsFactory) -> None:
    """/healthz, /readyz and /metrics answer any source: they belong to the network's own policy."""
    async with (
        served(make_settings(allowed_cidrs="203.0.113.0/24")) as base_url,
        client_from(base_url, "127.0.0.2") as outside,
    ):
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await outside.get(path)).status_code == 200, path


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(make_settings: SettingsFactory) -> None:
    """A client cannot claim an allowed address with its own X-Forwarded-For."""
    async with (
        served(make_settings(allowed_cidrs="203.0.113.0/24")) as base_url,
        client_from(base_url, "127.0.0.1") as client,
    ):
        refused = await client.post(
            OM_PATH, content=outbound_message(1), headers={**SOAP, "X-Forwarded-For": "203.0.113.9"}
        )
    assert refused.status_code == 403


async def test_behind_a_trusted_proxy_the_forwarded_client_is_checked_and_recorded(
    make_settings: SettingsFactory,
) -> None:
    """Through a trusted proxy the rightmost untrusted hop is the client: allowed, refused, and recorded."""
    settings = make_settings(allowed_cidrs="203.0.113.0/24", trusted_proxies="127.0.0.1")
    async with served(settings) as base_url, client_from(base_url, "127.0.0.1") as proxy:
        allowed = await proxy.post(
            OM_PATH, content=outbound_message(1), headers={**SOAP, "X-Forwarded-For": "203.0.113.9"}
        )
        spoofed = await proxy.post(
            OM_PATH, content=outbound_message(1), headers={**SOAP, "X-Forwarded-For": "203.0.113.9, 198.51.100.1"}
        )
    assert allowed.status_code == 200
    assert spoofed.status_code == 403
    recordings = sorted((settings.data_dir / "recordings").glob("*.jsonl"))
    lines = [json.loads(line) for path in recordings for line in path.read_text().splitlines()]
    assert [(line["remote_addr"], line["outcome"]["status"]) for line in lines] == [
        ("203.0.113.9", 200),
        ("198.51.100.1", 403),
    ]
