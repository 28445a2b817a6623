"""Reads the compacted latest-update topic into the table: every partition from the beginning at
start, then whatever arrives. Nothing is committed: each start rebuilds the table from the topic.

`ready` is set once every partition has been read up to the end it had at start (the end-of-partition
event), which is when `GET /healthz` turns ready. A message that is not an intent update is counted
and logged and skipped (it is not the reader's to dead-letter). Losing the brokers for longer than
the allowed outage ends the follower with BrokerLost (stream.kafka.health), and the service with
exit status 75; so does a fatal client error. A full table under policy "refuse" ends it with
TableFull. Either way `on_failure` is called, for the service to stop serving.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from schemas import ContractError, decode_intent_update
from stream.kafka.health import BrokerHealth
from stream.lookup.metrics import LookupMetrics
from stream.lookup.table import LatestTable

log = logging.getLogger(__name__)

BATCH = 1000  # messages taken from the client at once
POLL_S = 0.2
LAG_EVERY_S = 1.0


class TopicFollower(threading.Thread):
    def __init__(self, health: BrokerHealth, topic: str, partitions: list[int], fmt: str, table: LatestTable,
                 metrics: LookupMetrics, on_failure: Callable[[], None] = lambda: None):  # fmt: skip
        super().__init__(name="topic-follower", daemon=True)
        self.health = health
        self.topic = topic
        self.partitions = partitions
        self.format = fmt
        self.table = table
        self.metrics = metrics
        self.on_failure = on_failure
        self.ready = threading.Event()
        self.failure: BaseException | None = None
        self._stopping = threading.Event()
        self._not_at_end = set(partitions)
        self._consumer: Consumer | None = None

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        try:
            self._follow()
        except BaseException as error:  # noqa: BLE001 - whatever ends the follower ends the service
            self.failure = error
            self.on_failure()

    def _follow(self) -> None:
        self._consumer = Consumer({
            **self.health.client_config(),
            "group.id": "intentstream-serve",  # required by librdkafka; unused with assign()
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        })  # fmt: skip
        self._consumer.assign([TopicPartition(self.topic, partition, 0) for partition in self.partitions])
        started = time.monotonic()
        next_lag = started
        try:
            while not self._stopping.is_set():
                for message in self._consumer.consume(BATCH, POLL_S):
                    self._take(message)
                self.health.check()
                if not self.ready.is_set() and not self._not_at_end:
                    self.ready.set()
                    self.metrics.ready.set(1)
                    log.info("read %s up to its end: %d users in %.1f s; ready", self.topic, len(self.table),
                             time.monotonic() - started)
                if time.monotonic() >= next_lag:
                    next_lag = time.monotonic() + LAG_EVERY_S
                    self.metrics.lag.set(self._lag())
                    self.metrics.users.set(len(self.table))
        finally:
            self._consumer.close()

    def _take(self, message) -> None:
        error = message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                self._not_at_end.discard(message.partition())
            elif error.fatal():
                raise KafkaException(error)
            else:
                log.warning("reading %s: %s", self.topic, error.str())
            return
        self.health.reached()
        value = message.value()
        if value is None:  # a tombstone: the user is gone
            if message.key() is not None:
                self.table.forget(message.key().decode("utf-8", "replace"))
            return
        try:
            update = decode_intent_update(value, self.format)
        except ContractError as error:
            self.metrics.invalid.inc()
            log.warning("%s partition %d offset %d is not an intent update in %s (%s); skipped", self.topic,
                        message.partition(), message.offset(), self.format, error)
            return
        evicted = self.table.evicted
        self.table.apply(update, value if self.format == "json" else None)  # JSON as written is served as is
        self.metrics.updates.inc()
        if self.table.evicted != evicted:
            self.metrics.evictions.inc(self.table.evicted - evicted)

    def _lag(self) -> int:
        lag = 0
        for position in self._consumer.position([TopicPartition(self.topic, p) for p in self.partitions]):
            low, high = self._consumer.get_watermark_offsets(position, cached=True)
            read_up_to = position.offset if position.offset >= 0 else low  # nothing read yet: the log's start
            if high >= 0 and read_up_to >= 0:
                lag += max(0, high - read_up_to)
        return lag
