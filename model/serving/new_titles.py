"""Titles first seen in the stream, after the model was trained: a column each, scored from what
their plays say of them.

A streaming service releases titles every day and retrains on a schedule; between retrainings the
vocabulary maps a new title to "unknown". Two things keep such a title rankable:

- a user's own unknown titles get slots (model.features.slot_title), so that the repeat pointer
  continues them and returns to them;
- every title the vocabulary lacks that a play scored by this process has named is registered here,
  in the order they come, up to `new_title_columns` of them, with its kind, genres and release date
  (from its play), an embedding derived from its kind and genres, and the times of its plays. Every
  update then ranks the new titles played in the week before its event (model.intentrec.NewTitles):
  they share the part of the explore distribution that the week's plays give to new titles, each by
  its plays that week times how well it fits the user (the catalogue softmax's logit of its derived
  embedding, plus IntentMatch's bonus where Z feeds the item encoder). So a new release can be
  discovered by a user who never played it, and a trending one first. Where one of a user's slots
  holds a registered title, the slot's pointer weight lands on the title's column (`slot_columns`):
  a title has one score.

Why counts: a title training never saw has no learnt embedding, and the derived one (a ridge
regression from the catalogue's attributes to the item embeddings, fitted when the model is loaded)
is an average of the trained titles like it, which ranks mid-catalogue (MovieLens-100K, time split:
median rank 670 of 1,684 for new titles' plays). How often the stream plays it is what says it is
wanted. A model whose item encoder is not fed Z (V0, V1) keeps no attributes: its new titles all
start at the catalogue's mean embedding, and their plays alone rank them.

An update counts the plays at or before its own event time (exact times, not buckets), and the
week's plays of all titles by the hour; the score step registers a whole batch's plays before
scoring it, so batching does not change an update. The registry lives in the scoring process and is
not snapshotted: after a restart it learns the titles again from the plays it reads, and each
process of a cluster from its own users' plays.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from model.features import GENRE_SLOTS
from model.inputs import days_since_origin
from model.intentrec import IntentRec, NewTitles
from model.vocab import FIRST_REAL, UNKNOWN
from schemas import PlayEvent

log = logging.getLogger(__name__)

MIN_WIDTH = 8  # the fewest new-title columns a call carries (see NewTitleRegistry.width)
RIDGE = 1.0  # the regression's L2 penalty: enough to keep rare attribute combinations near the mean
WINDOW_MS = 7 * 86_400_000  # the plays that make a new title's popularity: the week before the query
HOUR_MS = 3_600_000


class NewTitleRegistry:
    """The titles first seen in the stream and their columns (config.n_items + unknown_slots + j for
    the j-th): the tables the serving graphs take (`tables`, in graphs.NEW_TITLE_INPUTS order) and,
    for each query time, the titles' recent plays (`recent_plays`). Both are `width` columns wide:
    the registered titles rounded up to a power of two (at least MIN_WIDTH, at most the capacity),
    so that a stream without new titles pays for 8 columns, not for all of them, and compiled graphs
    see few shapes."""

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
        self.play_times: list[PlayTimes] = []  # per column
        self.plays_by_hour: dict[int, int] = {}  # every play registered, by hour since the epoch
        self.preloaded = False
        self._tables: list[np.ndarray] | None = None  # tables(), until a title joins
        self._embedding = ColdStartEmbedding(model)
        self._lock = threading.RLock()

    def register_plays(self, events: Sequence[PlayEvent], rows: Sequence[np.ndarray]) -> None:
        """Counts every one of `events` (featurized as `rows`, a slotted title's row included) and
        registers the titles the vocabulary lacks among them, with the time of each of their plays."""
        n_items = self.config.n_items
        if not self.capacity or self.preloaded:  # a closed catalogue, or one that knows every play
            return
        with self._lock:
            for event, row in zip(events, rows):
                hour = event.ts // HOUR_MS
                self.plays_by_hour[hour] = self.plays_by_hour.get(hour, 0) + 1
                if row["item"] == UNKNOWN or row["item"] >= n_items:
                    self._register(event, row)

    def preload(self, events: Sequence[PlayEvent], rows: Sequence[np.ndarray]) -> None:
        """A replay's whole input, registered before it starts (in time order, so that columns are
        given in the order titles were first played); register_plays then ignores the replayed
        plays, which are these. A query still counts only the plays up to its own time."""
        self.register_plays(events, rows)
        self.preloaded = True

    def _register(self, event: PlayEvent, row: np.ndarray) -> None:
        column = self.columns.get(event.item_id)
        if column is None:
            if len(self.names) == self.capacity:
                if not self.unregistered:
                    log.warning("all %d new-title columns are taken: titles first seen from now on rank last until "
                                "the model is retrained (raise new_title_columns in its config)", self.capacity)
                self.unregistered += 1
                return
            column = len(self.names)
            self.kinds[column], self.genres[column] = row["kind"], row["genres"]
            self.embeddings[column] = self._embedding(row["kind"], row["genres"])
            if event.release_ts is not None:
                release = torch.tensor([event.release_ts])
                self.release_days[column] = days_since_origin(release, self.config.time_origin_ms)[0]
            self.play_times.append(PlayTimes())
            self._tables = None
            self.columns[event.item_id] = column
            self.names.append(event.item_id)
        self.play_times[column].add(event.ts)

    @property
    def width(self) -> int:
        """The new-title columns a call carries now (unused ones score 0)."""
        width = MIN_WIDTH
        while width < len(self.names):
            width *= 2
        return min(width, self.capacity)

    def tables(self) -> list[np.ndarray]:
        """The titles' tables, as the graphs take them (graphs.NEW_TITLE_INPUTS, first four), `width`
        rows each: a copy made when a title joins, so that a call never sees one half written."""
        with self._lock:
            if self._tables is None:
                width = self.width
                self._tables = [a[:width].copy() for a in (self.embeddings, self.kinds, self.genres, self.release_days)]
            return self._tables

    def recent_plays(self, ts: np.ndarray) -> list[np.ndarray]:
        """For queries at times ts (B,): the log of each title's plays in the WINDOW_MS up to and
        including ts (B, width; -inf: none, or an unused column) and the share of all plays in that
        window that were of new titles (B,), as the graphs take them (graphs.NEW_TITLE_INPUTS, last two)."""
        ts = np.asarray(ts, dtype=np.int64)
        with self._lock:
            counts = np.zeros((len(ts), self.width), dtype=np.float64)
            for column, times in enumerate(self.play_times):
                counts[:, column] = times.count_between(ts - WINDOW_MS, ts)
            hours = sorted(self.plays_by_hour)
            per_hour = np.cumsum([0] + [self.plays_by_hour[hour] for hour in hours])
        # Plays of every title by the hour (their times are not kept): the window's first and last
        # hours count whole, so the share errs a little low, never above the exact one.
        first = np.searchsorted(hours, (ts - WINDOW_MS) // HOUR_MS, "left")
        every_play = per_hour[np.searchsorted(hours, ts // HOUR_MS, "right")] - per_hour[first]
        new = counts.sum(axis=1)
        share = np.where(every_play > 0, np.minimum(new / np.maximum(every_play, 1), 1.0), 0.0)
        with np.errstate(divide="ignore"):
            return [np.log(counts).astype(np.float32), share.astype(np.float32)]

    def at(self, ts: np.ndarray) -> "RegisteredTitles":
        """The names, tables and recent plays for queries at times ts (B,), read at one moment: a
        title that another worker thread registers meanwhile cannot widen one but not the others."""
        with self._lock:
            return RegisteredTitles(tuple(self.names), self.tables(), self.recent_plays(ts))

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


@dataclass(frozen=True)
class RegisteredTitles:
    """NewTitleRegistry.at: the registered titles' names by column, their tables and each query's
    recent plays and share (graphs.NEW_TITLE_INPUTS, in that order), all as wide."""

    names: tuple[str, ...]
    tables: list[np.ndarray]
    recent_plays: list[np.ndarray]

    def inputs(self) -> list[np.ndarray]:
        """Every new-title input of the graphs (graphs.NEW_TITLE_INPUTS)."""
        return [*self.tables, *self.recent_plays]

    def new_titles(self) -> NewTitles:
        """The inputs as the model's forward pass takes them."""
        return NewTitles(*(torch.from_numpy(array) for array in self.inputs()))


class PlayTimes:
    """A title's play times, sorted, in a numpy array that grows by doubling (plays come nearly in
    time order: a late one is inserted at its place). Kept until the registry goes: they are the
    plays of titles first seen since training, 8 bytes each."""

    def __init__(self):
        self._times = np.zeros(4, dtype=np.int64)
        self._n = 0

    def add(self, ts: int) -> None:
        if self._n == len(self._times):
            self._times = np.concatenate([self._times, np.zeros_like(self._times)])
        times = self._times[: self._n + 1]
        at = self._n if not self._n or ts >= times[self._n - 1] else int(np.searchsorted(times[: self._n], ts, "right"))
        times[at + 1 :] = times[at:-1].copy()
        times[at] = ts
        self._n += 1

    def count_between(self, after: np.ndarray, until: np.ndarray) -> np.ndarray:
        """How many plays lie in (after, until], for each pair."""
        times = self._times[: self._n]
        return np.searchsorted(times, until, "right") - np.searchsorted(times, after, "right")


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
