"""model.training.optimizer: the weight average (debiased EMA), kept lazily for a row-sparse item
table with the same result as over every row, and a sampled-softmax step that updates only the item
rows it read."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from model.config import TrainConfig, variant_overrides
from model.intentrec import IntentRec
from model.training.negatives import NegativeSampler
from model.training.optimizer import Optimizer, WeightAverage
from model.training.train import loss_of_batch
from tests.model.test_intentrec import random_history, tiny_config


class Weights(nn.Module):
    def __init__(self, rows: int = 1):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(rows, 2))
        self.other = nn.Parameter(torch.zeros(3))


def test_the_average_is_a_moving_average_that_is_not_pulled_to_the_first_steps():
    decay, steps = 0.9, [1.0, 2.0, 6.0]
    model = Weights()
    average = WeightAverage(model, decay)
    for value in steps:
        with torch.no_grad():
            model.other.fill_(value)
        average.update()
    weights = np.array([decay**2, decay, 1.0])
    expected = float((weights * np.array(steps)).sum() / weights.sum())
    assert average.averaged().other.tolist() == pytest.approx([expected] * 3, rel=1e-6)


def test_a_sparse_tables_rows_average_lazily_to_what_every_step_would_give():
    decay, rows, steps = 0.8, 6, 40
    generator = torch.Generator().manual_seed(0)
    model = Weights(rows)
    dense, lazy = WeightAverage(model, decay), WeightAverage(model, decay, sparse_table=model.table)
    for step in range(steps):
        touched = torch.randperm(rows, generator=generator)[: 1 + step % 3]  # some rows wait many steps
        if step == 0:
            touched = torch.arange(rows - 1)  # the last row's first read comes later
        lazy.catch_up(touched)
        with torch.no_grad():
            model.table[touched] += torch.randn(len(touched), 2, generator=generator)
            model.other += 1.0
        dense.update()
        lazy.update(touched)
        if step % 7 == 0:  # read mid-way: then go on
            torch.testing.assert_close(lazy.averaged().table, dense.averaged().table)
    torch.testing.assert_close(lazy.averaged().table, dense.averaged().table)
    torch.testing.assert_close(lazy.averaged().other, dense.averaged().other)


def sampled_step_model():
    torch.manual_seed(0)
    config = replace(tiny_config(**variant_overrides("V3")), n_items=400)
    model = IntentRec(config)
    rows = random_history(12, seed=7)
    following = np.zeros_like(rows)
    following[:-1] = rows[1:]
    counts = np.bincount(following["item"], minlength=config.n_items).astype(np.float64)
    return model, ([rows], [0], [following]), NegativeSampler(counts, uniform=16, seed=0)


def test_a_sampled_step_updates_the_item_rows_it_read_and_no_other():
    model, batch, sampler = sampled_step_model()
    optimizer = Optimizer(model, TrainConfig(), total_steps=10, sparse_items=True)
    before = model.features.item.weight.detach().clone()
    averaged_before = optimizer.average.averaged().features.item.weight.detach().clone()
    optimizer.step(loss_of_batch(model, batch, sampler=sampler))
    read = model.features.item.weight.grad.coalesce().indices()[0]
    changed = (model.features.item.weight != before).any(-1).nonzero()[:, 0]
    assert set(changed.tolist()) == set(read.tolist())
    assert set(batch[0][0]["item"].tolist()) < set(read.tolist()) and len(read) < 100  # its items, some negatives
    averaged_changed = (optimizer.average.averaged().features.item.weight != averaged_before).any(-1).nonzero()[:, 0]
    assert set(averaged_changed.tolist()) <= set(read.tolist())


def test_sparse_and_dense_steps_clip_and_move_the_other_weights_alike():
    """One step from the same weights, the item table row-sparse or not: the gradient norm they
    clip to is the same, so every other weight moves the same (Adam's first step is lr x sign)."""
    results = []
    for sparse in (False, True):
        model, batch, sampler = sampled_step_model()
        config = TrainConfig(ema_decay=0.0, weight_decay=0.0)
        optimizer = Optimizer(model, config, total_steps=10, sparse_items=sparse)
        optimizer.step(loss_of_batch(model, batch, sampler=sampler))
        results.append(model.state_dict())
    for name, dense_value in results[0].items():
        # The item table's rows differ by Adam's eps alone: SparseAdam adds it to sqrt(v) before the bias
        # correction, AdamW after (up to 1.2e-5 of a 2e-3 step, where a row's gradient is small).
        tolerance = {"atol": 1e-2 * config.lr, "rtol": 0.0} if name == "features.item.weight" else {}
        torch.testing.assert_close(results[1][name], dense_value, msg=name, **tolerance)


def test_the_sparse_steps_average_is_the_average_of_every_steps_weights():
    model, batch, sampler = sampled_step_model()
    config = TrainConfig()
    optimizer = Optimizer(model, config, total_steps=10, sparse_items=True)
    every_row = WeightAverage(model, config.ema_decay)
    for _ in range(5):  # the same batch, other negatives each step
        optimizer.step(loss_of_batch(model, batch, sampler=sampler))
        every_row.update()
    for name, expected in every_row.averaged().state_dict().items():
        torch.testing.assert_close(optimizer.average.averaged().state_dict()[name], expected, msg=name)
