"""Negatives for a sampled softmax: what stands for the catalogue in a training step on a catalogue
too large to score whole (model.item_layer.ItemLayer.sampled_log_softmax).

Each step draws the step's own targets (in-batch negatives: popular items, as often as they are
targets) and `uniform` items uniformly from the catalogue (so that the long tail, never a target in
most batches, is pushed down too), as in the mixed negative sampling of Yang et al. (2020). Each
distinct item then counts with the log of its draws over its expected draws — the logQ correction of
Yi et al. (2019) —, so that the sum over the sample estimates the sum over the whole catalogue. The
loss of a step costs the step's targets plus `uniform`, whatever the catalogue's size, and so do
the optimizer's and the weight average's updates of the item table (model.training.optimizer: only
the rows the step read).
"""
from __future__ import annotations

import numpy as np
import torch

from model.item_layer import Negatives
from model.vocab import FIRST_REAL

# Catalogues of more real items than this train with sampled negatives (TrainConfig.softmax "auto"):
# at 2,000 titles a full epoch costs what a sampled one does, at 20,000 3.6x (V0) to 6.4x (V3), with
# NDCG@10 within the paired interval (bench/results/catalogue.md, quality-sampled-20k.md).
SAMPLED_FROM_ITEMS = 10_000


class NegativeSampler:
    def __init__(self, target_counts: np.ndarray, uniform: int, seed: int):
        """`target_counts` (n_items,): how often each item is a training target (the in-batch
        negatives' distribution)."""
        self.n_items = len(target_counts)
        self.popularity = torch.from_numpy(target_counts / max(target_counts.sum(), 1)).float()
        self.uniform = uniform
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, targets: torch.Tensor) -> Negatives:
        """The negatives of a step whose targets are `targets` (1-D, real items only)."""
        uniform = torch.randint(FIRST_REAL, self.n_items, (self.uniform,), generator=self.generator)
        items, draws = torch.unique(torch.cat([targets, uniform]), return_counts=True)
        expected = len(targets) * self.popularity[items] + self.uniform / (self.n_items - FIRST_REAL)
        return Negatives(items, draws.float().log() - expected.log())


def uses_sampled_softmax(softmax: str, n_items: int) -> bool:
    """TrainConfig.softmax: "full", "sampled", or "auto" (sampled beyond SAMPLED_FROM_ITEMS items)."""
    return softmax == "sampled" or (softmax == "auto" and n_items > SAMPLED_FROM_ITEMS)
