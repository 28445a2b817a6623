"""Incremental inference equals full recomputation: many users, long histories, evictions, late
events, idle-user resets, several events of one user in a batch, every variant."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.model.test_intentrec import ARCHITECTURES, HOUR, architecture, random_history, random_model, tiny_config, tiny_vocab

from model.serving.host_inputs import HostToDevice
from model.serving.incremental import IncrementalScorer, rounds
from model.serving.kv_cache import KVCache
from model.serving.scorer import Scorer
from schemas import ModelRef

TOLERANCE = dict(rtol=1e-4, atol=1e-6)


def make_scorer(seed: int = 0, **overrides) -> Scorer:
    torch.manual_seed(seed)
    return Scorer(random_model(tiny_config(**overrides)), tiny_vocab(), ModelRef("tiny", "1"))


def assert_same_predictions(incremental, full):
    np.testing.assert_allclose(incremental.item_scores, full.item_scores, **TOLERANCE)
    for task, probs in full.intent_probs.items():
        np.testing.assert_allclose(incremental.intent_probs[task], probs, **TOLERANCE)
    if full.intent_embedding is None:
        assert incremental.intent_embedding is None and incremental.intent_weights is None
    else:
        np.testing.assert_allclose(incremental.intent_embedding, full.intent_embedding, **TOLERANCE)
        np.testing.assert_allclose(incremental.intent_weights, full.intent_weights, **TOLERANCE)


def interleaved_stream(histories: dict[str, np.ndarray], seed: int) -> list[tuple[str, int]]:
    """(user, number of rows seen) for every event of every user, users interleaved at random."""
    rng = np.random.default_rng(seed)
    order = np.concatenate([[user] * len(rows) for user, rows in histories.items()])
    rng.shuffle(order)
    seen = dict.fromkeys(histories, 0)
    events = []
    for user in order:
        seen[user] += 1
        events.append((user, seen[user]))
    return events


def replay(incremental: IncrementalScorer, scorer: Scorer, histories, events, batch_size: int) -> None:
    """Scores the events in micro-batches both ways and compares every prediction."""
    for start in range(0, len(events), batch_size):
        batch = events[start : start + batch_size]
        users = [user for user, _ in batch]
        rows = [histories[user][:n] for user, n in batch]
        assert_same_predictions(incremental.predict_users(users, rows), scorer.predict(rows))


@pytest.mark.parametrize("variant", ARCHITECTURES)
def test_many_users_with_long_histories_match_full_recomputation(variant):
    scorer = make_scorer(**architecture(variant))
    histories = {f"u{u}": random_history(40 + 5 * u, seed=u) for u in range(10)}  # history_len <= 14
    events = interleaved_stream(histories, seed=1)
    incremental = IncrementalScorer(scorer)
    replay(incremental, scorer, histories, events, batch_size=12)  # batches hold repeated users
    assert incremental.scored_from_history == len(histories)  # each user's first event only
    assert incremental.scored_from_cache == len(events) - len(histories)


@pytest.mark.parametrize("relative_positions", [True, False])
def test_the_training_recipe_options_keep_serving_exact(relative_positions):
    scorer = make_scorer(input_dropout=0.5, dropout=0.5, embedding_init_std=0.02, item_input_scale=8.0,
                         relative_positions=relative_positions)
    histories = {f"u{u}": random_history(30, seed=u) for u in range(6)}
    incremental = IncrementalScorer(scorer)
    replay(incremental, scorer, histories, interleaved_stream(histories, seed=2), batch_size=8)
    assert incremental.scored_from_cache > 0


def test_scores_are_those_of_the_scorer():
    scorer = make_scorer()
    histories = [random_history(30, seed=s) for s in range(4)]
    incremental = IncrementalScorer(scorer)
    users = ["a", "b", "c", "d"]
    incremental.predict_users(users, [h[:-1] for h in histories])
    mine, theirs = incremental.score_users(users, histories, top_k=5), scorer.score(histories, top_k=5)
    assert incremental.scored_from_cache == 4
    for a, b in zip(mine, theirs):
        assert [s.item_id for s in a.next_items] == [s.item_id for s in b.next_items]
        np.testing.assert_allclose([s.score for s in a.next_items], [s.score for s in b.next_items], rtol=1e-4)
        np.testing.assert_allclose(a.intent_embedding, b.intent_embedding, rtol=1e-4, atol=1e-6)
        assert a.intents.keys() == b.intents.keys() and a.intent_weights.keys() == b.intent_weights.keys()
        for task in a.intents:
            assert [label.label for label in a.intents[task]] == [label.label for label in b.intents[task]]


def test_evicted_users_are_rebuilt_from_their_history():
    scorer = make_scorer()
    room_for_three = 3 * KVCache.bytes_per_user(scorer.config)
    histories = {f"u{u}": random_history(30, seed=10 + u) for u in range(8)}
    events = interleaved_stream(histories, seed=2)
    incremental = IncrementalScorer(scorer, cache_bytes=room_for_three)
    replay(incremental, scorer, histories, events, batch_size=5)
    assert len(incremental.cache) <= 3
    assert incremental.scored_from_history > len(histories)  # evictions forced rebuilds
    assert incremental.scored_from_cache > 0


def test_a_batch_with_more_users_than_the_cache_holds_is_still_scored_right():
    scorer = make_scorer()
    histories = [random_history(20, seed=s) for s in range(6)]
    incremental = IncrementalScorer(scorer, cache_bytes=2 * KVCache.bytes_per_user(scorer.config))
    users = [f"u{u}" for u in range(6)]
    assert_same_predictions(incremental.predict_users(users, histories), scorer.predict(histories))
    assert len(incremental.cache) == 2
    assert_same_predictions(incremental.predict_users(users, histories), scorer.predict(histories))


def test_a_late_event_inserted_in_the_middle_rebuilds_the_cache():
    scorer = make_scorer()
    history = random_history(40, seed=3)
    incremental = IncrementalScorer(scorer)
    for n in range(1, 31):
        incremental.predict_users(["u"], [history[:n]])
    assert incremental.scored_from_history == 1
    late = history[27].copy()
    late["ts"] = (history["ts"][25] + history["ts"][26]) // 2
    late["item"] = 7
    with_late = np.concatenate([history[:26], [late], history[26:30]])
    # The late event is scored with the history up to it, then the next in-order event.
    for rows in (with_late[:27], np.concatenate([with_late, history[30:31]])):
        assert_same_predictions(incremental.predict_users(["u"], [rows]), scorer.predict([rows]))
    assert incremental.scored_from_history == 3
    nxt = np.concatenate([with_late, history[30:32]])
    assert_same_predictions(incremental.predict_users(["u"], [nxt]), scorer.predict([nxt]))
    assert incremental.scored_from_history == 3  # back on the cached path


def test_a_user_that_starts_afresh_is_not_scored_from_the_old_cache():
    scorer = make_scorer()
    history = random_history(25, seed=4)
    incremental = IncrementalScorer(scorer)
    for n in range(1, 21):
        incremental.predict_users(["u"], [history[:n]])
    for rows in (history[20:21], history[20:22]):  # state forgotten (TTL): the history restarts
        assert_same_predictions(incremental.predict_users(["u"], [rows]), scorer.predict([rows]))
    assert incremental.scored_from_history == 2 and incremental.scored_from_cache == 20


def test_the_short_term_window_is_respected_across_cached_rows():
    scorer = make_scorer(short_term_window_ms=3 * HOUR)
    history = random_history(60, seed=5, max_gap_ms=2 * HOUR)  # the window cuts inside the cache
    incremental = IncrementalScorer(scorer)
    replay(incremental, scorer, {"u": history}, [("u", n) for n in range(1, 61)], batch_size=1)
    assert incremental.scored_from_cache == 59


def test_without_a_cache_every_event_is_recomputed_in_full():
    scorer = make_scorer()
    histories = [random_history(n, seed=n) for n in (1, 2, 13, 14, 40)]
    incremental = IncrementalScorer(scorer, cache_bytes=0)
    users = ["a", "b", "c", "d", "e"]
    for _ in range(2):
        assert_same_predictions(incremental.predict_users(users, histories), scorer.predict(histories))
    assert incremental.scored_from_cache == 0 and len(incremental.cache) == 0


def test_rounds_keep_each_users_events_in_order():
    assert rounds(["a", "b", "a", "c", "a", "b"]) == [[0, 1, 3], [2, 5], [4]]


def test_bad_requests_are_refused():
    incremental = IncrementalScorer(make_scorer())
    with pytest.raises(ValueError, match="at least the interaction"):
        incremental.predict_users(["a"], [random_history(0)])
    with pytest.raises(ValueError, match="1 users but 2 histories"):
        incremental.predict_users(["a"], [random_history(2), random_history(3)])


def test_host_to_device_packs_arrays_into_one_buffer_and_views_them():
    arrays = [
        np.arange(6, dtype=np.int32).reshape(2, 3),
        np.linspace(0, 1, 5, dtype=np.float32),
        np.array([[True, False, True]]),
        np.zeros((2, 0), dtype=np.float32),
    ]
    move = HostToDevice(torch.device("cpu"))
    tensors = move(arrays)
    for array, tensor in zip(arrays, tensors):
        assert tensor.shape == array.shape
        np.testing.assert_array_equal(tensor.numpy(), array)
    storages = {t.untyped_storage().data_ptr() for t in tensors if t.numel()}
    assert len(storages) == 1  # views into one buffer: one copy per batch


def test_a_user_s_unknown_titles_are_scored_incrementally_and_named_in_next_items():
    scorer = make_scorer(unknown_slots=2)
    history = random_history(12, max_gap_ms=HOUR)
    history["item"][[3, 7, 10]] = [30, 31, 30]  # slots 0 and 1 (tiny_config's catalogue is 30 items)
    titles = ("released-yesterday", "released-today")
    replay(IncrementalScorer(scorer), scorer, {"u": history}, [("u", n) for n in range(1, 13)], batch_size=3)
    (scores,) = scorer.score([history], top_k=32, unknown_titles=[titles])
    named = {item.item_id: item.score for item in scores.next_items}
    assert set(titles) <= set(named) and "<unknown>" not in named
    full = scorer.predict([history])
    assert named["released-yesterday"] == pytest.approx(float(full.item_scores[0, 30]))
    (unnamed,) = scorer.score([history], top_k=32)  # without names, slots are not ranked
    assert not set(titles) & {item.item_id for item in unnamed.next_items}
