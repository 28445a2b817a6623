"""`intentstream backtest`: replay history through the live dataflow and judge every update.

A backtest is the live path fed from the past: the events of a log file, or of a bounded range of a
Kafka topic, go through `stream.dataflow.build_flow` unchanged (decode, per-user state, micro-batched
scoring); only the source and the sink differ. Each update, made for an event e of user u, is
judged prequentially against u's next event n: the rank of n's item in the whole catalogue, and per
intent task whether the top label is n's. An update carries only its top-k, so the judge sits in
the dataflow's score step (`build_flow(observe_scores=...)`) and sees the model's full predictions.

Two passes over the input:

1. Before the replay, one streaming pass builds the `Timeline`: every user's events in event-time
   order, so that when an update is made the judge already knows the user's next event. It also
   counts the messages (the progress bar's total) and checks the input: a corrupt log or an empty
   range stops the backtest before anything is replayed.
2. The replay, once per model (each model has its own vocabulary, so its own featurized state).

Definitions:

- The *judged event* is n. `--score-from TS` judges only updates whose n is at or after TS: every
  event is replayed, so the history before TS builds the state, and a model trained with
  `intentstream train --until TS` is tested on what came after. Per-day and per-action breakdowns
  use n's UTC day and n's action (as `intentstream evaluate` slices by the target's action).
- Order: a user's events must reach the state in event-time order, as live. A log sorted by time is
  the normal case. Otherwise the state's rules apply: an event at most `--lateness` older than the
  user's newest is put in its place; an older one is a dead letter (no update), though it is still
  the truth for the update before it. Ties in time keep arrival order, as in the state. The report
  counts out-of-order events and dead letters.
- Topic ranges: `--from`/`--to` select events by event time, [from, to), not by Kafka timestamps,
  because a topic loaded from a file carries the time of loading. So the whole topic is read, up
  to the end of each partition as the timeline pass finds it (later messages are left out), once
  for the timeline and once by the replay. A message that cannot be decoded has no event time: it goes to
  the replay, which dead-letters it, as live.
- Baselines, the floors every model must beat, rank the first model's catalogue: *popularity*
  counts every play of the input at or before e's event time; *recency* puts the user's last items
  (as many as the model reads) first, most recent first, then the rest by that popularity
  (`model.training.baselines`). They are computed from the timeline in one sweep, not in the dataflow:
  they have no model to serve.

One worker replays (the run is deterministic); the scorer is the bottleneck, not Bytewax. The
timeline holds every replayed event in memory, about 1 KB each: a million events need about 1 GB.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from itertools import groupby, islice
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
from bytewax.connectors.kafka import KafkaSource, KafkaSourceMessage
from bytewax.inputs import FixedPartitionedSource, Source, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from tqdm import tqdm

from model.training.baselines import Popularity, Recency
from model.training.evaluate import intent_hits, target_ranks
from model.serving.incremental import IncrementalScorer
from model.playlogs.files import read_log
from model.serving.scorer import Predictions, Scorer, top_indices
from model.vocab import FIRST_REAL, Vocabularies
from schemas import ContractError, PlayEvent, decode_play_event, encode_play_event
from stream.arguments import positive_int, timestamp_ms
from stream.cli import UsageError
from stream.dataflow import ScoreRequest, StreamCounters, WrappedPartition, build_flow
from stream.report import Backtest, IntentSample, JudgmentLog, ReplayStats, SystemResult, summary, write_report
from stream.parsing import parse_duration
from stream.settings import StreamSettings

LOG_WIRE_FORMAT = "msgpack"  # how a log's events are encoded for the replay (the flow decodes them)
SOURCE_BATCH = 1000  # messages per source batch, as KafkaSource reads them
TOPIC_IDLE_TIMEOUT_S = 30.0  # reading a topic fails when nothing arrives for this long


# ---------------------------------------------------------------------------------------------
# The timeline: each user's events in event-time order, known before the replay
# ---------------------------------------------------------------------------------------------


@dataclass
class Timeline:
    events: list[PlayEvent]  # first copy of each (user_id, event_id), in arrival order
    successor: dict[tuple[str, str], int]  # (user_id, event_id) -> index in `events` of the user's next event
    messages: int  # what the replay will read: events, duplicates and undecodable messages
    duplicates: int
    unreadable: int
    out_of_order: int  # events older than an earlier event of the same user

    def next_event(self, event: PlayEvent) -> PlayEvent | None:
        index = self.successor.get((event.user_id, event.event_id))
        return None if index is None else self.events[index]

    def summary(self) -> dict:
        times = [event.ts for event in self.events]
        return {
            "messages": self.messages,
            "events": len(self.events),
            "users": len({event.user_id for event in self.events}),
            "duplicates": self.duplicates,
            "unreadable": self.unreadable,
            "out_of_order": self.out_of_order,
            "first_ts": min(times),
            "last_ts": max(times),
        }


def build_timeline(events: Iterable[PlayEvent]) -> Timeline:
    kept: list[PlayEvent] = []
    by_user: dict[str, list[int]] = defaultdict(list)
    seen: set[tuple[str, str]] = set()
    newest: dict[str, int] = {}
    duplicates = out_of_order = 0
    for event in events:
        key = (event.user_id, event.event_id)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        if event.ts < newest.get(event.user_id, event.ts):
            out_of_order += 1
        newest[event.user_id] = max(event.ts, newest.get(event.user_id, event.ts))
        by_user[event.user_id].append(len(kept))
        kept.append(event)
    successor = {}
    for indices in by_user.values():
        indices.sort(key=lambda i: kept[i].ts)  # stable: equal times keep arrival order, as the state does
        for earlier, later in zip(indices, indices[1:]):
            successor[(kept[earlier].user_id, kept[earlier].event_id)] = later
    return Timeline(kept, successor, len(kept) + duplicates, duplicates, 0, out_of_order)


# ---------------------------------------------------------------------------------------------
# Sources: a log file, or a bounded range of a topic, as the dataflow's input
# ---------------------------------------------------------------------------------------------


class LogSource(FixedPartitionedSource):
    """A log file as a one-partition source of the messages the Kafka source yields: topic = the
    file's path, partition 0, offset = the record's number (from 0), key = user_id, value = the event
    encoded in LOG_WIRE_FORMAT (the log reader has validated it; re-encoding keeps every field)."""

    def __init__(self, path: Path, batch_size: int = SOURCE_BATCH):
        self.path = path
        self.batch_size = batch_size

    def list_parts(self) -> list[str]:
        return [str(self.path)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> "_LogPartition":
        return _LogPartition(self.path, resume_state or 0, self.batch_size)


class _LogPartition(StatefulSourcePartition):
    def __init__(self, path: Path, start: int, batch_size: int):
        self.topic = str(path)
        self.events = read_log(path)
        self.records = islice(enumerate(self.events), start, None)
        self.next_offset = start
        self.batch_size = batch_size

    def next_batch(self) -> list[KafkaSourceMessage]:
        batch = [
            KafkaSourceMessage(event.user_id.encode(), encode_play_event(event, LOG_WIRE_FORMAT), self.topic,
                               partition=0, offset=offset)
            for offset, event in islice(self.records, self.batch_size)
        ]  # fmt: skip
        if not batch:
            raise StopIteration
        self.next_offset = batch[-1].offset + 1
        return batch

    def snapshot(self) -> int:
        return self.next_offset

    def close(self) -> None:
        self.events.close()


class LogReplay:
    """Replay a log file (JSONL or msgpack, optionally gzip; see model.playlogs.files)."""

    wire_format = LOG_WIRE_FORMAT

    def __init__(self, path: Path):
        self.path = Path(path)
        read_log(self.path).close()  # a missing file or an unknown suffix fails now, before models load

    def describe(self) -> dict:
        return {"log": str(self.path)}

    def timeline(self) -> Timeline:
        return build_timeline(read_log(self.path))  # a corrupt or empty log raises LogError

    def source(self) -> Source:
        return LogSource(self.path)


class TopicReplay:
    """Replay the events of a Kafka topic with event time in [start_ts, end_ts), up to the end of
    each partition that the timeline pass saw."""

    def __init__(self, brokers: str, topic: str, wire_format: str, kafka_config: Mapping[str, str],
                 start_ts: int | None, end_ts: int | None):
        self.brokers = brokers
        self.topic = topic
        self.wire_format = wire_format
        self.kafka_config = dict(kafka_config)
        self.start_ts = start_ts
        self.end_ts = end_ts
        self.ends: dict[int, int] | None = None  # partition -> end offset, set by timeline()

    def describe(self) -> dict:
        return {"topic": self.topic, "brokers": self.brokers, "format": self.wire_format,
                "from": self.start_ts, "to": self.end_ts}

    def in_range(self, ts: int) -> bool:
        return (self.start_ts is None or ts >= self.start_ts) and (self.end_ts is None or ts < self.end_ts)

    def timeline(self) -> Timeline:
        unreadable = 0

        def events() -> Iterator[PlayEvent]:
            nonlocal unreadable
            for value in self._read():
                try:
                    event = decode_play_event(value, self.wire_format)
                except ContractError:
                    unreadable += 1
                    continue
                if self.in_range(event.ts):
                    yield event

        timeline = build_timeline(events())
        timeline.unreadable = unreadable  # counted while build_timeline read the events
        timeline.messages += unreadable
        if not timeline.events:
            found = "holds no messages" if not any(self.ends.values()) and not unreadable else (
                f"holds no valid event with event time in {self._range_text()}")
            raise UsageError(f"topic {self.topic!r} at {self.brokers} {found}")
        return timeline

    def _range_text(self) -> str:
        start = "-inf" if self.start_ts is None else self.start_ts
        end = "+inf" if self.end_ts is None else self.end_ts
        return f"[{start}, {end}) ms"

    def _consumer_config(self) -> dict:
        return {
            "bootstrap.servers": self.brokers,
            "group.id": "intentstream-backtest",  # required by librdkafka; unused with assign()
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            # Tansu holds each fetch for fetch.wait.max.ms even with data waiting (notes/kafka_facts.md).
            "fetch.wait.max.ms": 10,
            **self.kafka_config,
        }

    def _read(self) -> Iterator[bytes]:
        """The value of every message up to the end of each partition as it is now (sets self.ends).

        The end is where the consumer reports reaching it (partition EOF, from the fetch answers),
        not the offsets a ListOffsets request reports: the embedded Tansu broker answers those with
        the start of the last record batch."""
        from confluent_kafka import Consumer, KafkaError, TopicPartition

        from stream.kafka.broker import BrokerUnavailable, fetch_metadata

        try:
            metadata = fetch_metadata(self.brokers, timeout=10.0, config=self.kafka_config)
        except BrokerUnavailable as error:
            raise UsageError(str(error)) from None
        if self.topic not in metadata.topics:
            raise UsageError(f"topic {self.topic!r} does not exist at {self.brokers}")
        partitions = sorted(metadata.topics[self.topic].partitions)
        consumer = Consumer(self._consumer_config())
        try:
            # Offset 0 resets to the earliest one kept (auto.offset.reset): faster than OFFSET_BEGINNING.
            consumer.assign([TopicPartition(self.topic, partition, 0) for partition in partitions])
            self.ends = {}
            last_arrival = time.monotonic()
            while len(self.ends) < len(partitions):
                messages = consumer.consume(SOURCE_BATCH, 0.5)
                if messages:
                    last_arrival = time.monotonic()
                elif time.monotonic() - last_arrival > TOPIC_IDLE_TIMEOUT_S:
                    raise UsageError(f"reading topic {self.topic!r}: nothing arrived for {TOPIC_IDLE_TIMEOUT_S:g}s")
                for message in messages:
                    error = message.error()
                    if error is not None and error.code() == KafkaError._PARTITION_EOF:
                        self.ends.setdefault(message.partition(), message.offset())
                    elif error is not None:
                        raise UsageError(f"reading topic {self.topic!r}: {error.str()}")
                    elif message.offset() < self.ends.get(message.partition(), message.offset() + 1):
                        yield message.value()
        finally:
            consumer.close()

    def _keep(self, message: KafkaSourceMessage) -> bool:
        try:
            return self.in_range(decode_play_event(message.value, self.wire_format).ts)
        except ContractError:
            return True  # no event time: the dataflow dead-letters it

    def source(self) -> Source:
        if self.ends is None:
            raise RuntimeError("read the timeline first: it finds where each partition ends")
        kafka = KafkaSource(
            self.brokers.split(","),
            [self.topic],
            tail=False,
            starting_offset=0,  # with auto.offset.reset=earliest: faster than OFFSET_BEGINNING (kafka_facts.md)
            add_config={"auto.offset.reset": "earliest", "fetch.wait.max.ms": "10", "statistics.interval.ms": "0",
                        **self.kafka_config},
        )
        return TopicRangeSource(kafka, self.ends, self._keep)


class TopicRangeSource(FixedPartitionedSource):
    """The live path's KafkaSource, cut to a range: each partition stops at its end offset, and
    only the messages `keep` accepts go on."""

    def __init__(self, kafka: KafkaSource, ends: dict[int, int], keep):
        self.kafka = kafka
        self.ends = ends
        self.keep = keep

    def list_parts(self) -> list[str]:
        return self.kafka.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> "_UpToEnd":
        partition = int(for_part.split("-", 1)[0])  # KafkaSource names its partitions "{partition}-{topic}"
        return _UpToEnd(self.kafka.build_part(step_id, for_part, resume_state), self.ends[partition], self.keep)


class _UpToEnd(WrappedPartition):
    def __init__(self, inner: StatefulSourcePartition, end: int, keep):
        super().__init__(inner)
        self.end = end
        self.keep = keep
        self.done = False

    def next_batch(self) -> list[KafkaSourceMessage]:
        if self.done:
            raise StopIteration
        batch = self.inner.next_batch()  # raises StopIteration at the end of the partition
        if any(message.offset >= self.end - 1 for message in batch):
            self.done = True
        return [message for message in batch if message.offset < self.end and self.keep(message)]


class DiscardSink(DynamicSink):
    """A backtest publishes nothing: the judge has seen every update in the score step."""

    def build(self, step_id: str, worker_index: int, worker_count: int) -> "_Discard":
        return _Discard()


class _Discard(StatelessSinkPartition):
    def write_batch(self, items) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# Judging
# ---------------------------------------------------------------------------------------------


def _rows_of(predictions: Predictions, rows: list[int]) -> Predictions:
    def take(values):
        return None if values is None else values[rows]

    return Predictions(
        item_scores=predictions.item_scores[rows],
        intent_probs={task: probs[rows] for task, probs in predictions.intent_probs.items()},
        intent_embedding=take(predictions.intent_embedding),
        intent_weights=take(predictions.intent_weights),
    )


class ModelJudge:
    """The score step's observer: judges each update whose user's next event is in the window."""

    def __init__(self, name: str, scorer: Scorer, timeline: Timeline, score_from: int | None, top_k: int):
        self.scorer = scorer
        self.timeline = timeline
        self.score_from = score_from
        self.top_k = top_k
        tasks = tuple(scorer.config.intent_tasks)
        self.log = JudgmentLog(name, "model", tasks, len(scorer.vocab.items) - FIRST_REAL)
        self.intents = IntentSample(tasks)

    def judged_event(self, event: PlayEvent) -> PlayEvent | None:
        after = self.timeline.next_event(event)
        if after is None or (self.score_from is not None and after.ts < self.score_from):
            return None
        return after

    def __call__(self, requests: list[ScoreRequest], predictions: Predictions) -> None:
        chosen, judged = [], []
        for position, request in enumerate(requests):
            after = self.judged_event(request.event)
            if after is not None:
                chosen.append(position)
                judged.append(after)
        if not chosen:
            return
        picked = _rows_of(predictions, chosen)
        targets = np.stack([self.scorer.featurize(event) for event in judged])
        ranks = target_ranks(picked.item_scores, targets["item"].astype(np.int64))
        hits = intent_hits(picked, targets)
        for row, (position, event) in enumerate(zip(chosen, judged)):
            self.log.add(requests[position].event, event, ranks[row], {t: h[row] for t, h in hits.items()},
                         top_indices(picked.item_scores[row], self.top_k))
        if picked.intent_embedding is not None and picked.intent_weights is not None:
            self.intents.add(picked.intent_embedding, picked.intent_weights)


def judge_baselines(timeline: Timeline, vocab: Vocabularies, history_len: int, score_from: int | None,
                    top_k: int) -> list[JudgmentLog]:
    """Prequential popularity and recency, judged on every event with a next event in the window.

    Popularity counts every play at or before the scored event's time (so plays at the same time
    count whatever order they arrived in); recency reads the user's last `history_len` items."""
    n_items = len(vocab.items)
    popularity = Popularity([], n_items)
    recency = Recency(popularity)
    logs = {name: JudgmentLog(name, "baseline", (), n_items - FIRST_REAL) for name in ("popularity", "recency")}
    recent_items: dict[str, deque] = defaultdict(lambda: deque(maxlen=history_len))
    events = timeline.events
    in_time_order = sorted(range(len(events)), key=lambda i: events[i].ts)  # stable: ties keep arrival order
    for _, same_time in groupby(in_time_order, key=lambda i: events[i].ts):
        same_time = [events[i] for i in same_time]
        popularity.add([vocab.items.lookup(event.item_id) for event in same_time])
        for event in same_time:
            recent_items[event.user_id].append(vocab.items.lookup(event.item_id))
            after = timeline.next_event(event)
            if after is None or (score_from is not None and after.ts < score_from):
                continue
            history = np.array(recent_items[event.user_id], dtype=[("item", np.int64)])
            target = np.array([vocab.items.lookup(after.item_id)], dtype=np.int64)
            for name, baseline in (("popularity", popularity), ("recency", recency)):
                item_scores = baseline.predict([history]).item_scores
                (rank,) = target_ranks(item_scores, target)
                logs[name].add(event, after, rank, {}, top_indices(item_scores[0], top_k))
    return list(logs.values())


# ---------------------------------------------------------------------------------------------
# Replaying
# ---------------------------------------------------------------------------------------------


class ProgressCounters(StreamCounters):
    """The stream's counters, also moving a progress bar by every message read."""

    def __init__(self, bar: tqdm):
        super().__init__(log_every_s=3600.0)
        self.bar = bar

    def count_event(self, step_id: str, message) -> None:
        super().count_event(step_id, message)
        self.bar.update(1)


def replay(replay_source, timeline: Timeline, scorer: Scorer, judge: ModelJudge, settings: StreamSettings,
           progress: bool) -> ReplayStats:
    """One pass of the whole input through the live dataflow, judged as it goes. The flow scores
    incrementally, as live (eager, on the CPU, a fresh cache), with `scorer`'s model."""
    from bytewax.run import cli_main

    with tqdm(total=timeline.messages, desc=judge.log.system, unit="ev", disable=None if progress else True,
              dynamic_ncols=True) as bar:
        counters = ProgressCounters(bar)
        serving = IncrementalScorer(scorer)
        flow = build_flow(settings, lambda _: serving, source=replay_source.source(), sink=DiscardSink(),
                          counters=counters, observe_scores=judge)
        started = time.perf_counter()
        cli_main(flow, workers_per_process=1)
        wall_s = time.perf_counter() - started
    if counters.events_in != timeline.messages:
        print(f"intentstream backtest: warning: the replay read {counters.events_in} messages, the pass before it "
              f"{timeline.messages}: did the input change meanwhile?", file=sys.stderr)
    return ReplayStats(counters.events_in, counters.updates_out, counters.duplicates, dict(counters.dead_letters),
                       wall_s)


def run_backtest(
    replay_source: LogReplay | TopicReplay,
    models: Mapping[str, tuple[Path, Scorer]],
    *,
    score_from: int | None = None,
    top_k: int = 10,
    batch_size: int = 256,
    lateness_s: float = 3600.0,
    ttl_s: float = 30 * 86_400.0,
    progress: bool = True,
) -> Backtest:
    """Replay `replay_source` once per model (name -> (directory, loaded scorer)) and judge every
    update; the first model is the reference and its catalogue is the baselines'."""
    timeline = replay_source.timeline()
    counts = timeline.summary()
    if not any(
        (score_from is None or timeline.events[index].ts >= score_from) for index in timeline.successor.values()
    ):
        where = "" if score_from is None else f" at or after --score-from {score_from}"
        raise UsageError(f"nothing to judge: no user has an event{where} that follows an earlier one of theirs "
                         f"(the input spans {counts['first_ts']}..{counts['last_ts']} ms)")
    backtest = Backtest(
        source=replay_source.describe(),
        input=counts,
        settings={"score_from": score_from, "top_k": top_k, "batch_size": batch_size, "lateness_s": lateness_s,
                  "ttl_s": ttl_s, "workers": 1},
    )
    for name, (directory, scorer) in models.items():
        settings = StreamSettings(brokers="", model_dir=directory, format=replay_source.wire_format,
                                  latest_topic=None, batch_size=batch_size, top_k=top_k, ttl_s=ttl_s,
                                  lateness_s=lateness_s, stop_at_end=True)
        judge = ModelJudge(name, scorer, timeline, score_from, top_k)
        stats = replay(replay_source, timeline, scorer, judge, settings, progress)
        model = {"name": scorer.model_ref.name, "version": scorer.model_ref.version, "directory": str(directory)}
        backtest.systems.append(SystemResult(judge.log, model, stats, judge.intents if judge.intents.seen else None))
    _, reference = next(iter(models.values()))
    for log in judge_baselines(timeline, reference.vocab, reference.history_len, score_from, top_k):
        backtest.systems.append(SystemResult(log))
    return backtest


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def add_backtest_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("log", nargs="?", type=Path, default=None,
                        help="play log to replay: .jsonl or .msgpack, optionally .gz (or use --topic)")
    parser.add_argument("--model", dest="models", action="append", type=Path, required=True, metavar="DIR",
                        help="model directory made by `intentstream train`; repeat to compare models (the first "
                             "is the reference)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="report directory: report.json, report.md, PNG plots, judgments.jsonl")
    parser.add_argument("--score-from", type=timestamp_ms, default=None, metavar="TS",
                        help="replay every event but judge only updates whose next event is at or after TS "
                             "(epoch ms or ISO date, UTC)")
    parser.add_argument("--top-k", type=positive_int, default=10, metavar="K", help="K of HR@K, NDCG@K, MRR@K")

    kafka = parser.add_argument_group("replaying a Kafka topic instead of a log")
    kafka.add_argument("--topic", default=None, help="topic of play events")
    kafka.add_argument("--from", dest="from_ts", type=timestamp_ms, default=None, metavar="TS",
                       help="first event time to replay (epoch ms or ISO date; inclusive)")
    kafka.add_argument("--to", dest="to_ts", type=timestamp_ms, default=None, metavar="TS",
                       help="event time to stop at (exclusive)")
    kafka.add_argument("--brokers", default=None, metavar="HOST:PORT",
                       help="Kafka bootstrap servers [env: INTENTSTREAM_BROKERS]")
    kafka.add_argument("--kafka-config", type=Path, default=None, metavar="FILE",
                       help="properties file of Kafka client settings (INTENTSTREAM_KAFKA_* override it)")
    kafka.add_argument("--format", choices=("json", "msgpack"), default="msgpack",
                       help="encoding of the topic (default: msgpack)")

    stream = parser.add_argument_group("the dataflow's settings (as `intentstream run`)")
    stream.add_argument("--batch-size", type=positive_int, default=256, metavar="N",
                        help="most users scored together (default: 256)")
    stream.add_argument("--lateness", type=duration, default=3600.0, metavar="DURATION",
                        help="an event older than its user's newest by more than this is a dead letter (default: 1h)")
    stream.add_argument("--ttl", type=duration, default=30 * 86_400.0, metavar="DURATION",
                        help="forget users idle longer than this, in event time (default: 30d)")


def duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _replay_source(args: argparse.Namespace) -> LogReplay | TopicReplay:
    if (args.log is None) == (args.topic is None):
        raise UsageError("give either a log file or --topic TOPIC, not both" if args.log else
                         "nothing to replay: give a log file or --topic TOPIC")
    if args.topic is None:
        if args.from_ts is not None or args.to_ts is not None:
            raise UsageError("--from and --to select a range of a topic; cut a log file with --score-from instead")
        return LogReplay(args.log)
    if args.from_ts is not None and args.to_ts is not None and args.from_ts >= args.to_ts:
        raise UsageError(f"empty range: --from {args.from_ts} is not before --to {args.to_ts}")
    from stream.kafka.config import KafkaConfigError, kafka_client

    try:
        brokers, kafka_config = kafka_client(args.brokers or os.environ.get("INTENTSTREAM_BROKERS") or None,
                                             args.kafka_config, os.environ)
    except KafkaConfigError as error:
        raise UsageError(str(error)) from None
    if not brokers:
        raise UsageError("--topic needs --brokers HOST:PORT (or INTENTSTREAM_BROKERS)")
    return TopicReplay(brokers, args.topic, args.format, kafka_config, args.from_ts, args.to_ts)


def model_names(directories: Sequence[Path]) -> list[str]:
    """Short names for the report: the directories' names, or their paths where names repeat."""
    names = [directory.name or str(directory) for directory in directories]
    if len(set(names)) < len(names):
        names = [str(directory) for directory in directories]
    if len(set(names)) < len(names):
        raise UsageError("the same --model directory is given twice")
    return names


def backtest_command(args: argparse.Namespace) -> int:
    replay_source = _replay_source(args)
    if args.lateness < 0 or args.ttl <= 0 or args.ttl < args.lateness:
        raise UsageError("--ttl must be positive and at least --lateness, which must not be negative")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is a file; give a directory")
    models = {name: (directory, Scorer.load(directory))
              for name, directory in zip(model_names(args.models), args.models)}
    result = run_backtest(replay_source, models, score_from=args.score_from, top_k=args.top_k,
                          batch_size=args.batch_size, lateness_s=args.lateness, ttl_s=args.ttl)
    data = write_report(result, args.out)
    print(summary(data, result.top_k))
    print(f"report written to {args.out}")
    return 0
