"""The ``sf-receiver`` command: ``serve``, ``check``, ``replay`` and ``tail``."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from receiver.errors import ConfigurationError, ReceiverError
from receiver.settings import Settings, load_settings

logger = logging.getLogger("receiver.cli")

CONFIG_ENV = "RECEIVER_CONFIG"

config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar=CONFIG_ENV,
    default=None,
    help="TOML configuration file (environment variables win over it).",
)


def exit_for(error: ConfigurationError) -> NoReturn:
    """One line on stderr naming the problem, and exit status 2."""
    click.echo(f"sf-receiver: {error.detail}", err=True)
    sys.exit(2)


def settings_or_exit(config_file: Path | None, **overrides: Any) -> Settings:
    """The settings, or one line on stderr naming the bad setting and exit status 2."""
    try:
        return load_settings(config_file, **{k: v for k, v in overrides.items() if v is not None})
    except ConfigurationError as exc:
        exit_for(exc)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Salesforce webhook receiver and event router."""


def app_from_environment() -> Any:
    """Uvicorn factory for worker processes: each rebuilds the settings from the same sources."""
    from receiver.app import create_app
    from receiver.heap import settle_heap
    from receiver.logs import configure_logging
    from receiver.metrics import SHARED_BY_WORKERS_ENV, write_behind

    config = os.environ.get(CONFIG_ENV)
    settings = settings_or_exit(Path(config) if config else None)
    # A worker is a process of its own: without this it would log nothing of its requests.
    configure_logging(settings.log_level, settings.log_format)
    if os.environ.get(SHARED_BY_WORKERS_ENV):
        write_behind()  # before create_app makes the metrics
    app = create_app(settings)
    settle_heap()
    return app


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
    from receiver.metrics import new_worker_metrics_directory, workers_share_metrics

    settings = settings_or_exit(config_file, host=host, port=port, workers=workers)
    configure_logging(settings.log_level, settings.log_format)
    for note in settings.advice():
        logger.warning(note)
    try:
        app = create_app(settings) if settings.workers == 1 else None
        options = uvicorn_options(settings)
    except ConfigurationError as exc:
        exit_for(exc)
    if app is not None:
        from receiver.heap import settle_heap
        from receiver.server import GracefulServer

        config = uvicorn.Config(app, **options)
        settle_heap()
        GracefulServer(config).run()
        return
    # Worker processes import the factory and read the same settings; the file travels by env.
    if config_file is not None:
        os.environ[CONFIG_ENV] = str(config_file)
    for name, value in (("HOST", host), ("PORT", port)):
        if value is not None:
            os.environ[f"RECEIVER_{name}"] = str(value)
    try:
        metrics_directory = new_worker_metrics_directory()
    except ConfigurationError as exc:
        exit_for(exc)
    with workers_share_metrics(metrics_directory):
        uvicorn.run("receiver.cli:app_from_environment", factory=True, workers=settings.workers, **options)


@main.command()
@config_option
def check(config_file: Path | None) -> None:
    """Check the configuration without serving: exit 0 with a summary, or 2 with the problem.

    Everything ``serve`` builds before it listens is built here (settings, routes, the org map,
    the WSDLs, TLS files), so a configuration that passes also starts. Nothing is contacted:
    Kafka, Redis and terapi are only named.
    """
    from receiver.app import build_services
    from receiver.file_sink import EVENTS_FILE

    settings = settings_or_exit(config_file)
    try:
        services = build_services(settings)
        uvicorn_options(settings)
    except ConfigurationError as exc:
        exit_for(exc)
    wsdl_objects = sorted(services.outbound_parser.wsdl.objects)
    if settings.uses_kafka:
        sink = f"kafka {settings.kafka_bootstrap_servers}, default topic {settings.kafka_topic}"
    else:
        sink = f"file {settings.data_dir / EVENTS_FILE}"
    lines = [
        ("integrations", ", ".join(settings.integrations)),
        ("sink", sink),
        ("routes", f"{len(settings.routes)} rule(s)"),
        ("dedupe", _dedupe_summary(settings)),
        ("orgs", "; ".join(_described(source) for source in services.connections.describe())),
        ("terapi", settings.terapi_base_url if settings.terapi_secret_key is not None else "not configured"),
        ("wsdl types", ", ".join(wsdl_objects) or "none"),
        ("recording", "on" if settings.recording_enabled else "off"),
        ("listen", f"{settings.host}:{settings.port}" + (" (TLS)" if settings.tls_certfile else "")),
    ]
    for name, value in lines:
        click.echo(f"{name:12} {value}")
    for note in settings.advice():
        click.echo(f"warning      {note}")
    click.echo("configuration OK")


def _described(source: dict[str, object]) -> str:
    """An org source by name; the static map with its size (terapi's is known once it is read)."""
    name = str(source.get("source"))
    return f"{name} map, {source.get('orgs')} orgs" if name == "static" else name


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for the settings; raises ``ConfigurationError`` for unusable TLS files."""
    from receiver.http_protocol import ConnectionLimits, bounded_protocol
    from receiver.tls import tls_options

    return {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        # httptools, bounded: header size and count, and deadlines for slow clients.
        "http": bounded_protocol(ConnectionLimits.from_settings(settings)),
        "access_log": False,
        "log_config": None,
        "server_header": False,
        # X-Forwarded-For is read by receiver.access, from RECEIVER_TRUSTED_PROXIES only.
        "proxy_headers": False,
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        # uvicorn waits with asyncio.wait_for: a fraction of a second is kept, not truncated to 0.
        "timeout_graceful_shutdown": settings.shutdown_timeout_s,
        **tls_options(settings),
    }


def _register_replay() -> None:
    # Its own module: the command has many options, and serve should not import what it needs.
    from receiver.replay_cli import replay_command

    main.add_command(replay_command)


_register_replay()


@main.command()
@config_option
@click.option("--topic", default=None, help="Kafka topic to read (default RECEIVER_KAFKA_TOPIC).")
@click.option(
    "--file",
    "file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Read this events.jsonl instead (default with no Kafka: RECEIVER_DATA_DIR/events.jsonl).",
)
@click.option("--from-beginning", is_flag=True, help="Every event there is, not only the last --lines.")
@click.option("-n", "--lines", type=click.IntRange(min=0), default=10, show_default=True, help="Last events shown.")
@click.option("-f", "--follow", is_flag=True, help="Keep waiting for new events.")
@click.option("--org", "orgs", multiple=True, help="Only this org (15 or 18 characters); repeatable.")
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    type=click.Choice(["outbound_message", "platform_event", "change_event"]),
    help="Only this kind; repeatable.",
)
@click.option("--object", "objects", multiple=True, help="Only this object (glob, any case); repeatable.")
@click.option("--json", "as_json", is_flag=True, help="One CloudEvents structured-mode JSON object per line.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Exit after printing this many events.")
def tail(
    *,
    config_file: Path | None,
    topic: str | None,
    file: Path | None,
    from_beginning: bool,
    lines: int,
    follow: bool,
    orgs: tuple[str, ...],
    kinds: tuple[str, ...],
    objects: tuple[str, ...],
    as_json: bool,
    limit: int | None,
) -> None:
    """Print events from the sink (a Kafka topic or events.jsonl) for a person to read."""
    import asyncio

    from receiver.ids import normalize_org_id
    from receiver.tail import EventFilter, TailError, TailOptions, run
    from receiver.tail_output import JsonPrinter, PrettyPrinter

    settings = settings_or_exit(config_file)
    try:
        org_ids = [normalize_org_id(org) for org in orgs]
    except ReceiverError as exc:
        raise click.BadParameter(exc.detail, param_hint="--org") from None
    options = TailOptions(EventFilter.of(org_ids, kinds, objects), from_beginning, lines, follow, limit)
    printer = JsonPrinter() if as_json else PrettyPrinter()
    try:
        asyncio.run(run(settings, options, printer.show, topic=topic, file=file))
    except TailError as exc:
        click.echo(f"sf-receiver tail: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        # The reader (head, less) has gone: exit quietly, and keep Python from failing on flush.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)


def _dedupe_summary(settings: Settings) -> str:
    if settings.redis_url is None:
        return f"memory, {settings.dedupe_max_entries:,} entries"
    return "redis cluster" if settings.redis_cluster else "redis"
