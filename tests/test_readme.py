"""The README documents what a newcomer needs: every setting, and the two commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from receiver.app import create_app
from receiver.settings import Settings
from tests.conftest import SettingsFactory

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_every_setting_is_documented(name: str) -> None:
    """Each setting appears in the README by its RECEIVER_ name (or, TOML-only, by its key)."""
    assert f"RECEIVER_{name.upper()}" in README or f"`{name}`" in README


def test_every_metric_is_documented(make_settings: SettingsFactory) -> None:
    """Each metric family the app registers, terapi's included, appears in the README's table."""
    settings = make_settings(terapi_secret_key="sk-test", terapi_base_url="http://127.0.0.1:9")
    registry = create_app(settings).state.services.metrics.registry
    names = {family.name for family in registry.collect()}
    assert "receiver_terapi_lookups" in names and "receiver_connections_refused" in names
    assert sorted(name for name in names if f"`{name}" not in README) == []


def test_the_two_commands_are_there() -> None:
    """scripts/run and scripts/test are the README's set-up commands."""
    assert "scripts/run" in README and "scripts/test" in README
