"""The users a worker holds: at most max_users, the least recently active evicted first, and while
the table is full each user asks to be woken about when it is likely to have been evicted."""
from __future__ import annotations

import pytest

from stream.held_users import MIN_RECHECK_S, HeldUsers


class User:
    def __init__(self, name: str, active_at: float = 0.0):
        self.name = name
        self.active_at = active_at
        self.evicted = False

    def evict(self) -> None:
        self.evicted = True


class Changes:
    def __init__(self):
        self.held = self.evicted = 0

    def __call__(self, held_change: int, evicted: int) -> None:
        self.held += held_change
        self.evicted += evicted


def test_beyond_the_cap_the_least_recently_active_user_is_evicted():
    changes = Changes()
    held = HeldUsers(2, changes)
    a, b, c, d = (User(name) for name in "abcd")
    held.touch(a)
    held.touch(b)
    held.touch(a)  # a is now more recent than b
    held.touch(c)
    assert b.evicted and not a.evicted and not c.evicted
    assert b not in held and len(held) == 2
    held.touch(d)
    assert a.evicted and a not in held
    assert (changes.held, changes.evicted) == (2, 2)


def test_a_user_forgotten_by_its_ttl_leaves_room():
    changes = Changes()
    held = HeldUsers(2, changes)
    a, b, c = User("a"), User("b"), User("c")
    held.touch(a)
    held.touch(b)
    held.forget(a)
    held.forget(a)  # twice is once
    held.touch(c)
    assert not any(user.evicted for user in (a, b, c))
    assert (changes.held, changes.evicted) == (2, 0)


def test_only_a_full_table_wakes_users_early_and_as_far_ahead_as_the_least_recent_has_been_idle():
    held = HeldUsers(2)
    held.touch(User("a", active_at=100.0))
    assert held.eviction_due(now=130.0) is None  # room left: nobody is evicted, nobody is woken early
    held.touch(User("b", active_at=125.0))
    assert held.eviction_due(now=130.0) == 160.0  # the least recent, a, has been idle 30 s
    assert held.eviction_due(now=100.5) == 100.5 + MIN_RECHECK_S


def test_a_cap_below_one_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        HeldUsers(0)
