"""What a backtest found, and its report: JSON, Markdown, PNG plots and every judgment as JSONL.

A *judgment* is one update judged against the user's next event (see stream/backtest/judging.py):
the rank of that event's item among the system's scores for the whole catalogue, and for each intent task
whether the top label was right. `JudgmentLog` keeps one system's judgments column by column;
every number in the report is computed from those columns with `model.training.evaluate.ranking_metrics`,
so `judgments.jsonl` reproduces all of them but catalogue coverage (which needs the top-k lists).

Comparisons are paired: two systems are compared on the judgments both made (same user and judged
event), as the difference `system - reference` of each metric, with a bootstrap confidence interval
over users. Users, not judgments, are resampled, because one user's judgments are not independent;
each resample weighs users by their number of judgments, as the metric itself does.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import orjson

from model.training.evaluate import paired_bootstrap, ranking_metrics

DAY_MS = 86_400_000
BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0
MAP_POINTS = 3000  # intent embeddings drawn in the 2-D map
REPORT_FILES = ("report.json", "report.md", "judgments.jsonl", "metrics_over_time.png", "intent_weights.png",
                "intent_map.png")


def day_of(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc).date().isoformat()


# ---------------------------------------------------------------------------------------------
# What a backtest hands to the report
# ---------------------------------------------------------------------------------------------


class JudgmentLog:
    """Every judgment of one system (a model or a baseline), column by column."""

    def __init__(self, system: str, kind: str, tasks: tuple[str, ...], catalogue_size: int):
        self.system = system
        self.kind = kind  # "model" or "baseline"
        self.tasks = tasks
        self.catalogue_size = catalogue_size  # real items the system ranks
        self.user_id: list[str] = []
        self.event_id: list[str] = []  # the judged event: the user's next event after the scored one
        self.ts: list[int] = []
        self.action: list[str] = []
        self.item_id: list[str] = []
        self.scored_event_id: list[str] = []  # the event whose update is judged
        self.rank: list[int] = []  # 1-based, in the whole catalogue; ties count against the system
        # 1-based among the items the user's held history has not played; 0 where the next item is
        # one of those (the unseen-only protocol judges new items only)
        self.rank_unseen: list[int] = []
        self.in_training: list[bool] = []  # the judged title is in the system's vocabulary (its training data)
        self.hits: dict[str, list[float]] = {task: [] for task in tasks}  # 1.0 / 0.0, NaN: no label
        self.recommended: set[int] = set()  # item indices seen in the judged top-k lists

    def __len__(self) -> int:
        return len(self.rank)

    def add(self, scored_event, judged_event, rank: int, rank_unseen: int, hits: dict[str, float], top_items,
            in_training: bool = True) -> None:  # fmt: skip
        self.user_id.append(judged_event.user_id)
        self.event_id.append(judged_event.event_id)
        self.ts.append(judged_event.ts)
        self.action.append(judged_event.action)
        self.item_id.append(judged_event.item_id)
        self.scored_event_id.append(scored_event.event_id)
        self.rank.append(int(rank))
        self.rank_unseen.append(int(rank_unseen))
        self.in_training.append(bool(in_training))
        for task in self.tasks:
            self.hits[task].append(float(hits[task]))
        self.recommended.update(int(item) for item in top_items)

    def rows(self):
        """The judgments as JSONL records."""
        for i in range(len(self)):
            yield {
                "system": self.system,
                "user_id": self.user_id[i],
                "event_id": self.event_id[i],
                "ts": self.ts[i],
                "action": self.action[i],
                "item_id": self.item_id[i],
                "scored_event_id": self.scored_event_id[i],
                "rank": self.rank[i],
                "rank_unseen": self.rank_unseen[i] or None,
                "in_training": self.in_training[i],
                "hits": {task: None if np.isnan(v[i]) else bool(v[i]) for task, v in self.hits.items()},
            }


class IntentSample:
    """A uniform sample (reservoir sampling, seeded) of the judged updates' intent embeddings and
    intent weights, for the plots: bounded memory however long the replay."""

    def __init__(self, tasks: tuple[str, ...], size: int = 5000, seed: int = 0):
        self.tasks = tasks
        self.size = size
        self.seen = 0
        self.embeddings: list[np.ndarray] = []
        self.weights: list[np.ndarray] = []
        self._rng = np.random.default_rng(seed)

    def add(self, embeddings: np.ndarray, weights: np.ndarray) -> None:
        for embedding, weight in zip(embeddings, weights):
            if len(self.embeddings) < self.size:
                self.embeddings.append(embedding.copy())
                self.weights.append(weight.copy())
            else:
                slot = int(self._rng.integers(0, self.seen + 1))
                if slot < self.size:
                    self.embeddings[slot] = embedding.copy()
                    self.weights[slot] = weight.copy()
            self.seen += 1


@dataclass
class ReplayStats:
    """One replay through the dataflow: what the stream's counters saw, and how fast it went."""

    events_in: int
    updates_out: int
    duplicates: int
    dead_letters: dict[str, int]
    wall_s: float

    @property
    def events_per_s(self) -> float:
        return self.events_in / self.wall_s if self.wall_s > 0 else float("nan")


@dataclass
class SystemResult:
    log: JudgmentLog
    model: dict | None = None  # name, version, directory; None for a baseline
    replay: ReplayStats | None = None  # None for a baseline (computed from the timeline)
    intents: IntentSample | None = None  # None for a model without intent weights, and baselines


@dataclass
class Backtest:
    source: dict  # what was replayed
    input: dict  # counts from the pass before the replay
    settings: dict  # score_from, top_k, batch_size, lateness_s, ttl_s
    systems: list[SystemResult] = field(default_factory=list)  # the first model is the reference

    @property
    def top_k(self) -> int:
        return self.settings["top_k"]


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def metric_block(ranks: np.ndarray, ranks_unseen: np.ndarray, users: np.ndarray, hits: dict[str, np.ndarray],
                 k: int) -> dict:  # fmt: skip
    """Ranking metrics (also over unseen items only, for the judgments whose next item is new to the
    user) and intent accuracy of some judgments ("users": distinct users)."""
    block = {"judgments": int(len(ranks)), **ranking_metrics(ranks, k), "users": int(len(np.unique(users))),
             "unseen": ranking_metrics(ranks_unseen[ranks_unseen > 0], k)}
    for task, values in hits.items():
        known = values[~np.isnan(values)]
        block[f"{task}_accuracy"] = float(known.mean()) if len(known) else None
    return block


def positions_by(labels: np.ndarray) -> dict:
    """label -> the positions where it occurs, labels in sorted order."""
    names, inverse = np.unique(labels, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(names) + 1))
    return {name: order[bounds[i] : bounds[i + 1]] for i, name in enumerate(names.tolist())}


def summarize(log: JudgmentLog, k: int) -> dict:
    """Overall, per UTC day and by action of the judged event; and catalogue coverage."""
    ranks = np.array(log.rank, dtype=np.int64)
    ranks_unseen = np.array(log.rank_unseen, dtype=np.int64)
    users = np.array(log.user_id, dtype=object)
    hits = {task: np.array(values, dtype=np.float64) for task, values in log.hits.items()}

    def block(selector: np.ndarray) -> dict:
        return metric_block(ranks[selector], ranks_unseen[selector], users[selector],
                            {t: v[selector] for t, v in hits.items()}, k)

    days = positions_by(np.array(log.ts, dtype=np.int64) // DAY_MS)
    return {
        "overall": block(np.arange(len(ranks))),
        "by_day": {day_of(day * DAY_MS): block(positions) for day, positions in days.items()},
        "by_action": {action: block(positions) for action, positions in positions_by(np.array(log.action)).items()},
        # Titles the system was trained on, and titles first played after its training data ended.
        "by_training": {("seen at training" if seen else "new since training"): block(positions)
                        for seen, positions in positions_by(np.array(log.in_training, dtype=bool)).items()},
        "by_training_and_action": {group: block(positions) for group, positions in positions_by(np.array(
            [f"{'seen' if seen else 'new'} / {action}" for seen, action in zip(log.in_training, log.action)])).items()},
        "coverage": len(log.recommended) / log.catalogue_size if log.catalogue_size else 0.0,
    }


def ranking_names(k: int) -> list[str]:
    return [f"HR@{k}", f"NDCG@{k}", f"MRR@{k}"]


def compare(reference: JudgmentLog, other: JudgmentLog, k: int, resamples: int = BOOTSTRAP_RESAMPLES,
            confidence: float = CONFIDENCE, seed: int = BOOTSTRAP_SEED) -> dict:
    """`other - reference` on the judgments both made, with bootstrap intervals over users."""
    names = ranking_names(k)
    reference_at = {key: i for i, key in enumerate(zip(reference.user_id, reference.event_id))}
    pairs_by_user: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for j, key in enumerate(zip(other.user_id, other.event_id)):
        if key in reference_at:
            pairs_by_user[key[0]].append((reference_at[key], j))
    result = {"system": other.system, "reference": reference.system, "paired_judgments": 0, "users": 0,
              "metrics": {name: {"difference": None, "ci": None} for name in names}}
    if not pairs_by_user:
        return result

    reference_ranks, other_ranks = np.array(reference.rank), np.array(other.rank)
    differences = np.zeros((len(pairs_by_user), len(names)))
    counts = np.zeros(len(pairs_by_user))
    for u, pairs in enumerate(pairs_by_user.values()):
        mine, theirs = np.array(pairs).T
        ours, others = ranking_metrics(reference_ranks[mine], k), ranking_metrics(other_ranks[theirs], k)
        differences[u] = [others[name] - ours[name] for name in names]
        counts[u] = len(pairs)
    difference, low, high = paired_bootstrap(differences, counts, resamples, confidence, seed)
    result.update(paired_judgments=int(counts.sum()), users=len(counts))
    result["metrics"] = {
        name: {"difference": float(difference[m]), "ci": [float(low[m]), float(high[m])]}
        for m, name in enumerate(names)
    }
    return result


def report_data(backtest: Backtest) -> dict:
    """Everything report.json holds."""
    k = backtest.top_k
    reference = backtest.systems[0].log
    systems = {}
    for result in backtest.systems:
        entry = {"kind": result.log.kind, **summarize(result.log, k)}
        if result.model is not None:
            entry["model"] = result.model
        if result.replay is not None:
            entry["replay"] = {
                "events_in": result.replay.events_in,
                "updates_out": result.replay.updates_out,
                "duplicates": result.replay.duplicates,
                "dead_letters": result.replay.dead_letters,
                "wall_s": round(result.replay.wall_s, 3),
                "events_per_s": round(result.replay.events_per_s, 1),
            }
        systems[result.log.system] = entry
    return {
        "source": backtest.source,
        "input": backtest.input,
        "settings": backtest.settings,
        "reference": reference.system,
        "systems": systems,
        "comparisons": [compare(reference, result.log, k) for result in backtest.systems[1:]],
        "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "confidence": CONFIDENCE, "seed": BOOTSTRAP_SEED,
                      "over": "users"},
    }


# ---------------------------------------------------------------------------------------------
# Writing the report
# ---------------------------------------------------------------------------------------------


def write_report(backtest: Backtest, out: Path) -> dict:
    """Write every REPORT_FILES file into `out` (created if needed); return report.json's data."""
    out.mkdir(parents=True, exist_ok=True)
    data = report_data(backtest)
    (out / "report.json").write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    with open(out / "judgments.jsonl", "wb") as jsonl:
        for result in backtest.systems:
            for row in result.log.rows():
                jsonl.write(orjson.dumps(row) + b"\n")
    plot_metrics_over_time(data, backtest.top_k, out / "metrics_over_time.png")
    models_with_intents = [r for r in backtest.systems if r.intents is not None and r.intents.embeddings]
    plot_intent_weights(models_with_intents, out / "intent_weights.png")
    plot_intent_map(models_with_intents, out / "intent_map.png")
    (out / "report.md").write_text(markdown(data, backtest, with_intent_plots=bool(models_with_intents)))
    return data


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _difference(entry: dict) -> str:
    if entry["difference"] is None:
        return "-"
    low, high = entry["ci"]
    return f"{entry['difference']:+.4f} [{low:+.4f}, {high:+.4f}]"


def _span_days(data: dict) -> float:
    return (data["input"]["last_ts"] - data["input"]["first_ts"]) / DAY_MS


def summary(data: dict, k: int) -> str:
    """The report's head: what was replayed, speed, metrics and paired differences (Markdown)."""
    names = ranking_names(k)
    settings, counts = data["settings"], data["input"]
    source = data["source"]
    what = f"log `{source['log']}`" if "log" in source else f"topic `{source['topic']}`"
    if "topic" in source and (source.get("from") is not None or source.get("to") is not None):
        what += f", events in [{source.get('from') or '-inf'}, {source.get('to') or '+inf'}) ms"
    judged_from = "every event" if settings["score_from"] is None else (
        f"judged events at or after {day_of(settings['score_from'])} ({settings['score_from']} ms)")
    lines = [
        f"# Backtest of {what}",
        "",
        f"Replayed {counts['messages']} messages: {counts['events']} events of {counts['users']} users from "
        f"{day_of(counts['first_ts'])} to {day_of(counts['last_ts'])} ({_span_days(data):.0f} days) through the "
        f"live dataflow; each update judged against its user's next event, {judged_from}; K = {k}.",
        "",
    ]

    lines += ["## Speed", "", "| model | events | wall s | events/s | x real time |", "|---|---|---|---|---|"]
    for system, entry in data["systems"].items():
        if "replay" in entry:
            replay = entry["replay"]
            speedup = _span_days(data) * 86_400 / replay["wall_s"] if replay["wall_s"] else float("nan")
            lines.append(f"| {system} | {replay['events_in']} | {replay['wall_s']:.1f} | "
                         f"{replay['events_per_s']:.0f} | {speedup:,.0f} |")
    lines.append("")

    tasks = sorted({key[: -len("_accuracy")] for entry in data["systems"].values()
                    for key in entry["overall"] if key.endswith("_accuracy")})
    lines += [
        "## Next item and intents",
        "",
        f"Ranks are in the whole catalogue; coverage = distinct items in the judged top-{k} lists / catalogue. "
        f"Unseen: the judgments whose next item the user's held history has not played, ranked among the items "
        f"it has not played.",
        "",
        "| system | judgments | " + " | ".join(names) + f" | NDCG@{k} unseen | coverage | "
        + " | ".join(f"acc: {t}" for t in tasks) + " |",
        "|---" * (4 + len(names) + len(tasks)) + "|",
    ]
    for system, entry in data["systems"].items():
        overall = entry["overall"]
        lines.append(
            f"| {system} | {overall['judgments']} | " + " | ".join(_number(overall[n]) for n in names)
            + f" | {_number(overall['unseen'][f'NDCG@{k}'])} | {entry['coverage']:.3f} | "
            + " | ".join(_number(overall.get(f"{t}_accuracy")) for t in tasks) + " |"
        )
    lines.append("")

    if data["comparisons"]:
        lines += [
            f"## Paired differences against {data['reference']}",
            "",
            f"system - {data['reference']} on the judgments both made; "
            f"{CONFIDENCE:.0%} bootstrap interval over users ({BOOTSTRAP_RESAMPLES} resamples).",
            "",
            "| system | paired judgments | users | " + " | ".join(f"Δ {n}" for n in names) + " |",
            "|---" * (3 + len(names)) + "|",
        ]
        for comparison in data["comparisons"]:
            lines.append(f"| {comparison['system']} | {comparison['paired_judgments']} | {comparison['users']} | "
                         + " | ".join(_difference(comparison["metrics"][n]) for n in names) + " |")
        lines.append("")
    return "\n".join(lines)


def markdown(data: dict, backtest: Backtest, with_intent_plots: bool) -> str:
    k = backtest.top_k
    names = ranking_names(k)
    settings, counts = data["settings"], data["input"]
    lines = [summary(data, k), ""]
    actions = sorted({a for entry in data["systems"].values() for a in entry["by_action"]})
    systems = list(data["systems"])
    lines += [f"## {names[0]} by the judged event's action", "",
              "| action | judgments | " + " | ".join(systems) + " |", "|---" * (2 + len(systems)) + "|"]
    reference = data["systems"][data["reference"]]["by_action"]
    for action in actions:
        cells = [_number(data["systems"][s]["by_action"].get(action, {}).get(names[0])) for s in systems]
        lines.append(f"| {action} | {reference.get(action, {}).get('judgments', 0)} | " + " | ".join(cells) + " |")
    groups = sorted({g for entry in data["systems"].values() for g in entry["by_training_and_action"]})
    if any(group.startswith("new") for group in groups):
        lines += ["", f"## {names[0]} by whether the judged title was in the training data, and its action", "",
                  "| title / action | judgments | " + " | ".join(systems) + " |", "|---" * (2 + len(systems)) + "|"]
        groups_of = {s: data["systems"][s]["by_training_and_action"] for s in systems}
        for group in groups:
            cells = [_number(groups_of[s].get(group, {}).get(names[0])) for s in systems]
            count = groups_of[data["reference"]].get(group, {}).get("judgments", 0)
            lines.append(f"| {group} | {count} | " + " | ".join(cells) + " |")
    lines += ["", "## Over time", "", "![metrics per day](metrics_over_time.png)", ""]
    if with_intent_plots:
        lines += [
            "## Intents",
            "",
            "Intent weights (softmax(alpha) per task: which intent drove the embedding, as in the paper's Fig. 7):",
            "",
            "![intent weights](intent_weights.png)",
            "",
            "Intent embeddings of a sample of updates, first two principal components, coloured by the dominant "
            "intent (largest weight), as in the paper's Fig. 6:",
            "",
            "![intent map](intent_map.png)",
            "",
        ]

    dead = {}
    for entry in data["systems"].values():
        if "replay" in entry:
            dead = entry["replay"]["dead_letters"]
            break
    lines += [
        "## Input",
        "",
        f"- duplicates (same user and event id) dropped: {counts['duplicates']}",
        f"- events older than an earlier event of the same user: {counts['out_of_order']} "
        f"(allowed lateness {settings['lateness_s']:g} s; later than that they are dead letters, as live)",
        f"- dead letters in the replay: {', '.join(f'{c}={n}' for c, n in sorted(dead.items())) or 'none'}",
        "",
        "`judgments.jsonl`: one line per system and judgment: `system`, `user_id`, `event_id`, `ts`, `action`, "
        "`item_id` (of the judged event: the user's next event), `scored_event_id` (the event whose update is "
        "judged), `rank` (of the judged item in the whole catalogue), `in_training` (the judged title is in the "
        "system's training data), `hits` (per intent task: top label right, or null where the event has no label). `report.json` holds every metric overall, per day and by action.",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metrics_over_time(data: dict, k: int, path: Path) -> None:
    plt = _pyplot()
    import matplotlib.dates as mdates

    figure, (hr_axis, ndcg_axis, count_axis) = plt.subplots(
        3, 1, figsize=(9, 7.5), sharex=True, gridspec_kw={"height_ratios": [3, 3, 1.4]})
    for system, entry in data["systems"].items():
        days = [datetime.fromisoformat(day) for day in entry["by_day"]]
        style = "-" if entry["kind"] == "model" else "--"
        for axis, name in ((hr_axis, f"HR@{k}"), (ndcg_axis, f"NDCG@{k}")):
            axis.plot(days, [block[name] for block in entry["by_day"].values()], style, marker=".", label=system)
    reference = data["systems"][data["reference"]]["by_day"]
    count_axis.bar([datetime.fromisoformat(day) for day in reference], [b["judgments"] for b in reference.values()],
                   color="0.6")
    hr_axis.set_ylabel(f"HR@{k}")
    ndcg_axis.set_ylabel(f"NDCG@{k}")
    count_axis.set_ylabel("judgments")
    hr_axis.legend(loc="best", fontsize="small")
    hr_axis.set_title("Next-item accuracy per day of the judged event (UTC)")
    for axis in (hr_axis, ndcg_axis):
        axis.grid(alpha=0.3)
    count_axis.xaxis.set_major_formatter(mdates.ConciseDateFormatter(count_axis.xaxis.get_major_locator()))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _empty_plot(path: Path, message: str) -> None:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 2))
    axis.text(0.5, 0.5, message, ha="center", va="center")
    axis.set_axis_off()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_intent_weights(results: list[SystemResult], path: Path) -> None:
    if not results:
        _empty_plot(path, "no model with intent weights")
        return
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results) + 1, 4), squeeze=False)
    for axis, result in zip(axes[0], results):
        weights = np.stack(result.intents.weights)
        axis.violinplot([weights[:, t] for t in range(weights.shape[1])], showmedians=True)
        axis.axhline(1 / weights.shape[1], color="0.5", linestyle=":", label="equal weights")
        axis.set_xticks(range(1, len(result.intents.tasks) + 1), result.intents.tasks)
        axis.set_ylabel("intent weight")
        axis.legend(loc="upper right", fontsize="small")
        axis.set_title(f"{result.log.system} ({len(weights)} updates)", fontsize="medium")
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle("Distribution of intent weights per task")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def principal_components(points: np.ndarray, n: int = 2) -> np.ndarray:
    """Project points on their first n principal components (SVD of the centred points)."""
    centred = points - points.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    return centred @ components[:n].T


def plot_intent_map(results: list[SystemResult], path: Path) -> None:
    if not results:
        _empty_plot(path, "no model with intent embeddings")
        return
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results) + 1, 5), squeeze=False)
    rng = np.random.default_rng(0)
    for axis, result in zip(axes[0], results):
        embeddings, weights = np.stack(result.intents.embeddings), np.stack(result.intents.weights)
        if len(embeddings) < 3:
            axis.text(0.5, 0.5, f"{len(embeddings)} update(s): too few to map", ha="center", va="center")
            continue
        if len(embeddings) > MAP_POINTS:
            chosen = rng.choice(len(embeddings), MAP_POINTS, replace=False)
            embeddings, weights = embeddings[chosen], weights[chosen]
        xy = principal_components(embeddings)
        dominant = weights.argmax(axis=1)
        for t, task in enumerate(result.intents.tasks):
            mine = dominant == t
            if mine.any():
                axis.scatter(xy[mine, 0], xy[mine, 1], s=6, alpha=0.6, label=f"{task} ({mine.sum()})")
        axis.set_xlabel("PC 1")
        axis.set_ylabel("PC 2")
        axis.set_title(f"{result.log.system}: {len(xy)} updates", fontsize="medium")
        axis.legend(title="dominant intent", fontsize="small", markerscale=2)
    figure.suptitle("Intent embeddings (PCA), coloured by dominant intent")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
