"""Do the intent weights and the intent embedding Z tell users apart? Judged on the synthetic
world, where every user's intent modes are known (model.playlogs.synth.user_modes).

    python bench/intents.py [--users 1000] [--seeds 3 --jobs 2 | --model DIR] [--out bench/results/intents.md]

Trains a V3 per seed with `intentstream train`'s defaults (unless --model names one trained on the
same world), scores every user's whole history, and measures, after each user's newest interaction:
- the intent weights (softmax(alpha), the paper's Fig. 7): their mean and spread across users per
  task, and how far each user's weights are from uniform;
- whether the top-weighted task is what the user's main mode is about (binge: action or kind;
  rewatcher: action; explorer: action or genre; genre fan and kids: genre; new release: release),
  against the rate the same top tasks would match if they had nothing to do with the mode;
- how well the user's main mode can be told from Z, from the intent weights and from the intent
  predictions (nearest class centroid, leave-one-out), against always guessing the commonest mode;
and draws Z in 2-D (PCA) coloured by main mode, the paper's Fig. 6 (bench/results/intents.png).
"""
from __future__ import annotations

import argparse
import multiprocessing
import platform
import shlex
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.config import TrainConfig  # noqa: E402
from model.playlogs.files import write_log  # noqa: E402
from model.playlogs.synth import generate_world, user_modes  # noqa: E402
from model.serving.scorer import Scorer  # noqa: E402
from model.training.train import load_rows, train_model  # noqa: E402

MODE_TASKS = {
    "binge": {"action", "kind"},
    "rewatcher": {"action"},
    "explorer": {"action", "genre"},
    "genre_fan": {"genre"},
    "kids": {"genre"},
    "new_release": {"release"},
}


def main_modes(users: list[str], n_users: int) -> np.ndarray:
    modes = user_modes(seed=0, n_users=n_users)
    return np.array([max(modes[user], key=modes[user].get) for user in users])


def nearest_centroid_accuracy(points: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out accuracy of assigning each point the class of the nearest class centroid
    (computed without the point), on standardised coordinates."""
    points = (points - points.mean(0)) / (points.std(0) + 1e-9)
    classes = np.unique(labels)
    sums = np.stack([points[labels == c].sum(0) for c in classes])
    counts = np.array([(labels == c).sum() for c in classes], dtype=np.float64)
    right = 0
    for point, label in zip(points, labels):
        mine = classes == label
        centroids = (sums - mine[:, None] * point) / np.maximum(counts - mine, 1)[:, None]
        right += classes[np.argmin(((centroids - point) ** 2).sum(1))] == label
    return right / len(labels)


def top_task_match(weights: np.ndarray, tasks: list[str], modes: np.ndarray) -> tuple[float, float]:
    """How often the top-weighted task is one the main mode is about, and the rate expected if the
    top tasks (same overall frequencies) were drawn independently of the mode."""
    top = np.array(tasks)[weights.argmax(1)]
    matched = np.mean([task in MODE_TASKS[mode] for task, mode in zip(top, modes)])
    frequency = {task: np.mean(top == task) for task in tasks}
    chance = np.mean([sum(frequency[t] for t in MODE_TASKS[mode]) for mode in modes])
    return float(matched), float(chance)


def plot(z: np.ndarray, weights: np.ndarray, tasks: list[str], modes: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centred = z - z.mean(0)
    xy = centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    for mode in sorted(set(modes)):
        mine = modes == mode
        left.scatter(xy[mine, 0], xy[mine, 1], s=7, alpha=0.6, label=f"{mode} ({mine.sum()})")
    left.set_xlabel("PC 1")
    left.set_ylabel("PC 2")
    left.set_title("Intent embedding Z after each user's newest play")
    left.legend(title="main mode", fontsize="small", markerscale=2)
    ordered = sorted(set(modes))
    width = 0.8 / len(tasks)
    for t, task in enumerate(tasks):
        means = [weights[modes == mode, t].mean() for mode in ordered]
        right.bar(np.arange(len(ordered)) + t * width, means, width, label=task)
    right.axhline(1 / len(tasks), color="grey", linewidth=0.8, linestyle="--")
    right.set_xticks(np.arange(len(ordered)) + width * (len(tasks) - 1) / 2, ordered, rotation=20)
    right.set_ylabel("mean intent weight")
    right.set_title("Intent weights by main mode (dashed: uniform)")
    right.legend(title="task", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def measure(model_dir: Path, log: Path, n_users: int) -> dict:
    scorer = Scorer.load(model_dir)
    rows_by_user, _ = load_rows(log, vocab=scorer.vocab)
    users = list(rows_by_user)
    predictions = [scorer.predict([rows_by_user[u] for u in users[i : i + 256]]) for i in range(0, len(users), 256)]
    weights = np.concatenate([p.intent_weights for p in predictions])
    z = np.concatenate([p.intent_embedding for p in predictions])
    tasks = list(scorer.config.intent_tasks)
    intents = np.concatenate([np.concatenate([p.intent_probs[t] for t in tasks], axis=1) for p in predictions])
    modes = main_modes(users, n_users)
    matched, chance = top_task_match(weights, tasks, modes)
    commonest = max(np.mean(modes == mode) for mode in set(modes))
    return {
        "users": len(users), "tasks": tasks, "weights": weights, "z": z, "modes": modes,
        "weight_mean": weights.mean(0), "weight_std": weights.std(0),
        "max_from_uniform": float(np.abs(weights - 1 / len(tasks)).max(1).mean()),
        "top_task_match": matched, "top_task_chance": chance,
        "mode_from_z": nearest_centroid_accuracy(z, modes),
        "mode_from_weights": nearest_centroid_accuracy(weights, modes),
        "mode_from_intents": nearest_centroid_accuracy(intents, modes),
        "commonest_mode": float(commonest),
    }


def markdown(results: list[dict], command: str, model: str) -> str:
    """One block per seed, then the targets' summary over seeds."""
    tasks = results[0]["tasks"]
    lines = [
        "# Do intent weights and Z explain? (synthetic world, each user's main mode known)",
        "",
        f"Command: `{command}`  ",
        f"Model: {model}  ",
        f"Machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}; "
        f"{time.strftime('%Y-%m-%d')}; {results[0]['users']} users, judged after each one's newest play.",
        "",
        "| seed | " + " | ".join(f"{t}: mean (std across users)" for t in tasks) + " | top task = main mode's | "
        "independent of the mode | mode from Z | from weights | from intents | commonest mode |",
        "|---" * (len(tasks) + 7) + "|",
    ]
    for result in results:
        weights = " | ".join(f"{m:.3f} ({s:.3f})" for m, s in zip(result["weight_mean"], result["weight_std"]))
        lines.append(
            f"| {result['seed']} | {weights} | {result['top_task_match']:.1%} | {result['top_task_chance']:.1%} | "
            f"{result['mode_from_z']:.1%} | {result['mode_from_weights']:.1%} | {result['mode_from_intents']:.1%} | "
            f"{result['commonest_mode']:.1%} |"
        )
    spread = np.array([result["weight_std"] for result in results])
    ratio = [result["top_task_match"] / max(result["top_task_chance"], 1e-9) for result in results]
    lines += [
        "",
        "- Tasks whose weights spread across users by at least 0.10 (std), per seed: "
        + ", ".join(f"seed {r['seed']}: {sum(s >= 0.10 for s in spread[n])}" for n, r in enumerate(results)) + ".",
        "- Top-weighted task matching the main mode, over its rate independent of the mode: "
        + ", ".join(f"{x:.2f}x" for x in ratio) + ".",
        "",
        "![Z by main mode, and intent weights by main mode (seed 0)](intents.png)",
        "",
    ]
    return "\n".join(lines)


def train_and_measure(log: Path, directory: Path, seed: int, n_users: int) -> dict:
    torch.set_num_threads(1)
    model_dir = directory / f"v3-{seed}"
    train_model(log, model_dir, variant="V3", train_config=TrainConfig(seed=seed), progress=False)
    return {"seed": seed, **measure(model_dir, log, n_users)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1000, help="users in the synthetic world")
    parser.add_argument("--model", type=Path, default=None, help="a V3 trained on this world (default: train one)")
    parser.add_argument("--seeds", type=int, default=1, help="V3s trained, one per seed (without --model)")
    parser.add_argument("--jobs", type=int, default=1, help="models trained at once, each in its own process")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "intents.md")
    args = parser.parse_args()
    command = "python bench/intents.py " + shlex.join(sys.argv[1:])
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "synth.msgpack"
        write_log(log, generate_world(seed=0, n_users=args.users))
        if args.model is not None:
            results = [{"seed": "-", **measure(args.model, log, args.users)}]
        else:
            with ProcessPoolExecutor(args.jobs, multiprocessing.get_context("spawn")) as pool:
                futures = [pool.submit(train_and_measure, log, Path(tmp), seed, args.users) for seed in range(args.seeds)]
                results = [future.result() for future in futures]
    first = results[0]
    plot(first["z"], first["weights"], first["tasks"], first["modes"], args.out.with_suffix(".png"))
    text = markdown(results, command, "V3, `intentstream train` defaults" if args.model is None else str(args.model))
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
