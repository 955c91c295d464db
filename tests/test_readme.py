"""The README documents what a newcomer needs: every setting, and the two commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from receiver.settings import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_every_setting_is_documented(name: str) -> None:
    """Each setting appears in the README by its RECEIVER_ name (or, TOML-only, by its key)."""
    assert f"RECEIVER_{name.upper()}" in README or f"`{name}`" in README


def test_the_two_commands_are_there() -> None:
    """scripts/run and scripts/test are the README's set-up commands."""
    assert "scripts/run" in README and "scripts/test" in README
