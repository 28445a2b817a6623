"""A user's recent interactions, as the stream keeps them between events.

`UserState` holds the last `capacity` interactions of one user as one numpy structured array (the
scorer's compact feature row, the event time and a 64-bit hash of the event id), sorted by event
time; an event arriving in event-time order is appended, a late one is inserted at its place.
Each accepted event is answered with the history the scorer needs: the last `context` rows up to
and including that event.

Rules, in the order `add` applies them:

1. **Idle users start afresh.** An event more than `ttl_ms` after the user's newest one finds an
   empty state: what the user did before is forgotten, exactly as if the state had been evicted.
2. **Duplicates are dropped.** An event whose id is among the held rows is not added again.
3. **Bounded lateness.** An event older than the user's newest by more than `lateness_ms` is late.
4. **Complete histories only.** Once rows have been dropped to stay within `capacity`, an event
   that would need a dropped row in its history (fewer than `context - 1` held rows before it), or
   that is not newer than the newest dropped row, is late too: it cannot be scored as offline
   evaluation would. `capacity - context` is the room for late events this leaves.

Why the held rows are enough to catch every duplicate that is not late anyway: an event's copy has
the event's own timestamp. If the event is still held, rule 2 finds its id. If it was dropped to
stay within capacity, the copy is not newer than the newest dropped row (rule 4). If it was
forgotten by rule 1, the copy is more than `ttl_ms` older than the newest event and
`ttl_ms >= lateness_ms` (rule 3). Ids are compared as 64-bit BLAKE2b hashes, stable across
processes (unlike `hash()`); two different ids of one user's few hundred held events collide with
probability ~1e-15.

Ties in event time keep arrival order: an event goes after the held ones with the same `ts`.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from enum import Enum

import numpy as np

INITIAL_ROWS = 2  # storage grows by doubling up to capacity + 1, so users with few events stay small


def event_key(event_id: str) -> int:
    """The 64-bit hash an event id is remembered by."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")


def default_capacity(context: int) -> int:
    """Rows kept per user when not configured: the scorer's context plus a quarter (at least 8)
    of room for late events."""
    return context + max(8, context // 4)


@dataclass(frozen=True)
class StateConfig:
    """What every user's state shares; see the module docstring for the rules."""

    row_dtype: np.dtype  # the scorer's featurized interaction
    context: int  # rows a score needs: the scored event and the context - 1 before it
    capacity: int  # rows kept per user, >= context
    lateness_ms: int
    ttl_ms: int
    # `remember` turns away events further ahead of the wall clock than this: one event from the far
    # future would otherwise make every later real event of its user late.
    max_clock_skew_ms: int = 300_000

    def __post_init__(self):
        if self.context < 1:
            raise ValueError(f"context must be >= 1, got {self.context}")
        if self.capacity < self.context:
            raise ValueError(
                f"a user's state must keep at least the {self.context} interactions the model "
                f"reads; got capacity {self.capacity}"
            )
        if self.lateness_ms < 0:
            raise ValueError(f"lateness must be >= 0, got {self.lateness_ms} ms")
        if self.max_clock_skew_ms < 0:
            raise ValueError(f"the allowed clock skew must be >= 0, got {self.max_clock_skew_ms} ms")
        if self.ttl_ms < self.lateness_ms:
            raise ValueError(
                f"the idle TTL ({self.ttl_ms} ms) must not be shorter than the allowed lateness "
                f"({self.lateness_ms} ms), or a late copy of a forgotten event would pass as new"
            )

    @cached_property
    def entry_dtype(self) -> np.dtype:
        # One dtype object for every user's array: each new structured dtype costs ~400 bytes, and
        # an array keeps the one it was made with.
        return np.dtype([("row", self.row_dtype), ("ts", np.int64), ("event", np.uint64)])


class Verdict(Enum):
    ADDED = "added"
    DUPLICATE = "duplicate"
    LATE = "late"


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    history: np.ndarray | None = None  # ADDED: rows to score, ending with this event (a copy)
    newest: bool = False  # ADDED: the event is now the user's newest
    reason: str = ""  # LATE: why, in words


# A UserState for recovery: its held entries as raw bytes, and the newest event time among the rows
# dropped for capacity (None: none dropped). A plain tuple, so that its pickle imports and calls
# nothing: resuming refuses any snapshot that would (stream.service.recovery).
UserSnapshot = tuple[bytes, int | None]


class UserState:
    __slots__ = ("config", "_entries", "_size", "_dropped_ts")  # one per user held: no __dict__

    def __init__(self, config: StateConfig):
        self.config = config
        self._entries = np.zeros(min(INITIAL_ROWS, config.capacity + 1), dtype=config.entry_dtype)
        self._size = 0
        self._dropped_ts: int | None = None

    @classmethod
    def restore(cls, config: StateConfig, snapshot: UserSnapshot) -> "UserState":
        state = cls(config)
        entries, dropped_ts = snapshot
        held = np.frombuffer(entries, dtype=config.entry_dtype)
        state._entries = np.zeros(max(len(held), state._entries.size), dtype=config.entry_dtype)
        state._entries[: len(held)] = held
        state._size = len(held)
        state._dropped_ts = dropped_ts
        return state

    def snapshot(self) -> UserSnapshot:
        return self._entries[: self._size].tobytes(), self._dropped_ts

    def __len__(self) -> int:
        return self._size

    @property
    def newest_ts(self) -> int | None:
        return int(self._entries["ts"][self._size - 1]) if self._size else None

    def rows(self) -> np.ndarray:
        """All held rows, oldest first (a copy)."""
        return self._entries["row"][: self._size].copy()

    def add(self, row: np.ndarray, event_id: str, ts: int, relabel: tuple[int, int] | None = None) -> Outcome:
        """Adds the event (`row`) by the rules of the module docstring. `relabel` (old, new): once the
        event is accepted, the held rows whose item is `old` read `new` (model.features.slot_title:
        a slot given to another title) before the event joins them."""
        config = self.config
        newest_ts = self.newest_ts
        if newest_ts is not None and ts - newest_ts > config.ttl_ms:
            self._forget()
            newest_ts = None
        key = np.uint64(event_key(event_id))
        held = self._entries[: self._size]
        if (held["event"] == key).any():
            return Outcome(Verdict.DUPLICATE)
        if newest_ts is not None and newest_ts - ts > config.lateness_ms:
            return Outcome(
                Verdict.LATE,
                reason=f"{newest_ts - ts} ms older than the user's newest event "
                f"(allowed lateness {config.lateness_ms} ms)",
            )
        if newest_ts is None or ts >= newest_ts:  # in event-time order, as most events come
            position = self._size
        else:
            position = int(held["ts"].searchsorted(ts, side="right"))
        if self._dropped_ts is not None and (ts <= self._dropped_ts or position < config.context - 1):
            return Outcome(
                Verdict.LATE,
                reason=f"older than the interactions kept for this user: its history would need "
                f"some of the older ones already dropped (keeping {config.capacity})",
            )
        if relabel is not None:
            items = self._entries["row"]["item"][: self._size]
            items[items == relabel[0]] = relabel[1]
        self._insert(position, row, ts, key)
        history = self._entries["row"][max(0, position + 1 - config.context) : position + 1].copy()
        newest = position == self._size - 1
        if self._size > config.capacity:
            self._drop_oldest()
        return Outcome(Verdict.ADDED, history=history, newest=newest)

    def _insert(self, position: int, row: np.ndarray, ts: int, key: np.uint64) -> None:
        if self._size == self._entries.size:
            grown = np.zeros(min(2 * self._entries.size, self.config.capacity + 1), self._entries.dtype)
            grown[: self._size] = self._entries[: self._size]
            self._entries = grown
        entries = self._entries
        entries[position + 1 : self._size + 1] = entries[position : self._size]
        entries["row"][position] = row
        entries["ts"][position] = ts
        entries["event"][position] = key
        self._size += 1

    def _drop_oldest(self) -> None:
        entries = self._entries
        self._dropped_ts = int(entries["ts"][0])
        entries[: self._size - 1] = entries[1 : self._size]
        self._size -= 1

    def _forget(self) -> None:
        self._size = 0
        self._dropped_ts = None
