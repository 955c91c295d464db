"""Shared fixtures: the real services from scripts/services, settings, and a live receiver."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.settings import Settings, load_settings
from tests.kafka_helpers import unique_topic

#: Every event a test builds is checked against schemas/ (the consumer contract).
pytest_plugins = ["tests.schema_guard"]

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_ORG_MAP = REPO / "examples" / "org-map.toml"
EXAMPLE_WSDL_DIR = REPO / "examples" / "wsdl"


def _reachable(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """The broker scripts/services started; a test that needs it fails when it is down."""
    address = (
        os.environ.get("TEST_KAFKA_BOOTSTRAP") or os.environ.get("RECEIVER_KAFKA_BOOTSTRAP_SERVERS") or "127.0.0.1:9092"
    )
    if not _reachable(address.split(",")[0]):
        pytest.fail(f"Kafka is not reachable at {address}: run scripts/services start")
    return address


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("TEST_REDIS_URL") or os.environ.get("RECEIVER_REDIS_URL") or "redis://127.0.0.1:6390/0"
    hostport = url.split("//", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    if not _reachable(hostport):
        pytest.fail(f"Redis is not reachable at {hostport}: run scripts/services start")
    return url


@pytest.fixture(autouse=True)
def _clean_receiver_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings in tests come from the test, not from the exports of scripts/services."""
    for name in list(os.environ):
        if name.startswith("RECEIVER_"):
            monkeypatch.delenv(name)


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(tmp_path: Path) -> SettingsFactory:
    """Settings for the file sink under tmp_path, the example org map and WSDLs; overridable."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "var",
            "org_map_file": EXAMPLE_ORG_MAP,
            "wsdl_dir": EXAMPLE_WSDL_DIR,
            "publish_timeout_s": 5.0,
        }
        values.update(overrides)
        return load_settings(**values)

    return build


@pytest.fixture
def kafka_settings(make_settings: SettingsFactory, kafka_bootstrap: str) -> SettingsFactory:
    """Settings for the real broker, each test on topics of its own."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "kafka_bootstrap_servers": kafka_bootstrap,
            "kafka_topic": unique_topic("events"),
            "kafka_quarantine_topic": unique_topic("quarantine"),
        }
        values.update(overrides)
        return make_settings(**values)

    return build


@asynccontextmanager
async def live_receiver(settings: Settings, **uvicorn_config: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A real uvicorn server running the app on a free loopback port, and a client for it.

    ``uvicorn_config`` goes to ``uvicorn.Config``; ``tests.servers.receiver_server_options``
    gives what ``sf-receiver serve`` itself uses.
    """
    from receiver.app import create_app
    from tests.servers import run_uvicorn

    async with (
        run_uvicorn(create_app(settings), **uvicorn_config) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=30) as client,
    ):
        yield client


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A skipped test is not a passed one: a run with skips fails, so none can hide."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and reporter.stats.get("skipped") and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
