"""Settings: environment, TOML file, precedence, and one-line errors at start-up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from receiver.cli import uvicorn_options
from receiver.errors import ConfigurationError
from receiver.settings import load_settings
from tests.event_payloads import ROTATED_SECRET, SECRET


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
    monkeypatch.setenv("RECEIVER_EVENT_SECRETS", f"{SECRET}, {ROTATED_SECRET}")
    settings = load_settings()
    assert settings.integrations == ["salesforce", "salesforce-sandbox", "custom-sf"]
    assert [secret.get_secret_value() for secret in settings.event_secrets] == [SECRET, ROTATED_SECRET]


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


def test_an_empty_variable_is_an_unset_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """RECEIVER_KAFKA_BOOTSTRAP_SERVERS= (as templates render unset values) means the file sink."""
    monkeypatch.setenv("RECEIVER_KAFKA_BOOTSTRAP_SERVERS", "")
    monkeypatch.setenv("RECEIVER_TERAPI_SECRET_KEY", "")
    settings = load_settings()
    assert not settings.uses_kafka
    assert settings.terapi_secret_key is None


@pytest.mark.parametrize(
    ("environment", "named", "says"),
    [
        ({"RECEIVER_INTEGRATIONS": " , "}, "RECEIVER_INTEGRATIONS", "at least one integration"),
        ({"RECEIVER_EVENT_SECRETS": "not-a-whsec"}, "RECEIVER_EVENT_SECRETS", "must start with 'whsec_'"),
        ({"RECEIVER_EVENT_SECRETS": "whsec_!!!"}, "RECEIVER_EVENT_SECRETS", "base64"),
        (
            {"RECEIVER_KAFKA_SECURITY_PROTOCOL": "SSL", "RECEIVER_KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"},
            "RECEIVER_KAFKA_SSL_CAFILE",
            "does not point to a file",
        ),
        (
            {"RECEIVER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "RECEIVER_KAFKA_SASL_MECHANISM": "PLAIN"},
            "RECEIVER_KAFKA_SASL_USERNAME",
            "needs",
        ),
    ],
    ids=["no-integration", "no-prefix", "not-base64", "missing-ca-file", "sasl-without-credentials"],
)
def test_settings_serve_would_fail_on_are_refused_up_front(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], named: str, says: str
) -> None:
    """What used to pass check and then stop serve (or crash it with a traceback) is one clear line."""
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert named in caught.value.detail and says in caught.value.detail
    assert "!!!" not in caught.value.detail and "not-a-whsec" not in caught.value.detail


def test_secrets_by_org_are_held_by_the_18_character_id(tmp_path: Path) -> None:
    """A 15-character key is normalized; a key that is no org id, or an org listed twice, is refused."""
    config = tmp_path / "receiver.toml"
    config.write_text(f'[event_secrets_by_org]\n"00D1I000003qqqE" = ["{SECRET}"]\n')
    assert list(load_settings(config).event_secrets_by_org) == ["00D1I000003qqqEUAQ"]
    for table in (
        f'"nope" = ["{SECRET}"]',
        f'"00D1I000003qqqE" = ["{SECRET}"]\n"00D1I000003qqqEUAQ" = ["{ROTATED_SECRET}"]',
    ):
        config.write_text(f"[event_secrets_by_org]\n{table}\n")
        with pytest.raises(ConfigurationError, match="RECEIVER_EVENT_SECRETS_BY_ORG"):
            load_settings(config)


def test_secrets_by_integration_name_a_served_integration(tmp_path: Path) -> None:
    """[event_secrets_by_integration] keys must be integrations the receiver serves."""
    config = tmp_path / "receiver.toml"
    config.write_text(f'[event_secrets_by_integration]\n"salesforce-sandbox" = ["{SECRET}"]\n')
    assert list(load_settings(config).event_secrets_by_integration) == ["salesforce-sandbox"]
    config.write_text(f'[event_secrets_by_integration]\n"salesforce-sanbox" = ["{SECRET}"]\n')
    with pytest.raises(ConfigurationError, match="not in RECEIVER_INTEGRATIONS"):
        load_settings(config)


def test_an_empty_secret_in_the_file_is_refused(tmp_path: Path) -> None:
    """terapi_webhook_secret = "" would fail every terapi request at first use: refused at start-up."""
    config = tmp_path / "receiver.toml"
    config.write_text('terapi_webhook_secret = ""\n')
    with pytest.raises(ConfigurationError, match=r"RECEIVER_TERAPI_WEBHOOK_SECRET .*is empty"):
        load_settings(config)
