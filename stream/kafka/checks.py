"""The checks `intentstream run` makes of the brokers and topics before it consumes anything, and the
output topics it creates once everything else is good."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from confluent_kafka import KafkaException
from confluent_kafka.admin import ClusterMetadata

from stream.kafka.broker import BrokerUnavailable, create_topics, fetch_metadata
from stream.kafka.config import ENV_PREFIX


class KafkaCheckError(RuntimeError):
    """The brokers or the topics are not usable; the message says what to fix."""


@dataclass(frozen=True)
class BrokerCheck:
    """What `check_brokers` found: all topics needed exist, except `missing_topics` (never the input)."""

    input_partitions: int
    missing_topics: tuple[str, ...]


def check_brokers(
    brokers: str,
    config: Mapping[str, str],
    input_topic: str,
    output_topics: Sequence[str],
    timeout: float = 10.0,
) -> BrokerCheck:
    """Connect to the brokers and look for the topics. Reads metadata only: changes nothing.

    Raises KafkaCheckError when the brokers do not answer, a client setting is rejected, or the input
    topic does not exist. Missing output topics are reported in the result; `create_output_topics`
    creates them."""
    topics = _metadata(brokers, config, timeout).topics
    _check_exists(topics, brokers, input_topic, "--input-topic")
    return BrokerCheck(
        input_partitions=len(topics[input_topic].partitions),
        missing_topics=tuple(name for name in output_topics if name not in topics),
    )


def topic_partitions(brokers: str, config: Mapping[str, str], topic: str, flag: str, timeout: float = 10.0) -> list[int]:
    """The partitions of `topic`; raises KafkaCheckError when the brokers do not answer or it does not
    exist (the message names `flag`, the option that chose it)."""
    topics = _metadata(brokers, config, timeout).topics
    _check_exists(topics, brokers, topic, flag)
    return sorted(topics[topic].partitions)


def _metadata(brokers: str, config: Mapping[str, str], timeout: float) -> ClusterMetadata:
    try:
        return fetch_metadata(brokers, timeout=timeout, config=config)
    except BrokerUnavailable as error:
        raise KafkaCheckError(
            f"cannot reach Kafka at {brokers} within {timeout:g}s: {error.detail}; check --brokers / "
            f"INTENTSTREAM_BROKERS (and the security settings in --kafka-config / {ENV_PREFIX}*)"
        ) from None
    except KafkaException as error:  # a client setting librdkafka does not accept
        raise KafkaCheckError(
            f"Kafka client settings rejected: {error.args[0].str()}; check --kafka-config / {ENV_PREFIX}*"
        ) from None


def _check_exists(topics: Mapping, brokers: str, topic: str, flag: str) -> None:
    environment = "INTENTSTREAM_" + flag.lstrip("-").replace("-", "_").upper()
    if topic not in topics:
        raise KafkaCheckError(
            f"topic {topic!r} ({flag}) does not exist at {brokers}; create it (e.g. `kafka-topics.sh "
            f"--bootstrap-server {brokers} --create --topic {topic} --partitions 12`) or pass the "
            f"right one with {flag} / {environment}"
        )
    if topics[topic].error is not None:
        raise KafkaCheckError(f"topic {topic!r} ({flag}) at {brokers}: {topics[topic].error.str()}")


def create_output_topics(
    brokers: str,
    config: Mapping[str, str],
    check: BrokerCheck,
    compacted: Sequence[str] = (),
    timeout: float = 30.0,
) -> None:
    """Create the output topics `check_brokers` found missing, with as many partitions as the input
    topic (updates are keyed by user, like the events); those named in `compacted` get
    cleanup.policy=compact. A topic created meanwhile by someone else is left as it is."""
    for name in check.missing_topics:
        topic_config = {"cleanup.policy": "compact"} if name in compacted else {}
        try:
            create_topics(
                brokers, [name], partitions=check.input_partitions, config=topic_config,
                client=config, exist_ok=True, timeout=timeout,
            )
        except RuntimeError as error:
            raise KafkaCheckError(f"{error}; create it yourself or grant this client CreateTopics") from None
