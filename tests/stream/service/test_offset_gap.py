"""`intentstream run` resumed from its recovery directory after the broker's retention deleted input
it had not read yet, on a real Apache Kafka broker of the test's own whose retention acts within a
second: with `--on-offset-gap fail` it exits with status 65 and one line naming the lost offsets,
writing nothing; with `resume` it reads on from the oldest retained event, says how many offsets
were lost, and every retained event gets its update. Today's librdkafka default would have jumped
to the end of the partition: no update, no word."""
from __future__ import annotations

import signal
import time

import pytest

from stream.errors import EXIT_OFFSET_GAP, EXIT_TERMINATED
from stream.harness import StreamTopics
from stream.kafka.apache_broker import QUICK_RETENTION, ApacheKafkaBroker, retained_bytes
from stream.kafka.broker import create_topics, produce_messages, read_topic
from tests.stream.kafka.test_source import wait_for_retention
from tests.stream.service.test_processes import (
    MESSAGES, PROCESS_TIMEOUT_S, UpdateWatcher, copies_by_key, dead_letter_origins, outputs_of, run_summary,
    run_to_end, start_run, stop, tail, valid_events_in,
)

SEGMENT_BYTES = 8192  # some 35 play events; retention keeps the newest two or three segments
SMALL_BATCHES = {"batch.size": str(SEGMENT_BYTES // 2), "linger.ms": "0"}  # a batch must fit in a segment
READ_FIRST = 40  # events the first run reads before it stops


@pytest.fixture
def broker(tmp_path):
    with ApacheKafkaBroker(tmp_path / "kafka", server_properties=QUICK_RETENTION) as broker:
        yield broker


def test_input_deleted_before_it_was_read_stops_the_run_or_is_counted_as_lost(broker, tiny_model_dir, tmp_path):
    topics = StreamTopics.named("offset-gap-")
    create_topics(broker.bootstrap, [topics.input], 1, retained_bytes(SEGMENT_BYTES, 2 * SEGMENT_BYTES))
    create_topics(broker.bootstrap, [topics.output, topics.dlq, topics.latest], 1)
    outputs = outputs_of(topics)
    recovery = ["--recovery-dir", str(tmp_path / "recovery"), "--snapshot-interval", "500ms"]

    # A live run reads the first events, snapshots its offset and stops ...
    produce_messages(broker.bootstrap, topics.input, MESSAGES[:READ_FIRST], client=SMALL_BATCHES)
    first_log = tmp_path / "first.log"
    watcher = UpdateWatcher(broker.bootstrap, topics.output)
    first = start_run(broker.bootstrap, tiny_model_dir, topics.input, outputs, first_log, *recovery)
    try:
        expected = valid_events_in(MESSAGES[:READ_FIRST])
        watcher.wait_until(lambda: expected <= watcher.seen, first, first_log, "the first events' updates")
        time.sleep(1.5)  # snapshots after the last event read
        first.send_signal(signal.SIGTERM)
        assert first.wait(PROCESS_TIMEOUT_S) == EXIT_TERMINATED, tail(first_log)
    finally:
        stop(first)
        watcher.close()

    # ... and while it is down, retention deletes events it has not read.
    produce_messages(broker.bootstrap, topics.input, MESSAGES[READ_FIRST:], client=SMALL_BATCHES)
    oldest = wait_for_retention(broker.bootstrap, topics.input)
    assert READ_FIRST < oldest < len(MESSAGES) - 20, f"retention kept offsets from {oldest} on"
    lost = oldest - READ_FIRST
    gap = f"offsets {READ_FIRST}..{oldest - 1} ({lost} messages) were deleted by the broker's retention"
    updates_before = len(read_topic(broker.bootstrap, topics.output))

    failing_log = tmp_path / "fail.log"
    failing = start_run(broker.bootstrap, tiny_model_dir, topics.input, outputs, failing_log, *recovery,
                        "--stop-at-end", "--on-offset-gap", "fail")  # fmt: skip
    try:
        status = failing.wait(PROCESS_TIMEOUT_S)
    finally:
        stop(failing)
    log = failing_log.read_text(errors="replace")
    assert status == EXIT_OFFSET_GAP, tail(failing_log)
    assert f"intentstream run: partition 0 of topic {topics.input!r}: {gap}" in log, tail(failing_log)
    assert "Traceback" not in log, tail(failing_log)
    assert len(read_topic(broker.bootstrap, topics.output)) == updates_before  # nothing after the gap was scored

    resumed_log = tmp_path / "resume.log"
    run_to_end(broker.bootstrap, tiny_model_dir, topics.input, outputs, resumed_log, *recovery, "--on-offset-gap",
               "resume")  # fmt: skip
    log = resumed_log.read_text(errors="replace")
    assert gap in log and "they are lost" in log, tail(resumed_log)
    assert f"offsets lost to retention {lost}" in log, tail(resumed_log)
    assert run_summary(resumed_log).events_in == len(MESSAGES) - oldest
    # Retention cuts at segment boundaries that move with the producer's batching. Where it cut between
    # an event and its copy (7 messages later) after which the user played on, the copy is late.
    late = {offset for _, offset, code, _ in dead_letter_origins(broker.bootstrap, topics.dlq) if code == "late"}
    assert late <= copies_of_lost_events(oldest), sorted(late)
    updated = set(copies_by_key(read_topic(broker.bootstrap, topics.output)))
    retained = [message for offset, message in enumerate(MESSAGES) if offset >= oldest and offset not in late]
    assert updated == valid_events_in(MESSAGES[:READ_FIRST]) | valid_events_in(retained)


def copies_of_lost_events(oldest: int) -> set[int]:
    """Offsets of the retained exact copies whose original was deleted."""
    return {offset for offset in range(oldest, len(MESSAGES))
            if MESSAGES[offset] in MESSAGES[READ_FIRST:oldest]}

