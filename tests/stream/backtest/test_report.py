"""The backtest report's paired comparisons."""
from __future__ import annotations

import pytest

from schemas import PlayEvent
from stream.backtest.report import JudgmentLog, compare, summarize

K = 10


def test_paired_differences_weigh_users_by_their_judgments():
    def log(system: str, ranks: list[int]) -> JudgmentLog:
        judged = JudgmentLog(system, "model", (), catalogue_size=100)
        for n, (user, rank) in enumerate(zip(["a", "a", "a", "b"], ranks)):
            event = PlayEvent(f"e{n}", user, "item", 1_700_000_000_000 + n, "discover", (), "movie", None, 1.0)
            judged.add(event, event, rank, rank, {}, [])
        return judged

    reference, other = log("reference", [1, 1, 1, 1]), log("other", [50, 50, 50, 1])
    comparison = compare(reference, other, K, resamples=200)
    assert comparison["paired_judgments"] == 4 and comparison["users"] == 2
    hr = comparison["metrics"][f"HR@{K}"]
    assert hr["difference"] == pytest.approx(-0.75)
    assert -1.0 <= hr["ci"][0] < hr["difference"] < hr["ci"][1] <= 0.0  # resamples of {a, b}: -1, -0.75 or 0


def test_the_unseen_only_metrics_judge_only_next_items_new_to_the_user():
    judged = JudgmentLog("model", "model", (), catalogue_size=100)
    for n, (rank, rank_unseen) in enumerate([(1, 0), (3, 1), (20, 12)]):  # the first next item was seen
        event = PlayEvent(f"e{n}", "u", "item", 1_700_000_000_000 + n, "discover", (), "movie", None, 1.0)
        judged.add(event, event, rank, rank_unseen, {}, [])
    overall = summarize(judged, K)["overall"]
    assert overall["users"] == 1 and overall[f"HR@{K}"] == pytest.approx(2 / 3)
    assert overall["unseen"]["users"] == 2 and overall["unseen"][f"HR@{K}"] == pytest.approx(1 / 2)
    assert overall["unseen"][f"NDCG@{K}"] == pytest.approx(1 / 2)
