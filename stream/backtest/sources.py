"""What a backtest replays, as the dataflow's input: a log file, or a bounded range of a Kafka topic;
and the sink that publishes nothing (the judge has seen every update in the score step)."""
from __future__ import annotations

import time
from itertools import islice
from pathlib import Path
from typing import Iterator, Mapping

from bytewax.connectors.kafka import KafkaSource, KafkaSourceMessage
from bytewax.inputs import FixedPartitionedSource, Source, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from model.playlogs.files import read_log
from schemas import ContractError, PlayEvent, decode_play_event, encode_play_event
from stream.backtest.timeline import Timeline, build_timeline
from stream.kafka.source import WrappedPartition
from stream.errors import CommandError

LOG_WIRE_FORMAT = "msgpack"  # how a log's events are encoded for the replay (the flow decodes them)
SOURCE_BATCH = 1000  # messages per source batch, as KafkaSource reads them
TOPIC_IDLE_TIMEOUT_S = 30.0  # reading a topic fails when nothing arrives for this long




class LogSource(FixedPartitionedSource):
    """A log file as a one-partition source of the messages the Kafka source yields: topic = the
    file's path, partition 0, offset = the record's number (from 0), key = user_id, value = the event
    encoded in LOG_WIRE_FORMAT (the log reader has validated it; re-encoding keeps every field)."""

    def __init__(self, path: Path, batch_size: int = SOURCE_BATCH):
        self.path = path
        self.batch_size = batch_size

    def list_parts(self) -> list[str]:
        return [str(self.path)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> "_LogPartition":
        return _LogPartition(self.path, resume_state or 0, self.batch_size)


class _LogPartition(StatefulSourcePartition):
    def __init__(self, path: Path, start: int, batch_size: int):
        self.topic = str(path)
        self.events = read_log(path)
        self.records = islice(enumerate(self.events), start, None)
        self.next_offset = start
        self.batch_size = batch_size

    def next_batch(self) -> list[KafkaSourceMessage]:
        batch = [
            KafkaSourceMessage(event.user_id.encode(), encode_play_event(event, LOG_WIRE_FORMAT), self.topic,
                               partition=0, offset=offset)
            for offset, event in islice(self.records, self.batch_size)
        ]  # fmt: skip
        if not batch:
            raise StopIteration
        self.next_offset = batch[-1].offset + 1
        return batch

    def snapshot(self) -> int:
        return self.next_offset

    def close(self) -> None:
        self.events.close()


class LogReplay:
    """Replay a log file (JSONL or msgpack, optionally gzip; see model.playlogs.files)."""

    wire_format = LOG_WIRE_FORMAT

    def __init__(self, path: Path):
        self.path = Path(path)
        read_log(self.path).close()  # a missing file or an unknown suffix fails now, before models load

    def describe(self) -> dict:
        return {"log": str(self.path)}

    def timeline(self) -> Timeline:
        return build_timeline(read_log(self.path))  # a corrupt or empty log raises LogError

    def source(self) -> Source:
        return LogSource(self.path)


class TopicReplay:
    """Replay the events of a Kafka topic with event time in [start_ts, end_ts), up to the end of
    each partition that the timeline pass saw."""

    def __init__(self, brokers: str, topic: str, wire_format: str, kafka_config: Mapping[str, str],
                 start_ts: int | None, end_ts: int | None):
        self.brokers = brokers
        self.topic = topic
        self.wire_format = wire_format
        self.kafka_config = dict(kafka_config)
        self.start_ts = start_ts
        self.end_ts = end_ts
        self.ends: dict[int, int] | None = None  # partition -> end offset, set by timeline()

    def describe(self) -> dict:
        return {"topic": self.topic, "brokers": self.brokers, "format": self.wire_format,
                "from": self.start_ts, "to": self.end_ts}

    def in_range(self, ts: int) -> bool:
        return (self.start_ts is None or ts >= self.start_ts) and (self.end_ts is None or ts < self.end_ts)

    def timeline(self) -> Timeline:
        unreadable = 0

        def events() -> Iterator[PlayEvent]:
            nonlocal unreadable
            for value in self._read():
                try:
                    event = decode_play_event(value, self.wire_format)
                except ContractError:
                    unreadable += 1
                    continue
                if self.in_range(event.ts):
                    yield event

        timeline = build_timeline(events())
        timeline.unreadable = unreadable  # counted while build_timeline read the events
        timeline.messages += unreadable
        if not timeline.events:
            found = "holds no messages" if not any(self.ends.values()) and not unreadable else (
                f"holds no valid event with event time in {self._range_text()}")
            raise CommandError(f"topic {self.topic!r} at {self.brokers} {found}")
        return timeline

    def _range_text(self) -> str:
        start = "-inf" if self.start_ts is None else self.start_ts
        end = "+inf" if self.end_ts is None else self.end_ts
        return f"[{start}, {end}) ms"

    def _consumer_config(self) -> dict:
        return {
            "bootstrap.servers": self.brokers,
            "group.id": "intentstream-backtest",  # required by librdkafka; unused with assign()
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            # Tansu holds each fetch for fetch.wait.max.ms even with data waiting (notes/kafka_facts.md).
            "fetch.wait.max.ms": 10,
            **self.kafka_config,
        }

    def _read(self) -> Iterator[bytes]:
        """The value of every message up to the end of each partition as it is now (sets self.ends).

        The end is where the consumer reports reaching it (partition EOF, from the fetch answers),
        not the offsets a ListOffsets request reports: the embedded Tansu broker answers those with
        the start of the last record batch."""
        from confluent_kafka import Consumer, KafkaError, TopicPartition

        from stream.kafka.broker import BrokerUnavailable, fetch_metadata

        try:
            metadata = fetch_metadata(self.brokers, timeout=10.0, config=self.kafka_config)
        except BrokerUnavailable as error:
            raise CommandError(str(error)) from None
        if self.topic not in metadata.topics:
            raise CommandError(f"topic {self.topic!r} does not exist at {self.brokers}")
        partitions = sorted(metadata.topics[self.topic].partitions)
        consumer = Consumer(self._consumer_config())
        try:
            # Offset 0 resets to the earliest one kept (auto.offset.reset): faster than OFFSET_BEGINNING.
            consumer.assign([TopicPartition(self.topic, partition, 0) for partition in partitions])
            self.ends = {}
            last_arrival = time.monotonic()
            while len(self.ends) < len(partitions):
                messages = consumer.consume(SOURCE_BATCH, 0.5)
                if messages:
                    last_arrival = time.monotonic()
                elif time.monotonic() - last_arrival > TOPIC_IDLE_TIMEOUT_S:
                    raise CommandError(f"reading topic {self.topic!r}: nothing arrived for {TOPIC_IDLE_TIMEOUT_S:g}s")
                for message in messages:
                    error = message.error()
                    if error is not None and error.code() == KafkaError._PARTITION_EOF:
                        self.ends.setdefault(message.partition(), message.offset())
                    elif error is not None:
                        raise CommandError(f"reading topic {self.topic!r}: {error.str()}")
                    elif message.offset() < self.ends.get(message.partition(), message.offset() + 1):
                        yield message.value()
        finally:
            consumer.close()

    def _keep(self, message: KafkaSourceMessage) -> bool:
        try:
            return self.in_range(decode_play_event(message.value, self.wire_format).ts)
        except ContractError:
            return True  # no event time: the dataflow dead-letters it

    def source(self) -> Source:
        if self.ends is None:
            raise RuntimeError("read the timeline first: it finds where each partition ends")
        kafka = KafkaSource(
            self.brokers.split(","),
            [self.topic],
            tail=False,
            starting_offset=0,  # with auto.offset.reset=earliest: faster than OFFSET_BEGINNING (kafka_facts.md)
            add_config={"auto.offset.reset": "earliest", "fetch.wait.max.ms": "10", "statistics.interval.ms": "0",
                        **self.kafka_config},
        )
        return TopicRangeSource(kafka, self.ends, self._keep)


class TopicRangeSource(FixedPartitionedSource):
    """The live path's KafkaSource, cut to a range: each partition stops at its end offset, and
    only the messages `keep` accepts go on."""

    def __init__(self, kafka: KafkaSource, ends: dict[int, int], keep):
        self.kafka = kafka
        self.ends = ends
        self.keep = keep

    def list_parts(self) -> list[str]:
        return self.kafka.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> "_UpToEnd":
        partition = int(for_part.split("-", 1)[0])  # KafkaSource names its partitions "{partition}-{topic}"
        return _UpToEnd(self.kafka.build_part(step_id, for_part, resume_state), self.ends[partition], self.keep)


class _UpToEnd(WrappedPartition):
    def __init__(self, inner: StatefulSourcePartition, end: int, keep):
        super().__init__(inner)
        self.end = end
        self.keep = keep
        self.done = False

    def next_batch(self) -> list[KafkaSourceMessage]:
        if self.done:
            raise StopIteration
        batch = self.inner.next_batch()  # raises StopIteration at the end of the partition
        if any(message.offset >= self.end - 1 for message in batch):
            self.done = True
        return [message for message in batch if message.offset < self.end and self.keep(message)]


class DiscardSink(DynamicSink):
    """A backtest publishes nothing: the judge has seen every update in the score step."""

    def build(self, step_id: str, worker_index: int, worker_count: int) -> "_Discard":
        return _Discard()


class _Discard(StatelessSinkPartition):
    def write_batch(self, items) -> None:
        pass
