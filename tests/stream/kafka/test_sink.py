"""The dataflow's sink on a real Apache Kafka broker: it returns only once every message is
delivered, and a message the broker never took stops it (DeliveryFailed) instead of vanishing."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from bytewax.connectors.kafka import KafkaSinkMessage
from confluent_kafka import KafkaError

from stream.kafka.apache_broker import ApacheKafkaBroker
from stream.kafka.broker import create_topics, read_topic
from stream.kafka.health import BrokerHealth, BrokerLost
from stream.kafka.sink import STALLED_S, CheckedKafkaSink, DeliveryFailed
from stream.stop import Stop, Stopping


@pytest.fixture
def broker(tmp_path):
    with ApacheKafkaBroker(tmp_path / "kafka") as broker:
        create_topics(broker.bootstrap, ["out"], 1)
        yield broker


def messages(n: int, start: int = 0) -> list[KafkaSinkMessage]:
    return [KafkaSinkMessage(f"k{i}".encode(), f"v{i}".encode(), topic="out") for i in range(start, start + n)]


def test_a_batch_is_written_once_the_broker_has_it(broker):
    sink = CheckedKafkaSink(BrokerHealth(broker.bootstrap, {}, max_outage_s=60)).build("publish", 0, 1)
    sink.write_batch(messages(500))
    assert [record.value for record in read_topic(broker.bootstrap, "out", count=500)] == [
        f"v{i}".encode() for i in range(500)
    ]


def test_an_undelivered_message_stops_the_flow_instead_of_vanishing(broker):
    health = BrokerHealth(broker.bootstrap, {"message.timeout.ms": "1500"}, max_outage_s=60)
    sink = CheckedKafkaSink(health).build("publish", 0, 1)
    sink.write_batch(messages(10))
    broker.kill()
    started = time.monotonic()
    with pytest.raises(DeliveryFailed, match=r"10 message\(s\) of the last batch were not delivered .*_MSG_TIMED_OUT"):
        sink.write_batch(messages(10, start=10))
    assert time.monotonic() - started < 15


def test_after_a_stop_a_slow_broker_still_gets_the_last_batch(broker):
    stop = Stop()
    sink = CheckedKafkaSink(BrokerHealth(broker.bootstrap, {}, max_outage_s=60), stop).build("publish", 0, 1)
    sink.write_batch(messages(5))  # connected
    stop.request(143)
    with broker.frozen():
        threading.Timer(STALLED_S / 2, os.kill, (broker.pid, signal.SIGCONT)).start()  # thaws mid-wait
        sink.write_batch(messages(20, start=5))  # the stopped sink must not give up on a broker that answers
    assert len(read_topic(broker.bootstrap, "out", count=25)) == 25


def test_after_a_stop_a_stuck_broker_no_longer_holds_the_sink(broker):
    stop = Stop()
    sink = CheckedKafkaSink(BrokerHealth(broker.bootstrap, {}, max_outage_s=60), stop).build("publish", 0, 1)
    sink.write_batch(messages(5))
    with broker.frozen():
        stop.request(143)
        started = time.monotonic()
        with pytest.raises(Stopping, match=r"stopped with 10 message\(s\) not yet delivered"):
            sink.write_batch(messages(10, start=5))
        assert time.monotonic() - started < STALLED_S + 2


def test_broker_health_reports_an_outage_and_gives_up_after_the_allowed_one():
    class Gauge:
        value = None

        def set(self, value):
            self.value = value

    now = [100.0]
    gauge = Gauge()
    health = BrokerHealth("127.0.0.1:1", {"socket.timeout.ms": "100"}, max_outage_s=30, up_gauge=gauge,
                          clock=lambda: now[0])  # fmt: skip
    assert gauge.value == 1
    health.check()  # nothing wrong yet
    health.on_error(KafkaError(KafkaError._ALL_BROKERS_DOWN))
    assert gauge.value == 0 and health.down_since == 100.0
    now[0] = 125.0
    health.check()  # within the allowed outage (and the probe finds no broker at port 1)
    now[0] = 131.0
    with pytest.raises(BrokerLost, match="no Kafka broker of 127.0.0.1:1 answered for 31 s"):
        health.check()
    health.reached()
    assert gauge.value == 1 and health.down_since is None
