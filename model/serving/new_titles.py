"""Titles first seen in the stream, after the model was trained: a column each, scored from what
their plays say of them.

A streaming service releases titles every day and retrains on a schedule; between retrainings the
vocabulary maps a new title to "unknown". Two things keep such a title rankable:

- a user's own unknown titles get slots (model.features.slot_title), so that the repeat pointer
  continues them and returns to them;
- every title the vocabulary lacks that plays scored by this process name is registered here once
  `new_title_min_users` distinct users have played it (so that a stray or made-up id does not reach
  other users' recommendations), in the order they earn it, in one of `new_title_columns` columns,
  with its kind, genres and release date (from its play), an embedding derived from its kind and
  genres, and the times of its plays. Every update then ranks the new titles played in the week
  before its event (model.intentrec.NewTitles):
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

An update counts the plays at or before its own event time (exact times, not buckets) of the titles
that had earned their column by then, and the week's plays of all titles by the hour; the score step
registers a whole batch's plays before scoring it, so batching does not change an update. The
registry lives in the scoring process and is not snapshotted: after a restart it learns the titles
again from the plays it reads, and each process of a cluster from its own users' plays.

Nothing in it grows without bound, however long the stream runs or whatever its producers send: a
column is given again once its title has not been played for HORIZON_MS (the week its popularity is
counted over, plus a day for late events), so the titles being played keep theirs after any number
of releases; play times older than that are dropped, as are plays that old when they arrive (a
backdated event counts for nothing); titles still short of their users wait in a list of at most
PENDING_LIMIT: when it is full, a title played by the fewest users is forgotten, the least recently
played among them, so that a flood of made-up ids, each played once, pushes out only its own kind
and never a title that a second user has played. A replay (`preload`) knows its whole input
and keeps every title that earns a column, each from the time it earned it.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from model.features import GENRE_SLOTS
from model.inputs import days_since_origin
from model.intentrec import IntentRec
from model.item_layer import NewTitles
from model.vocab import FIRST_REAL, UNKNOWN
from schemas import PlayEvent

log = logging.getLogger(__name__)

MIN_WIDTH = 8  # the fewest new-title columns a call carries (see NewTitleRegistry.width)
RIDGE = 1.0  # the regression's L2 penalty: enough to keep rare attribute combinations near the mean
WINDOW_MS = 7 * 86_400_000  # the plays that make a new title's popularity: the week before the query
HOUR_MS = 3_600_000
HORIZON_MS = WINDOW_MS + 86_400_000  # plays older than this behind the newest are no longer needed
PENDING_LIMIT = 4096  # titles short of new_title_min_users kept at most


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
        self.min_users = config.new_title_min_users
        self.first_column = config.n_items + config.unknown_slots
        self.names: list[str] = []  # by column
        self.columns: dict[str, int] = {}
        self.unregistered = 0  # plays of titles that had earned a column but found every one in use
        self.too_old = 0  # plays more than HORIZON_MS older than the newest: not counted
        self.reclaimed = 0  # columns given again after their title went unplayed
        self.embeddings = np.zeros((self.capacity, config.d_item), dtype=np.float32)
        self.kinds = np.zeros(self.capacity, dtype=np.int32)
        self.genres = np.zeros((self.capacity, GENRE_SLOTS), dtype=np.int32)
        self.release_days = np.full(self.capacity, np.inf, dtype=np.float32)
        self.plays: list[TitlePlays] = []  # per column
        self.pending = PendingTitles(self.min_users)
        self.plays_by_hour: dict[int, int] = {}  # every play of the last HORIZON_MS, by hour since the epoch
        self.newest_ts: int | None = None
        self.preloaded = False
        self._keep_everything = False  # a replay's preload: every title and play stays
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
                if self.newest_ts is not None and event.ts < self.newest_ts - HORIZON_MS and not self._keep_everything:
                    self.too_old += 1
                    continue
                self._count(event.ts)
                if row["item"] == UNKNOWN or row["item"] >= n_items:
                    self._play_of_new_title(event, row)

    def preload(self, events: Sequence[PlayEvent], rows: Sequence[np.ndarray]) -> None:
        """A replay's whole input, registered before it starts (in time order, so that columns are
        given in the order titles earned them); register_plays then ignores the replayed plays,
        which are these. Every title that earns a column keeps it (the capacity grows as needed) and
        every play is kept: a query still counts only the plays up to its own time, of the titles
        that had earned their column by then."""
        self._keep_everything = True
        self.register_plays(events, rows)
        self.preloaded = True

    def _count(self, ts: int) -> None:
        hour = ts // HOUR_MS
        self.plays_by_hour[hour] = self.plays_by_hour.get(hour, 0) + 1
        if self.newest_ts is None or ts > self.newest_ts:
            newest_hour = None if self.newest_ts is None else self.newest_ts // HOUR_MS
            self.newest_ts = ts
            if hour != newest_hour and not self._keep_everything:
                first_kept = (ts - HORIZON_MS) // HOUR_MS
                for old in [h for h in self.plays_by_hour if h < first_kept]:
                    del self.plays_by_hour[old]

    def _play_of_new_title(self, event: PlayEvent, row: np.ndarray) -> None:
        forget_before = None if self._keep_everything else self.newest_ts - HORIZON_MS
        column = self.columns.get(event.item_id)
        if column is not None:
            self.plays[column].add(event.user_id, event.ts, self.min_users, forget_before)
            return
        pending = self.pending.pop(event.item_id) or TitlePlays()
        pending.add(event.user_id, event.ts, self.min_users, forget_before)
        if len(pending.first_plays) >= self.min_users:
            column = self._free_column()
            if column is not None:
                self._give(column, event, row, pending)
                return
            if not self.unregistered:
                log.warning("all %d new-title columns are held by titles played in the last %d days: titles that "
                            "earn one from now on rank last until a column is free (raise --new-titles)",
                            self.capacity, HORIZON_MS // 86_400_000)  # fmt: skip
            self.unregistered += 1
        self.pending.put(event.item_id, pending)

    def _free_column(self) -> int | None:
        """A column never used, else the one whose title was played least recently if that was
        more than HORIZON_MS before the newest play; None if every title is still being played."""
        if len(self.names) == self.capacity and self._keep_everything:
            self._grow()
        if len(self.names) < self.capacity:
            self.names.append("")
            self.plays.append(TitlePlays())
            return len(self.names) - 1
        last_played = np.array([plays.times.newest for plays in self.plays])
        column = int(last_played.argmin())
        if last_played[column] >= self.newest_ts - HORIZON_MS:
            return None
        del self.columns[self.names[column]]
        self.reclaimed += 1
        return column

    def _grow(self) -> None:
        self.capacity *= 2
        for name in ("embeddings", "kinds", "genres", "release_days"):
            table = getattr(self, name)
            grown = np.resize(table, (self.capacity, *table.shape[1:]))
            grown[len(table) :] = np.inf if name == "release_days" else 0
            setattr(self, name, grown)

    def _give(self, column: int, event: PlayEvent, row: np.ndarray, plays: "TitlePlays") -> None:
        self.kinds[column], self.genres[column] = row["kind"], row["genres"]
        self.embeddings[column] = self._embedding(row["kind"], row["genres"])
        release = torch.tensor([event.release_ts]) if event.release_ts is not None else None
        self.release_days[column] = np.inf if release is None else days_since_origin(release, self.config.time_origin_ms)[0]
        self.plays[column] = plays
        self.names[column] = event.item_id
        self.columns[event.item_id] = column
        self._tables = None

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
        including ts (B, width; -inf: none, a title that had not earned its column by ts, or an
        unused column) and the share of all plays in that window that were of new titles (B,), as
        the graphs take them (graphs.NEW_TITLE_INPUTS, last two)."""
        ts = np.asarray(ts, dtype=np.int64)
        with self._lock:
            counts = np.zeros((len(ts), self.width), dtype=np.float64)
            for column, plays in enumerate(self.plays):
                counts[:, column] = np.where(plays.earned_at <= ts, plays.times.count_between(ts - WINDOW_MS, ts), 0)
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


class PendingTitles:
    """The titles short of their users, at most PENDING_LIMIT: one list per count of distinct users
    (1, 2, ..., min_users and more), each least recently played first; a full one forgets from the
    list of the fewest users."""

    def __init__(self, min_users: int):
        self._by_users: list[OrderedDict[str, TitlePlays]] = [OrderedDict() for _ in range(max(min_users, 1))]
        self._users_of: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._users_of)

    def __contains__(self, title: str) -> bool:
        return title in self._users_of

    def __iter__(self):
        return iter(self._users_of)

    def pop(self, title: str) -> "TitlePlays | None":
        tier = self._users_of.pop(title, None)
        return None if tier is None else self._by_users[tier].pop(title)

    def put(self, title: str, plays: "TitlePlays") -> None:
        tier = min(len(plays.first_plays), len(self._by_users)) - 1
        self._by_users[tier][title] = plays
        self._users_of[title] = tier
        if len(self._users_of) > PENDING_LIMIT:
            forgotten, _ = next(titles for titles in self._by_users if titles).popitem(last=False)
            del self._users_of[forgotten]


@dataclass
class TitlePlays:
    """A new title's plays: their times, and the first play of each of the first distinct users (as
    many as a column needs), which says when the title earned its column."""

    first_plays: dict[str, int] = field(default_factory=dict)  # user -> their first play's time
    times: "PlayTimes" = field(default_factory=lambda: PlayTimes())

    def add(self, user: str, ts: int, needed: int, forget_before: int | None) -> None:
        first = self.first_plays.get(user)
        if first is not None or len(self.first_plays) < needed:
            self.first_plays[user] = ts if first is None else min(first, ts)
        self.times.add(ts, forget_before)

    @property
    def earned_at(self) -> int:
        """When the last of the users it needed had played it (a late play moves this earlier)."""
        return max(self.first_plays.values())


class PlayTimes:
    """A title's play times, sorted, in a numpy array that grows by doubling (plays come nearly in
    time order: a late one is inserted at its place); when it is full, the times at or before
    `forget_before` make room first."""

    def __init__(self):
        self._times = np.zeros(4, dtype=np.int64)
        self._n = 0

    @property
    def newest(self) -> int:
        return int(self._times[self._n - 1]) if self._n else np.iinfo(np.int64).min

    def add(self, ts: int, forget_before: int | None = None) -> None:
        if self._n == len(self._times):
            kept = 0 if forget_before is None else int(np.searchsorted(self._times, forget_before, "right"))
            if kept > self._n // 2:  # forgetting frees at least half: no need to grow
                self._times[: self._n - kept] = self._times[kept : self._n].copy()
                self._n -= kept
            else:
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
        self.match = model.item_layer.intent_match
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
