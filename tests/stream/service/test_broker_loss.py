"""`intentstream run` when its Kafka broker goes away, on a real Apache Kafka broker of the test's own
(killed and restarted here, so not the session's): the run reports the outage, exits with status 75
once it lasts longer than --max-broker-outage, and a restart from its recovery directory gives
every event an update; SIGTERM during an outage ends the run within --shutdown-timeout."""
from __future__ import annotations

import signal
import time

import pytest

from stream.errors import EXIT_KAFKA_UNAVAILABLE, EXIT_TERMINATED
from stream.harness import StreamTopics
from stream.kafka.apache_broker import ApacheKafkaBroker
from stream.kafka.broker import produce_messages, read_topic
from tests.stream.service.test_processes import (
    MESSAGES, PARTITIONS, PROCESS_TIMEOUT_S, UpdateWatcher, copies_by_key, outputs_of, run_to_end, start_run, stop, tail,
    valid_events_in,
)


@pytest.fixture
def broker(tmp_path):
    with ApacheKafkaBroker(tmp_path / "kafka") as broker:
        yield broker


def run_until_some_updates(broker, topics, model_dir, log_path, *options):
    produce_messages(broker.bootstrap, topics.input, MESSAGES[:150])
    watcher = UpdateWatcher(broker.bootstrap, topics.output)
    run = start_run(broker.bootstrap, model_dir, topics.input, outputs_of(topics), log_path, *options)
    try:
        watcher.wait_until(lambda: len(watcher.seen) >= 50, run, log_path, "the first updates")
    except BaseException:
        stop(run)
        raise
    finally:
        watcher.close()
    return run


def test_a_lost_broker_ends_the_run_with_status_75_and_a_restart_loses_nothing(broker, tiny_model_dir, tmp_path):
    topics = StreamTopics.named("broker-loss-")
    topics.create(broker.bootstrap, PARTITIONS)
    recovery = ["--recovery-dir", str(tmp_path / "recovery"), "--snapshot-interval", "500ms"]
    log_path = tmp_path / "lost.log"
    run = run_until_some_updates(broker, topics, tiny_model_dir, log_path, *recovery, "--max-broker-outage", "4s")
    try:
        broker.kill()
        killed_at = time.monotonic()
        status = run.wait(PROCESS_TIMEOUT_S)
        took = time.monotonic() - killed_at
    finally:
        stop(run)
    log = log_path.read_text(errors="replace")
    assert status == EXIT_KAFKA_UNAVAILABLE, tail(log_path)
    assert "lost every Kafka broker" in log and "allowed outage 4 s" in log, tail(log_path)
    assert 4 <= took < 40, f"exited {took:.1f} s after the broker died"

    broker.start()  # same ports, same data
    produce_messages(broker.bootstrap, topics.input, MESSAGES[150:])
    restart_log = tmp_path / "restart.log"
    run_to_end(broker.bootstrap, tiny_model_dir, topics.input, outputs_of(topics), restart_log, *recovery)
    updates = copies_by_key(read_topic(broker.bootstrap, topics.output))
    assert set(updates) == valid_events_in(MESSAGES)  # every event has its update, at least once


def test_sigterm_during_a_broker_outage_ends_the_run_within_the_shutdown_timeout(broker, tiny_model_dir, tmp_path):
    topics = StreamTopics.named("broker-outage-sigterm-")
    topics.create(broker.bootstrap, PARTITIONS)
    log_path = tmp_path / "outage.log"
    run = run_until_some_updates(broker, topics, tiny_model_dir, log_path, "--max-broker-outage", "10m",
                                 "--shutdown-timeout", "5s")  # fmt: skip
    try:
        broker.kill()
        produce_deadline = time.monotonic() + 3
        while time.monotonic() < produce_deadline and "lost every Kafka broker" not in log_path.read_text():
            time.sleep(0.1)
        run.send_signal(signal.SIGTERM)
        signalled_at = time.monotonic()
        status = run.wait(60)
        took = time.monotonic() - signalled_at
    finally:
        stop(run)
    assert status == EXIT_TERMINATED, tail(log_path)
    assert took < 8, f"SIGTERM took {took:.1f} s to end the run:\n{tail(log_path)}"
