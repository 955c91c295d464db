"""After a target's run: does its topic hold every event that was acknowledged?

The topic is fresh for the run (``bench.<run id>.<target>``), so it is read from the offsets
recorded before the load started up to its end offsets after the server stopped (which
flushes its producer). ``lost`` counts acknowledged ids that are not in it: it must be 0.
Ids published but never acknowledged (requests still in flight when wrk stopped) are counted
as ``unacked_published``: they are fine, the sender would have retried them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

READ_BATCH = 10_000
READ_TIMEOUT_S = 120.0
SAMPLE_LOST = 5


@dataclass(frozen=True, slots=True)
class Verdict:
    acked: int
    found: int
    lost: int
    duplicates: int
    unacked_published: int
    lost_sample: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "acked_ids": self.acked,
            "ids_in_topic": self.found,
            "lost": self.lost,
            "duplicate_records": self.duplicates,
            "unacked_published": self.unacked_published,
            "lost_sample": self.lost_sample,
        }


async def partition_offsets(bootstrap: str, topic: str, *, end: bool) -> dict[int, int]:
    """The first (or next) offset of each partition; an absent topic has none."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    numbers = sorted(partition["partition"] for partition in described[0]["partitions"])
    if not numbers:
        return {}
    tps = [TopicPartition(topic, number) for number in numbers]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        offsets = await (consumer.end_offsets(tps) if end else consumer.beginning_offsets(tps))
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in offsets.items()}


async def read_ids(bootstrap: str, topic: str, start: dict[int, int]) -> tuple[dict[str, int], int]:
    """``ce_id`` -> number of records carrying it, from ``start`` to the current end; and the total."""
    end = await partition_offsets(bootstrap, topic, end=True)
    counts: dict[str, int] = {}
    total = 0
    if not end:
        return counts, total
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=8 << 20
    )
    await consumer.start()
    try:
        remaining = {TopicPartition(topic, number): offset for number, offset in end.items()}
        consumer.assign(list(remaining))
        for tp in list(remaining):
            consumer.seek(tp, start.get(tp.partition, 0))
            if start.get(tp.partition, 0) >= remaining[tp]:
                del remaining[tp]
        async with asyncio.timeout(READ_TIMEOUT_S):
            while remaining:
                batches = await consumer.getmany(*remaining, timeout_ms=1000, max_records=READ_BATCH)
                for tp, records in batches.items():
                    for record in records:
                        if record.offset >= remaining.get(tp, 0):
                            continue
                        total += 1
                        for name, value in record.headers:
                            if name == "ce_id":
                                event_id = value.decode()
                                counts[event_id] = counts.get(event_id, 0) + 1
                                break
                    if tp in remaining and await consumer.position(tp) >= remaining[tp]:
                        del remaining[tp]
    finally:
        await consumer.stop()
    return counts, total


def _comparable(event_id: str) -> str:
    # Outbound Message ids: the receiver publishes the 18-character form, the baseline the
    # 15-character id as sent; the first 15 characters are the id either way.
    return event_id[:15] if event_id.startswith("04l") else event_id


def compare(acked_ids: Iterable[str], counts: dict[str, int]) -> Verdict:
    found = {_comparable(event_id) for event_id in counts}
    acked = {_comparable(event_id) for event_id in acked_ids}
    lost = acked - found
    return Verdict(
        acked=len(acked),
        found=len(found),
        lost=len(lost),
        duplicates=sum(count - 1 for count in counts.values()),
        unacked_published=len(found - acked),
        lost_sample=sorted(lost)[:SAMPLE_LOST],
    )


async def delete_topics(bootstrap: str, topics: list[str]) -> None:
    """Remove the run's own topics from the shared broker; best effort."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(topics)
    finally:
        await admin.close()
