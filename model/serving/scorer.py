"""The scorer: one loaded checkpoint answering micro-batches of user histories.

`intentstream evaluate`, training's validation and the floors' judging call `Scorer.predict`: one
forward pass over each whole history. The stream serves through model.serving.incremental's
IncrementalScorer, which runs the same forward pass one new row at a time from cached keys and
values and returns what `Scorer.predict` returns for the same history (tests pin both).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from model.checkpoint import CheckpointError, load_checkpoint, most_played
from model.features import ROW_DTYPE, batch_tensors, featurize
from model.inputs import model_inputs
from model.intentrec import IntentRec
from model.serving.new_titles import NewTitleRegistry, move_slots
from model.vocab import FIRST_REAL, Vocabularies, Vocabulary
from schemas import ItemScore, LabelScore, LabelTable, ModelRef, PlayEvent, ScoreColumns, TopLabels

__all__ = ["CheckpointError", "Predictions", "Scorer", "Scores", "padded_length"]

MIN_BUCKET = 8
TOP_LABELS = 3


def padded_length(longest: int, limit: int) -> int:
    """Pad batches to powers of two (at least MIN_BUCKET, at most `limit`) so that compiled graphs
    and allocator blocks are reused across batches."""
    bucket = MIN_BUCKET
    while bucket < longest:
        bucket *= 2
    return min(bucket, limit)


@dataclass
class Predictions:
    """Model outputs after the last interaction of each history, as numpy arrays.

    item_scores' columns are the catalogue's items (column = item index), then the users' slots and
    the new titles; or, where a retriever chose each row's candidates (model.serving.retrieval), those
    K candidates (`item_columns`: the item of each) in place of the catalogue, then the same. `columns`
    and `items` translate between the two."""

    item_scores: np.ndarray  # (B, n_outputs) p(next item); pad/unknown columns are never ranked
    intent_probs: dict[str, np.ndarray]  # task -> (B, n_labels)
    intent_embedding: np.ndarray | None  # (B, d_proj)
    intent_weights: np.ndarray | None  # (B, tasks)
    new_titles: tuple[str, ...] = ()  # the titles of the new-title columns then registered, by column
    item_columns: np.ndarray | None = None  # (B, K): each row's retrieved candidates; None: the catalogue

    def columns(self, items: np.ndarray, n_items: int) -> np.ndarray:
        """The column of each row's item (B,): a catalogue item, or n_items + k for the slots and new
        titles; -1 where the row's candidates did not include it."""
        items = np.asarray(items, dtype=np.int64)
        if self.item_columns is None:
            return items
        candidates = self.item_columns
        position = np.minimum((candidates < items[:, None]).sum(axis=1), candidates.shape[1] - 1)  # rows are sorted
        found = (candidates[np.arange(len(items)), position] == items) & (items >= FIRST_REAL)
        return np.where(items < n_items, np.where(found, position, -1), items - n_items + candidates.shape[1])

    def items(self, columns: np.ndarray, n_items: int) -> np.ndarray:
        """The item (a catalogue index, or n_items + k past it) of each row's columns (B, k)."""
        if self.item_columns is None:
            return columns
        width = self.item_columns.shape[1]
        chosen = np.take_along_axis(self.item_columns, np.minimum(columns, width - 1), axis=1)
        return np.where(columns < width, chosen, columns - width + n_items)


@dataclass(frozen=True)
class Scores:
    """The parts of an IntentUpdate that come from the model."""

    intent_embedding: tuple[float, ...]
    intents: dict[str, tuple[LabelScore, ...]]
    intent_weights: dict[str, float]
    next_items: tuple[ItemScore, ...]


class Scorer:
    row_dtype = ROW_DTYPE

    def __init__(self, model: IntentRec, vocab: Vocabularies, model_ref: ModelRef, most_played: Sequence[int] = ()):
        self.model = model.eval()
        self.vocab = vocab
        self.model_ref = model_ref
        self.most_played = tuple(most_played)  # training's most played items, most first (checkpoint.most_played)
        self.config = model.config
        self.history_len = model.config.history_len
        task_vocab = {"action": vocab.actions, "genre": vocab.genres, "kind": vocab.kinds, "release": vocab.release}
        self._task_labels = {task: label_table(vocabulary) for task, vocabulary in task_vocab.items()}
        self._item_labels = label_table(vocab.items)
        self.new_titles = NewTitleRegistry(model)
        self._new_title_table: LabelTable | None = None

    @classmethod
    def load(cls, model_dir: str | Path, new_title_columns: int | None = None) -> "Scorer":
        """The checkpoint in `model_dir`; `new_title_columns` replaces its config's (None: keep it)."""
        model, vocab, meta = load_checkpoint(Path(model_dir), new_title_columns)
        name = meta.get("name", f"intentrec-{model.config.variant}")
        return cls(model, vocab, ModelRef(name=name, version=str(meta.get("version", "0"))),
                   most_played(meta, model.config.n_items, Path(model_dir)))  # fmt: skip

    def featurize(self, event: PlayEvent) -> np.ndarray:
        return featurize(event, self.vocab)

    def empty_history(self) -> np.ndarray:
        return np.zeros(0, dtype=ROW_DTYPE)

    @torch.inference_mode()
    def predict(self, histories: Sequence[np.ndarray],
                unknown_titles: Sequence[tuple[str, ...]] | None = None) -> Predictions:  # fmt: skip
        """The predictions after each history's last row, with the titles first seen in the stream
        (`new_titles`) ranked beside the catalogue; `unknown_titles[b]`: history b's slotted titles."""
        histories = [h[-self.history_len :] for h in histories]
        if not histories or min(len(h) for h in histories) == 0:
            raise ValueError("every history must hold at least the interaction being scored")
        length = padded_length(max(len(h) for h in histories), self.history_len)
        rows = batch_tensors(histories, length, left_pad=True)
        move_slots(rows["item"].numpy(), self.new_titles.slot_columns(unknown_titles), self.config.n_items)
        titles = self.new_titles.at(np.array([history["ts"][-1] for history in histories]))
        out = self.model(model_inputs(rows, self.config), newest=True, new_titles=titles.new_titles())
        return Predictions(
            item_scores=out.item_probs.numpy(),
            intent_probs={t: p[:, -1].numpy() for t, p in out.intent_probs.items()},
            intent_embedding=None if out.intent_embedding is None else out.intent_embedding[:, -1].numpy(),
            intent_weights=None if out.intent_weights is None else out.intent_weights[:, -1].numpy(),
            new_titles=titles.names,
            item_columns=None if out.item_columns is None else out.item_columns.numpy(),
        )

    def score(self, histories: Sequence[np.ndarray], top_k: int = 10,
              unknown_titles: Sequence[tuple[str, ...]] | None = None) -> list[Scores]:  # fmt: skip
        return self.to_scores(self.predict(histories, unknown_titles), top_k, unknown_titles)

    def score_columns(self, predictions: Predictions, top_k: int = 10,
                      unknown_titles: Sequence[tuple[str, ...]] | None = None) -> ScoreColumns:  # fmt: skip
        """Predictions -> the model's part of their IntentUpdates, as arrays for the whole batch (what
        schemas.encode_intent_updates encodes): each task's top labels, the top-k items, Z and the
        intent weights. `unknown_titles[b]` names history b's unknown-title slots
        (model.features.slot_title); a named slot and a registered new title are ranked with the
        catalogue."""
        tasks = list(predictions.intent_probs)
        intents = {task: self._top(self._task_labels[task], predictions.intent_probs[task], TOP_LABELS) for task in tasks}
        if predictions.intent_embedding is None:
            embedding = np.zeros((len(predictions.item_scores), 0), dtype=np.float32)
        else:
            embedding = predictions.intent_embedding
        # Where Z does not feed the item encoder (V1) no loss reaches the weights: they would only show their initialisation.
        trained = predictions.intent_weights is not None and self.config.feeds_intent
        weights = dict(zip(tasks, predictions.intent_weights.T)) if trained else {}
        items = self._top_items(predictions, top_k, unknown_titles)
        return ScoreColumns(embedding, intents, weights, items)

    def _top_items(self, predictions: Predictions, k: int,
                   unknown_titles: Sequence[tuple[str, ...]] | None) -> TopLabels:  # fmt: skip
        item_scores, new_titles, slots = predictions.item_scores, predictions.new_titles, self.config.unknown_slots
        n = self.config.n_items if predictions.item_columns is None else predictions.item_columns.shape[1]
        catalogue = item_scores[:, :n]
        if predictions.item_columns is not None:  # retrieved candidates: padding, unknown and repeats score 0
            catalogue = np.where(predictions.item_columns >= FIRST_REAL, catalogue, -np.inf)
        named_slots = bool(unknown_titles) and slots > 0 and any(any(titles) for titles in unknown_titles)
        if not named_slots and not new_titles:  # the common case: the catalogue alone
            top = top_indices(catalogue, k)
            return TopLabels(self._item_labels, predictions.items(top, n), np.take_along_axis(catalogue, top, -1))
        B, first_new = len(item_scores), n + slots
        new_scores = item_scores[:, first_new : first_new + len(new_titles)]
        ranked = [catalogue, np.where(new_scores > 0, new_scores, -np.inf)]  # 0: not played that week
        fewest_named = 0
        if named_slots:
            named = np.zeros((B, slots), dtype=bool)  # a user's slots are taken from the first on
            for b, titles in enumerate(unknown_titles):
                named[b, : len(titles)] = True
            ranked.append(np.where(named, item_scores[:, n:first_new], -np.inf))
            fewest_named = int(named.sum(axis=1).min())
        ranked = np.concatenate(ranked, axis=1)
        top = top_indices(ranked, min(k, n - FIRST_REAL + fewest_named))  # never an unnamed slot
        values, labels = np.take_along_axis(ranked, top, -1), predictions.items(top, self.config.n_items)
        # Label n_items + j of the extra names (TopLabels.extra) is new title j; then, where slots are
        # named, the slots the answers rank, one label each (only those: a batch may hold 50 per user).
        if not named_slots:
            return TopLabels(self._item_labels, labels, values, self._new_title_labels(new_titles))
        first_slot = self.config.n_items + len(new_titles)
        ranked_slots = labels >= first_slot
        rows, slot_of = np.nonzero(ranked_slots)[0], labels[ranked_slots] - first_slot
        indices = labels.copy()
        indices[ranked_slots] = first_slot + np.arange(len(rows))
        own_names = LabelTable([*new_titles, *(unknown_titles[b][j] for b, j in zip(rows.tolist(), slot_of.tolist()))])
        return TopLabels(self._item_labels, indices, values, own_names)

    def _new_title_labels(self, new_titles: tuple[str, ...]) -> LabelTable:
        """The new titles' names, encoded once for as long as no title joins them."""
        if self._new_title_table is None or self._new_title_table.names != new_titles:
            self._new_title_table = LabelTable(new_titles)
        return self._new_title_table

    def to_scores(self, predictions: Predictions, top_k: int = 10,
                  unknown_titles: Sequence[tuple[str, ...]] | None = None) -> list[Scores]:  # fmt: skip
        """Predictions -> one Scores object per history (for offline use; the stream encodes
        score_columns directly)."""
        columns = self.score_columns(predictions, top_k, unknown_titles)
        embeddings = columns.intent_embedding.tolist()
        weights = {task: column.tolist() for task, column in columns.intent_weights.items()}
        intents = {task: _named(top) for task, top in columns.intents.items()}
        items = _named(columns.next_items)
        return [
            Scores(
                intent_embedding=tuple(embeddings[b]),
                intents={task: tuple(LabelScore(*label) for label in labels[b]) for task, labels in intents.items()},
                intent_weights={task: column[b] for task, column in weights.items()},
                next_items=tuple(ItemScore(*item) for item in items[b]),
            )
            for b in range(len(columns))
        ]

    @staticmethod
    def _top(labels: LabelTable, values: np.ndarray, k: int) -> TopLabels:
        top = top_indices(values, k)
        return TopLabels(labels, top, np.take_along_axis(values, top, -1))


def _named(top: TopLabels) -> list[list[tuple[str, float]]]:
    """(name, value) of each answer's top labels."""
    return [
        [(top.name(i), value) for i, value in zip(indices, values)]
        for indices, values in zip(top.indices.tolist(), top.values.tolist())
    ]


def label_table(vocabulary: Vocabulary) -> LabelTable:
    """The vocabulary's tokens by index, for the encoder."""
    return LabelTable([vocabulary.token(index) for index in range(len(vocabulary))])


def top_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest real labels (never pad/unknown) along the last axis, largest first."""
    real = values[..., FIRST_REAL:]
    k = min(k, real.shape[-1])
    part = np.argpartition(-real, k - 1, axis=-1)[..., :k]
    order = np.argsort(-np.take_along_axis(real, part, -1), axis=-1, kind="stable")
    return np.take_along_axis(part, order, -1) + FIRST_REAL
