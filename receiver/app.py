"""The app factory: builds every component once from settings, and starts them in the lifespan.

Nothing is created at import time; ``create_app(settings)`` chooses the implementations
(Kafka or file sink, Redis or memory dedupe, static map and/or terapi) and the lifespan starts
and stops them in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from receiver.access import SourceAccessMiddleware
from receiver.connections import ConnectionResolver, ConnectionSource, StaticConnectionMap
from receiver.dedupe import DedupeStore, MemoryDedupeStore
from receiver.logs import Throttle
from receiver.metrics import METRICS_STATE_KEY, Metrics, exposition, write_behind_periodically, writes_behind
from receiver.middleware import RequestContextMiddleware
from receiver.outbound import OutboundMessageParser
from receiver.pipeline import Pipeline
from receiver.quarantine import Quarantine
from receiver.recording import Recorder, build_recorder
from receiver.router import build_router
from receiver.settings import Settings
from receiver.sink import Sink, build_sink
from receiver.webhooks import DirectWebhooks, WebhookEndpoints
from receiver.wsdl import WsdlRegistry

logger = logging.getLogger("receiver.app")

#: A claim outlives the publish timeout a little, so a crashed claimant cannot block an event.
CLAIM_MARGIN_S = 5.0
#: At most one warning this often when the in-memory dedupe store drops live marks.
EVICTION_WARNING_INTERVAL_S = 600.0


@dataclass(frozen=True, slots=True)
class Services:
    """Everything a request needs, built once per app."""

    settings: Settings
    metrics: Metrics
    sink: Sink
    dedupe: DedupeStore
    connections: ConnectionResolver
    pipeline: Pipeline
    quarantine: Quarantine
    outbound_parser: OutboundMessageParser
    recorder: Recorder


def build_dedupe(settings: Settings, metrics: Metrics) -> DedupeStore:
    claim_ttl_s = settings.publish_timeout_s + CLAIM_MARGIN_S
    if settings.redis_url is not None:
        from receiver.redis_dedupe import RedisDedupeStore

        return RedisDedupeStore(
            settings.redis_url.get_secret_value(),
            claim_ttl_s=claim_ttl_s,
            commit_ttl_s=settings.dedupe_ttl_s,
            cluster=settings.redis_cluster,
        )
    eviction_log = Throttle(EVICTION_WARNING_INTERVAL_S)

    def evicted_early(count: int) -> None:
        metrics.dedupe_evicted_early.inc(count)
        if eviction_log.ready():
            logger.warning(
                "in-memory dedupe is full: marks dropped before their TTL, resends of those events would be "
                "published again; raise RECEIVER_DEDUPE_MAX_ENTRIES or set RECEIVER_REDIS_URL",
                extra={"evicted": count, "max_entries": settings.dedupe_max_entries},
            )

    return MemoryDedupeStore(
        claim_ttl_s=claim_ttl_s,
        commit_ttl_s=settings.dedupe_ttl_s,
        max_entries=settings.dedupe_max_entries,
        on_early_eviction=evicted_early,
    )


def build_connections(settings: Settings, metrics: Metrics) -> ConnectionResolver:
    sources: list[ConnectionSource] = [StaticConnectionMap.load(settings.org_map_file, settings.integrations)]
    if settings.terapi_secret_key is not None:
        from receiver.terapi import TerapiConnectionSource

        sources.append(TerapiConnectionSource(settings, metrics.registry))
    return ConnectionResolver(sources)


def build_services(settings: Settings, metrics: Metrics | None = None) -> Services:
    """Every component, not yet started; raises ``ConfigurationError`` for unusable settings."""
    metrics = metrics or Metrics()
    sink = build_sink(settings, metrics, build_router(settings))
    dedupe = build_dedupe(settings, metrics)
    return Services(
        settings=settings,
        metrics=metrics,
        sink=sink,
        dedupe=dedupe,
        connections=build_connections(settings, metrics),
        pipeline=Pipeline(sink, dedupe, metrics, max_events_in_flight=settings.max_events_in_flight),
        quarantine=Quarantine(sink, metrics),
        outbound_parser=OutboundMessageParser(
            WsdlRegistry.load(settings.wsdl_dir),
            max_depth=settings.max_xml_depth,
            max_elements=settings.max_xml_elements,
        ),
        recorder=build_recorder(settings, sink, metrics),
    )


@asynccontextmanager
async def started(services: Services) -> AsyncIterator[Services]:
    """Start the components in dependency order and stop them in reverse, even on failure."""
    await services.sink.start()
    try:
        # Right after the sink, whose producer carries the raw topic; stopped (flushed) before it.
        await services.recorder.start()
        try:
            await services.dedupe.start()
            try:
                await services.connections.start()
                try:
                    yield services
                finally:
                    await services.connections.stop()
            finally:
                # The commits of events already acknowledged reach the store before it closes.
                await services.pipeline.settle()
                await services.dedupe.stop()
        finally:
            await services.recorder.stop()
    finally:
        # Last: whatever was accepted is flushed before the process exits.
        await services.sink.stop()


def create_app(settings: Settings, metrics: Metrics | None = None) -> Starlette:
    services = build_services(settings, metrics)
    endpoints = WebhookEndpoints(services)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        sink_ready = await services.sink.is_ready()
        connections_ready = services.connections.ready
        ready = sink_ready and connections_ready
        body = {
            "status": "ready" if ready else "not ready",
            "sink": "kafka" if settings.uses_kafka else "file",
            "sink_ready": sink_ready,
            "sink_status": services.sink.describe(),
            "connections_ready": connections_ready,
            "connections": services.connections.describe(),
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    async def metrics_endpoint(request: Request) -> Response:
        return Response(exposition(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Metrics]]:
        # Worker processes write their metric values behind (receiver.metrics.write_behind).
        writing = asyncio.create_task(write_behind_periodically()) if writes_behind() else None
        try:
            async with started(services):
                logger.info(
                    "receiver started",
                    extra={"sink": "kafka" if settings.uses_kafka else "file", "integrations": settings.integrations},
                )
                # The lifespan state reaches uvicorn's connection protocol too (its app_state), which
                # counts the connections it refuses before any request exists.
                yield {METRICS_STATE_KEY: services.metrics}
        finally:
            if writing is not None:
                writing.cancel()
                await asyncio.gather(writing, return_exceptions=True)
        logger.info("receiver stopped")

    routes = [
        # Webhooks first: Starlette tries routes in order, and they take nearly all the traffic.
        *endpoints.routes(),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    middleware = [
        # Outermost: a source refused costs no request slot, and every later step sees the real client.
        Middleware(
            SourceAccessMiddleware,
            allowed_cidrs=settings.allowed_cidrs,
            trusted_proxies=settings.trusted_proxies,
            metrics=services.metrics,
            recorder=services.recorder,
        ),
        Middleware(
            RequestContextMiddleware,
            max_requests_in_flight=settings.max_requests_in_flight,
            metrics=services.metrics,
            max_body_bytes=settings.max_body_bytes,
            max_body_bytes_in_flight=settings.max_body_bytes_in_flight,
            recorder=services.recorder,
        ),
        # Innermost: webhook requests skip the router (the routes above stay for everything else).
        Middleware(DirectWebhooks, endpoints=endpoints),
    ]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.services = services
    return app
