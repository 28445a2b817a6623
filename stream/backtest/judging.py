"""Judging: each update, made for an event e of user u, against u's next event n (the rank of n's item
in the whole catalogue, and per intent task whether the top label is n's); and the popularity and
recency floors, judged on the same events."""
from __future__ import annotations

from collections import defaultdict, deque
from itertools import groupby

import numpy as np

from model.serving.scorer import Predictions, Scorer, top_indices
from model.training.baselines import Popularity, Recency
from model.training.evaluate import intent_hits, seen_items, target_ranks
from model.features import slot_title
from model.vocab import FIRST_REAL, UNKNOWN, Vocabularies
from schemas import PlayEvent
from stream.backtest.report import IntentSample, JudgmentLog
from stream.backtest.timeline import Timeline
from stream.dataflow import ScoreRequest




def _rows_of(predictions: Predictions, rows: list[int]) -> Predictions:
    def take(values):
        return None if values is None else values[rows]

    return Predictions(
        item_scores=predictions.item_scores[rows],
        intent_probs={task: probs[rows] for task, probs in predictions.intent_probs.items()},
        intent_embedding=take(predictions.intent_embedding),
        intent_weights=take(predictions.intent_weights),
        new_titles=predictions.new_titles,
        item_columns=take(predictions.item_columns),
    )


def unseen_ranks(item_scores: np.ndarray, items: np.ndarray, histories, seen: np.ndarray | None = None) -> np.ndarray:
    """Each target's rank among the items its history has not played; 0 where it has played the
    target. `items`: the targets' columns; `seen` (B, columns): the columns the histories played
    (default: column = item index)."""
    seen = seen_items(histories, item_scores.shape[1]) if seen is None else seen
    ranks = target_ranks(item_scores, items, excluded=seen)
    safe = np.maximum(items, 0)  # -1: a target the row did not score; ranked last either way
    return np.where(seen[np.arange(len(items)), safe] & (items >= 0), 0, ranks)


def seen_columns(predictions: Predictions, histories, n_items: int) -> np.ndarray:
    """(B, columns): which columns of each row's scores the row's history played."""
    if predictions.item_columns is None:
        return seen_items(histories, predictions.item_scores.shape[1])
    seen = np.zeros(predictions.item_scores.shape, dtype=bool)
    width = predictions.item_columns.shape[1]
    for b, history in enumerate(histories):
        played = history["item"].astype(np.int64)
        seen[b, :width] = np.isin(predictions.item_columns[b], played[played < n_items])
        seen[b, played[played >= n_items] - n_items + width] = True
    return seen


class ModelJudge:
    """The score step's observer: judges each update whose user's next event is in the window."""

    def __init__(self, name: str, scorer: Scorer, timeline: Timeline, score_from: int | None, top_k: int):
        self.scorer = scorer
        self.timeline = timeline
        self.score_from = score_from
        self.top_k = top_k
        self.n_items = scorer.config.n_items
        tasks = tuple(scorer.config.intent_tasks)
        self.log = JudgmentLog(name, "model", tasks, len(scorer.vocab.items) - FIRST_REAL)
        self.intents = IntentSample(tasks)

    def judged_event(self, event: PlayEvent) -> PlayEvent | None:
        after = self.timeline.next_event(event)
        if after is None or (self.score_from is not None and after.ts < self.score_from):
            return None
        return after

    def __call__(self, requests: list[ScoreRequest], predictions: Predictions) -> None:
        chosen, judged = [], []
        for position, request in enumerate(requests):
            after = self.judged_event(request.event)
            if after is not None:
                chosen.append(position)
                judged.append(after)
        if not chosen:
            return
        picked = _rows_of(predictions, chosen)
        targets = np.stack([self.scorer.featurize(event) for event in judged])
        in_training = targets["item"] != UNKNOWN
        # A title the vocabulary lacks is judged in its new-title column where the update ranked it,
        # else in the user's own slot for it where there is one.
        first_new = self.n_items + self.scorer.config.unknown_slots
        items = np.array([target_column(item, event.item_id, requests[p].unknown_titles, self.n_items,
                                        new_title_column(picked, row, event.item_id, first_new, self.n_items))
                          for row, (item, event, p) in enumerate(zip(targets["item"].tolist(), judged, chosen))],
                         dtype=np.int64)  # fmt: skip
        # Retrieved candidates (model.serving.retrieval): a target the row's candidates lack ranks last.
        columns = picked.columns(items, self.n_items)
        histories = [requests[p].history for p in chosen]
        ranks = target_ranks(picked.item_scores, columns)
        ranks_unseen = unseen_ranks(picked.item_scores, columns, histories, seen_columns(picked, histories, self.n_items))
        hits = intent_hits(picked, targets)
        width = self.n_items if picked.item_columns is None else picked.item_columns.shape[1]
        recommended = picked.items(top_indices(picked.item_scores[:, :width], self.top_k), self.n_items)
        for row, (position, event) in enumerate(zip(chosen, judged)):
            self.log.add(requests[position].event, event, ranks[row], ranks_unseen[row],
                         {t: h[row] for t, h in hits.items()}, recommended[row], in_training[row])
        if picked.intent_embedding is not None and picked.intent_weights is not None:
            self.intents.add(picked.intent_embedding, picked.intent_weights)


def target_column(item: int, item_id: str, unknown_titles: tuple[str, ...], n_items: int,
                  new_title_column: int | None = None) -> int:  # fmt: skip
    """The judged item's column among the scores: a title the vocabulary lacks is scored in its
    new-title column where the title was ranked then (`new_title_column`; model.serving.new_titles),
    else in the user's slot for it, else it is the unknown item (ranked last)."""
    if item != UNKNOWN:
        return item
    if new_title_column is not None:
        return new_title_column
    if item_id in unknown_titles:
        return n_items + unknown_titles.index(item_id)
    return item


def new_title_column(predictions: Predictions, row: int, item_id: str, first_new: int, n_items: int) -> int | None:
    """The column of `item_id` among row `row`'s new titles (counted as if the catalogue's columns
    came first: Predictions.columns), if that update ranked it (a title not played in the week before
    the update's event has score 0 there: it was not ranked)."""
    if item_id not in predictions.new_titles:
        return None
    column = first_new + predictions.new_titles.index(item_id)
    (scored,) = _rows_of(predictions, [row]).columns(np.array([column]), n_items)
    return column if predictions.item_scores[row, scored] > 0 else None


def judge_baselines(timeline: Timeline, vocab: Vocabularies, history_len: int, score_from: int | None,
                    top_k: int, unknown_slots: int = 0) -> list[JudgmentLog]:  # fmt: skip
    """Prequential popularity and recency, judged on every event with a next event in the window.

    Popularity counts every play at or before the scored event's time (so plays at the same time
    count whatever order they arrived in); recency reads the user's last `history_len` items, their
    unknown titles in slots as the model's (`unknown_slots`), so it continues those too. Raw-id
    recency is a "continue watching" row that no vocabulary limits: every title the user has played,
    by raw id, most recently played first (any other title ranks last)."""
    n_items = len(vocab.items)
    popularity = Popularity([], n_items, unknown_slots)
    recency = Recency(popularity)
    logs = {name: JudgmentLog(name, "baseline", (), n_items - FIRST_REAL)
            for name in ("popularity", "recency", "raw-id recency")}  # fmt: skip
    played_titles: dict[str, dict[str, None]] = defaultdict(dict)  # each user's titles, least recently played first
    recent_items: dict[str, deque] = defaultdict(lambda: deque(maxlen=history_len))
    titles: dict[str, tuple[str, ...]] = defaultdict(tuple)
    events = timeline.events
    in_time_order = sorted(range(len(events)), key=lambda i: events[i].ts)  # stable: ties keep arrival order
    for _, same_time in groupby(in_time_order, key=lambda i: events[i].ts):
        same_time = [events[i] for i in same_time]
        popularity.add([vocab.items.lookup(event.item_id) for event in same_time])
        for event in same_time:
            played = np.array(vocab.items.lookup(event.item_id), dtype=[("item", np.int64)])
            recent = recent_items[event.user_id]
            if played["item"] == UNKNOWN:  # a title the vocabulary lacks: its slot, as the stream gives it
                titles[event.user_id], taken = slot_title(played, event.item_id, titles[event.user_id],
                                                          np.array(recent, dtype=np.int64), n_items, unknown_slots)
                if taken is not None:
                    recent_items[event.user_id] = recent = deque((UNKNOWN if item == taken else item for item in recent),
                                                                 maxlen=history_len)  # fmt: skip
            recent.append(int(played["item"]))
            mine = played_titles[event.user_id]
            mine.pop(event.item_id, None)
            mine[event.item_id] = None
            after = timeline.next_event(event)
            if after is None or (score_from is not None and after.ts < score_from):
                continue
            logs["raw-id recency"].add(event, after, *raw_id_ranks(list(mine), after.item_id, n_items), {},
                                       [vocab.items.lookup(title) for title in reversed(list(mine)[-top_k:])],
                                       vocab.items.lookup(after.item_id) != UNKNOWN)  # fmt: skip
            history = np.array(recent_items[event.user_id], dtype=[("item", np.int64)])
            known = vocab.items.lookup(after.item_id)
            target = np.array([target_column(known, after.item_id, titles[event.user_id], n_items)])
            for name, baseline in (("popularity", popularity), ("recency", recency)):
                item_scores = baseline.predict([history]).item_scores
                (rank,) = target_ranks(item_scores, target)
                (rank_unseen,) = unseen_ranks(item_scores, target, [history])
                logs[name].add(event, after, rank, rank_unseen, {}, top_indices(item_scores[0, :n_items], top_k),
                               known != UNKNOWN)
    return list(logs.values())


def raw_id_ranks(titles: list[str], target: str, n_items: int) -> tuple[int, int]:
    """Raw-id recency's rank of `target` (titles: the user's, least recently played first): its place
    among them, most recent first, or last when the user has not played it; and the unseen-only rank
    (0: a title the user played; last otherwise, since the rule ranks no title the user has not played)."""
    if target in titles:
        return len(titles) - titles.index(target), 0
    return max(n_items, len(titles) + 1), max(n_items, len(titles) + 1)
