"""The one sink of the dataflow: Kafka, every message's delivery checked.

Bytewax's KafkaSink produces and flushes without looking at delivery reports, so a message the
brokers never took (a timeout while they were away, a refusal) was lost without a word while the
counters said it was out. Here `write_batch` returns only once the brokers have acknowledged every
message of the batch. A message that failed raises DeliveryFailed: the flow stops before its next
snapshot, so a restart from the recovery directory writes that epoch's messages again (output is
at-least-once). The wait is cut into short slices, and a broker outage longer than the allowed one
raises BrokerLost (stream.kafka.health). After a SIGTERM the sink keeps waiting while the brokers
still acknowledge (a healthy stop delivers its last batch); once none has for STALLED_S it raises
Stopping, so a frozen broker cannot hold the stop.
"""
from __future__ import annotations

import threading
import time

from bytewax.connectors.kafka import KafkaSinkMessage
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaError, Producer

from stream.kafka.health import BrokerHealth
from stream.stop import Stop, Stopping

FLUSH_SLICE_S = 0.5
STALLED_S = 3.0  # after a stop was asked for: how long without a delivery report means the brokers are stuck


class DeliveryFailed(RuntimeError):
    """Messages the brokers did not take; the flow stops so that a restart writes them again."""


class CheckedKafkaSink(DynamicSink[KafkaSinkMessage]):
    """Writes KafkaSinkMessages (each names its topic) and waits for their delivery reports."""

    def __init__(self, health: BrokerHealth, stop: Stop | None = None):
        self.health = health
        self.stop = stop

    def build(self, _step_id: str, _worker_index: int, _worker_count: int) -> "CheckedPartition":
        return CheckedPartition(Producer(self.health.client_config()), self.health, self.stop)


class CheckedPartition(StatelessSinkPartition[KafkaSinkMessage]):
    def __init__(self, producer: Producer, health: BrokerHealth, stop: Stop | None = None):
        self.producer = producer
        self.health = health
        self.stop = stop
        self._failures: list[KafkaError] = []
        self._lock = threading.Lock()
        self._last_report = time.monotonic()

    def write_batch(self, items: list[KafkaSinkMessage]) -> None:
        self._last_report = time.monotonic()
        for message in items:
            while True:
                try:
                    self.producer.produce(message.topic, message.value, message.key, headers=message.headers,
                                          on_delivery=self._delivered)
                    break
                except BufferError:  # the producer's queue is full: wait for room, never drop
                    self._wait(FLUSH_SLICE_S)
            self.producer.poll(0)
        while len(self.producer) > 0:
            self._wait(FLUSH_SLICE_S)
        with self._lock:
            failures, self._failures = self._failures, []
        if failures:
            codes = sorted({failure.name() for failure in failures})
            raise DeliveryFailed(f"{len(failures)} message(s) of the last batch were not delivered ({', '.join(codes)}: "
                                 f"{failures[0].str()}); stopping before the next snapshot, so that a restart "
                                 "from the recovery directory writes them again")

    def close(self) -> None:
        self.producer.flush(FLUSH_SLICE_S * 10)

    def _wait(self, seconds: float) -> None:
        self.producer.flush(seconds)
        self.health.check()
        stalled = time.monotonic() - self._last_report > STALLED_S
        if self.stop is not None and self.stop.is_set() and stalled:  # the brokers are stuck or gone: wait no more
            raise Stopping(f"stopped with {len(self.producer)} message(s) not yet delivered; a restart from the "
                           "recovery directory writes them again")

    def _delivered(self, error: KafkaError | None, _message) -> None:
        self._last_report = time.monotonic()
        if error is None:
            self.health.reached()
        else:
            with self._lock:
                self._failures.append(error)
