"""Every user's latest intent update, as the lookup service answers it.

The table keeps, per user, the update as JSON bytes (what `GET /users/{id}/intent` returns, encoded
once when the update arrives, not per request) and a short summary of the user's last updates (what
the page draws). An update replaces the one held only if it is newer by (ts, scored_at): a user's
updates normally come in order on one partition, but a topic re-keyed or re-partitioned, or a replay
writing old events, can bring an older one after a newer one. A tombstone (a null value, which
compaction keeps for a while) forgets the user.

The table holds at most `max_users`. When an update would add one more user, `on_full` decides:
"evict" forgets the user updated least recently (the metric `intentstream_lookup_evictions_total`
counts them), "refuse" raises TableFull, which stops the service with a message to raise the cap.
"""
from __future__ import annotations

import itertools
import struct
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable

from schemas import IntentUpdate, encode_intent_update

ON_FULL = ("evict", "refuse")


class TableFull(RuntimeError):
    """The topic holds more users than the table may (policy "refuse")."""


@dataclass(frozen=True, slots=True)
class Moment:
    """What the page draws of one past update: when, the intent weights, each task's top label. Kept
    small, as every user holds several: the task names are one tuple shared by all moments, the
    weights half-precision floats (a chart needs no more), the labels interned strings."""

    ts: int
    tasks: tuple[str, ...]
    weights: bytes  # struct "e" per task
    top_labels: tuple[str, ...]

    @classmethod
    def of(cls, update: IntentUpdate) -> "Moment":
        tasks = tuple(update.intent_weights)
        return cls(
            ts=update.ts,
            tasks=_SHARED_TASKS.setdefault(tasks, tasks),
            weights=struct.pack(f"{len(tasks)}e", *update.intent_weights.values()),
            top_labels=tuple(sys.intern(labels[0].label) if labels else "" for labels in
                             (update.intents.get(task, ()) for task in tasks)),
        )  # fmt: skip

    def as_dict(self) -> dict:
        weights = struct.unpack(f"{len(self.tasks)}e", self.weights)
        return {"ts": self.ts, "intent_weights": dict(zip(self.tasks, weights)),
                "top_labels": dict(zip(self.tasks, self.top_labels))}  # fmt: skip


def _exact(encoded: bytes) -> bytes:
    """A copy of exactly its size: orjson's output keeps the buffer it grew (16 KB for a 2 KB update),
    which, held per user, was 8 KB of every user's memory."""
    return bytes(memoryview(encoded))


_SHARED_TASKS: dict[tuple[str, ...], tuple[str, ...]] = {}


@dataclass(slots=True)
class Entry:
    order: tuple[int, int]  # (ts, scored_at) of the update held
    json: bytes  # the update, encoded as the API answers it
    recent: tuple[Moment, ...]  # the last updates, oldest first, the held one last


class LatestTable:
    def __init__(self, max_users: int, on_full: str = "evict", history: int = 8):
        if on_full not in ON_FULL:
            raise ValueError(f"on_full must be one of {', '.join(ON_FULL)}, not {on_full!r}")
        self.max_users = max_users
        self.on_full = on_full
        self.history = history
        self.evicted = 0
        self._entries: OrderedDict[str, Entry] = OrderedDict()  # least recently updated first
        self._lock = threading.Lock()  # one writer (the topic follower), many readers (requests)

    def __len__(self) -> int:
        return len(self._entries)

    def apply(self, update: IntentUpdate, json: bytes | None = None) -> bool:
        """Hold `update` if it is newer than the user's; `json` is its JSON encoding when the caller
        has it already. True if the table changed."""
        order = (update.ts, update.scored_at)
        with self._lock:
            held = self._entries.get(update.user_id)
            if held is not None and order < held.order:
                return False
            if held is None and len(self._entries) >= self.max_users:
                self._make_room()
            earlier = held.recent if held is not None else ()
            moments = (earlier + (Moment.of(update),))[-self.history:] if self.history else ()
            self._entries[update.user_id] = Entry(order, json or _exact(encode_intent_update(update, "json")), moments)
            self._entries.move_to_end(update.user_id)
            return True

    def forget(self, user_id: str) -> bool:
        with self._lock:
            return self._entries.pop(user_id, None) is not None

    def latest_json(self, user_id: str) -> bytes | None:
        entry = self._entries.get(user_id)  # a dict read is atomic under the GIL: no lock on the hot path
        return entry.json if entry is not None else None

    def many_json(self, user_ids: Iterable[str]) -> tuple[list[bytes], list[str]]:
        """(the JSON of the users held, in the order asked; the ids not held)."""
        found, missing = [], []
        for user_id in user_ids:
            entry = self._entries.get(user_id)
            if entry is None:
                missing.append(user_id)
            else:
                found.append(entry.json)
        return found, missing

    def recent(self, user_id: str) -> tuple[Moment, ...] | None:
        entry = self._entries.get(user_id)
        return entry.recent if entry is not None else None

    def user_ids(self, limit: int) -> list[str]:
        """Up to `limit` users, most recently updated first (the page's picker). A negative limit
        is a ValueError, not every user."""
        with self._lock:
            return list(itertools.islice(reversed(self._entries), limit))

    def _make_room(self) -> None:
        if self.on_full == "refuse":
            raise TableFull(f"the topic holds more than {self.max_users:,} users, the cap (--max-users); raise "
                            "the cap (memory per user is in the README) or pass --on-full evict")
        self._entries.popitem(last=False)
        self.evicted += 1
