"""Titles first seen in the stream, after the model was trained: a column each, scored from what
their plays say of them.

A streaming service releases titles every day and retrains on a schedule; between retrainings the
vocabulary maps a new title to "unknown". Two things keep such a title rankable:

- a user's own unknown titles get slots (model.features.slot_title), so that the repeat pointer
  continues them and returns to them;
- every title the vocabulary lacks that a play scored by this process has named is registered here,
  in the order they come, up to `new_title_columns` of them: its kind, genres and release date (from
  its play), when it was first seen, and an embedding derived from its kind and genres. The
  catalogue softmax scores it beside the items (model.intentrec.NewTitles), so a new release can be
  discovered by a user who never played it. Where one of a user's slots holds a registered title,
  the slot's pointer weight lands on the title's column (`slot_columns`): a title has one score.

The derived embedding is a ridge regression from the catalogue's attributes (IntentMatch's kinds
and genres) to the item embeddings training learnt, fitted when the model is loaded: a new title
starts where the trained titles like it are. A model whose item encoder is not fed Z (V0, V1) keeps
no attributes, so its new titles all start at the catalogue's mean embedding.

A query ranks only the titles first seen at or before its own event time, so whether an event's
update can name a title does not depend on how the stream was cut into batches (the stream
registers a whole batch's titles before scoring it). The registry lives in the scoring process and
is not snapshotted: after a restart it learns the titles again from the plays it sees, and each
process of a cluster from its own users' plays.
"""
from __future__ import annotations

import logging
import threading
from typing import Sequence

import numpy as np
import torch

from model.features import GENRE_SLOTS
from model.inputs import days_since_origin
from model.intentrec import IntentRec, NewTitles
from model.vocab import FIRST_REAL, UNKNOWN
from schemas import PlayEvent

log = logging.getLogger(__name__)

RIDGE = 1.0  # the regression's L2 penalty: enough to keep rare attribute combinations near the mean


class NewTitleRegistry:
    """The titles first seen in the stream and their columns (config.n_items + unknown_slots + j for
    the j-th), with the tables the serving graphs take (`tables`, in graphs.NEW_TITLE_INPUTS order)."""

    def __init__(self, model: IntentRec):
        config = model.config
        self.config = config
        self.capacity = config.new_title_columns
        self.first_column = config.n_items + config.unknown_slots
        self.names: list[str] = []
        self.columns: dict[str, int] = {}
        self.unregistered = 0  # plays of titles that found every column taken
        self.embeddings = np.zeros((self.capacity, config.d_item), dtype=np.float32)
        self.kinds = np.zeros(self.capacity, dtype=np.int32)
        self.genres = np.zeros((self.capacity, GENRE_SLOTS), dtype=np.int32)
        self.release_days = np.full(self.capacity, np.inf, dtype=np.float32)
        self.first_seen_days = np.full(self.capacity, np.inf, dtype=np.float32)
        self._embedding = ColdStartEmbedding(model)
        self._lock = threading.Lock()

    def register_plays(self, events: Sequence[PlayEvent], rows: Sequence[np.ndarray]) -> None:
        """Registers the titles the vocabulary lacks among `events` (featurized as `rows`, a slotted
        title's row included), or moves a registered title's first sighting earlier."""
        n_items = self.config.n_items
        if not self.capacity:  # a closed catalogue
            return
        with self._lock:
            for event, row in zip(events, rows):
                if row["item"] == UNKNOWN or row["item"] >= n_items:
                    self._register(event, row)

    def _register(self, event: PlayEvent, row: np.ndarray) -> None:
        day = float(days_since_origin(torch.tensor([event.ts]), self.config.time_origin_ms)[0])
        column = self.columns.get(event.item_id)
        if column is not None:
            self.first_seen_days[column] = min(self.first_seen_days[column], day)
            return
        if len(self.names) == self.capacity:
            if not self.unregistered:
                log.warning("all %d new-title columns are taken: titles first seen from now on rank last until the "
                            "model is retrained (raise new_title_columns in its config)", self.capacity)
            self.unregistered += 1
            return
        column = len(self.names)
        self.kinds[column], self.genres[column] = row["kind"], row["genres"]
        self.embeddings[column] = self._embedding(row["kind"], row["genres"])
        if event.release_ts is not None:
            self.release_days[column] = days_since_origin(torch.tensor([event.release_ts]), self.config.time_origin_ms)[0]
        self.first_seen_days[column] = day  # last: a column is visible once its first sighting is set
        self.columns[event.item_id] = column
        self.names.append(event.item_id)

    def tables(self) -> list[np.ndarray]:
        """Copies of the tables, as the graphs take them (model.serving.graphs.NEW_TITLE_INPUTS)."""
        with self._lock:
            return [a.copy() for a in (self.embeddings, self.kinds, self.genres, self.release_days, self.first_seen_days)]

    def new_titles(self) -> NewTitles:
        """The tables as the model's forward pass takes them."""
        return NewTitles(*(torch.from_numpy(table) for table in self.tables()))

    def slot_columns(self, unknown_titles: Sequence[tuple[str, ...]] | None) -> np.ndarray | None:
        """(B, unknown_slots): the column each user's slot k sends its pointer weight to: its title's
        column where the title is registered, else the slot's own (n_items + k); None where no
        user's slot holds a registered title (nothing to move)."""
        slots, n_items = self.config.unknown_slots, self.config.n_items
        if not unknown_titles or not slots or not self.columns:
            return None
        columns = np.tile(np.arange(n_items, n_items + slots, dtype=np.int32), (len(unknown_titles), 1))
        moved = False
        for b, titles in enumerate(unknown_titles):
            for k, title in enumerate(titles):
                column = self.columns.get(title)
                if column is not None:
                    columns[b, k], moved = self.first_column + column, True
        return columns if moved else None


def move_slots(items: np.ndarray, slot_columns: np.ndarray | None, n_items: int) -> None:
    """Rewrites, in place, the slot indices (n_items + k) among `items` (B, T) to the columns
    slot_columns (B, slots) sends them to (NewTitleRegistry.slot_columns); the embedding reads both
    as the unknown item, so only the pointer sees the difference."""
    if slot_columns is None:
        return
    slot = items.astype(np.int64) - n_items
    in_slot = (slot >= 0) & (slot < slot_columns.shape[1])
    if in_slot.any():
        moved = np.take_along_axis(slot_columns, np.where(in_slot, slot, 0), axis=1)
        items[in_slot] = moved[in_slot]


class ColdStartEmbedding:
    """An item embedding for a title training never saw, from its kind and genres: ridge regression
    (with an intercept) from the catalogue items' IntentMatch attributes to their learnt embeddings;
    the catalogue's mean embedding where the model keeps no attributes."""

    def __init__(self, model: IntentRec):
        embeddings = model.features.item.weight.detach().float()[FIRST_REAL:]
        self.match = model.item_encoder.intent_match
        if self.match is None or not self.match.attribute_tasks:
            self.match, self.mean = None, embeddings.mean(0).numpy()
            return
        attributes = self.match.item_attributes[FIRST_REAL:]
        known = attributes.sum(1) > 0
        x = with_intercept(attributes[known])
        gram = x.T @ x + RIDGE * torch.eye(x.shape[1])
        self.weights = torch.linalg.solve(gram, x.T @ embeddings[known])

    def __call__(self, kind: int, genres: np.ndarray) -> np.ndarray:
        if self.match is None:
            return self.mean
        kinds, genres = torch.tensor([int(kind)]), torch.from_numpy(np.asarray(genres, dtype=np.int64)).unsqueeze(0)
        with torch.no_grad():
            return (with_intercept(self.match.attribute_rows(kinds, genres)) @ self.weights)[0].numpy()


def with_intercept(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.ones(len(x), 1), x], dim=1)
