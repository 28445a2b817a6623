"""What one training step costs the item table alone, by catalogue size: the embedding's gradient
(dense: a zeroed table-sized tensor), AdamW's update and the weight average's (AveragedModel), each
over every row although a step of sampled softmax touches a few thousand. This is the part of
sampled training that still grows with the catalogue (bench/results/catalogue.md).

    python bench/item_table_step.py [--sizes 2000,200000,1000000] [--dim 64] [--rows 4096]
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.optim.swa_utils import AveragedModel


def step_parts(n_items: int, dim: int, rows: int, repeats: int = 9) -> dict[str, float]:
    """Median milliseconds of each part of a step that touches `rows` random rows of the table."""
    table = torch.nn.Embedding(n_items, dim)
    optimizer = torch.optim.AdamW(table.parameters(), lr=1e-3, weight_decay=0.01)
    average = AveragedModel(table)
    touched = torch.randint(0, n_items, (rows,))
    parts: dict[str, list[float]] = {"gradient": [], "AdamW": [], "average": []}
    for _ in range(repeats):
        started = time.perf_counter()
        optimizer.zero_grad()
        table(touched).sum().backward()
        stepped = time.perf_counter()
        optimizer.step()
        averaged = time.perf_counter()
        average.update_parameters(table)
        done = time.perf_counter()
        for name, seconds in zip(parts, (stepped - started, averaged - stepped, done - averaged)):
            parts[name].append(seconds * 1e3)
    return {name: sorted(values)[len(values) // 2] for name, values in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2000,200000,1000000")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--rows", type=int, default=4096, help="rows a step touches (targets and negatives)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| items | gradient ms | AdamW ms | average ms | total ms |\n|---|---|---|---|---|")
    for size in (int(size) for size in args.sizes.split(",")):
        parts = step_parts(size, args.dim, args.rows)
        print(f"| {size:,} | " + " | ".join(f"{ms:,.1f}" for ms in parts.values()) + f" | {sum(parts.values()):,.1f} |")


if __name__ == "__main__":
    main()
