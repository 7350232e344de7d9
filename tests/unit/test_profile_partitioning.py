"""partition_of: the partition Kafka's default partitioner gives a keyed record, so the
worker's bundles land where a keyed record of the same profile id would."""

from __future__ import annotations

import uuid

import pytest
from kafka.partitioner.default import murmur2 as kafka_python_murmur2

from services.profile.worker import partition_of

# Utils.murmur2 of the Java client for these keys (Kafka's UtilsTest.testMurmur2), as
# signed 32-bit integers; the default partitioner takes toPositive(hash) % partitions.
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize("partitions", [1, 3, 8, 12])
@pytest.mark.parametrize(("key", "java_hash"), JAVA_MURMUR2.items())
def test_known_keys_land_where_the_java_client_puts_them(
    key: bytes, java_hash: int, partitions: int
) -> None:
    assert partition_of(key, partitions) == (java_hash & 0x7FFFFFFF) % partitions


def test_profile_ids_land_where_kafka_python_puts_them() -> None:
    keys = [f"p_{uuid.uuid4().hex}".encode() for _ in range(500)] + [b"", b"\xff" * 7]
    for key in keys:
        expected = (kafka_python_murmur2(key) & 0x7FFFFFFF) % 8
        assert partition_of(key, 8) == expected, key
