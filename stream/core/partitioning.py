"""Which partition a Kafka key belongs to: the murmur2 key partitioner (SPEC §1).

Kafka's Java client and aiokafka map a non-null key to `murmur2(key) & 0x7fffffff` modulo the
partition count. engage relies on it: all input topics are co-partitioned, so a customer's
events must land on the partition their `customer_id` hashes to, whichever client produced them.
librdkafka's default (`consistent_random`, a CRC32) picks other partitions; the worker recomputes
the partition here and dead-letters a message found elsewhere (`wrong_partition`).

Pure: no Kafka client is imported, so the worker, the emitter client and tests share it.
"""

from __future__ import annotations

from functools import lru_cache

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's 32-bit MurmurHash2 (org.apache.kafka.common.utils.Utils.murmur2), as an
    unsigned int: the exact hash the Java client and aiokafka partition keys with."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    end = length - length % 4
    for i in range(0, end, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length % 4
    if rest == 3:
        h ^= data[end + 2] << 16
    if rest >= 2:
        h ^= data[end + 1] << 8
    if rest >= 1:
        h ^= data[end]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


@lru_cache(maxsize=1 << 16)
def expected_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default key partitioner gives `key` among `partitions`
    (Java's `toPositive(murmur2(key)) % partitions`). Cached: the worker checks every message,
    customers send many, and the pure-Python hash costs 5-10 µs against ~0.1 µs for a hit."""
    if partitions < 1:
        raise ValueError("a topic has at least one partition")
    return (murmur2(key) & 0x7FFFFFFF) % partitions
