"""The README's commands, run for real: scripts/run serves the example configuration."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import orjson
import pytest

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.slow
def test_scripts_run_serves_the_readme_example_without_kafka(tmp_path: Path) -> None:
    """scripts/run: /healthz answers, and the README's curl of an example OM is acked into events.jsonl."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RECEIVER_", "TEST_"))} | {
        "RECEIVER_PORT": str(port),
        "RECEIVER_DATA_DIR": str(tmp_path / "var"),
    }
    log = (tmp_path / "run.log").open("wb")
    process = subprocess.Popen([str(REPO / "scripts" / "run")], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, (tmp_path / "run.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.3)
        body = (REPO / "examples" / "payloads" / "contact_2_notifications.xml").read_bytes()
        answer = httpx.post(
            f"{base}/webhooks/salesforce/outbound-messages",
            content=body,
            headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'},
        )
        assert answer.status_code == 200
        assert b"<Ack>true</Ack>" in answer.content
        assert httpx.get(f"{base}/readyz").status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        log.close()
    assert process.returncode == 0
    events = [orjson.loads(line) for line in (tmp_path / "var" / "events.jsonl").read_bytes().splitlines()]
    assert {event["id"] for event in events} == {"04l1I000000fztEQAQ", "04l1I000000fzt9QAA"}
