"""`intentstream run` whose recovery directory's volume fills up while it runs (a tmpfs of a few
megabytes, filled to the last page): the snapshot it cannot write stops it with exit status 74 and
one line naming the directory, not a crash of status 1; once space is freed, the restart from the
same directory gives every event its update."""
from __future__ import annotations

import time

from schemas import PlayEvent, encode_play_event
from stream.errors import EXIT_DISK_FULL
from stream.kafka.broker import produce_messages, read_topic
from stream.small_volume import SmallVolume
from tests.stream.service.test_processes import (
    FORMAT, MESSAGES, PARTITIONS, PROCESS_TIMEOUT_S, UpdateWatcher, copies_by_key, outputs_of, run_to_end, start_run,
    stop, tail, valid_events_in,
)

FLOOD_USERS = 5000  # their first snapshot, some 2 MB, needs more room than the write-ahead log already has


def flood_of_new_users(item_id: str) -> list[tuple[bytes, bytes]]:
    now_ms = int(time.time() * 1000)
    events = [PlayEvent(event_id=f"flood-{i}", user_id=f"flood-user-{i}", item_id=item_id, ts=now_ms - 60_000,
                        action="discover", genres=("Drama",), kind="movie", release_ts=None, duration_s=600.0)
              for i in range(FLOOD_USERS)]  # fmt: skip
    return [(event.user_id.encode(), encode_play_event(event, FORMAT)) for event in events]


def test_a_full_recovery_volume_stops_the_run_with_status_74_and_the_restart_loses_nothing(
    kafka_bootstrap, make_topics, tiny_model_dir, tmp_path
):
    topics = make_topics(partitions=PARTITIONS)
    outputs = outputs_of(topics)
    head, flood, rest = MESSAGES[:100], flood_of_new_users("item-1"), MESSAGES[100:]
    with SmallVolume(tmp_path / "volume", 32 << 20) as volume:
        recovery = volume.path / "recovery"
        options = ["--recovery-dir", str(recovery), "--snapshot-interval", "500ms"]
        produce_messages(kafka_bootstrap, topics.input, head)
        log_path = tmp_path / "full.log"
        watcher = UpdateWatcher(kafka_bootstrap, topics.output)
        run = start_run(kafka_bootstrap, tiny_model_dir, topics.input, outputs, log_path, *options)
        try:
            expected = valid_events_in(head)
            watcher.wait_until(lambda: expected <= watcher.seen, run, log_path, "the first events' updates")
            time.sleep(1.5)  # snapshots of them
            volume.fill()
            produce_messages(kafka_bootstrap, topics.input, flood)
            status = run.wait(PROCESS_TIMEOUT_S)
        finally:
            stop(run)
            watcher.close()
        last_line = log_path.read_text(errors="replace").strip().splitlines()[-1]
        assert status == EXIT_DISK_FULL, tail(log_path)
        assert last_line.startswith(f"intentstream run: no space left for the recovery directory {recovery.resolve()} "
                                    "("), tail(log_path)  # fmt: skip
        assert "Traceback" not in log_path.read_text(errors="replace"), tail(log_path)

        volume.free()
        produce_messages(kafka_bootstrap, topics.input, rest)
        restart_log = tmp_path / "restart.log"
        run_to_end(kafka_bootstrap, tiny_model_dir, topics.input, outputs, restart_log, *options)

    updated = set(copies_by_key(read_topic(kafka_bootstrap, topics.output)))
    assert updated == valid_events_in(MESSAGES) | valid_events_in(flood)
