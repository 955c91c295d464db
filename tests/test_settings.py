"""Settings: environment, TOML file, precedence, and one-line errors at start-up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from receiver.cli import uvicorn_options
from receiver.errors import ConfigurationError
from receiver.settings import load_settings


def test_defaults_match_the_design() -> None:
    """Defaults are the pinned ones: loopback, 8080, file sink, both integrations, 5 MiB, 20 s."""
    settings = load_settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.kafka_bootstrap_servers is None and not settings.uses_kafka
    assert settings.kafka_topic == "salesforce.events"
    assert settings.kafka_quarantine_topic == "salesforce.quarantine"
    assert settings.integrations == ["salesforce", "salesforce-sandbox"]
    assert settings.max_body_bytes == 5_242_880
    assert settings.publish_timeout_s == 20
    assert settings.data_dir == Path("./var")


def test_environment_wins_over_the_toml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A value in RECEIVER_* overrides the same value in the --config file."""
    config = tmp_path / "receiver.toml"
    config.write_text('port = 9000\nkafka_topic = "from.file"\n')
    monkeypatch.setenv("RECEIVER_PORT", "9100")
    settings = load_settings(config)
    assert settings.port == 9100
    assert settings.kafka_topic == "from.file"


def test_comma_separated_lists_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """RECEIVER_INTEGRATIONS and RECEIVER_EVENT_SECRETS are comma-separated."""
    monkeypatch.setenv("RECEIVER_INTEGRATIONS", "salesforce, salesforce-sandbox,custom-sf")
    monkeypatch.setenv("RECEIVER_EVENT_SECRETS", "whsec_a,whsec_b")
    settings = load_settings()
    assert settings.integrations == ["salesforce", "salesforce-sandbox", "custom-sf"]
    assert [secret.get_secret_value() for secret in settings.event_secrets] == ["whsec_a", "whsec_b"]


def test_bad_value_names_the_setting_and_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-numeric port is refused with the setting's name and the value in one line."""
    monkeypatch.setenv("RECEIVER_PORT", "eighty")
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert "RECEIVER_PORT" in caught.value.detail and "'eighty'" in caught.value.detail
    assert "\n" not in caught.value.detail


def test_secret_values_are_not_echoed_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad secret-bearing setting is named, its value hidden."""
    monkeypatch.setenv("RECEIVER_TERAPI_SECRET_KEY", "sk-live-value")
    monkeypatch.setenv("RECEIVER_PUBLISH_TIMEOUT_S", "90")
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert "RECEIVER_PUBLISH_TIMEOUT_S" in caught.value.detail
    assert "sk-live-value" not in caught.value.detail


def test_publish_timeout_must_stay_below_salesforce_timeout() -> None:
    """Salesforce waits 60 s: a publish timeout of 60 s or more is refused."""
    with pytest.raises(ConfigurationError):
        load_settings(publish_timeout_s=60)


def test_a_publish_timeout_not_below_the_shutdown_timeout_is_advised_against() -> None:
    """Valid, but a publish in flight at SIGTERM would be cut off at the deadline: one line says so."""
    assert load_settings().advice() == []
    (note,) = load_settings(publish_timeout_s=30, shutdown_timeout_s=30).advice()
    assert "RECEIVER_PUBLISH_TIMEOUT_S (30)" in note and "RECEIVER_SHUTDOWN_TIMEOUT_S (30)" in note


def test_a_fractional_shutdown_timeout_reaches_uvicorn_whole() -> None:
    """uvicorn waits with wait_for: 0.5 s must not become 0 (no grace at all)."""
    assert uvicorn_options(load_settings(shutdown_timeout_s=0.5))["timeout_graceful_shutdown"] == 0.5


def test_unknown_key_in_the_file_is_an_error(tmp_path: Path) -> None:
    """A typo in the TOML file stops start-up instead of being ignored."""
    config = tmp_path / "receiver.toml"
    config.write_text("kafka_bootstrap_server = 'x:9092'\n")
    with pytest.raises(ConfigurationError, match="kafka_bootstrap_server"):
        load_settings(config)


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    """--config naming a file that does not exist is refused."""
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_serve_with_a_bad_port_exits_with_one_line() -> None:
    """`sf-receiver serve` with RECEIVER_PORT=abc prints one line naming it and exits non-zero."""
    result = subprocess.run(
        [sys.executable, "-m", "receiver", "serve"],
        env={"RECEIVER_PORT": "abc", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "RECEIVER_PORT" in lines[0] and "'abc'" in lines[0]
