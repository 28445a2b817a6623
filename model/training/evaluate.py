"""Offline evaluation: leave-one-out over each user's time-ordered history, full-catalogue ranking.

Per user, the last interaction is the test target (the protocol of published SASRec / BERT4Rec
results on MovieLens; training holds out more before it for validation: model.training.validation). The candidates are the whole
catalogue, already-seen items included (rewatching and continuing are real intents here); every
metric is also reported over unseen items only, the protocol of catalogues without re-consumption
and of most recent papers: the history's items are left out of the ranking and only targets the
user had not played before are judged ("users" says how many). Ties
count against the model: rank = 1 + number of other items scored at least as high as the target.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from model.serving.scorer import Predictions
from model.vocab import FIRST_REAL, PAD, UNKNOWN, Vocabularies

K = 10
BATCH = 256


class Ranker(Protocol):
    def predict(self, histories: Sequence[np.ndarray]) -> Predictions: ...


@dataclass
class Case:
    """One judgment: the history before an interaction, and that interaction as the target."""

    user: str
    history: np.ndarray
    target: np.ndarray  # one ROW_DTYPE row
    action: str  # the target's action, for the breakdown


def leave_one_out(rows_by_user: dict[str, np.ndarray], vocab: Vocabularies) -> list[Case]:
    """The test cases: each user's last interaction, after the ones before it."""
    cases = []
    for user, rows in rows_by_user.items():
        if len(rows) >= 2:
            target = rows[-1]
            cases.append(Case(user, rows[:-1], target, vocab.actions.token(int(target["action"]))))
    return cases


def seen_items(histories: Sequence[np.ndarray], n_items: int) -> np.ndarray:
    """(B, n_items) boolean: the items each history has played."""
    seen = np.zeros((len(histories), n_items), dtype=bool)
    for b, history in enumerate(histories):
        seen[b, history["item"].astype(np.int64)] = True
    return seen


def target_ranks(item_scores: np.ndarray, targets: np.ndarray, excluded: np.ndarray | None = None) -> np.ndarray:
    """1-based rank of each target item; an item the model does not know ranks last. `excluded`
    (B, n_items) boolean: items taken out of the ranking (the target itself never is) — the
    history's items, for the "unseen items only" protocol of gSASRec, HSTU and most recent papers."""
    n_items = item_scores.shape[1]
    known = targets >= FIRST_REAL
    safe_targets = np.where(known, targets, FIRST_REAL)
    if excluded is not None:
        excluded = excluded.copy()
        excluded[np.arange(len(targets)), safe_targets] = False
        item_scores = np.where(excluded, -np.inf, item_scores)
    target_scores = item_scores[np.arange(len(targets)), safe_targets]
    at_least = (item_scores[:, FIRST_REAL:] >= target_scores[:, None]).sum(axis=1)  # includes target
    return np.where(known, at_least, n_items).astype(np.int64)


def ndcg_per_case(ranks: np.ndarray, k: int = K) -> np.ndarray:
    """NDCG@k of each case: one relevant item, so 1 / log2(rank + 1) within the top k, else 0."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where(ranks <= k, 1.0 / np.log2(ranks + 1), 0.0)


def ranking_metrics(ranks: np.ndarray, k: int = K) -> dict[str, float]:
    ranks = np.asarray(ranks, dtype=np.float64)
    hit = ranks <= k
    return {
        "users": int(len(ranks)),
        f"HR@{k}": float(hit.mean()) if len(ranks) else 0.0,
        f"NDCG@{k}": float(ndcg_per_case(ranks, k).mean()) if len(ranks) else 0.0,
        f"MRR@{k}": float(np.where(hit, 1.0 / ranks, 0.0).mean()) if len(ranks) else 0.0,
    }


def paired_bootstrap(
    differences: np.ndarray, counts: np.ndarray | None = None, resamples: int = 1000, confidence: float = 0.95,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paired difference of two systems judged on the same users, with a bootstrap interval that
    resamples users. differences: (users,) or (users, metrics), each user's mean difference (system
    minus reference); counts: how many judgments each user's mean is over (a user with more
    judgments weighs more), one each by default. Returns the difference over all judgments and the
    interval's low and high ends, shaped like one row of `differences`."""
    differences = np.asarray(differences, dtype=np.float64)
    counts = np.ones(len(differences)) if counts is None else np.asarray(counts, dtype=np.float64)
    sums = differences * (counts if differences.ndim == 1 else counts[:, None])
    draws = np.random.default_rng(seed).integers(0, len(counts), (resamples, len(counts)))
    resampled = sums[draws].sum(axis=1) / counts[draws].sum(axis=1).reshape(-1, *([1] * (sums.ndim - 1)))
    tail = (1 - confidence) / 2
    low, high = np.quantile(resampled, [tail, 1 - tail], axis=0)
    return sums.sum(axis=0) / counts.sum(), low, high


def intent_hits(predictions: Predictions, targets: np.ndarray) -> dict[str, np.ndarray]:
    """Per task, whether the top predicted label is right; NaN where the target has no label."""
    hits = {}
    for task, probs in predictions.intent_probs.items():
        top = probs.argmax(axis=1)
        if task == "genre":
            has_label = (targets["genres"] >= FIRST_REAL).any(axis=1)
            right = (targets["genres"] == top[:, None]).any(axis=1)
        else:
            labels = targets[task].astype(np.int64)  # the row fields are named after the tasks
            has_label = (labels != PAD) & (labels != UNKNOWN)
            right = top == labels
        hits[task] = np.where(has_label, right.astype(np.float64), np.nan)
    return hits


@dataclass
class Judgments:
    """Everything measured on a set of cases, kept per case so any slice can be recomputed."""

    ranks: list[np.ndarray] = field(default_factory=list)
    ranks_unseen: list[np.ndarray] = field(default_factory=list)  # with the history's items left out
    target_seen: list[np.ndarray] = field(default_factory=list)  # the target is in its history
    target_known: list[np.ndarray] = field(default_factory=list)  # the target is in the vocabulary (seen at training)
    actions: list[str] = field(default_factory=list)
    hits: dict[str, list[np.ndarray]] = field(default_factory=lambda: defaultdict(list))

    def summary(self, k: int = K) -> dict:
        ranks = np.concatenate(self.ranks) if self.ranks else np.zeros(0)
        ranks_unseen = np.concatenate(self.ranks_unseen) if self.ranks_unseen else np.zeros(0)
        target_seen = np.concatenate(self.target_seen) if self.target_seen else np.zeros(0, dtype=bool)
        target_known = np.concatenate(self.target_known) if self.target_known else np.zeros(0, dtype=bool)
        hits = {task: np.concatenate(parts) for task, parts in self.hits.items()}
        actions = np.array(self.actions)

        def block(selector):
            result = ranking_metrics(ranks[selector], k)
            result["unseen"] = ranking_metrics(ranks_unseen[selector & ~target_seen], k)
            for task, values in hits.items():
                chosen = values[selector]
                chosen = chosen[~np.isnan(chosen)]
                result[f"{task}_accuracy"] = float(chosen.mean()) if len(chosen) else None
            return result

        return {
            "overall": block(np.ones(len(ranks), dtype=bool)),
            "by_action": {a: block(actions == a) for a in sorted(set(self.actions))},
            # Targets whose title the training data had, and the others (ranked last: not in the vocabulary).
            "by_training": {name: block(chosen) for name, chosen in
                            (("seen at training", target_known), ("new since training", ~target_known)) if chosen.any()},
        }  # fmt: skip


def judge(ranker: Ranker, cases: list[Case], batch: int = BATCH, progress=None) -> Judgments:
    judgments = Judgments()
    for start in range(0, len(cases), batch):
        chunk = cases[start : start + batch]
        predictions = ranker.predict([c.history for c in chunk])
        targets = np.stack([c.target for c in chunk])
        items = targets["item"].astype(np.int64)
        seen = seen_items([c.history for c in chunk], predictions.item_scores.shape[1])
        judgments.ranks.append(target_ranks(predictions.item_scores, items))
        judgments.ranks_unseen.append(target_ranks(predictions.item_scores, items, excluded=seen))
        judgments.target_seen.append(seen[np.arange(len(items)), items])
        judgments.target_known.append(items != UNKNOWN)
        judgments.actions.extend(c.action for c in chunk)
        for task, values in intent_hits(predictions, targets).items():
            judgments.hits[task].append(values)
        if progress is not None:
            progress.update(len(chunk))
    return judgments


def evaluate(ranker: Ranker, rows_by_user: dict[str, np.ndarray], vocab: Vocabularies, k: int = K) -> dict:
    return {"test": judge(ranker, leave_one_out(rows_by_user, vocab)).summary(k)}


def format_report(report: dict, k: int = K) -> str:
    """A plain-text table of the test split, overall and by the target's action."""
    test = report["test"]
    columns = [f"HR@{k}", f"NDCG@{k}", f"MRR@{k}"]
    unseen_columns = [f"HR@{k}", f"NDCG@{k}"]
    tasks = sorted(key[: -len("_accuracy")] for key in test["overall"] if key.endswith("_accuracy"))
    header = ["slice", "users", *columns, *[f"{c} unseen" for c in unseen_columns], *[f"acc:{t}" for t in tasks]]
    lines = [header]
    by_training = test["by_training"] if "new since training" in test["by_training"] else {}
    for name, block in [("overall", test["overall"]), *test["by_action"].items(), *by_training.items()]:
        accuracy = [block[f"{t}_accuracy"] for t in tasks]
        lines.append(
            [name, str(block["users"]), *[f"{block[c]:.4f}" for c in columns],
             *[f"{block['unseen'][c]:.4f}" for c in unseen_columns],
             *["-" if a is None else f"{a:.3f}" for a in accuracy]]
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in lines)
