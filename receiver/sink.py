"""Where events go: the ``Sink`` protocol, and the choice between Kafka and the file sink."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from receiver.event import CloudEvent
from receiver.metrics import Metrics
from receiver.settings import Settings

#: Chooses the topics of one event (routing rules); the file sink ignores topics.
TopicRouter = Callable[[CloudEvent], Sequence[str]]


class Sink(Protocol):
    """Durable storage for events. ``publish`` returns only once every event is stored."""

    async def start(self) -> None:
        """Connect; must not raise when the backend is down (readiness reports it instead)."""

    async def stop(self) -> None:
        """Flush what was accepted and close; idempotent."""

    async def publish(self, events: Sequence[CloudEvent]) -> None:
        """Store every event, or raise ``PublishFailed`` / ``PublishTimeout``: never half-silently."""

    async def quarantine(self, record: dict[str, Any]) -> None:
        """Store an authenticated payload that could not be processed, for a later replay."""

    async def record_raw(self, line: bytes) -> None:
        """Store one redacted request recording (the ``salesforce.raw`` topic); best effort."""

    async def is_ready(self) -> bool:
        """True when a publish could succeed now."""

    def describe(self) -> dict[str, object]:
        """A small status for ``/readyz``: what an operator should know beyond ready or not."""


def default_router(topic: str) -> TopicRouter:
    topics = (topic,)

    def route(event: CloudEvent) -> Sequence[str]:
        return topics

    return route


def build_sink(settings: Settings, metrics: Metrics, router: TopicRouter | None = None) -> Sink:
    """The Kafka sink when ``RECEIVER_KAFKA_BOOTSTRAP_SERVERS`` is set, else the file sink."""
    route = router or default_router(settings.kafka_topic)
    if settings.uses_kafka:
        from receiver.kafka_sink import KafkaSink

        return KafkaSink(settings, metrics, route)
    from receiver.file_sink import FileSink

    return FileSink(settings.data_dir, publish_timeout_s=settings.publish_timeout_s)
