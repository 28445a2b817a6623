"""The item layer's three ways of scoring the catalogue agree where they should: the sampled softmax
with every item drawn once is the full one, and ranks counted in blocks are those of the whole
distribution."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model import item_layer
from model.features import batch_tensors
from model.inputs import model_inputs
from model.item_layer import Negatives, Targets
from model.training.evaluate import target_ranks
from model.vocab import FIRST_REAL
from tests.model.test_intentrec import ARCHITECTURES, architecture, random_history, random_model, tiny_config


def encoded(model, history):
    x = model_inputs(batch_tensors([history], len(history)), model.config)
    following = np.roll(history["item"], -1).astype(np.int64)
    following[-1] = FIRST_REAL
    return x, torch.from_numpy(following).unsqueeze(0)


@pytest.mark.parametrize("variant", ["V0", "V3", "V3-paper"])
def test_a_sampled_softmax_that_draws_every_item_once_is_the_full_softmax(variant):
    model = random_model(tiny_config(**architecture(variant)))
    x, targets = encoded(model, random_history(12, seed=3))
    every_item = torch.arange(FIRST_REAL, model.config.n_items)
    with torch.no_grad():
        full = model(x, targets=Targets(targets)).item_probs
        sampled = model(x, targets=Targets(targets, Negatives(every_item, torch.zeros(len(every_item))))).item_probs
    torch.testing.assert_close(sampled, full)


@pytest.mark.parametrize("variant", ARCHITECTURES)
@pytest.mark.parametrize("targets_at_once", [3, None])
def test_ranks_counted_in_blocks_are_those_of_the_whole_distribution(variant, targets_at_once, monkeypatch):
    monkeypatch.setattr(item_layer, "ITEM_BLOCK", 7)  # several blocks, the last one short
    model = random_model(tiny_config(**architecture(variant)))
    if targets_at_once:  # the targets in chunks, the last one short
        monkeypatch.setattr(item_layer, "RANKS_LOGITS_BYTES", 4 * model.config.n_items * targets_at_once)
    history = random_history(16, seed=5)
    x, targets = encoded(model, history)
    targets[0, 3] = 1  # an unknown item: last, as target_ranks ranks it
    with torch.no_grad():
        out = model(x)
        rows, positions = torch.zeros(16, dtype=torch.int64), torch.arange(16)
        ranks = model.item_layer.ranks(out.item_state.at(rows, positions), model.features.item.weight,
                                       targets[0].unsqueeze(1))  # fmt: skip
    expected = target_ranks(out.item_probs[0].numpy(), targets[0].numpy())
    assert ranks.tolist() == expected.tolist() and ranks[3] == model.config.n_items + model.config.unknown_slots
