"""The dataflow's Kafka source on a real Apache Kafka broker whose retention deletes old segments
within a second (a broker of this module's own: the session's keeps its segments): a partition
resumed below the oldest retained offset never jumps to the end. It reads on from the oldest
retained message and reports how many offsets were lost, or, told to fail, raises OffsetGap
before handing on anything; offsets that transaction markers take are no loss."""
from __future__ import annotations

import logging
import time

import pytest
from bytewax.connectors.kafka import KafkaSourceMessage
from confluent_kafka import OFFSET_BEGINNING, Producer

from stream.kafka.apache_broker import QUICK_RETENTION, ApacheKafkaBroker, retained_bytes
from stream.kafka.broker import create_topics, produce_messages, watermarks
from stream.kafka.health import BrokerHealth
from stream.kafka.source import OffsetGap, WatchedKafkaSource

SEGMENT_BYTES = 16_384
MESSAGES = 400  # of 500 bytes: about 12 segments, of which retention keeps the newest two or three
SMALL_BATCHES = {"batch.size": str(SEGMENT_BYTES // 2), "linger.ms": "0"}  # a batch must fit in a segment
READ_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with ApacheKafkaBroker(tmp_path_factory.mktemp("kafka"), server_properties=QUICK_RETENTION) as broker:
        yield broker


@pytest.fixture(scope="module")
def trimmed_topic(broker) -> tuple[str, int]:
    """A one-partition topic whose oldest offsets retention has deleted, and its oldest retained offset."""
    topic = "trimmed"
    create_topics(broker.bootstrap, [topic], 1, retained_bytes(SEGMENT_BYTES, SEGMENT_BYTES))
    produce_messages(broker.bootstrap, topic, [(f"k{i}".encode(), b"x" * 500) for i in range(MESSAGES)],
                     client=SMALL_BATCHES)  # fmt: skip
    return topic, wait_for_retention(broker.bootstrap, topic)


def wait_for_retention(bootstrap: str, topic: str) -> int:
    """The oldest offset retained once retention has deleted what it will (unchanged for a second)."""
    deadline = time.monotonic() + READ_TIMEOUT_S
    seen = [watermarks(bootstrap, topic)[0]]
    while seen[-1] == 0 or len(seen) < 5 or len(set(seen[-5:])) > 1:
        assert time.monotonic() < deadline, f"retention kept offsets from {seen[-1]} on"
        time.sleep(0.25)
        seen.append(watermarks(bootstrap, topic)[0])
    return seen[-1]


class LostOffsets:
    def __init__(self):
        self.reports: list[tuple[str, int, int]] = []

    def __call__(self, topic: str, partition: int, count: int) -> None:
        self.reports.append((topic, partition, count))


def read_partition(broker, topic: str, resume_at: int | None, policy: str,
                   lost: LostOffsets | None = None) -> list[KafkaSourceMessage]:  # fmt: skip
    """Partition 0 of `topic` resumed at offset `resume_at` (None: a fresh start), read to its end."""
    health = BrokerHealth(broker.bootstrap, {}, max_outage_s=60.0)
    source = WatchedKafkaSource(health, [topic], tail=False, starting_offset=OFFSET_BEGINNING,
                                on_offset_gap=policy, offsets_lost=lost)  # fmt: skip
    partition = source.build_part("plays", f"0-{topic}", resume_at)
    read: list[KafkaSourceMessage] = []
    deadline = time.monotonic() + READ_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            try:
                read.extend(partition.next_batch())
            except StopIteration:
                return read
    finally:
        partition.close()
    pytest.fail(f"the partition did not reach its end within {READ_TIMEOUT_S:g}s ({len(read)} messages read)")


def test_resumed_below_the_retained_offsets_it_reads_on_from_the_oldest_and_counts_the_loss(
    broker, trimmed_topic, caplog
):
    topic, oldest = trimmed_topic
    lost = LostOffsets()
    with caplog.at_level(logging.WARNING, logger="stream.kafka.source"):
        read = read_partition(broker, topic, resume_at=5, policy="resume", lost=lost)

    # librdkafka's default reset would have jumped to the end: nothing read, nothing said.
    assert [message.offset for message in read] == list(range(oldest, MESSAGES))
    assert lost.reports == [(topic, 0, oldest - 5)]
    assert f"offsets 5..{oldest - 1} ({oldest - 5} messages) were deleted by the broker's retention" in caplog.text


def test_told_to_fail_it_raises_before_handing_on_anything_after_the_gap(broker, trimmed_topic):
    topic, oldest = trimmed_topic
    lost = LostOffsets()
    with pytest.raises(OffsetGap) as raised:
        read_partition(broker, topic, resume_at=5, policy="fail", lost=lost)
    assert f"partition 0 of topic {topic!r}: offsets 5..{oldest - 1} ({oldest - 5} messages)" in str(raised.value)
    assert "restart with --on-offset-gap resume" in str(raised.value)
    assert lost.reports == []


def test_resumed_within_the_retained_offsets_nothing_is_lost(broker, trimmed_topic):
    topic, oldest = trimmed_topic
    lost = LostOffsets()
    read = read_partition(broker, topic, resume_at=oldest + 3, policy="fail", lost=lost)
    assert [message.offset for message in read] == list(range(oldest + 3, MESSAGES))
    assert lost.reports == []


def test_offsets_taken_by_transaction_markers_are_no_loss(broker):
    topic = "transactional"
    create_topics(broker.bootstrap, [topic], 1)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": "test-source"})
    producer.init_transactions(30)
    for transaction in range(3):
        producer.begin_transaction()
        for i in range(4):
            producer.produce(topic, key=b"k", value=f"{transaction}-{i}".encode())
        producer.commit_transaction(30)

    lost = LostOffsets()
    read = read_partition(broker, topic, resume_at=0, policy="fail", lost=lost)
    offsets = [message.offset for message in read]
    assert len(offsets) == 12 and offsets[-1] > 12  # each commit marker took an offset between the batches
    assert lost.reports == []
