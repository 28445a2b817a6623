"""`intentstream run` as real processes through a real broker: recovery after SIGKILL, and a
2-process Bytewax cluster. Both must give the updates of one uninterrupted single process. Also:
Ctrl-C stops a live run with its counts.

The input is the same in every test: play events of 20 users, a few exact copies of earlier events
and two malformed messages, produced in one order with user keys into 2-partition topics, so every
message lands on the same partition at the same offset in each test's topic. Output is
at-least-once, so updates are compared after dedup by (user_id, event_id) — and every copy of an
update must equal the uninterrupted run's, since re-processing starts from restored state.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from model.playlogs.synth import generate_world
from schemas import (
    ContractError,
    IntentUpdate,
    decode_dead_letter,
    decode_intent_update,
    decode_play_event,
    encode_play_event,
)
from stream.kafka.broker import TopicReader, create_topics, delete_topics, free_loopback_ports, produce_messages, read_topic

REPO_ROOT = Path(__file__).resolve().parents[3]
PARTITIONS = 2  # these 20 user keys split 10/10 over 2 partitions (3 would leave one empty)
FORMAT = "msgpack"
PROCESS_TIMEOUT_S = 90.0  # a run of these few hundred events takes a few seconds; this is for a loaded machine

Key = tuple[str, str]  # (user_id, event_id)
MALFORMED = [(b"user-0003", b"\xc1 not msgpack"), (b"user-0007", b"\x93\x01\x02\x03")]


def make_messages() -> list[tuple[bytes, bytes]]:
    """(key, value) messages in production order."""
    events = generate_world(seed=1, n_users=20, n_titles=60, days=20)[:300]
    messages = [(e.user_id.encode(), encode_play_event(e, FORMAT)) for e in events]
    for original in (10, 60, 120, 180, 240):  # exact copies a few events later: dropped, never scored
        messages.insert(original + 7, messages[original])
    messages.insert(50, MALFORMED[0])
    messages.insert(200, MALFORMED[1])
    return messages


def valid_events_in(messages: list[tuple[bytes, bytes]]) -> set[Key]:
    keys = set()
    for _, value in messages:
        try:
            event = decode_play_event(value, FORMAT)
        except ContractError:
            continue
        keys.add((event.user_id, event.event_id))
    return keys


MESSAGES = make_messages()
VALID_EVENTS = valid_events_in(MESSAGES)


@dataclass(frozen=True)
class Outputs:
    """The topics a run writes."""

    updates: str
    dlq: str
    latest: str


def outputs_of(topics) -> Outputs:
    return Outputs(topics.output, topics.dlq, topics.latest)


# --- running `intentstream run` -----------------------------------------------------------------


def start_run(bootstrap: str, model_dir: Path, input_topic: str, outputs: Outputs, log_path: Path,
              *options: str) -> subprocess.Popen:  # fmt: skip
    """`intentstream run` in a subprocess, its output going to `log_path`. With a closed catalogue
    (--new-titles 0): each process learns titles first seen in the stream from the plays it reads
    and forgets them on exit, so only a closed catalogue gives the same updates after a restart and
    at any cluster size (the input has titles the model lacks: their slots are state, and kept)."""
    environ = {name: value for name, value in os.environ.items() if not name.startswith("INTENTSTREAM_")}
    command = [
        sys.executable, "-m", "stream.cli", "run", "--brokers", bootstrap, "--model", str(model_dir),
        "--format", FORMAT, "--input-topic", input_topic, "--output-topic", outputs.updates,
        "--dlq-topic", outputs.dlq, "--latest-topic", outputs.latest, "--top-k", "5", "--new-titles", "0", *options,
    ]  # fmt: skip
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(command, cwd=REPO_ROOT, env=environ, stdin=subprocess.DEVNULL,
                                stdout=log_file, stderr=subprocess.STDOUT)  # fmt: skip


def run_to_end(bootstrap: str, model_dir: Path, input_topic: str, outputs: Outputs, log_path: Path,
               *options: str) -> None:  # fmt: skip
    """`intentstream run --stop-at-end`, waited for: it must exit with status 0."""
    process = start_run(bootstrap, model_dir, input_topic, outputs, log_path, *options, "--stop-at-end")
    try:
        wait_for_exit((process, log_path))
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


def wait_for_exit(*runs: tuple[subprocess.Popen, Path]) -> None:
    """Wait until every (process, log) has exited with status 0; fail at once when one does not."""
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    while True:
        codes = [process.poll() for process, _ in runs]
        for code, (_, log_path) in zip(codes, runs):
            assert code in (None, 0), f"intentstream run exited with status {code}:\n{tail(log_path)}"
        if all(code == 0 for code in codes):
            return
        if time.monotonic() > deadline:
            pending = [log_path for code, (_, log_path) in zip(codes, runs) if code is None]
            pytest.fail(f"intentstream run did not finish within {PROCESS_TIMEOUT_S:g}s:\n{tail(pending[0])}")
        time.sleep(0.05)


def tail(log_path: Path, lines: int = 40) -> str:
    return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])



@dataclass(frozen=True)
class RunSummary:
    """The end-of-run counters a process logs."""

    events_in: int
    updates_out: int


def run_summary(log_path: Path, ending: str = "finished") -> RunSummary:
    """The counters logged when the run ended: `finished` (end of input) or `interrupted` (Ctrl-C)."""
    pattern = rf"{ending}: events in (\d+), updates out (\d+)"
    found = re.findall(pattern, log_path.read_text(errors="replace"))
    assert len(found) == 1, f"expected one end-of-run summary in the log:\n{tail(log_path)}"
    events_in, updates_out = found[0]
    return RunSummary(int(events_in), int(updates_out))


# --- what is on the topics -------------------------------------------------------------------


def copies_by_key(records) -> dict[Key, list[IntentUpdate]]:
    copies: dict[Key, list[IntentUpdate]] = {}
    for record in records:
        update = decode_intent_update(record.value, FORMAT)
        assert record.key == update.user_id.encode()
        copies.setdefault((update.user_id, update.event_id), []).append(update)
    return copies


def dead_letter_origins(bootstrap: str, topic: str) -> set[tuple[int, int, str, bytes]]:
    """(partition, offset, code, original bytes) of every dead letter, copies merged."""
    letters = (decode_dead_letter(record.value) for record in read_topic(bootstrap, topic))
    return {(letter.partition, letter.offset, letter.code, letter.value) for letter in letters}


def assert_same_update(got: IntentUpdate, expected: IntentUpdate) -> None:
    """Equal up to float noise; scored_at is when it was scored, so it differs."""
    which = f"update of {got.user_id}/{got.event_id}"
    assert (got.user_id, got.event_id, got.ts) == (expected.user_id, expected.event_id, expected.ts)
    assert got.model == expected.model

    def assert_close(actual, desired, what: str) -> None:
        np.testing.assert_allclose(actual, desired, atol=1e-5, err_msg=f"{which}: {what}")

    assert_close(got.intent_embedding, expected.intent_embedding, "intent_embedding")
    assert got.intents.keys() == expected.intents.keys(), which
    for task, labels in expected.intents.items():
        assert [label.label for label in got.intents[task]] == [label.label for label in labels], f"{which}: {task}"
        assert_close([label.p for label in got.intents[task]], [label.p for label in labels], task)
    assert got.intent_weights.keys() == expected.intent_weights.keys(), which
    assert_close(list(got.intent_weights.values()), list(expected.intent_weights.values()), "intent_weights")
    assert [item.item_id for item in got.next_items] == [item.item_id for item in expected.next_items], which
    assert_close([item.score for item in got.next_items], [item.score for item in expected.next_items], "next_items")


class UpdateWatcher:
    """Follows an updates topic while a run is going, counting distinct (user_id, event_id)."""

    def __init__(self, bootstrap: str, topic: str):
        self.reader = TopicReader(bootstrap, topic)
        self.seen: set[Key] = set()

    def wait_until(self, done: Callable[[], bool], process: subprocess.Popen, log_path: Path, what: str) -> None:
        deadline = time.monotonic() + PROCESS_TIMEOUT_S
        while not done():
            if process.poll() is not None:
                pytest.fail(f"intentstream run exited (status {process.returncode}) before {what}:\n{tail(log_path)}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {PROCESS_TIMEOUT_S:g}s ({len(self.seen)} updates seen):\n"
                            f"{tail(log_path)}")
            for record in self.reader.poll(timeout=0.05):
                update = decode_intent_update(record.value, FORMAT)
                self.seen.add((update.user_id, update.event_id))

    def close(self) -> None:
        self.reader.close()


# --- the uninterrupted single process every test compares with ------------------------------------


@dataclass(frozen=True)
class Reference:
    updates: dict[Key, IntentUpdate]
    dead_letters: set[tuple[int, int, str, bytes]]


@pytest.fixture(scope="module")
def reference(kafka_bootstrap, tiny_model_dir, tmp_path_factory) -> Reference:
    """One uninterrupted `intentstream run --stop-at-end` over the whole input, on a fresh
    recovery directory: exactly one update per valid event and one dead letter per malformed one."""
    directory = tmp_path_factory.mktemp("reference")
    prefix = f"recovery-reference-{directory.name}"
    input_topic = f"{prefix}-plays"
    outputs = Outputs(f"{prefix}-updates", f"{prefix}-dlq", f"{prefix}-latest")
    names = [input_topic, outputs.updates, outputs.dlq, outputs.latest]
    create_topics(kafka_bootstrap, names, PARTITIONS)
    try:
        produce_messages(kafka_bootstrap, input_topic, MESSAGES)
        log_path = directory / "run.log"
        process = start_run(kafka_bootstrap, tiny_model_dir, input_topic, outputs, log_path,
                            "--recovery-dir", str(directory / "recovery"), "--stop-at-end")  # fmt: skip
        try:
            wait_for_exit((process, log_path))
        finally:
            stop(process)
        copies = copies_by_key(read_topic(kafka_bootstrap, outputs.updates))
        dead_letters = dead_letter_origins(kafka_bootstrap, outputs.dlq)
    finally:
        delete_topics(kafka_bootstrap, names)

    assert copies.keys() == VALID_EVENTS
    assert_scored_once(copies)
    assert {value for _, _, _, value in dead_letters} == {value for _, value in MALFORMED}
    assert run_summary(log_path) == RunSummary(events_in=len(MESSAGES), updates_out=len(VALID_EVENTS))
    return Reference({key: updates[0] for key, updates in copies.items()}, dead_letters)


def assert_scored_once(copies: dict[Key, list[IntentUpdate]]) -> None:
    twice = sorted(key for key, updates in copies.items() if len(updates) > 1)
    assert not twice, f"{len(twice)} events have more than one update, e.g. {twice[:3]}"


def assert_matches_reference(bootstrap: str, outputs: Outputs, reference: Reference) -> dict[Key, list[IntentUpdate]]:
    copies = copies_by_key(read_topic(bootstrap, outputs.updates))
    missing = VALID_EVENTS - copies.keys()
    assert not missing, f"{len(missing)} valid events have no update, e.g. {sorted(missing)[:3]}"
    assert copies.keys() == reference.updates.keys()
    for key, updates in copies.items():
        for update in updates:
            assert_same_update(update, reference.updates[key])
    assert dead_letter_origins(bootstrap, outputs.dlq) == reference.dead_letters
    return copies


# --- the tests ------------------------------------------------------------------------------------


def test_a_run_killed_mid_stream_resumes_from_its_recovery_dir(
    kafka_bootstrap, make_topics, tiny_model_dir, tmp_path, reference
):
    topics = make_topics(partitions=PARTITIONS)
    outputs = outputs_of(topics)
    recovery = ["--recovery-dir", str(tmp_path / "recovery"), "--snapshot-interval", "500ms"]
    total = len(MESSAGES)

    # A live run (no --stop-at-end) gets the input a chunk at a time, each once the updates of the
    # previous ones are out, so that several snapshots are taken; it is SIGKILLed once half of the
    # valid events have updates, with the rest of the input not even produced yet.
    killed_log = tmp_path / "killed.log"
    watcher = UpdateWatcher(kafka_bootstrap, topics.output)
    killed = start_run(kafka_bootstrap, tiny_model_dir, topics.input, outputs, killed_log, *recovery)
    produced = 0
    try:
        for chunk in [MESSAGES[:100]] + [MESSAGES[i : i + 20] for i in range(100, total, 20)]:
            produce_messages(kafka_bootstrap, topics.input, chunk)
            produced += len(chunk)
            expected = valid_events_in(MESSAGES[:produced])
            watcher.wait_until(lambda: expected <= watcher.seen, killed, killed_log, "the updates of the input so far")
            if len(watcher.seen) >= len(VALID_EVENTS) // 2:
                break
        # A few snapshot intervals, so that a snapshot covers what was read: on an idle machine the
        # whole first half can be scored before the first snapshot is taken.
        time.sleep(1.5)
        killed.send_signal(signal.SIGKILL)
        killed.wait(PROCESS_TIMEOUT_S)
    finally:
        stop(killed)
        watcher.close()
    assert produced < total, "the kill should land mid-stream"
    produce_messages(kafka_bootstrap, topics.input, MESSAGES[produced:])

    # The restart resumes from the last snapshot and stops at the end of the input.
    restart_log = tmp_path / "restart.log"
    run_to_end(kafka_bootstrap, tiny_model_dir, topics.input, outputs, restart_log, *recovery)

    # It resumed from a snapshot: it read what the killed run never saw, and not everything ...
    summary = run_summary(restart_log)
    assert total - produced <= summary.events_in < total, f"{summary} of {total} messages, {produced} before the kill"
    # ... with the state of that snapshot: its updates, re-scored ones included, equal the uninterrupted run's.
    assert_matches_reference(kafka_bootstrap, outputs, reference)


def test_a_two_process_cluster_gives_the_updates_of_one_process(
    kafka_bootstrap, make_topics, tiny_model_dir, tmp_path, reference
):
    topics = make_topics(partitions=PARTITIONS)
    outputs = outputs_of(topics)
    produce_messages(kafka_bootstrap, topics.input, MESSAGES)
    addresses = ",".join(f"127.0.0.1:{port}" for port in free_loopback_ports(2))

    logs = [tmp_path / f"process-{i}.log" for i in range(2)]
    processes = []
    try:
        for process_id, log_path in enumerate(logs):
            processes.append(start_run(kafka_bootstrap, tiny_model_dir, topics.input, outputs, log_path,
                                       "--process-id", str(process_id), "--addresses", addresses,
                                       "--stop-at-end"))  # fmt: skip
        wait_for_exit(*zip(processes, logs))
    finally:
        for process in processes:
            stop(process)

    assert_scored_once(assert_matches_reference(kafka_bootstrap, outputs, reference))  # no failure: no copies
    # Both processes scored users: keyed state is routed by user across the cluster.
    summaries = [run_summary(log_path) for log_path in logs]
    assert sum(s.events_in for s in summaries) == len(MESSAGES), summaries
    assert sum(s.updates_out for s in summaries) == len(VALID_EVENTS), summaries
    assert all(s.updates_out > 0 for s in summaries), summaries



@pytest.mark.parametrize(
    "signal_sent, exit_code, ending",
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],  # SIGTERM: docker stop, Kubernetes
)
def test_a_stopped_live_run_exits_with_its_counts(
    signal_sent, exit_code, ending, kafka_bootstrap, make_topics, tiny_model_dir, tmp_path
):
    topics = make_topics(partitions=PARTITIONS)
    head = MESSAGES[:60]
    produce_messages(kafka_bootstrap, topics.input, head)
    expected = valid_events_in(head)

    log_path = tmp_path / "run.log"
    watcher = UpdateWatcher(kafka_bootstrap, topics.output)
    process = start_run(kafka_bootstrap, tiny_model_dir, topics.input, outputs_of(topics), log_path)
    try:
        watcher.wait_until(lambda: expected <= watcher.seen, process, log_path, "the updates of the input")
        process.send_signal(signal_sent)
        code = process.wait(PROCESS_TIMEOUT_S)
    finally:
        stop(process)
        watcher.close()

    assert code == exit_code, f"exit status {code}:\n{tail(log_path)}"
    summary = run_summary(log_path, ending=ending)
    assert summary.updates_out == len(expected)
    assert len(expected) <= summary.events_in <= len(head)
    assert "panicked" not in log_path.read_text(errors="replace"), tail(log_path)  # a clean stop, no Rust panic
