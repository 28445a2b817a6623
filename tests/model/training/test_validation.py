"""Model selection's split and its one-pass judging of the validation targets."""
from __future__ import annotations

import numpy as np
import pytest

from model.serving.scorer import Scorer
from model.training.evaluate import target_ranks
from model.training.validation import HeldOut, Validation, held_out
from schemas import ModelRef
from tests.model.test_intentrec import random_history, random_model, tiny_config, tiny_vocab


def test_the_last_interaction_is_the_test_target_and_the_last_share_before_it_validate():
    assert held_out(101, 0.05) == HeldOut(validation_from=95, test=100)  # 5 of the 100 before the test
    assert held_out(3, 0.05) == HeldOut(validation_from=1, test=2)  # at least one validation target
    assert held_out(41, 0.1) == HeldOut(validation_from=36, test=40)


@pytest.mark.parametrize("variant", [{}, {"intent_tasks": ()}])
def test_validation_ranks_each_target_as_the_scorer_ranks_its_history(variant):
    """One forward pass per user gives every validation target the prediction Scorer.predict gives
    the rows before it, however far back the user's history reaches."""
    model = random_model(tiny_config(**variant))
    scorer = Scorer(model, tiny_vocab(), ModelRef("t", "0"))
    rows_by_user = {f"u{n}": random_history(length, seed=n) for n, length in enumerate((3, 9, 40, 64))}
    splits = {user: held_out(len(rows), 0.25) for user, rows in rows_by_user.items()}
    validation = Validation(rows_by_user, splits, model.config.history_len)

    expected = []
    for user, rows in rows_by_user.items():
        for t in range(max(1, splits[user].validation_from), splits[user].test):
            scores = scorer.predict([rows[:t]]).item_scores[:, : model.config.n_items + model.config.unknown_slots]
            expected.append((len(rows), int(target_ranks(scores, rows["item"][t : t + 1].astype(np.int64))[0])))
    expected = [rank for _, rank in sorted(expected, key=lambda pair: pair[0])]  # users are judged shortest first

    assert validation.targets == len(expected) == 1 + 2 + 10 + 16
    assert validation.ranks(model).tolist() == expected
    assert not model.training  # left as it was found
