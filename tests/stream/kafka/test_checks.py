"""What `intentstream run` checks of the brokers and topics, against a real broker."""
from __future__ import annotations

import pytest

from stream.kafka.broker import fetch_metadata
from stream.kafka.checks import KafkaCheckError, check_brokers, create_output_topics


def test_check_brokers_reports_missing_outputs_and_create_output_topics_creates_them(kafka_bootstrap, make_topics):
    topics = make_topics(partitions=3)
    new_output, new_latest = topics.input + "-out2", topics.input + "-latest2"

    check = check_brokers(kafka_bootstrap, {}, topics.input, [new_output, topics.dlq, new_latest], timeout=10)
    assert check.input_partitions == 3
    assert check.missing_topics == (new_output, new_latest)

    create_output_topics(kafka_bootstrap, {}, check, compacted=[new_latest])
    listed = fetch_metadata(kafka_bootstrap).topics
    assert len(listed[new_output].partitions) == 3 and len(listed[new_latest].partitions) == 3
    assert _topic_config(kafka_bootstrap, new_latest)["cleanup.policy"] == "compact"
    assert _topic_config(kafka_bootstrap, new_output).get("cleanup.policy", "delete") == "delete"


def test_check_brokers_rejects_unknown_client_settings(kafka_bootstrap, topics):
    with pytest.raises(KafkaCheckError, match="Kafka client settings rejected: .*no.such.setting"):
        check_brokers(kafka_bootstrap, {"no.such.setting": "1"}, topics.input, [], timeout=5)


def _topic_config(bootstrap: str, topic: str) -> dict[str, str]:
    from confluent_kafka.admin import AdminClient, ConfigResource

    admin = AdminClient({"bootstrap.servers": bootstrap})
    (future,) = admin.describe_configs([ConfigResource("topic", topic)]).values()
    return {name: entry.value for name, entry in future.result(10).items()}


def test_check_brokers_finds_existing_topics(kafka_bootstrap, topics, make_topics):
    check = check_brokers(kafka_bootstrap, {}, topics.input, [topics.output, topics.dlq, topics.latest], timeout=5)
    assert check.missing_topics == ()
    assert check.input_partitions == 1
    assert check_brokers(kafka_bootstrap, {}, make_topics(partitions=2).input, [], timeout=5).input_partitions == 2
