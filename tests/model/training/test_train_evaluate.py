"""Training, offline evaluation, baselines and the CLI commands around them, on a small synthetic world."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch

from model.training.baselines import Popularity, Recency
from model.checkpoint import load_checkpoint
from model.config import TrainConfig
from model.training.evaluate import (
    Case, evaluate, judge, leave_one_out, ndcg_per_case, paired_bootstrap, ranking_metrics, seen_items, target_ranks,
)
from model.features import ROW_DTYPE
from model.vocab import UNKNOWN
from model.playlogs.files import LogError, read_log, read_user_sequences, write_catalogue, write_log
from schemas import CatalogueEntry
from model.serving.scorer import Scorer
from model.playlogs.synth import generate_world
from model.features import batch_tensors
from model.inputs import model_inputs
from model.intentrec import IntentRec
from model.config import variant_overrides
from model.training.validation import held_out
from model.training.optimizer import Optimizer
from model.training.train import MOST_PLAYED, WATCH_FLOOR_S, chunk_spans, load_rows, loss_of_batch, train_model
from tests.model.test_intentrec import random_history, tiny_config
from stream.cli import main
from stream.settings import SMALL_MODEL


@pytest.fixture(scope="module")
def world_log(tmp_path_factory):
    path = tmp_path_factory.mktemp("world") / "world.msgpack"
    write_log(path, generate_world(seed=3, n_users=60, n_titles=120, days=20))
    return path


@pytest.fixture(scope="module")
def trained(world_log, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "m"
    result = train_model(world_log, out, train_config=TrainConfig(epochs=2), model_overrides=SMALL_MODEL, progress=False)
    return out, result


def test_ranks_count_ties_against_the_model_and_unknown_targets_rank_last():
    scores = np.array([[0, 0, 0.5, 0.2, 0.5, 0.1], [0, 0, 0.1, 0.2, 0.3, 0.4]])
    assert target_ranks(scores, np.array([2, 5])).tolist() == [2, 1]
    assert target_ranks(scores, np.array([1, 3])).tolist() == [6, 3]  # index 1 = unknown item


def test_ranking_metrics_by_hand():
    metrics = ranking_metrics(np.array([1, 3, 11]), k=10)
    assert metrics["HR@10"] == pytest.approx(2 / 3)
    assert metrics["NDCG@10"] == pytest.approx((1 + 1 / np.log2(4)) / 3)
    assert metrics["MRR@10"] == pytest.approx((1 + 1 / 3) / 3)
    assert ndcg_per_case(np.array([1, 3, 11]), k=10) == pytest.approx([1.0, 0.5, 0.0])


def test_chunks_cover_every_position_once_with_context():
    spans = chunk_spans(10, chunk_len=4, warmup=2)
    trained_positions = [p for start, end, loss_from in spans for p in range(start + loss_from, end)]
    assert trained_positions == list(range(10))
    assert all(end - start <= 4 for start, end, _ in spans)


def test_recency_puts_the_last_seen_item_first():
    rows = np.zeros(3, dtype=ROW_DTYPE)
    rows["item"] = [5, 7, 5]
    recency = Recency(Popularity([rows], n_items=10))
    scores = recency.predict([rows[:2]]).item_scores[0]
    assert np.argsort(-scores)[:2].tolist() == [7, 5]
    popularity = Popularity([rows], n_items=10)
    assert popularity.predict([rows]).item_scores[0].argmax() == 5


def test_training_saves_a_checkpoint_that_predicts_better_than_chance(trained, world_log):
    out, result = trained
    model, vocab, meta = load_checkpoint(out)
    assert meta["train"]["best_epoch"] == result.best_epoch
    scorer = Scorer.load(out)
    rows_by_user, _ = load_rows(world_log, vocab=scorer.vocab)
    report = evaluate(scorer, rows_by_user, scorer.vocab)
    chance_hr = 10 / (len(vocab.items) - 2)
    assert report["test"]["overall"]["HR@10"] > 2 * chance_hr
    assert set(report["test"]["by_action"]) <= set(vocab.actions.tokens)
    assert report["test"]["overall"]["action_accuracy"] is not None


def test_evaluation_uses_the_scorer_of_the_stream(trained, world_log):
    """The offline test prediction for a user is what Scorer.score returns for that history."""
    out, _ = trained
    scorer = Scorer.load(out)
    rows_by_user, _ = load_rows(world_log, vocab=scorer.vocab)
    case = leave_one_out(rows_by_user, scorer.vocab)[0]
    (scores,) = scorer.score([case.history], top_k=10)
    predicted = scorer.predict([case.history]).item_scores[0]
    assert [scorer.vocab.items.lookup(s.item_id) for s in scores.next_items] == list(np.argsort(-predicted)[:10])


def test_train_until_keeps_only_the_past(world_log, tmp_path):
    events = list(read_log(world_log))
    cut = events[len(events) // 2].ts
    rows_by_user, _ = load_rows(world_log, until_ts=cut)
    assert max(int(r["ts"].max()) for r in rows_by_user.values()) < cut
    with pytest.raises(LogError, match="no events"):
        load_rows(world_log, until_ts=events[0].ts)


def test_cli_train_and_evaluate(world_log, tmp_path, capsys):
    model_dir = tmp_path / "m"
    assert main(["train", str(world_log), "--out", str(model_dir), "--epochs", "1", "--small", "--variant", "V1",
                 "--loss-weighting", "watch", "--ema-decay", "0.9"]) == 0
    trained = json.loads((model_dir / "config.json").read_text())["train"]
    assert f"over {trained['validation_targets']} targets" in capsys.readouterr().out
    assert (trained["loss_weighting"], trained["ema_decay"]) == ("watch", 0.9)
    assert main(["evaluate", str(model_dir), str(world_log)]) == 0
    printed = capsys.readouterr().out
    assert "NDCG@10" in printed and "overall" in printed
    report = json.loads((model_dir / "evaluation.json").read_text())
    rows_by_user, _ = load_rows(world_log)
    assert report["test"]["overall"]["users"] == sum(len(rows) >= 2 for rows in rows_by_user.values())


def test_cli_refuses_bad_inputs_with_a_message(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["train", str(empty), "--out", str(tmp_path / "m")]) == 2
    assert "no events" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "log.csv"), "--out", str(tmp_path / "m")]) == 2
    assert "log.csv" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing-model"), str(empty)]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", str(empty), "--out", str(tmp_path / "m"), "--until", "yesterday"])


def test_popularity_counts_plays_added_later_like_plays_it_started_with():
    rows = np.zeros(3, dtype=ROW_DTYPE)
    rows["item"] = [5, 7, 5]
    prequential = Popularity([], n_items=10)
    prequential.add([5, 7])
    prequential.add([5])
    assert np.array_equal(prequential.scores, Popularity([rows], n_items=10).scores)


def test_paired_bootstrap_weighs_users_by_their_judgments_and_brackets_the_difference():
    differences = np.array([[0.1, 1.0], [0.3, -1.0], [0.2, 0.0]])
    counts = np.array([1, 3, 1])
    difference, low, high = paired_bootstrap(differences, counts, resamples=500)
    assert np.allclose(difference, [(0.1 + 0.9 + 0.2) / 5, (1.0 - 3.0) / 5])
    assert np.all(low <= difference) and np.all(difference <= high)
    assert low[0] >= 0.1 and high[0] <= 0.3  # every resample's mean lies within the users' range
    same, low, high = paired_bootstrap(np.full(20, 0.5))
    assert same == low == high == 0.5


def test_unseen_ranking_leaves_the_history_out_but_never_the_target():
    scores = np.array([[0.0, 0.0, 0.9, 0.8, 0.7, 0.1]])
    history = np.zeros(2, dtype=ROW_DTYPE)
    history["item"] = [2, 4]  # item 4, the target, was also played before
    seen = seen_items([history], 6)
    assert target_ranks(scores, np.array([4])).tolist() == [3]
    assert target_ranks(scores, np.array([4]), excluded=seen).tolist() == [2]  # only item 2 left out
    assert target_ranks(scores, np.array([5]), excluded=seen).tolist() == [2]  # 2 and 4 left out: 3 wins
    assert seen[0, 4] and not seen[0, 5]  # judged over unseen items only when the target is new


def test_evaluation_splits_targets_by_whether_training_had_their_title():
    histories = [np.zeros(3, dtype=ROW_DTYPE) for _ in range(3)]
    for history, items in zip(histories, ([2, 3, 4], [3, 4, 5], [4, 5, 6])):
        history["item"] = items
    targets = np.zeros(3, dtype=ROW_DTYPE)
    targets["item"] = [4, UNKNOWN, 5]  # the second user's next title came after training
    cases = [Case(f"u{b}", histories[b], targets[b], "discover") for b in range(3)]
    summary = judge(Popularity(histories, n_items=20), cases).summary(k=10)
    assert summary["by_training"]["seen at training"]["HR@10"] == 1.0
    assert summary["by_training"]["new since training"]["HR@10"] == 0.0  # unknown titles rank last
    assert summary["overall"]["HR@10"] == pytest.approx(2 / 3)


def test_an_unknown_loss_weighting_or_a_decay_outside_0_1_is_refused(world_log, tmp_path, capsys):
    with pytest.raises(ValueError, match="loss_weighting='minutes'; choose one of"):
        TrainConfig(loss_weighting="minutes")
    with pytest.raises(ValueError, match=r"ema_decay=1.0 must be in \[0, 1\)"):
        TrainConfig(ema_decay=1.0)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(world_log), "--out", str(tmp_path / "m"), "--ema-decay", "1"])
    assert exit_info.value.code == 2 and "expected a number in [0, 1), got 1" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_the_next_item_loss_weights_targets_by_watch_time_only_when_asked():
    torch.manual_seed(0)
    model = IntentRec(tiny_config(**variant_overrides("V0"))).eval()  # no intent losses, no dropout
    rows = random_history(12, seed=4)
    following = np.zeros_like(rows)
    following[:-1] = rows[1:]
    x = model_inputs(batch_tensors([rows], len(rows)), model.config)
    with torch.no_grad():
        p = model(x, targets=batch_tensors([following], len(rows))["item"].long()).item_probs[0, :-1]
        ce = -torch.log(p)
        batch = ([rows], [0], [following])
        uniform, watch = (loss_of_batch(model, batch, weighting) for weighting in ("uniform", "watch"))
    d = torch.from_numpy(following["watch_s"][:-1] + WATCH_FLOOR_S)
    torch.testing.assert_close(uniform, ce.mean())
    torch.testing.assert_close(watch, (d * ce).sum() / d.sum())
    assert not torch.isclose(uniform, watch)


def test_the_genre_loss_sums_a_binary_cross_entropy_over_the_genre_labels():
    """The paper's multi-label loss: a sum over labels, not a mean that weighs the task 1/n_genres."""
    torch.manual_seed(0)
    model = IntentRec(tiny_config(intent_tasks=("genre",), intent_loss_weight=1.0)).eval()
    rows = random_history(12, seed=5)
    following = np.zeros_like(rows)
    following[:-1] = rows[1:]
    batch = ([rows], [0], [following])
    x = model_inputs(batch_tensors([rows], len(rows)), model.config)
    targets = batch_tensors([following], len(rows))
    with torch.no_grad():
        out = model(x, targets=targets["item"].long())
        item_ce = -torch.log(out.item_probs[0, :-1]).mean()
        logits = out.intent_logits["genre"][0, :-1, 2:]
        labels = torch.zeros_like(logits)
        for position, genres in enumerate(following["genres"][:-1]):
            labels[position, [g - 2 for g in genres if g >= 2]] = 1.0
        per_label = -(labels * torch.nn.functional.logsigmoid(logits) + (1 - labels) * torch.nn.functional.logsigmoid(-logits))
        torch.testing.assert_close(loss_of_batch(model, batch, "uniform"), item_ce + per_label.sum(-1).mean())


@pytest.fixture(scope="module")
def held_out_log(tmp_path_factory):
    """A world whose users' last plays, and second-to-last ones, are of titles nobody played before
    (so they are only ever test, or validation, targets), and whose movies have no release date."""
    events = generate_world(seed=5, n_users=30, n_titles=80, days=20)
    by_user = {}
    for event in events:
        by_user.setdefault(event.user_id, []).append(event)
    renamed = {}
    for user, plays in by_user.items():
        if len(plays) >= 20:
            renamed[plays[-1].event_id] = f"only-tested-{user}"
            renamed[plays[-2].event_id] = f"only-validated-{user}"
    changed = [replace(event, item_id=renamed[event.event_id]) if event.event_id in renamed
               else replace(event, release_ts=None) if event.item_id.startswith("movie") else event
               for event in events]  # fmt: skip
    path = tmp_path_factory.mktemp("held-out") / "log.msgpack"
    write_log(path, changed)
    return path, sorted(title for title in renamed.values() if title.startswith("only-tested"))


@pytest.mark.parametrize("refit", [True, False])
def test_training_learns_nothing_from_its_held_out_events_and_keeps_finite_buffers(held_out_log, tmp_path, refit):
    log, tested_titles = held_out_log
    result = train_model(log, tmp_path / "m", train_config=TrainConfig(epochs=2, refit=refit),
                         model_overrides=SMALL_MODEL, progress=False)  # fmt: skip
    model, vocab, meta = load_checkpoint(tmp_path / "m")
    titles = set(vocab.items.tokens)
    assert not {title for title in titles if title.startswith("only-tested")}  # never the test targets
    validated = {title for title in titles if title.startswith("only-validated")}
    assert len(validated) == (len(tested_titles) if refit else 0)  # a refit learns the validation targets too
    sequences = read_user_sequences(log)
    splits = [held_out(len(events), 0.05) for events in sequences.values()]
    expected_targets = sum(max(0, split.test - max(1, split.validation_from)) for split in splits)
    assert result.validation_targets == meta["train"]["validation_targets"] == expected_targets
    assert expected_targets > sum(split.test >= 2 for split in splits)  # long histories give several
    end = "test" if refit else "validation_from"
    assert result.train_events == meta["train"]["trained_events"] == sum(getattr(split, end) for split in splits)
    targets = Counter(vocab.items.lookup(event.item_id) for events, split in zip(sequences.values(), splits)
                      for event in events[1 : getattr(split, end)])  # fmt: skip
    assert meta["most_played"] == sorted(targets, key=lambda item: (-targets[item], item))[:MOST_PLAYED]
    release_days = model.item_layer.intent_match.item_release_day
    assert not torch.isnan(release_days).any() and torch.isinf(release_days).any()  # movies have no release date
    report = evaluate(Scorer.load(tmp_path / "m"), load_rows(log, vocab=vocab)[0], vocab)
    assert report["test"]["by_training"]["new since training"]["users"] == len(tested_titles)


def test_a_model_trained_with_sampled_negatives_predicts_better_than_chance(world_log, tmp_path):
    train_model(world_log, tmp_path / "m", train_config=TrainConfig(epochs=2, softmax="sampled", negatives=32),
                model_overrides=SMALL_MODEL, progress=False)  # fmt: skip
    scorer = Scorer.load(tmp_path / "m")
    report = evaluate(scorer, load_rows(world_log, vocab=scorer.vocab)[0], scorer.vocab)
    assert report["test"]["overall"]["HR@10"] > 2 * 10 / (len(scorer.vocab.items) - 2)


@pytest.mark.parametrize("row_by_row_from", [50, None])
def test_the_item_table_is_updated_row_by_row_only_when_sampled_beyond_the_threshold(world_log, tmp_path, monkeypatch,
                                                                                   row_by_row_from):  # fmt: skip
    import model.training.train as train

    if row_by_row_from:
        monkeypatch.setattr(train, "ROW_BY_ROW_FROM_ITEMS", row_by_row_from)  # this world has some 120 titles
    made = []
    monkeypatch.setattr(train, "Optimizer", lambda *args, **kwargs: made.append(kwargs) or Optimizer(*args, **kwargs))
    for softmax in ("sampled", "full"):
        train_model(world_log, tmp_path / softmax, train_config=TrainConfig(epochs=1, softmax=softmax, refit=False),
                    model_overrides=SMALL_MODEL, progress=False)  # fmt: skip
    assert [kwargs["sparse_items"] for kwargs in made] == [bool(row_by_row_from), False]


def test_a_catalogue_file_gives_every_listed_title_an_index_and_its_attributes(world_log, tmp_path):
    played = {event.item_id for event in read_log(world_log)}
    listed = [CatalogueEntry(item_id=f"shelf-{n}", kind="show" if n % 2 else "movie", genres=("Drama",),
                             release_ts=None if n % 3 else 1_700_000_000_000) for n in range(5)]  # fmt: skip
    write_catalogue(tmp_path / "catalogue.jsonl", listed)
    train_model(world_log, tmp_path / "m", train_config=TrainConfig(epochs=1, refit=False), model_overrides=SMALL_MODEL,
                progress=False, catalogue_path=tmp_path / "catalogue.jsonl")  # fmt: skip
    model, vocab, meta = load_checkpoint(tmp_path / "m")
    assert {entry.item_id for entry in listed} | played >= set(vocab.items.tokens) >= {e.item_id for e in listed}
    match = model.item_layer.intent_match
    shelf = [vocab.items.lookup(entry.item_id) for entry in listed]
    kinds = match.item_attributes[shelf, : len(vocab.kinds)].argmax(1)
    assert kinds.tolist() == [vocab.kinds.lookup(entry.kind) for entry in listed]
    assert torch.isfinite(match.item_release_day[shelf]).tolist() == [entry.release_ts is not None for entry in listed]
    assert meta["catalogue"] == str(tmp_path / "catalogue.jsonl")
