"""One benchmark run: for each target (receiver, receiver-redis, baseline, baseline-batched)
start it, run the load phases, stop it, read its topic back, and put the figures side by side.

All targets get the same phases, payloads, broker and worker count, one after the other in
the same run: on a shared 2-core machine absolute figures drift with whatever else runs, so the
ratio ours/baseline from one run is the figure that means something.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import cpu, environment, profiling
from bench.load import Phase, PhaseResult, run_phase
from bench.servers import EVENT_SECRET, RunningServer, ServerSpec, private_redis, running
from bench.verify import compare, delete_topics, partition_offsets, read_ids

RESULTS = Path(__file__).resolve().parent / "results"
#: The fixed rate whose p99 is the headline latency figure.
HEADLINE_RATE = 1000
FULL_RATES = (250, 500, 1000, 1500, 2000, 3000)
#: 100-notification messages per second in the fixed-rate phase of large messages (2,000 notifications/s).
OM100_RATE = 20
#: Fixed-rate phases: one connection per wrk thread (see wrk/common.lua), each sending at most
#: this many requests/s, so that the connections are never what holds the rate back.
FIXED_RATE_CONNECTIONS = 32
FIXED_RATE_PER_CONNECTION = 25
#: A rate the target answers at below this share of the offered rate is its ceiling: no higher rate is tried.
SATURATED_SHARE = 0.8
_FIXED_LETTERS = "KLMNORSTUV"


@dataclass(frozen=True, slots=True)
class Options:
    quick: bool
    workers: int
    duration_s: float
    targets: tuple[str, ...]
    rates: tuple[int, ...]
    kafka_bootstrap: str
    linger_ms: int | None
    receiver_env: tuple[tuple[str, str], ...]
    profile: bool
    keep: bool


def plan(options: Options) -> list[Phase]:
    """The load phases every target goes through, in order."""
    duration = options.duration_s
    phases = [
        Phase("warmup", "W", "outbound", 1, connections=32, threads=2, duration_s=min(2.0, duration)),
        Phase("saturation-om1", "A", "outbound", 1, connections=64, threads=2, duration_s=duration),
        Phase("saturation-om100", "B", "outbound", 100, connections=32, threads=2, duration_s=duration),
        Phase("saturation-events", "C", "events", 1, connections=64, threads=2, duration_s=duration),
        # A sender with few connections, as one org's Outbound Message queue is: here a message's
        # notifications published one after the other cost round trips nothing else hides.
        Phase("saturation-om100-c4", "D", "outbound", 100, connections=4, threads=1, duration_s=duration),
    ]
    phases.append(
        # Latency of large messages: where publishing one notification after the other hurts.
        Phase(
            f"rate-om100-{OM100_RATE}",
            "J",
            "outbound",
            100,
            connections=16,
            threads=16,
            duration_s=duration,
            rate=OM100_RATE,
        )
    )
    for letter, rate in zip(_FIXED_LETTERS, options.rates, strict=False):
        connections = max(FIXED_RATE_CONNECTIONS, -(-rate // FIXED_RATE_PER_CONNECTION))
        phases.append(
            Phase(
                f"rate-{rate}",
                letter,
                "outbound",
                1,
                connections=connections,
                threads=connections,
                duration_s=duration,
                rate=rate,
            )
        )
    return phases


def run(options: Options) -> dict[str, Any]:
    """Run every target and return the results document (also written by the caller)."""
    run_id = time.strftime("%Y%m%d-%H%M%S")
    work = RESULTS / "tmp" / run_id
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    document: dict[str, Any] = {
        "run_id": run_id,
        "mode": "quick" if options.quick else "full",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": environment.machine(),
        "versions": environment.versions(),
        "settings": settings_of(options),
    }
    topics: list[str] = []
    try:
        for target in options.targets:
            topic = f"bench.{run_id}.{target}"
            topics += [topic, f"{topic}.quarantine"]
            print(f"== {target}: {options.workers} worker(s), topic {topic}", flush=True)
            document[target] = run_target(target, topic, options, work)
    finally:
        if not options.keep:
            asyncio.run(_delete_quietly(options.kafka_bootstrap, topics))
            shutil.rmtree(work, ignore_errors=True)
    document["machine"]["load_average_after"] = environment.load_average()
    document["elapsed_s"] = round(time.time() - started, 1)
    if "receiver" in document and "baseline" in document:
        document["ratio"] = ratios(document["receiver"], document["baseline"])
    if "receiver" in document and "baseline-batched" in document:
        document["ratio_batched"] = ratios(document["receiver"], document["baseline-batched"])
    return document


def run_target(target: str, topic: str, options: Options, work: Path) -> dict[str, Any]:
    if target != "receiver-redis":
        return _run_target(target, topic, options, work, redis_url=None)
    with private_redis(work / "redis") as redis_url:
        return _run_target(target, topic, options, work, redis_url=redis_url)


def _run_target(target: str, topic: str, options: Options, work: Path, *, redis_url: str | None) -> dict[str, Any]:
    is_receiver = target.startswith("receiver")
    spec = ServerSpec(
        target,
        topic,
        options.workers,
        options.kafka_bootstrap,
        work / target,
        linger_ms=options.linger_ms if is_receiver else None,
        redis_url=redis_url,
        extra_env=options.receiver_env if is_receiver else (),
    )
    results: list[PhaseResult] = []
    profiles: dict[str, Any] = {}
    with running(spec, work / f"{target}-server.log") as server:
        start = asyncio.run(partition_offsets(options.kafka_bootstrap, topic, end=False))
        for phase in plan(options):
            result = run_phase(phase, server.url, server_pid=server.pid, event_secret=EVENT_SECRET, log_dir=work)
            results.append(result)
            print(f"   {describe(result)}", flush=True)
            if (
                phase.name.startswith("rate-")
                and phase.notifications == 1
                and result.requests_per_s < SATURATED_SHARE * phase.rate
            ):
                print(f"   {target} cannot sustain {phase.rate} requests/s: no higher rate tried", flush=True)
                break
        # Before the profile phases: py-spy's sampling adds nothing to the server's memory, but
        # the figure should be that of the measured phases alone.
        peak_rss_mib = cpu.tree_peak_rss_mib(server.pid)
        print(f"   peak RSS of the largest server process: {peak_rss_mib or 0:.0f} MiB", flush=True)
        if options.profile:
            results += profile(server, options, target, work)
            for result in results:
                if result.phase.name.startswith("profile-"):
                    folded = RESULTS / profile_file(target, result.phase)
                    profiles[result.phase.name] = profiling.summary(folded)
                    profiles[result.phase.name]["file"] = profiling.compress(folded).name
    counts, records = asyncio.run(read_ids(options.kafka_bootstrap, topic, start))
    verdict = compare(itertools.chain.from_iterable(result.acked_ids() for result in results), counts)
    print(f"   topic: {records} records, {verdict.found} ids, lost {verdict.lost}", flush=True)
    document = figures(results, verdict.as_dict(), records, profiles)
    document["peak_rss_mib"] = None if peak_rss_mib is None else round(peak_rss_mib, 1)
    return document


def profile_file(target: str, phase: Phase) -> str:
    return f"profile-{target}-{phase.name.removeprefix('profile-')}.folded"


def profile(server: RunningServer, options: Options, target: str, work: Path) -> list[PhaseResult]:
    """Saturation phases run again under py-spy; their figures are not the headline ones."""
    phases = [
        Phase("profile-om1", "P", "outbound", 1, connections=64, threads=2, duration_s=options.duration_s),
        Phase("profile-om100", "Q", "outbound", 100, connections=32, threads=2, duration_s=options.duration_s),
    ]
    results = []
    for phase in phases:
        folded = RESULTS / profile_file(target, phase)
        with profiling.recording(server.pid, folded, duration_s=phase.duration_s + 1):
            results.append(run_phase(phase, server.url, server_pid=server.pid, event_secret=EVENT_SECRET, log_dir=work))
        profiling.flame_graph(folded, folded.with_suffix(".svg"), title=f"{target}: {phase.name}")
        print(f"   {describe(results[-1])} (profiled: {folded.with_suffix('.svg').name})", flush=True)
    return results


def describe(result: PhaseResult) -> str:
    text = f"{result.phase.name:18} {result.requests_per_s:9.1f} req/s"
    if result.phase.notifications > 1:
        text += f" {result.notifications_per_s:9.0f} notifications/s"
    per_request = result.cpu_us_per_request(result.server_cpu_s)
    if per_request is not None:
        text += f"  cpu {per_request:7.0f} us/req"
    if result.phase.fixed_rate:
        latency = result.scheduled_ms
        text += f"  p50 {latency.get('p50')} ms  p99 {latency.get('p99')} ms  p99.9 {latency.get('p99.9')} ms"
    if result.refused or result.socket_errors or result.unmatched:
        text += f"  refused {result.refused} errors {result.socket_errors} unmatched {result.unmatched}"
    return text


def figures(
    results: list[PhaseResult], verification: dict[str, Any], records: int, profiles: dict[str, Any]
) -> dict[str, Any]:
    by_name = {result.phase.name: result for result in results}
    headline = by_name.get(f"rate-{HEADLINE_RATE}")
    document: dict[str, Any] = {
        "requests_per_s": round(by_name["saturation-om1"].requests_per_s, 1),
        "notifications_per_s": round(by_name["saturation-om100"].notifications_per_s, 1),
        "notifications_per_s_4_connections": round(by_name["saturation-om100-c4"].notifications_per_s, 1),
        "events_per_s": round(by_name["saturation-events"].requests_per_s, 1),
        "p50_ms": headline.scheduled_ms.get("p50") if headline else None,
        "p99_ms": headline.scheduled_ms.get("p99") if headline else None,
        "p99_9_ms": headline.scheduled_ms.get("p99.9") if headline else None,
        "p99_service_ms": headline.service_ms.get("p99") if headline else None,
        "p99_om100_ms": by_name[f"rate-om100-{OM100_RATE}"].scheduled_ms.get("p99"),
        # CPU time of the server (all workers) per acked request or notification: steadier than
        # throughput on a shared machine, and what throughput per core follows from.
        "cpu_us_per_request": by_name["saturation-om1"].cpu_us_per_request(by_name["saturation-om1"].server_cpu_s),
        "cpu_us_per_notification": _per_notification(by_name["saturation-om100"]),
        "lost": verification["lost"],
        "refused": sum(result.refused for result in results),
        "verification": {**verification, "records_in_topic": records},
        "phases": {result.phase.name: result.summary() for result in results},
    }
    if profiles:
        document["profiles"] = profiles
    return document


def _per_notification(result: PhaseResult) -> float | None:
    per_request = result.cpu_us_per_request(result.server_cpu_s)
    return None if per_request is None else round(per_request / result.phase.notifications, 1)


def ratios(ours: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float | None]:
    def ratio(name: str) -> float | None:
        mine, theirs = ours.get(name), baseline.get(name)
        if not mine or not theirs:
            return None
        return round(float(mine) / float(theirs), 2)

    names = (
        "requests_per_s",
        "notifications_per_s",
        "notifications_per_s_4_connections",
        "events_per_s",
        "p99_ms",
        "p99_om100_ms",
        "cpu_us_per_request",
        "cpu_us_per_notification",
    )
    return {name: ratio(name) for name in names}


def settings_of(options: Options) -> dict[str, Any]:
    return {
        "workers": options.workers,
        "duration_s": options.duration_s,
        "rates": list(options.rates),
        "headline_rate": HEADLINE_RATE,
        "om100_rate": OM100_RATE,
        "phases": [
            {"name": phase.name, "connections": phase.connections, "threads": phase.threads} for phase in plan(options)
        ],
        "receiver": {
            "acks": "all",
            "idempotent": True,
            "linger_ms": options.linger_ms if options.linger_ms is not None else "default (RECEIVER_KAFKA_LINGER_MS)",
            "dedupe": "memory",
            "extra_settings": dict(options.receiver_env),
            "recording": "on (daily files, the default)",
            "ack_waits_for_broker": True,
        },
        "receiver-redis": {
            "dedupe": "redis: a redis-server of the run's own on 127.0.0.1, started empty, no persistence",
            "otherwise": "as receiver",
        },
        "baseline": {
            "acks": "all",
            "idempotent": True,
            "linger_ms": 0,
            "publish": "send_and_wait per notification, one after the other",
            "batching": "none across requests: one send in flight per process (BASELINE_BATCHING=none)",
            "parser": "xmltodict",
        },
        "baseline-batched": {
            "acks": "all",
            "idempotent": True,
            "linger_ms": 0,
            "publish": "send_and_wait per notification, one after the other",
            "batching": "aiokafka's own: concurrent requests' records share produce requests (BASELINE_BATCHING=client)",  # noqa: E501
            "parser": "xmltodict",
        },
        "load_generator": "wrk (Debian) with bench/wrk/*.lua",
        "latency_method": (
            "fixed rate: one connection per wrk thread, each thread sends on a fixed schedule (delay() hook); "
            "latency is measured from each request's scheduled time (wrk2-style, no coordinated omission); "
            "wrk's own service-time percentiles from done() are reported as latency_service_ms"
        ),
        "lost_method": (
            "every request carries unique generated ids and an X-Request-Id the server echoes; the ids of 2xx "
            "answers are compared with the distinct ce_id headers read back from the run's own topic"
        ),
    }


async def _delete_quietly(bootstrap: str, topics: list[str]) -> None:
    if not topics:
        return
    try:
        await delete_topics(bootstrap, topics)
    except Exception as exc:  # a leftover topic costs disk, not correctness
        print(f"   could not delete the run's topics: {exc!r}", flush=True)
