"""Model selection: which epoch training keeps, judged on many held-out targets per user.

Split per user, in time order (`held_out`): the last interaction is the test target, which neither
training nor model selection ever sees; the last `validation_share` of the interactions before it
(at least one) are validation targets; everything earlier is training data, and only it makes the
vocabularies and what IntentMatch learns of the catalogue. One target per user (the second-to-last
interaction) was too few on logs of few users with long histories: 80 accounts gave 80 validation
cases, and every epoch's NDCG@10 lay within their noise.

`Validation.ndcg` ranks every validation target in one forward pass per user over the rows before
its targets, the way training runs the model, instead of one pass per target: the prediction after
position p depends only on the history_len rows up to p (model.config), so each target gets exactly
what Scorer.predict gives its history (tests pin this), at the cost of about one epoch's forward
pass over the validation part. A target's rank is a count over the catalogue in blocks
(model.item_layer.ItemLayer.ranks), so memory does not grow with the catalogue.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model.features import batch_tensors
from model.inputs import model_inputs
from model.intentrec import IntentRec
from model.training.evaluate import ndcg_per_case

# Rows x positions of one validation call at most (the item layer then ranks its targets in blocks).
VALIDATION_ROWS = 1 << 13


@dataclass(frozen=True)
class HeldOut:
    """Where a user's held-out interactions start: validation targets are indices validation_from ..
    test - 1, the test target is index `test` (the last)."""

    validation_from: int
    test: int


def held_out(n: int, validation_share: float) -> HeldOut:
    """The split of a user's n interactions (oldest first)."""
    test = n - 1
    validation = max(1, round(validation_share * test))
    return HeldOut(max(0, test - validation), test)


@dataclass
class UserValidation:
    rows: np.ndarray  # the rows from the first one the targets' predictions read to the last one before the test
    targets: np.ndarray  # positions in `rows` of the validation targets


class Validation:
    """The validation targets of every user (those with a history before them), ranked by `ndcg`."""

    def __init__(self, rows_by_user: dict[str, np.ndarray], splits: dict[str, HeldOut], history_len: int):
        self.users: list[UserValidation] = []
        for user, rows in rows_by_user.items():
            split = splits[user]
            first = max(split.validation_from, 1)  # a target needs at least one row before it
            if first >= split.test:
                continue
            start = max(0, first - history_len)
            self.users.append(UserValidation(rows[start : split.test], np.arange(first, split.test) - start))
        self.users.sort(key=lambda user: len(user.rows))  # batches of similar lengths pad less
        self.targets = sum(len(user.targets) for user in self.users)

    @torch.no_grad()
    def ranks(self, model: IntentRec) -> np.ndarray:
        """Each validation target's rank in the next-item distribution after the row before it."""
        was_training = model.training
        model.eval()
        ranks, start = [], 0
        while start < len(self.users):
            end = start + 1  # users are sorted by length: the batch's last is its longest
            while end < len(self.users) and (end + 1 - start) * len(self.users[end].rows) <= VALIDATION_ROWS:
                end += 1
            batch = self.users[start:end]
            x = model_inputs(batch_tensors([user.rows for user in batch], len(batch[-1].rows)), model.config)
            state = model.encode(x).item_state
            rows = torch.cat([torch.full((len(user.targets),), b) for b, user in enumerate(batch)])
            positions = torch.from_numpy(np.concatenate([user.targets - 1 for user in batch]))
            targets = torch.from_numpy(np.concatenate([user.rows["item"][user.targets] for user in batch]).astype(np.int64))
            ranks.append(model.item_layer.ranks(state.at(rows, positions), model.features.item.weight,
                                                targets.unsqueeze(1)).numpy())  # fmt: skip
            start = end
        model.train(was_training)
        return np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)

    def ndcg(self, model: IntentRec) -> float:
        ranks = self.ranks(model)
        return float(ndcg_per_case(ranks).mean()) if len(ranks) else 0.0
