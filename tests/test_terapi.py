"""terapi as a connection source, against the stand-in terapi over real HTTP."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from receiver.errors import ConfigurationError
from receiver.event import Connection
from receiver.ids import normalize_org_id
from receiver.settings import load_settings
from receiver.terapi import TerapiConnectionSource
from receiver.terapi_client import RetryPolicy, TerapiClient, TerapiUnauthorized
from tests.terapi_standin import TerapiStandin, run_standin

PROD_ORG = "00D5g000004Xz1A"
PROD_ORG_18 = "00D5g000004Xz1AEAS"
SANDBOX_ORG = "00D1x0000008aBc"
SANDBOX_ORG_18 = normalize_org_id(SANDBOX_ORG)
FAST_RETRY = RetryPolicy(attempts=3, initial_backoff_s=0.01, max_backoff_s=0.05, max_retry_after_s=5.0)
HOUR = 3600.0


def org(number: int) -> str:
    """A valid 15-character org id."""
    return f"00D{number:012d}"


def org18(number: int) -> str:
    return normalize_org_id(org(number))


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait for background refreshes to make ``condition`` true."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition still false after {timeout_s} s")
        await asyncio.sleep(0.01)


@pytest.fixture
async def standin() -> AsyncIterator[TerapiStandin]:
    async with run_standin() as running:
        yield running


@pytest.fixture(autouse=True)
def terapi_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="receiver.terapi")
    return caplog


@asynccontextmanager
async def started_source(
    standin: TerapiStandin,
    *,
    secret_key: str | None = None,
    retry: RetryPolicy = FAST_RETRY,
    page_size: int = 100,
    **overrides: Any,
) -> AsyncIterator[tuple[TerapiConnectionSource, CollectorRegistry]]:
    """A started source pointed at ``standin``; slow schedules unless a test asks otherwise."""
    options: dict[str, Any] = {
        "terapi_refresh_interval_s": HOUR,
        "terapi_unknown_org_refresh_interval_s": HOUR,
        "terapi_timeout_s": 2.0,
        **overrides,
    }
    settings = load_settings(
        terapi_base_url=standin.base_url, terapi_secret_key=secret_key or standin.secret_key, **options
    )
    registry = CollectorRegistry()
    client = TerapiClient.from_settings(settings, registry=registry, retry=retry, page_size=page_size)
    source = TerapiConnectionSource(settings, registry, client=client)
    await source.start()
    try:
        yield source, registry
    finally:
        await source.stop()


# Where the org id comes from


async def test_org_comes_from_the_production_identity_url(standin: TerapiStandin) -> None:
    """A salesforce connection's org is read from its login.salesforce.com identity URL."""
    standin.add_connection("acme-prod", org_id=PROD_ORG_18)
    async with started_source(standin) as (source, _):
        assert source.ready
        assert await source.resolve(PROD_ORG_18, "salesforce") == Connection("acme-prod", "salesforce")


async def test_sandbox_org_comes_from_the_test_identity_url(standin: TerapiStandin) -> None:
    """A salesforce-sandbox connection's org is read from its test.salesforce.com identity URL."""
    connection = standin.add_connection("acme-uat", "salesforce-sandbox", org_id=SANDBOX_ORG_18)
    assert "https://test.salesforce.com/id/" in connection.credentials()["raw"]["id"]
    async with started_source(standin) as (source, _):
        found = await source.resolve(SANDBOX_ORG_18, "salesforce-sandbox")
        assert found == Connection("acme-uat", "salesforce-sandbox")


async def test_org_comes_from_metadata_when_credentials_have_no_identity_url(standin: TerapiStandin) -> None:
    """Without credentials.raw.id, metadata.salesforce_org_id names the org."""
    standin.add_connection("meta-only", org_id=None, metadata_org_id=PROD_ORG_18)
    async with started_source(standin) as (source, _):
        assert await source.resolve(PROD_ORG_18, "salesforce") == Connection("meta-only", "salesforce")


async def test_identity_url_wins_over_disagreeing_metadata(standin: TerapiStandin) -> None:
    """Salesforce's identity URL is believed over metadata an integrator stored."""
    standin.add_connection("acme-prod", org_id=PROD_ORG, metadata_org_id=org(7))
    async with started_source(standin) as (source, _):
        assert await source.resolve(PROD_ORG_18, "salesforce") is not None
        assert await source.resolve(org18(7), "salesforce") is None


async def test_withheld_credentials_fall_back_to_metadata_and_say_so(terapi_logs: pytest.LogCaptureFixture) -> None:
    """A key without the credentials scope gets credentials {}: metadata is used and the log says why."""
    async with run_standin(credentials_scope=False) as standin:
        standin.add_connection("acme-prod", org_id=PROD_ORG_18, metadata_org_id=PROD_ORG_18)
        async with started_source(standin) as (source, _):
            assert await source.resolve(PROD_ORG_18, "salesforce") == Connection("acme-prod", "salesforce")
    warnings = [r.getMessage() for r in terapi_logs.records if r.levelno == logging.WARNING]
    assert any("credentials scope" in m and "metadata.salesforce_org_id" in m for m in warnings)


async def test_withheld_credentials_without_metadata_skip_the_connection() -> None:
    """With credentials {} and no metadata org id, the connection is skipped as no_org_id."""
    async with run_standin(credentials_scope=False) as standin:
        standin.add_connection("acme-prod", org_id=PROD_ORG_18)
        async with started_source(standin) as (source, registry):
            assert source.ready
            assert await source.resolve(PROD_ORG_18, "salesforce") is None
            assert sample(registry, "receiver_terapi_skipped_connections", reason="no_org_id") == 1


async def test_sandbox_and_production_connections_stay_apart(standin: TerapiStandin) -> None:
    """An org resolves only among the connections of the integration it was posted to."""
    standin.add_connection("acme-uat", "salesforce-sandbox", org_id=SANDBOX_ORG_18)
    standin.add_connection("same-prod", "salesforce", org_id=org(1))
    standin.add_connection("same-uat", "salesforce-sandbox", org_id=org(1))
    async with started_source(standin) as (source, _):
        assert await source.resolve(SANDBOX_ORG_18, "salesforce") is None
        assert await source.resolve(org18(1), "salesforce") == Connection("same-prod", "salesforce")
        assert await source.resolve(org18(1), "salesforce-sandbox") == Connection("same-uat", "salesforce-sandbox")


async def test_15_character_org_ids_are_indexed_as_18(standin: TerapiStandin) -> None:
    """15-character ids in identity URLs and metadata are found by their 18-character form."""
    standin.add_connection("by-identity", org_id=PROD_ORG)
    standin.add_connection("by-metadata", org_id=None, metadata_org_id=SANDBOX_ORG)
    async with started_source(standin) as (source, _):
        assert await source.resolve(PROD_ORG_18, "salesforce") == Connection("by-identity", "salesforce")
        assert await source.resolve(SANDBOX_ORG_18, "salesforce") == Connection("by-metadata", "salesforce")


# Listing and refreshing


async def test_connection_list_is_read_page_by_page(standin: TerapiStandin) -> None:
    """Pages are requested until one is shorter than the limit, and every page is indexed."""
    for number in range(5):
        standin.add_connection(f"c{number}", org_id=org(number))
    async with started_source(standin, page_size=2) as (source, _):
        pages = standin.list_calls()
        assert [(q["page"], q["limit"]) for q in pages] == [("0", "2"), ("1", "2"), ("2", "2")]
        assert pages[0]["integrationId"] == "salesforce,salesforce-sandbox"
        for number in range(5):
            assert await source.resolve(org18(number), "salesforce") == Connection(f"c{number}", "salesforce")


async def test_a_server_counting_pages_from_1_is_listed_whole(terapi_logs: pytest.LogCaptureFixture) -> None:
    """Page 0 read as page 1 repeats it once: the repeat is skipped and paging goes on."""
    async with run_standin(first_page=1) as standin:
        for number in range(5):
            standin.add_connection(f"c{number}", org_id=org(number))
        async with started_source(standin, page_size=2) as (source, _):
            for number in range(5):
                assert await source.resolve(org18(number), "salesforce") == Connection(f"c{number}", "salesforce")
        assert [query["page"] for query in standin.list_calls()] == ["0", "1", "2", "3"]
    assert any("count pages from 1" in record.getMessage() for record in terapi_logs.records)


async def test_a_server_ignoring_page_is_listed_once_and_said_so(terapi_logs: pytest.LogCaptureFixture) -> None:
    """Every page the same: listing stops at the third request, with a warning, not after 10,000."""
    async with run_standin(first_page=None) as standin:
        for number in range(5):
            standin.add_connection(f"c{number}", org_id=org(number))
        async with started_source(standin, page_size=2) as (source, _):
            assert await source.resolve(org18(1), "salesforce") == Connection("c1", "salesforce")
            calls_at_start = [query["page"] for query in standin.list_calls()]
    assert calls_at_start == ["0", "1", "2"]
    warnings = [r.getMessage() for r in terapi_logs.records if r.levelno == logging.WARNING]
    assert any("ignore 'page'" in message for message in warnings)


async def test_a_server_refusing_paging_parameters_is_listed_in_one_call(
    terapi_logs: pytest.LogCaptureFixture,
) -> None:
    """A strict server answers 400 to limit and page: the list is read without them, from then on."""
    async with run_standin(paging=False) as standin:
        for number in range(3):
            standin.add_connection(f"c{number}", org_id=org(number))
        async with started_source(standin, page_size=2) as (source, _):
            for number in range(3):
                assert await source.resolve(org18(number), "salesforce") == Connection(f"c{number}", "salesforce")
            standin.add_connection("late", org_id=org(7))
            assert await source.resolve(org18(7), "salesforce") == Connection("late", "salesforce")
        calls = standin.list_calls()
    assert [sorted(query) for query in calls] == [
        ["integrationId", "limit", "page"],  # refused with 400
        ["integrationId"],
        ["integrationId"],  # the unknown org's refresh asks without them straight away
    ]
    warnings = [r.getMessage() for r in terapi_logs.records if "refused 'limit' and 'page'" in r.getMessage()]
    assert len(warnings) == 1


async def test_a_400_that_is_not_about_paging_keeps_paging(standin: TerapiStandin) -> None:
    """When the call without paging fails too, the error stands and paging is kept for the next pass."""
    standin.add_connection("c0", org_id=org(0))
    standin.fail_next(2, 400)
    async with started_source(standin) as (source, _):
        assert await source.resolve(org18(0), "salesforce") == Connection("c0", "salesforce")
    assert [sorted(query) for query in standin.list_calls()] == [
        ["integrationId", "limit", "page"],
        ["integrationId"],
        ["integrationId", "limit", "page"],
    ]


async def test_unknown_org_flood_costs_one_list_pass_and_new_reads(standin: TerapiStandin) -> None:
    """100 concurrent lookups of unknown orgs share one refresh: one list pass plus reads of new connections."""
    standin.add_connection("old", org_id=org(1000))
    async with started_source(standin) as (source, registry):
        before = len(standin.calls)
        for number in range(3):
            standin.add_connection(f"new{number}", org_id=org(number))
        results = await asyncio.gather(*(source.resolve(org18(number), "salesforce") for number in range(100)))
        flood_calls = standin.calls[before:]
        expected = ["/connections", "/connections/new0", "/connections/new1", "/connections/new2"]
        assert [path for _, path, _ in flood_calls] == expected
        assert results[:3] == [Connection(f"new{n}", "salesforce") for n in range(3)]
        assert results[3:] == [None] * 97
        assert sample(registry, "receiver_terapi_refreshes_total", trigger="unknown_org", outcome="ok") == 1

        await asyncio.gather(*(source.resolve(org18(number), "salesforce") for number in range(100, 200)))
        assert len(standin.calls) == before + 4


async def test_unknown_org_refreshes_again_only_after_the_interval(standin: TerapiStandin) -> None:
    """A second unknown org inside the interval costs nothing; after it, one more refresh."""
    async with started_source(standin, terapi_unknown_org_refresh_interval_s=0.3) as (source, _):
        assert await source.resolve(org18(1), "salesforce") is None
        assert len(standin.list_calls()) == 2
        assert await source.resolve(org18(2), "salesforce") is None
        assert len(standin.list_calls()) == 2
        await asyncio.sleep(0.35)
        assert await source.resolve(org18(3), "salesforce") is None
        assert len(standin.list_calls()) == 3


async def test_unknown_integration_or_bad_org_id_never_calls_terapi(standin: TerapiStandin) -> None:
    """Lookups for an integration not served, or an id that is not an org id, trigger no refresh."""
    async with started_source(standin) as (source, _):
        before = len(standin.calls)
        assert await source.resolve(org18(1), "hubspot") is None
        assert await source.resolve("not-an-org-id", "salesforce") is None
        assert len(standin.calls) == before


async def test_scheduled_refresh_rereads_only_new_or_changed_connections(standin: TerapiStandin) -> None:
    """The schedule lists everything but reads only connections whose listing changed."""
    for name in ("a", "b", "c"):
        standin.add_connection(name, org_id=org(ord(name)))
    async with started_source(standin, terapi_refresh_interval_s=0.1) as (source, registry):
        assert sorted(standin.read_calls()) == ["a", "b", "c"]
        standin.add_connection("d", org_id=org(1))
        standin.update_connection("b", metadata_org_id=org(2))
        await eventually(lambda: len(standin.read_calls()) == 5)
        lists_now = len(standin.list_calls())
        await eventually(lambda: len(standin.list_calls()) >= lists_now + 2)
        assert sorted(standin.read_calls()[3:]) == ["b", "d"]
        assert await source.resolve(org18(1), "salesforce") == Connection("d", "salesforce")
        assert sample(registry, "receiver_terapi_refreshes_total", trigger="schedule", outcome="ok") >= 2


async def test_a_connection_reauthorized_against_another_org_moves_without_a_listed_change(
    standin: TerapiStandin,
) -> None:
    """Reconnected to org 2 with no listed field changed: read again once its read is
    terapi_reread_interval_s old, so org 2 resolves and org 1 no longer does."""
    standin.add_connection("acme", org_id=org(1))
    async with started_source(standin, terapi_refresh_interval_s=0.1, terapi_reread_interval_s=0.5) as (source, _):
        assert await source.resolve(org18(1), "salesforce") == Connection("acme", "salesforce")
        standin.connections[("salesforce", "acme")].org_id = org(2)  # updated_at untouched
        await eventually(lambda: len(standin.read_calls()) >= 2)
        assert await source.resolve(org18(2), "salesforce") == Connection("acme", "salesforce")
        assert await source.resolve(org18(1), "salesforce") is None
        lists = len(standin.list_calls())
        reads = len(standin.read_calls())
        await eventually(lambda: len(standin.list_calls()) >= lists + 3)
        assert len(standin.read_calls()) <= reads + 1, "unchanged and recently read: listed, not read"


async def test_a_reread_refused_with_424_keeps_the_org(standin: TerapiStandin) -> None:
    """terapi can no longer refresh a connection's tokens (424): the hourly re-read keeps the org
    it had, rather than leave its events to 403 and quarantine."""
    standin.add_connection("acme", org_id=org(1))
    async with started_source(standin, terapi_refresh_interval_s=0.1, terapi_reread_interval_s=0.2) as (source, _):
        assert await source.resolve(org18(1), "salesforce") == Connection("acme", "salesforce")
        standin.connections[("salesforce", "acme")].fail_with = 424
        reads = len(standin.read_calls())
        await eventually(lambda: len(standin.read_calls()) >= reads + 2)
        assert await source.resolve(org18(1), "salesforce") == Connection("acme", "salesforce")


async def test_deleted_connection_leaves_the_index(standin: TerapiStandin) -> None:
    """A connection no longer listed stops resolving after the next refresh."""
    standin.add_connection("gone", org_id=PROD_ORG)
    async with started_source(standin, terapi_refresh_interval_s=0.1) as (source, registry):
        assert await source.resolve(PROD_ORG_18, "salesforce") is not None
        standin.remove_connection("gone")
        await eventually(lambda: sample(registry, "receiver_terapi_index_orgs", integration="salesforce") == 0)
        assert await source.resolve(PROD_ORG_18, "salesforce") is None


async def test_conflicting_connections_newest_created_wins(
    standin: TerapiStandin, terapi_logs: pytest.LogCaptureFixture
) -> None:
    """Two connections claiming one org: the most recently created wins, logged and counted."""
    standin.add_connection("newer", org_id=PROD_ORG, created=datetime(2025, 6, 1, tzinfo=UTC))
    standin.add_connection("older", org_id=PROD_ORG_18, created=datetime(2024, 6, 1, tzinfo=UTC))
    async with started_source(standin) as (source, registry):
        assert await source.resolve(PROD_ORG_18, "salesforce") == Connection("newer", "salesforce")
        assert sample(registry, "receiver_terapi_org_conflicts", integration="salesforce") == 1
        assert source.describe()["conflicts"] == 1
    conflicts = [r for r in terapi_logs.records if "claim one org" in r.getMessage()]
    assert [(r.__dict__["winner"], r.__dict__["losers"]) for r in conflicts] == [("newer", ["older"])]


async def test_conflict_with_equal_creation_times_is_broken_by_connection_id(standin: TerapiStandin) -> None:
    """Equal creation times: the greater connection id wins, whatever the listing order."""
    same_time = datetime(2025, 1, 1, tzinfo=UTC)
    standin.add_connection("b-conn", org_id=PROD_ORG, created=same_time)
    standin.add_connection("a-conn", org_id=PROD_ORG, created=same_time)
    standin.add_connection("c-conn", org_id=PROD_ORG, created=same_time)
    async with started_source(standin) as (source, _):
        assert await source.resolve(PROD_ORG_18, "salesforce") == Connection("c-conn", "salesforce")


async def test_an_older_server_that_also_refuses_paging_is_listed_in_one_call() -> None:
    """/connections is a 404 and /connection refuses limit and page (400): the older path is
    kept and listed without paging (the 404 was raised, and the receiver never became ready)."""
    async with run_standin(modern_paths=False, paging=False) as standin:
        standin.add_connection("acme-prod", org_id=PROD_ORG)
        async with started_source(standin) as (source, _):
            assert await source.resolve(PROD_ORG_18, "salesforce") == Connection("acme-prod", "salesforce")


async def test_legacy_paths_setting_talks_to_older_servers() -> None:
    """With terapi_legacy_paths, a server that only has /connection is listed and read."""
    async with run_standin(modern_paths=False) as standin:
        standin.add_connection("acme-prod", org_id=PROD_ORG)
        async with started_source(standin, terapi_legacy_paths=True) as (source, _):
            assert await source.resolve(PROD_ORG_18, "salesforce") == Connection("acme-prod", "salesforce")
        assert [path for _, path, _ in standin.calls] == ["/connection", "/connection/acme-prod"]


async def test_an_older_server_is_found_without_the_setting(terapi_logs: pytest.LogCaptureFixture) -> None:
    """A 404 from /connections, then /connection answers: the older paths are used from then on."""
    async with run_standin(modern_paths=False) as standin:
        standin.add_connection("acme-prod", org_id=PROD_ORG)
        async with started_source(standin, terapi_refresh_interval_s=0.1) as (source, _):
            assert await source.resolve(PROD_ORG_18, "salesforce") == Connection("acme-prod", "salesforce")
            await eventually(lambda: len(standin.list_calls()) >= 3)
        paths = [path for _, path, _ in standin.calls]  # the stand-in's router answers the 404 itself
    assert paths[:2] == ["/connection", "/connection/acme-prod"]
    assert set(paths[2:]) == {"/connection"}, "later refreshes go to the older path at once"
    assert [r.getMessage() for r in terapi_logs.records].count(
        "terapi has no /connections (404) but serves /connection: using the older paths"
    ) == 1


# Failures


async def test_rejected_key_at_startup_is_one_clear_line_then_recovers(
    standin: TerapiStandin, terapi_logs: pytest.LogCaptureFixture
) -> None:
    """A 401 at start-up leaves the source unready without raising, logs once, and recovers once accepted."""
    standin.add_connection("acme-prod", org_id=PROD_ORG)
    wrong_key = "sk-wrong-key-000"
    quick_retries: dict[str, Any] = {"terapi_unknown_org_refresh_interval_s": 0.05}
    async with started_source(standin, secret_key=wrong_key, **quick_retries) as (source, registry):
        assert not source.ready
        assert "RECEIVER_TERAPI_SECRET_KEY" in str(source.describe()["last_error"])
        await eventually(lambda: len(standin.list_calls()) >= 3)
        errors = [r.getMessage() for r in terapi_logs.records if r.levelno >= logging.ERROR]
        assert errors == [f"terapi refresh failed: {TerapiUnauthorized('/connections').detail}"]
        assert "terapi rejected the secret key (401): check RECEIVER_TERAPI_SECRET_KEY" in errors[0]
        assert sample(registry, "receiver_terapi_errors_total", status="401") >= 3

        standin.secret_key = wrong_key
        await eventually(lambda: source.ready)
        assert await source.resolve(PROD_ORG_18, "salesforce") is not None
        assert source.describe()["last_error"] is None


async def test_read_refused_with_401_fails_the_refresh_and_keeps_the_index(standin: TerapiStandin) -> None:
    """A 401 on a connection read fails the whole refresh rather than skipping the connection."""
    standin.add_connection("acme-prod", org_id=PROD_ORG)
    async with started_source(standin) as (source, registry):
        standin.add_connection("late", org_id=org(1), fail_with=401)
        assert await source.resolve(org18(1), "salesforce") is None
        assert sample(registry, "receiver_terapi_refreshes_total", trigger="unknown_org", outcome="failed") == 1
        assert "401" in str(source.describe()["last_error"])
        assert source.ready
        assert await source.resolve(PROD_ORG_18, "salesforce") == Connection("acme-prod", "salesforce")


async def test_client_raises_terapi_unauthorized_on_401(standin: TerapiStandin) -> None:
    """The client turns a 401 into TerapiUnauthorized, without retrying it."""
    async with TerapiClient(standin.base_url, SecretStr("nope"), timeout_s=1.0, retry=FAST_RETRY) as client:
        with pytest.raises(TerapiUnauthorized):
            await client.list_connections(["salesforce"])
    assert len(standin.calls) == 1


async def test_missing_connection_is_skipped_and_counted(standin: TerapiStandin) -> None:
    """A listed connection whose read answers 404 is skipped and counted; the others load."""
    standin.add_connection("vanished", org_id=org(1), fail_with=404)
    standin.add_connection("fine", org_id=org(2))
    async with started_source(standin) as (source, registry):
        assert source.ready
        assert await source.resolve(org18(2), "salesforce") is not None
        assert sample(registry, "receiver_terapi_skipped_connections", reason="terapi_not_found") == 1
        assert sample(registry, "receiver_terapi_errors_total", status="404") == 1


async def test_refresh_exhausted_connection_is_skipped_counted_then_recovers(standin: TerapiStandin) -> None:
    """A 424 connection is skipped and counted, and indexed once terapi can read it again."""
    standin.add_connection("expired", org_id=PROD_ORG, fail_with=424)
    async with started_source(standin, terapi_unknown_org_refresh_interval_s=0.05) as (source, registry):
        assert source.ready
        assert sample(registry, "receiver_terapi_skipped_connections", reason="terapi_refresh_exhausted") == 1
        assert source.describe()["skipped"] == 1
        standin.connections[("salesforce", "expired")].fail_with = None
        await asyncio.sleep(0.06)
        assert await source.resolve(PROD_ORG_18, "salesforce") == Connection("expired", "salesforce")
        assert sample(registry, "receiver_terapi_skipped_connections", reason="terapi_refresh_exhausted") == 0


async def test_rate_limit_waits_for_retry_after(standin: TerapiStandin) -> None:
    """A 429 is retried only after its Retry-After seconds."""
    standin.add_connection("acme-prod", org_id=PROD_ORG)
    standin.fail_next(1, 429, retry_after="1")
    started = time.monotonic()
    async with started_source(standin) as (source, registry):
        assert time.monotonic() - started >= 0.95
        assert source.ready
        assert sample(registry, "receiver_terapi_errors_total", status="429") == 1


async def test_retry_after_is_capped(standin: TerapiStandin) -> None:
    """A Retry-After longer than the policy's cap is waited for only as long as the cap."""
    standin.fail_next(1, 429, retry_after="3600")
    started = time.monotonic()
    capped = RetryPolicy(attempts=2, initial_backoff_s=0.01, max_retry_after_s=0.2)
    async with started_source(standin, retry=capped) as (source, _):
        assert source.ready
        assert time.monotonic() - started < 2.0


async def test_server_errors_are_retried_then_succeed(standin: TerapiStandin) -> None:
    """5xx answers within the retry bound do not fail the load."""
    standin.add_connection("acme-prod", org_id=PROD_ORG)
    standin.fail_next(2, 500)
    async with started_source(standin) as (source, registry):
        assert source.ready
        assert await source.resolve(PROD_ORG_18, "salesforce") is not None
        assert sample(registry, "receiver_terapi_errors_total", status="500") == 2


async def test_persistent_server_errors_leave_source_unready_then_recover(standin: TerapiStandin) -> None:
    """5xx beyond the retry bound: not ready, no exception, and ready once terapi answers."""
    standin.add_connection("acme-prod", org_id=PROD_ORG)
    standin.fail_next(FAST_RETRY.attempts, 503)
    async with started_source(standin, terapi_unknown_org_refresh_interval_s=0.05) as (source, registry):
        assert not source.ready
        assert sample(registry, "receiver_terapi_refreshes_total", trigger="startup", outcome="failed") == 1
        await eventually(lambda: source.ready)
        assert await source.resolve(PROD_ORG_18, "salesforce") is not None


async def test_slow_answers_time_out_and_are_retried(standin: TerapiStandin) -> None:
    """A call slower than terapi_timeout_s is abandoned and retried."""
    standin.add_connection("acme-prod", org_id=PROD_ORG)
    standin.slow_next(1, 1.0)
    async with started_source(standin, terapi_timeout_s=0.2) as (source, registry):
        assert source.ready
        assert sample(registry, "receiver_terapi_errors_total", status="timeout") == 1
        assert await source.resolve(PROD_ORG_18, "salesforce") is not None


async def test_failed_reread_keeps_the_last_known_org(standin: TerapiStandin) -> None:
    """A changed connection whose read keeps failing still resolves to its last known org."""
    standin.add_connection("acme-prod", org_id=PROD_ORG)
    async with started_source(standin, terapi_unknown_org_refresh_interval_s=0.05) as (source, registry):
        standin.update_connection("acme-prod", metadata_org_id=org(5))
        standin.connections[("salesforce", "acme-prod")].fail_with = 500
        await asyncio.sleep(0.06)
        assert await source.resolve(org18(9), "salesforce") is None  # triggers the refresh
        assert await source.resolve(PROD_ORG_18, "salesforce") == Connection("acme-prod", "salesforce")
        assert sample(registry, "receiver_terapi_skipped_connections", reason="terapi_unavailable") == 0


# Lifecycle, state and secrets


async def test_describe_reports_the_index_state(standin: TerapiStandin) -> None:
    """describe() tells /readyz whether the index is loaded and how big it is."""
    standin.add_connection("acme-prod", org_id=PROD_ORG)
    standin.add_connection("expired", org_id=org(1), fail_with=424)
    async with started_source(standin) as (source, _):
        state = source.describe()
        assert {k: state[k] for k in ("source", "ready", "orgs", "connections", "skipped", "conflicts")} == {
            "source": "terapi",
            "ready": True,
            "orgs": 1,
            "connections": 2,
            "skipped": 1,
            "conflicts": 0,
        }
        assert state["last_error"] is None


async def test_lookups_are_counted_by_result(standin: TerapiStandin) -> None:
    """Hits, hits after a refresh and misses are counted apart."""
    standin.add_connection("acme-prod", org_id=PROD_ORG)
    async with started_source(standin) as (source, registry):
        standin.add_connection("late", org_id=org(1))
        await source.resolve(PROD_ORG_18, "salesforce")
        await source.resolve(org18(1), "salesforce")
        await source.resolve(org18(2), "salesforce")
        assert sample(registry, "receiver_terapi_lookups_total", result="hit") == 1
        assert sample(registry, "receiver_terapi_lookups_total", result="hit_after_refresh") == 1
        assert sample(registry, "receiver_terapi_lookups_total", result="miss") == 1
        assert sample(registry, "receiver_terapi_index_orgs", integration="salesforce") == 2


async def test_stop_is_idempotent_and_ends_background_refreshes(standin: TerapiStandin) -> None:
    """stop() cancels the schedule, may be called twice, and lookups after it still answer."""
    async with started_source(standin, terapi_refresh_interval_s=0.01) as (source, _):
        await source.stop()
        await source.stop()
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("terapi-")]
        calls = len(standin.calls)
        assert await source.resolve(org18(1), "salesforce") is None
        await asyncio.sleep(0.05)
        assert len(standin.calls) == calls


async def test_secret_key_never_reaches_logs_or_reprs(terapi_logs: pytest.LogCaptureFixture) -> None:
    """The secret key is sent as a Bearer token but never logged, repr'd or described."""
    secret = "sk-very-secret-key-424242"
    async with run_standin(secret_key=secret) as standin:
        standin.add_connection("acme-prod", org_id=PROD_ORG)
        standin.fail_next(1, 500)
        async with started_source(standin, secret_key="sk-wrong-but-also-secret") as (source, _):
            texts = [repr(source), str(source.describe())]
        async with started_source(standin) as (source, _):
            texts += [repr(source), str(source.describe())]
    texts.append(terapi_logs.text)
    texts += [str(record.__dict__) for record in terapi_logs.records]
    assert not [text for text in texts if secret in text or "sk-wrong-but-also-secret" in text]


def test_source_without_secret_key_is_a_configuration_error() -> None:
    """Building the source without RECEIVER_TERAPI_SECRET_KEY fails at start-up, naming the setting."""
    settings = load_settings(terapi_secret_key=None)
    with pytest.raises(ConfigurationError, match="RECEIVER_TERAPI_SECRET_KEY"):
        TerapiConnectionSource(settings, CollectorRegistry())
