"""Two (or more) models' serving scorers on the same stream's events, alternated in one process: the
seconds in predict_users (bench/scorer_alone.py) per round, and each model's median against the
first's. For a model change that only the checkpoint tells apart (an old checkpoint loads with the
options it was trained with).

    python bench/scorer_ab.py --model A --model B --log world.msgpack [--events 20000] [--rounds 3]
"""
from __future__ import annotations

import argparse
import itertools
import shlex
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.playlogs.files import read_log  # noqa: E402
from bench.scorer_alone import predict_seconds, score_requests  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, action="append", required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--backend", default="eager")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    events = list(itertools.islice(read_log(args.log), args.events))
    seconds = {model: [] for model in args.model}
    for _ in range(args.rounds):
        for model in args.model:  # a fresh scorer (and cache) each round
            scorer, requests = score_requests(model, events, args.batch_size, args.backend)
            seconds[model].append(predict_seconds(scorer, requests, args.batch_size))
    first = statistics.median(seconds[args.model[0]])
    print(f"Command: `python bench/scorer_ab.py {shlex.join(sys.argv[1:])}`  ")
    print(f"{len(events):,} events, batch {args.batch_size}, backend {args.backend}, one thread\n")
    print("| model | seconds per round | events/s (median) | ÷ first |\n|---|---|---|---|")
    for model, values in seconds.items():
        median = statistics.median(values)
        print(f"| {model} | {' / '.join(f'{v:.2f}' for v in values)} | {len(events) / median:,.0f} | "
              f"{first / median:.2f} |")


if __name__ == "__main__":
    main()
