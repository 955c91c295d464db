"""sf-receiver replay end to end: recordings, quarantine and payload files sent again to real receivers."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from receiver.file_sink import EVENTS_FILE, QUARANTINE_FILE
from receiver.recording import RECORDINGS_DIR
from receiver.replay import Replayer, ReplayOptions, Summary
from receiver.replay_items import ReplayFilter
from receiver.replay_sources import PayloadDefaults, items_from, payload_item
from receiver.replay_targets import HttpTarget, PipelineTarget, ReplayTarget
from receiver.settings import Settings
from tests.conftest import EXAMPLE_ORG_MAP, SettingsFactory, live_receiver
from tests.event_payloads import ROTATED_SECRET, SECRET, TERAPI_SECRET, change_event, signed_headers, terapi_headers
from tests.event_payloads import sample as event_sample
from tests.kafka_helpers import Record, read_topic, unique_topic
from tests.om_payloads import SESSION_ID, id18, outbound_message
from tests.test_outbound_endpoint import OM_PATH, SOAP, is_ack
from tests.test_recording import recording_bytes, recordings

EVENTS_PATH = "/webhooks/salesforce/events"
TOKEN_A = "om-token-of-receiver-a-3f9e1b"
TOKEN_B = "om-token-of-receiver-b-77c2d0"
TERAPI_SECRET_B = "terapi-webhook-secret-of-receiver-b"
UNKNOWN_ORG15 = "00D5g000004Xz1A"
SF_RECEIVER = Path(sys.executable).parent / "sf-receiver"


def sender_settings(factory: SettingsFactory, data_dir: Path, **overrides: Any) -> Settings:
    """Receiver A: the one that records what its senders post."""
    values = {"outbound_token": TOKEN_A, "event_secrets": SECRET, "terapi_webhook_secret": TERAPI_SECRET}
    return factory(data_dir=data_dir, **{**values, **overrides})


def replica_settings(factory: SettingsFactory, data_dir: Path, **overrides: Any) -> Settings:
    """Receiver B: other token and secrets, so replay must re-sign with B's configuration."""
    values = {"outbound_token": TOKEN_B, "event_secrets": ROTATED_SECRET, "terapi_webhook_secret": TERAPI_SECRET_B}
    return factory(data_dir=data_dir, **{**values, **overrides})


def fresh_prefix() -> str:
    """Notification ids no earlier run used: a shared Redis keeps dedupe marks for 25 h."""
    return "04l" + uuid.uuid4().hex[:7]


async def post_traffic(client: httpx.AsyncClient) -> None:
    """Two OMs of two notifications, a platform event, a CDC event of two records, a terapi
    forward (8 events, every id fresh), and two requests that are refused (400 and 401)."""
    token = {"token": TOKEN_A}
    prefix = fresh_prefix()
    for start in (0, 2):
        body = outbound_message(2, start=start, notification_prefix=prefix)
        assert is_ack(await client.post(OM_PATH, params=token, content=body, headers=SOAP))
    platform_event = copy.deepcopy(event_sample("platform_event_low_ink.json"))
    platform_event["data"]["event"]["EventUuid"] = str(uuid.uuid4())
    event = orjson.dumps(platform_event)
    assert (await client.post(EVENTS_PATH, content=event, headers=signed_headers(event))).status_code == 200
    change = change_event(["001xx000003DGb4AAG", "001xx000003DGb5AAG"], Name="Acme")
    change["data"]["payload"]["ChangeEventHeader"]["transactionKey"] = str(uuid.uuid4())
    cdc = orjson.dumps(change)
    assert (await client.post(EVENTS_PATH, content=cdc, headers=signed_headers(cdc))).status_code == 200
    forwarded = copy.deepcopy(platform_event)
    forwarded["data"]["event"]["EventUuid"] = str(uuid.uuid4())
    forward = orjson.dumps(
        {
            "from": "salesforce",
            "type": "forward",
            "connectionId": "example-contacts",
            "providerConfigKey": "salesforce",
            "payload": forwarded,
        }
    )
    assert (await client.post("/webhooks/terapi", content=forward, headers=terapi_headers(forward))).status_code == 200
    assert (await client.post(OM_PATH, params=token, content=b"<broken", headers=SOAP)).status_code == 400
    forged = signed_headers(event, secret=ROTATED_SECRET)
    assert (await client.post(EVENTS_PATH, content=event, headers=forged)).status_code == 401


async def run_replay(
    settings: Settings,
    sources: Sequence[str | Path],
    *,
    to: str | None = None,
    dry_run: bool = False,
    item_filter: ReplayFilter | None = None,
    options: ReplayOptions | None = None,
    defaults: PayloadDefaults | None = None,
) -> Summary:
    """What ``sf-receiver replay`` does, in this process: to a URL, else --publish."""
    target: ReplayTarget
    if dry_run:
        target = PipelineTarget(settings, dry_run=True, request_plan=HttpTarget(to, settings) if to else None)
    else:
        target = HttpTarget(to, settings) if to else PipelineTarget(settings)
    item_filter = item_filter or ReplayFilter()
    summary = Summary(dry_run=dry_run)
    items = items_from(
        [str(source) for source in sources],
        settings,
        defaults or PayloadDefaults(),
        since=item_filter.since,
        until=item_filter.until,
    )
    return await Replayer(item_filter, target, options or ReplayOptions(), summary).run(items)


def comparable(records: list[Record]) -> set[tuple[str, ...]]:
    """The events' identity and content; ``received_at`` (and the OM time taken from it) is the replay's."""
    found = set()
    for record in records:
        data = orjson.loads(record.value)
        data.pop("received_at")
        headers = {name: value.decode() for name, value in record.headers.items() if name != "ce_time"}
        found.add(
            (orjson.dumps(headers, option=orjson.OPT_SORT_KEYS).decode(), (record.key or b"").decode(), repr(data))
        )
    return found


def file_events(settings: Settings) -> list[dict[str, Any]]:
    path = settings.data_dir / EVENTS_FILE
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def requests_seen(settings: Settings) -> list[dict[str, Any]]:
    """What a receiver recorded: every request it was sent."""
    return recordings(settings)


@pytest.mark.kafka
async def test_recordings_replayed_to_a_second_receiver_give_the_same_events(
    kafka_settings: SettingsFactory, tmp_path: Path
) -> None:
    """Recorded traffic replayed to receiver B publishes A's events; a second replay publishes nothing new."""
    settings_a = sender_settings(kafka_settings, tmp_path / "a")
    settings_b = replica_settings(kafka_settings, tmp_path / "b")
    bootstrap = settings_a.kafka_bootstrap_servers or ""
    async with live_receiver(settings_a) as client:
        await post_traffic(client)
    published_a = await read_topic(bootstrap, settings_a.kafka_topic, expect=8)
    assert len(published_a) == 8
    recorded = tmp_path / "a" / RECORDINGS_DIR
    async with live_receiver(settings_b) as client:
        first = await run_replay(settings_b, [recorded], to=str(client.base_url))
        second = await run_replay(settings_b, [recorded], to=str(client.base_url))
    assert (first.sent, first.acked, first.rejected, first.failed) == (6, 5, {"malformed_xml": 1}, {})
    assert first.filtered_out == 1, "the 401 is left out"
    published_b = await read_topic(bootstrap, settings_b.kafka_topic, expect=8)
    assert comparable(published_b) == comparable(published_a)
    # The JSON deliveries are duplicates by webhook-id; the OMs are acked without publishing.
    assert (second.duplicates, second.events_accepted) == (3, 0)
    assert len(await read_topic(bootstrap, settings_b.kafka_topic, timeout_s=3)) == 8


@pytest.mark.kafka
@pytest.mark.redis
async def test_publish_gives_the_same_events_as_to(
    kafka_settings: SettingsFactory, redis_url: str, tmp_path: Path
) -> None:
    """Replaying the same recordings with --publish gives exactly the events --to gave; with the
    shared dedupe store, publishing them again gives nothing new."""
    settings_a = sender_settings(kafka_settings, tmp_path / "a")
    settings_b = replica_settings(kafka_settings, tmp_path / "b")
    settings_c = replica_settings(kafka_settings, tmp_path / "c", redis_url=redis_url)
    async with live_receiver(settings_a) as client:
        await post_traffic(client)
    recorded = tmp_path / "a" / RECORDINGS_DIR
    async with live_receiver(settings_b) as client:
        sent = await run_replay(
            settings_b, [recorded], to=str(client.base_url), item_filter=ReplayFilter(outcomes=["ok"])
        )
    published = await run_replay(settings_c, [recorded], item_filter=ReplayFilter(outcomes=["ok"]))
    again = await run_replay(settings_c, [recorded], item_filter=ReplayFilter(outcomes=["ok"]))
    assert sent.ok and published.ok
    assert (published.acked, published.events_accepted) == (5, 8)
    assert (again.duplicates, again.events_accepted, again.event_duplicates) == (5, 0, 8)
    bootstrap = settings_b.kafka_bootstrap_servers or ""
    via_http = await read_topic(bootstrap, settings_b.kafka_topic, expect=8)
    in_process = await read_topic(bootstrap, settings_c.kafka_topic, expect=8)
    assert len(in_process) == 8
    assert comparable(in_process) == comparable(via_http)


@pytest.mark.kafka
async def test_no_secret_token_or_session_id_in_either_receivers_recordings(
    kafka_settings: SettingsFactory, tmp_path: Path
) -> None:
    """After traffic and its replay, no recording of A or B holds a secret, a token or the SessionId."""
    settings_a = sender_settings(kafka_settings, tmp_path / "a", recording_max_file_bytes=4096)
    settings_b = replica_settings(kafka_settings, tmp_path / "b")
    async with live_receiver(settings_a) as client:
        await post_traffic(client)
    async with live_receiver(settings_b) as client:
        summary = await run_replay(settings_b, [tmp_path / "a" / RECORDINGS_DIR], to=str(client.base_url))
    assert summary.acked == 5
    everything = recording_bytes(tmp_path / "a" / RECORDINGS_DIR) + recording_bytes(tmp_path / "b" / RECORDINGS_DIR)
    assert len(everything.splitlines()) == 7 + 6
    for secret in (SESSION_ID, TOKEN_A, TOKEN_B, SECRET, ROTATED_SECRET, TERAPI_SECRET, TERAPI_SECRET_B):
        assert secret.encode() not in everything, secret
    for secret in (SECRET, ROTATED_SECRET):
        assert secret.removeprefix("whsec_").encode() not in everything


async def test_unknown_org_from_the_quarantine_replays_once_mapped(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """An OM of an unmapped org is quarantined (403); mapped later, its quarantine replay is acked."""
    settings = make_settings(outbound_token=TOKEN_A)
    body = outbound_message(1, org15=UNKNOWN_ORG15, notification_prefix="04lQUARAN0")
    async with live_receiver(settings) as client:
        response = await client.post(OM_PATH, params={"token": TOKEN_A}, content=body, headers=SOAP)
        assert response.status_code == 403
    quarantine = settings.data_dir / QUARANTINE_FILE
    org_map = tmp_path / "org-map.toml"
    org_map.write_text(
        EXAMPLE_ORG_MAP.read_text()
        + f'\n[orgs."{UNKNOWN_ORG15}"]\nconnection_id = "acme-late"\nintegration = "salesforce"\n'
    )
    mapped = make_settings(data_dir=tmp_path / "mapped", org_map_file=org_map, outbound_token=TOKEN_B)
    async with live_receiver(mapped) as client:
        summary = await run_replay(mapped, [quarantine], to=str(client.base_url))
    assert (summary.sent, summary.acked) == (1, 1) and summary.ok
    [event] = file_events(mapped)
    assert event["id"] == id18("04lQUARAN0", 0)
    assert event["terapiconnectionid"] == "acme-late"


@pytest.mark.kafka
async def test_quarantine_topic_replays_with_publish_once_mapped(
    kafka_settings: SettingsFactory, tmp_path: Path
) -> None:
    """From kafka:QUARANTINE_TOPIC, --publish of a payload whose org is now mapped publishes its event."""
    settings = kafka_settings()
    body = outbound_message(2, org15=UNKNOWN_ORG15, notification_prefix="04lKQUARA0")
    async with live_receiver(settings) as client:
        assert (await client.post(OM_PATH, content=body, headers=SOAP)).status_code == 403
    org_map = tmp_path / "org-map.toml"
    org_map.write_text(f'[orgs."{UNKNOWN_ORG15}"]\nconnection_id = "acme-late"\nintegration = "salesforce"\n')
    mapped = kafka_settings(org_map_file=org_map, kafka_quarantine_topic=settings.kafka_quarantine_topic)
    summary = await run_replay(
        mapped, [f"kafka:{settings.kafka_quarantine_topic}"], item_filter=ReplayFilter(outcomes=["403"])
    )
    assert (summary.acked, summary.events_accepted) == (1, 2)
    records = await read_topic(mapped.kafka_bootstrap_servers or "", mapped.kafka_topic, expect=2)
    assert {record.header("ce_terapiconnectionid") for record in records} == {"acme-late"}


async def test_checkpointed_replay_stopped_half_way_resumes_without_resending(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """A run stopped after 3 of 6 items, resumed with the same checkpoint, sends only the other 3."""
    settings_a = sender_settings(make_settings, tmp_path / "a")
    async with live_receiver(settings_a) as client:
        for n in range(6):
            body = outbound_message(1, start=n, notification_prefix="04lCHECKP0")
            assert is_ack(await client.post(OM_PATH, params={"token": TOKEN_A}, content=body, headers=SOAP))
    settings_b = replica_settings(make_settings, tmp_path / "b")
    checkpoint = tmp_path / "replay.checkpoint"
    recorded = tmp_path / "a" / RECORDINGS_DIR
    async with live_receiver(settings_b) as client:
        half = await run_replay(
            settings_b, [recorded], to=str(client.base_url), options=ReplayOptions(limit=3, checkpoint=checkpoint)
        )
        rest = await run_replay(
            settings_b, [recorded], to=str(client.base_url), options=ReplayOptions(checkpoint=checkpoint)
        )
    assert (half.sent, rest.sent, rest.already_done) == (3, 3, 3)
    bodies = [line["body"] for line in requests_seen(settings_b)]
    assert len(bodies) == 6 and len(set(bodies)) == 6, "each recorded request was sent exactly once"
    assert len(file_events(settings_b)) == 6
    assert len(checkpoint.read_text().split()) == 6


async def test_dry_run_sends_nothing_and_says_what_would_be_sent(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """A dry run resolves and lists the events and requests; the receiver sees nothing, nothing is quarantined."""
    settings_a = sender_settings(make_settings, tmp_path / "a")
    async with live_receiver(settings_a) as client:
        await post_traffic(client)
        body = outbound_message(1, org15=UNKNOWN_ORG15)
        assert (await client.post(OM_PATH, params={"token": TOKEN_A}, content=body, headers=SOAP)).status_code == 403
    settings_b = replica_settings(make_settings, tmp_path / "b")
    plans: list[dict[str, Any]] = []
    target = PipelineTarget(settings_b, dry_run=True, request_plan=HttpTarget("http://127.0.0.1:9", settings_b))
    summary = Summary(dry_run=True)
    items = items_from([str(tmp_path / "a" / RECORDINGS_DIR)], settings_b, PayloadDefaults())
    replayer = Replayer(ReplayFilter(), target, ReplayOptions(), summary, on_result=lambda _, r: plans.append(r.plan))
    await replayer.run(items)
    assert summary.valid == 5 and summary.sent == 0
    assert summary.rejected == {"malformed_xml": 1, "unknown_org": 1}
    assert sum(len(plan.get("events", [])) for plan in plans) == 8
    requests = [plan["request"] for plan in plans if plan]
    om_request = next(request for request in requests if "outbound-messages" in request["url"])
    assert om_request["url"].endswith("?token=<configured>") and TOKEN_B not in json.dumps(plans)
    assert not (tmp_path / "b").exists()


def test_filters_select_by_org_kind_outcome_and_time(tmp_path: Path) -> None:
    """--org, --kind, --outcome and --since/--until each narrow the items as documented."""
    from receiver.recording import Outcome, RecordedRequest, to_line

    def line(kind: str, body: bytes, status: int, reason: str, at: str, *, org: str | None = None) -> bytes:
        path = {"outbound_message": OM_PATH, "event": EVENTS_PATH}[kind]
        headers = {"x-salesforce-org-id": org} if org else {}
        request = RecordedRequest(at, kind, "salesforce", path, headers, body, "10.0.0.1", Outcome(status, reason))
        return to_line(request)

    cdc = orjson.dumps(change_event(["001xx000003DGb4AAG"]))
    pe = orjson.dumps(event_sample("platform_event_low_ink.json"))
    recording = tmp_path / "2025-05-01.jsonl"
    recording.write_bytes(
        line("outbound_message", outbound_message(1), 200, "ok", "2025-05-01T10:00:00.000Z")
        + line("outbound_message", outbound_message(1, org15=UNKNOWN_ORG15), 403, "unknown_org", "2025-05-01T11:00:00Z")
        + line("event", cdc, 200, "ok", "2025-05-01T12:00:00.000Z", org="00D1I000003qqqE")
        + line("event", pe, 503, "publish_timeout", "2025-05-01T13:00:00.000Z", org="00D1I000003qqqEUAQ")
        + line("event", pe, 401, "bad_signature", "2025-05-01T14:00:00.000Z", org="00D1I000003qqqEUAQ")
    )

    def selected(**criteria: Any) -> list[str]:
        item_filter = ReplayFilter(**criteria)
        items = [item for item in _sync_items(recording) if item_filter.matches(item)]
        return [item.origin.rsplit(":", 1)[1] for item in items]

    assert selected() == ["1", "2", "3", "4"]
    assert selected(orgs={"00D5g000004Xz1AEAS"}) == ["2"]
    assert selected(orgs={"00D1I000003qqqEUAQ"}) == ["1", "3", "4"]
    assert selected(kinds={"change_event"}) == ["3"]
    assert selected(kinds={"platform_event", "outbound_message"}) == ["1", "2", "4"]
    assert selected(outcomes={"403"}) == ["2"]
    assert selected(outcomes={"5xx", "unknown_org"}) == ["2", "4"]
    assert selected(outcomes={"401"}) == ["5"]
    since, until = datetime(2025, 5, 1, 11, tzinfo=UTC), datetime(2025, 5, 1, 13, tzinfo=UTC)
    assert selected(since=since, until=until) == ["2", "3"]


async def test_a_recording_without_body_that_the_filter_leaves_out_is_filtered_out(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """A wrong-token 401 is recorded without its body: the default filter leaves 401s out, so it
    counts as filtered out, like a 401 recorded whole; a 413 without body is still skipped."""
    from receiver.recording import Outcome, RecordedRequest, to_line

    def line(status: int, reason: str) -> bytes:
        request = RecordedRequest(
            "2025-05-01T10:00:00.000Z",
            "outbound_message",
            "salesforce",
            OM_PATH,
            {},
            None,
            "10.0.0.1",
            Outcome(status, reason),
        )
        return to_line(request)

    recording = tmp_path / "2025-05-01.jsonl"
    recording.write_bytes(line(401, "wrong_token") + line(413, "payload_too_large"))
    settings = make_settings()
    summary = await run_replay(settings, [recording], dry_run=True)
    assert (summary.filtered_out, dict(summary.skipped)) == (1, {"recorded_without_body": 1})
    asked = await run_replay(settings, [recording], dry_run=True, item_filter=ReplayFilter(outcomes={"401"}))
    assert (asked.filtered_out, dict(asked.skipped)) == (1, {"recorded_without_body": 1})


async def test_unreadable_lines_stay_skipped_whatever_the_outcome_filter(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """A damaged recording file is reported as such, not hidden among the filtered out."""
    recording = tmp_path / "2025-05-01.jsonl"
    recording.write_bytes(b"{this is not json\n" + b'{"some": "other record"}\n')
    settings = make_settings()
    unfiltered = await run_replay(settings, [recording], dry_run=True)
    assert dict(unfiltered.skipped) == {"unreadable_line": 1, "not_a_recording": 1}
    asked = await run_replay(settings, [recording], dry_run=True, item_filter=ReplayFilter(outcomes={"5xx"}))
    assert (asked.filtered_out, dict(asked.skipped)) == (0, {"unreadable_line": 1, "not_a_recording": 1})


def _sync_items(path: Path) -> list[Any]:
    async def collected() -> list[Any]:
        return [item async for item in items_from([str(path)], Settings(), PayloadDefaults())]

    return asyncio.run(collected())


async def test_plain_payload_files_take_integration_and_org_from_flags(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """A directory of .xml and .json payloads is sent with the --integration and --org given."""
    payloads = tmp_path / "payloads"
    (payloads / "nested").mkdir(parents=True)
    (payloads / "contact.xml").write_bytes(outbound_message(1, notification_prefix="04lPLAIN00"))
    (payloads / "nested" / "low_ink.json").write_bytes(orjson.dumps(event_sample("platform_event_low_ink.json")))
    (payloads / "notes.txt").write_text("not a payload")
    settings = replica_settings(make_settings, tmp_path / "b")
    defaults = PayloadDefaults(integration="salesforce", organization_id="00D1I000003qqqEUAQ")
    async with live_receiver(settings) as client:
        summary = await run_replay(settings, [payloads], to=str(client.base_url), defaults=defaults)
    assert (summary.acked, summary.rejected, summary.failed) == (2, {}, {})
    assert {event["type"] for event in file_events(settings)} == {
        "com.salesforce.outbound_message",
        "com.salesforce.platform_event",
    }
    seen = {line["path"]: line["headers"] for line in requests_seen(settings)}
    assert seen[EVENTS_PATH]["x-salesforce-org-id"] == "00D1I000003qqqEUAQ"


@pytest.mark.kafka
async def test_raw_topic_replays_between_two_times(kafka_settings: SettingsFactory, tmp_path: Path) -> None:
    """kafka:salesforce.raw with --since/--until replays only the requests recorded in between."""
    settings = kafka_settings(kafka_record_raw=True, kafka_raw_topic=unique_topic("raw"), recording_enabled=False)
    marks = []
    async with live_receiver(settings) as client:
        for n in range(3):
            marks.append(datetime.now(UTC))
            await asyncio.sleep(0.05)
            body = outbound_message(1, start=n, notification_prefix="04lRAWTOP0")
            assert is_ack(await client.post(OM_PATH, content=body, headers=SOAP))
            await asyncio.sleep(0.05)
    target = kafka_settings()
    window = ReplayFilter(since=marks[1], until=marks[2])
    summary = await run_replay(target, [f"kafka:{settings.kafka_raw_topic}"], item_filter=window)
    assert (summary.acked, summary.events_accepted) == (1, 1)
    [record] = await read_topic(target.kafka_bootstrap_servers or "", target.kafka_topic, expect=1)
    assert record.header("ce_id") == id18("04lRAWTOP0", 1)


def _config(path: Path, settings: Settings, **extra: str) -> Path:
    """A TOML file for the CLI holding the settings a replay to ``settings``'s receiver needs."""
    values = {
        "data_dir": str(settings.data_dir),
        "org_map_file": str(settings.org_map_file),
        "wsdl_dir": str(settings.wsdl_dir),
        "outbound_token": TOKEN_B,
        "event_secrets": ROTATED_SECRET,
        "terapi_webhook_secret": TERAPI_SECRET_B,
        **extra,
    }
    path.write_text("".join(f"{name} = {json.dumps(value)}\n" for name, value in values.items()))
    return path


async def _cli(*args: str) -> tuple[int, str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("RECEIVER_")}
    process = await asyncio.create_subprocess_exec(
        str(SF_RECEIVER), "replay", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_cli_exit_status_and_json_summary(make_settings: SettingsFactory, tmp_path: Path) -> None:
    """`sf-receiver replay --json` exits 0 when all is acked, 1 when anything is rejected."""
    settings_a = sender_settings(make_settings, tmp_path / "a")
    async with live_receiver(settings_a) as client:
        await post_traffic(client)
    settings_b = replica_settings(make_settings, tmp_path / "b")
    config = _config(tmp_path / "b.toml", settings_b)
    recorded = str(tmp_path / "a" / RECORDINGS_DIR)
    async with live_receiver(settings_b) as client:
        url = str(client.base_url)
        ok_status, ok_out, ok_err = await _cli(
            recorded, "--to", url, "--outcome", "ok", "--json", "--config", str(config)
        )
        bad_status, bad_out, _ = await _cli(recorded, "--to", url, "--json", "--config", str(config))
    assert ok_status == 0, ok_err
    summary = json.loads(ok_out)
    assert (summary["sent"], summary["acked"], summary["ok"]) == (5, 5, True)
    assert summary["filtered_out"] == 2
    assert ok_err.count("acked ") == 5, "one plain progress line per item when not a terminal"
    assert bad_status == 1
    assert json.loads(bad_out)["rejected"] == {"malformed_xml": 1}


async def test_cli_org_filter_selects_terapi_forwards_by_their_connection(tmp_path: Path) -> None:
    """A recorded terapi forward names a connection, not an org: --org finds it through the org map."""
    from receiver.recording import Outcome, RecordedRequest, to_line

    forward = orjson.dumps(
        {
            "from": "salesforce",
            "type": "forward",
            "connectionId": "example-contacts",  # 00D1I000003qqqEUAQ in the example org map
            "providerConfigKey": "salesforce",
            "payload": event_sample("platform_event_low_ink.json"),
        }
    )
    recording = tmp_path / "2025-05-01.jsonl"
    recording.write_bytes(
        to_line(
            RecordedRequest(
                "2025-05-01T10:00:00.000Z",
                "terapi_forward",
                "terapi",
                "/webhooks/terapi",
                {"content-type": "application/json"},
                forward,
                "10.0.0.1",
                Outcome(503, "publish_timeout"),
            )
        )
    )
    config = tmp_path / "replay.toml"
    config.write_text(f'org_map_file = "{EXAMPLE_ORG_MAP}"\ndata_dir = "{tmp_path / "var"}"\n')
    summaries = {}
    for org in ("00D1I000003qqqE", "00D5g000004Xz1AEAS"):
        status, out, err = await _cli(
            str(recording), "--publish", "--dry-run", "--json", "--org", org, "--config", str(config)
        )
        assert status == 0, err
        summaries[org] = json.loads(out)
    assert (summaries["00D1I000003qqqE"]["valid"], summaries["00D1I000003qqqE"]["filtered_out"]) == (1, 0)
    assert (summaries["00D5g000004Xz1AEAS"]["valid"], summaries["00D5g000004Xz1AEAS"]["filtered_out"]) == (0, 1)


async def test_cli_refuses_a_missing_source_and_an_ambiguous_target(tmp_path: Path) -> None:
    """A source that does not exist, or neither --to nor --publish: exit 2 with one line on stderr."""
    missing_status, _, missing_err = await _cli(str(tmp_path / "nope.jsonl"), "--publish")
    neither_status, _, neither_err = await _cli(str(tmp_path))
    assert missing_status == 2 and "does not exist" in missing_err
    assert neither_status == 2 and "--to URL" in neither_err


async def test_cli_refuses_a_to_that_is_not_an_http_url(tmp_path: Path) -> None:
    """--to 'http://[::1' or 'localhost:8080': exit 2 with one line, no traceback."""
    for url in ("http://[::1", "localhost:8080"):
        status, _, err = await _cli(str(tmp_path), "--to", url)
        assert status == 2 and "--to" in err and "Traceback" not in err, err


async def test_a_dry_run_to_a_url_fails_what_the_real_run_could_not_sign(make_settings: SettingsFactory) -> None:
    """Without a secret to sign events with, a dry run with --to reports the failure the real
    run would meet (no_event_secret), rather than "valid"."""
    settings = make_settings(org_map_file=EXAMPLE_ORG_MAP)
    target = PipelineTarget(settings, dry_run=True, request_plan=HttpTarget("http://127.0.0.1:9", settings))
    summary = Summary(dry_run=True)
    body = json.dumps(event_sample("platform_event_low_ink.json")).encode()
    items = [payload_item(body, "low_ink.json", "event", PayloadDefaults(organization_id="00D1I000003qqqEUAQ"))]
    await Replayer(ReplayFilter(), target, ReplayOptions(), summary).run(_async_items(items))
    assert (summary.valid, summary.failed, summary.sent) == (0, {"no_event_secret": 1}, 0)


async def _async_items(items: list[Any]) -> Any:
    for item in items:
        yield item


async def test_interrupted_cli_run_resumes_from_its_checkpoint(make_settings: SettingsFactory, tmp_path: Path) -> None:
    """SIGINT mid-run: in-flight items finish and are checkpointed (exit 130); the resume sends the rest once."""
    settings_a = sender_settings(make_settings, tmp_path / "a")
    async with live_receiver(settings_a) as client:
        for n in range(12):
            body = outbound_message(1, start=n, notification_prefix="04lSIGINT0")
            assert is_ack(await client.post(OM_PATH, params={"token": TOKEN_A}, content=body, headers=SOAP))
    settings_b = replica_settings(make_settings, tmp_path / "b")
    config = str(_config(tmp_path / "b.toml", settings_b))
    checkpoint = str(tmp_path / "run.checkpoint")
    recorded = str(tmp_path / "a" / RECORDINGS_DIR)
    async with live_receiver(settings_b) as client:
        args = [recorded, "--to", str(client.base_url), "--config", config, "--checkpoint", checkpoint, "--json"]
        env = {name: value for name, value in os.environ.items() if not name.startswith("RECEIVER_")}
        process = await asyncio.create_subprocess_exec(
            str(SF_RECEIVER), "replay", *args, "--rate", "8", stdout=asyncio.subprocess.PIPE, env=env
        )
        await wait_for_requests(settings_b, 3)
        process.send_signal(signal.SIGINT)
        out, _ = await process.communicate()
        interrupted = json.loads(out)
        resumed_status, resumed_out, _ = await _cli(*args)
    assert process.returncode == 130 and interrupted["interrupted"]
    assert 3 <= interrupted["sent"] < 12
    resumed = json.loads(resumed_out)
    assert resumed_status == 0
    assert resumed["already_done"] == interrupted["sent"]
    assert resumed["sent"] + interrupted["sent"] == 12
    bodies = [line["body"] for line in requests_seen(settings_b)]
    assert len(bodies) == 12 and len(set(bodies)) == 12


async def wait_for_requests(settings: Settings, count: int) -> None:
    """Until a live receiver has recorded ``count`` requests (its recorder writes in the background)."""
    directory = settings.data_dir / RECORDINGS_DIR
    deadline = time.monotonic() + 10
    for _ in iter(lambda: time.monotonic() < deadline, False):
        if directory.exists() and len(recording_bytes(directory).splitlines()) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the receiver did not record {count} requests")


def test_recording_line_survives_rotation_with_the_same_item_id(tmp_path: Path) -> None:
    """The same line read from DAY.jsonl and, rotated, from DAY.1.jsonl.gz has the same item id."""
    import gzip

    from receiver.recording import Outcome, RecordedRequest, to_line

    line = to_line(
        RecordedRequest(
            "2025-05-01T10:00:00.000Z", "outbound_message", "salesforce", OM_PATH, {}, b"<x/>", None, Outcome(200, "ok")
        )
    )
    (tmp_path / "open").mkdir()
    (tmp_path / "open" / "2025-05-01.jsonl").write_bytes(line)
    (tmp_path / "closed").mkdir()
    (tmp_path / "closed" / "2025-05-01.1.jsonl.gz").write_bytes(gzip.compress(line))
    [before] = _sync_items(tmp_path / "open")
    [after] = _sync_items(tmp_path / "closed")
    assert before.item_id == after.item_id
    assert before.received_at == datetime(2025, 5, 1, 10, tzinfo=UTC)


def test_a_recording_whose_body_was_withheld_is_skipped_not_sent(tmp_path: Path) -> None:
    """A body withheld from the recording (its SessionId could not be redacted) is counted as
    skipped: the placeholder in its place is no request to send again."""
    from receiver.recording import Outcome, RecordedRequest, to_line

    withheld = to_line(
        RecordedRequest(
            "2025-05-01T10:00:00.000Z",
            "event",
            "salesforce",
            "/webhooks/salesforce/events",
            {},
            b'{"note": "<SessionId>a</SessionId><SessionId"}',
            None,
            Outcome(200, "ok"),
        )
    )
    assert b"body withheld" in withheld
    (tmp_path / "2025-05-01.jsonl").write_bytes(withheld)
    [skipped] = _sync_items(tmp_path)
    assert skipped.reason == "body_withheld"


def _recording_line(day: str, number: int) -> bytes:
    from receiver.recording import Outcome, RecordedRequest, to_line

    body = outbound_message(1, start=number)
    return to_line(
        RecordedRequest(
            f"{day}T10:00:00.000Z", "outbound_message", "salesforce", OM_PATH, {}, body, None, Outcome(200, "ok")
        )
    )


class RecordingInto:
    """A target standing for a receiver that records into the directory being replayed, and
    rotates its file (rename, compress, new file) at the first item."""

    def __init__(self, directory: Path, day: str, *, rotate: bool) -> None:
        self.today = directory / f"{day}.jsonl"
        self.day = day
        self.rotate = rotate
        self.sent: list[str] = []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send(self, item: Any) -> Any:
        import gzip

        from receiver.replay_targets import ReplayResult, Verdict

        self.sent.append(item.body.decode())
        if self.rotate and len(self.sent) == 1:
            rotated = self.today.with_name(f"{self.day}.1.jsonl")
            self.today.rename(rotated)
            rotated.with_name(rotated.name + ".gz").write_bytes(gzip.compress(rotated.read_bytes()))
            rotated.unlink()
        with self.today.open("ab") as recording:
            recording.write(_recording_line(self.day, 900 + len(self.sent)))
        return ReplayResult(Verdict.ACKED)


@pytest.mark.parametrize("as_directory", [True, False], ids=["directory", "files"])
@pytest.mark.parametrize("rotate", [False, True], ids=["recording-into", "rotating-meanwhile"])
async def test_a_directory_is_replayed_as_it_was_when_the_replay_started(
    tmp_path: Path, rotate: bool, as_directory: bool, make_settings: SettingsFactory
) -> None:
    """Replaying a directory a receiver records into (and rotates meanwhile) sends exactly the
    lines that were there at the start: none of the replay's own, none lost to the rotation."""
    (tmp_path / "2025-05-01.jsonl").write_bytes(b"".join(_recording_line("2025-05-01", n) for n in range(3)))
    (tmp_path / "2025-05-02.jsonl").write_bytes(b"".join(_recording_line("2025-05-02", n) for n in range(10, 12)))
    target = RecordingInto(tmp_path, "2025-05-02", rotate=rotate)
    summary = Summary()
    # The directory, or its files named one by one: both are taken as they were at the start.
    sources = [str(tmp_path)] if as_directory else [str(tmp_path / f"2025-05-0{day}.jsonl") for day in (1, 2)]
    items = items_from(sources, make_settings(), PayloadDefaults())
    await Replayer(ReplayFilter(), target, ReplayOptions(concurrency=1), summary).run(items)
    names = [re.search(r"<sf:LastName>([^<]+)<", body).group(1) for body in target.sent]  # type: ignore[union-attr]
    assert names == ["Name 0", "Name 1", "Name 2", "Name 10", "Name 11"]
