"""Whether this process can reach its Kafka brokers, and what it does when it cannot.

librdkafka retries forever and says nothing of its own when every broker is gone, so a process would
stay up and look healthy while it serves nobody. `BrokerHealth` listens to the clients' error
callbacks (`error_cb` in the source's consumers and the sink's producer, see `client_config`): when
all brokers are down it logs one line, sets the `intentstream_kafka_up` gauge to 0 and starts the
clock; when any client reaches a broker again it logs that and the gauge goes back to 1. An outage
longer than `max_outage_s` raises BrokerLost from `check()`, which the source and the sink call as
they go, so the process exits with EXIT_KAFKA_UNAVAILABLE and a supervisor restarts it (from its
recovery directory: nothing is lost).

While the brokers are down, `check()` asks a broker for metadata now and then (at most every
PROBE_EVERY_S, for at most PROBE_TIMEOUT_S): an idle stream would otherwise never learn that they
came back.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Mapping

from confluent_kafka import KafkaError, KafkaException, Producer

log = logging.getLogger(__name__)

PROBE_EVERY_S = 2.0
PROBE_TIMEOUT_S = 0.5


class BrokerLost(RuntimeError):
    """Every broker was unreachable for longer than the allowed outage."""


class BrokerHealth:
    def __init__(
        self, brokers: str, kafka_config: Mapping[str, str], max_outage_s: float,
        up_gauge=None, clock: Callable[[], float] = time.monotonic,
    ):  # fmt: skip
        self.brokers = brokers
        self.kafka_config = dict(kafka_config)
        self.max_outage_s = max_outage_s
        self.up_gauge = up_gauge
        self.clock = clock
        self.down_since: float | None = None
        self._last_probe = 0.0
        self._prober: Producer | None = None
        self._lock = threading.Lock()
        if up_gauge is not None:
            up_gauge.set(1)

    def client_config(self) -> dict:
        """Kafka client settings that report to this health: the stream's own, plus `error_cb`."""
        return {"bootstrap.servers": self.brokers, **self.kafka_config, "error_cb": self.on_error}

    def on_error(self, error: KafkaError) -> None:
        """librdkafka's error callback: all brokers down starts an outage; other errors are logged."""
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            with self._lock:
                if self.down_since is not None:
                    return
                self.down_since = self.clock()
            log.warning("lost every Kafka broker (%s): %s; exiting if none answers within %.0f s",
                        self.brokers, error.str(), self.max_outage_s)
            if self.up_gauge is not None:
                self.up_gauge.set(0)
        elif error.fatal():
            log.error("Kafka client error: %s", error.str())

    def reached(self) -> None:
        """A client heard from a broker (a message read or delivered, or metadata)."""
        if self.down_since is None:  # the per-message case: no lock
            return
        with self._lock:
            since, self.down_since = self.down_since, None
        if since is not None:
            log.info("Kafka brokers answer again, after %.0f s", self.clock() - since)
            if self.up_gauge is not None:
                self.up_gauge.set(1)

    def check(self) -> None:
        """Raise BrokerLost once the brokers have been gone for longer than the allowed outage."""
        if self.down_since is None:
            return
        now = self.clock()
        if now - self._last_probe >= PROBE_EVERY_S:
            self._last_probe = now
            if self._probe():
                self.reached()
                return
        if now - self.down_since > self.max_outage_s:
            raise BrokerLost(f"no Kafka broker of {self.brokers} answered for {now - self.down_since:.0f} s "
                             f"(allowed outage {self.max_outage_s:g} s)")

    def _probe(self) -> bool:
        if self._prober is None:
            self._prober = Producer({"bootstrap.servers": self.brokers, **self.kafka_config})
        try:
            self._prober.list_topics(timeout=PROBE_TIMEOUT_S)
            return True
        except KafkaException:
            return False
