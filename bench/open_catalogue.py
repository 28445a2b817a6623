"""Titles the model was not trained on: a time split, judged by the backtest, with the open
catalogue's two parts switched on one after the other, in one run.

    python bench/open_catalogue.py [--datasets synth,movielens] [--cut 0.7] [--epochs 8]

For each dataset: the model (V3 with the small architecture of `train --small`, stream.settings.
SMALL_MODEL, to train in a minute) is trained on the events before the cut (the `--cut` quantile of
event time), so titles first played after it are not in its vocabulary, as between two scheduled
retrainings. `intentstream backtest` then replays the whole log and judges every update after the
cut, three times on the same weights:

- "open" (the default): the users' unknown-title slots (`unknown_slots` 50: the repeat pointer
  continues and returns to a user's own new titles, a new one taking the slot of the one played
  least recently) and the new-title columns (`new_title_columns` 256: every title first seen in the
  stream that 3 users have played is ranked for everyone from then, scored from its kind, genres and
  release date; model.serving.new_titles);
- "slots only": no new-title columns (`run --new-titles 0`);
- "closed": neither; every unknown title is "unknown" and ranks last.

The recency floor of the same report keeps the slots too. Reported: HR@10 and NDCG@10 of the judged
events, split by whether their title was in the training data and by their action; the recency
floor beside. Writes bench/results/open-catalogue.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from model.config import TrainConfig  # noqa: E402
from model.playlogs.files import read_log, write_log  # noqa: E402
from model.playlogs.movielens import read_movielens  # noqa: E402
from model.playlogs.synth import generate_world  # noqa: E402
from model.serving.scorer import Scorer  # noqa: E402
from model.training.train import train_model  # noqa: E402
from stream.backtest.replay import run_backtest  # noqa: E402
from stream.backtest.report import report_data  # noqa: E402
from stream.backtest.sources import LogReplay  # noqa: E402
from stream.settings import SMALL_MODEL  # noqa: E402

MOVIELENS = ROOT.parent / "shared" / "data" / "ml-100k"
K = 10


def dataset_log(name: str, work: Path, users: int, titles: int, days: int) -> Path:
    log = work / f"{name}.msgpack"
    events = generate_world(seed=0, n_users=users, n_titles=titles, days=days) if name == "synth" else read_movielens(MOVIELENS)
    write_log(log, events)
    return log


def closed_catalogue(model_dir: Path, out: Path) -> Path:
    """The same checkpoint with neither unknown-title slots nor new-title columns (neither has weights)."""
    shutil.copytree(model_dir, out)
    config = json.loads((out / "config.json").read_text())
    config["model"].update(unknown_slots=0, new_title_columns=0)
    (out / "config.json").write_text(json.dumps(config))
    return out


def measure(name: str, args, work: Path) -> dict:
    log = dataset_log(name, work, args.synth_users, args.synth_titles, args.synth_days)
    times = np.array([event.ts for event in read_log(log)])
    cut = int(np.quantile(times, args.cut))
    model_dir = work / f"{name}-model"
    trained = train_model(log, model_dir, until_ts=cut, train_config=TrainConfig(epochs=args.epochs, seed=0),
                          model_overrides=dict(SMALL_MODEL))  # fmt: skip
    closed = closed_catalogue(model_dir, work / f"{name}-model-closed")
    models = {"open": (model_dir, Scorer.load(model_dir)),
              "slots only": (model_dir, Scorer.load(model_dir, new_title_columns=0)),
              "closed": (closed, Scorer.load(closed))}  # fmt: skip
    backtest = run_backtest(LogReplay(log), models, score_from=cut, top_k=K)
    data = report_data(backtest)
    return {"cut": cut, "events": len(times), "trained": trained, "systems": data["systems"]}


def table(name: str, result: dict) -> list[str]:
    systems = ("open", "slots only", "closed", "recency")
    groups = sorted(result["systems"]["open"]["by_training_and_action"])
    lines = [
        f"### {name}: {result['events']:,} events, cut at {time.strftime('%Y-%m-%d', time.gmtime(result['cut'] / 1000))}",
        "",
        "| judged title / its action | judgments | " + " | ".join(f"{s} HR@{K}" for s in systems) + " | "
        + " | ".join(f"{s} NDCG@{K}" for s in systems) + " |",
        "|---" * (2 + 2 * len(systems)) + "|",
    ]
    for group in ["overall", *groups]:
        blocks = [result["systems"][s]["overall"] if group == "overall" else
                  result["systems"][s]["by_training_and_action"].get(group, {}) for s in systems]  # fmt: skip
        cells = [f"{b.get(f'HR@{K}', float('nan')):.3f}" for b in blocks] + [
            f"{b.get(f'NDCG@{K}', float('nan')):.3f}" for b in blocks]  # fmt: skip
        lines.append(f"| {group} | {blocks[0].get('judgments', 0):,} | " + " | ".join(cells) + " |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="synth,movielens")
    parser.add_argument("--cut", type=float, default=0.7, help="quantile of event time: train before, judge after")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--synth-users", type=int, default=1000)
    parser.add_argument("--synth-titles", type=int, default=400)
    parser.add_argument("--synth-days", type=int, default=60)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/open-catalogue.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    command = "python bench/open_catalogue.py " + " ".join(sys.argv[1:])
    lines = ["# Titles the model was not trained on: a time split, with the open catalogue and without", "",
             f"`{command.strip()}` on {time.strftime('%Y-%m-%d')}; see the script's docstring for the protocol. "
             "\"seen\": the judged title is in the model's vocabulary (played before the cut); \"new\": first "
             "played after it. Same weights in every model column.", ""]  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.datasets.split(","):
            lines += table(name, measure(name, args, Path(scratch)))
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
