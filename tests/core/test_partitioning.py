"""The murmur2 key partitioner is exactly Kafka's (Java client, aiokafka)."""

from __future__ import annotations

import random

import pytest
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from stream.core.partitioning import expected_partition, murmur2


@pytest.mark.parametrize(
    ("text", "signed"),
    [  # org.apache.kafka.common.utils.UtilsTest#testMurmur2
        ("21", -973932308),
        ("foobar", -790332482),
        ("a-little-bit-long-string", -985981536),
        ("a-little-bit-longer-string", -1486304829),
        ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        ("abc", 479470107),
    ],
)
def test_murmur2_matches_the_java_client(text: str, signed: int) -> None:
    assert murmur2(text.encode()) == signed & 0xFFFFFFFF


def test_expected_partition_matches_aiokafka_on_many_keys() -> None:
    rng = random.Random(11)
    partitioner = DefaultPartitioner()
    keys = [f"cust-{i:05d}".encode() for i in range(3000)]
    keys += [rng.randbytes(rng.randrange(0, 80)) for _ in range(3000)]
    keys += ["kunde-müller-ß-東京".encode(), b"", b"\x00\xff"]
    for key in keys:
        for n in (1, 2, 3, 8, 12, 64, 1024):
            assert expected_partition(key, n) == partitioner(key, list(range(n)), []), key


@given(st.binary(max_size=200), st.integers(min_value=1, max_value=4096))
def test_expected_partition_is_in_range_and_agrees_with_aiokafka(key: bytes, n: int) -> None:
    p = expected_partition(key, n)
    assert 0 <= p < n
    assert p == DefaultPartitioner()(key, list(range(n)), [])


def test_partition_count_must_be_positive() -> None:
    with pytest.raises(ValueError):
        expected_partition(b"k", 0)
