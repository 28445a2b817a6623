"""Titles first seen in the stream: registered in the order they come, ranked beside the catalogue
from the time they were first seen, one score per title, and the same incrementally as recomputed."""
from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
import torch
from tests.model.serving.test_incremental import assert_same_predictions, make_scorer
from tests.model.test_intentrec import DAY, HOUR, random_history

from model.features import slot_history
from model.serving.incremental import IncrementalScorer
from model.serving.new_titles import HORIZON_MS, PENDING_LIMIT, NewTitleRegistry
from model.serving.scorer import Scorer
from model.vocab import FIRST_REAL, UNKNOWN
from schemas import PlayEvent


def play(item_id: str, ts: int, user: str = "someone", kind: str = "show", genres=("g1",), release_ts=None):
    return PlayEvent(event_id=f"{user}-{item_id}-{ts}", user_id=user, item_id=item_id, ts=int(ts), action="a",
                     genres=genres, kind=kind, release_ts=release_ts, duration_s=600.0, device="tv")  # fmt: skip


def register(scorer: Scorer, events: list[PlayEvent]) -> None:
    scorer.new_titles.register_plays(events, [scorer.featurize(event) for event in events])


def scorer_that_saw(scorer: Scorer, events: list[PlayEvent]) -> Scorer:
    """A scorer on `scorer`'s weights whose registry has seen `events` (the stream registers a
    batch's titles before scoring it): the offline reference of what the stream served."""
    reference = Scorer(scorer.model, scorer.vocab, scorer.model_ref)
    register(reference, events)
    return reference


def first_new_column(scorer: Scorer) -> int:
    return scorer.config.n_items + scorer.config.unknown_slots


def test_titles_the_vocabulary_lacks_get_columns_in_the_order_they_come_and_their_plays_are_counted():
    scorer = make_scorer()
    start = (int(random_history(1)["ts"][0]) // HOUR + 1) * HOUR  # on the hour
    known = scorer.vocab.items.token(FIRST_REAL)
    register(scorer, [play("new-a", start + HOUR), play(known, start), play("new-b", start + 2 * HOUR),
                      play("new-a", start)])  # fmt: skip
    registry = scorer.new_titles
    assert registry.names == ["new-a", "new-b"] and registry.kinds[0] == scorer.vocab.kinds.lookup("show")
    log_plays, share = registry.recent_plays(np.array([start + HOUR // 2, start + 2 * HOUR, start + 8 * 24 * HOUR]))
    np.testing.assert_allclose(np.exp(log_plays[:, :3]), [[1, 0, 0], [2, 1, 0], [0, 0, 0]])  # exact times
    # Every play by the hour: half an hour in, the window holds start's hour (new-a and the known title).
    np.testing.assert_allclose(share, [1 / 2, 3 / 4, 0])
    assert registry.slot_columns([("new-b", "mine"), ()]).tolist() == [
        [first_new_column(scorer) + 1, scorer.config.n_items + 1] + list(range(scorer.config.n_items + 2,
                                                                                 first_new_column(scorer))),
        list(range(scorer.config.n_items, first_new_column(scorer))),
    ]
    assert registry.slot_columns([("mine",)]) is None  # no slot holds a registered title


def test_once_every_column_is_held_by_a_title_still_played_later_titles_are_left_unranked_with_one_warning(caplog):
    scorer = make_scorer(new_title_columns=2)
    start = random_history(1)["ts"][0]
    with caplog.at_level(logging.WARNING, logger="model.serving.new_titles"):
        register(scorer, [play(f"new-{n}", start + n) for n in range(5)])
    assert scorer.new_titles.names == ["new-0", "new-1"] and scorer.new_titles.unregistered == 3
    assert len([r for r in caplog.records if "new-title columns are held" in r.message]) == 1


def test_a_column_is_given_again_once_its_title_has_gone_unplayed_for_the_horizon():
    """However many titles a stream sees, those being played keep a column: the one played least
    recently gives its column up once it has not been played for HORIZON_MS."""
    scorer = make_scorer(new_title_columns=2)
    registry, start = scorer.new_titles, int(random_history(1)["ts"][0])
    register(scorer, [play("old", start), play("kept", start), play("kept", start + 6 * DAY)])
    register(scorer, [play("newer", start + HORIZON_MS - HOUR)])  # "old" was played within the horizon
    assert registry.names == ["old", "kept"] and registry.unregistered == 1
    register(scorer, [play("newest", start + HORIZON_MS + HOUR)])
    assert registry.names == ["newest", "kept"] and registry.reclaimed == 1 and "old" not in registry.columns
    log_plays, _ = registry.recent_plays(np.array([start + HORIZON_MS + 2 * HOUR]))
    np.testing.assert_allclose(np.exp(log_plays[0, :2]), [1, 1])  # newest's own play, none of old's


def test_a_title_earns_its_column_once_enough_distinct_users_have_played_it_and_counts_from_then():
    scorer = make_scorer(new_title_min_users=3)
    registry, start = scorer.new_titles, int(random_history(1)["ts"][0])
    register(scorer, [play("spam", start + n, user="one-user") for n in range(50)])
    register(scorer, [play("hit", start + HOUR, user="a"), play("hit", start + 2 * HOUR, user="b"),
                      play("hit", start + 3 * HOUR, user="b")])  # fmt: skip
    assert registry.names == [] and set(registry.pending) == {"spam", "hit"}
    register(scorer, [play("hit", start + 4 * HOUR, user="c")])
    assert registry.names == ["hit"] and "hit" not in registry.pending
    log_plays, _ = registry.recent_plays(np.array([start + 3 * HOUR, start + 4 * HOUR]))
    np.testing.assert_allclose(np.exp(log_plays[:, 0]), [0, 4])  # not ranked before the third user came


def test_the_registry_stays_bounded_whatever_the_producers_send():
    scorer = make_scorer(new_title_min_users=3)
    registry, start = scorer.new_titles, int(random_history(1)["ts"][0])
    register(scorer, [play("release", start, user="a"), play("release", start + 1, user="b")])
    register(scorer, [play(f"made-up-{n}", start + n * 60_000) for n in range(PENDING_LIMIT + 100)])
    assert len(registry.pending) == PENDING_LIMIT and "made-up-0" not in registry.pending
    assert "release" in registry.pending  # a second user's play outlasts any number of made-up ids played once
    register(scorer, [play("release", start + PENDING_LIMIT * 60_000, user="c")])
    assert registry.names == ["release"]
    register(scorer, [play("backdated", 0, user=f"fresh-{n}") for n in range(3)])  # from 1970
    assert registry.too_old == 3 and "backdated" not in registry.pending and "backdated" not in registry.columns
    register(scorer, [play(f"t{n}", start + n * DAY, user=f"u{n % 7}") for n in range(60)])  # two months, an hour a day
    newest_hour = (start + 59 * DAY) // HOUR
    assert min(registry.plays_by_hour) >= newest_hour - HORIZON_MS // HOUR - 1


def test_a_replay_keeps_every_title_that_earns_a_column_each_ranked_from_when_it_earned_it():
    scorer = make_scorer(new_title_columns=2)
    start = int(random_history(1)["ts"][0])
    plays = [play(f"t{n}", start + n * HOUR) for n in range(5)]
    scorer.new_titles.preload(plays, [scorer.featurize(event) for event in plays])
    registry = scorer.new_titles
    assert registry.names == [f"t{n}" for n in range(5)] and registry.width == 8 and registry.unregistered == 0
    log_plays, _ = registry.recent_plays(np.array([start + 2 * HOUR]))
    np.testing.assert_allclose(np.exp(log_plays[0, :5]), [1, 1, 1, 0, 0])


def test_new_titles_are_ranked_by_their_plays_in_the_week_before_the_query():
    scorer = make_scorer()
    history = random_history(6)
    now = int(history["ts"][-1])
    register(scorer, [*(play("hit", now - HOUR * n) for n in range(1, 6)), play("niche", now - HOUR),
                      play("played-after", now + HOUR), play("played-long-ago", now - 8 * 24 * HOUR)])  # fmt: skip
    (scores,) = scorer.predict([history]).item_scores
    hit, niche, after, long_ago = (first_new_column(scorer) + n for n in range(4))
    assert scores[hit] == pytest.approx(5 * scores[niche], rel=1e-4)  # alike but for their plays
    assert scores[niche] > 0 and scores[after] == scores[long_ago] == 0 and not scores[long_ago + 1 :].any()
    assert scores.sum() == pytest.approx(1.0, abs=1e-5)  # one distribution over catalogue and new titles
    (everything,) = scorer.score([history], top_k=scorer.config.n_outputs)
    names = [item.item_id for item in everything.next_items]
    assert {"hit", "niche"} <= set(names) and not {"played-after", "played-long-ago", "<unknown>"} & set(names)


def test_a_replay_preloads_its_plays_and_counts_them_once():
    scorer = make_scorer()
    now = int(random_history(6)["ts"][-1])
    plays = [play("hit", now - HOUR), play("hit", now - 2 * HOUR)]
    scorer.new_titles.preload(plays, [scorer.featurize(event) for event in plays])
    register(scorer, plays)  # the replay reaching them: already counted
    log_plays, _ = scorer.new_titles.recent_plays(np.array([now - 90 * 60_000, now]))
    np.testing.assert_allclose(np.exp(log_plays[:, 0]), [1, 2])  # never a play after the query


def test_a_users_slot_for_a_registered_title_sends_its_pointer_weight_to_the_titles_column():
    scorer = make_scorer()
    history = random_history(6)
    history["item"][-2] = UNKNOWN  # the user played "their-show", which the vocabulary lacks
    rows, titles = slot_history(history, [f"i{i}" for i in range(4)] + ["their-show", "i9"],
                                scorer.config.n_items, scorer.config.unknown_slots)  # fmt: skip
    assert titles == ("their-show",) and rows["item"][-2] == scorer.config.n_items
    (before,) = scorer.predict([rows], [titles]).item_scores
    register(scorer, [play("their-show", int(history["ts"][-2]))])
    (after,) = scorer.predict([rows], [titles]).item_scores
    slot, column = scorer.config.n_items, first_new_column(scorer)
    assert before[slot] > 0 and after[slot] == 0 and after[column] > before[slot]  # the pointer's, and explore's
    assert after.sum() == pytest.approx(1.0, abs=1e-5)
    (scored,) = scorer.score([rows], top_k=scorer.config.n_outputs, unknown_titles=[titles])
    assert [item.item_id for item in scored.next_items].count("their-show") == 1


@pytest.mark.parametrize("variant", ["V0", "V3"])
def test_incremental_scoring_with_new_titles_equals_full_recomputation(variant):
    overrides = {"V0": dict(intent_tasks=()), "V3": {}}[variant]
    scorer = make_scorer(**overrides)
    incremental = IncrementalScorer(scorer)
    users = ["a", "b", "c"]
    full = [random_history(14, seed=s) for s in range(3)]
    full[0]["item"][5] = UNKNOWN
    ids = [[f"x{s}-{n}" for n in range(14)] for s in range(3)]
    ids[0][5] = "new-show"
    slotted = [slot_history(h, i, scorer.config.n_items, scorer.config.unknown_slots) for h, i in zip(full, ids)]
    plays = [play("new-show", int(full[0]["ts"][5])), play("new-film", int(full[1]["ts"][8]), kind="movie")]
    for registry_owner in (scorer, incremental):
        register(registry_owner, plays)
    for n in range(9, 15):  # the first call fills the cache; then one step per user
        histories = [rows[:n] for rows, _ in slotted]
        titles = [tuple(slot_history(full[b][:n], ids[b][:n], scorer.config.n_items,
                                     scorer.config.unknown_slots)[1]) for b in range(3)]  # fmt: skip
        got, expected = incremental.predict_users(users, histories, titles), scorer.predict(histories, titles)
        assert_same_predictions(got, expected)
        assert got.new_titles == expected.new_titles == ("new-show", "new-film")
    assert incremental.scored_from_cache == 5 * 3


def test_a_new_titles_embedding_starts_where_the_trained_titles_like_it_are():
    """Where kind decides an item's embedding, a new title's derived embedding is its kind's."""
    scorer = make_scorer()
    model, config = scorer.model, scorer.config
    rng = np.random.default_rng(0)
    by_kind = torch.from_numpy(rng.normal(size=(config.n_kinds, config.d_item)).astype(np.float32))
    catalogue = np.zeros(config.n_items, dtype=[("item", np.int32), ("kind", np.int8), ("genres", np.int16, (4,)),
                                                ("release_ts", np.int64)])  # fmt: skip
    catalogue["item"] = np.arange(config.n_items)
    catalogue["kind"] = rng.integers(FIRST_REAL, config.n_kinds, config.n_items)
    catalogue["release_ts"] = np.iinfo(np.int64).min
    model.learn_catalogue(catalogue)
    with torch.no_grad():
        noise = 0.05 * torch.randn(config.n_items, config.d_item)
        model.features.item.weight.copy_(by_kind[torch.from_numpy(catalogue["kind"].astype(np.int64))] + noise)
    registry = NewTitleRegistry(model)
    for kind in range(FIRST_REAL, config.n_kinds):
        derived = torch.from_numpy(registry._embedding(kind, np.zeros(4, dtype=np.int16)))
        distances = (by_kind[FIRST_REAL:] - derived).norm(dim=1)
        assert int(distances.argmin()) + FIRST_REAL == kind


def test_calls_carry_the_registered_titles_columns_in_power_of_two_buckets():
    scorer = make_scorer(new_title_columns=20)
    history = random_history(6)
    now = int(history["ts"][-1])
    widths = []
    for registered in (0, 8, 9, 17, 25):
        register(scorer, [play(f"new-{n}", now - HOUR) for n in range(registered)])
        scores = scorer.predict([history]).item_scores
        widths.append((len(scorer.new_titles.names), scores.shape[1] - first_new_column(scorer)))
        assert scores.sum() == pytest.approx(1.0, abs=1e-5)
    # 8 columns before any title, then doubling up to the capacity (20), where registering stops.
    assert widths == [(0, 8), (8, 8), (9, 16), (17, 20), (20, 20)]
    assert [len(table) for table in scorer.new_titles.tables()] == [20] * 4


def test_a_title_registered_by_another_thread_waits_until_a_call_has_read_the_registry():
    scorer = make_scorer(new_title_columns=20)
    registry, now = scorer.new_titles, int(random_history(1)["ts"][0])
    register(scorer, [play(f"new-{n}", now) for n in range(8)])
    ninth = threading.Thread(target=register, args=(scorer, [play("new-8", now)]))
    read_recent_plays = registry.recent_plays

    def recent_plays_while_a_title_joins(ts):
        ninth.start()
        ninth.join(timeout=0.2)  # it waits for the registry: the call holds it
        return read_recent_plays(ts)

    registry.recent_plays = recent_plays_while_a_title_joins
    titles = registry.at(np.array([now]))
    ninth.join()
    assert len(titles.names) == len(titles.tables[0]) == titles.recent_plays[0].shape[1] == 8
    assert registry.width == 16 and registry.names[-1] == "new-8"


def test_a_model_that_keeps_no_attributes_starts_new_titles_at_the_catalogues_mean():
    scorer = make_scorer(intent_tasks=())  # V0: no IntentMatch, no attributes
    mean = scorer.model.features.item.weight.detach()[FIRST_REAL:].mean(0).numpy()
    np.testing.assert_allclose(scorer.new_titles._embedding(2, np.zeros(4)), mean, rtol=1e-6)


def test_a_closed_catalogue_has_no_new_title_columns():
    scorer = make_scorer(new_title_columns=0)
    history = random_history(6)
    register(scorer, [play("released-before", int(history["ts"][-1]) - HOUR)])
    (scores,) = scorer.predict([history]).item_scores
    assert scores.shape == (scorer.config.n_outputs,) == (scorer.config.n_items + scorer.config.unknown_slots,)
    assert scorer.new_titles.names == [] and scorer.new_titles.unregistered == 0  # nothing to warn of
