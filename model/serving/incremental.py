"""Incremental inference: a user's new event scored from what was cached for the user's earlier
interactions, instead of a forward pass over the whole history.

Why it is exact: positions come from each interaction's own timestamp and every attention layer
reaches at most L-1 interactions back (model.intentrec), so what a layer computes for a past
interaction never changes when a new one arrives. A new event needs, per attention layer, only the
keys and values of the user's last L-1 interactions: its one row runs through each layer of the
short-term, intent and item transformers in turn (chained as in IntentRec.forward), attending to
those and to itself; the item encoder's repeat pointer reads the same rows' pointer keys and items.
That is O(L) per layer, against O(L * history_len) for a forward pass over the history.

IntentRec's own forward pass does this when given a Cache (model.intentrec); the two graphs that
call it (model.serving.graphs: a window of rows, or one step after cached rows) are what the
backends run or compile, their inputs are prepared on the host (model.serving.host_inputs), and
each user's cached keys and values live in model.serving.kv_cache.

`IncrementalScorer.score_users(users, histories)` is the serving entry point. It returns what
`Scorer.score(histories)` returns, keeping recently scored users' rows in a bounded cache on the
scoring device (KVCache). A cached entry is used only if it was computed from exactly the rows that
precede the new one (their last history_len - 1, compared byte for byte: the new row's prediction
depends on nothing older), so evictions, restarts, late events, idle-user resets and several events
of one user in a batch can cost a rebuild from the history, never a wrong score.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Hashable, Sequence

import numpy as np

from model.config import IntentRecConfig
from model.features import ROW_DTYPE
from model.config import task_sizes
from model.serving.backends import Backend, BackendError, EagerBackend, load_backend
from model.serving.graphs import GraphOutputs, split_outputs
from model.serving.host_inputs import HostToDevice, step_batch, window_batch
from model.serving.kv_cache import CacheEntry, KVCache
from model.serving.retrieval import attach_retriever, serves_approximately
from model.serving.scorer import Predictions, Scorer, Scores, padded_length

log = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 1 << 30
# Users x rows x rows of one window call at most: bounds the memory of its masks and attention weights.
WINDOW_CELLS = 1 << 24
# Cached rows read by one step call at most: few enough that they are still in the CPU's cache when
# attention reads them after they were gathered (larger batches of long windows are split).
STEP_READ_BYTES = 32 << 20


class IncrementalScorer(Scorer):
    """A Scorer that also remembers users: `predict_users(users, histories)` answers what
    `Scorer.predict(histories)` answers, from each user's cached rows when the rows before the new
    one are cached, else from the history (then cached).

    `backend`: who runs the graphs (model.serving.backends.load_backend; default eager on the CPU).
    `cache_bytes`: memory for cached users (KVCache.bytes_per_user each); 0 turns caching off, so
    that every event is a full recomputation through the backend. One call at a time (a lock).
    """

    def __init__(self, scorer: Scorer, backend: Backend | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES):
        super().__init__(scorer.model, scorer.vocab, scorer.model_ref, scorer.most_played)
        self.backend = backend if backend is not None else EagerBackend(scorer.model)
        self.cache = KVCache(self.config, cache_bytes // KVCache.bytes_per_user(self.config), self.backend.device)
        self.to_device = HostToDevice(self.backend.device)
        self.scored_from_cache = 0  # events scored by a step from cached rows
        self.scored_from_history = 0  # events scored by a forward pass over their history
        self._round = 0
        self._lock = threading.Lock()

    def score_users(self, users: Sequence[Hashable], histories: Sequence[np.ndarray], top_k: int = 10,
                    unknown_titles: Sequence[tuple[str, ...]] | None = None) -> list[Scores]:  # fmt: skip
        return self.to_scores(self.predict_users(users, histories, unknown_titles), top_k, unknown_titles)

    def predict_users(self, users: Sequence[Hashable], histories: Sequence[np.ndarray],
                      unknown_titles: Sequence[tuple[str, ...]] | None = None) -> Predictions:  # fmt: skip
        """histories[i]: users[i]'s rows up to and including the event to score, oldest first. A user
        may appear several times, in event order: each history then extends the one before.
        `unknown_titles[i]`: the titles of history i's slots (Scorer.predict)."""
        if len(users) != len(histories):
            raise ValueError(f"{len(users)} users but {len(histories)} histories")
        histories = [np.asarray(h, dtype=ROW_DTYPE)[-self.history_len :] for h in histories]
        if not histories or min(len(h) for h in histories) == 0:
            raise ValueError("every history must hold at least the interaction being scored")
        with self._lock:
            titles = self.new_titles.at(np.array([history["ts"][-1] for history in histories]))
            retriever = self.model.item_layer.retriever
            results = PredictionArrays(self.config, len(histories), len(titles.tables[0]),
                                       None if retriever is None else retriever.width)  # fmt: skip
            batch = ScoringBatch(users, histories, titles.tables, titles.recent_plays,
                                 self.new_titles.slot_columns(unknown_titles))  # fmt: skip
            if self.cache.max_users == 0:
                self._run_windows(list(range(len(histories))), batch, results, cache=False)
            else:
                for round_indices in rounds(users):
                    self._score_round(round_indices, batch, results)
        return results.predictions(titles.names)

    def _score_round(self, indices: list[int], batch: ScoringBatch, results: PredictionArrays) -> None:
        self._round += 1
        steps, entries, windows = [], [], []
        for i in indices:
            entry = self.cache.lookup(batch.users[i], self._cached_rows(batch.histories[i][:-1]))
            if entry is None:
                windows.append(i)
            else:
                self.cache.touch(batch.users[i], entry, self._round)
                steps.append(i)
                entries.append(entry)
        size = self._chunk_size(len(steps), max(1, STEP_READ_BYTES // max(1, self.cache.read_bytes_per_user)))
        for start in range(0, len(steps), size):
            self._run_steps(steps[start : start + size], entries[start : start + size], batch, results)
        self._run_windows(windows, batch, results, cache=True)

    def _run_steps(self, indices: list[int], entries: list[CacheEntry], batch: ScoringBatch, results) -> None:
        histories = batch.histories
        ring = self.cache.ring(entries)
        rows = np.empty(len(indices), dtype=ROW_DTYPE)
        for b, i in enumerate(indices):
            rows[b] = histories[i][-1]
        previous_ts = np.array([entry.newest_ts for entry in entries], dtype=np.int64)
        host = step_batch(rows, previous_ts, ring, self.config, batch.slot_columns_of(indices))
        inputs = [*host.inputs, *batch.new_title_inputs(indices), ring.slots, ring.positions]
        *inputs, slot_index, position_index = self.to_device(inputs)
        outputs = split_outputs(self.config, self.backend.step(*inputs, *self.cache.read(slot_index)))
        results.put(indices, outputs)
        self.scored_from_cache += len(indices)
        self.cache.append(ring, slot_index, position_index, outputs, rows)
        for i, entry in zip(indices, entries):
            self._remember(entry, histories[i])

    def _run_windows(self, indices: list[int], batch: ScoringBatch, results, cache: bool) -> None:
        if not indices:
            return
        users, histories = batch.users, batch.histories
        indices = sorted(indices, key=lambda i: len(histories[i]))  # chunks of similar lengths pad less
        longest = padded_length(len(histories[indices[-1]]), self.history_len)
        size = self._chunk_size(len(indices), max(1, WINDOW_CELLS // (longest * longest)))
        for start in range(0, len(indices), size):
            chunk = indices[start : start + size]
            length = padded_length(max(len(histories[i]) for i in chunk), self.history_len)
            host = window_batch([histories[i] for i in chunk], max(2, length), self.config,
                                batch.slot_columns_of(chunk))  # fmt: skip
            # Claimed before the graph runs, so that the slots travel with the inputs.
            claimed = [(b, self.cache.claim(users[i], self._round)) for b, i in enumerate(chunk)] if cache else []
            claimed = [(b, entry) for b, entry in claimed if entry is not None]
            kept = np.array([b for b, _ in claimed], dtype=np.int64)
            slots = np.array([entry.slot for _, entry in claimed], dtype=np.int64)
            *inputs, kept_index, slot_index = self.to_device([*host.inputs, *batch.new_title_inputs(chunk), kept, slots])
            outputs = split_outputs(self.config, self.backend.window(*inputs))
            results.put(chunk, outputs)
            self.scored_from_history += len(chunk)
            if claimed:
                kept_outputs = replace(
                    outputs,
                    keys_values=outputs.keys_values[:, :, kept_index],
                    pointer_keys=outputs.pointer_keys[kept_index],
                )
                self.cache.fill(slots, slot_index, kept_outputs, host.items[kept], host.ts[kept], host.valid[kept])
                for b, entry in claimed:
                    self._remember(entry, histories[chunk[b]])

    def _remember(self, entry: CacheEntry, history: np.ndarray) -> None:
        entry.rows = self._cached_rows(history)
        entry.newest_ts = int(history["ts"][-1])

    def _cached_rows(self, history: np.ndarray) -> bytes:
        """What identifies a cache entry: the history's last history_len - 1 rows (the next row's
        prediction depends on nothing older) and, by their length, how many there are (fewer
        means the whole history, whose first row has no predecessor)."""
        return history[len(history) - min(len(history), self.history_len - 1) :].tobytes()

    def _chunk_size(self, n: int, limit: int | None = None) -> int:
        return max(1, min(n, self.backend.max_batch or n, limit or n))


def load_serving_scorer(
    model: str | os.PathLike | Scorer, backend: str = "auto", cache_bytes: int = DEFAULT_CACHE_BYTES,
    new_title_columns: int | None = None, catalogue: str = "auto", index_dir: Path | None = None,
) -> IncrementalScorer:
    """The scorer a stream serves with: the checkpoint `model` (a directory, or a loaded Scorer),
    its graphs run by `backend` (a spec of model.serving.backends.load_backend, which raises
    BackendError; `auto` looks beside a directory for a compiled artifact), `cache_bytes` of cached
    users, `new_title_columns` for titles first seen in the stream (None: the checkpoint's), and the
    catalogue scored whole ("exact") or from retrieved candidates ("approximate"; "auto": beyond
    model.serving.retrieval.APPROXIMATE_FROM_ITEMS items), its index kept beside the model (a loaded
    Scorer's: beside `index_dir`). Live runs, demos and backtests all build theirs here."""
    if isinstance(model, Scorer):
        scorer, model_dir = model, None
    else:
        scorer, model_dir = Scorer.load(model, new_title_columns), Path(model)
    if serves_approximately(catalogue, scorer.config.n_items):
        kind = backend.partition(":")[0]
        if kind not in ("auto", "eager"):
            raise BackendError(f"backend {backend!r} scores the whole catalogue; serving it from retrieved candidates "
                               "(--catalogue approximate) runs eager: choose --backend eager, or --catalogue exact")
        if kind == "auto":
            log.info("the catalogue (%d items) is served from retrieved candidates, which run eager", scorer.config.n_items)
            backend = "eager"
        attach_retriever(scorer.model, model_dir or index_dir, most_played=scorer.most_played)
    return IncrementalScorer(scorer, load_backend(backend, scorer.model, model_dir), cache_bytes)


@dataclass
class ScoringBatch:
    """One predict_users call: the users and histories, the new-title tables the graphs take and
    each history's recent plays of new titles (NewTitleRegistry.tables, recent_plays), and where each
    history's slots send their pointer weight (NewTitleRegistry.slot_columns)."""

    users: Sequence[Hashable]
    histories: list[np.ndarray]
    tables: list[np.ndarray]
    recent_plays: list[np.ndarray]
    slot_columns: np.ndarray | None

    def new_title_inputs(self, indices: list[int]) -> list[np.ndarray]:
        return [*self.tables, *(per_history[indices] for per_history in self.recent_plays)]

    def slot_columns_of(self, indices: list[int]) -> np.ndarray | None:
        return None if self.slot_columns is None else self.slot_columns[indices]


def rounds(users: Sequence[Hashable]) -> list[list[int]]:
    """Request indices grouped so that a user appears at most once per round, in request order: a
    user's second event in a batch is scored in the round after its first."""
    grouped: list[list[int]] = []
    seen: dict[Hashable, int] = {}
    for i, user in enumerate(users):
        round_ = seen.get(user, -1) + 1
        seen[user] = round_
        if round_ == len(grouped):
            grouped.append([])
        grouped[round_].append(i)
    return grouped


class PredictionArrays:
    """Predictions filled in request order from several graph calls: columns for the catalogue, or
    for the `candidates` items a retriever gives each row, then the slots and the new titles."""

    def __init__(self, config: IntentRecConfig, n: int, new_title_width: int, candidates: int | None = None):
        catalogue = config.n_items if candidates is None else candidates
        self.item_scores = np.empty((n, catalogue + config.unknown_slots + new_title_width), dtype=np.float32)
        self.item_columns = None if candidates is None else np.empty((n, candidates), dtype=np.int64)
        self.intent_probs = {task: np.empty((n, size), dtype=np.float32) for task, size in task_sizes(config).items()}
        tasks = len(config.intent_tasks)
        self.intent_embedding = np.empty((n, config.d_proj), dtype=np.float32) if tasks else None
        self.intent_weights = np.empty((n, tasks), dtype=np.float32) if tasks else None

    def put(self, indices: list[int], outputs: GraphOutputs) -> None:
        self.item_scores[indices] = outputs.item_scores.float().cpu().numpy()
        if self.item_columns is not None:
            self.item_columns[indices] = outputs.item_columns.cpu().numpy()
        for task, probs in outputs.intent_probs.items():
            self.intent_probs[task][indices] = probs.float().cpu().numpy()
        if self.intent_embedding is not None:
            self.intent_embedding[indices] = outputs.intent_embedding.float().cpu().numpy()
            self.intent_weights[indices] = outputs.intent_weights.float().cpu().numpy()

    def predictions(self, new_titles: tuple[str, ...]) -> Predictions:
        return Predictions(self.item_scores, self.intent_probs, self.intent_embedding, self.intent_weights, new_titles,
                           self.item_columns)
