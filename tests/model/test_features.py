"""Unknown titles: each user's titles the vocabulary lacks get item slots after the catalogue."""
from __future__ import annotations

import numpy as np

from model.features import ROW_DTYPE, slot_history, slot_title
from model.vocab import UNKNOWN

N_ITEMS = 10


def rows_of(items: list[int]) -> np.ndarray:
    rows = np.zeros(len(items), dtype=ROW_DTYPE)
    rows["item"] = items
    return rows


def test_unknown_titles_get_slots_in_the_order_they_come_and_keep_them():
    rows, names = slot_history(rows_of([2, UNKNOWN, UNKNOWN, 3, UNKNOWN]), ["a", "new-1", "new-2", "b", "new-1"],
                               N_ITEMS, slots=4)  # fmt: skip
    assert rows["item"].tolist() == [2, 10, 11, 3, 10]
    assert names == ("new-1", "new-2")


def test_a_new_title_takes_the_slot_of_the_title_played_least_recently_whose_rows_then_read_unknown():
    """More new titles than slots: the title played last always has a slot (the one it was played in
    least recently), and the older plays of the title that lost it can no longer be pointed at."""
    rows, names = slot_history(rows_of([UNKNOWN] * 5), ["x", "y", "x", "z", "w"], N_ITEMS, slots=2)
    # z takes y's slot (x was played after y), then w takes x's (z was played after x)
    assert rows["item"].tolist() == [UNKNOWN, UNKNOWN, UNKNOWN, 11, 10] and names == ("w", "z")


def test_a_slot_no_held_row_plays_is_given_again_first_and_nothing_is_relabelled():
    first = rows_of([UNKNOWN])[0]
    titles, taken = slot_title(first, "old-show", (), np.array([2, 3]), N_ITEMS, slots=2)
    assert first["item"] == 10 and titles == ("old-show",) and taken is None
    second = rows_of([UNKNOWN])[0]
    titles, taken = slot_title(second, "mid-show", titles, np.array([2, 10]), N_ITEMS, slots=2)
    assert second["item"] == 11 and taken is None
    third = rows_of([UNKNOWN])[0]  # old-show's rows have left the window, mid-show's have not
    titles, taken = slot_title(third, "new-show", titles, np.array([11, 3]), N_ITEMS, slots=2)
    assert third["item"] == 10 and titles == ("new-show", "mid-show") and taken is None
    fourth = rows_of([UNKNOWN])[0]  # both held: mid-show (position 0) was played before new-show (1)
    titles, taken = slot_title(fourth, "last-show", titles, np.array([11, 10, 2]), N_ITEMS, slots=2)
    assert fourth["item"] == 11 and titles == ("new-show", "last-show") and taken == 11


def test_known_items_and_no_slots_leave_rows_alone():
    rows, names = slot_history(rows_of([2, UNKNOWN]), ["a", "new"], N_ITEMS, slots=0)
    assert rows["item"].tolist() == [2, UNKNOWN] and names == ()
