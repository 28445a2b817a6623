"""The batch encoder: B updates encoded at once from arrays are, byte for byte, the per-event
encoding of the same IntentUpdates, so they decode alike and keep to the JSON Schema."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from schemas import (
    FORMATS,
    IntentUpdate,
    ItemScore,
    LabelScore,
    LabelTable,
    ModelRef,
    PlayEvent,
    ScoreColumns,
    TopLabels,
    decode_intent_update,
    encode_intent_update,
    encode_intent_updates,
)
from tests.schemas.test_codec import FUZZ, VALIDATORS, wire_to_dict

MODEL = ModelRef(name="intentrec-V3", version="2024-08-01.3")
SCORED_AT = 1_700_000_000_250


def trigger(b: int, user: str = "u", ts: int = 1_700_000_000_000) -> PlayEvent:
    return PlayEvent(f"ev-{b}", f"{user}-{b}", "item", ts + b, "discover", (), "movie", None, 1.0)


def one_by_one(triggers, scores: ScoreColumns) -> list[IntentUpdate]:
    """The IntentUpdates the per-event path makes of the same arrays."""

    def named(top: TopLabels, b: int, make):
        return tuple(make(top.name(i), v) for i, v in zip(top.indices[b].tolist(), top.values[b].tolist()))

    return [
        IntentUpdate(
            user_id=event.user_id,
            event_id=event.event_id,
            ts=event.ts,
            model=MODEL,
            scored_at=SCORED_AT,
            intent_embedding=tuple(scores.intent_embedding[b].tolist()),
            intents={task: named(top, b, LabelScore) for task, top in scores.intents.items()},
            intent_weights={task: weights[b].item() for task, weights in scores.intent_weights.items()},
            next_items=named(scores.next_items, b, ItemScore),
        )
        for b, event in enumerate(triggers)
    ]


def assert_encoded_like_one_by_one(triggers, scores: ScoreColumns, fmt: str) -> None:
    encoded = encode_intent_updates(triggers, MODEL, SCORED_AT, scores, fmt)
    expected = one_by_one(triggers, scores)
    assert len(encoded) == len(expected)
    for data, update in zip(encoded, expected):
        assert data == encode_intent_update(update, fmt)
        assert decode_intent_update(data, fmt) == update
        VALIDATORS["intent_update"].validate(wire_to_dict(data, fmt))


def random_columns(rng: np.random.Generator, count: int, d: int, tasks: dict[str, LabelTable], k: int,
                   items: LabelTable, top_k: int) -> ScoreColumns:  # fmt: skip
    def top(table: LabelTable, size: int) -> TopLabels:
        indices = np.stack([rng.choice(len(table), size, replace=False) for _ in range(count)]) if count else np.zeros((0, size), int)
        return TopLabels(table, indices, rng.random((count, size), dtype=np.float32))

    weights = rng.dirichlet(np.ones(max(1, len(tasks))), count).astype(np.float32)
    return ScoreColumns(
        intent_embedding=rng.standard_normal((count, d), dtype=np.float32),
        intents={task: top(table, min(k, len(table))) for task, table in tasks.items()},
        intent_weights={task: weights[:, i] for i, task in enumerate(tasks)},
        next_items=top(items, top_k),
    )


ITEMS = LabelTable(["<pad>", "<unknown>", *(f"title-{i}" for i in range(40)), "a" * 128, 'quote"back\\slash', "é✓\u0001"])
TASKS = {
    "action": LabelTable(["<pad>", "<unknown>", "discover", "continue", "rewatch", "trailer"]),
    "genre": LabelTable(["<pad>", "<unknown>", *(f"genre {i}" for i in range(20))]),
    "kind": LabelTable(["<pad>", "<unknown>", "movie", "show"]),
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_batch_encodes_as_its_updates_one_by_one(fmt):
    rng = np.random.default_rng(0)
    triggers = [trigger(b) for b in range(37)]
    assert_encoded_like_one_by_one(triggers, random_columns(rng, 37, 16, TASKS, 3, ITEMS, 10), fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_long_arrays_and_strings_take_their_longer_headers(fmt):
    rng = np.random.default_rng(1)
    triggers = [trigger(b, user="u" * 100) for b in range(3)]  # str8 ids; 40 items and 64 floats: array16
    assert_encoded_like_one_by_one(triggers, random_columns(rng, 3, 64, TASKS, 18, ITEMS, 40), fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_model_without_intent_tasks_writes_empty_intents_weights_and_embedding(fmt):
    rng = np.random.default_rng(2)
    triggers = [trigger(b) for b in range(4)]
    scores = random_columns(rng, 4, 0, {}, 3, ITEMS, 5)
    assert_encoded_like_one_by_one(triggers, scores, fmt)
    update = decode_intent_update(encode_intent_updates(triggers, MODEL, SCORED_AT, scores, fmt)[0], fmt)
    assert (update.intent_embedding, update.intents, update.intent_weights) == ((), {}, {})
    assert len(update.next_items) == 5


@pytest.mark.parametrize("fmt", FORMATS)
def test_views_of_arrays_encode_like_the_arrays(fmt):
    """Transposed and broadcast views (the scorer's weights, the bench's canned answers) are read right."""
    rng = np.random.default_rng(3)
    weights = rng.random((3, 5), dtype=np.float32)  # tasks x batch: each task's row is a view
    items = TopLabels(ITEMS, np.broadcast_to(np.arange(2, 9), (5, 7)), np.broadcast_to(np.float32([3, 2, 1, 0, -0.0, -1, 1e-30]), (5, 7)))
    scores = ScoreColumns(
        intent_embedding=rng.standard_normal((16, 5), dtype=np.float32).T,
        intents={task: TopLabels(table, np.broadcast_to(np.array([3, 2]), (5, 2)), rng.random((2, 5), dtype=np.float32).T)
                 for task, table in TASKS.items()},  # fmt: skip
        intent_weights=dict(zip(TASKS, weights)),
        next_items=items,
    )
    assert_encoded_like_one_by_one([trigger(b) for b in range(5)], scores, fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_labels_of_the_batch_only_are_named_from_its_extra_table(fmt):
    """A user's titles the vocabulary lacks: indices from len(table) on name them."""
    rng = np.random.default_rng(4)
    scores = random_columns(rng, 3, 4, TASKS, 2, ITEMS, 4)
    extra = LabelTable(["new-title-of-user-0", "another", "new-title-of-user-2", ""])
    indices = np.array(scores.next_items.indices)
    indices[0, 1], indices[2, 0], indices[2, 3] = len(ITEMS), len(ITEMS) + 2, len(ITEMS) + 1
    scores = dataclasses.replace(scores, next_items=TopLabels(ITEMS, indices, scores.next_items.values, extra))
    assert_encoded_like_one_by_one([trigger(b) for b in range(3)], scores, fmt)
    first = decode_intent_update(encode_intent_updates([trigger(0)], MODEL, SCORED_AT, _row(scores, 0), fmt)[0], fmt)
    assert first.next_items[1].item_id == "new-title-of-user-0"


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_empty_extra_table_is_fine_where_no_label_needs_it(fmt):
    """A batch whose answers rank none of its own titles may carry an empty extra table."""
    scores = random_columns(np.random.default_rng(5), 3, 4, TASKS, 2, ITEMS, 4)
    scores = dataclasses.replace(scores, next_items=dataclasses.replace(scores.next_items, extra=LabelTable([])))
    assert_encoded_like_one_by_one([trigger(b) for b in range(3)], scores, fmt)


def _row(scores: ScoreColumns, b: int) -> ScoreColumns:
    def top(labels: TopLabels) -> TopLabels:
        return TopLabels(labels.table, labels.indices[b : b + 1], labels.values[b : b + 1], labels.extra)

    return ScoreColumns(scores.intent_embedding[b : b + 1], {t: top(v) for t, v in scores.intents.items()},
                        {t: w[b : b + 1] for t, w in scores.intent_weights.items()}, top(scores.next_items))  # fmt: skip


@given(
    count=st.integers(1, 6),
    d=st.integers(0, 20),
    k=st.integers(0, 4),
    top_k=st.integers(0, 20),
    names=st.lists(st.text(max_size=40), min_size=20, max_size=30, unique=True),
    seed=st.integers(0, 2**32 - 1),
    ts=st.integers(0, 4_102_444_800_000),
    floats=hnp.arrays(np.float32, 8, elements=st.floats(width=32, allow_nan=False, allow_infinity=False)),
)
@FUZZ
def test_any_batch_encodes_as_its_updates_one_by_one(count, d, k, top_k, names, seed, ts, floats):
    rng = np.random.default_rng(seed)
    table = LabelTable(names)
    scores = random_columns(rng, count, d, {"action": table, names[0]: table}, k, table, top_k)
    scores.intent_embedding[:, : min(d, 8)] = floats[: min(d, 8)]  # extremes: subnormals, -0.0, the largest
    triggers = [trigger(b, user=names[b] or "u", ts=ts - b) for b in range(count)]
    for fmt in FORMATS:
        encoded = encode_intent_updates(triggers, MODEL, SCORED_AT, scores, fmt)
        assert encoded == [encode_intent_update(update, fmt) for update in one_by_one(triggers, scores)]


def test_an_empty_batch_is_no_messages_and_mismatches_are_refused():
    nothing = random_columns(np.random.default_rng(4), 0, 4, TASKS, 3, ITEMS, 5)
    assert encode_intent_updates([], MODEL, SCORED_AT, nothing, "json") == []
    scores = random_columns(np.random.default_rng(4), 2, 4, TASKS, 3, ITEMS, 5)
    with pytest.raises(ValueError, match="3 events but 2 rows"):
        encode_intent_updates([trigger(b) for b in range(3)], MODEL, SCORED_AT, scores, "json")
    with pytest.raises(ValueError, match="unknown wire format"):
        encode_intent_updates([trigger(b) for b in range(2)], MODEL, SCORED_AT, scores, "xml")

