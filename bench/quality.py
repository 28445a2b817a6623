"""Next-item quality of IntentRec's ablations V0-V3 beside the best peer we can run, RecBole's
SASRec, and the popularity and recency floors, all on the same split in one command.

    python bench/quality.py [--seeds 3] [--datasets synth,movielens] [--epochs 30] [--peer-seeds 1]

For each dataset: the floors once (they are deterministic), RecBole 1.2.1's SASRec (in a virtualenv
of its own, bench/peers/setup_recbole.sh; RecBole is not a dependency of the project) on exactly the
users, targets and tie order our models see (run_peer writes each user's
items in the order of model.playlogs.files.read_user_sequences), then every variant with every
seed, trained with `intentstream train`'s defaults unless told otherwise and judged by the
leave-one-out protocol of `intentstream evaluate` (test = each user's last interaction, the full
catalogue ranked; also over unseen items only). Writes bench/results/quality.md (mean ± std over
seeds, training wall time on this machine, each model against SASRec and V3 against the other
variants by a paired 95% bootstrap interval over test users) and quality.json (the same, with every
model's per-user test ranks).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import platform
import shlex
import subprocess
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
from model.training.evaluate import judge, leave_one_out, ndcg_per_case, paired_bootstrap, ranking_metrics  # noqa: E402
from model.playlogs.files import read_user_sequences, write_log  # noqa: E402
from model.playlogs.movielens import read_movielens  # noqa: E402
from model.serving.scorer import Scorer  # noqa: E402
from model.playlogs.synth import generate_world  # noqa: E402
from model.training.train import load_rows, train_model  # noqa: E402
from model.training.validation import held_out  # noqa: E402

METRICS = ("NDCG@10", "HR@10", "MRR@10")
UNSEEN_METRICS = ("NDCG@10", "HR@10")
MOVIELENS = ROOT.parent / "shared" / "data" / "ml-100k"
PEER = "SASRec (RecBole)"
PEER_PYTHON = ROOT / "bench" / ".venv-recbole" / "bin" / "python"
FLOORS = ("popularity", "recency")


def make_log(dataset: str, directory: Path, synth_users: int, synth_titles: int) -> Path:
    path = directory / f"{dataset}.msgpack"
    if dataset == "synth":
        events = generate_world(seed=0, n_users=synth_users, n_titles=synth_titles)
    else:
        events = read_movielens(MOVIELENS)
    write_log(path, events)
    return path


def judge_test(ranker, rows_by_user: dict, vocab) -> dict:
    """Test metrics overall (and over unseen items only), and each test user's rank of the target
    for the paired comparisons."""
    cases = leave_one_out(rows_by_user, vocab)
    judgments = judge(ranker, cases)
    overall = judgments.summary()["overall"]
    users = [case.user for case in cases]
    unseen = zip(users, np.concatenate(judgments.ranks_unseen).tolist(), np.concatenate(judgments.target_seen))
    return {
        **{m: overall[m] for m in METRICS},
        "unseen": {m: overall["unseen"][m] for m in UNSEEN_METRICS},
        "ranks": dict(zip(users, np.concatenate(judgments.ranks).tolist())),
        # Only targets the user had not played: the unseen protocol judges nothing else.
        "ranks_unseen": {user: rank for user, rank, seen in unseen if not seen},
    }


def run_peer(log: Path, seeds: int, workdir: Path, minutes: float | None, recorded: Path | None) -> list[dict]:
    """RecBole's SASRec on the log's users, each user's items in our order; one run per seed, each
    trained for at most about `minutes` (None: until RecBole's early stopping). A run takes hours on
    this machine, so its result is kept in `recorded` (a folder) under the SHA-256 of exactly the
    sequences it was given and its settings, and reused when the same split asks for it again."""
    sequences = workdir / f"{log.stem}-sequences.jsonl"
    new_targets = set()  # users whose test target is not in their history
    with sequences.open("w") as out:
        for user, events in read_user_sequences(log).items():
            items = [e.item_id for e in events]
            out.write(json.dumps({"user": user, "items": items}) + "\n")
            if items[-1] not in items[:-1]:
                new_targets.add(user)
    digest = hashlib.sha256(sequences.read_bytes()).hexdigest()[:16]
    name = f"sasrec-{log.stem}-{digest}-seeds{seeds}-" + (f"{minutes:g}min" if minutes else "converged") + ".json"
    result = (recorded or workdir) / name
    if result.exists():
        tqdm.write(f"{PEER}: reusing {result.relative_to(ROOT) if result.is_relative_to(ROOT) else result} "
                   "(the same sequences and settings)")
    else:
        subprocess.run(["bash", str(ROOT / "bench" / "peers" / "setup_recbole.sh")], check=True)
        result.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [str(PEER_PYTHON), str(ROOT / "bench" / "peers" / "sasrec.py"), "--sequences", str(sequences),
             "--out", str(result), "--seeds", str(seeds), "--workdir", str(workdir / f"{log.stem}-recbole"),
             *(["--time-budget-min", str(minutes)] if minutes else [])],
            check=True,
        )
    runs = []
    for seed_run in json.loads(result.read_text())["seeds"]:
        ranks = seed_run["ranks"]
        ranks_unseen = {user: rank for user, rank in seed_run["ranks_unseen"].items() if user in new_targets}
        unseen = ranks_summary(list(ranks_unseen.values()))
        runs.append({
            "seed": seed_run["seed"], **ranks_summary(list(ranks.values())),
            "unseen": {m: unseen[m] for m in UNSEEN_METRICS},
            "ranks": ranks, "ranks_unseen": ranks_unseen,
            "train_wall_s": seed_run["wall_s"], "epochs": seed_run["epochs"],
        })
    return runs


def ranks_summary(ranks: list[int]) -> dict:
    metrics = ranking_metrics(np.array(ranks))
    return {m: metrics[m] for m in METRICS}


def floor_baselines(log: Path) -> dict[str, dict]:
    rows_by_user, vocab = load_rows(log)
    share = TrainConfig.validation_share
    training_histories = [rows[: held_out(len(rows), share).validation_from] for rows in rows_by_user.values()]
    popularity = Popularity(training_histories, len(vocab.items))
    recency = Recency(popularity)
    return {
        "popularity": judge_test(popularity, rows_by_user, vocab),
        "recency": judge_test(recency, rows_by_user, vocab),
    }


def train_and_judge(
    log: Path, variant: str, seed: int, train_config: TrainConfig, model_overrides: dict, workdir: Path
) -> dict:
    """`variant`: V0-V3, with -paper for the paper's own item layer (no repeat pointer, no IntentMatch:
    IntentRecConfig.repeat_and_match off), -positions for the repeat pointer over positions rather than
    titles (pointer_over_titles off), and -full or -sampled for the training's softmax
    (TrainConfig.softmax; without either, the size of the catalogue picks)."""
    model_dir = workdir / f"{log.stem}-{variant}-{seed}"
    ablation, *suffixes = variant.split("-")
    if "paper" in suffixes:
        model_overrides = {**model_overrides, "repeat_and_match": False}
    if "positions" in suffixes:
        model_overrides = {**model_overrides, "pointer_over_titles": False}
    for softmax in {"full", "sampled"} & set(suffixes):
        train_config = replace(train_config, softmax=softmax)
    result = train_model(
        log, model_dir, variant=ablation, train_config=replace(train_config, seed=seed),
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


def paired_interval(runs: list[dict], reference_runs: list[dict], ranks: str = "ranks") -> tuple[float, float, float]:
    """NDCG@10 of `runs` minus the reference's, on the test users both judged, each user's NDCG
    averaged over seeds first, with a 95% bootstrap interval over those users. Both face the same
    users, so this sees a gain that is steady from user to user even where the seed spread is wider."""
    users = sorted(set(runs[0][ranks]) & set(reference_runs[0][ranks]))

    def per_user(model_runs):
        return np.mean([ndcg_per_case(np.array([run[ranks][u] for u in users])) for run in model_runs], axis=0)

    difference, low, high = paired_bootstrap(per_user(runs) - per_user(reference_runs), resamples=2000)
    return float(difference), float(low), float(high)


def comparisons(rows: dict) -> list[str]:
    """Every model against the peer (ratio and paired interval, all items and unseen only), and V3
    against every other variant."""
    def as_runs(name):
        return [rows[name]] if name in FLOORS else rows[name]

    def mean(name, metric="NDCG@10", unseen=False):
        return float(np.mean([(r["unseen"] if unseen else r)[metric] for r in as_runs(name)]))

    lines = []
    models = [name for name in rows if name not in FLOORS and name != PEER]
    if PEER in rows:
        for name in models:
            _, low, high = paired_interval(rows[name], rows[PEER])
            _, low_u, high_u = paired_interval(rows[name], rows[PEER], "ranks_unseen")
            lines.append(
                f"- {name} / {PEER}: NDCG@10 {mean(name) / mean(PEER):.2f}× (paired {name} − SASRec "
                f"[{low:+.4f}, {high:+.4f}]); unseen only {mean(name, unseen=True) / mean(PEER, unseen=True):.2f}× "
                f"([{low_u:+.4f}, {high_u:+.4f}])"
            )
    pairs = [("V3", name) for name in [*models, *FLOORS] if name != "V3"]
    pairs += [(f"{variant}-paper", "V0-paper") for variant in VARIANTS[1:]]  # the hierarchy without our additions
    pairs += [(variant, f"{variant}-paper") for variant in VARIANTS]  # our item layer against the paper's
    pairs += [(variant, f"{variant}-positions") for variant in VARIANTS]  # the pointer over titles against positions'
    pairs += [(f"{variant}-sampled", other) for variant in VARIANTS for other in (variant, f"{variant}-full")]
    for name, reference in dict.fromkeys(pairs):  # each pair once, in order
        if name in rows and reference in rows:
            difference, low, high = paired_interval(as_runs(name), as_runs(reference))
            lines.append(f"- {name} − {reference}: {difference:+.4f} NDCG@10, paired 95% interval "
                         f"[{low:+.4f}, {high:+.4f}]")
    return lines


def markdown(results: dict, command: str, seeds: int, jobs: int) -> str:
    lines = [
        "# Next-item quality: IntentRec ablations beside RecBole's SASRec and the floors",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}, "
        f"2 shared CPU cores; {time.strftime('%Y-%m-%d')}  ",
        f"Protocol: leave-one-out (test = each user's last interaction), full-catalogue ranking (and, in "
        f"the unseen columns, the user's earlier items left out), one tie order for every model; mean ± "
        f"sample std over seeds ({seeds} for our variants; the floors are deterministic). {jobs} model(s) "
        f"trained at once, one process each: their wall times include each other's contention.",
        "",
    ]
    for dataset, rows in results.items():
        header = [*METRICS, *[f"{m} unseen" for m in UNSEEN_METRICS], "train wall s", "epochs"]
        lines += [f"## {dataset}", "", "| model | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
        for name, runs in rows.items():
            if name in FLOORS:
                cells = [f"{runs[m]:.4f}" for m in METRICS] + [f"{runs['unseen'][m]:.4f}" for m in UNSEEN_METRICS]
                cells += ["-", "-"]
            else:
                cells = [mean_std([r[m] for r in runs]) for m in METRICS]
                cells += [mean_std([r["unseen"][m] for r in runs]) for m in UNSEEN_METRICS]
                cells += [mean_std([r["train_wall_s"] for r in runs], digits=0),
                          "/".join(str(r["epochs"]) for r in runs)]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", *comparisons(rows), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--datasets", default="synth,movielens")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="V0-V3; -paper for the paper's item layer (no pointer, no IntentMatch), -positions for "
                             "the pointer over positions, "
                             "-full or -sampled for the training's softmax (V3-sampled, V0-paper-full)")
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--patience", type=int, default=TrainConfig.patience)
    parser.add_argument("--peer-seeds", type=int, default=1,
                        help="seeds of RecBole's SASRec (0: leave the peer out)")
    parser.add_argument("--peer-minutes", type=float, default=None,
                        help="most training minutes per SASRec seed (on one shared core an epoch took 2.5-3 "
                             "minutes, and 37 epochs had not reached early stopping); default: no limit")
    parser.add_argument("--peer-results", type=Path, default=ROOT / "bench" / "results" / "peers",
                        help="where SASRec's results are kept by the digest of the split and reused (default: "
                             "bench/results/peers)")
    parser.add_argument("--synth-users", type=int, default=1000, help="users in the synthetic world")
    parser.add_argument("--synth-titles", type=int, default=800, help="titles in the synthetic world")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="intra-op threads; one is fastest on a shared 2-core machine")
    parser.add_argument("--jobs", type=int, default=1,
                        help="models trained at once, each in its own process (2 on this 2-core machine)")
    parser.add_argument("--model-overrides", type=json.loads, default={}, metavar="JSON",
                        help='IntentRecConfig fields for every variant, e.g. \'{"d_model": 32}\' (capacity probes)')
    parser.add_argument("--train-overrides", type=json.loads, default={}, metavar="JSON",
                        help='TrainConfig fields, e.g. \'{"batch_size": 64}\'')
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "quality.md")
    args = parser.parse_args()
    command = "python bench/quality.py " + shlex.join(sys.argv[1:])
    variants = args.variants.split(",")
    torch.set_num_threads(args.torch_threads)

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        jobs = [(d, v, s) for d in args.datasets.split(",") for s in range(args.seeds) for v in variants]
        logs = {d: make_log(d, workdir, args.synth_users, args.synth_titles) for d in args.datasets.split(",")}
        for dataset, log in logs.items():
            results[dataset] = floor_baselines(log)
            if args.peer_seeds:
                results[dataset][PEER] = run_peer(log, args.peer_seeds, workdir, args.peer_minutes, args.peer_results)
        train_config = replace(TrainConfig(), **{"epochs": args.epochs, "patience": args.patience, **args.train_overrides})
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
