"""The producer's partitioner: Kafka's default murmur2 key hashing, computed faster.

Every event is keyed (``{org id}:{record id}``), so the partitioner runs once per record.
aiokafka's ``DefaultPartitioner`` hashes in pure Python byte by byte, with a mask after each
step: a fifth of the publish cost in profiles of 100-notification messages. This one gives
the same partition for every key (the Java client's, so other producers of the same topic
agree with it) and reads the key a 32-bit word at a time.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence
from functools import lru_cache
from typing import Final

_SEED: Final = 0x9747B28C
_MULTIPLIER: Final = 0x5BD1E995
_MASK: Final = 0xFFFFFFFF


@lru_cache(maxsize=64)
def _words_of(count: int) -> struct.Struct:
    # Keys of one topic have a handful of lengths: one compiled unpacker per length.
    return struct.Struct(f"<{count}I")


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash of ``data`` (``org.apache.kafka.common.utils.Utils.murmur2``), unsigned."""
    length = len(data)
    h = _SEED ^ length
    for word in _words_of(length >> 2).unpack_from(data):
        mixed = (word * _MULTIPLIER) & _MASK
        mixed ^= mixed >> 24
        h = ((h * _MULTIPLIER) & _MASK) ^ ((mixed * _MULTIPLIER) & _MASK)
    tail = length & 3
    if tail:
        end = length & ~3
        if tail == 3:
            h ^= data[end + 2] << 16
        if tail >= 2:
            h ^= data[end + 1] << 8
        h = ((h ^ data[end]) * _MULTIPLIER) & _MASK
    h ^= h >> 13
    h = (h * _MULTIPLIER) & _MASK
    return h ^ (h >> 15)


def murmur2_partitioner(key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]) -> int:
    """aiokafka's partitioner interface, with the Java client's choice for keyed records."""
    if key is None:
        return random.choice(available or all_partitions)  # noqa: S311 -- spreading load, not security
    return all_partitions[(murmur2(key) & 0x7FFFFFFF) % len(all_partitions)]
