"""/metrics with worker processes: every scrape holds every worker's values, whichever answers it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families

from receiver.errors import ConfigurationError
from receiver.metrics import (
    MULTIPROCESS_DIRECTORY_ENV,
    WRITE_BEHIND_INTERVAL_S,
    exposition,
    forget_dead_workers,
    new_worker_metrics_directory,
)
from tests.om_payloads import outbound_message
from tests.processes import ReceiverProcess, running_receiver

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


def workers_of(pid: int) -> set[int]:
    return {
        int(child) for task in Path(f"/proc/{pid}/task").iterdir() for child in (task / "children").read_text().split()
    }


def own_metrics_directory(receiver: ReceiverProcess, candidates: set[Path]) -> Path:
    """The directory among ``candidates`` that holds the files of this receiver's workers
    (another receiver on the machine may have made one meanwhile)."""
    workers = receiver.workers()
    owned = [
        directory
        for directory in candidates
        if any(path.stem.rpartition("_")[2] == str(pid) for path in directory.glob("*.db") for pid in workers)
    ]
    assert len(owned) == 1, f"{len(owned)} metrics directories hold files of workers {workers}"
    return owned[0]


def two_workers(tmp_path: Path, **settings: object) -> dict[str, object]:
    """``serve`` settings of a receiver of 2 workers on the file sink and the example org map."""
    return {
        "workers": 2,
        "data_dir": tmp_path / "var",
        "org_map_file": REPO / "examples" / "org-map.toml",
        "wsdl_dir": REPO / "examples" / "wsdl",
        "recording_enabled": "false",
        **settings,
    }


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
    async with running_receiver(two_workers(tmp_path), tmp_path / "logs") as receiver:
        statuses = await asyncio.gather(*(post_on_own_connection(receiver.base_url, n) for n in range(REQUESTS)))
        assert statuses == [200] * REQUESTS
        directory = own_metrics_directory(receiver, metric_directories() - directories_before)
        received = (
            "receiver_messages_received_total",
            frozenset({("kind", "outbound_message"), ("integration", "salesforce")}),
        )
        published = ("receiver_events_published_total", frozenset({("kind", "outbound_message")}))
        in_flight = ("receiver_in_flight_requests", frozenset())
        # Each worker writes its values behind, within WRITE_BEHIND_INTERVAL_S of a change.
        for _ in range(int(5 / WRITE_BEHIND_INTERVAL_S)):
            async with httpx.AsyncClient(base_url=receiver.base_url, timeout=10) as client:
                if samples((await client.get("/metrics")).text)[received] == REQUESTS:
                    break
            await asyncio.sleep(WRITE_BEHIND_INTERVAL_S / 2)
        for _ in range(10):
            async with httpx.AsyncClient(base_url=receiver.base_url, timeout=10) as client:
                scraped = samples((await client.get("/metrics")).text)
            assert scraped[received] == REQUESTS
            assert scraped[published] == REQUESTS
            assert scraped[in_flight] == 0
        receiver.terminate()
        assert await receiver.wait(timeout_s=30) == 0
    assert not directory.exists(), "the workers' metric files are removed at exit"


WRITE_BEHIND_SCRIPT = """
import json, os
from pathlib import Path
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.mmap_dict import MmapedDict
from receiver.metrics import write_behind, write_changed_values

def on_file():
    found = {}
    for path in Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).glob("*.db"):
        for key, value, _timestamp, _position in MmapedDict.read_all_values_from_file(str(path)):
            found[json.loads(key)[1]] = value
    return found

write_behind()
registry = CollectorRegistry()
things = Counter("things", "Things", registry=registry)
level = Gauge("level", "Level", registry=registry, multiprocess_mode="livesum")
things.inc(2)
level.set(7)
level.dec()
before = on_file()
write_changed_values()
after = on_file()
things.inc()
print(before.get("things_total"), before.get("level"), after["things_total"], after["level"], things._value.get())
"""


def test_values_are_written_behind_in_a_worker(tmp_path: Path) -> None:
    """In a worker, changes stay in memory (that is the saving) until written, all together."""
    completed = subprocess.run(
        [sys.executable, "-c", WRITE_BEHIND_SCRIPT],
        env={**os.environ, MULTIPROCESS_DIRECTORY_ENV: str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    # Nothing changed reached the file before the write; then the counter and the gauge did.
    assert completed.stdout.split() == ["0.0", "0.0", "2.0", "6.0", "3.0"]


def test_a_single_process_exposes_its_own_registry() -> None:
    """Without worker processes, /metrics is the app's registry as it stands."""
    registry = CollectorRegistry()
    Counter("receiver_test_things", "Things", registry=registry).inc(3)
    assert samples(exposition(registry).decode())[("receiver_test_things_total", frozenset())] == 3


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def write_value(path: Path, metric: str, value: float) -> None:
    values = MmapedDict(str(path))
    values.write_value(mmap_key(metric, metric, [], [], metric), value, 0.0)
    values.close()


def test_live_gauges_of_dead_workers_are_forgotten_and_their_counts_kept(tmp_path: Path) -> None:
    """A dead worker's in-flight gauge leaves the sums; its counters stay (they happened); the
    files of running processes are kept."""
    dead, alive = dead_pid(), os.getpid()
    for pid in (dead, alive):
        write_value(tmp_path / f"gauge_livesum_{pid}.db", "receiver_in_flight_requests", 3)
        write_value(tmp_path / f"counter_{pid}.db", "receiver_messages_received_total", 7)
    forget_dead_workers(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [f"counter_{dead}.db", f"counter_{alive}.db", f"gauge_livesum_{alive}.db"]
    )


def test_a_multiprocess_directory_exported_by_the_user_is_not_summed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PROMETHEUS_MULTIPROC_DIR the user exported (one process, other files in it) leaves
    /metrics to the app's own registry: only serve's worker directory is summed."""
    write_value(tmp_path / "counter_1.db", "receiver_test_things_total", 500)
    monkeypatch.setenv(MULTIPROCESS_DIRECTORY_ENV, str(tmp_path))
    registry = CollectorRegistry()
    Counter("receiver_test_things", "Things", registry=registry).inc()
    assert samples(exposition(registry).decode())[("receiver_test_things_total", frozenset())] == 1


def in_flight_by_worker(directory: Path) -> dict[int, float]:
    found: dict[int, float] = {}
    for path in directory.glob("gauge_livesum_*.db"):
        for key, value, _timestamp, _position in MmapedDict.read_all_values_from_file(str(path)):
            if json.loads(key)[0] == "receiver_in_flight_requests":
                found[int(path.stem.rpartition("_")[2])] = value
    return found


async def test_a_worker_killed_mid_request_leaves_no_request_in_flight_behind(tmp_path: Path) -> None:
    """uvicorn kills a hung worker: the request it held is no longer counted in flight, and what
    it counted before is still counted."""
    directories_before = metric_directories()
    async with running_receiver(two_workers(tmp_path, request_timeout_s=30), tmp_path / "logs") as receiver:
        assert await post_on_own_connection(receiver.base_url, 900) == 200
        directory = own_metrics_directory(receiver, metric_directories() - directories_before)
        host, port = receiver.base_url.removeprefix("http://").split(":")
        # Headers and half the body: the worker that took it holds it in flight.
        _reader, writer = await asyncio.open_connection(host, int(port))
        body = outbound_message(1, start=40_901, notification_prefix="04l1I00077")
        writer.write(
            f'POST {OM_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nSOAPAction: ""\r\n'
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:100]
        )
        await writer.drain()
        deadline = time.monotonic() + 10
        while not (holding := [pid for pid, value in in_flight_by_worker(directory).items() if value == 1]):
            assert time.monotonic() < deadline, "no worker counted the request in flight"
            await asyncio.sleep(0.05)
        # The gauge is raised before the handler counts the request, in the same step of the
        # worker's loop: let that step end (it then waits for the rest of the body).
        await asyncio.sleep(0.3)
        os.kill(holding[0], signal.SIGKILL)
        writer.close()
        async with httpx.AsyncClient(base_url=receiver.base_url, timeout=10) as client:
            scraped = samples((await client.get("/metrics")).text)
        assert scraped[("receiver_in_flight_requests", frozenset())] == 0
        received = (
            "receiver_messages_received_total",
            frozenset({("kind", "outbound_message"), ("integration", "salesforce")}),
        )
        assert scraped[received] == 2, "the killed worker's count of the request it took stays"
        receiver.terminate()
        await receiver.wait(timeout_s=30)


def test_workers_without_a_writable_temporary_directory_fail_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No writable temporary directory (a read-only root file system): a ConfigurationError that
    says what to do, which serve prints as one line before exiting 2."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    with pytest.raises(ConfigurationError, match="TMPDIR"):
        new_worker_metrics_directory()


async def test_workers_log_what_they_refuse(tmp_path: Path) -> None:
    """Each worker configures logging as serve does: a refusal shows in the log (it showed nothing)."""
    async with running_receiver(two_workers(tmp_path, outbound_token="om-token"), tmp_path / "logs") as receiver:
        async with httpx.AsyncClient(base_url=receiver.base_url, timeout=10) as client:
            answer = await client.post(OM_PATH, content=outbound_message(1, start=41_000), headers=SOAP)
        assert answer.status_code == 401
        receiver.terminate()
        assert await receiver.wait(timeout_s=30) == 0
        log = receiver.log()
    assert "request refused" in log and "reason=missing_token" in log
    assert "om-token" not in log
