"""The embedded file sink: structured-mode JSON lines, durable, concurrent writers batched."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import orjson
import pytest

from receiver.errors import PublishFailed
from receiver.file_sink import EVENTS_FILE, QUARANTINE_FILE, FileSink
from tests.test_kafka_sink import an_event


async def test_events_are_structured_mode_lines(tmp_path: Path) -> None:
    """Each event is one CloudEvents structured-mode JSON object with data and attributes."""
    sink = FileSink(tmp_path, publish_timeout_s=5)
    await sink.start()
    await sink.publish([an_event("04l1I000000fztEQAQ"), an_event("04l1I000000fzt9QAA")])
    await sink.stop()
    lines = (tmp_path / EVENTS_FILE).read_bytes().splitlines()
    assert len(lines) == 2
    first = orjson.loads(lines[0])
    assert first["specversion"] == "1.0"
    assert first["id"] == "04l1I000000fztEQAQ"
    assert first["source"] == "/salesforce/orgs/00D1I000003qqqEUAQ"
    assert first["datacontenttype"] == "application/json"
    assert first["data"]["fields"] == {"LastName": "Black"}


async def test_concurrent_publishes_all_land_and_share_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """200 concurrent publishes are all written, with fewer fsyncs than publishes (group commit)."""
    fsyncs = 0
    real_fsync = os.fsync

    def counting_fsync(descriptor: int) -> None:
        nonlocal fsyncs
        fsyncs += 1
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    sink = FileSink(tmp_path, publish_timeout_s=5)
    await sink.start()
    await asyncio.gather(*(sink.publish([an_event(f"04l1I000000f{i:03d}")]) for i in range(200)))
    await sink.stop()
    ids = [orjson.loads(line)["id"] for line in (tmp_path / EVENTS_FILE).read_bytes().splitlines()]
    assert sorted(ids) == sorted(f"04l1I000000f{i:03d}" for i in range(200))
    assert 1 <= fsyncs < 200


async def test_quarantine_goes_to_its_own_file(tmp_path: Path) -> None:
    """Quarantined records are lines of quarantine.jsonl, not events."""
    sink = FileSink(tmp_path, publish_timeout_s=5)
    await sink.start()
    await sink.quarantine({"reason": "unknown_org", "body": "<x/>"})
    await sink.stop()
    assert orjson.loads((tmp_path / QUARANTINE_FILE).read_bytes())["reason"] == "unknown_org"
    assert (tmp_path / EVENTS_FILE).read_bytes() == b""


async def test_write_failure_is_a_publish_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk error surfaces as PublishFailed, never as a silent success."""
    sink = FileSink(tmp_path, publish_timeout_s=5)
    await sink.start()

    def failing_fsync(descriptor: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(PublishFailed, match="No space left"):
        await sink.publish([an_event()])
    monkeypatch.undo()
    await sink.stop()


async def test_publish_before_start_fails(tmp_path: Path) -> None:
    """A sink that was never started refuses to publish."""
    with pytest.raises(PublishFailed):
        await FileSink(tmp_path, publish_timeout_s=5).publish([an_event()])
