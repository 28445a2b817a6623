"""The test broker fixture and the stream.kafka.broker helpers, through a real Kafka-protocol broker."""
from __future__ import annotations

import time
from collections import defaultdict

import pytest

from stream.kafka.broker import (
    BrokerUnavailable,
    EmbeddedBroker,
    TopicReader,
    create_topics,
    fetch_metadata,
    free_loopback_port,
    produce_messages,
    read_topic,
    wait_for_broker,
)


def test_round_trip_through_the_broker(kafka_bootstrap, make_topics):
    topics = make_topics(partitions=3)
    sent = [(f"user-{i % 7}".encode(), f"event-{i}".encode()) for i in range(60)]

    assert produce_messages(kafka_bootstrap, topics.input, sent) == 60
    records = read_topic(kafka_bootstrap, topics.input, count=60, timeout=20)

    assert sorted((r.key, r.value) for r in records) == sorted(sent)
    partitions_of_key = defaultdict(set)
    for record in records:
        partitions_of_key[record.key].add(record.partition)
        assert record.topic == topics.input
    assert all(len(partitions) == 1 for partitions in partitions_of_key.values())
    # Within a key (and so within a partition) the order of production is kept.
    for key in partitions_of_key:
        values = [r.value for r in sorted(records, key=lambda r: r.offset) if r.key == key]
        assert values == [v for k, v in sent if k == key]


def test_read_topic_stops_at_the_end_without_a_count(kafka_bootstrap, make_topics):
    topics = make_topics(partitions=2)
    produce_messages(kafka_bootstrap, topics.input, [(b"k", b"only")])

    started = time.monotonic()
    assert [r.value for r in read_topic(kafka_bootstrap, topics.input, timeout=20)] == [b"only"]
    assert read_topic(kafka_bootstrap, topics.output, timeout=20) == []
    assert time.monotonic() - started < 10


def test_read_topic_returns_what_it_has_when_the_timeout_passes(kafka_bootstrap, topics):
    produce_messages(kafka_bootstrap, topics.input, [(None, b"a"), (None, b"b")])

    started = time.monotonic()
    records = read_topic(kafka_bootstrap, topics.input, count=5, timeout=1.5)

    assert [r.value for r in records] == [b"a", b"b"]
    assert 1.4 < time.monotonic() - started < 5


def test_topic_reader_follows_new_records_from_the_end(kafka_bootstrap, topics):
    produce_messages(kafka_bootstrap, topics.input, [(None, b"old")])
    with TopicReader(kafka_bootstrap, topics.input, from_beginning=False) as reader:
        deadline = time.monotonic() + 10
        while not reader.at_end and time.monotonic() < deadline:
            assert reader.poll(0.1) == []
        produce_messages(kafka_bootstrap, topics.input, [(None, b"new")])
        seen = []
        while not seen and time.monotonic() < deadline:
            seen = reader.poll(0.1)
    assert [r.value for r in seen] == [b"new"]


def test_topics_fixture_creates_fresh_topics(kafka_bootstrap, topics, make_topics):
    other = make_topics(partitions=4)
    listed = fetch_metadata(kafka_bootstrap).topics

    assert set(topics.names).isdisjoint(other.names)
    for name in topics.names:
        assert len(listed[name].partitions) == 1
    for name in other.names:
        assert len(listed[name].partitions) == 4
    assert read_topic(kafka_bootstrap, topics.input, timeout=10) == []


def test_create_topics_refuses_an_existing_topic_unless_told(kafka_bootstrap, topics):
    with pytest.raises(RuntimeError, match="already exists"):
        create_topics(kafka_bootstrap, [topics.input])
    create_topics(kafka_bootstrap, [topics.input], partitions=5, exist_ok=True)

    assert len(fetch_metadata(kafka_bootstrap).topics[topics.input].partitions) == 1


def test_wait_for_broker_names_the_address_it_could_not_reach():
    address = f"127.0.0.1:{free_loopback_port()}"  # nothing listens there any more
    started = time.monotonic()

    with pytest.raises(BrokerUnavailable) as raised:
        wait_for_broker(address, timeout=1.5)

    assert address in str(raised.value)
    assert "within 1.5s" in str(raised.value)
    assert "Connection refused" in str(raised.value)
    assert time.monotonic() - started < 5


def test_embedded_broker_starts_answers_and_stops(tmp_path):
    log_path = tmp_path / "broker.log"
    with EmbeddedBroker(log_path=log_path) as broker:
        address = broker.bootstrap
        assert address.startswith("127.0.0.1:")
        create_topics(address, ["t"])
        produce_messages(address, "t", [(b"k", b"v")])
        assert [r.value for r in read_topic(address, "t", count=1)] == [b"v"]

    assert "listening on" in log_path.read_text()
    with pytest.raises(BrokerUnavailable):
        wait_for_broker(address, timeout=0.5)
