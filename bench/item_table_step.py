"""What one sampled-softmax training step costs, by catalogue size, with the item table updated
over every row (AdamW, clipping and the weight average over the whole table, as before) or row by
row (model.training.optimizer: the rows the step read). The step is `train`'s own: a default-size
model, a batch of TrainConfig.batch_size sequences of TrainConfig.chunk_len plays, sampled negatives,
Optimizer.step. Both ways run in one process, one after the other at each size.

    python bench/item_table_step.py [--sizes 2000,200000,1000000] [--variant V3] [--steps 9]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from model.config import IntentRecConfig, TrainConfig, variant_overrides
from model.intentrec import IntentRec
from model.serving.backends import example_rows
from model.training.negatives import NegativeSampler
from model.training.optimizer import Optimizer
from model.training.train import loss_of_batch
from model.vocab import FIRST_REAL


def random_batch(config: IntentRecConfig, train: TrainConfig, rng: np.random.Generator):
    """`loss_of_batch`'s (rows, loss_from, following) for random sequences of long-tailed items."""
    rows = example_rows(config, train.batch_size, train.chunk_len + 1, seed=0)
    rows["item"] = np.minimum(FIRST_REAL + rng.zipf(1.3, rows.shape) - 1, config.n_items - 1)
    return list(rows[:, :-1]), [0] * len(rows), list(rows[:, 1:])


def step_seconds(n_items: int, variant: str, sparse: bool, steps: int) -> list[float]:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    train = TrainConfig()
    config = IntentRecConfig(n_items=n_items, n_actions=6, n_kinds=5, n_release_buckets=7, n_devices=6, n_genres=10,
                             time_origin_ms=1_600_000_000_000, **variant_overrides(variant))  # fmt: skip
    model = IntentRec(config).train()
    batch = random_batch(config, train, rng)
    counts = np.bincount(np.concatenate([f["item"] for f in batch[2]]), minlength=n_items).astype(np.float64)
    sampler = NegativeSampler(counts, train.negatives, seed=0)
    optimizer = Optimizer(model, train, total_steps=steps + 1, sparse_items=sparse)
    seconds = []
    for _ in range(steps + 1):
        started = time.perf_counter()
        optimizer.step(loss_of_batch(model, batch, train.loss_weighting, sampler))
        seconds.append(time.perf_counter() - started)
    return seconds[1:]  # the first step allocates the optimizers' state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2000,200000,1000000")
    parser.add_argument("--variant", default="V3")
    parser.add_argument("--steps", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{args.variant}, {TrainConfig.batch_size} x {TrainConfig.chunk_len} plays a step, {TrainConfig.negatives} "
          "uniform negatives, one thread; median [min, max] of the steps\n")
    print("| items | every row ms | row by row ms | every row ÷ row by row |\n|---|---|---|---|")
    for size in (int(size) for size in args.sizes.split(",")):
        dense = step_seconds(size, args.variant, False, args.steps)
        sparse = step_seconds(size, args.variant, True, args.steps)
        cells = [f"{statistics.median(s) * 1e3:,.0f} [{min(s) * 1e3:,.0f}, {max(s) * 1e3:,.0f}]" for s in (dense, sparse)]
        print(f"| {size:,} | {cells[0]} | {cells[1]} | {statistics.median(dense) / statistics.median(sparse):.2f} |")


if __name__ == "__main__":
    main()
