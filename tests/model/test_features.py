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


def test_a_title_finds_no_slot_when_all_are_in_use_and_stays_unknown():
    rows, names = slot_history(rows_of([UNKNOWN] * 3), ["x", "y", "z"], N_ITEMS, slots=2)
    assert rows["item"].tolist() == [10, 11, UNKNOWN] and names == ("x", "y")


def test_a_slot_is_given_again_once_no_held_row_plays_its_title():
    first = rows_of([UNKNOWN])[0]
    titles = slot_title(first, "old-show", (), np.array([2, 3]), N_ITEMS, slots=1)
    assert first["item"] == 10 and titles == ("old-show",)
    still_held = rows_of([UNKNOWN])[0]
    assert slot_title(still_held, "new-show", titles, np.array([2, 10]), N_ITEMS, 1) == titles  # slot 10 in use
    assert still_held["item"] == UNKNOWN
    later = rows_of([UNKNOWN])[0]
    titles = slot_title(later, "new-show", titles, np.array([2, 3]), N_ITEMS, slots=1)  # the rows of slot 10 are gone
    assert later["item"] == 10 and titles == ("new-show",)


def test_known_items_and_no_slots_leave_rows_alone():
    rows, names = slot_history(rows_of([2, UNKNOWN]), ["a", "new"], N_ITEMS, slots=0)
    assert rows["item"].tolist() == [2, UNKNOWN] and names == ()
