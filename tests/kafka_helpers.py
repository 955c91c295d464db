"""Reading the real broker back: the only way a test can show an event is really in Kafka."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition


@dataclass(frozen=True)
class Record:
    topic: str
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]

    def header(self, name: str) -> str:
        return self.headers[name].decode()


def unique_topic(prefix: str = "test") -> str:
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


async def read_topic(bootstrap: str, topic: str, *, expect: int | None = None, timeout_s: float = 20.0) -> list[Record]:
    """Every record of ``topic`` from the beginning, waiting until ``expect`` arrived (or idle)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        partitions = None
        deadline = asyncio.get_running_loop().time() + timeout_s
        while partitions is None:
            partitions = consumer.partitions_for_topic(topic)
            if partitions is None:
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(topic)
            if partitions is None:
                if asyncio.get_running_loop().time() > deadline:
                    return []
                await asyncio.sleep(0.2)
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        end_offsets = await consumer.end_offsets(assigned)
        records: list[Record] = []
        while True:
            positions = {tp: await consumer.position(tp) for tp in assigned}
            caught_up = all(positions[tp] >= end_offsets[tp] for tp in assigned)
            if caught_up and (expect is None or len(records) >= expect):
                break
            if asyncio.get_running_loop().time() > deadline:
                break
            batch = await consumer.getmany(timeout_ms=300)
            for messages in batch.values():
                for message in messages:
                    records.append(
                        Record(message.topic, message.key, message.value, {k: bytes(v) for k, v in message.headers})
                    )
            if caught_up:
                end_offsets = await consumer.end_offsets(assigned)
        return records
    finally:
        await consumer.stop()
