"""The Dockerfile, checked without a Docker engine: its properties, and its install steps for real."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = (REPO / "Dockerfile").read_text()


def instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    result = []
    for raw_line in joined.splitlines():
        line = raw_line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def test_multi_stage_on_a_pinned_slim_python_311() -> None:
    """Two FROM stages, each a slim Python 3.11 image pinned to a patch version."""
    bases = [rest for keyword, rest in instructions() if keyword == "FROM"]
    assert len(bases) >= 2
    for base in bases:
        assert re.match(r"python:3\.11\.\d+-slim", base), base


def test_runs_as_a_non_root_user() -> None:
    """The final stage switches to a named non-root user."""
    users = [rest for keyword, rest in instructions() if keyword == "USER"]
    assert users and users[-1] not in ("root", "0")


def test_serves_on_all_interfaces_port_8080_with_a_healthcheck() -> None:
    """sf-receiver serve on 0.0.0.0:8080 by ENV (so `docker run -e RECEIVER_PORT` still works:
    flags would win over it), port exposed, HEALTHCHECK probing /healthz on RECEIVER_PORT."""
    steps = instructions()
    assert ("EXPOSE", "8080") in steps
    environment = " ".join(rest for keyword, rest in steps if keyword == "ENV")
    assert "RECEIVER_HOST=0.0.0.0" in environment and "RECEIVER_PORT=8080" in environment
    entry = " ".join(rest for keyword, rest in steps if keyword in ("ENTRYPOINT", "CMD"))
    assert "sf-receiver" in entry and "serve" in entry
    assert "--port" not in entry and "--host" not in entry
    healthchecks = [rest for keyword, rest in steps if keyword == "HEALTHCHECK"]
    assert healthchecks and "/healthz" in healthchecks[0] and "RECEIVER_PORT" in healthchecks[0]


def build_stage_copies() -> list[str]:
    """The sources the build stage COPYs from the context (not --from another stage)."""
    sources = []
    for keyword, rest in instructions():
        if keyword == "FROM" and sources and "AS runtime" in rest:
            break
        if keyword == "COPY" and not rest.startswith("--from"):
            sources.extend(rest.split()[:-1])
    return sources


@pytest.mark.slow
def test_install_steps_work_in_a_fresh_venv(tmp_path: Path) -> None:
    """The build stage's `pip wheel .` on only what it COPYs, installed in a fresh venv, serves."""
    context = tmp_path / "context"
    context.mkdir()
    for source in build_stage_copies():
        origin = REPO / source
        if origin.is_dir():
            shutil.copytree(origin, context / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(origin, context / source)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(context)],
        check=True,
        timeout=300,
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    wheel = next(wheels.glob("salesforce_event_receiver-*.whl"))
    # With its dependencies, as the image installs it: a missing runtime dependency fails here.
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(wheel)], check=True, timeout=600)
    result = subprocess.run(
        [str(venv / "bin" / "sf-receiver"), "--help"], capture_output=True, text=True, check=True, timeout=60
    )
    assert "serve" in result.stdout and "replay" in result.stdout and "tail" in result.stdout
    # The installed package must carry its data files: building the app loads the envelope XSD.
    build_app = (
        "from receiver.app import create_app; from receiver.settings import load_settings; create_app(load_settings())"
    )
    subprocess.run([str(venv / "bin" / "python"), "-c", build_app], check=True, timeout=60, cwd=tmp_path)
