"""What recording costs on the request path: sequential 1-notification Outbound Messages against
``sf-receiver serve`` (file sink, fsynced events), with recording on and off.

    .venv/bin/python -m bench.recording_cost [--requests 2000] [--rounds 3] [--json FILE]

Each round starts two fresh servers, recording off and on, warms them up, then times
``--requests`` posts to each, one request at a time on one keep-alive connection per server,
alternating between the servers request by request: on a shared machine whatever else runs falls
on both modes alike. Every notification id is new, so each request really publishes (fsync).
Also times ``Recorder.record`` alone (serialization and queueing, the only part on the request
path). ``measure()`` is the entry point for the benchmark harness.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from receiver.ids import checksum

REPO = Path(__file__).resolve().parent.parent
SOAP_HEADERS = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'}
OM_PATH = "/webhooks/salesforce/outbound-messages"
WARM_UP = 200


def _id18(prefix: str, number: int) -> str:
    id15 = f"{prefix}{number:0{15 - len(prefix)}d}"
    return id15 + checksum(id15)


def outbound_message(notification_id: str) -> bytes:
    """One Contact notification of the example org, with a SessionId (as Salesforce sends it)."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"
 xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
 <soapenv:Body>
  <notifications xmlns="http://soap.sforce.com/2005/09/outbound">
   <OrganizationId>00D1I000003qqqE</OrganizationId>
   <ActionId>04k1I000000bmsHQAQ</ActionId>
   <SessionId>00D1I000003qqqE!AQ0AQLive.Session.Value-7Hx2</SessionId>
   <EnterpriseUrl>https://na73.salesforce.com/services/Soap/c/41.0/00D1I000003qqqE</EnterpriseUrl>
   <PartnerUrl>https://na73.salesforce.com/services/Soap/u/41.0/00D1I000003qqqE</PartnerUrl>
   <Notification>
    <Id>{notification_id}</Id>
    <sObject xsi:type="sf:Contact" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
     <sf:Id>0031I000009uJ9BQAU</sf:Id>
     <sf:LastName>Black</sf:LastName>
     <sf:Email>drb24@example.com</sf:Email>
    </sObject>
   </Notification>
  </notifications>
 </soapenv:Body>
</soapenv:Envelope>""".encode()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def serving(data_dir: Path, *, recording: bool) -> Iterator[str]:
    """``sf-receiver serve`` with the file sink under ``data_dir``; stopped by its own pid."""
    port = _free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("RECEIVER_")}
    env.update(
        {
            "RECEIVER_PORT": str(port),
            "RECEIVER_DATA_DIR": str(data_dir),
            "RECEIVER_ORG_MAP_FILE": str(REPO / "examples" / "org-map.toml"),
            "RECEIVER_WSDL_DIR": str(REPO / "examples" / "wsdl"),
            "RECEIVER_RECORDING_ENABLED": "true" if recording else "false",
            "RECEIVER_LOG_LEVEL": "warning",
        }
    )
    command = [str(Path(sys.executable).with_name("sf-receiver")), "serve"]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None:
                raise RuntimeError(f"sf-receiver serve exited with status {process.returncode}")
            time.sleep(0.1)
        else:
            raise RuntimeError("sf-receiver serve did not become ready")
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _time_interleaved(urls: dict[str, str], prefix: str, count: int) -> dict[str, list[float]]:
    """``count`` posts to each server, alternating request by request (and which goes first), so
    that whatever else the machine is doing falls on both modes alike."""
    latencies: dict[str, list[float]] = {mode: [] for mode in urls}
    clients = {mode: httpx.Client(base_url=url, timeout=30) for mode, url in urls.items()}
    try:
        for mode, client in clients.items():
            for number in range(WARM_UP):
                body = outbound_message(_id18(f"{prefix}{mode[:2].upper()}W", number))
                client.post(OM_PATH, content=body, headers=SOAP_HEADERS)
        modes = list(urls)
        for number in range(count):
            for mode in modes if number % 2 == 0 else reversed(modes):
                body = outbound_message(_id18(f"{prefix}{mode[:2].upper()}", number))
                started = time.perf_counter()
                response = clients[mode].post(OM_PATH, content=body, headers=SOAP_HEADERS)
                latencies[mode].append(time.perf_counter() - started)
                if response.status_code != 200:
                    raise RuntimeError(f"request {number} answered {response.status_code}: {response.text[:200]}")
    finally:
        for client in clients.values():
            client.close()
    return latencies


def _summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "total_s": sum(latencies),
        "mean_ms": statistics.fmean(latencies) * 1000,
        "p50_ms": ordered[len(ordered) // 2] * 1000,
        "p99_ms": ordered[int(len(ordered) * 0.99)] * 1000,
    }


def record_call_cost(samples: int = 20_000) -> float:
    """Microseconds per ``Recorder.record`` of a 1-notification OM (redaction, JSON, queueing)."""
    import asyncio

    from receiver.metrics import Metrics
    from receiver.recording import Outcome, RecordedRequest, Recorder

    class _Discard:
        name = "discard"

        async def start(self) -> None:
            return None

        async def write(self, lines: object) -> None:
            return None

        async def stop(self) -> None:
            return None

    async def run() -> float:
        recorder = Recorder([_Discard()], Metrics(), max_queued_bytes=1 << 30)
        await recorder.start()
        headers = {**SOAP_HEADERS, "user-agent": "Jakarta Commons-HttpClient/3.1", "host": "127.0.0.1"}
        entry = RecordedRequest(
            "2025-05-01T10:00:00.000Z", "outbound_message", "salesforce", OM_PATH, headers,
            outbound_message(_id18("04lBENCH00", 1)), "127.0.0.1", Outcome(200, "ok"),
        )  # fmt: skip
        started = time.perf_counter()
        for _ in range(samples):
            recorder.record(entry)
        elapsed = time.perf_counter() - started
        await recorder.stop()
        return elapsed / samples * 1e6

    return asyncio.run(run())


def measure(requests: int = 2000, rounds: int = 3) -> dict[str, Any]:
    """Latencies of ``requests`` sequential posts per mode and round, and their medians."""
    runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory(prefix="recording-cost-") as scratch:
        for round_number in range(rounds):
            directories = {mode: Path(scratch) / f"{mode}-{round_number}" for mode in runs}
            with (
                serving(directories["off"], recording=False) as off_url,
                serving(directories["on"], recording=True) as on_url,
            ):
                latencies = _time_interleaved({"off": off_url, "on": on_url}, f"04l{round_number:02d}", requests)
            for mode, measured in latencies.items():
                runs[mode].append(_summary(measured))
            recordings = directories["on"] / "recordings"
            runs["on"][-1]["recorded_bytes"] = sum(path.stat().st_size for path in recordings.iterdir())
    keys = ("total_s", "mean_ms", "p50_ms", "p99_ms")
    medians = {
        mode: {key: statistics.median(run[key] for run in results) for key in keys} for mode, results in runs.items()
    }
    overhead = (medians["on"]["mean_ms"] / medians["off"]["mean_ms"] - 1) * 100
    return {
        "requests": requests,
        "rounds": rounds,
        "runs": runs,
        "median": medians,
        "overhead_percent": overhead,
        "record_call_us": record_call_cost(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="Also write the results to this file.")
    arguments = parser.parse_args()
    result = measure(arguments.requests, arguments.rounds)
    print(f"{arguments.requests} sequential 1-notification OMs per mode, interleaved, file sink,")
    print(f"median of {arguments.rounds} rounds")
    print(f"{'recording':<10} {'total s':>8} {'mean ms':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for mode in ("off", "on"):
        row = result["median"][mode]
        print(f"{mode:<10} {row['total_s']:8.2f} {row['mean_ms']:8.3f} {row['p50_ms']:8.3f} {row['p99_ms']:8.3f}")
    print(f"overhead of recording on the mean: {result['overhead_percent']:+.1f} %")
    print(f"Recorder.record alone: {result['record_call_us']:.1f} us per request")
    if arguments.json is not None:
        arguments.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
