"""The dataflow end to end through a real Kafka-protocol broker (conftest's `kafka_bootstrap`).

Play events for many users go into a 3-partition input topic, keyed by user, together with exact
copies, events beyond the allowed lateness and malformed or oversized messages. The flow replays
the topic to its end; then every input record must be accounted for exactly once: an update on the
output topic (keyed by user, valid against the published schema, equal to the scorer's offline
answer for the same history), a dead letter pointing back at it, or a dropped copy.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections import Counter

import msgpack
import numpy as np
import pytest
from bytewax.testing import run_main
from jsonschema import Draft202012Validator
from tests.model.serving.test_new_titles import scorer_that_saw
from tests.stream.test_dataflow import offline_scores

from model.serving.scorer import Scorer
from model.playlogs.synth import generate_world
from model.vocab import UNKNOWN
from schemas import (
    LATE,
    MAX_DEAD_LETTER_VALUE_BYTES,
    MAX_MESSAGE_BYTES,
    NOT_AN_OBJECT,
    NOT_DECODABLE,
    SCHEMA_FILES,
    TOO_LARGE,
    PlayEvent,
    decode_dead_letter,
    decode_intent_update,
    encode_play_event,
)
from stream.kafka.broker import produce_messages, read_topic
from model.serving.incremental import load_serving_scorer
from stream.dataflow import StreamCounters, build_flow
from stream.settings import StreamSettings

LATENESS_S = 3600.0
VALIDATORS = {name: Draft202012Validator(json.loads(path.read_text())) for name, path in SCHEMA_FILES.items()}


@pytest.fixture(scope="module")
def scorer(tiny_model_dir) -> Scorer:
    return Scorer.load(tiny_model_dir)


@dataclasses.dataclass
class Plan:
    """What to produce, and what the flow must make of it (worked out without the flow)."""

    messages: list[tuple[bytes | None, bytes]]  # (key, value) in production order
    histories: dict[str, list[PlayEvent]]  # event_id -> events its update is scored on
    newest_of_user: dict[str, str]  # user -> event_id of the user's newest accepted event
    dead_letters: dict[bytes, str]  # message value -> code
    duplicates: int
    inserted: int  # accepted events that arrived after a newer event of their user


def plan_stream(fmt: str, context: int, seed: int = 0) -> Plan:
    rng = random.Random(seed)
    lateness_ms = round(LATENESS_S * 1000)
    events = generate_world(seed=seed, n_users=20, n_titles=60, days=10)[:200]
    arrivals: list[PlayEvent | bytes] = list(events)
    for i in range(len(arrivals) - 1):  # same-user neighbours within the lateness: out of order
        a, b = arrivals[i], arrivals[i + 1]
        if a.user_id == b.user_id and b.ts - a.ts <= lateness_ms and rng.random() < 0.5:
            arrivals[i], arrivals[i + 1] = b, a
    for _ in range(8):  # exact copies, a little later
        i = rng.randrange(len(arrivals) - 10)
        arrivals.insert(i + rng.randrange(1, 10), arrivals[i])
    for e in rng.sample(events[100:], 5):  # beyond the lateness
        arrivals.append(dataclasses.replace(e, event_id=e.event_id + "-late", ts=e.ts - 3 * lateness_ms))
    bad = {b"\xc1 not msgpack": NOT_DECODABLE, b"\x93\x01\x02\x03": NOT_AN_OBJECT,
           b"\x80" + b"x" * MAX_MESSAGE_BYTES: TOO_LARGE,
           b"\x81" + b"y" * 900_000: TOO_LARGE}  # its dead letter must still fit in a Kafka message  # fmt: skip
    for value in bad:
        arrivals.insert(rng.randrange(len(arrivals)), value)

    plan = Plan([], {}, {}, dict(bad), 0, 0)
    accepted: dict[str, list[tuple[int, int, PlayEvent]]] = {}  # user -> (ts, arrival, event)
    for arrival, item in enumerate(arrivals):
        if isinstance(item, bytes):
            plan.messages.append((None, item))
            continue
        value = encode_play_event(item, fmt)
        plan.messages.append((item.user_id.encode(), value))
        held = accepted.setdefault(item.user_id, [])
        if any(e.event_id == item.event_id for _, _, e in held):
            plan.duplicates += 1
        elif held and max(ts for ts, _, _ in held) - item.ts > lateness_ms:
            plan.dead_letters[value] = LATE
        else:
            held.append((item.ts, arrival, item))
            held.sort(key=lambda entry: entry[:2])
            position = [entry[1] for entry in held].index(arrival)
            plan.histories[item.event_id] = [e for _, _, e in held[: position + 1]][-context:]
            plan.newest_of_user[item.user_id] = held[-1][2].event_id
            plan.inserted += position < len(held) - 1
    return plan


def test_every_event_becomes_exactly_one_update_or_dead_letter_through_kafka(
    kafka_bootstrap, make_topics, tiny_model_dir, scorer
):
    topics = make_topics(partitions=3)
    plan = plan_stream("msgpack", scorer.history_len)
    produce_messages(kafka_bootstrap, topics.input, plan.messages)
    settings = StreamSettings(
        brokers=kafka_bootstrap, model_dir=tiny_model_dir, format="msgpack", input_topic=topics.input,
        output_topic=topics.output, dlq_topic=topics.dlq, latest_topic=topics.latest,
        history=1000, batch_size=16, top_k=5, lateness_s=LATENESS_S, stop_at_end=True, new_titles=0,
    )  # fmt: skip
    counters = StreamCounters()
    # A closed catalogue: the partitions are read in any order, and how a title first seen in the stream
    # ranks depends on which of its plays have been read (test_dataflow.py tests it on one partition).
    run_main(build_flow(settings, load_serving_scorer(tiny_model_dir, new_title_columns=0), counters=counters))

    inputs = read_topic(kafka_bootstrap, topics.input, count=len(plan.messages))
    updates = read_topic(kafka_bootstrap, topics.output, count=len(plan.histories))
    letters = read_topic(kafka_bootstrap, topics.dlq, count=len(plan.dead_letters))
    latest = read_topic(kafka_bootstrap, topics.latest)
    assert len(inputs) == len(plan.messages)

    # Updates: one per valid event, keyed by user, schema-valid, equal to offline scoring.
    decoded = [decode_intent_update(record.value, "msgpack") for record in updates]
    assert sorted(u.event_id for u in decoded) == sorted(plan.histories)
    for record, update in zip(updates, decoded):
        assert record.key == update.user_id.encode()
        errors = list(VALIDATORS["intent_update"].iter_errors(msgpack.unpackb(record.value)))
        assert not errors, errors[0].message
    # The users' titles the model lacks in their slots, as the stream keeps them (some plays of the
    # world the tiny model trained on were held out of its vocabulary).
    expected = offline_scores(scorer, plan.histories, top_k=5, open_catalogue=False)
    for update in decoded:
        np.testing.assert_allclose(update.intent_embedding, expected[update.event_id].intent_embedding, atol=1e-5)
        np.testing.assert_allclose(
            [i.score for i in update.next_items], [i.score for i in expected[update.event_id].next_items], atol=1e-5
        )
        assert update.model == scorer.model_ref

    # Dead letters: each points back at the input record it holds, with the right code.
    by_position = {(record.partition, record.offset): record for record in inputs}
    assert len(letters) == len(plan.dead_letters)
    for record in letters:
        assert not list(VALIDATORS["dead_letter"].iter_errors(json.loads(record.value)))
        letter = decode_dead_letter(record.value)
        source = by_position[(letter.partition, letter.offset)]
        assert (letter.source_topic, letter.key) == (topics.input, source.key)
        assert letter.value == source.value[:MAX_DEAD_LETTER_VALUE_BYTES] and letter.value_size == len(source.value)
        assert letter.value_sha256 == hashlib.sha256(source.value).hexdigest()
        assert letter.truncated == (len(source.value) > MAX_DEAD_LETTER_VALUE_BYTES)
        assert letter.code == plan.dead_letters[source.value]
        assert record.key == source.key

    # The latest topic ends with each user's newest event.
    last_of_user = {}
    for record in latest:
        update = decode_intent_update(record.value, "msgpack")
        last_of_user[update.user_id] = update.event_id
    assert last_of_user == plan.newest_of_user

    # Nothing lost: every input record is an update, a dead letter or a dropped copy.
    assert plan.duplicates > 0 and plan.inserted > 0
    assert counters.duplicates == plan.duplicates
    assert counters.events_in == len(inputs) == len(updates) + len(letters) + counters.duplicates
    assert counters.dead_letters == Counter(plan.dead_letters.values())


def test_a_title_first_seen_in_the_stream_is_ranked_for_everyone_once_three_users_played_it_through_kafka(
    kafka_bootstrap, make_topics, tiny_model_dir, scorer
):
    """A release the model was not trained on: once three users have played it (new_title_min_users),
    the updates of other users' later events rank it (from what its play says: kind, genres, release
    date), as offline scoring with the same title registered does; an event from before then does not."""
    topics = make_topics(partitions=1)
    world = generate_world(seed=0, n_users=20, n_titles=60, days=10)  # what the tiny model was trained on
    template, start = world[0], world[-1].ts + 3_600_000
    makers = [dataclasses.replace(template, event_id=f"maker-{n}", user_id=f"maker-{n}", item_id="fresh-release",
                                  ts=start + n * 1000, release_ts=start - 86_400_000) for n in range(3)]  # fmt: skip
    viewer = [dataclasses.replace(template, event_id=f"viewer-{n}", user_id="viewer", ts=start + offset)
              for n, offset in enumerate([-60_000, 60_000, 120_000])]  # fmt: skip
    arrivals = [viewer[0], *makers, viewer[1], viewer[2]]
    assert scorer.vocab.items.lookup("fresh-release") == UNKNOWN and scorer.config.new_title_min_users == 3
    produce_messages(kafka_bootstrap, topics.input, [(e.user_id.encode(), encode_play_event(e, "msgpack"))
                                                     for e in arrivals])  # fmt: skip
    every_column = scorer.config.n_outputs
    settings = StreamSettings(
        brokers=kafka_bootstrap, model_dir=tiny_model_dir, format="msgpack", input_topic=topics.input,
        output_topic=topics.output, dlq_topic=topics.dlq, latest_topic=None, top_k=every_column, stop_at_end=True,
    )  # fmt: skip
    run_main(build_flow(settings, load_serving_scorer(tiny_model_dir), counters=StreamCounters()))

    updates = {u.event_id: u for u in (decode_intent_update(r.value, "msgpack")
                                       for r in read_topic(kafka_bootstrap, topics.output, count=len(arrivals)))}
    named = {event_id: {item.item_id: item.score for item in update.next_items} for event_id, update in updates.items()}
    assert "fresh-release" not in named["viewer-0"]  # its event came before the title's first play
    for event_id in ("maker-2", "viewer-1", "viewer-2"):
        assert named[event_id]["fresh-release"] > 0
    assert all("<unknown>" not in items for items in named.values())
    assert named["maker-2"]["fresh-release"] > named["viewer-1"]["fresh-release"]  # a maker may continue it

    reference = scorer_that_saw(scorer, arrivals)
    for n in (1, 2):
        history = np.stack([scorer.featurize(e) for e in viewer[: n + 1]])
        (offline,) = reference.score([history], top_k=every_column)
        assert [i.item_id for i in updates[f"viewer-{n}"].next_items] == [i.item_id for i in offline.next_items]
        np.testing.assert_allclose([i.score for i in updates[f"viewer-{n}"].next_items],
                                   [i.score for i in offline.next_items], atol=1e-5)  # fmt: skip
