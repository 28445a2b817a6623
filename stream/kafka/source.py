"""The dataflow's Kafka input: Bytewax's KafkaSource, its consumers reporting to the stream's
BrokerHealth and every partition checking it as it polls, so that a long broker outage stops the
flow (BrokerLost) instead of leaving it polling nothing forever.

`WrappedPartition` is the base of every source partition that changes how another one reads (this
one, a replay cut to a range, a demo source that can be told to stop)."""
from __future__ import annotations

from bytewax.connectors.kafka import KafkaSource
from bytewax.inputs import StatefulSourcePartition

from stream.kafka.health import BrokerHealth
from stream.stop import Stop


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
    """Bytewax's KafkaSource whose partitions also end (as at the end of a replay) once `stop` is set."""

    def __init__(self, health: BrokerHealth, topics: list[str], tail: bool, starting_offset: int,
                 stop: Stop | None = None):  # fmt: skip
        config = health.client_config()
        brokers = config.pop("bootstrap.servers").split(",")
        super().__init__(brokers, topics, tail=tail, starting_offset=starting_offset, add_config=config)
        self.health = health
        self.stop = stop

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> "WatchedPartition":
        return WatchedPartition(super().build_part(step_id, for_part, resume_state), self.health, self.stop)


class WatchedPartition(WrappedPartition):
    def __init__(self, inner: StatefulSourcePartition, health: BrokerHealth, stop: Stop | None):
        super().__init__(inner)
        self.health = health
        self.stop = stop

    def next_batch(self) -> list:
        if self.stop is not None and self.stop.is_set():
            raise StopIteration()
        batch = self.inner.next_batch()
        if batch:
            self.health.reached()
        else:
            self.health.check()
        return batch
