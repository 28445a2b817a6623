"""The streaming scorer: a Bytewax dataflow from play events to intent updates.

    plays --decode--> bad bytes ------------------------------------------+--> dead-letter topic
            |                                                              |
            +--> key_by_user --> remember (UserState) --> late events ----+
                                    |
                                    +--> score (micro-batches across users) --> encode --> updates topic
                                                                                   +--> latest topic

Every step is a plain function or a small class, tested on its own; `build_flow` only wires them.
One sink writes all three topics: each outgoing `KafkaSinkMessage` names its topic, and it returns
only once the brokers have acknowledged every message (stream.kafka.sink): a failed delivery stops
the flow before its next snapshot. A broker outage longer than `max_broker_outage_s` stops it too.

Order: Bytewax reads each Kafka partition in offset order and interleaves partitions, so a user's
events keep their topic order when producers key them by user_id (one partition per user). The
per-user state then orders them by event time (see `stream.state`).

Output is at-least-once: after a restart from the recovery store, updates of the last unfinished
epoch are written again; consumers dedup by (user_id, event_id).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from typing import Callable

import bytewax.operators as op
import numpy as np
from bytewax.connectors.kafka import KafkaSinkMessage, KafkaSourceMessage
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulLogic
from bytewax.outputs import Sink
from confluent_kafka import OFFSET_BEGINNING

from model.features import slot_title
from model.serving.incremental import IncrementalScorer, rounds
from model.serving.scorer import Predictions, Scorer
from model.vocab import UNKNOWN
from schemas import (
    FROM_FUTURE,
    LATE,
    ContractError,
    DeadLetter,
    ModelRef,
    PlayEvent,
    ScoreColumns,
    decode_play_event,
    encode_dead_letter,
    encode_intent_updates,
)
from stream.held_users import HeldUsers
from stream.kafka.health import BrokerHealth
from stream.kafka.sink import CheckedKafkaSink
from stream.kafka.source import WatchedKafkaSource
from stream.metrics import StreamMetrics
from stream.stop import Stop
from stream.settings import StreamSettings
from stream.state import StateConfig, UserSnapshot, UserState, Verdict, default_capacity

log = logging.getLogger(__name__)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# ---------------------------------------------------------------------------------------------
# What flows between the steps
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a message came from, kept so that a dead letter can say so and carry its bytes."""

    topic: str | None
    partition: int | None
    offset: int | None
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class Play:
    """A valid play event and the message it came in."""

    event: PlayEvent
    origin: Origin


@dataclass(frozen=True, slots=True)
class ScoreRequest:
    event: PlayEvent
    history: np.ndarray  # the user's rows up to and including this event, oldest first
    newest: bool  # the event is the user's newest so far (its update also goes to the latest topic)
    unknown_titles: tuple[str, ...] = ()  # the titles of the user's unknown-title slots (model.features.slot_title)


@dataclass(frozen=True, slots=True)
class ScoredChunk:
    """Score requests scored together, and the model's answers to them as arrays (row i answers
    events[i]): the updates, short of their encoding."""

    events: list[PlayEvent]
    newest: list[bool]  # as in ScoreRequest
    model: ModelRef
    scored_at: int
    scores: ScoreColumns


def dead_letter(origin: Origin, code: str, detail: str) -> DeadLetter:
    return DeadLetter(
        code=code,
        detail=detail,
        source_topic=origin.topic,
        partition=origin.partition,
        offset=origin.offset,
        key=origin.key,
        value=origin.value if origin.value is not None else b"",
        failed_at=now_ms(),
    )


# ---------------------------------------------------------------------------------------------
# The steps
# ---------------------------------------------------------------------------------------------


def decode(message: KafkaSourceMessage, fmt: str) -> Play | DeadLetter:
    """Kafka message -> a valid PlayEvent, or a dead letter saying what is wrong with it."""
    origin = Origin(message.topic, message.partition, message.offset, message.key, message.value)
    try:
        return Play(decode_play_event(message.value, fmt), origin)
    except ContractError as error:
        return dead_letter(origin, error.code, str(error))


def is_play(item: Play | DeadLetter) -> bool:
    return isinstance(item, Play)


def key_by_user(play: Play) -> str:
    return play.event.user_id


@dataclass(frozen=True)
class Remembering:
    """What every user's RememberUser shares: one object for all of them (the step holds a
    RememberUser per user, so whatever each one holds itself is memory per user)."""

    config: StateConfig
    featurize: Callable[[PlayEvent], np.ndarray]
    counters: "StreamCounters"
    n_items: int  # the model's catalogue, after which the users' unknown-title slots come
    unknown_slots: int
    users_per_worker: int  # the process's --max-users shared among its worker threads
    _held: threading.local = field(default_factory=threading.local, repr=False, compare=False)

    @classmethod
    def of(cls, config: StateConfig, scorer: Scorer, counters: "StreamCounters",
           users_per_worker: int = StreamSettings.max_users) -> "Remembering":  # fmt: skip
        return cls(config, scorer.featurize, counters, scorer.config.n_items, scorer.config.unknown_slots,
                   users_per_worker)  # fmt: skip

    @property
    def keep_for_s(self) -> float:
        return self.config.ttl_ms / 1000.0

    def held_users(self) -> HeldUsers:
        """The users held by the calling worker thread (stream.held_users)."""
        held = getattr(self._held, "users", None)
        if held is None:
            held = self._held.users = HeldUsers(self.users_per_worker, self.counters.count_users)
        return held


# What RememberUser snapshots, and resumes from: the user's state (with the titles of its
# unknown-title slots, when it has any), or EVICTED. Plain data, like the state itself.
Resume = UserSnapshot | tuple[UserSnapshot, tuple[str, ...]] | tuple[()]
EVICTED: tuple[()] = ()  # the logic of an evicted user, snapshotted before it discarded itself


class RememberUser(StatefulLogic):
    """The keyed step: one instance per user, holding that user's UserState.

    Emits a ScoreRequest for each accepted event, a `late` dead letter for a late one, a
    `from_future` one for an event further ahead of the wall clock than the allowed skew (it would
    make every later real event of the user late), and nothing for a duplicate (counted).

    A worker holds at most its share of `--max-users`; beyond it the least recently active user is
    evicted (stream.held_users): its state is dropped at once (`state` becomes None), and the empty
    logic discards itself at its next callback, which `notify_at` asks for early while the table is
    full. A user who comes back after that starts afresh, as after the TTL.

    Users idle longer than the TTL are forgotten in two ways:

    - exactly, in event time: `UserState.add` starts afresh when an event comes more than the TTL
      after the user's newest one, so results never depend on when memory was reclaimed;
    - to reclaim memory, in processing time: `notify_at` asks Bytewax to call `on_notify` the TTL
      after the user's last event was processed (or earlier, see above: a user woken early and still
      held stays), and `on_notify` discards the state. Live, event
      time and processing time advance together, so the two agree unless the flow falls further
      behind its input while the user is idle. A replay runs faster than event time, so it keeps
      idle users longer than the TTL. A restored state gets a whole new TTL, so a process that was
      down for a while does not evict everyone when it comes back.
      (Bytewax 0.21.1 scans every scheduled key on each activation of the step: a cost per
      activation that grows with the users held by a worker.)
    """

    def __init__(self, shared: Remembering, resume: Resume | None):
        self.shared = shared
        self.titles: tuple[str, ...] = ()  # the user's titles the vocabulary lacks, by slot
        self.forget_at = time.time() + shared.keep_for_s  # epoch seconds: a float is half a datetime's size
        self.state: UserState | None = None  # None: evicted, see the class docstring
        if resume == EVICTED:
            return
        if resume is not None and not isinstance(resume[0], bytes):  # a user with unknown titles
            resume, self.titles = resume
        self.state = UserState(shared.config) if resume is None else UserState.restore(shared.config, resume)
        shared.held_users().touch(self)

    def on_item(self, play: Play) -> tuple[list[ScoreRequest | DeadLetter], bool]:
        event, shared = play.event, self.shared
        ahead_ms = event.ts - now_ms()
        max_clock_skew_ms = shared.config.max_clock_skew_ms
        if ahead_ms > max_clock_skew_ms:
            detail = (f"field 'ts': {event.ts} is {ahead_ms / 1000:.0f} s ahead of this process's clock "
                      f"(allowed clock skew {max_clock_skew_ms / 1000:g} s)")
            return [dead_letter(play.origin, FROM_FUTURE, detail)], StatefulLogic.RETAIN
        if self.state is None:  # evicted, and back
            self.state = UserState(shared.config)
        shared.held_users().touch(self)
        row, titles, taken = shared.featurize(event), self.titles, None
        if row["item"] == UNKNOWN:  # a title released after training: the pointer reaches it through a slot
            in_window = self.state.rows()["item"][-shared.config.context :]
            titles, taken = slot_title(row, event.item_id, titles, in_window, shared.n_items, shared.unknown_slots)
        outcome = self.state.add(row, event.event_id, event.ts, None if taken is None else (taken, UNKNOWN))
        self.forget_at = time.time() + shared.keep_for_s
        if outcome.verdict is Verdict.ADDED:
            self.titles = titles
            return [ScoreRequest(event, outcome.history, outcome.newest, titles)], StatefulLogic.RETAIN
        if outcome.verdict is Verdict.LATE:
            return [dead_letter(play.origin, LATE, outcome.reason)], StatefulLogic.RETAIN
        shared.counters.count_duplicate()
        return [], StatefulLogic.RETAIN

    @property
    def active_at(self) -> float:
        """When its user's last event (or its restoring) was processed, in epoch seconds."""
        return self.forget_at - self.shared.keep_for_s

    def evict(self) -> None:
        self.state, self.titles = None, ()

    def on_notify(self) -> tuple[list, bool]:
        if self.state is None:
            return [], StatefulLogic.DISCARD
        if time.time() < self.forget_at:  # woken early to see whether it was evicted: it was not
            return [], StatefulLogic.RETAIN
        self.shared.held_users().forget(self)
        return [], StatefulLogic.DISCARD

    def notify_at(self) -> datetime:
        now = time.time()
        if self.state is None:
            return datetime.fromtimestamp(now, timezone.utc)
        evicted_by = self.shared.held_users().eviction_due(now)
        wake = self.forget_at if evicted_by is None else min(self.forget_at, evicted_by)
        return datetime.fromtimestamp(wake, timezone.utc)

    def snapshot(self) -> Resume:
        if self.state is None:
            return EVICTED
        return (self.state.snapshot(), self.titles) if self.titles else self.state.snapshot()


def is_score_request(item: ScoreRequest | DeadLetter) -> bool:
    return isinstance(item, ScoreRequest)


Observer = Callable[[list[ScoreRequest], Predictions], None]


def score_chunks(requests: list[ScoreRequest], batch_size: int) -> list[list[ScoreRequest]]:
    """`requests` in chunks of at most `batch_size`, one model call each: each user's first event
    first, then the users' second ones, and so on, which keeps every user's events in order.

    Why: Bytewax hands over the keyed step's output grouped by user, and the scorer scores a user's
    events one round after another, so chunks cut in that order would hold a few users with many
    events each: many small model calls instead of a few large ones."""
    in_rounds = [requests[i] for round_ in rounds([request.event.user_id for request in requests]) for i in round_]
    return [in_rounds[start : start + batch_size] for start in range(0, len(in_rounds), batch_size)]


class ScoreBatch:
    """Scores whatever Bytewax hands over at once (events of many users), `batch_size` at a time,
    with the serving scorer: each user's new event from the rows cached for the user's earlier ones
    when they are cached (IncrementalScorer), else from the history. One ScoredChunk per model call.

    `observe`, when given, is called with each chunk of requests and the model's full predictions
    for them (every catalogue item's score, not only the top-k an update carries): backtests judge
    updates with it. `counters`, when given, hear of each chunk's size and scoring time."""

    def __init__(self, scorer: IncrementalScorer, batch_size: int, top_k: int, observe: Observer | None = None,
                 counters: StreamCounters | None = None):  # fmt: skip
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        self.scorer = scorer
        self.batch_size = batch_size
        self.top_k = top_k
        self.observe = observe
        self.counters = counters

    def __call__(self, requests: list[ScoreRequest]) -> list[ScoredChunk]:
        # Every title these events first show is registered before any of them is scored: an update
        # ranks the new titles first seen by its event's time, however the stream was batched.
        self.scorer.new_titles.register_plays([r.event for r in requests], [r.history[-1] for r in requests])
        scored = []
        for chunk in score_chunks(requests, self.batch_size):
            events = [request.event for request in chunk]
            titles = [request.unknown_titles for request in chunk]
            started = time.perf_counter()
            predictions = self.scorer.predict_users([event.user_id for event in events], [r.history for r in chunk],
                                                    titles)  # fmt: skip
            if self.observe is not None:
                self.observe(chunk, predictions)
            scores = self.scorer.score_columns(predictions, top_k=self.top_k, unknown_titles=titles)
            if self.counters is not None:
                self.counters.count_scored_batch(len(chunk), time.perf_counter() - started)
            newest = [request.newest for request in chunk]
            scored.append(ScoredChunk(events, newest, self.scorer.model_ref, now_ms(), scores))
        return scored


class UpdateMessages:
    """A scored chunk -> its updates' messages on the updates topic, all encoded at once, and on the
    latest topic for each event that is its user's newest (so that the compacted topic keeps each
    user's newest state even when a late event is scored after it). Keyed by user_id."""

    def __init__(self, fmt: str, updates_topic: str, latest_topic: str | None):
        self.fmt = fmt
        self.updates_topic = updates_topic
        self.latest_topic = latest_topic

    def __call__(self, chunk: ScoredChunk) -> list[KafkaSinkMessage]:
        values = encode_intent_updates(chunk.events, chunk.model, chunk.scored_at, chunk.scores, self.fmt)
        messages = []
        for event, newest, value in zip(chunk.events, chunk.newest, values):
            key = event.user_id.encode()
            messages.append(KafkaSinkMessage(key, value, topic=self.updates_topic))
            if newest and self.latest_topic is not None:
                messages.append(KafkaSinkMessage(key, value, topic=self.latest_topic))
        return messages


def dead_letter_message(letter: DeadLetter, topic: str) -> KafkaSinkMessage:
    """Keyed like the original message, so a replay of the dead letter lands where it would have."""
    return KafkaSinkMessage(letter.key, encode_dead_letter(letter), topic=topic)


# ---------------------------------------------------------------------------------------------
# Counters
# ---------------------------------------------------------------------------------------------


class StreamCounters:
    """Totals of this process since it started, logged every `log_every_s` seconds.

    Once the flow has drained, `events_in == updates_out + duplicates + sum(dead_letters)`:
    every message read is accounted for exactly once. Worker threads share one instance.
    With `metrics`, every count also goes to those Prometheus metrics (see stream/metrics.py),
    with the sizes and times of scored batches and each update's lag behind its event.
    """

    def __init__(self, log_every_s: float = 30.0, *, metrics: StreamMetrics | None = None):
        self.events_in = 0
        self.updates_out = 0  # on the updates topic (the latest topic repeats some of them)
        self.duplicates = 0
        self.dead_letters: Counter[str] = Counter()  # by code
        self.offsets_lost = 0  # input offsets deleted by the broker's retention before they were read
        self.users_held = 0
        self.users_evicted = 0  # forgotten to stay within --max-users (stream.held_users)
        self.model_calls = 0  # chunks scored together
        self.scoring_s = 0.0  # their time: the model and its outputs to arrays
        self.metrics = metrics
        self.log_every_s = log_every_s
        self._next_log = time.monotonic() + log_every_s
        self._lock = threading.Lock()

    def count_event(self, _step_id: str, _message) -> None:
        with self._lock:
            self.events_in += 1
        if self.metrics is not None:
            self.metrics.events_in.inc()
        self._maybe_log()

    def count_updates(self, _step_id: str, chunk: ScoredChunk) -> None:
        with self._lock:
            self.updates_out += len(chunk.events)
        if self.metrics is not None:
            for event in chunk.events:
                self.metrics.update_written(event.ts, chunk.scored_at)

    def count_dead_letter(self, _step_id: str, letter: DeadLetter) -> None:
        with self._lock:
            self.dead_letters[letter.code] += 1
        if self.metrics is not None:
            self.metrics.dead_letters.labels(letter.code).inc()

    def count_duplicate(self) -> None:
        with self._lock:
            self.duplicates += 1
        if self.metrics is not None:
            self.metrics.duplicates.inc()

    def count_users(self, held_change: int, evicted: int) -> None:
        with self._lock:
            self.users_held += held_change
            self.users_evicted += evicted
        if self.metrics is not None:
            self.metrics.users_held.inc(held_change)
            self.metrics.users_evicted.inc(evicted)

    def count_offsets_lost(self, topic: str, partition: int, count: int) -> None:
        """Offsets of the input that the broker deleted before they were read (stream.kafka.source)."""
        with self._lock:
            self.offsets_lost += count
        if self.metrics is not None:
            self.metrics.offsets_lost.labels(topic, str(partition)).inc(count)

    def count_scored_batch(self, size: int, seconds: float) -> None:
        with self._lock:
            self.model_calls += 1
            self.scoring_s += seconds
        if self.metrics is not None:
            self.metrics.scored_batch(size, seconds)

    def summary(self) -> str:
        with self._lock:
            dead = ", ".join(f"{code}={n}" for code, n in sorted(self.dead_letters.items())) or "none"
            lost = f", offsets lost to retention {self.offsets_lost}" if self.offsets_lost else ""
            return (
                f"events in {self.events_in}, updates out {self.updates_out}, "
                f"duplicates dropped {self.duplicates}, dead letters {dead}{lost}, "
                f"users held {self.users_held}, evicted {self.users_evicted}"
            )

    def _maybe_log(self) -> None:
        now = time.monotonic()
        if now >= self._next_log:
            self._next_log = now + self.log_every_s
            log.info("%s", self.summary())


# ---------------------------------------------------------------------------------------------
# Wiring
# ---------------------------------------------------------------------------------------------


def broker_health(settings: StreamSettings, counters: "StreamCounters") -> BrokerHealth:
    gauge = counters.metrics.kafka_up if counters.metrics is not None else None
    return BrokerHealth(settings.brokers, settings.kafka_config, settings.max_broker_outage_s, gauge)


def kafka_source(settings: StreamSettings, health: BrokerHealth, counters: "StreamCounters",
                 stop: Stop | None) -> WatchedKafkaSource:  # fmt: skip
    """The input topic from its beginning on a fresh start (a resumed run continues from the
    offsets in its recovery store); with `stop_at_end`, each partition stops at the end it sees,
    and every partition ends once `stop` is set. Offsets the broker no longer retains are lost
    loudly or stop the flow, as `settings.on_offset_gap` says (stream.kafka.source)."""
    return WatchedKafkaSource(health, [settings.input_topic], tail=not settings.stop_at_end,
                              starting_offset=OFFSET_BEGINNING, on_offset_gap=settings.on_offset_gap,
                              offsets_lost=counters.count_offsets_lost, stop=stop)  # fmt: skip


def state_config(settings: StreamSettings, scorer: IncrementalScorer | Scorer) -> StateConfig:
    """Keep `settings.history` rows per user, or by default what the model reads plus room for
    late events. A history shorter than the model reads makes the model read only that much."""
    capacity = settings.history or default_capacity(scorer.history_len)
    return StateConfig(
        row_dtype=scorer.row_dtype,
        context=min(scorer.history_len, capacity),
        capacity=capacity,
        lateness_ms=round(settings.lateness_s * 1000),
        ttl_ms=round(settings.ttl_s * 1000),
        max_clock_skew_ms=round(settings.max_clock_skew_s * 1000),
    )


def build_flow(
    settings: StreamSettings,
    scorer: IncrementalScorer,
    *,
    source: Source | None = None,
    sink: Sink | None = None,
    counters: StreamCounters | None = None,
    observe_scores: Observer | None = None,
    stop: Stop | None = None,
) -> Dataflow:
    """The dataflow `intentstream run` executes, scoring with `scorer` (the serving scorer, made by
    model.serving.incremental.load_serving_scorer; every worker thread of this process shares it
    and its cache). Reads and writes the Kafka topics of `settings` unless another `source` (of
    KafkaSourceMessage) and `sink` (of KafkaSinkMessage) are given; both Kafka ends report to one
    BrokerHealth (stream.kafka.health), and the sink checks every delivery (stream.kafka.sink).
    `observe_scores` sees every scored chunk with its full predictions (see ScoreBatch). Once
    `stop` is set (a signal: stream.service.signals), the Kafka input ends and the flow finishes.
    """
    config = state_config(settings, scorer)
    counters = counters if counters is not None else StreamCounters()
    health = broker_health(settings, counters)

    flow = Dataflow("intentstream")
    source = source if source is not None else kafka_source(settings, health, counters, stop)
    messages = op.input("plays", flow, source)
    messages = op.inspect("count_events", messages, counters.count_event)
    decoded = op.branch("valid", op.map("decode", messages, partial(decode, fmt=settings.format)), is_play)
    by_user = op.key_on("key_by_user", decoded.trues, key_by_user)
    remembering = Remembering.of(config, scorer, counters, settings.max_users // settings.workers)
    remembered = op.stateful("remember", by_user, partial(RememberUser, remembering))
    in_time = op.branch("in_time", op.key_rm("unkey", remembered), is_score_request)
    score = ScoreBatch(scorer, settings.batch_size, settings.top_k, observe_scores, counters)
    scored = op.flat_map_batch("score", in_time.trues, score)
    scored = op.inspect("count_updates", scored, counters.count_updates)
    updates = op.flat_map(
        "encode", scored, UpdateMessages(settings.format, settings.output_topic, settings.latest_topic)
    )
    dead_letters = op.merge("dead_letters", decoded.falses, in_time.falses)
    dead_letters = op.inspect("count_dead_letters", dead_letters, counters.count_dead_letter)
    dlq = op.map("encode_dead_letter", dead_letters, partial(dead_letter_message, topic=settings.dlq_topic))
    op.output("publish", op.merge("outgoing", updates, dlq), sink if sink is not None else CheckedKafkaSink(health, stop))
    return flow
