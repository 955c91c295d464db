"""`sf-receiver check`: the configuration checked without serving, as an operator's CI runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def check(*arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "receiver", "check", *arguments],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_example_configuration_passes_with_a_summary() -> None:
    result = check("--config", "examples/receiver.toml")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "configuration OK"
    assert "orgs         static map, 3 orgs" in lines
    assert any(line.startswith("wsdl types") and "DiscountRule__c" in line for line in lines)


def test_the_readme_shows_what_the_command_prints() -> None:
    readme = (REPO / "README.md").read_text()
    shown = readme.split("$ sf-receiver check --config examples/receiver.toml\n", 1)[1].split("```", 1)[0]
    assert check("--config", "examples/receiver.toml").stdout == shown


def test_a_route_that_can_never_win_fails_with_one_line_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "receiver.toml"
    config.write_text(
        '[[routes]]\nkind = "change_event"\ntopics = ["cdc"]\n\n'
        '[[routes]]\nkind = "change_event"\nobject = ["Account"]\ntopics = ["cdc.account"]\n'
    )
    result = check("--config", str(config))
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert "routes[1]" in line


def test_an_unreadable_org_map_fails_naming_the_file(tmp_path: Path) -> None:
    result = check(env={"RECEIVER_ORG_MAP_FILE": str(tmp_path / "missing.toml")})
    assert result.returncode == 2
    assert "missing.toml" in result.stderr and "cannot be read" in result.stderr


ORG = "00D5g000004Xz1AEAS"


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b'orgs = "x"\n', "orgs must be tables"),
        (b'[[orgs]]\nconnection_id = "a"\n', "orgs must be tables"),
        (b"\xff\xfe not text", "cannot be read"),
        (f'[org."{ORG}"]\nconnection_id = "a"\nintegration = "salesforce"\n'.encode(), "unknown table 'org'"),
        (
            f'[orgs."{ORG}"]\nconnection_id = "a"\nintegration = "salesforce-sanbox"\n'.encode(),
            "integration 'salesforce-sanbox', which is not in RECEIVER_INTEGRATIONS",
        ),
        (
            f'[orgs."{ORG}"]\nconnection_id = "a"\nintegration = "salesforce"\n'
            f'[orgs."{ORG[:15]}"]\nconnection_id = "b"\nintegration = "salesforce"\n'.encode(),
            f"org {ORG} is listed twice",
        ),
        (f'[orgs."{ORG}"]\nconnection_id = "a"\n'.encode(), "is invalid (no integration)"),
    ],
    ids=["string", "array", "not-utf8", "misspelled-table", "unknown-integration", "org-twice", "missing-key"],
)
def test_an_org_map_that_cannot_work_fails_with_one_line(tmp_path: Path, content: bytes, says: str) -> None:
    """A map whose entries could never match (or cannot be read) stops check, never a traceback."""
    org_map = tmp_path / "orgs.toml"
    org_map.write_bytes(content)
    result = check(env={"RECEIVER_ORG_MAP_FILE": str(org_map)})
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "orgs.toml" in line and says in line


def test_doubtful_timeouts_pass_with_a_warning() -> None:
    result = check(env={"RECEIVER_PUBLISH_TIMEOUT_S": "30", "RECEIVER_SHUTDOWN_TIMEOUT_S": "30"})
    assert result.returncode == 0, result.stderr
    assert any(
        line.startswith("warning") and "RECEIVER_PUBLISH_TIMEOUT_S (30)" in line for line in result.stdout.splitlines()
    )


def test_secrets_are_not_printed() -> None:
    secret = "sk-check-secret-value"
    result = check(env={"RECEIVER_TERAPI_SECRET_KEY": secret, "RECEIVER_OUTBOUND_TOKEN": "tok-check-secret"})
    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout + result.stderr
    assert "tok-check-secret" not in result.stdout + result.stderr
