"""Reading a Kafka topic for replay (``salesforce.raw``, the quarantine topic) between two times.

The read is a snapshot: it stops at the end offsets the topic had when replay started, so a
receiver that records (or quarantines) what replay sends cannot make it run forever. ``since``
seeks each partition by timestamp; ``until`` stops a partition a margin past it. No
consumer group: replay commits nothing, resuming is the checkpoint file's job.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from receiver.kafka_sink import producer_options
from receiver.replay_sources import ReplaySourceError
from receiver.settings import Settings

_POLL_MS: Final = 1000
_METADATA_ATTEMPTS: Final = 20
_METADATA_RETRY_S: Final = 0.25
#: A record is written to Kafka after the time it carries (``received_at``): after the answer for
#: a recording. ``since`` seeks exactly; ``until`` reads this much further, and the item filter
#: then applies the exact window.
_UNTIL_MARGIN: Final = timedelta(minutes=5)


async def kafka_lines(
    settings: Settings, topic: str, *, since: datetime | None = None, until: datetime | None = None
) -> AsyncIterator[tuple[bytes, str]]:
    """Each record value of ``topic`` with its origin ``kafka:TOPIC:PARTITION:OFFSET``.

    Raises ``ReplaySourceError`` when Kafka is not configured, cannot be reached, or has no
    such topic.
    """
    if settings.kafka_bootstrap_servers is None:
        raise ReplaySourceError(f"kafka:{topic} needs RECEIVER_KAFKA_BOOTSTRAP_SERVERS")
    consumer = AIOKafkaConsumer(
        **producer_options(settings), group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    try:
        await consumer.start()
    except (KafkaError, OSError) as exc:
        await consumer.stop()
        raise ReplaySourceError(f"kafka is not reachable: {exc!r}") from exc
    try:
        partitions = await _partitions(consumer, topic)
        consumer.assign(partitions)
        end_offsets = await consumer.end_offsets(partitions)
        await _seek(consumer, partitions, since)
        until_ms = None if until is None else int((until + _UNTIL_MARGIN).timestamp() * 1000)
        remaining = {tp for tp in partitions if await consumer.position(tp) < end_offsets[tp]}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=_POLL_MS)
            for tp, messages in batch.items():
                for message in messages:
                    if message.offset >= end_offsets[tp] or (until_ms is not None and message.timestamp >= until_ms):
                        remaining.discard(tp)
                        break
                    if message.value is not None:
                        yield message.value, f"kafka:{topic}:{tp.partition}:{message.offset}"
            for tp in list(remaining):
                # Past the snapshot, or only compacted / transaction markers left before it.
                if await consumer.position(tp) >= end_offsets[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    # ``partitions_for_topic`` only knows topics of the metadata the client happened to fetch,
    # and aiokafka has no public call to fetch them for a topic it is not subscribed to.
    for _ in range(_METADATA_ATTEMPTS):
        cluster = await consumer._client.fetch_all_metadata()
        if topic not in cluster.topics():
            raise ReplaySourceError(f"kafka topic {topic!r} does not exist")
        partitions = cluster.partitions_for_topic(topic)
        if partitions:
            return [TopicPartition(topic, partition) for partition in sorted(partitions)]
        await asyncio.sleep(_METADATA_RETRY_S)  # a topic created a moment ago: leaders not elected yet
    raise ReplaySourceError(f"kafka topic {topic!r} has no partition with a leader")


async def _seek(consumer: AIOKafkaConsumer, partitions: list[TopicPartition], since: datetime | None) -> None:
    if since is None:
        await consumer.seek_to_beginning(*partitions)
        return
    since_ms = int(since.timestamp() * 1000)
    offsets = await consumer.offsets_for_times(dict.fromkeys(partitions, since_ms))
    for tp, found in offsets.items():
        if found is None:
            await consumer.seek_to_end(tp)  # nothing at or after ``since`` in this partition
        else:
            consumer.seek(tp, found.offset)
