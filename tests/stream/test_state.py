"""UserState: event-time order, bounded lateness, dedup, TTL, capacity, snapshots."""
from __future__ import annotations

import pickle
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.features import ROW_DTYPE
from stream.service.recovery import code_in_pickle
from stream.state import StateConfig, UserState, Verdict, default_capacity

MINUTE = 60_000


def config(context=3, capacity=5, lateness_ms=10 * MINUTE, ttl_ms=60 * MINUTE) -> StateConfig:
    return StateConfig(ROW_DTYPE, context=context, capacity=capacity, lateness_ms=lateness_ms, ttl_ms=ttl_ms)


def row(item: int, ts: int) -> np.ndarray:
    r = np.zeros((), dtype=ROW_DTYPE)
    r["item"] = item
    r["ts"] = ts
    return r


def add(state: UserState, item: int, ts: int, event_id: str | None = None):
    return state.add(row(item, ts), event_id or f"e{item}", ts)


def items(rows: np.ndarray) -> list[int]:
    return rows["item"].tolist()


def test_in_order_events_are_appended_and_scored_on_the_last_context_rows():
    state = UserState(config(context=3))
    histories = [add(state, item, item * MINUTE) for item in range(1, 6)]
    assert [o.verdict for o in histories] == [Verdict.ADDED] * 5
    assert all(o.newest for o in histories)
    assert [items(o.history) for o in histories] == [[1], [1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5]]
    assert items(state.rows()) == [1, 2, 3, 4, 5]


def test_a_late_but_allowed_event_is_inserted_at_its_time_and_scored_on_its_past():
    state = UserState(config(context=3, capacity=10))
    for item, minute in [(1, 1), (2, 2), (4, 4), (5, 5)]:
        add(state, item, minute * MINUTE)
    outcome = add(state, 3, 3 * MINUTE)
    assert outcome.verdict is Verdict.ADDED
    assert not outcome.newest
    assert items(outcome.history) == [1, 2, 3]
    assert items(state.rows()) == [1, 2, 3, 4, 5]
    assert items(add(state, 6, 6 * MINUTE).history) == [4, 5, 6]


def test_equal_timestamps_keep_arrival_order():
    state = UserState(config(context=5, capacity=10))
    for item in (1, 2, 3):
        add(state, item, MINUTE)
    assert items(state.rows()) == [1, 2, 3]
    assert add(state, 4, MINUTE).newest


def test_an_event_older_than_the_newest_by_more_than_the_lateness_is_late():
    state = UserState(config(lateness_ms=10 * MINUTE, capacity=10))
    add(state, 1, 100 * MINUTE)
    assert add(state, 2, 90 * MINUTE).verdict is Verdict.ADDED  # exactly at the bound
    late = add(state, 3, 90 * MINUTE - 1)
    assert late.verdict is Verdict.LATE
    assert "allowed lateness" in late.reason
    assert late.history is None
    assert items(state.rows()) == [2, 1]


def test_duplicates_are_dropped_whether_in_order_late_or_beyond_the_lateness():
    state = UserState(config(lateness_ms=10 * MINUTE, capacity=10))
    add(state, 1, 0, "a")
    add(state, 2, 5 * MINUTE, "b")
    add(state, 3, 2 * MINUTE, "c")  # inserted late
    add(state, 4, 30 * MINUTE, "d")
    for event_id, ts in [("a", 0), ("b", 5 * MINUTE), ("c", 2 * MINUTE), ("d", 30 * MINUTE)]:
        assert add(state, 99, ts, event_id).verdict is Verdict.DUPLICATE
    assert add(state, 99, 40 * MINUTE, "a").verdict is Verdict.DUPLICATE  # same id, other time
    assert items(state.rows()) == [1, 3, 2, 4]


def test_capacity_bounds_the_rows_and_histories_stay_complete():
    state = UserState(config(context=3, capacity=5, lateness_ms=60 * MINUTE, ttl_ms=120 * MINUTE))
    for item in range(1, 9):
        add(state, item, item * MINUTE * 2)  # even minutes 2..16
    assert len(state) == 5
    assert items(state.rows()) == [4, 5, 6, 7, 8]
    # Minute 11 has two held rows before it (minutes 8 and 10): its history is complete.
    inserted = add(state, 11, 11 * MINUTE)
    assert inserted.verdict is Verdict.ADDED
    assert items(inserted.history) == [4, 5, 11]
    assert len(state) == 5
    assert items(state.rows()) == [5, 11, 6, 7, 8]
    # Minute 10.5 would need row 4, which was just dropped; minute 7 is older than dropped rows.
    assert add(state, 12, 10 * MINUTE + 30_000).verdict is Verdict.LATE
    late = add(state, 13, 7 * MINUTE)
    assert late.verdict is Verdict.LATE
    assert "kept for this user" in late.reason


def test_a_copy_of_a_dropped_event_is_late_not_new():
    state = UserState(config(context=2, capacity=2, lateness_ms=60 * MINUTE, ttl_ms=120 * MINUTE))
    for item in (1, 2, 3):
        add(state, item, item * MINUTE)
    assert items(state.rows()) == [2, 3]
    assert add(state, 1, MINUTE).verdict is Verdict.LATE


def test_an_event_older_than_everything_in_a_full_state_is_scored_then_dropped():
    state = UserState(config(context=1, capacity=2, lateness_ms=60 * MINUTE, ttl_ms=120 * MINUTE))
    add(state, 2, 2 * MINUTE)
    add(state, 3, 3 * MINUTE)
    outcome = add(state, 1, MINUTE)
    assert outcome.verdict is Verdict.ADDED and items(outcome.history) == [1]
    assert items(state.rows()) == [2, 3]
    assert add(state, 1, MINUTE).verdict is Verdict.LATE  # its copy: not newer than the dropped row


def test_a_user_idle_longer_than_the_ttl_starts_afresh():
    state = UserState(config(context=3, lateness_ms=10 * MINUTE, ttl_ms=60 * MINUTE))
    add(state, 1, 0, "a")
    add(state, 2, MINUTE, "b")
    assert items(add(state, 3, 61 * MINUTE).history) == [1, 2, 3]  # exactly the TTL: kept
    fresh = add(state, 4, 122 * MINUTE)
    assert fresh.verdict is Verdict.ADDED
    assert items(fresh.history) == [4]
    assert items(state.rows()) == [4]
    assert add(state, 2, MINUTE, "b").verdict is Verdict.LATE  # a copy of a forgotten event


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(context=0), "context"),
        (dict(context=4, capacity=3), "at least the 4"),
        (dict(lateness_ms=-1), "lateness"),
        (dict(lateness_ms=10, ttl_ms=5), "TTL"),
    ],
)
def test_bad_configs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        config(**kwargs)


def test_default_capacity_leaves_room_for_late_events():
    assert default_capacity(4) == 12
    assert default_capacity(198) == 247


def test_snapshot_is_compact_and_restores_the_same_behaviour():
    cfg = config(context=3, capacity=4, lateness_ms=60 * MINUTE, ttl_ms=120 * MINUTE)
    state = UserState(cfg)
    for item in range(1, 7):
        add(state, item, item * MINUTE)
    snapshot = state.snapshot()
    wire = pickle.dumps(snapshot, protocol=pickle.HIGHEST_PROTOCOL)
    assert len(wire) < len(state) * cfg.entry_dtype.itemsize + 120
    restored = UserState.restore(cfg, pickle.loads(wire))
    assert code_in_pickle(wire) is None  # plain data: resuming it runs nothing
    np.testing.assert_array_equal(restored.rows(), state.rows())
    # Same verdicts afterwards: duplicate, complete-history insert, too old, new.
    probes = [(5, 5 * MINUTE, "e5"), (9, 5 * MINUTE + 1, "x"), (8, 2 * MINUTE, "y"), (7, 7 * MINUTE, "e7")]
    for item, ts, event_id in probes:
        a, b = add(state, item, ts, event_id), add(restored, item, ts, event_id)
        assert a.verdict == b.verdict
        if a.history is not None:
            np.testing.assert_array_equal(a.history, b.history)


def test_a_snapshot_does_not_change_with_the_state():
    state = UserState(config())
    add(state, 1, MINUTE)
    snapshot = state.snapshot()
    add(state, 2, 2 * MINUTE)
    assert len(UserState.restore(state.config, snapshot)) == 1


# Property: whatever the arrival order, every added event is scored on exactly the events added
# before it (since the user was last forgotten), in event-time order, cut to the context; copies
# of an added event (same id, same time) are never added again; nothing is added beyond the lateness,
# and nothing within it is refused while all the user's events fit in the capacity.


@settings(max_examples=200, deadline=None)
@given(
    arrivals=st.lists(st.integers(0, 20), min_size=1, max_size=40),  # event id numbers, copies included
    minute_of=st.lists(st.integers(0, 60), min_size=21, max_size=21),  # each event's time
    context=st.integers(1, 4),
    room=st.integers(0, 3),
)
def test_added_histories_equal_the_reference(arrivals, minute_of, context, room):
    events = [(number, minute_of[number]) for number in arrivals]
    cfg = config(context=context, capacity=context + room, lateness_ms=30 * MINUTE, ttl_ms=90 * MINUTE)
    state = UserState(cfg)
    accepted: list[tuple[int, int, str]] = []  # (ts, arrival, event id) since the last forget
    newest = None
    for arrival, (number, minute) in enumerate(events):
        event_id, ts = f"id{number}", minute * MINUTE
        if newest is not None and ts - newest > cfg.ttl_ms:
            accepted = []
        outcome = state.add(row(arrival, ts), event_id, ts)
        held_ids = {e[2] for e in accepted}
        if outcome.verdict is Verdict.DUPLICATE:
            assert event_id in held_ids
            continue
        assert event_id not in held_ids or outcome.verdict is Verdict.LATE
        if outcome.verdict is Verdict.LATE:  # beyond the lateness, or after rows were dropped
            assert max(e[0] for e in accepted) - ts > cfg.lateness_ms or len(accepted) > cfg.capacity
            continue
        assert newest is None or not accepted or max(e[0] for e in accepted) - ts <= cfg.lateness_ms
        accepted.append((ts, arrival, event_id))
        accepted.sort()
        past = [e for e in accepted if (e[0], e[1]) <= (ts, arrival)]
        assert items(outcome.history) == [e[1] for e in past[-context:]]
        assert outcome.newest == (accepted[-1][1] == arrival)
        newest = accepted[-1][0]
        assert len(state) <= cfg.capacity


def test_a_user_of_two_events_is_held_in_a_few_hundred_bytes():
    """A stream holds a state per user (a million users at 1 KB each is a gigabyte): every state of a
    config shares one entry dtype, and storage starts at two rows."""
    cfg = config(context=3, capacity=200)
    rows = [row(1, MINUTE), row(2, 2 * MINUTE)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        states = []
        for _ in range(2000):
            state = UserState(cfg)
            state.add(rows[0], "e1", MINUTE)
            state.add(rows[1], "e2", 2 * MINUTE)
            states.append(state)
        per_user = (tracemalloc.get_traced_memory()[0] - before) / len(states)
    finally:
        tracemalloc.stop()
    assert all(len(state) == 2 for state in states)
    assert per_user < 400, f"{per_user:.0f} bytes per user"  # 1,000 with a dtype per state and 8 rows


def test_rows_are_relabelled_only_when_the_event_is_accepted_and_before_it_joins():
    """A slot given to another title (model.features.slot_title): the held rows of the title that
    lost it read as another item, in the history scored with the event, but the event keeps its own."""
    state = UserState(config(context=4, capacity=6))
    add(state, 10, 1 * MINUTE, "a")
    add(state, 2, 2 * MINUTE, "b")
    add(state, 10, 3 * MINUTE, "c")
    assert state.add(row(10, 4 * MINUTE), "c", 4 * MINUTE, relabel=(10, 1)).verdict is Verdict.DUPLICATE
    assert items(state.rows()) == [10, 2, 10]  # nothing relabelled for a duplicate
    outcome = state.add(row(10, 5 * MINUTE), "d", 5 * MINUTE, relabel=(10, 1))
    assert items(outcome.history) == [1, 2, 1, 10] and items(state.rows()) == [1, 2, 1, 10]
