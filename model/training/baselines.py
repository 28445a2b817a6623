"""Floor baselines every model must beat, ranked with the same protocol as the model."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from model.serving.scorer import Predictions
from model.vocab import FIRST_REAL


class Popularity:
    """Rank the catalogue by how often each item was played in the training histories."""

    def __init__(self, histories: Sequence[np.ndarray], n_items: int):
        counts = np.zeros(n_items, dtype=np.float64)
        for history in histories:
            np.add.at(counts, history["item"].astype(np.int64), 1.0)
        counts[:FIRST_REAL] = -1.0
        # Map counts into (0, 1) so that a recency score of 1 or more always outranks them.
        self.scores = counts / (counts.max() + 1.0)

    def predict(self, histories: Sequence[np.ndarray]) -> Predictions:
        return Predictions(np.tile(self.scores, (len(histories), 1)), {}, None, None)


class Recency(Popularity):
    """A "continue watching" row: the user's own past items, most recently played first; the rest
    of the catalogue by popularity."""

    def predict(self, histories: Sequence[np.ndarray]) -> Predictions:
        scores = np.tile(self.scores, (len(histories), 1))
        for b, history in enumerate(histories):
            items = history["item"].astype(np.int64)
            # Later positions overwrite earlier ones, so each item keeps its last time seen.
            scores[b, items] = 1.0 + np.arange(len(items))
            scores[b, :FIRST_REAL] = -1.0
        return Predictions(scores, {}, None, None)
