"""The dataflow's steps one by one, then the whole flow on in-memory input (no Kafka).

The model is real: conftest's `tiny_model_dir`, a tiny IntentRec (history_len 11) trained for one
epoch on a small synthetic world.
"""
from __future__ import annotations

import dataclasses
import pickle
import random
import time
import tracemalloc
import weakref
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from bytewax.connectors.kafka import KafkaSinkMessage, KafkaSourceMessage
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.operators import StatefulLogic
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main
from tests.model.serving.test_new_titles import scorer_that_saw

from model.features import slot_history
from model.playlogs.synth import generate_world
from model.serving.incremental import IncrementalScorer, load_serving_scorer
from model.serving.retrieval import CandidateRetriever, ExactSearch, item_vectors
from model.serving.scorer import Scorer, Scores
from model.vocab import UNKNOWN
from schemas import (
    FROM_FUTURE,
    LATE,
    ContractError,
    MAX_MESSAGE_BYTES,
    NOT_DECODABLE,
    TOO_LARGE,
    WRONG_TYPE,
    DeadLetter,
    IntentUpdate,
    PlayEvent,
    decode_dead_letter,
    decode_intent_update,
    decode_play_event,
    encode_intent_updates,
    encode_play_event,
)
from stream.dataflow import (
    Origin,
    Play,
    Remembering,
    RememberUser,
    ScoreBatch,
    ScoreRequest,
    ScoredChunk,
    StreamCounters,
    UpdateMessages,
    build_flow,
    dead_letter_message,
    decode,
    key_by_user,
    state_config,
)
from stream.settings import StreamSettings
from stream.service.recovery import code_in_pickle

HOUR_MS = 3_600_000


@pytest.fixture(scope="module")
def scorer(tiny_model_dir) -> Scorer:
    return Scorer.load(tiny_model_dir)


def settings_for(model_dir: Path, **overrides) -> StreamSettings:
    return StreamSettings(brokers="unused:9092", model_dir=model_dir, **overrides)


def event(user="u1", n=0, ts=HOUR_MS * 1000, **overrides) -> PlayEvent:
    fields = dict(
        event_id=f"{user}-{n}", user_id=user, item_id="item-1", ts=ts, action="discover",
        genres=("Drama",), kind="movie", release_ts=None, duration_s=1200.0, device="tv",
    )  # fmt: skip
    return PlayEvent(**{**fields, **overrides})


def source_message(value: bytes | None, offset=0, key: bytes | None = b"u1") -> KafkaSourceMessage:
    return KafkaSourceMessage(key=key, value=value, topic="plays", partition=3, offset=offset)


# ---------------------------------------------------------------------------------------------
# decode, key_by_user
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_decode_turns_valid_bytes_into_a_play_with_its_origin(fmt):
    original = event()
    raw = encode_play_event(original, fmt)
    play = decode(source_message(raw, offset=42), fmt)
    assert play == Play(original, Origin("plays", 3, 42, b"u1", raw))
    assert key_by_user(play) == "u1"


@pytest.mark.parametrize(
    "value, code, words",
    [
        (b"{not json", NOT_DECODABLE, "not valid json"),
        (None, NOT_DECODABLE, "no value"),
        (b" " * (MAX_MESSAGE_BYTES + 1), TOO_LARGE, "limit"),
        (encode_play_event(event(), "json").replace(b'"ts":', b'"ts":"soon","x":'), WRONG_TYPE, "'ts'"),
    ],
)
def test_decode_turns_bad_bytes_into_a_dead_letter_with_everything_to_replay_it(value, code, words):
    letter = decode(source_message(value, offset=7, key=b"k"), "json")
    assert isinstance(letter, DeadLetter)
    assert (letter.code, letter.source_topic, letter.partition, letter.offset) == (code, "plays", 3, 7)
    assert letter.key == b"k"
    assert letter.value == (value or b"")
    assert words in letter.detail
    assert letter.failed_at > 0


# ---------------------------------------------------------------------------------------------
# remember
# ---------------------------------------------------------------------------------------------


def remember_logic(scorer, settings, counters, resume=None) -> RememberUser:
    return RememberUser(Remembering.of(state_config(settings, scorer), scorer, counters), resume)


def play(e: PlayEvent, offset=0) -> Play:
    return Play(e, Origin("plays", 0, offset, e.user_id.encode(), encode_play_event(e, "json")))


def test_remember_emits_score_requests_late_dead_letters_and_counts_duplicates(scorer, tiny_model_dir):
    settings = settings_for(tiny_model_dir, lateness_s=3600.0)
    counters = StreamCounters()
    logic = remember_logic(scorer, settings, counters)
    base = 1000 * HOUR_MS

    (first,), retain = logic.on_item(play(event(n=0, ts=base)))
    assert retain is StatefulLogic.RETAIN
    assert isinstance(first, ScoreRequest) and first.newest and len(first.history) == 1
    (slotted,), _ = slot_history(scorer.featurize(event(n=0, ts=base))[None], ["item-1"], scorer.config.n_items,
                                 scorer.config.unknown_slots)  # fmt: skip
    np.testing.assert_array_equal(first.history[0], slotted)  # "item-1" is a title the model was not trained on

    (second,), _ = logic.on_item(play(event(n=1, ts=base + HOUR_MS)))
    (inserted,), _ = logic.on_item(play(event(n=2, ts=base + 1)))
    assert second.newest and not inserted.newest
    assert inserted.history["ts"].tolist() == [base, base + 1]

    assert logic.on_item(play(event(n=1, ts=base + HOUR_MS))) == ([], StatefulLogic.RETAIN)
    assert counters.duplicates == 1

    too_old = play(event(n=3, ts=base - 1), offset=99)
    (letter,), _ = logic.on_item(too_old)
    assert isinstance(letter, DeadLetter)
    assert (letter.code, letter.offset, letter.value) == (LATE, 99, too_old.origin.value)
    assert "allowed lateness" in letter.detail


def test_an_event_from_the_far_future_is_a_dead_letter_and_does_not_silence_its_user(scorer, tiny_model_dir):
    logic = remember_logic(scorer, settings_for(tiny_model_dir, lateness_s=3600.0), StreamCounters())
    now = int(time.time() * 1000)
    year_2100 = play(event(n=0, ts=4_102_444_000_000), offset=5)
    (letter,), _ = logic.on_item(year_2100)
    assert isinstance(letter, DeadLetter) and (letter.code, letter.offset) == (FROM_FUTURE, 5)
    assert "ahead of this process's clock" in letter.detail and "allowed clock skew 300 s" in letter.detail
    (request,), _ = logic.on_item(play(event(n=1, ts=now - 1000)))  # the user's real events still count
    assert isinstance(request, ScoreRequest) and request.newest
    (request,), _ = logic.on_item(play(event(n=2, ts=now + 60_000)))  # a clock a minute fast is fine
    assert isinstance(request, ScoreRequest)


def test_remember_forgets_an_idle_user_after_the_ttl_and_restores_from_a_snapshot(scorer, tiny_model_dir):
    settings = settings_for(tiny_model_dir, ttl_s=7200.0)
    logic = remember_logic(scorer, settings, StreamCounters())
    before = datetime.now(timezone.utc)
    logic.on_item(play(event(n=0)))
    logic.on_item(play(event(n=1, ts=event().ts + 1)))
    wake = logic.notify_at()
    assert before + timedelta(hours=2) <= wake <= datetime.now(timezone.utc) + timedelta(hours=2)
    logic.forget_at = time.time()  # the TTL has passed
    assert logic.on_notify() == ([], StatefulLogic.DISCARD)

    snapshot = logic.snapshot()
    assert code_in_pickle(pickle.dumps(snapshot)) is None  # plain data: resuming it runs nothing
    restored = remember_logic(scorer, settings, StreamCounters(), resume=snapshot)
    (request,), _ = restored.on_item(play(event(n=2, ts=event().ts + 2)))
    assert len(request.history) == 3
    assert restored.notify_at() > datetime.now(timezone.utc) + timedelta(hours=1)


def test_beyond_max_users_the_least_recently_active_user_is_evicted_and_its_logic_then_discarded(scorer, tiny_model_dir):
    counters = StreamCounters()
    shared = Remembering.of(state_config(settings_for(tiny_model_dir), scorer), counters=counters, scorer=scorer,
                            users_per_worker=2)  # fmt: skip
    alice, bob, carol = (RememberUser(shared, None) for _ in range(3))  # carol, the third, evicts alice
    assert alice.state is None and bob.state is not None and carol.state is not None
    assert (counters.users_held, counters.users_evicted) == (2, 1)
    assert alice.notify_at() <= datetime.now(timezone.utc)  # Bytewax calls the empty logic at once ...
    assert alice.on_notify() == ([], StatefulLogic.DISCARD)  # ... and it goes
    assert alice.snapshot() == ()  # plain data; a logic resumed from it discards itself too
    assert RememberUser(shared, alice.snapshot()).state is None

    bob.on_item(play(event("bob", n=0)))
    (request,), _ = carol.on_item(play(event("carol", n=0)))
    (request,), _ = carol.on_item(play(event("carol", n=1, ts=event().ts + 1)))
    assert len(request.history) == 2
    RememberUser(shared, None)  # a fourth user evicts bob, the least recently active
    assert bob.state is None and carol.state is not None
    (back,), _ = bob.on_item(play(event("bob", n=1, ts=event().ts + 2)))  # bob comes back: afresh
    assert len(back.history) == 1 and carol.state is None  # and carol is now the least recently active
    assert (counters.users_held, counters.users_evicted) == (2, 3)

    # While the table is full, a held user asks to be woken well before its TTL: by then it has
    # likely been evicted, and its empty logic must not wait 30 days to go.
    assert bob.notify_at() < datetime.now(timezone.utc) + timedelta(minutes=1)
    assert bob.on_notify() == ([], StatefulLogic.RETAIN)  # still held: it stays


def test_remember_holds_a_user_of_two_events_in_a_few_hundred_bytes(scorer, tiny_model_dir):
    """The step holds a RememberUser per user, so whatever each one holds is memory times the users:
    the settings, featurizer and counters are shared (Remembering), the TTL deadline is a float."""
    shared = Remembering.of(state_config(settings_for(tiny_model_dir), scorer), scorer, StreamCounters())
    plays = [play(event(n=0)), play(event(n=1, ts=event().ts + 1))]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        users = []
        for _ in range(2000):
            logic = RememberUser(shared, None)
            for one in plays:
                logic.on_item(one)
            users.append(logic)
        per_user = (tracemalloc.get_traced_memory()[0] - before) / len(users)
    finally:
        tracemalloc.stop()
    assert all(len(logic.state) == 2 for logic in users)
    assert per_user < 600, f"{per_user:.0f} bytes per user"  # 1,400 before sharing


# ---------------------------------------------------------------------------------------------
# score, encode
# ---------------------------------------------------------------------------------------------


class RecordingScorer:
    """The real serving scorer, recording the users of each call."""

    def __init__(self, scorer: IncrementalScorer):
        self.scorer = scorer
        self.model_ref = scorer.model_ref
        self.score_columns = scorer.score_columns
        self.new_titles = scorer.new_titles
        self.calls: list[list[str]] = []

    def predict_users(self, users, histories, unknown_titles=None):
        self.calls.append(list(users))
        return self.scorer.predict_users(users, histories, unknown_titles)


def updates_of(chunks: list[ScoredChunk], fmt: str = "msgpack") -> list[IntentUpdate]:
    return [
        decode_intent_update(value, fmt)
        for chunk in chunks
        for value in encode_intent_updates(chunk.events, chunk.model, chunk.scored_at, chunk.scores, fmt)
    ]


def test_score_batch_caps_batches_and_equals_scoring_each_history_alone(scorer):
    world = generate_world(seed=1, n_users=20, n_titles=60, days=10)[:23]
    requests = [
        ScoreRequest(e, np.stack([scorer.featurize(p) for p in world[: i + 1] if p.user_id == e.user_id]), i % 2 == 0)
        for i, e in enumerate(world)
    ]
    recording = RecordingScorer(IncrementalScorer(scorer))
    chunks = ScoreBatch(recording, batch_size=10, top_k=5)(requests)
    assert [len(users) for users in recording.calls] == [len(chunk.events) for chunk in chunks] == [10, 10, 3]
    assert all(chunk.model == scorer.model_ref for chunk in chunks)
    by_event = {request.event.event_id: request for request in requests}
    updates = updates_of(chunks)
    assert sorted(update.event_id for update in updates) == sorted(by_event)
    assert [newest for chunk in chunks for newest in chunk.newest] == [by_event[u.event_id].newest for u in updates]
    for update in updates:
        request = by_event[update.event_id]
        (alone,) = scorer_that_saw(scorer, world).score([request.history], top_k=5)
        assert (update.user_id, update.ts) == (request.event.user_id, request.event.ts)
        assert_same_scores(update, alone)
    assert ScoreBatch(recording, batch_size=10, top_k=5)([]) == []


def test_score_batch_scores_many_users_at_once_keeping_each_users_events_in_order(scorer):
    """Bytewax hands over a keyed step's output grouped by user: each chunk takes users' first
    events first, then their second ones."""
    base = 1000 * HOUR_MS
    grouped = [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("c", 0)]
    histories = {}
    requests = []
    for user, n in grouped:
        e = event(user=user, n=n, ts=base + n * HOUR_MS)
        histories[user] = [*histories.get(user, []), scorer.featurize(e)]
        requests.append(ScoreRequest(e, np.stack(histories[user]), newest=True))
    recording = RecordingScorer(IncrementalScorer(scorer))
    chunks = ScoreBatch(recording, batch_size=4, top_k=5)(requests)
    assert recording.calls == [["a", "b", "c", "a"], ["b", "a"]]
    assert [e.event_id for chunk in chunks for e in chunk.events] == ["a-0", "b-0", "c-0", "a-1", "b-1", "a-2"]


def test_score_batch_refuses_a_batch_cap_below_one(scorer):
    with pytest.raises(ValueError, match="batch size"):
        ScoreBatch(scorer, batch_size=0, top_k=5)


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_update_messages_go_to_the_updates_topic_and_the_newest_also_to_the_latest(scorer, fmt):
    events = [event(user="user-7"), event(user="user-8")]
    histories = [scorer.featurize(e)[None] for e in events]
    scores = scorer.score_columns(scorer.predict(histories), top_k=3)
    chunk = ScoredChunk(events, [True, False], scorer.model_ref, 123, scores)

    messages = UpdateMessages(fmt, "updates", "latest")(chunk)
    assert [(m.topic, m.key) for m in messages] == [("updates", b"user-7"), ("latest", b"user-7"), ("updates", b"user-8")]
    assert messages[0].value == messages[1].value
    for message, e, alone in zip([messages[0], messages[2]], events, scorer.score(histories, top_k=3)):
        assert decode_intent_update(message.value, fmt) == IntentUpdate(
            user_id=e.user_id, event_id=e.event_id, ts=e.ts, model=scorer.model_ref, scored_at=123,
            intent_embedding=alone.intent_embedding, intents=alone.intents, intent_weights=alone.intent_weights,
            next_items=alone.next_items,
        )  # fmt: skip
    assert [m.topic for m in UpdateMessages(fmt, "updates", None)(chunk)] == ["updates", "updates"]


def test_dead_letter_messages_keep_the_original_key_and_bytes():
    letter = decode(source_message(b"\xc1garbage", offset=5, key=b"user-3"), "msgpack")
    message = dead_letter_message(letter, "dlq")
    assert (message.topic, message.key) == ("dlq", b"user-3")
    assert decode_dead_letter(message.value) == letter


# ---------------------------------------------------------------------------------------------
# The whole flow, on in-memory input
# ---------------------------------------------------------------------------------------------


def assert_same_scores(update, scores, tol=1e-5):
    """An update equals the scorer's answer, up to float noise from different batch padding."""
    np.testing.assert_allclose(update.intent_embedding, scores.intent_embedding, atol=tol)
    assert update.intent_weights.keys() == scores.intent_weights.keys()
    np.testing.assert_allclose(list(update.intent_weights.values()), list(scores.intent_weights.values()), atol=tol)
    assert update.intents.keys() == scores.intents.keys()
    for task, labels in update.intents.items():
        np.testing.assert_allclose([l.p for l in labels], [l.p for l in scores.intents[task]], atol=tol)
    np.testing.assert_allclose([i.score for i in update.next_items], [i.score for i in scores.next_items], atol=tol)
    assert {i.item_id for i in update.next_items} - {i.item_id for i in scores.next_items} == set() or np.ptp(
        [i.score for i in scores.next_items]
    ) < tol  # ids may only differ on ties


def offline_scores(scorer: Scorer, histories: dict[str, list[PlayEvent]], top_k: int,
                   open_catalogue: bool = True) -> dict[str, Scores]:  # fmt: skip
    """event_id -> Scorer.score of the events it must be scored on, its titles the model lacks in
    their slots, as the stream keeps them (model.features.slot_history), and (`open_catalogue`) every
    play among those events registered as the stream registers them (the titles it lacks ranked by
    their plays); with none registered, new titles take nothing, as in a closed catalogue."""
    if open_catalogue:
        scorer = scorer_that_saw(scorer, list({e.event_id: e for events in histories.values() for e in events}.values()))
    slotted = [slot_history(np.stack([scorer.featurize(e) for e in events]), [e.item_id for e in events],
                            scorer.config.n_items, scorer.config.unknown_slots, scorer.history_len)
               for events in histories.values()]  # fmt: skip
    scores = scorer.score([rows for rows, _ in slotted], top_k=top_k, unknown_titles=[titles for _, titles in slotted])
    return dict(zip(histories, scores))


@dataclasses.dataclass
class Scenario:
    """Input messages and, computed independently of the flow, what must come out of them."""

    messages: list[KafkaSourceMessage]
    histories: dict[str, list[PlayEvent]]  # event_id -> the events its update must be scored on
    newest_of_user: dict[str, str]  # user -> event_id of the user's newest accepted event
    dead_letter_codes: dict[int, str]  # offset -> code
    duplicates: int
    inserted: int  # accepted events that arrived after a newer event of their user


def build_scenario(fmt: str, context: int, lateness_ms: int, seed: int = 0) -> Scenario:
    """A small world's events, some delivered a little late (allowed), some far too late, some
    twice, plus malformed messages."""
    rng = random.Random(seed)
    events = generate_world(seed=seed, n_users=20, n_titles=60, days=10)[:150]
    arrivals: list[PlayEvent | bytes] = list(events)
    for i in range(len(arrivals) - 1):  # swap neighbours now and then: out of order, within lateness
        if rng.random() < 0.15 and abs(events[i].ts - events[i + 1].ts) <= lateness_ms:
            arrivals[i], arrivals[i + 1] = arrivals[i + 1], arrivals[i]
    for _ in range(6):  # exact copies, a few positions later
        i = rng.randrange(len(arrivals) - 5)
        arrivals.insert(i + rng.randrange(1, 5), arrivals[i])
    for e in rng.sample(events[50:], 4):  # far too late: new events older than the lateness allows
        arrivals.append(dataclasses.replace(e, event_id=e.event_id + "-late", ts=e.ts - 5 * lateness_ms))
    unknown_kind = encode_play_event(event(), "json").replace(b'"kind":"movie"', b'"kind":"game"')
    for raw in [b"{", b"\x00" * (MAX_MESSAGE_BYTES + 1), unknown_kind]:
        arrivals.insert(rng.randrange(len(arrivals)), raw)

    messages, histories, newest_of_user, dead, duplicates, inserted = [], {}, {}, {}, 0, 0
    accepted: dict[str, list[tuple[int, int, PlayEvent]]] = {}  # user -> (ts, arrival, event)
    for offset, item in enumerate(arrivals):
        if isinstance(item, bytes):
            messages.append(source_message(item, offset=offset, key=None))
            try:
                decode_play_event(item, fmt)
            except ContractError as error:
                dead[offset] = error.code
            continue
        messages.append(source_message(encode_play_event(item, fmt), offset=offset, key=item.user_id.encode()))
        held = accepted.setdefault(item.user_id, [])
        if any(e.event_id == item.event_id for _, _, e in held):
            duplicates += 1
        elif held and max(ts for ts, _, _ in held) - item.ts > lateness_ms:
            dead[offset] = LATE
        else:
            held.append((item.ts, offset, item))
            held.sort(key=lambda entry: entry[:2])
            position = next(i for i, entry in enumerate(held) if entry[1] == offset)
            histories[item.event_id] = [e for _, _, e in held[: position + 1]][-context:]
            newest_of_user[item.user_id] = held[-1][2].event_id
            inserted += position < len(held) - 1
    return Scenario(messages, histories, newest_of_user, dead, duplicates, inserted)


def serving_scorer(settings: StreamSettings) -> IncrementalScorer:
    """As `intentstream run` serves: the settings' model, backend and cache size."""
    return load_serving_scorer(settings.model_dir, settings.backend, settings.kv_cache_bytes, settings.new_titles,
                               settings.catalogue)


def run_flow(settings, scenario, workers=1, serving: IncrementalScorer | None = None):
    """The flow with `serving`, by default the serving scorer of the settings."""
    sink_items: list[KafkaSinkMessage] = []
    counters = StreamCounters()
    flow = build_flow(
        settings,
        serving if serving is not None else serving_scorer(settings),
        source=TestingSource(scenario.messages, batch_size=40),
        sink=TestingSink(sink_items),
        counters=counters,
    )
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return sink_items, counters


@pytest.fixture(scope="module")
def scenario_run(scorer, tiny_model_dir):
    settings = settings_for(tiny_model_dir, format="json", history=1000, batch_size=16, top_k=5)
    scenario = build_scenario("json", scorer.history_len, round(settings.lateness_s * 1000))
    return settings, scenario, *run_flow(settings, scenario)


def test_the_flow_sends_exactly_one_update_per_valid_event_equal_to_offline_scoring(scorer, scenario_run):
    settings, scenario, sent, counters = scenario_run
    updates = [decode_intent_update(m.value, "json") for m in sent if m.topic == settings.output_topic]
    assert scenario.inserted > 0  # some events were scored in the middle of their user's history
    assert sorted(u.event_id for u in updates) == sorted(scenario.histories)
    for message in sent:
        if message.topic != settings.dlq_topic:
            assert message.key == decode_intent_update(message.value, "json").user_id.encode()

    expected = offline_scores(scorer, scenario.histories, top_k=5)
    for update in updates:
        assert update.model == scorer.model_ref
        assert_same_scores(update, expected[update.event_id])


def test_a_title_the_model_was_not_trained_on_is_continued_under_its_own_id(scorer, tiny_model_dir):
    """Released after training: the user's state gives it a slot, the repeat pointer reaches it, and
    next_items names it; equal to offline scoring with the same slots, and kept across a snapshot."""
    settings = settings_for(tiny_model_dir, lateness_s=3600.0)
    logic = remember_logic(scorer, settings, StreamCounters())
    known = scorer.vocab.items.tokens[0]
    items = ["brand-new-show", known, "brand-new-show", "another-new-film"]
    events = [event(n=n, ts=event().ts + n * 60_000, item_id=item) for n, item in enumerate(items)]
    assert [scorer.vocab.items.lookup(e.item_id) == UNKNOWN for e in events] == [True, False, True, True]
    requests = [logic.on_item(play(e))[0][0] for e in events]
    assert [r.unknown_titles for r in requests] == [("brand-new-show",)] * 3 + [("brand-new-show", "another-new-film")]

    n_outputs = scorer.config.n_outputs  # every item and slot in next_items
    (chunk,) = ScoreBatch(serving_scorer(settings), batch_size=8, top_k=n_outputs)(requests)
    updates = {u.event_id: u for u in updates_of([chunk])}
    expected = offline_scores(scorer, {e.event_id: events[: n + 1] for n, e in enumerate(events)}, top_k=n_outputs)
    for event_id, update in updates.items():
        assert_same_scores(update, expected[event_id])
        assert "<unknown>" not in {item.item_id for item in update.next_items}
    named = {item.item_id: item.score for item in updates["u1-2"].next_items}
    assert named["brand-new-show"] > 0 and "another-new-film" not in named  # not played yet

    restored = RememberUser(logic.shared, logic.snapshot())
    assert restored.titles == ("brand-new-show", "another-new-film")
    (after,), _ = restored.on_item(play(event(n=9, ts=event().ts + 10 * 60_000, item_id="another-new-film")))
    assert after.history["item"][-1] == scorer.config.n_items + 1


def test_the_flow_sends_bad_and_late_events_to_the_dead_letter_topic_and_drops_duplicates(scenario_run):
    settings, scenario, sent, counters = scenario_run
    letters = [decode_dead_letter(m.value) for m in sent if m.topic == settings.dlq_topic]
    assert {letter.offset: letter.code for letter in letters} == scenario.dead_letter_codes
    assert len(letters) == len(scenario.dead_letter_codes)
    assert set(scenario.dead_letter_codes.values()) >= {LATE, NOT_DECODABLE, TOO_LARGE}
    for letter in letters:
        assert letter.value == scenario.messages[letter.offset].value
        assert letter.source_topic == "plays"

    assert scenario.duplicates > 0 and counters.duplicates == scenario.duplicates
    assert counters.events_in == len(scenario.messages)
    assert counters.updates_out == len(scenario.histories)
    assert counters.events_in == counters.updates_out + counters.duplicates + sum(counters.dead_letters.values())
    assert counters.dead_letters[LATE] == list(scenario.dead_letter_codes.values()).count(LATE)


def test_the_latest_topic_ends_with_each_users_newest_event(scenario_run):
    settings, scenario, sent, _ = scenario_run
    latest: dict[str, str] = {}
    for message in sent:
        if message.topic == settings.latest_topic:
            update = decode_intent_update(message.value, "json")
            latest[update.user_id] = update.event_id
    assert latest == scenario.newest_of_user


@pytest.mark.parametrize("kv_cache_mb", [1024, 0])
def test_the_flow_scores_incrementally_by_default_and_recomputes_without_a_cache(scorer, tiny_model_dir, kv_cache_mb):
    # A closed catalogue: the scenario delivers plays out of order, and how a new title is ranked
    # depends on which of its plays have been read (a title first seen in the stream: the tests above).
    settings = settings_for(tiny_model_dir, format="json", batch_size=16, top_k=5, kv_cache_mb=kv_cache_mb,
                            new_titles=0)  # fmt: skip
    scenario = build_scenario("json", scorer.history_len, round(settings.lateness_s * 1000), seed=5)
    serving = serving_scorer(settings)
    sent, counters = run_flow(settings, scenario, serving=serving)

    assert isinstance(serving, IncrementalScorer) and serving.backend.name == "eager"
    assert serving.scored_from_cache + serving.scored_from_history == counters.updates_out == len(scenario.histories)
    assert counters.updates_out / settings.batch_size <= counters.model_calls <= counters.updates_out
    assert counters.scoring_s > 0
    if kv_cache_mb:  # most users' events follow ones already scored, and cached
        assert serving.scored_from_cache > serving.scored_from_history
    else:
        assert serving.scored_from_cache == 0
    updates = [decode_intent_update(m.value, "json") for m in sent if m.topic == settings.output_topic]
    expected = offline_scores(scorer, scenario.histories, top_k=5, open_catalogue=False)
    for update in updates:
        assert_same_scores(update, expected[update.event_id])


def test_a_flow_serving_retrieved_candidates_equals_offline_scoring_of_the_same_candidates(tiny_model_dir):
    settings = settings_for(tiny_model_dir, format="json", batch_size=16, top_k=5, new_titles=0, catalogue="approximate")
    serving = serving_scorer(settings)
    model = serving.model
    assert model.item_layer.retriever is not None  # served from candidates
    model.item_layer.retriever = CandidateRetriever(model, ExactSearch(item_vectors(model)), candidates=8)
    scenario = build_scenario("json", serving.history_len, round(settings.lateness_s * 1000), seed=7)
    sent, counters = run_flow(settings, scenario, serving=serving)

    offline = Scorer(model, serving.vocab, serving.model_ref)  # the same model, so the same retriever
    expected = offline_scores(offline, scenario.histories, top_k=5, open_catalogue=False)
    updates = [decode_intent_update(m.value, "json") for m in sent if m.topic == settings.output_topic]
    assert len(updates) == counters.updates_out == len(scenario.histories)
    for update in updates:
        assert_same_scores(update, expected[update.event_id])


class Waves(FixedPartitionedSource):
    """Messages in waves `pause_s` apart, and a last pause before the input ends; `at_end` is
    called as it ends, while the flow's state is still there."""

    def __init__(self, waves: list[list[KafkaSourceMessage]], pause_s: float, final_pause_s: float, at_end):
        self.waves, self.pause_s, self.final_pause_s, self.at_end = waves, pause_s, final_pause_s, at_end

    def list_parts(self) -> list[str]:
        return ["waves"]

    def build_part(self, step_id: str, for_part: str, resume_state) -> "WavesPartition":
        return WavesPartition(self)


class WavesPartition(StatefulSourcePartition):
    def __init__(self, source: Waves):
        self.source, self.waves, self.due = source, list(source.waves), datetime.now(timezone.utc)

    def next_batch(self) -> list[KafkaSourceMessage]:
        if not self.waves:
            self.source.at_end()
            raise StopIteration()
        pause = self.source.pause_s if len(self.waves) > 1 else self.source.final_pause_s
        self.due = datetime.now(timezone.utc) + timedelta(seconds=pause)
        return self.waves.pop(0)

    def next_awake(self) -> datetime:
        return self.due

    def snapshot(self) -> None:
        return None


def test_a_flood_of_fresh_users_is_held_at_the_cap_and_bytewax_discards_the_evicted(scorer, tiny_model_dir, monkeypatch):
    """Every evicted user's logic goes at its next callback, which comes within a second or two, not
    at its 30-day TTL: Bytewax holds about the cap's worth of logics, not one per user ever seen."""
    cap, waves = 50, 6
    logics = weakref.WeakSet()

    class CountedRememberUser(RememberUser):
        def __init__(self, *args):
            super().__init__(*args)
            logics.add(self)

    monkeypatch.setattr("stream.dataflow.RememberUser", CountedRememberUser)  # what build_flow builds the step of
    settings = settings_for(tiny_model_dir, format="json", max_users=cap, new_titles=0)
    now = int(time.time() * 1000)
    flood = [[source_message(encode_play_event(event(f"fresh-{wave}-{i}", ts=now), "json"), key=None)
              for i in range(cap)] for wave in range(waves)]  # fmt: skip
    at_end: dict[str, int] = {}
    counters = StreamCounters()
    sent: list[KafkaSinkMessage] = []
    flow = build_flow(settings, serving_scorer(settings), source=Waves(flood, 0.3, 2.5, lambda: at_end.update(
        logics=len(logics), held=counters.users_held)), sink=TestingSink(sent), counters=counters)  # fmt: skip
    run_main(flow)

    assert counters.updates_out == cap * waves  # every event scored, evicted users' included
    assert (at_end["held"], counters.users_evicted) == (cap, cap * (waves - 1))
    # Those evicted while the table filled were scheduled for their TTL (at most the cap's worth);
    # those evicted since were discarded within seconds.
    assert cap <= at_end["logics"] < 2 * cap, f"{at_end['logics']} logics held for {cap * waves} users"


def test_two_workers_give_the_same_updates_as_one(scorer, tiny_model_dir):
    # Workers share the process's new-title registry and register their plays as they come: only a
    # closed catalogue is the same whatever the workers' interleaving.
    settings = settings_for(tiny_model_dir, format="msgpack", history=1000, batch_size=8, top_k=5, new_titles=0)
    scenario = build_scenario("msgpack", scorer.history_len, round(settings.lateness_s * 1000), seed=3)

    def updates_by_event(sent):
        updates = [(m.key, decode_intent_update(m.value, "msgpack")) for m in sent if m.topic == settings.output_topic]
        assert all(key == update.user_id.encode() for key, update in updates)
        return {update.event_id: update for _, update in updates}

    one = updates_by_event(run_flow(settings, scenario, workers=1)[0])
    sent, counters = run_flow(settings, scenario, workers=2)
    two = updates_by_event(sent)
    assert sorted(one) == sorted(two) == sorted(scenario.histories)
    for event_id, update in one.items():
        np.testing.assert_allclose(update.intent_embedding, two[event_id].intent_embedding, atol=1e-5)
        assert [i.item_id for i in update.next_items] == [i.item_id for i in two[event_id].next_items]
    assert counters.duplicates == scenario.duplicates


def test_a_history_setting_shorter_than_the_models_reach_shortens_what_is_scored(scorer, tiny_model_dir):
    settings = settings_for(tiny_model_dir, history=4)
    config = state_config(settings, scorer)
    assert (config.capacity, config.context) == (4, 4)
    logic = remember_logic(scorer, settings, StreamCounters())
    requests = [logic.on_item(play(event(n=n, ts=event().ts + n)))[0][0] for n in range(6)]
    assert [len(r.history) for r in requests] == [1, 2, 3, 4, 4, 4]
    assert config.capacity < scorer.history_len == state_config(settings_for(tiny_model_dir), scorer).context
