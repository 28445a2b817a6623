"""What a "continue watching" row costs a model, and buys it: the user's m most recent titles (by last
play, raw ids) ranked first, then the model's ranking, for m = 0 (the model) to 10 (the rule's top 10).

    python bench/continue_tradeoff.py --model V3 --log world.msgpack --judgments report/judgments.jsonl \
        [--out bench/results/continue-tradeoff.md]

The judged updates are those of an `intentstream backtest` of `--log` (its judgments.jsonl: each
update's event, the user's next one and its action); the titles seen in training only (the rule and
the model then rank the same catalogue). For each m: NDCG@10 and HR@10 overall, HR@10 by the next
event's action, beside the raw-id recency row of the same judgments. Writes the table (.md) and the
trade-off between `continue` HR@10 and overall NDCG@10 (.png).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.features import featurize_all  # noqa: E402
from model.playlogs.files import read_log  # noqa: E402
from model.serving.scorer import Scorer  # noqa: E402
from model.training.evaluate import ndcg_per_case  # noqa: E402

K = 10
FIRSTS = (0, 1, 2, 3, 4, 5, 6, 8, 10)
ACTIONS = ("continue", "discover", "rewatch", "trailer")
RULE = "raw-id recency"


def judged_cases(scorer: Scorer, log: Path, judgments: Path, system: str) -> list[dict]:
    """The judged updates of `system` whose next title was in training: the history up to the judged
    update, the user's titles by last play, the next title and its action, and the rule's rank."""
    events = defaultdict(list)
    for event in read_log(log):
        events[event.user_id].append(event)
    where = {event.event_id: (user, i) for user, played in events.items() for i, event in enumerate(played)}
    rule_rank, chosen = {}, []
    for line in judgments.open():
        row = json.loads(line)
        if row["system"] == RULE:
            rule_rank[row["event_id"]] = row["rank"]
        elif row["system"] == system and row["in_training"]:
            chosen.append(row)
    cases = []
    for row in chosen:
        user, i = where[row["scored_event_id"]]
        history = events[user][: i + 1]
        by_last_play = dict.fromkeys(event.item_id for event in reversed(history))
        cases.append({
            "user": user, "action": row["action"], "rule_rank": rule_rank[row["event_id"]],
            "rows": featurize_all(history[-scorer.history_len :], scorer.vocab),
            "recent": [scorer.vocab.items.lookup(title) for title in list(by_last_play)[:K]],
            "target": scorer.vocab.items.lookup(row["item_id"]),
        })
    return cases


def ranks_with_recent_first(scorer: Scorer, cases: list[dict], batch: int = 256) -> dict[int, np.ndarray]:
    """For each m of FIRSTS, each case's rank of its next title (K + 1: beyond the top K)."""
    ranks = {m: [] for m in FIRSTS}
    for start in range(0, len(cases), batch):
        chunk = cases[start : start + batch]
        scores = scorer.predict([case["rows"] for case in chunk]).item_scores[:, : scorer.config.n_items]
        for row, case in zip(scores, chunk):
            by_model = np.argsort(-row, kind="stable")[: 2 * K].tolist()
            for m in FIRSTS:
                first = case["recent"][:m]
                top = (first + [item for item in by_model if item not in first])[:K]
                ranks[m].append(top.index(case["target"]) + 1 if case["target"] in top else K + 1)
    return {m: np.array(values) for m, values in ranks.items()}


def summary(ranks: np.ndarray, actions: np.ndarray) -> dict:
    return {"NDCG@10": float(ndcg_per_case(ranks, K).mean()), "HR@10": float((ranks <= K).mean()),
            **{action: float((ranks[actions == action] <= K).mean()) for action in ACTIONS}}


def plot(rows: dict[str, dict], rule: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot([row["continue"] for row in rows.values()], [row["NDCG@10"] for row in rows.values()], "o-")
    for name, row in rows.items():
        axes.annotate(name, (row["continue"], row["NDCG@10"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes.plot([rule["continue"]], [rule["NDCG@10"]], "s", color="tab:red", label=RULE)
    axes.set_xlabel("continue HR@10")
    axes.set_ylabel("NDCG@10, every judged update")
    axes.set_title("The user's m most recent titles first, then the model")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--judgments", type=Path, required=True, help="judgments.jsonl of a backtest of --log")
    parser.add_argument("--system", default=None, help="the model's name in judgments.jsonl (default: its directory's name)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "continue-tradeoff.md")
    args = parser.parse_args()
    scorer = Scorer.load(args.model)
    cases = judged_cases(scorer, args.log, args.judgments, args.system or args.model.name)
    actions = np.array([case["action"] for case in cases])
    rows = {f"m={m}": summary(ranks, actions) for m, ranks in ranks_with_recent_first(scorer, cases).items()}
    rule = summary(np.array([case["rule_rank"] for case in cases]), actions)
    command = "python bench/continue_tradeoff.py " + shlex.join(sys.argv[1:])
    header = ["system", "NDCG@10", "HR@10", *(f"{action} HR@10" for action in ACTIONS)]
    lines = [
        "# A \"continue watching\" row in front of the model", "", f"Command: `{command}`  ",
        f"{len(cases):,} judged updates whose next title was in training; m: the user's m most recent titles "
        "(by last play) first, then the model's ranking.", "",
        "| " + " | ".join(header) + " |", "|---" * len(header) + "|",
    ]
    for name, row in [*rows.items(), (RULE, rule)]:
        lines.append(f"| {name} | " + " | ".join(f"{row[key]:.4f}" for key in ("NDCG@10", "HR@10"))
                     + " | " + " | ".join(f"{row[action]:.3f}" for action in ACTIONS) + " |")
    lines += ["", f"![trade-off]({args.out.with_suffix('.png').name})", ""]
    args.out.write_text("\n".join(lines))
    plot(rows, rule, args.out.with_suffix(".png"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
