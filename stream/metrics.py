"""Prometheus metrics of the streaming scorer, and the HTTP endpoint `intentstream run --metrics-port`
serves them on.

The metrics live in prometheus_client's default registry, next to what Bytewax's Kafka source puts
there itself (`bytewax_kafka_consumer_lag{step_id, topic, partition}`: messages between the offset
read and the partition's end, refreshed every second), so one scrape gets both. Each process counts
what it did itself: sum over processes (pods) in queries.

    intentstream_events_in_total                 messages read from the input topic
    intentstream_updates_out_total               intent updates written to the updates topic
    intentstream_duplicates_total                events dropped as copies of one already scored
    intentstream_dead_letters_total{code}        messages sent to the dead-letter topic, by error code
    intentstream_offsets_lost_total{topic, partition}  input offsets the broker deleted before they were read
    intentstream_users_held                      users whose history this process holds (at most --max-users)
    intentstream_users_evicted_total             users forgotten, least recently active first, to stay within it
    intentstream_score_batch_size                users scored together in one model call (histogram)
    intentstream_score_batch_seconds             wall time of one model call (histogram)
    intentstream_event_to_update_seconds         scored_at - the event's ts (histogram)
    intentstream_model_info{name, version}       1, for the model this process serves

Event-to-update lag is measured from the event's own timestamp, so it includes the time the event
spent before reaching Kafka and any backlog; a replay of old events shows the age of its events.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from schemas import ERROR_CODES, ModelRef

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
BATCH_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LAG_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class StreamMetrics:
    """The stream's metrics, registered in `registry` (tests give each their own registry)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY):
        self.events_in = Counter("intentstream_events_in", "Messages read from the input topic.",
                                 registry=registry)  # fmt: skip
        self.updates_out = Counter("intentstream_updates_out", "Intent updates written to the updates topic.",
                                   registry=registry)  # fmt: skip
        self.duplicates = Counter("intentstream_duplicates", "Events dropped as copies of an event already "
                                  "scored.", registry=registry)  # fmt: skip
        self.dead_letters = Counter("intentstream_dead_letters", "Messages sent to the dead-letter topic, by "
                                    "error code.", ["code"], registry=registry)  # fmt: skip
        for code in ERROR_CODES:  # every code shows from the start (as 0), so rate() has a series
            self.dead_letters.labels(code)
        self.offsets_lost = Counter("intentstream_offsets_lost", "Input offsets the broker's retention deleted "
                                    "before they were read (see --on-offset-gap).", ["topic", "partition"],
                                    registry=registry)  # fmt: skip
        self.users_held = Gauge("intentstream_users_held", "Users whose history this process holds (at most "
                                "--max-users).", registry=registry)  # fmt: skip
        self.users_evicted = Counter("intentstream_users_evicted", "Users forgotten, least recently active first, "
                                     "to stay within --max-users.", registry=registry)  # fmt: skip
        self.batch_size = Histogram("intentstream_score_batch_size", "Users scored together in one model call.",
                                    buckets=BATCH_SIZE_BUCKETS, registry=registry)  # fmt: skip
        self.batch_seconds = Histogram("intentstream_score_batch_seconds", "Wall time of one model call, in "
                                       "seconds.", buckets=BATCH_SECONDS_BUCKETS, registry=registry)  # fmt: skip
        self.update_lag = Histogram("intentstream_event_to_update_seconds", "Time from an event's timestamp to "
                                    "its update's scored_at, in seconds.", buckets=LAG_SECONDS_BUCKETS,
                                    registry=registry)  # fmt: skip
        self.kafka_up = Gauge("intentstream_kafka_up", "1 while this process reaches its Kafka brokers, 0 during "
                              "an outage (it exits after --max-broker-outage).", registry=registry)
        self.model_info = Gauge("intentstream_model_info", "1 for the model this process serves.",
                                ["name", "version"], registry=registry)  # fmt: skip

    def serving(self, model: ModelRef) -> None:
        self.model_info.labels(model.name, model.version).set(1)

    def scored_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def update_written(self, event_ts_ms: int, scored_at_ms: int) -> None:
        self.updates_out.inc()
        # An event stamped ahead of this machine's clock would give a negative lag: count it as none.
        self.update_lag.observe(max(0, scored_at_ms - event_ts_ms) / 1000)


@functools.cache
def default_metrics() -> StreamMetrics:
    """The process's metrics in the default registry, created once (a metric name can be registered
    only once per registry)."""
    return StreamMetrics(REGISTRY)


@contextmanager
def serving_metrics(port: int, registry: CollectorRegistry = REGISTRY) -> Iterator[None]:
    """Serve `registry` at http://0.0.0.0:PORT/metrics from a daemon thread while inside. Raises
    OSError on entering when the port cannot be bound."""
    server, _ = start_http_server(port, addr="0.0.0.0", registry=registry)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
