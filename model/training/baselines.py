"""Floor baselines every model must beat, ranked with the same protocol as the model."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from model.serving.scorer import Predictions
from model.vocab import FIRST_REAL


class Popularity:
    """Rank the catalogue by how often each item was played in the training histories. `slots`
    columns follow the catalogue, as in the model's outputs (users' unknown titles): never ranked."""

    def __init__(self, histories: Sequence[np.ndarray], n_items: int, slots: int = 0):
        self.counts = np.zeros(n_items, dtype=np.float64)
        self.slots = slots
        for history in histories:
            np.add.at(self.counts, history["item"].astype(np.int64), 1.0)
        self.scores = self._scaled()

    def add(self, items: np.ndarray) -> None:
        """Count more plays (prequential evaluation: what has been played so far)."""
        np.add.at(self.counts, np.asarray(items, dtype=np.int64), 1.0)
        self.scores = self._scaled()

    def _scaled(self) -> np.ndarray:
        # Counts mapped into (0, 1) so that a recency score of 1 or more always outranks them.
        scores = self.counts.copy()
        scores[:FIRST_REAL] = -1.0
        return np.concatenate([scores / (scores.max() + 1.0), np.full(self.slots, -1.0)])

    def predict(self, histories: Sequence[np.ndarray]) -> Predictions:
        return Predictions(np.tile(self.scores, (len(histories), 1)), {}, None, None)


class Recency:
    """A "continue watching" row: the user's own past items (their unknown titles' slots included),
    most recently played first; the rest of the catalogue by `popularity`."""

    def __init__(self, popularity: Popularity):
        self.popularity = popularity

    def predict(self, histories: Sequence[np.ndarray]) -> Predictions:
        scores = np.tile(self.popularity.scores, (len(histories), 1))
        for b, history in enumerate(histories):
            items = history["item"].astype(np.int64)
            # Later positions overwrite earlier ones, so each item keeps its last time seen.
            scores[b, items] = 1.0 + np.arange(len(items))
            scores[b, :FIRST_REAL] = -1.0
        return Predictions(scores, {}, None, None)
