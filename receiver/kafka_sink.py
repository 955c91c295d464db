"""The Kafka sink: CloudEvents in binary content mode through an idempotent aiokafka producer.

``acks=all`` with idempotence, and every send awaited under ``RECEIVER_PUBLISH_TIMEOUT_S``: an
event counts as published only when the broker confirmed it. Concurrent requests share produce
batches through ``linger_ms``; each request still awaits its own records.

aiokafka producers can wedge after a broker blip (idempotent sequence errors, stale leaders:
aio-libs/aiokafka#1017, #1018). Rather than trusting one producer forever, the sink throws a
producer away after a fault and builds a fresh one, and keeps trying in the background while
the broker is down: the process stays up and recovers by itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from receiver.errors import EventTooLarge, PublishFailed, PublishTimeout
from receiver.event import CloudEvent
from receiver.metrics import Metrics
from receiver.partitioner import murmur2_partitioner
from receiver.routing import static_topics
from receiver.settings import Settings
from receiver.sink import TopicRouter
from receiver.topics import TopicManager

logger = logging.getLogger("receiver.kafka")

#: After a fault, wait this long before building a new producer, so a broker that is down is
#: not hammered with connection attempts.
_RECONNECT_BACKOFF_S = 1.0
_READY_PROBE_TIMEOUT_S = 2.0
#: Bound on the flush when stopping. Every Ack awaited its own records, so what a producer still
#: holds at shutdown belongs to requests that were not acked and will be resent: a broker that
#: does not answer must not keep the process from exiting.
_STOP_FLUSH_TIMEOUT_S = 5.0


def producer_options(settings: Settings) -> dict[str, Any]:
    """The aiokafka client options shared by the producer, the admin client and consumers."""
    assert settings.kafka_bootstrap_servers is not None
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
        "client_id": "salesforce-event-receiver",
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
        )
    if settings.kafka_sasl_mechanism is not None:
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        if settings.kafka_sasl_password is not None:
            options["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return options


async def _all_confirmed(futures: list[asyncio.Future[Any]]) -> None:
    """Return once the broker confirmed every record; raise the first record's error otherwise.

    One awaited future per message rather than one per record: records sent together share
    produce requests and are resolved together, so once the last one is confirmed the others
    almost always are too, and gather's callback and wake-up per record is saved. Every
    record's outcome is still checked before the Ack.
    """
    if not futures:
        return
    try:
        await futures[-1]
        pending = [future for future in futures if not future.done()]
        if pending:
            await asyncio.gather(*pending)
        for future in futures:
            future.result()
    except BaseException:
        # The caller gives up on this message: collect the other records' outcomes quietly.
        for future in futures:
            future.add_done_callback(_retrieve_outcome)
        raise


def _retrieve_outcome(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class KafkaSink:
    def __init__(self, settings: Settings, metrics: Metrics, router: TopicRouter) -> None:
        self.settings = settings
        self.metrics = metrics
        self.router = router
        self.topics = TopicManager(
            producer_options(settings),
            static_topics(settings),
            create=settings.kafka_create_topics,
            partitions=settings.kafka_partitions,
            timeout_s=settings.publish_timeout_s,
        )
        self._timeout_s = settings.publish_timeout_s
        #: Records past this are measured as aiokafka does; below it, the headers (bounded,
        #: about 1 KiB at most) and the batch's own overhead cannot take a record over the bound.
        self._large_record_bytes = settings.kafka_max_request_bytes - 16 * 1024
        self._producer: AIOKafkaProducer | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._last_fault = 0.0
        self._stopped = False
        self._retiring: set[asyncio.Task[None]] = set()

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            **producer_options(self.settings),
            acks="all",
            enable_idempotence=True,
            linger_ms=self.settings.kafka_linger_ms,
            max_batch_size=256 * 1024,
            max_request_size=self.settings.kafka_max_request_bytes,
            # Same partitions as aiokafka's default (Java's murmur2), at a third of the cost.
            partitioner=murmur2_partitioner,
            request_timeout_ms=int(self._timeout_s * 1000),
            retry_backoff_ms=100,
        )

    async def start(self) -> None:
        self._stopped = False
        try:
            await self._connect()
        except KafkaError as exc:
            logger.warning("kafka not reachable at start-up; retrying in the background", extra={"error": repr(exc)})
            self._reconnect_later()

    async def _connect(self) -> None:
        producer = self._new_producer()
        try:
            await asyncio.wait_for(producer.start(), self._timeout_s)
        except (KafkaError, TimeoutError, OSError) as exc:
            await producer.stop()
            raise KafkaError(f"producer start failed: {exc!r}") from exc
        except asyncio.CancelledError:
            # Cancelled by stop(): the half-started producer must still be closed.
            await producer.stop()
            raise
        old, self._producer = self._producer, producer
        if old is not None:
            # Records still in the old producer fail; their requests get a 5xx and are resent.
            retiring = asyncio.create_task(old.stop())
            self._retiring.add(retiring)
            retiring.add_done_callback(self._retiring.discard)
        logger.info("kafka producer connected", extra={"bootstrap_servers": self.settings.kafka_bootstrap_servers})
        if not self.topics.checked:
            await self.topics.check()

    def _reconnect_later(self) -> None:
        if self._stopped or (self._connecting is not None and not self._connecting.done()):
            return
        self._connecting = asyncio.create_task(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        while not self._stopped:
            await asyncio.sleep(_RECONNECT_BACKOFF_S)
            try:
                await self._connect()
            except KafkaError as exc:
                logger.info("kafka still unreachable", extra={"error": repr(exc)})
                continue
            self.metrics.sink_recreated.inc()
            return

    def _on_fault(self) -> None:
        now = time.monotonic()
        if now - self._last_fault < _RECONNECT_BACKOFF_S:
            return
        self._last_fault = now
        self._reconnect_later()

    async def stop(self) -> None:
        self._stopped = True
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
            self._connecting = None
        producer, self._producer = self._producer, None
        # stop() flushes what a producer holds before closing; all of them at once, under one bound.
        closing = [self.topics.close(), asyncio.gather(*self._retiring, return_exceptions=True)]
        if producer is not None:
            closing.append(producer.stop())
        timeout_s = min(self._timeout_s, _STOP_FLUSH_TIMEOUT_S)
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*closing)
        except TimeoutError:
            logger.warning(
                "kafka did not take the last buffered records before shutdown; their requests were not acked",
                extra={"timeout_s": timeout_s},
            )

    async def publish(self, events: Sequence[CloudEvent]) -> None:
        producer = self._producer
        if producer is None:
            self._reconnect_later()
            raise PublishFailed("kafka is not connected")
        # Every record is built and measured before the first is sent: a record too large for
        # a request fails the message before any of its events reaches Kafka, so that the
        # sender's resends do not publish its other events again each time.
        records = []
        for event in events:
            value = orjson.dumps(event.data)
            key = event.key.encode()
            headers = event.kafka_headers()
            # Header values are bounded where they are parsed (ids, names, EventUuid and
            # transactionKey at most MAX_ID_LENGTH): only the value and the key can be large.
            if len(value) + len(key) > self._large_record_bytes:
                self._check_size(key, value, headers)
            records.append((self.router(event), value, key, headers))
        try:
            async with asyncio.timeout(self._timeout_s):
                futures = []
                for topics, value, key, headers in records:
                    if self.topics.creates:
                        await self.topics.ensure(topics)
                    for topic in topics:
                        futures.append(await producer.send(topic, value, key=key, headers=headers))
                await _all_confirmed(futures)
        except TimeoutError as exc:
            self._on_fault()
            raise PublishTimeout(f"kafka did not confirm within {self._timeout_s} s") from exc
        except KafkaError as exc:
            self._on_fault()
            raise PublishFailed(f"kafka refused the events: {type(exc).__name__}") from exc

    def _check_size(self, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        """Raises ``EventTooLarge`` for a record over the producer's bound, as aiokafka measures it.

        Not a broker fault, and no retry makes the event smaller: the sender learns it at once
        (the recording keeps the body, to replay once RECEIVER_KAFKA_MAX_REQUEST_BYTES and the
        broker's message.max.bytes allow it).
        """
        limit = self.settings.kafka_max_request_bytes
        if DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers) > limit:
            raise EventTooLarge(f"an event is over RECEIVER_KAFKA_MAX_REQUEST_BYTES ({limit})")

    async def _send_one(self, topic: str, value: bytes, key: bytes | None) -> None:
        producer = self._producer
        if producer is None:
            raise PublishFailed("kafka is not connected")
        try:
            async with asyncio.timeout(self._timeout_s):
                await (await producer.send(topic, value, key=key))
        except (TimeoutError, KafkaError) as exc:
            raise PublishFailed(f"kafka did not take the record for {topic}") from exc

    async def quarantine(self, record: dict[str, Any]) -> None:
        key = str(record.get("organization_id") or "").encode() or None
        await self._send_one(self.settings.kafka_quarantine_topic, orjson.dumps(record), key)

    async def record_raw(self, line: bytes) -> None:
        await self._send_one(self.settings.kafka_raw_topic, line, None)

    def describe(self) -> dict[str, object]:
        # Missing topics do not make the receiver unready (the broker may create them on first
        # use), but events then land in topics nobody configured: worth seeing in /readyz.
        return {"topics_checked": self.topics.checked, "missing_topics": list(self.topics.missing)}

    async def is_ready(self) -> bool:
        producer = self._producer
        if producer is None:
            return False
        try:
            async with asyncio.timeout(_READY_PROBE_TIMEOUT_S):
                metadata = await producer.client.fetch_all_metadata()
        except (TimeoutError, KafkaError, OSError):
            return False
        return bool(metadata.brokers())
