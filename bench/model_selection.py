"""Model selection on a log of few users with long histories: which epoch training keeps, and what
that model then scores, with the validation of today's defaults beside one target per user.

    python bench/model_selection.py [--users 80 --days 1500 --titles 5000] [--seeds 3 --first-seed 0] [--variant V0] [--jobs 2]

The synthetic world of `--users` users over `--days` days (some 2,000 plays each: a household, a
B2B account, a pilot), moved back by whole weeks to end a day before now (the replay dead-letters
plays from the future), split in time at the `--cut` quantile: every model trains on the events
before it (`intentstream train --until`) and `intentstream backtest` replays the whole log and judges
every update after it, beside its floors (popularity, recency, and raw-id recency: the user's past
titles by last play, whatever the vocabulary). Two ways to choose the epoch, each with every seed:

- "defaults": the last 5% of each user's training events (at least one) are the validation targets,
  then the model is trained again that many epochs on every event (TrainConfig.validation_share,
  refit);
- "one target": as before issue 25, each user's second-to-last event is the only validation target
  and the selection run's weights are kept (validation_share tiny, refit off).

Reports each run's chosen epoch and validation targets, the judged NDCG@10/HR@10 overall and by the
judged event's action, and the paired difference of the two ways over users (95% bootstrap interval).
Writes bench/results/model-selection.md (and .json).
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
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.config import DAY_MS, TrainConfig  # noqa: E402
from model.playlogs.files import read_log, write_log  # noqa: E402
from model.playlogs.synth import generate_world_and_catalogue, moved_to_end_before  # noqa: E402
from model.serving.scorer import Scorer  # noqa: E402
from model.training.evaluate import ndcg_per_case, paired_bootstrap  # noqa: E402
from model.training.train import train_model  # noqa: E402
from stream.backtest.replay import run_backtest  # noqa: E402
from stream.backtest.report import report_data  # noqa: E402
from stream.backtest.sources import LogReplay  # noqa: E402

K = 10
SELECTIONS = {
    "defaults": {},
    "one target": {"validation_share": 1e-9, "refit": False},
}


def train_one(log: Path, out: Path, variant: str, cut: int, selection: str, seed: int) -> dict:
    import torch

    torch.set_num_threads(1)
    config = TrainConfig(seed=seed, **SELECTIONS[selection])
    result = train_model(log, out, variant=variant, until_ts=cut, train_config=config, progress=False)
    return {"selection": selection, "seed": seed, "model": str(out), "best_epoch": result.best_epoch,
            "epochs": result.epochs, "validation_targets": result.validation_targets, "train_s": result.wall_s}


def per_user_ndcg(log, users: list[str]) -> np.ndarray:
    by_user: dict[str, list[float]] = {}
    for user, value in zip(log.user_id, ndcg_per_case(np.array(log.rank), K)):
        by_user.setdefault(user, []).append(value)
    return np.array([np.mean(by_user.get(user, [0.0])) for user in users]), np.array([len(by_user.get(u, [])) for u in users])


def markdown(result: dict, command: str) -> str:
    systems = result["systems"]
    actions = sorted({a for s in systems.values() for a in s.get("by_action", {})})
    lines = [
        "# Model selection on few users with long histories",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}, 2 shared CPU "
        f"cores; {time.strftime('%Y-%m-%d')}  ",
        f"World: {result['users']} users, {result['events']:,} events ({result['events'] / result['users']:,.0f} each), "
        f"cut at the {result['cut_quantile']:.0%} quantile of time; {result['judged']:,} updates judged after it.",
        "",
        "| selection | seed | chosen epoch / run | validation targets | train s |",
        "|---|---|---|---|---|",
        *[f"| {r['selection']} | {r['seed']} | {r['best_epoch']}/{r['epochs']} | {r['validation_targets']:,} | "
          f"{r['train_s']:.0f} |" for r in result["runs"]],
        "",
        f"| system | NDCG@{K} | HR@{K} | " + " | ".join(f"{a} NDCG@{K}" for a in actions) + " |",
        "|---" * (3 + len(actions)) + "|",
    ]
    for name, system in systems.items():
        overall = system["overall"]
        cells = [f"{system['by_action'].get(a, {}).get(f'NDCG@{K}', float('nan')):.3f}" for a in actions]
        lines.append(f"| {name} | {overall[f'NDCG@{K}']:.4f} | {overall[f'HR@{K}']:.4f} | " + " | ".join(cells) + " |")
    lines += ["", *[f"- {line}" for line in result["comparisons"]], ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=80)
    parser.add_argument("--days", type=int, default=1500)
    parser.add_argument("--titles", type=int, default=5000)
    parser.add_argument("--cut", type=float, default=0.9, help="quantile of event time: train before, judge after")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--variant", default="V0")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "model-selection.md")
    args = parser.parse_args()
    command = "python bench/model_selection.py " + shlex.join(sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        log = work / "long.msgpack"
        world = generate_world_and_catalogue(seed=0, n_users=args.users, n_titles=args.titles, days=args.days)
        write_log(log, moved_to_end_before(int(time.time() * 1000) - DAY_MS, *world)[1])
        times = np.array([event.ts for event in read_log(log)])
        cut = int(np.quantile(times, args.cut))
        seeds = range(args.first_seed, args.first_seed + args.seeds)
        jobs = [(selection, seed) for seed in seeds for selection in SELECTIONS]
        with ProcessPoolExecutor(args.jobs, multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(train_one, log, work / f"{selection.replace(' ', '-')}-{seed}", args.variant, cut,
                                   selection, seed) for selection, seed in jobs]  # fmt: skip
            runs = [future.result() for future in futures]
        models = {f"{r['selection']} {r['seed']}": (Path(r["model"]), Scorer.load(r["model"])) for r in runs}
        backtest = run_backtest(LogReplay(log), models, score_from=cut, top_k=K)
        data = report_data(backtest)
        logs = {system.log.system: system.log for system in backtest.systems}
        for system in backtest.systems[: len(models)]:
            if not len(system.log):
                sys.exit(f"{system.log.system} judged nothing (dead letters: {system.replay.dead_letters})")
        users = sorted(set(logs[next(iter(models))].user_id))
        comparisons = []
        for seed in seeds:
            new, counts = per_user_ndcg(logs[f"defaults {seed}"], users)
            old, _ = per_user_ndcg(logs[f"one target {seed}"], users)
            difference, low, high = paired_bootstrap(new - old, counts)
            comparisons.append(f"seed {seed}: defaults − one target {difference:+.4f} NDCG@{K}, paired 95% interval "
                               f"[{low:+.4f}, {high:+.4f}] over {len(users)} users")  # fmt: skip
        for floor in ("recency", "raw-id recency"):
            new = np.mean([per_user_ndcg(logs[f"defaults {seed}"], users)[0] for seed in seeds], axis=0)
            rule, counts = per_user_ndcg(logs[floor], users)
            difference, low, high = paired_bootstrap(new - rule, counts)
            comparisons.append(f"defaults (mean of seeds) − {floor}: {difference:+.4f} NDCG@{K} [{low:+.4f}, {high:+.4f}]")
        result = {"users": args.users, "events": len(times), "cut_quantile": args.cut, "runs": runs,
                  "judged": len(logs[next(iter(models))]), "systems": data["systems"], "comparisons": comparisons}
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    args.out.write_text(markdown(result, command))
    print(markdown(result, command))


if __name__ == "__main__":
    main()
