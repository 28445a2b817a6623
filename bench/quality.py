"""Next-item quality of IntentRec's ablations V0-V3 beside the popularity and recency floors.

    python bench/quality.py [--seeds 3] [--datasets synth,movielens] [--epochs 30]

For each dataset: the floor baselines once (they are deterministic), then every variant with every
seed, each trained on the same split and judged by the same leave-one-out protocol as
`intentstream evaluate` (test = each user's last interaction, full-catalogue ranking). Writes
bench/results/quality.md (mean ± std over seeds, training wall time on this machine, and V3 against
each other model: by the seed spread and by a paired interval over test users) and quality.json
(the same, with every model's per-user test ranks).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import replace
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.training.baselines import Popularity, Recency  # noqa: E402
from model.config import VARIANTS, TrainConfig  # noqa: E402
from model.training.evaluate import judge, leave_one_out, ndcg_per_case, paired_bootstrap  # noqa: E402
from model.playlogs.files import write_log  # noqa: E402
from model.playlogs.movielens import read_movielens  # noqa: E402
from model.serving.scorer import Scorer  # noqa: E402
from model.playlogs.synth import generate_world  # noqa: E402
from model.training.train import load_rows, train_model  # noqa: E402

METRICS = ("NDCG@10", "HR@10", "MRR@10")
MOVIELENS = ROOT.parent / "shared" / "data" / "ml-100k"


def make_log(dataset: str, directory: Path, synth_users: int) -> Path:
    path = directory / f"{dataset}.msgpack"
    events = generate_world(seed=0, n_users=synth_users) if dataset == "synth" else read_movielens(MOVIELENS)
    write_log(path, events)
    return path


def judge_test(ranker, rows_by_user: dict, vocab) -> dict:
    """Test metrics overall, and the target's rank per test user (in the log's user order, the same
    for every model of a dataset) for the paired comparison."""
    judgments = judge(ranker, leave_one_out(rows_by_user, vocab, holdout=1))
    return {**judgments.summary()["overall"], "ranks": np.concatenate(judgments.ranks).tolist()}


def floor_baselines(log: Path) -> dict[str, dict]:
    rows_by_user, vocab = load_rows(log)
    training_histories = [rows[:-2] for rows in rows_by_user.values()]
    popularity = Popularity(training_histories, len(vocab.items))
    recency = Recency(popularity)
    return {
        "popularity": judge_test(popularity, rows_by_user, vocab),
        "recency": judge_test(recency, rows_by_user, vocab),
    }


def train_and_judge(
    log: Path, variant: str, seed: int, train_config: TrainConfig, model_overrides: dict, workdir: Path
) -> dict:
    model_dir = workdir / f"{log.stem}-{variant}-{seed}"
    result = train_model(
        log, model_dir, variant=variant, train_config=replace(train_config, seed=seed),
        model_overrides=model_overrides, progress=False,
    )
    scorer = Scorer.load(model_dir)
    rows_by_user, _ = load_rows(log, vocab=scorer.vocab)
    test = judge_test(scorer, rows_by_user, scorer.vocab)
    return {**test, "train_wall_s": result.wall_s, "epochs": result.epochs, "best_epoch": result.best_epoch}


def mean_std(values, digits: int = 4) -> str:
    values = np.asarray(values, dtype=float)
    spread = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():.{digits}f} ± {spread:.{digits}f}"


def paired_interval(v3_runs: list[dict], other_runs: list[dict]) -> tuple[float, float]:
    """95% bootstrap interval over test users of V3's NDCG@10 minus another model's, each user's
    NDCG averaged over seeds first. Both models face the same users, so this sees a gain that is
    steady from user to user even where the seed spread is wider than the gain."""
    def per_user(runs):
        return np.mean([ndcg_per_case(np.array(run["ranks"])) for run in runs], axis=0)

    _, low, high = paired_bootstrap(per_user(v3_runs) - per_user(other_runs), resamples=2000)
    return float(low), float(high)


def v3_against_the_rest(rows: dict) -> list[str]:
    """Issue 2's criterion: V3 beats every other model on NDCG@10 by more than the spread across
    seeds (the larger sample std of the two); with the paired interval over users beside it."""
    if "V3" not in rows:
        return []
    v3 = np.array([r["NDCG@10"] for r in rows["V3"]])
    lines = []
    for name, runs in rows.items():
        if name == "V3":
            continue
        baseline = name in ("popularity", "recency")
        other = np.array([runs["NDCG@10"]] if baseline else [r["NDCG@10"] for r in runs])
        gain = v3.mean() - other.mean()
        if len(v3) < 2 or (not baseline and len(other) < 2):
            lines.append(f"- V3 − {name}: {gain:+.4f} NDCG@10 (one seed so far: no spread yet)")
            continue
        spread = max(v3.std(ddof=1), other.std(ddof=1) if not baseline else 0.0)
        low, high = paired_interval(rows["V3"], [runs] if baseline else runs)
        lines.append(f"- V3 − {name}: {gain:+.4f} NDCG@10, spread {spread:.4f}: "
                     + ("beats it by more than the spread" if gain > spread else "NOT by more than the spread")
                     + f"; paired over users, 95% interval [{low:+.4f}, {high:+.4f}]")
    return lines


def markdown(results: dict, command: str, seeds: int, jobs: int) -> str:
    lines = [
        "# Next-item quality: IntentRec ablations vs floor baselines",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}, "
        f"2 shared CPU cores; {time.strftime('%Y-%m-%d')}  ",
        f"Protocol: leave-one-out (test = each user's last interaction), full-catalogue ranking, "
        f"mean ± sample std over {seeds} seeds (baselines are deterministic). {jobs} model(s) trained at "
        f"once, one process each: their wall times include each other's contention.",
        "",
    ]
    for dataset, rows in results.items():
        lines += [f"## {dataset}", "", "| model | " + " | ".join(METRICS) + " | train wall s | epochs |",
                  "|---" * (len(METRICS) + 3) + "|"]
        for name, runs in rows.items():
            if name in ("popularity", "recency"):
                cells = [f"{runs[m]:.4f}" for m in METRICS] + ["-", "-"]
            else:
                cells = [mean_std([r[m] for r in runs]) for m in METRICS]
                cells += [mean_std([r["train_wall_s"] for r in runs], digits=0),
                          "/".join(str(r["epochs"]) for r in runs)]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", *v3_against_the_rest(rows), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--datasets", default="synth,movielens")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--synth-users", type=int, default=1000, help="users in the synthetic world")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="intra-op threads; one is fastest on a shared 2-core machine")
    parser.add_argument("--jobs", type=int, default=1,
                        help="models trained at once, each in its own process (2 on this 2-core machine)")
    parser.add_argument("--model-overrides", type=json.loads, default={}, metavar="JSON",
                        help='IntentRecConfig fields for every variant, e.g. \'{"d_model": 32}\' (capacity probes)')
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "quality.md")
    args = parser.parse_args()
    command = "python bench/quality.py " + shlex.join(sys.argv[1:])
    variants = args.variants.split(",")
    torch.set_num_threads(args.torch_threads)

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        jobs = [(d, v, s) for d in args.datasets.split(",") for s in range(args.seeds) for v in variants]
        logs = {d: make_log(d, workdir, args.synth_users) for d in args.datasets.split(",")}
        for dataset, log in logs.items():
            results[dataset] = floor_baselines(log)
        train_config = TrainConfig(epochs=args.epochs, patience=args.patience)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, context, initializer=torch.set_num_threads, initargs=(args.torch_threads,)) as pool:
            futures = {
                pool.submit(train_and_judge, logs[dataset], variant, seed, train_config, args.model_overrides, workdir): (dataset, variant, seed)
                for dataset, variant, seed in jobs
            }
            for future in tqdm(as_completed(futures), total=len(futures), desc="quality", unit="model"):
                dataset, variant, seed = futures[future]
                run = {"seed": seed, **future.result()}
                results[dataset].setdefault(variant, []).append(run)
                results[dataset][variant].sort(key=lambda r: r["seed"])
                tqdm.write(f"{dataset} {variant} seed {seed}: NDCG@10 {run['NDCG@10']:.4f} ({run['train_wall_s']:.0f}s)")
                # Rewrite after every model so a long run leaves a usable partial table.
                args.out.write_text(markdown(results, command, args.seeds, args.jobs))
                args.out.with_suffix(".json").write_text(json.dumps(results))  # compact: it holds per-user ranks
    print(markdown(results, command, args.seeds, args.jobs))


if __name__ == "__main__":
    main()
