"""The dataflow's Kafka input: Bytewax's KafkaSource, its consumers reporting to the stream's
BrokerHealth and every partition checking it as it polls, so that a long broker outage stops the
flow (BrokerLost) instead of leaving it polling nothing forever.

Offsets the broker no longer holds. A partition resumes from the offset in its recovery snapshot,
and reads on from where it is; either can fall below the oldest offset the broker retains (the
broker's retention ran during an outage, a recovery directory was restored from an old backup, the
flow fell further behind than the retention). librdkafka then applies `auto.offset.reset`, whose
default (`latest`) jumps to the end of the partition: every retained, unread message would be
skipped without a word. The source sets `earliest` instead, and every partition checks that each
message's offset follows the one before it. A jump past offsets that the broker no longer retains
(the low watermark, asked for when a jump is seen) is a gap: with `on_offset_gap="resume"` it is
logged and counted (`offsets_lost`) and reading goes on from the earliest retained message; with
"fail" the partition raises OffsetGap before handing on any message after the gap, and its offset
stays where it was. Other jumps are not losses: transaction markers and aborted or compacted records
take offsets that no consumer is ever given.

`WrappedPartition` is the base of every source partition that changes how another one reads (this
one, a replay cut to a range, a demo source that can be told to stop)."""
from __future__ import annotations

import logging
from typing import Callable

from bytewax.connectors.kafka import KafkaSource, KafkaSourceMessage
from bytewax.inputs import StatefulSourcePartition
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from stream.kafka.broker import watermarks
from stream.kafka.health import BrokerHealth
from stream.stop import Stop

log = logging.getLogger(__name__)

OFFSET_GAP_POLICIES = ("resume", "fail")
WATERMARK_TIMEOUT_S = 10.0

# (topic, partition, offsets lost): told of every gap that reading resumed past
OffsetsLost = Callable[[str, int, int], None]


class OffsetGap(RuntimeError):
    """Offsets a partition had yet to read are no longer retained, and the run was told to stop."""


class WrappedPartition(StatefulSourcePartition):
    """A source partition that hands everything to `inner`; subclasses change `next_batch`."""

    def __init__(self, inner: StatefulSourcePartition):
        self.inner = inner

    def next_batch(self) -> list:
        return self.inner.next_batch()

    def next_awake(self):
        return self.inner.next_awake()

    def snapshot(self):
        return self.inner.snapshot()

    def close(self) -> None:
        self.inner.close()


class WatchedKafkaSource(KafkaSource):
    """Bytewax's KafkaSource whose partitions also end (as at the end of a replay) once `stop` is set,
    and never skip offsets silently (see the module docstring)."""

    def __init__(self, health: BrokerHealth, topics: list[str], tail: bool, starting_offset: int,
                 on_offset_gap: str = "resume", offsets_lost: OffsetsLost | None = None,
                 stop: Stop | None = None):  # fmt: skip
        if on_offset_gap not in OFFSET_GAP_POLICIES:
            raise ValueError(f"on_offset_gap must be one of {', '.join(OFFSET_GAP_POLICIES)}, not {on_offset_gap!r}")
        config = health.client_config()
        brokers = config.pop("bootstrap.servers").split(",")
        config["auto.offset.reset"] = "earliest"
        super().__init__(brokers, topics, tail=tail, starting_offset=starting_offset, add_config=config)
        self.topics = topics
        self.health = health
        self.on_offset_gap = on_offset_gap
        self.offsets_lost = offsets_lost
        self.stop = stop

    def list_parts(self) -> list[str]:
        """As KafkaSource lists them ("PARTITION-TOPIC"), but with an admin client that is given no
        consumer setting: librdkafka would warn at every start that auto.offset.reset is not its."""
        admin = AdminClient(self.health.client_config())
        parts = []
        for topic in self.topics:
            metadata = admin.list_topics(topic).topics[topic]
            if metadata.error is not None:
                raise RuntimeError(f"error listing partitions for Kafka topic {topic!r}: {metadata.error.str()}")
            parts.extend(f"{index}-{topic}" for index in metadata.partitions)
        return parts

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> "WatchedPartition":
        index, topic = for_part.split("-", 1)  # as KafkaSource names its partitions
        gaps = GapCheck(self.health, topic, int(index), self.on_offset_gap, self.offsets_lost)
        return WatchedPartition(super().build_part(step_id, for_part, resume_state), self.health, gaps, self.stop)


class GapCheck:
    """Follows one partition's offsets and decides what a jump in them means (module docstring)."""

    def __init__(self, health: BrokerHealth, topic: str, partition: int, policy: str,
                 offsets_lost: OffsetsLost | None):  # fmt: skip
        self.health = health
        self.topic = topic
        self.partition = partition
        self.policy = policy
        self.offsets_lost = offsets_lost

    def check(self, expected: int, batch: list[KafkaSourceMessage]) -> None:
        """`expected`: the offset the partition was to read next (negative: none known yet, as on a
        fresh start from the beginning); `batch` what it read, in offset order."""
        first, last = batch[0].offset, batch[-1].offset
        if (expected < 0 or first == expected) and last - first + 1 == len(batch):
            return  # contiguous: almost every batch
        for message in batch:
            if expected >= 0 and message.offset != expected:
                self._jumped(expected, message.offset)
            expected = message.offset + 1

    def _jumped(self, expected: int, offset: int) -> None:
        where = f"partition {self.partition} of topic {self.topic!r}"
        if offset < expected:
            log.warning("%s went back from offset %d to %d (was the topic deleted and created again?): reading "
                        "on from %d, so those messages are read again", where, expected, offset, offset)
            return
        retained_from = self._low_watermark(offset)
        if retained_from <= expected:
            return  # offsets no consumer is given (transaction markers, aborted or compacted records)
        lost = min(offset, retained_from) - expected
        span = f"offsets {expected}..{expected + lost - 1} ({lost} messages)"
        if self.policy == "fail":
            raise OffsetGap(
                f"{where}: {span} were deleted by the broker's retention before this run read them, and "
                f"--on-offset-gap is fail: nothing after them was read. To accept the loss and read on from "
                f"offset {offset}, restart with --on-offset-gap resume; to keep it from happening again, retain "
                f"the topic longer than the scorer can fall behind")  # fmt: skip
        log.warning("%s: %s were deleted by the broker's retention before this run read them: they are lost "
                    "(intentstream_offsets_lost_total); reading on from offset %d", where, span, offset)
        if self.offsets_lost is not None:
            self.offsets_lost(self.topic, self.partition, lost)

    def _low_watermark(self, offset: int) -> int:
        """The oldest offset the broker holds. Should the broker not answer, `offset` (where
        reading resumed): the whole jump then counts as lost rather than none of it."""
        try:
            low, _ = watermarks(self.health.brokers, self.topic, self.partition, client=self.health.kafka_config,
                                timeout=WATERMARK_TIMEOUT_S)  # fmt: skip
            return low
        except KafkaException as error:
            log.warning("partition %d of topic %r: could not ask for its oldest retained offset (%s)",
                        self.partition, self.topic, error)
            return offset


class WatchedPartition(WrappedPartition):
    def __init__(self, inner: StatefulSourcePartition, health: BrokerHealth, gaps: GapCheck, stop: Stop | None):
        super().__init__(inner)
        self.health = health
        self.gaps = gaps
        self.stop = stop

    def next_batch(self) -> list:
        if self.stop is not None and self.stop.is_set():
            raise StopIteration()
        expected = self.inner.snapshot()  # the offset to read next, as the recovery snapshot keeps it
        batch = self.inner.next_batch()
        if batch:
            self.health.reached()
            self.gaps.check(expected, batch)
        else:
            self.health.check()
        return batch
