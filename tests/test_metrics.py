"""/metrics with worker processes: every scrape holds every worker's values, whichever answers it."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from receiver.metrics import exposition
from tests.om_payloads import outbound_message
from tests.processes import running_receiver

REPO = Path(__file__).resolve().parent.parent
OM_PATH = "/webhooks/salesforce/outbound-messages"
SOAP = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'}
REQUESTS = 60


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text, by name and label set (label order varies by mode)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric_directories() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("sf-receiver-metrics-*"))


async def post_on_own_connection(base_url: str, number: int) -> int:
    # A connection per request: the kernel spreads new connections over the workers.
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        answer = await client.post(
            OM_PATH, content=outbound_message(1, start=40_000 + number, notification_prefix="04l1I00077"), headers=SOAP
        )
        return answer.status_code


async def test_every_scrape_sums_all_workers(tmp_path: Path) -> None:
    """With 2 workers, each of 10 scrapes counts all 60 requests, though each worker served some."""
    directories_before = metric_directories()
    settings = {
        "workers": 2,
        "data_dir": tmp_path / "var",
        "org_map_file": REPO / "examples" / "org-map.toml",
        "wsdl_dir": REPO / "examples" / "wsdl",
        "recording_enabled": "false",
    }
    async with running_receiver(settings, tmp_path / "logs") as receiver:
        statuses = await asyncio.gather(*(post_on_own_connection(receiver.base_url, n) for n in range(REQUESTS)))
        assert statuses == [200] * REQUESTS
        assert len(metric_directories() - directories_before) == 1, "serve made one directory for the workers"
        received = (
            "receiver_messages_received_total",
            frozenset({("kind", "outbound_message"), ("integration", "salesforce")}),
        )
        published = ("receiver_events_published_total", frozenset({("kind", "outbound_message")}))
        in_flight = ("receiver_in_flight_requests", frozenset())
        for _ in range(10):
            async with httpx.AsyncClient(base_url=receiver.base_url, timeout=10) as client:
                scraped = samples((await client.get("/metrics")).text)
            assert scraped[received] == REQUESTS
            assert scraped[published] == REQUESTS
            assert scraped[in_flight] == 0
        receiver.terminate()
        assert await receiver.wait(timeout_s=30) == 0
    assert metric_directories() == directories_before, "the workers' metric files are removed at exit"


def test_a_single_process_exposes_its_own_registry() -> None:
    """Without worker processes, /metrics is the app's registry as it stands."""
    registry = CollectorRegistry()
    Counter("receiver_test_things", "Things", registry=registry).inc(3)
    assert samples(exposition(registry).decode())[("receiver_test_things_total", frozenset())] == 3
