"""The producer's partitioner must put every key where Kafka's default partitioner would."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as reference_murmur2
from hypothesis import given
from hypothesis import strategies as st

from receiver.partitioner import murmur2, murmur2_partitioner


@given(st.binary(max_size=200))
def test_murmur2_matches_the_java_client(data: bytes) -> None:
    """murmur2 gives aiokafka's (the Java client's) hash for any bytes."""
    assert murmur2(data) == reference_murmur2(data)


@given(st.binary(max_size=80), st.integers(min_value=1, max_value=64))
def test_keyed_records_get_the_default_partition(key: bytes, partitions: int) -> None:
    """A keyed record lands on the partition aiokafka's DefaultPartitioner picks."""
    all_partitions = list(range(partitions))
    assert murmur2_partitioner(key, all_partitions, all_partitions) == DefaultPartitioner()(
        key, all_partitions, all_partitions
    )


def test_unkeyed_records_go_to_an_available_partition() -> None:
    """Without a key, the partition is one of the available ones."""
    assert murmur2_partitioner(None, [0, 1, 2], [2]) == 2
