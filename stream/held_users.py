"""The users a worker thread of `run` holds, at most `max_users` of them, least recently active
first out: a stream of ever new user ids (a flood, or a slow leak of one-off ids) cannot grow the
process's memory past what `--max-users` allows.

The `remember` step holds one Bytewax StatefulLogic per user (stream.dataflow.RememberUser), and
Bytewax keeps a logic until the logic itself says DISCARD, which it can only say when Bytewax calls
it: on an event of its user, or at the time its `notify_at` asked for. So eviction comes in two
parts. `HeldUsers.touch` (on every event) makes its user the most recently active; a user it adds
beyond the cap evicts the least recently active one, whose `evict()` drops its rows at once: what
made the user big goes at once. What is left (the logic itself, an empty shell, and Bytewax's entry
for its key) goes at the shell's next callback. That callback must come soon, or the shells of a
flood would pile up until their TTL: while the table is full, a user asks to be woken when it is
likely to have been evicted by then (`eviction_due`: as long from now as the least recently active
user has been idle), and a woken user that is still held asks again, each time at least as far
ahead, so a shell outlives its eviction by about the idle time of the users evicted with it, and
the shells awaiting their callback are about as many as the users held. While the table has room
nothing is woken early.

One HeldUsers per worker thread (Bytewax calls a key's logic only from the worker that owns the
key), so eviction never reaches into a logic another thread is running, and needs no lock; the
process's cap is shared evenly among its workers, whose users Bytewax routes by a hash of the key.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Protocol

# A user still held when woken asks again no sooner than this: a table full of users that were all
# active at about the same time would otherwise wake them again and again.
MIN_RECHECK_S = 1.0

# (change in users held, users evicted), for the counters and metrics
UsersChanged = Callable[[int, int], None]


class Evictable(Protocol):
    @property
    def active_at(self) -> float:
        """When the user was last active, in epoch seconds."""

    def evict(self) -> None:
        """Drop what the user holds: the least recently active user is being forgotten."""


class HeldUsers:
    def __init__(self, max_users: int, changed: UsersChanged | None = None):
        if max_users < 1:
            raise ValueError(f"max_users must be at least 1, got {max_users}")
        self.max_users = max_users
        self.changed = changed
        # Least recently active first. The values are all None: the users know when they were
        # active, and a float per user would be 24 bytes more of it.
        self._held: OrderedDict[Evictable, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, user: Evictable) -> bool:
        return user in self._held

    def touch(self, user: Evictable) -> None:
        """`user` is active: it becomes the most recently active. A user not held yet is added, and
        beyond the cap the least recently active ones are evicted."""
        held = self._held
        if user in held:
            held.move_to_end(user)
            return
        held[user] = None
        evicted = 0
        while len(held) > self.max_users:
            oldest, _ = held.popitem(last=False)
            oldest.evict()
            evicted += 1
        if self.changed is not None:
            self.changed(1 - evicted, evicted)

    def forget(self, user: Evictable) -> None:
        """`user` goes by itself (its TTL)."""
        if user in self._held:
            del self._held[user]
            if self.changed is not None:
                self.changed(-1, 0)

    def eviction_due(self, now: float) -> float | None:
        """When a user active at `now` is likely to have been evicted (see the module docstring),
        or None while the table has room."""
        if len(self._held) < self.max_users:
            return None
        least_recent = next(iter(self._held))
        return now + max(now - least_recent.active_at, MIN_RECHECK_S)
