"""Sampled negatives: every target of the step among them, each weighted by its draws over its
expected draws; and a model trained with them learns."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model.config import TrainConfig
from model.training.negatives import SAMPLED_FROM_ITEMS, NegativeSampler, uses_sampled_softmax
from model.vocab import FIRST_REAL


def test_negatives_hold_the_steps_targets_and_the_logq_correction():
    counts = np.array([0, 0, 6, 3, 1, 0, 0, 0, 0, 0], dtype=np.float64)  # items 2..9, popularity from targets
    sampler = NegativeSampler(counts, uniform=40, seed=0)
    targets = torch.tensor([2, 2, 3, 4])
    negatives = sampler(targets)
    items = negatives.items.tolist()
    assert items == sorted(set(items)) and {2, 3, 4} <= set(items) and min(items) >= FIRST_REAL and max(items) <= 9
    drawn = torch.cat([targets, torch.randint(FIRST_REAL, 10, (40,), generator=torch.Generator().manual_seed(0))])
    for item, log_weight in zip(items, negatives.log_weight.tolist()):
        expected = 4 * counts[item] / counts.sum() + 40 / 8
        assert log_weight == pytest.approx(np.log((drawn == item).sum().item() / expected), rel=1e-5)


def test_the_softmax_is_sampled_beyond_the_threshold_or_when_asked():
    assert not uses_sampled_softmax("auto", SAMPLED_FROM_ITEMS)
    assert uses_sampled_softmax("auto", SAMPLED_FROM_ITEMS + 1)
    assert uses_sampled_softmax("sampled", 100) and not uses_sampled_softmax("full", 10**6)
    with pytest.raises(ValueError, match="softmax='partial'; choose one of"):
        TrainConfig(softmax="partial")
