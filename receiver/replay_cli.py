"""``sf-receiver replay``: the command line of the replay tool (options -> ``receiver.replay``)."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Final

import click

from receiver.connections import ConnectionResolver
from receiver.errors import ConfigurationError, ReceiverError
from receiver.ids import normalize_org_id
from receiver.replay import Replayer, ReplayOptions, Summary
from receiver.replay_items import KIND_CHOICES, ReplayFilter, parse_time
from receiver.replay_report import ReplayReport
from receiver.replay_sources import PayloadDefaults, ReplaySourceError, check_sources, items_from
from receiver.replay_targets import HttpTarget, PipelineTarget, ReplayTarget
from receiver.settings import Settings

EXIT_OK: Final = 0
EXIT_NOT_ALL_DONE: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

_EPILOG = """\b
SOURCE is a recording file (.jsonl, .jsonl.gz), quarantine.jsonl, a plain payload file (.xml: an
Outbound Message; .json: an event body or a terapi forward), a directory of them, or
kafka:TOPIC (salesforce.raw, salesforce.quarantine; --since/--until seek by time).

\b
Exit status: 0 when every item was acked, a duplicate or (dry run) valid; 1 when any item was
rejected (4xx) or failed (429, 5xx, transport, missing secret); 2 for a usage, configuration or
source error; 130 when stopped by SIGINT/SIGTERM (resume with the same --checkpoint). Skipped
items (recorded without a body, unreadable lines) and filtered-out items do not count.

\b
Requests first refused as unauthenticated (401) are left out unless --outcome selects them:
re-signing them would make a forged request genuine.
"""


def _org_ids(orgs: Sequence[str]) -> list[str]:
    try:
        return [normalize_org_id(org) for org in orgs]
    except ReceiverError as exc:
        raise click.BadParameter(exc.detail, param_hint="--org") from None


def _time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError:
        raise click.BadParameter(
            "expected an ISO 8601 time or date, e.g. 2025-05-01T12:00:00Z", param_hint=name
        ) from None


@click.command(name="replay", epilog=_EPILOG, context_settings={"max_content_width": 100})
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="RECEIVER_CONFIG",
    default=None,
    help="TOML configuration file, as for serve: secrets, token, org map, sink.",
)
@click.option("--to", "to_url", metavar="URL", help="Send to the receiver at this base URL (http://host:8080).")
@click.option("--publish", is_flag=True, help="Run the pipeline in-process, straight to the configured sink.")
@click.option("--dry-run", is_flag=True, help="Parse, validate and resolve only; print what would be sent.")
@click.option("--org", "orgs", multiple=True, help="Only this org; also the org of plain .json files. Repeatable.")
@click.option(
    "--integration",
    "integrations",
    multiple=True,
    help="Only this integration; also the integration of plain files (default salesforce). Repeatable.",
)
@click.option("--kind", "kinds", multiple=True, type=click.Choice(KIND_CHOICES), help="Only this kind. Repeatable.")
@click.option("--since", help="Only items received at or after this time (ISO 8601, UTC when naive).")
@click.option("--until", help="Only items received before this time.")
@click.option(
    "--outcome",
    "outcomes",
    multiple=True,
    help="Only items first answered so: a status (403), a class (4xx) or a reason (unknown_org, ok). Repeatable.",
)
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), help="Items per second at most.")
@click.option("--concurrency", type=click.IntRange(1, 256), default=4, show_default=True, help="Items in flight.")
@click.option("--limit", type=click.IntRange(min=1), help="Send at most this many items.")
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path, dir_okay=False),
    help="File of finished items: skipped by a later run given the same file.",
)
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=30.0, help="HTTP timeout (s).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON document.")
def replay_command(
    *,
    sources: tuple[str, ...],
    config_file: Path | None,
    to_url: str | None,
    publish: bool,
    dry_run: bool,
    orgs: tuple[str, ...],
    integrations: tuple[str, ...],
    kinds: tuple[str, ...],
    since: str | None,
    until: str | None,
    outcomes: tuple[str, ...],
    rate: float | None,
    concurrency: int,
    limit: int | None,
    checkpoint: Path | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Replay recorded, quarantined or plain payloads to a receiver (--to) or the sink (--publish)."""
    from receiver.cli import settings_or_exit

    if bool(to_url) == publish and not (dry_run and not to_url):
        raise click.UsageError("give exactly one of --to URL and --publish (a --dry-run may give neither)")
    if to_url:
        _check_url(to_url)
    org_ids = _org_ids(orgs)
    item_filter = ReplayFilter(
        orgs=frozenset(org_ids),
        integrations=frozenset(integrations),
        kinds=frozenset(kinds),
        since=_time(since, "--since"),
        until=_time(until, "--until"),
        outcomes=frozenset(outcomes),
    )
    defaults = PayloadDefaults(
        integration=integrations[0] if len(integrations) == 1 else "salesforce",
        organization_id=org_ids[0] if len(org_ids) == 1 else None,
    )
    settings = settings_or_exit(config_file)
    try:
        check_sources(sources)
        target = _target(settings, to_url, dry_run=dry_run, timeout_s=timeout)
    except ReceiverError as exc:
        click.echo(f"sf-receiver replay: {exc.detail}", err=True)
        sys.exit(EXIT_USAGE)
    if publish and not dry_run and settings.redis_url is None:
        click.echo(
            "sf-receiver replay: no RECEIVER_REDIS_URL: --publish dedupes only within this run, so events"
            " the receiver already published are published again",
            err=True,
        )
    summary = Summary(dry_run=dry_run)
    options = ReplayOptions(rate=rate, concurrency=concurrency, limit=limit, checkpoint=checkpoint)
    with ReplayReport(summary, as_json=as_json) as report:
        status = asyncio.run(
            _run(
                sources=sources,
                settings=settings,
                defaults=defaults,
                item_filter=item_filter,
                target=target,
                options=options,
                report=report,
            )
        )
    if status != EXIT_USAGE:
        report.print_summary()
    sys.exit(status)


def _check_url(url: str) -> None:
    """Raises ``click.UsageError`` for a --to that is not an http(s) URL with a host."""
    import httpx

    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise click.UsageError(f"--to {url!r} is not a URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise click.UsageError(f"--to {url!r} is not an http(s) URL with a host, such as http://127.0.0.1:8080")


def _target(settings: Settings, to_url: str | None, *, dry_run: bool, timeout_s: float) -> ReplayTarget:
    http = HttpTarget(to_url, settings, timeout_s=timeout_s) if to_url else None
    if dry_run:
        return PipelineTarget(settings, dry_run=True, request_plan=http)
    return http if http is not None else PipelineTarget(settings)


async def _run(
    *,
    sources: Sequence[str],
    settings: Settings,
    defaults: PayloadDefaults,
    item_filter: ReplayFilter,
    target: ReplayTarget,
    options: ReplayOptions,
    report: ReplayReport,
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()

    def request_stop() -> None:
        # The first signal lets the items in flight finish and be checkpointed; a second one stops now.
        if stop.is_set() and main is not None:
            main.cancel()
        stop.set()

    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, request_stop)
    items = items_from(sources, settings, defaults, since=item_filter.since, until=item_filter.until)
    connections: ConnectionResolver | None = None
    try:
        if item_filter.orgs:
            # The org of a terapi forward is its connection's: the org map and terapi know it.
            from receiver.app import build_connections
            from receiver.metrics import Metrics

            connections = build_connections(settings, Metrics())
            await connections.start()
        replayer = Replayer(
            item_filter,
            target,
            options,
            report.summary,
            on_result=report.on_result,
            on_skip=report.on_skip,
            stop=stop,
            connections=connections,
        )
        await replayer.run(items)
    except (ReplaySourceError, ConfigurationError, OSError) as error:
        return _source_error([error])
    except ExceptionGroup as group:
        # A source that fails mid-run fails inside the task group that feeds the workers.
        matched, rest = group.split((ReplaySourceError, OSError))
        if rest is not None or matched is None:
            raise
        return _source_error(list(_leaves(matched)))
    except asyncio.CancelledError:
        report.summary.interrupted = True
    finally:
        if connections is not None:
            await connections.stop()
    if report.summary.interrupted or stop.is_set():
        report.summary.interrupted = True
        return EXIT_INTERRUPTED
    return EXIT_OK if report.summary.ok else EXIT_NOT_ALL_DONE


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for error in group.exceptions:
        leaves.extend(_leaves(error) if isinstance(error, BaseExceptionGroup) else [error])
    return leaves


def _source_error(errors: Sequence[BaseException]) -> int:
    for error in errors:
        detail = error.detail if isinstance(error, ReceiverError) else str(error)
        click.echo(f"sf-receiver replay: {detail}", err=True)
    return EXIT_USAGE
