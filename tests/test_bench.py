"""The benchmark's bookkeeping: which ids a wrk run acked, and how the topic read-back is judged."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import cpu
from bench.__main__ import parse_arguments
from bench.load import Phase, parse_result
from bench.servers import private_redis
from bench.verify import compare
from receiver.ids import checksum


def _report(threads: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "duration_us": 2_000_000,
        "requests": sum(thread["acked"] + thread["refused"] for thread in threads),
        "bytes": 0,
        "errors_connect": 0,
        "errors_read": 0,
        "errors_write": 0,
        "errors_status": 0,
        "errors_timeout": 0,
        "percentiles": [50, 90, 99, 99.9, 99.99],
        "service_us": [1000, 2000, 3000],
        "scheduled_us": [],
        "threads": threads,
    }


def _thread(number: int, issued: int, unanswered: list[int], refused: list[int]) -> dict[str, Any]:
    return {
        "thread": number,
        "issued": issued,
        "acked": issued - len(unanswered) - len(refused),
        "refused": len(refused),
        "unmatched": 0,
        "unanswered": unanswered,
        "refused_seqs": refused,
        "statuses": {"200": issued - len(unanswered) - len(refused)},
    }


def test_acked_ids_are_every_notification_of_every_2xx_request() -> None:
    """Requests left unanswered or refused contribute no id; the others all their notifications."""
    phase = Phase("p", "A", "outbound", 2, connections=2, threads=2, duration_s=2)
    result = parse_result(phase, _report([_thread(0, 3, unanswered=[0], refused=[]), _thread(1, 2, [], refused=[1])]))
    expected = [f"04lA{thread:03d}{number:08d}" for thread, number in ((0, 2), (0, 3), (0, 4), (0, 5), (1, 0), (1, 1))]
    assert sorted(result.acked_ids()) == sorted(id15 + checksum(id15) for id15 in expected)
    assert result.acked == 3
    assert result.requests_per_s == 1.5
    assert result.notifications_per_s == 3.0


def test_event_ids_follow_the_lua_script() -> None:
    """Signed events are acked by EventUuid, bench-<phase>-<thread>-<seq>."""
    phase = Phase("e", "C", "events", 1, connections=1, threads=1, duration_s=2)
    result = parse_result(phase, _report([_thread(0, 2, [], [])]))
    assert sorted(result.acked_ids()) == ["bench-C-0-0", "bench-C-0-1"]


def test_an_acked_id_missing_from_the_topic_is_lost() -> None:
    """lost counts acked ids absent from the topic; 15- and 18-character forms compare equal."""
    acked = ["04lA00000000001AAA", "04lA00000000002AAA", "bench-C-0-0"]
    counts = {"04lA00000000001": 1, "04lA00000000002AAA": 2, "04lA00000000009AAA": 1}
    verdict = compare(acked, counts)
    assert verdict.lost == 1
    assert verdict.lost_sample == ["bench-C-0-0"]
    assert verdict.duplicates == 1
    assert verdict.unacked_published == 1


def test_the_redis_target_gets_an_empty_redis_of_its_own(tmp_path: Path) -> None:
    """receiver-redis runs against a fresh redis-server: marks of an earlier run (ids repeat) cannot
    turn this run's events into duplicates, and the server is gone afterwards."""
    with private_redis(tmp_path) as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        with socket.create_connection(("127.0.0.1", port), timeout=2) as connection:
            connection.sendall(b"DBSIZE\r\n")
            assert connection.recv(16) == b":0\r\n"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_quick_runs_leave_out_the_redis_target() -> None:
    """--quick must stay under 3 minutes: three targets; a full run has all four."""
    quick, _ = parse_arguments(["--quick"])
    full, _ = parse_arguments([])
    assert quick.targets == ("receiver", "baseline", "baseline-batched")
    assert full.targets == ("receiver", "receiver-redis", "baseline", "baseline-batched")


def test_peak_memory_is_that_of_the_largest_process_of_the_tree() -> None:
    """A child holding 200 MiB makes the tree's figure at least that: workers are children."""
    hold = (
        "x = bytearray(200 * 2**20); x[::4096] = b'1' * len(x[::4096]); import sys; "
        "sys.stdout.write('ready\\n'); sys.stdout.flush(); sys.stdin.read()"
    )
    command = [sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {hold!r}])"]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as parent:
        assert parent.stdin is not None and parent.stdout is not None
        try:
            assert parent.stdout.readline() == b"ready\n"
            peak = cpu.tree_peak_rss_mib(parent.pid)
        finally:
            parent.stdin.close()  # the child's end of input: both exit
            parent.wait(timeout=30)
    assert peak is not None and 200 <= peak < 400
