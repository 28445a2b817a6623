"""Do the intent weights and the intent embedding Z tell users apart? Judged on the synthetic
world, where every user's intent modes are known (model.playlogs.synth.user_modes).

    python bench/intents.py [--users 1000] [--model DIR] [--out bench/results/intents.md]

Trains a V3 with `intentstream train`'s defaults (unless --model names one trained on the same
world), scores every user's whole history, and measures, after each user's newest interaction:
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
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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


def markdown(result: dict, command: str, model: str) -> str:
    tasks = result["tasks"]
    lines = [
        "# Do intent weights and Z explain? (synthetic world, each user's main mode known)",
        "",
        f"Command: `{command}`  ",
        f"Model: {model}  ",
        f"Machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}; "
        f"{time.strftime('%Y-%m-%d')}; {result['users']} users, judged after each one's newest play.",
        "",
        "| task | mean weight | std across users |",
        "|---|---|---|",
        *[f"| {t} | {m:.3f} | {s:.3f} |" for t, m, s in zip(tasks, result["weight_mean"], result["weight_std"])],
        "",
        f"- Mean over users of the largest |weight − 1/{len(tasks)}|: {result['max_from_uniform']:.3f}.",
        f"- Top-weighted task is what the main mode is about: {result['top_task_match']:.1%} of users "
        f"(independent of the mode: {result['top_task_chance']:.1%}).",
        f"- Main mode told from Z (nearest centroid, leave-one-out): {result['mode_from_z']:.1%}; from the intent "
        f"weights: {result['mode_from_weights']:.1%}; from the intent predictions: {result['mode_from_intents']:.1%}; "
        f"always the commonest mode: {result['commonest_mode']:.1%}.",
        "",
        "![Z by main mode, and intent weights by main mode](intents.png)",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1000, help="users in the synthetic world")
    parser.add_argument("--model", type=Path, default=None, help="a V3 trained on this world (default: train one)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "intents.md")
    args = parser.parse_args()
    command = "python bench/intents.py " + shlex.join(sys.argv[1:])
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "synth.msgpack"
        write_log(log, generate_world(seed=0, n_users=args.users))
        model_dir = args.model
        if model_dir is None:
            model_dir = Path(tmp) / "v3"
            train_model(log, model_dir, variant="V3")
        result = measure(model_dir, log, args.users)
    plot(result["z"], result["weights"], result["tasks"], result["modes"], args.out.with_suffix(".png"))
    text = markdown(result, command, "V3, `intentstream train` defaults" if args.model is None else str(args.model))
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
