"""The ``sf-receiver`` command: ``serve``, ``replay`` and ``tail``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from receiver.errors import ConfigurationError
from receiver.settings import Settings, load_settings

CONFIG_ENV = "RECEIVER_CONFIG"

config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar=CONFIG_ENV,
    default=None,
    help="TOML configuration file (environment variables win over it).",
)


def settings_or_exit(config_file: Path | None, **overrides: Any) -> Settings:
    """The settings, or one line on stderr naming the bad setting and exit status 2."""
    try:
        return load_settings(config_file, **{k: v for k, v in overrides.items() if v is not None})
    except ConfigurationError as exc:
        click.echo(f"sf-receiver: {exc.detail}", err=True)
        sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Salesforce webhook receiver and event router."""


def app_from_environment() -> Any:
    """Uvicorn factory for worker processes: each rebuilds the settings from the same sources."""
    from receiver.app import create_app

    config = os.environ.get(CONFIG_ENV)
    settings = settings_or_exit(Path(config) if config else None)
    return create_app(settings)


@main.command()
@config_option
@click.option("--host", default=None, help="Listen address (RECEIVER_HOST).")
@click.option("--port", type=int, default=None, help="Listen port (RECEIVER_PORT).")
@click.option("--workers", type=int, default=None, help="Worker processes (RECEIVER_WORKERS).")
def serve(config_file: Path | None, host: str | None, port: int | None, workers: int | None) -> None:
    """Run the receiver."""
    import uvicorn

    from receiver.app import create_app
    from receiver.logs import configure_logging

    settings = settings_or_exit(config_file, host=host, port=port, workers=workers)
    configure_logging(settings.log_level, settings.log_format)
    try:
        app = create_app(settings) if settings.workers == 1 else None
    except ConfigurationError as exc:
        click.echo(f"sf-receiver: {exc.detail}", err=True)
        sys.exit(2)
    options = uvicorn_options(settings)
    if app is not None:
        uvicorn.run(app, **options)
        return
    # Worker processes import the factory and read the same settings; the file travels by env.
    if config_file is not None:
        os.environ[CONFIG_ENV] = str(config_file)
    for name, value in (("HOST", host), ("PORT", port)):
        if value is not None:
            os.environ[f"RECEIVER_{name}"] = str(value)
    uvicorn.run("receiver.cli:app_from_environment", factory=True, workers=settings.workers, **options)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    return {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": "httptools",
        "access_log": False,
        "log_config": None,
        "server_header": False,
        "timeout_keep_alive": 15,
        "timeout_graceful_shutdown": int(settings.shutdown_timeout_s),
    }


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def replay() -> None:
    """Replay recorded payloads (coming in a later release)."""
    click.echo("sf-receiver replay: not available yet in this version", err=True)
    sys.exit(2)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def tail() -> None:
    """Print events from the sink (coming in a later release)."""
    click.echo("sf-receiver tail: not available yet in this version", err=True)
    sys.exit(2)
