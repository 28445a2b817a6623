"""The harness: a running stream on this machine, as the demo, the stream benchmark and the tests
drive it. `stream.demo` shows it to a person; bench/stream.py measures it; tests/conftest.py makes
each test's topics with `StreamTopics`.

- `StreamTopics`: the four topics of a stream (input, updates, dead letters, latest updates).
- `outgoing_messages`: play events as input-topic messages, with malformed ones among them.
- `DataflowProcess`: `stream.dataflow.build_flow` as `intentstream run` builds it, in a spawned child
  process (its own interpreter, as in a deployment; one process of a Bytewax cluster when the
  settings name `process_id` and `addresses`). Only its Kafka source differs
  (`StoppableKafkaSource`): partitions that end when asked to, and a short `fetch.wait.max.ms`.
- `stream_live`: produce at a fixed rate (`PacedProducer`) to a running dataflow and read its updates
  and dead letters back, measuring each event's latency, into a `LiveRun`.

Latency ("event to update") is measured from the moment an event is handed to the producer to the
moment its update is read back from the output topic, both on this process's monotonic clock,
matched by event_id, so the producer's linger (the client's default linger.ms, 5 ms) is part of it.
The first event is produced alone and the rest only once its update is back, so the percentiles
describe the running stream; the first update's delay (partition assignment, first model call) is
reported on its own.

`fetch.wait.max.ms`: the embedded broker holds every fetch for the full fetch.wait.max.ms (500 ms by
default) even when data has arrived, so the harness' consumers (the dataflow's source and the reader
of updates) use FETCH_WAIT_MS. On real Kafka a short wait only adds fetch requests.
"""
from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import queue
import signal
import threading
import time
import traceback
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Callable, Mapping, Sequence

import numpy as np
from bytewax.connectors.kafka import KafkaSource
from bytewax.inputs import StatefulSourcePartition
from confluent_kafka import KafkaError, Producer

from schemas import IntentUpdate, PlayEvent, decode_dead_letter, decode_intent_update, encode_play_event
from stream.kafka.source import WrappedPartition
from stream.kafka.broker import TopicReader, client_config, create_topics, delete_topics
from stream.settings import StreamSettings

FETCH_WAIT_MS = 10


# ---------------------------------------------------------------------------------------------
# The topics of a stream
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamTopics:
    input: str
    output: str
    dlq: str
    latest: str  # created compacted

    @classmethod
    def named(cls, prefix: str = "") -> "StreamTopics":
        """The topics of `intentstream run` (plays, intent-updates, ...), optionally prefixed."""
        return cls(prefix + StreamSettings.input_topic, prefix + StreamSettings.output_topic,
                   prefix + StreamSettings.dlq_topic, prefix + StreamSettings.latest_topic)  # fmt: skip

    @property
    def names(self) -> tuple[str, ...]:
        return (self.input, self.output, self.dlq, self.latest)

    def create(self, bootstrap: str, partitions: int = 1, client: Mapping[str, str] | None = None) -> None:
        create_topics(bootstrap, [self.input, self.output, self.dlq], partitions, client=client)
        create_topics(bootstrap, [self.latest], partitions, config={"cleanup.policy": "compact"}, client=client)

    def delete(self, bootstrap: str, client: Mapping[str, str] | None = None) -> None:
        delete_topics(bootstrap, self.names, client=client)


# ---------------------------------------------------------------------------------------------
# What goes onto the input topic
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message for the input topic; `event` is None for a malformed one."""

    key: bytes | None
    value: bytes
    event: PlayEvent | None


MALFORMED_BYTES = b"\xc1 this is not a play event"


def outgoing_messages(events: Sequence[PlayEvent], fmt: str, malformed: int = 0) -> list[Outgoing]:
    """The events keyed by user (so a user's events stay in one partition, in order), with `malformed`
    broken messages spread among them: alternately bytes that do not decode and a play with a
    negative watch time. The first message is always a valid event."""
    messages = [Outgoing(event.user_id.encode(), encode_play_event(event, fmt), event) for event in events]
    broken_at = sorted({1 + (k + 1) * len(events) // (malformed + 1) for k in range(malformed)}, reverse=True)
    for number, position in enumerate(broken_at):
        if number % 2 == 0:
            broken = Outgoing(None, MALFORMED_BYTES, None)
        else:
            donor = events[min(position, len(events) - 1)]
            bad = dataclasses.replace(donor, event_id=donor.event_id + "-broken", duration_s=-1.0)
            broken = Outgoing(donor.user_id.encode(), encode_play_event(bad, fmt), None)
        messages.insert(min(position, len(messages)), broken)
    return messages


# ---------------------------------------------------------------------------------------------
# The dataflow in a child process
# ---------------------------------------------------------------------------------------------


class _StoppablePartition(WrappedPartition):
    def __init__(self, partition: StatefulSourcePartition, source: "StoppableKafkaSource") -> None:
        super().__init__(partition)
        self._source = source

    def next_batch(self):
        if self._source.stop.is_set():
            raise StopIteration()
        batch = self.inner.next_batch()
        if batch and self._source.first_read_at is None:
            self._source.first_read_at = time.time()
        return batch


class StoppableKafkaSource(KafkaSource):
    """A KafkaSource whose partitions end, like at the end of a replay, once `stop` is set: the flow
    then finishes normally (outputs flushed, partitions closed). `first_read_at` is the wall-clock
    time the first message was read (the clock the sink's producer stamps updates with).

    `consumer_config` is applied to the partitions' consumers only. KafkaSource would also give it
    to the AdminClient that lists partitions, a producer-type client that warns on stderr about
    every consumer-only setting."""

    def __init__(self, brokers: list[str], topics: list[str], *, stop, client_config: Mapping[str, str],
                 consumer_config: Mapping[str, str], **kwargs) -> None:  # fmt: skip
        super().__init__(brokers, topics, add_config={**client_config, **consumer_config}, **kwargs)
        self._client_config = dict(client_config)
        self.stop = stop
        self.first_read_at: float | None = None

    def list_parts(self) -> list[str]:
        consumers, self._add_config = self._add_config, self._client_config
        try:
            return super().list_parts()
        finally:
            self._add_config = consumers

    def build_part(self, step_id: str, for_part: str, resume_state):
        return _StoppablePartition(super().build_part(step_id, for_part, resume_state), self)


def stoppable_source(settings: StreamSettings, stop, fetch_wait_ms: int) -> StoppableKafkaSource:
    """The source `intentstream run` builds (stream.dataflow.kafka_source), stoppable, with a short
    fetch wait, and starting at offset 0 (reset to the earliest): the same records as
    OFFSET_BEGINNING without the extra offset lookup that costs half a second on the embedded broker.
    """
    return StoppableKafkaSource(
        settings.brokers.split(","), [settings.input_topic], stop=stop,
        client_config=settings.kafka_config,
        consumer_config={"fetch.wait.max.ms": str(fetch_wait_ms), "auto.offset.reset": "earliest"},
        tail=not settings.stop_at_end, starting_offset=0,
    )  # fmt: skip


@dataclass(frozen=True)
class FlowCounts:
    """The dataflow's own StreamCounters when it finished."""

    events_in: int
    updates_out: int
    duplicates: int
    dead_letters: dict[str, int]
    first_read_at: float | None = None  # epoch seconds: the first input message read
    model_calls: int = 0  # chunks the score step scored together
    scoring_s: float = 0.0  # the score step's time in them

    def describe(self) -> str:
        return (f"in {self.events_in}, updates {self.updates_out}, duplicates {self.duplicates}, "
                f"dead letters {sum(self.dead_letters.values())}")  # fmt: skip


class StreamFailed(RuntimeError):
    """The stream cannot go on: the dataflow failed, died or never answered, or producing failed."""


def serve_dataflow(settings: StreamSettings, scorer_factory, torch_threads: int, fetch_wait_ms: int, stop, reports) -> None:
    """The child process: build the flow as `intentstream run` does, report ("ready", None), run it
    until the input ends or `stop` is set, report ("done", FlowCounts); or ("failed", traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # on Ctrl-C the parent stops the flow in order
    try:
        import torch

        torch.set_num_threads(torch_threads)
        from bytewax.run import cli_main

        from model.serving.incremental import load_serving_scorer
        from stream.dataflow import StreamCounters, build_flow

        if scorer_factory is None:
            scorer = load_serving_scorer(settings.model_dir, settings.backend, settings.kv_cache_bytes, settings.new_titles,
                                     settings.catalogue)
        else:
            scorer = scorer_factory(settings.model_dir)
        counters = StreamCounters(log_every_s=float("inf"))
        source = stoppable_source(settings, stop, fetch_wait_ms)
        flow = build_flow(settings, scorer, source=source, counters=counters)
        reports.put(("ready", None))
        cli_main(flow, workers_per_process=settings.workers, process_id=settings.process_id,
                 addresses=list(settings.addresses) or None,
                 epoch_interval=timedelta(seconds=settings.snapshot_interval_s))  # fmt: skip
        reports.put(("done", FlowCounts(counters.events_in, counters.updates_out, counters.duplicates,
                                        dict(counters.dead_letters), source.first_read_at, counters.model_calls,
                                        counters.scoring_s)))  # fmt: skip
    except BaseException:  # noqa: BLE001 - whatever it was, the parent must hear of it
        reports.put(("failed", traceback.format_exc()))


class DataflowProcess:
    """`build_flow(settings)` running in a spawned child process.

    `scorer_factory(model_dir)` gives the serving scorer in the child (default: load_serving_scorer
    with the backend and cache size of `settings`); it must be picklable: a module-level function
    or class."""

    def __init__(
        self,
        settings: StreamSettings,
        *,
        scorer_factory: Callable | None = None,
        torch_threads: int = 1,
        fetch_wait_ms: int = FETCH_WAIT_MS,
    ) -> None:
        context = multiprocessing.get_context("spawn")  # a fresh interpreter, as in a deployment
        self._stop = context.Event()
        self._reports = context.Queue()
        self._process = context.Process(
            target=serve_dataflow,
            args=(settings, scorer_factory, torch_threads, fetch_wait_ms, self._stop, self._reports),
            name="intentstream-dataflow",
            daemon=True,
        )
        self.started_at: float | None = None
        self.ready_s: float | None = None  # from start() to the flow built (interpreter started, model loaded)
        self.counts: FlowCounts | None = None
        self.failure: str | None = None

    def start(self) -> "DataflowProcess":
        self.started_at = time.monotonic()
        self._process.start()
        return self

    @property
    def finished(self) -> bool:
        return self.counts is not None or self.failure is not None

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def check(self, timeout: float = 0.0) -> None:
        """Take the child's reports that have arrived (waiting up to `timeout` for one); raise
        StreamFailed if it failed or died."""
        wait = timeout
        while True:
            try:
                kind, value = self._reports.get(timeout=wait)
            except queue.Empty:
                break
            wait = 0.0  # then whatever else has arrived
            if kind == "ready":
                self.ready_s = time.monotonic() - self.started_at
            elif kind == "done":
                self.counts = value
            else:
                self.failure = value
        if self.failure is not None:
            raise StreamFailed(f"the dataflow failed:\n{self.failure}")
        if not self.finished and not self._process.is_alive() and self._reports.empty():
            raise StreamFailed(f"the dataflow process exited with status {self._process.exitcode} "
                                 "without a word")  # fmt: skip

    def wait_ready(self, timeout: float = 180.0) -> float:
        deadline = time.monotonic() + timeout
        while self.ready_s is None:
            if time.monotonic() > deadline:
                raise StreamFailed(f"the dataflow was not ready after {timeout:g}s")
            self.check(timeout=0.2)
        return self.ready_s

    def wait_finished(self, timeout: float) -> FlowCounts | None:
        """Wait for a flow with a bounded input (stop_at_end) to end by itself."""
        deadline = time.monotonic() + timeout
        while not self.finished and time.monotonic() < deadline:
            self.check(timeout=0.2)
        return self.counts

    def stop(self, timeout: float = 20.0) -> FlowCounts | None:
        """Ask the flow to end, wait for its counts, and make sure the process is gone."""
        self._stop.set()
        if self._process.pid is None:  # never started
            return None
        deadline = time.monotonic() + timeout
        with contextlib.suppress(StreamFailed):
            while not self.finished and self._process.is_alive() and time.monotonic() < deadline:
                self.check(timeout=0.2)
            self.check()
        self._process.join(max(0.1, deadline - time.monotonic()))
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        return self.counts


# ---------------------------------------------------------------------------------------------
# Producing at a fixed rate, reading the results back
# ---------------------------------------------------------------------------------------------


class PacedProducer(threading.Thread):
    """Produces `messages` to `topic`: the first one alone, then, once `go` is set, the rest at `rate`
    per second (as fast as it can when it falls behind). `sent_at[event_id]` is the monotonic time
    each event was handed to the client, written before the hand-over."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        messages: Sequence[Outgoing],
        rate: float,
        sent_at: dict[str, float],
        client: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(name="intentstream-producer", daemon=True)
        self.bootstrap = bootstrap
        self.topic = topic
        self.messages = messages
        self.rate = rate
        self.sent_at = sent_at
        self.client = dict(client or {})
        self.go = threading.Event()
        self.halt = threading.Event()
        self.done = threading.Event()
        self.sent = 0
        self.paced_from: float | None = None  # monotonic time the paced part began
        self.paced_until: float | None = None  # ... and ended
        self.failures: list[str] = []

    def run(self) -> None:
        try:
            # The client's default linger.ms (5 ms in librdkafka, as in Kafka 4's Java client), as a
            # real producer of play events runs: events handed over within 5 ms share a request.
            producer = Producer(client_config(self.bootstrap, self.client))
            self._send(producer, self.messages[0])
            producer.flush(30)
            while not (self.go.is_set() or self.halt.wait(0.01)):
                pass
            self.paced_from = time.monotonic()
            for number, message in enumerate(self.messages[1:]):
                delay = self.paced_from + number / self.rate - time.monotonic()
                if (delay > 0 and self.halt.wait(delay)) or self.halt.is_set():
                    break
                self._send(producer, message)
            self.paced_until = time.monotonic()
            unflushed = producer.flush(5 if self.halt.is_set() else 30)
            if unflushed:
                self.failures.append(f"{unflushed} message(s) not delivered within 30s")
        except Exception as error:  # noqa: BLE001 - reported by the reading side
            self.failures.append(f"{type(error).__name__}: {error}")
        finally:
            self.done.set()

    def _send(self, producer: Producer, message: Outgoing) -> None:
        if message.event is not None:
            self.sent_at[message.event.event_id] = time.monotonic()
        while True:
            try:
                producer.produce(self.topic, key=message.key, value=message.value, on_delivery=self._delivered)
                break
            except BufferError:  # the client's queue is full: let deliveries drain
                producer.poll(0.05)
        producer.poll(0)
        self.sent += 1

    def _delivered(self, error: KafkaError | None, _message) -> None:
        if error is not None:
            self.failures.append(error.str())


@dataclass(frozen=True, slots=True)
class Seen:
    """An update read back, with the event that caused it and the time between the two."""

    update: IntentUpdate
    event: PlayEvent | None
    latency_ms: float | None


@dataclass
class LiveRun:
    """What a live run has seen so far (`stream_live` fills it in; views read it)."""

    to_send: int
    producer: PacedProducer | None = None
    updates: int = 0
    dead_letters: Counter = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)  # every update but the first
    first_update_s: float | None = None  # first event produced -> its update read
    last_update_read: float | None = None  # monotonic
    last_read: float | None = None  # update or dead letter
    recent: deque = field(default_factory=lambda: deque(maxlen=64))  # Seen, newest last
    recent_dead: deque = field(default_factory=lambda: deque(maxlen=3))  # "code: detail"

    @property
    def sent(self) -> int:
        return self.producer.sent if self.producer else 0

    @property
    def answered(self) -> int:
        return self.updates + sum(self.dead_letters.values())

    def events_per_s(self) -> float | None:
        """Updates per second from the first paced event to the last update read."""
        start = self.producer.paced_from if self.producer else None
        end = self.last_update_read
        if start is None or end is None or end <= start or self.updates < 2:
            return None
        return (self.updates - 1) / (end - start)  # the first update came before the pacing began

    def latency_percentiles(self) -> dict[str, float] | None:
        if not self.latencies_ms:
            return None
        values = np.asarray(self.latencies_ms)
        p50, p99 = np.percentile(values, [50, 99])
        return {"p50": float(p50), "p99": float(p99), "max": float(values.max())}


def stream_live(
    bootstrap: str,
    topics: StreamTopics,
    messages: Sequence[Outgoing],
    rate: float,
    fmt: str,
    flow: DataflowProcess,
    *,
    run: LiveRun | None = None,
    client: Mapping[str, str] | None = None,
    on_progress: Callable[[LiveRun], None] | None = None,
    first_update_timeout_s: float = 60.0,
    quiet_timeout_s: float = 15.0,
) -> LiveRun:
    """Produce `messages` at `rate` to a running dataflow and read its updates and dead letters back,
    until every message is answered or nothing more arrives for `quiet_timeout_s` after the last
    one was sent. Call after `flow.wait_ready()`. Fills in `run` (when given, what was seen stays
    there when this is interrupted) and returns it."""
    run = run if run is not None else LiveRun(to_send=len(messages))
    sent_at: dict[str, float] = {}
    events = {m.event.event_id: m.event for m in messages if m.event is not None}
    producer = PacedProducer(bootstrap, topics.input, messages, rate, sent_at, client)
    run.producer = producer
    with TopicReader(bootstrap, topics.output, client=client) as updates, \
            TopicReader(bootstrap, topics.dlq, client=client) as dead_letters:  # fmt: skip
        producer.start()
        try:
            waiting_since = time.monotonic()
            while True:
                flow.check()
                # What is there already, else wait briefly for one record: each record's read time
                # is taken as soon as the client hands it over.
                records = updates.poll(timeout=0, max_records=1000) or updates.poll(timeout=0.02, max_records=1)
                read_at = time.monotonic()
                for record in records:
                    _take_update(run, decode_intent_update(record.value, fmt), events, sent_at, read_at)
                for record in dead_letters.poll(timeout=0, max_records=1000):
                    letter = decode_dead_letter(record.value)
                    run.dead_letters[letter.code] += 1
                    run.recent_dead.append(f"{letter.code}: {letter.detail}")
                    run.last_read = read_at
                if run.first_update_s is not None:
                    producer.go.set()
                elif time.monotonic() - waiting_since > first_update_timeout_s:
                    raise StreamFailed(f"no update within {first_update_timeout_s:g}s of the first event")
                if on_progress is not None:
                    on_progress(run)
                if producer.done.is_set():
                    if producer.failures:
                        raise StreamFailed(f"producing to {topics.input!r} failed: {producer.failures[0]}")
                    if run.answered >= producer.sent:
                        break
                    quiet_since = max(run.last_read or 0.0, producer.paced_until or 0.0)
                    if time.monotonic() - quiet_since > quiet_timeout_s:
                        break
        finally:
            producer.halt.set()
            producer.join()
    return run


def _take_update(run: LiveRun, update: IntentUpdate, events: dict, sent_at: dict, read_at: float) -> None:
    run.updates += 1
    run.last_update_read = run.last_read = read_at
    started = sent_at.get(update.event_id)  # None: not an event of this run's
    latency_ms = None if started is None else (read_at - started) * 1000.0
    if latency_ms is not None:
        if run.first_update_s is None:
            run.first_update_s = latency_ms / 1000.0
        else:
            run.latencies_ms.append(latency_ms)
    run.recent.append(Seen(update, events.get(update.event_id), latency_ms))
