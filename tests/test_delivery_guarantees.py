"""The delivery guarantees of DESIGN.md under faults and load, against the real services.

Each test drives a known set of Outbound Messages the way Salesforce does (tests.salesforce_sender:
resend anything not acked, sometimes resend what was acked), breaks something on the way, and
reads the topic back. Run them alone with ``pytest -m faults tests/test_delivery_guarantees.py``;
with TEST_SERVICES_ROOT pointing at a private copy of scripts/services they break that copy only.
Every test leaves the broker and Redis running, whatever happens.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from tests.broker import kafka_paused, kill_kafka, start_kafka, start_redis, stop_redis
from tests.conftest import EXAMPLE_ORG_MAP, EXAMPLE_WSDL_DIR, SettingsFactory, live_receiver
from tests.flood import flood
from tests.kafka_helpers import read_topic, unique_topic
from tests.om_payloads import outbound_message
from tests.processes import running_receiver
from tests.prometheus import metric
from tests.salesforce_sender import (
    OM_PATH,
    SOAP_HEADERS,
    Message,
    SalesforceSender,
    SenderOptions,
    all_ids,
    fresh_messages,
    is_soap_ack,
)

DUPLICATES_METRIC = 'receiver_duplicates_total{kind="outbound_message"}'
#: An org of examples/org-map.toml other than the one tests.salesforce_sender posts for.
OTHER_ORG15 = "00Dxx0000001gPF"


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout_s: float, what: str) -> float:
    """Seconds until ``check`` holds; fails the test after ``timeout_s``."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < timeout_s, f"not within {timeout_s} s: {what}"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


def readiness_is(client: httpx.AsyncClient, status: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await client.get("/readyz")).status_code == status

    return check


async def topic_ids(bootstrap: str, topic: str, expect: int) -> list[str]:
    return [record.header("ce_id") for record in await read_topic(bootstrap, topic, expect=expect, timeout_s=30)]


@pytest.mark.kafka
@pytest.mark.faults
async def test_broker_killed_and_restarted_mid_load_loses_no_acked_notification(
    kafka_settings: SettingsFactory, tmp_path: Path
) -> None:
    """Broker SIGKILLed mid-load: no Ack for what is not in Kafka; recovers by itself; resends land."""
    settings = kafka_settings(publish_timeout_s=4.0)
    messages = fresh_messages(240, 5)
    options = SenderOptions(concurrency=8, rate_per_s=40, resend_acked_ratio=0.1, deadline_s=50)
    async with live_receiver(settings) as client:
        sender = SalesforceSender([str(client.base_url)], messages, options)
        async with sender.in_background() as sending:

            async def some_acked() -> bool:
                return len(sender.acked) >= 300

            await eventually(some_acked, timeout_s=20, what="300 notifications acked before the kill")
            try:
                kill_kafka()
                killed = time.monotonic()
                await eventually(readiness_is(client, 503), timeout_s=10, what="/readyz 503 with the broker killed")
                acked_while_down = len(sender.acked)
                await asyncio.sleep(2)
            finally:
                restarting = time.monotonic()
                await asyncio.to_thread(start_kafka)
            broker_back = time.monotonic()
            ready_after_s = await eventually(readiness_is(client, 200), timeout_s=30, what="/readyz 200 again")

            async def acking_again() -> bool:
                return len(sender.acked) > acked_while_down

            acking_after_s = await eventually(acking_again, timeout_s=30, what="Acks again after the restart")
            report = await sending
        recreated = metric((await client.get("/metrics")).text, "receiver_sink_recreated_total")
    # The figures the report quotes, shown with pytest -s.
    print(
        f"\nkill -9: broker down {restarting - killed:.1f} s, its restart took {broker_back - restarting:.1f} s; "
        f"receiver ready {ready_after_s:.1f} s and acking {acking_after_s:.1f} s after the broker was back "
        f"({time.monotonic() - broker_back:.1f} s to finish); answers {dict(report.answers)}"
    )
    bootstrap = settings.kafka_bootstrap_servers or ""
    in_kafka = set(await topic_ids(bootstrap, settings.kafka_topic, len(all_ids(messages))))
    assert report.not_acks == 0
    assert report.acked <= in_kafka, f"acked but not in Kafka: {sorted(report.acked - in_kafka)[:5]}"
    assert report.unacked == set()
    assert all_ids(messages) <= in_kafka
    assert report.answers["200"] > 0 and report.answers["503"] + report.answers["500"] > 0
    assert recreated >= 1, "the sink recovered without building a new producer"


def process_settings(kafka_bootstrap: str, data_dir: Path, **overrides: object) -> dict[str, object]:
    """Settings of a receiver process: the real broker, the example org map, a topic of its own."""
    return {
        "kafka_bootstrap_servers": kafka_bootstrap,
        "kafka_topic": unique_topic("events"),
        "kafka_quarantine_topic": unique_topic("quarantine"),
        "org_map_file": EXAMPLE_ORG_MAP,
        "wsdl_dir": EXAMPLE_WSDL_DIR,
        "data_dir": data_dir,
        "publish_timeout_s": 5,
        **overrides,
    }


@pytest.mark.kafka
@pytest.mark.redis
@pytest.mark.faults
async def test_duplicates_spread_across_two_replicas_are_published_once(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    """Two replicas sharing Redis and Kafka, copies sent to both at once and resent: each id once in the topic."""
    shared = process_settings(kafka_bootstrap, tmp_path / "a", redis_url=redis_url)
    messages = fresh_messages(300, 5)
    options = SenderOptions(concurrency=12, resend_acked_ratio=0.3, parallel_copy_ratio=0.5, deadline_s=45)
    async with (
        running_receiver(shared, tmp_path) as first,
        running_receiver({**shared, "data_dir": tmp_path / "b"}, tmp_path) as second,
    ):
        report = await SalesforceSender([first.base_url, second.base_url], messages, options).run()
        async with httpx.AsyncClient() as client:
            duplicates = [
                metric((await client.get(f"{replica.base_url}/metrics")).text, DUPLICATES_METRIC)
                for replica in (first, second)
            ]
    print(f"\ntwo replicas: {report.elapsed_s:.1f} s, answers {dict(report.answers)}, duplicates {duplicates}")
    counts = Counter(await topic_ids(kafka_bootstrap, str(shared["kafka_topic"]), len(all_ids(messages))))
    assert report.unacked == set()
    assert report.not_acks == 0
    assert set(counts) == all_ids(messages)
    assert [notification_id for notification_id, count in counts.items() if count > 1] == []
    # Both replicas answered resends as duplicates: the dedupe really was shared.
    assert all(count > 0 for count in duplicates), duplicates


@pytest.mark.kafka
@pytest.mark.redis
@pytest.mark.faults
async def test_redis_stopped_mid_load_keeps_the_service_answering(
    kafka_settings: SettingsFactory, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis stopped mid-load: every request is still acked (without dedupe, counted, logged once); dedupe resumes."""
    settings = kafka_settings(redis_url=redis_url)
    messages = fresh_messages(200, 5)
    options = SenderOptions(concurrency=6, rate_per_s=50, resend_acked_ratio=0.1, deadline_s=40)
    async with live_receiver(settings) as client:
        sender = SalesforceSender([str(client.base_url)], messages, options)
        async with sender.in_background() as sending:

            async def some_acked() -> bool:
                return len(sender.acked) >= 250

            await eventually(some_acked, timeout_s=20, what="250 notifications acked before Redis stops")
            try:
                await asyncio.to_thread(stop_redis)
                acked_at_stop = len(sender.acked)

                async def acked_without_redis() -> bool:
                    return len(sender.acked) >= acked_at_stop + 250

                await eventually(acked_without_redis, timeout_s=20, what="250 more notifications acked without Redis")
            finally:
                await asyncio.to_thread(start_redis)
            report = await sending
        metrics = (await client.get("/metrics")).text
        # Redis is back: a resend is a duplicate again (the client reconnects by itself).
        probe = fresh_messages(1, 1)[0]

        async def dedupe_works() -> bool:
            for _ in range(2):
                assert is_soap_ack(await client.post(OM_PATH, content=probe.body, headers=SOAP_HEADERS))
            return metric((await client.get("/metrics")).text, DUPLICATES_METRIC) > metric(metrics, DUPLICATES_METRIC)

        await eventually(dedupe_works, timeout_s=10, what="dedupe working again after Redis restarted")
    assert set(report.answers) == {"200"}, report.answers
    assert report.unacked == set()
    assert metric(metrics, "receiver_dedupe_unavailable_total") > 0
    warnings = [r for r in caplog.records if r.getMessage().startswith("dedupe store unavailable")]
    assert len(warnings) == 1, "logged once per interval, not once per request"
    in_kafka = set(await topic_ids(settings.kafka_bootstrap_servers or "", settings.kafka_topic, 1000))
    assert all_ids(messages) <= in_kafka


FLOOD_REQUESTS = 5000
FLOOD_CONNECTIONS = 1000
#: Notifications per flooding message, about 4 KB of SOAP each (the accepted ones cost the time).
FLOOD_NOTIFICATIONS = 10
#: Stated bound on the receiver's resident set during a flood: about 60 MiB at rest, plus up to
#: 64 KiB of unread body per open connection (1,000 here), plus the parse of each request in
#: flight (50), plus about 280 bytes per in-memory dedupe entry (capped at 10,000 here).
FLOOD_RSS_BOUND_BYTES = 160 * 1024 * 1024
MIB = 1024 * 1024


@pytest.mark.kafka
@pytest.mark.faults
async def test_flood_past_the_in_flight_limit_gets_503s_and_memory_stays_bounded(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Two floods of 5,000 requests, 1,000 at once, limit 50: 503 Faults with Retry-After, RSS bounded, then service."""
    settings = process_settings(kafka_bootstrap, tmp_path / "var", max_requests_in_flight=50, dedupe_max_entries=10_000)
    messages = fresh_messages(2 * FLOOD_REQUESTS, FLOOD_NOTIFICATIONS)
    async with running_receiver(settings, tmp_path) as receiver:
        idle_rss = receiver.rss_bytes()
        first = await flood(receiver, messages[:FLOOD_REQUESTS], connections=FLOOD_CONNECTIONS)
        second = await flood(receiver, messages[FLOOD_REQUESTS:], connections=FLOOD_CONNECTIONS)
        print(
            f"\nflood: {first.elapsed_s:.1f} s and {second.elapsed_s:.1f} s, "
            f"answers {dict(Counter(a.status if a else None for a in first.answers + second.answers))}, "
            f"RSS idle {idle_rss / MIB:.0f} MiB, peaks {first.peak_rss_bytes / MIB:.0f} and "
            f"{second.peak_rss_bytes / MIB:.0f} MiB, after {receiver.rss_bytes() / MIB:.0f} MiB"
        )
        after = fresh_messages(1, 3)[0]
        async with httpx.AsyncClient(base_url=receiver.base_url) as client:
            assert is_soap_ack(await client.post(OM_PATH, content=after.body, headers=SOAP_HEADERS))
            assert (await client.get("/readyz")).status_code == 200
            metrics = (await client.get("/metrics")).text
    for run in (first, second):
        assert len(run.with_status(200)) + len(run.with_status(503)) == FLOOD_REQUESTS, "every request answered"
        assert run.with_status(503), "the flood went past the limit"
        for answer in run.with_status(503):
            assert answer.headers["retry-after"].isdigit()
            assert answer.headers["content-type"].startswith("text/xml")
            assert b"<faultcode>soapenv:Server</faultcode>" in answer.body and b"overloaded" in answer.body
        assert all(b"<Ack>true</Ack>" in answer.body for answer in run.with_status(200))
        assert run.peak_rss_bytes < FLOOD_RSS_BOUND_BYTES, f"peak RSS {run.peak_rss_bytes / MIB:.0f} MiB"
    # A second flood reuses what the first one freed: no growth from one flood to the next.
    assert second.peak_rss_bytes < first.peak_rss_bytes + 20 * MIB
    assert metric(metrics, "receiver_in_flight_requests") == 0
    assert metric(metrics, "receiver_in_flight_events") == 0
    answers = first.answers + second.answers
    acked = all_ids([m for m, a in zip(messages, answers, strict=True) if a and a.status == 200])
    acked |= after.notification_ids
    assert acked <= set(await topic_ids(kafka_bootstrap, str(settings["kafka_topic"]), len(acked)))


SHUTDOWN_TIMEOUT_S = 5
#: What the process may take past the graceful deadline: stopping the components, the flush of
#: the Kafka producer (bounded by min(publish timeout, 5 s)), and Python's exit.
SHUTDOWN_MARGIN_S = 3.0


@pytest.mark.kafka
@pytest.mark.faults
async def test_sigterm_mid_load_exits_0_in_time_and_loses_no_acked_notification(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """SIGTERM mid-load: exit 0 within the deadline, every acked id in Kafka; a new replica takes the resends."""
    settings = process_settings(kafka_bootstrap, tmp_path / "var", shutdown_timeout_s=SHUTDOWN_TIMEOUT_S)
    messages = fresh_messages(300, 5)
    options = SenderOptions(concurrency=16, rate_per_s=100, resend_acked_ratio=0.1, deadline_s=30)
    async with running_receiver(settings, tmp_path) as receiver:
        sender = SalesforceSender([receiver.base_url], messages, options)
        async with sender.in_background() as sending:

            async def some_acked() -> bool:
                return len(sender.acked) >= 400

            await eventually(some_acked, timeout_s=20, what="400 notifications acked before SIGTERM")
            receiver.terminate()
            signalled = time.monotonic()
            status = await receiver.wait(SHUTDOWN_TIMEOUT_S + SHUTDOWN_MARGIN_S)
            exit_s = time.monotonic() - signalled
            sender.stop()
            report = await sending
    print(f"\nSIGTERM: exit {status} after {exit_s:.2f} s; answers {dict(report.answers)}")
    assert status == 0, receiver.log()
    assert report.not_acks == 0
    in_kafka = set(await topic_ids(kafka_bootstrap, str(settings["kafka_topic"]), len(report.acked)))
    assert report.acked <= in_kafka, f"acked but not in Kafka: {sorted(report.acked - in_kafka)[:5]}"
    assert report.unacked, "SIGTERM came after the whole load: the test proved nothing"
    # Salesforce resends what was not acked to whichever replica is still up.
    unfinished = [message for message in messages if not message.notification_ids <= report.acked]
    async with running_receiver(settings, tmp_path) as successor:
        resent = await SalesforceSender([successor.base_url], unfinished, options).run()
    assert resent.unacked == set()
    assert all_ids(messages) <= set(await topic_ids(kafka_bootstrap, str(settings["kafka_topic"]), 1500))


@pytest.mark.kafka
@pytest.mark.faults
async def test_sigterm_with_publishes_stuck_past_the_deadline_answers_no_ack_and_exits_0(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Broker frozen at SIGTERM: requests stuck at the deadline get the endpoint's own error (a
    SOAP Fault, 503 shutting_down), never an Ack nor uvicorn's plain 500; exit 0 in time."""
    shutdown_timeout_s = 1
    settings = process_settings(
        kafka_bootstrap, tmp_path / "var", shutdown_timeout_s=shutdown_timeout_s, publish_timeout_s=3
    )
    messages = fresh_messages(20, 5)
    async with (
        running_receiver(settings, tmp_path) as receiver,
        httpx.AsyncClient(base_url=receiver.base_url, timeout=30) as client,
    ):
        assert is_soap_ack(await client.post(OM_PATH, content=messages[0].body, headers=SOAP_HEADERS))

        async def post(message: Message) -> httpx.Response | None:
            try:
                return await client.post(OM_PATH, content=message.body, headers=SOAP_HEADERS)
            except httpx.TransportError:
                return None

        with kafka_paused():
            posting = [asyncio.create_task(post(message)) for message in messages[1:]]
            await asyncio.sleep(0.5)
            receiver.terminate()
            signalled = time.monotonic()
            status = await receiver.wait(shutdown_timeout_s + SHUTDOWN_MARGIN_S + 1)
            exit_s = time.monotonic() - signalled
            answers = await asyncio.gather(*posting)
        await asyncio.to_thread(start_kafka)  # waits until the broker answers metadata again
    print(
        f"\nSIGTERM, broker frozen: exit {status} after {exit_s:.2f} s; "
        f"answers {[a and a.status_code for a in answers]}"
    )
    assert status == 0, receiver.log()
    assert "RECEIVER_PUBLISH_TIMEOUT_S (3) is not below RECEIVER_SHUTDOWN_TIMEOUT_S (1)" in receiver.log()
    assert not any(answer is not None and is_soap_ack(answer) for answer in answers)
    cut_off = [answer for answer in answers if answer is not None]
    assert cut_off, "no stuck request was answered before the exit"
    for answer in cut_off:
        assert answer.status_code == 503, answer.text
        assert answer.headers["content-type"].startswith("text/xml")
        assert "<faultcode>soapenv:Server</faultcode>" in answer.text and "shutting_down" in answer.text
        assert answer.headers["retry-after"] == "5"


@pytest.mark.kafka
@pytest.mark.faults
async def test_one_org_past_its_share_gets_429_while_other_orgs_are_served(
    kafka_settings: SettingsFactory, kafka_bootstrap: str
) -> None:
    """With max_requests_in_flight_per_org = 2 and the broker stalled, an org's third request is
    refused at once (429 Fault, Retry-After) while another org's request is taken; once the broker
    answers, every request taken is acked and its events are in the topic."""
    settings = kafka_settings(max_requests_in_flight_per_org=2, publish_timeout_s=20)
    busy = fresh_messages(3, 1)
    other_org = outbound_message(1, org15=OTHER_ORG15, notification_prefix="04l" + uuid.uuid4().hex[:7])
    async with live_receiver(settings) as client:

        async def post(body: bytes) -> httpx.Response:
            return await client.post(OM_PATH, content=body, headers=SOAP_HEADERS)

        async def publishing() -> float:
            return metric((await client.get("/metrics")).text, "receiver_in_flight_requests")

        with kafka_paused():
            taken = [asyncio.create_task(post(message.body)) for message in busy[:2]]
            await eventually(lambda: _at_least(publishing, 2), timeout_s=10, what="two requests in flight")
            started = time.monotonic()
            refused = await post(busy[2].body)
            refused_s = time.monotonic() - started
            taken.append(asyncio.create_task(post(other_org)))
            await eventually(lambda: _at_least(publishing, 3), timeout_s=10, what="the other org's request taken")
        answers = await asyncio.gather(*taken)
    assert refused.status_code == 429, refused.text
    assert refused.headers["retry-after"] == "2"
    assert "<faultcode>soapenv:Server</faultcode>" in refused.text and "org_overloaded" in refused.text
    assert refused_s < 1.0
    assert all(is_soap_ack(answer) for answer in answers), [answer.status_code for answer in answers]
    published = set(await topic_ids(kafka_bootstrap, str(settings.kafka_topic), 3))
    assert all_ids(busy[:2]) <= published
    assert not all_ids(busy[2:]) & published


async def _at_least(read: Callable[[], Awaitable[float]], value: float) -> bool:
    return await read() >= value
