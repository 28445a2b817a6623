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

from model.checkpoint import CheckpointError, load_checkpoint
from model.features import ROW_DTYPE, batch_tensors, featurize
from model.inputs import model_inputs
from model.intentrec import IntentRec
from model.vocab import FIRST_REAL, Vocabularies
from schemas import ItemScore, LabelScore, ModelRef, PlayEvent

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
    """Model outputs after the last interaction of each history, as numpy arrays."""

    item_scores: np.ndarray  # (B, n_items) p(next item); pad/unknown columns are never ranked
    intent_probs: dict[str, np.ndarray]  # task -> (B, n_labels)
    intent_embedding: np.ndarray | None  # (B, d_proj)
    intent_weights: np.ndarray | None  # (B, tasks)


@dataclass(frozen=True)
class Scores:
    """The parts of an IntentUpdate that come from the model."""

    intent_embedding: tuple[float, ...]
    intents: dict[str, tuple[LabelScore, ...]]
    intent_weights: dict[str, float]
    next_items: tuple[ItemScore, ...]


class Scorer:
    row_dtype = ROW_DTYPE

    def __init__(self, model: IntentRec, vocab: Vocabularies, model_ref: ModelRef):
        self.model = model.eval()
        self.vocab = vocab
        self.model_ref = model_ref
        self.config = model.config
        self.history_len = model.config.history_len
        self._task_vocab = {
            "action": vocab.actions,
            "genre": vocab.genres,
            "kind": vocab.kinds,
            "release": vocab.release,
        }

    @classmethod
    def load(cls, model_dir: str | Path) -> "Scorer":
        model, vocab, meta = load_checkpoint(Path(model_dir))
        name = meta.get("name", f"intentrec-{model.config.variant}")
        return cls(model, vocab, ModelRef(name=name, version=str(meta.get("version", "0"))))

    def featurize(self, event: PlayEvent) -> np.ndarray:
        return featurize(event, self.vocab)

    def empty_history(self) -> np.ndarray:
        return np.zeros(0, dtype=ROW_DTYPE)

    @torch.inference_mode()
    def predict(self, histories: Sequence[np.ndarray]) -> Predictions:
        histories = [h[-self.history_len :] for h in histories]
        if not histories or min(len(h) for h in histories) == 0:
            raise ValueError("every history must hold at least the interaction being scored")
        length = padded_length(max(len(h) for h in histories), self.history_len)
        x = model_inputs(batch_tensors(histories, length, left_pad=True), self.config)
        out = self.model(x, newest=True)
        return Predictions(
            item_scores=out.item_probs.numpy(),
            intent_probs={t: p[:, -1].numpy() for t, p in out.intent_probs.items()},
            intent_embedding=None if out.intent_embedding is None else out.intent_embedding[:, -1].numpy(),
            intent_weights=None if out.intent_weights is None else out.intent_weights[:, -1].numpy(),
        )

    def score(self, histories: Sequence[np.ndarray], top_k: int = 10) -> list[Scores]:
        return self.to_scores(self.predict(histories), top_k)

    def to_scores(self, predictions: Predictions, top_k: int = 10) -> list[Scores]:
        """Predictions -> the model's part of each IntentUpdate: top labels, weights, top-k items.
        The top indices and their values are picked for the whole batch at once."""
        tasks = list(predictions.intent_probs)
        top_items = top_indices(predictions.item_scores, top_k)
        item_tokens = [[self.vocab.items.token(i) for i in row] for row in top_items.tolist()]
        item_values = np.take_along_axis(predictions.item_scores, top_items, -1).tolist()
        labels = {}
        for task in tasks:
            top = top_indices(predictions.intent_probs[task], TOP_LABELS)
            tokens = [[self._task_vocab[task].token(i) for i in row] for row in top.tolist()]
            labels[task] = (tokens, np.take_along_axis(predictions.intent_probs[task], top, -1).tolist())
        embeddings = None if predictions.intent_embedding is None else predictions.intent_embedding.tolist()
        weights = None if predictions.intent_weights is None else predictions.intent_weights.tolist()
        scores = []
        for b in range(len(predictions.item_scores)):
            scores.append(
                Scores(
                    intent_embedding=() if embeddings is None else tuple(embeddings[b]),
                    intents={
                        task: tuple(LabelScore(t, p) for t, p in zip(tokens[b], values[b]))
                        for task, (tokens, values) in labels.items()
                    },
                    intent_weights={} if weights is None else dict(zip(tasks, weights[b])),
                    next_items=tuple(ItemScore(t, s) for t, s in zip(item_tokens[b], item_values[b])),
                )
            )
        return scores


def top_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest real labels (never pad/unknown) along the last axis, largest first."""
    real = values[..., FIRST_REAL:]
    k = min(k, real.shape[-1])
    part = np.argpartition(-real, k - 1, axis=-1)[..., :k]
    order = np.argsort(-np.take_along_axis(real, part, -1), axis=-1, kind="stable")
    return np.take_along_axis(part, order, -1) + FIRST_REAL
