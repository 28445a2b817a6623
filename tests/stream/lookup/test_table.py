"""The lookup table: newest update wins by (ts, scored_at), tombstones forget, the cap's policies."""
from __future__ import annotations

import tracemalloc

import orjson
import pytest

from schemas import decode_intent_update
from stream.lookup.table import LatestTable, TableFull
from tests.stream.lookup.updates import update


def held(table: LatestTable, user_id: str):
    found = table.latest_json(user_id)
    return None if found is None else decode_intent_update(found, "json")


def test_a_newer_update_replaces_an_older_one_and_an_older_one_does_not():
    table = LatestTable(max_users=10)
    assert table.apply(update("u1", ts=1_000, label="drama"))
    assert table.apply(update("u1", ts=2_000, label="comedy"))
    assert not table.apply(update("u1", ts=1_500, label="horror"))  # arrived late, from another partition
    assert held(table, "u1") == update("u1", ts=2_000, label="comedy")


def test_the_same_event_scored_again_replaces_by_its_scoring_time():
    table = LatestTable(max_users=10)
    table.apply(update("u1", ts=1_000, label="drama", scored_at=1_010))
    assert table.apply(update("u1", ts=1_000, label="comedy", scored_at=1_020))  # a re-scored copy after a restart
    assert not table.apply(update("u1", ts=1_000, label="horror", scored_at=1_015))
    assert held(table, "u1").intents["genre"][0].label == "comedy"


def test_held_json_is_the_update_as_the_schema_has_it():
    table = LatestTable(max_users=10)
    table.apply(update("u1", ts=1_000))
    assert orjson.loads(table.latest_json("u1"))["next_items"] == [{"item_id": "item-1000", "score": 0.5},
                                                                   {"item_id": "item-0", "score": 0.25}]


def test_a_forgotten_user_is_unknown():
    table = LatestTable(max_users=10)
    table.apply(update("u1", ts=1_000))
    assert table.forget("u1") and not table.forget("u1")
    assert table.latest_json("u1") is None and len(table) == 0


def test_the_recent_updates_are_kept_up_to_the_history_oldest_first():
    table = LatestTable(max_users=10, history=3)
    for ts in (1_000, 2_000, 3_000, 4_000):
        table.apply(update("u1", ts=ts, label=f"g{ts}", weight_of_genre=ts / 10_000))
    moments = table.recent("u1")
    assert [moment.ts for moment in moments] == [2_000, 3_000, 4_000]
    assert moments[-1].as_dict()["top_labels"]["genre"] == "g4000"
    assert moments[-1].as_dict()["intent_weights"]["genre"] == pytest.approx(0.4, abs=1e-3)  # half precision
    assert LatestTable(max_users=10, history=0).recent("u1") is None


def test_a_full_table_evicts_the_user_updated_least_recently():
    table = LatestTable(max_users=2, on_full="evict")
    table.apply(update("u1", ts=1_000))
    table.apply(update("u2", ts=1_000))
    table.apply(update("u1", ts=2_000))  # u2 is now the least recently updated
    table.apply(update("u3", ts=1_000))
    assert table.latest_json("u2") is None and len(table) == 2 and table.evicted == 1
    assert table.user_ids(10) == ["u3", "u1"]


def test_a_full_table_under_refuse_says_to_raise_the_cap():
    table = LatestTable(max_users=1, on_full="refuse")
    table.apply(update("u1", ts=1_000))
    table.apply(update("u1", ts=2_000))  # the same user: no room needed
    with pytest.raises(TableFull, match=r"more than 1 users, the cap \(--max-users\)"):
        table.apply(update("u2", ts=1_000))


def test_many_users_at_once_keep_the_order_asked():
    table = LatestTable(max_users=10)
    for user_id in ("u1", "u2"):
        table.apply(update(user_id, ts=1_000))
    found, missing = table.many_json(["u2", "nobody", "u1"])
    assert [orjson.loads(one)["user_id"] for one in found] == ["u2", "u1"] and missing == ["nobody"]


def test_a_user_costs_a_few_kilobytes():
    """orjson's output keeps an oversized buffer: held as it is, every user cost 8 KB more."""
    table = LatestTable(max_users=10_000, history=8)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(3):
            for user in range(500):
                table.apply(update(f"user-{user:04d}", ts=1_000 + n))
        per_user = (tracemalloc.get_traced_memory()[0] - before) / 500
    finally:
        tracemalloc.stop()
    assert per_user < 3_000, f"{per_user:.0f} bytes per user"


def test_user_ids_gives_at_most_the_limit_and_never_everyone_for_a_negative_one():
    table = LatestTable(max_users=10)
    for n in range(5):
        table.apply(update(f"u{n}", ts=1_000 + n))
    assert table.user_ids(2) == ["u4", "u3"] and table.user_ids(0) == []
    with pytest.raises(ValueError):
        table.user_ids(-1)
