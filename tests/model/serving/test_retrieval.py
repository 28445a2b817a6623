"""Serving from retrieved candidates: with every item retrieved it is the exact path; with fewer,
incremental serving equals full recomputation on the same candidates, and the top items keep their
names."""
from __future__ import annotations

import numpy as np
import pytest
from tests.model.serving.test_incremental import assert_same_predictions, interleaved_stream, make_scorer
from tests.model.test_intentrec import ARCHITECTURES, architecture, random_history

from model.serving.incremental import IncrementalScorer
from model.serving.retrieval import CandidateRetriever, ExactSearch, item_vectors
from model.vocab import FIRST_REAL


def with_retriever(scorer, candidates: int):
    scorer.model.item_layer.retriever = CandidateRetriever(scorer.model, ExactSearch(item_vectors(scorer.model)),
                                                           candidates)  # fmt: skip
    return scorer


def exact_scores(predictions, n_items):
    """The candidates' scores placed in their catalogue columns, the rest as they are (slots, new titles)."""
    scores = np.zeros((len(predictions.item_scores), n_items + predictions.item_scores.shape[1]
                       - predictions.item_columns.shape[1]), dtype=np.float32)  # fmt: skip
    width = predictions.item_columns.shape[1]
    for b, (items, row) in enumerate(zip(predictions.item_columns, predictions.item_scores)):
        first = np.r_[True, items[1:] != items[:-1]]
        scores[b, items[first]] = row[:width][first]
        scores[b, n_items:] = row[width:]
    return scores


@pytest.mark.parametrize("variant", ARCHITECTURES)
def test_retrieving_every_item_gives_the_exact_distribution(variant):
    exact = make_scorer(**architecture(variant))
    approximate = with_retriever(make_scorer(**architecture(variant)), candidates=10_000)
    histories = [random_history(n, seed=n) for n in (1, 5, 17)]
    expected, got = exact.predict(histories), approximate.predict(histories)
    n_items = exact.config.n_items
    scores = exact_scores(got, n_items)
    scores[:, :FIRST_REAL] = expected.item_scores[:, :FIRST_REAL]  # padding and unknown: never ranked either way
    np.testing.assert_allclose(scores, expected.item_scores, rtol=1e-5, atol=1e-7)
    names = [[item.item_id for item in s.next_items] for s in exact.to_scores(expected, top_k=10)]
    assert names == [[item.item_id for item in s.next_items] for s in approximate.to_scores(got, top_k=10)]


@pytest.mark.parametrize("variant", ["V0", "V3"])
def test_incremental_serving_of_candidates_equals_full_recomputation(variant):
    scorer = with_retriever(make_scorer(**architecture(variant)), candidates=6)
    histories = {f"u{u}": random_history(30 + 3 * u, seed=u) for u in range(6)}
    events = interleaved_stream(histories, seed=3)
    incremental = IncrementalScorer(scorer)
    for start in range(0, len(events), 9):
        batch = events[start : start + 9]
        rows = [histories[user][:n] for user, n in batch]
        got, expected = incremental.predict_users([user for user, _ in batch], rows), scorer.predict(rows)
        np.testing.assert_array_equal(got.item_columns, expected.item_columns)  # the same candidates
        assert_same_predictions(got, expected)
        assert got.item_columns.shape[1] == 2 + scorer.config.attention_window + 6
    assert incremental.scored_from_cache > 0


def test_the_pointers_items_are_always_candidates_and_the_top_items_are_named_from_them():
    scorer = with_retriever(make_scorer(), candidates=3)
    history = random_history(12, seed=4)
    predictions = scorer.predict([history])
    candidates = set(predictions.item_columns[0].tolist())
    assert set(history["item"][-scorer.config.attention_window :].tolist()) <= candidates
    ranked = predictions.item_scores[0]
    assert 0 < ranked.sum() <= 1.0 + 1e-5  # the items not retrieved hold the rest
    (scores,) = scorer.to_scores(predictions, top_k=5)
    named = {scorer.vocab.items.lookup(item.item_id) for item in scores.next_items}
    assert named <= candidates and len(named) == 5


class MissingOne:
    """An index that never finds `item`, as an HNSW graph over inner products may not."""

    def __init__(self, vectors: np.ndarray, item: int):
        self.exact, self.missing = ExactSearch(vectors), item - FIRST_REAL

    def __call__(self, queries: np.ndarray, k: int) -> np.ndarray:
        return np.array([[i for i in row if i != self.missing][:k] for row in self.exact(queries, k + 1)])


def test_the_trainings_most_played_items_are_candidates_whatever_the_index_misses():
    scorer = make_scorer()
    history = random_history(12, seed=4)
    reached = set(history["item"][-scorer.config.attention_window :].tolist())
    explore = scorer.predict([history]).item_scores[0][: scorer.config.n_items]
    best = max(set(range(FIRST_REAL, scorer.config.n_items)) - reached, key=lambda item: explore[item])
    search = MissingOne(item_vectors(scorer.model), best)
    for most_played, retrieved in (((), False), ((best, FIRST_REAL), True)):
        scorer.model.item_layer.retriever = CandidateRetriever(scorer.model, search, 3, most_played)
        assert (best in scorer.predict([history]).item_columns[0]) == retrieved


def test_a_checkpoints_most_played_items_reach_the_retriever_and_a_bad_list_is_refused(tmp_path):
    from model.checkpoint import CheckpointError, save_checkpoint
    from model.serving.incremental import load_serving_scorer

    scorer = make_scorer()
    save_checkpoint(tmp_path / "m", scorer.model, scorer.vocab, {"most_played": [5, FIRST_REAL]})
    served = load_serving_scorer(tmp_path / "m", catalogue="approximate")
    assert served.model.item_layer.retriever.most_played.tolist() == [5, FIRST_REAL] == list(served.most_played)
    save_checkpoint(tmp_path / "m", scorer.model, scorer.vocab, {"most_played": [scorer.config.n_items]})
    with pytest.raises(CheckpointError, match="most_played must be a list of item indices"):
        load_serving_scorer(tmp_path / "m", catalogue="approximate")


def test_the_serving_scorer_retrieves_where_asked_or_beyond_the_threshold_and_only_eager(tmp_path, monkeypatch):
    from model.serving import retrieval
    from model.serving.backends import BackendError, EagerBackend
    from model.serving.incremental import load_serving_scorer

    assert load_serving_scorer(make_scorer(), catalogue="auto").model.item_layer.retriever is None
    approximate = load_serving_scorer(make_scorer(), catalogue="approximate")
    assert approximate.model.item_layer.retriever is not None and isinstance(approximate.backend, EagerBackend)
    monkeypatch.setattr(retrieval, "APPROXIMATE_FROM_ITEMS", 10)  # the tiny catalogue is "large"
    assert load_serving_scorer(make_scorer(), catalogue="auto").model.item_layer.retriever is not None
    assert load_serving_scorer(make_scorer(), catalogue="exact").model.item_layer.retriever is None
    with pytest.raises(BackendError, match="scores the whole catalogue"):
        load_serving_scorer(make_scorer(), backend=f"aoti:{tmp_path}", catalogue="approximate")


def test_the_index_is_saved_beside_the_model_and_loaded_only_where_it_is_the_one_saved_for_these_weights(
    tmp_path, monkeypatch, caplog
):
    from model.checkpoint import save_checkpoint
    from model.serving import retrieval
    from model.serving.incremental import load_serving_scorer

    scorer = make_scorer()
    save_checkpoint(tmp_path / "m", scorer.model, scorer.vocab, {"name": "t", "version": "1"})
    first = load_serving_scorer(tmp_path / "m", catalogue="approximate")
    assert (tmp_path / "m" / "index" / "hnsw.bin").is_file() and (tmp_path / "m" / "index" / "manifest.json").is_file()

    built = []
    real_build = retrieval.IndexSearch.build
    monkeypatch.setattr(retrieval.IndexSearch, "build", classmethod(lambda cls, v: built.append(1) or real_build(v)))
    again = load_serving_scorer(tmp_path / "m", catalogue="approximate")
    assert built == []  # loaded, not built
    history = random_history(9, seed=2)
    np.testing.assert_array_equal(first.predict([history]).item_columns, again.predict([history]).item_columns)

    with open(tmp_path / "m" / "index" / "hnsw.bin", "r+b") as index_file:
        index_file.seek(100)
        index_file.write(b"\xff\xff")  # changed since it was saved
    with caplog.at_level("WARNING"):
        load_serving_scorer(tmp_path / "m", catalogue="approximate")
    assert built == [1] and "is not the file its manifest recorded" in caplog.text

    (tmp_path / "m" / "index" / "hnsw.bin").chmod(0o666)  # anyone may change it
    load_serving_scorer(tmp_path / "m", catalogue="approximate")
    assert built == [1, 1]

    other = make_scorer(seed=5)  # other weights under the same directory
    save_checkpoint(tmp_path / "m", other.model, other.vocab, {"name": "t", "version": "2"})
    load_serving_scorer(tmp_path / "m", catalogue="approximate")
    assert built == [1, 1, 1]
