"""The item layer at catalogue scale: what training, serving and backtests cost from 2,000 to
1,000,000 titles, exact beside approximate in the same run (issue 22's table).

    flock /tmp/cpu-heavy.lock python bench/catalogue.py [--sizes 2000,20000,200000,1000000] [--variants V3,V0]

For each catalogue size: a synthetic world of that many titles (`intentstream data synth --titles`,
the same users, days and seed: about the same events, spread over another catalogue) and its
catalogue file, so that every title, played or not, is in the model's vocabulary. Then, per variant,
each step in a process of its own (so that its peak resident memory is its own):

- training: seconds of one epoch and of one validation pass, and peak resident memory, with the full
  softmax (where it fits: up to --full-up-to titles) and with sampled negatives (TrainConfig.softmax);
  the sampled model, trained --serving-epochs epochs, is the one served below, and its file size is
  reported;
- serving: the serving scorer alone (eager, one thread) on the first --serve-events events, as the
  score step calls it (batches of at most 256): events/s and the p50/p99 of a model call, scoring
  the whole catalogue (exact; up to --exact-up-to titles) and from retrieved candidates
  (approximate), with the index's build time and the memory it adds;
- recall: of the exact path's top 10 for --recall-events events, the share the approximate path's
  top 10 holds;
- backtest: `intentstream backtest`'s replay of the first --backtest-events events, judging
  included, exact and approximate: events/s.

Writes bench/results/catalogue.md (and .json, and catalogue.png: the costs against catalogue size).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCH = 256
MEMORY_LIMIT_BYTES = 16 << 30  # a step that needs more is reported as not fitting, not left to the OOM killer


def in_child(function, *args):
    """`function(*args)` in a fresh process (spawn), with its peak resident memory in MB added under
    "peak_rss_mb"; {"error": ...} where it failed (a MemoryError: it does not fit)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_measured, (function, args))


def _measured(function, args) -> dict:
    import torch

    torch.set_num_threads(1)
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    try:
        result = function(*args)
    except Exception as error:  # torch reports a failed allocation as RuntimeError, Bytewax wraps it again
        if not isinstance(error, MemoryError) and "allocate memory" not in "".join(traceback.format_exception(error)):
            raise
        result = {"error": f"does not fit in {MEMORY_LIMIT_BYTES >> 30} GB of address space"}
    return {**result, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def make_world(size: int, users: int, days: int, directory: Path) -> tuple[Path, Path]:
    from model.playlogs.files import write_catalogue, write_log
    from model.playlogs.synth import generate_world_and_catalogue

    log, catalogue = directory / f"world-{size}.msgpack", directory / f"world-{size}.catalogue.msgpack"
    if not log.exists():
        titles, events = generate_world_and_catalogue(seed=0, n_users=users, n_titles=size, days=days)
        write_catalogue(catalogue, (title.catalogue_entry() for title in titles))
        write_log(log, events)
    return log, catalogue


def selection_run(log: Path, catalogue: Path, variant: str, softmax: str):
    """`train`'s selection run of the variant on a world and its catalogue (refit off), its
    validation targets, and the seconds the run took to set up."""
    from model.config import TrainConfig
    from model.playlogs.files import read_catalogue, read_user_sequences
    from model.training.train import Run, featurize_sequences
    from model.training.validation import Validation, held_out

    config = TrainConfig(softmax=softmax, refit=False)
    sequences = read_user_sequences(log)
    splits = {user: held_out(len(events), config.validation_share) for user, events in sequences.items()}
    origin = min(events[0].ts for events in sequences.values())
    started = time.perf_counter()
    run = Run(sequences, {user: split.validation_from for user, split in splits.items()}, variant, origin, None,
              config, list(read_catalogue(catalogue)))  # fmt: skip
    setup_s = time.perf_counter() - started
    validation = Validation(featurize_sequences(sequences, run.vocab)[0], splits, run.model.config.history_len)
    return run, validation, setup_s


def train_cost(log: Path, catalogue: Path, variant: str, softmax: str, epochs: int, out: Path | None) -> dict:
    """One epoch's and one validation pass's seconds (the first of `epochs` epochs), and the model
    after `epochs` epochs saved to `out` (if given)."""
    from model.checkpoint import save_checkpoint

    run, validation, setup_s = selection_run(log, catalogue, variant, softmax)
    started = time.perf_counter()
    run.fit(1, None, progress=False)
    epoch_s = time.perf_counter() - started
    started = time.perf_counter()
    validation.ndcg(run.model)
    validation_s = time.perf_counter() - started
    result = {"items": run.model.config.n_items, "events": run.events, "setup_s": setup_s, "epoch_s": epoch_s,
              "validation_s": validation_s, "sampled": run.sampler is not None}  # fmt: skip
    if out is not None:
        if epochs > 1:
            run.fit(epochs - 1, None, progress=False)
        shutil.rmtree(out, ignore_errors=True)  # an index saved by an earlier run would be loaded, not built
        save_checkpoint(out, run.model.eval(), run.vocab, {"name": f"catalogue-{variant}", "version": "bench",
                                                           "most_played": run.most_played})  # fmt: skip
        result["model_mb"] = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    return result


def serving_cost(model_dir: Path, log: Path, events: int, catalogue: str) -> dict:
    """The serving scorer alone on the first `events` events: events/s over the model calls, each
    call's seconds, and the index's build seconds and memory."""
    import resource as rusage

    from bench.scorer_alone import SOURCE_BATCH
    from model.playlogs.files import read_log
    from model.serving.incremental import load_serving_scorer
    from stream.dataflow import Origin, Play, Remembering, RememberUser, ScoreRequest, StreamCounters, score_chunks, state_config
    from stream.settings import StreamSettings

    plays = [event for _, event in zip(range(events), read_log(log))]
    before_mb = rusage.getrusage(rusage.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    scorer = load_serving_scorer(model_dir, backend="eager", catalogue=catalogue)
    load_s = time.perf_counter() - started
    loaded_mb = rusage.getrusage(rusage.RUSAGE_SELF).ru_maxrss / 1024
    settings = StreamSettings(brokers="unused:9092", model_dir=model_dir, batch_size=BATCH)
    shared = Remembering.of(state_config(settings, scorer), scorer, StreamCounters())
    users, requests, no_origin = {}, [], Origin(None, None, None, None, None)
    for event in plays:
        emitted, _ = users.setdefault(event.user_id, RememberUser(shared, None)).on_item(Play(event, no_origin))
        requests.extend(item for item in emitted if isinstance(item, ScoreRequest))
    call_s = []
    for start in range(0, len(requests), SOURCE_BATCH):
        for chunk in score_chunks(requests[start : start + SOURCE_BATCH], BATCH):
            scorer.new_titles.register_plays([r.event for r in chunk], [r.history[-1] for r in chunk])
            began = time.perf_counter()
            scorer.predict_users([r.event.user_id for r in chunk], [r.history for r in chunk],
                                 [r.unknown_titles for r in chunk])  # fmt: skip
            call_s.append((len(chunk), time.perf_counter() - began))
    sizes, seconds = np.array(call_s).T
    full = sizes == sizes.max()
    return {"events_per_s": float(sizes.sum() / seconds.sum()), "calls": int(len(sizes)),
            "p50_ms": float(np.percentile(seconds[full], 50) * 1e3), "p99_ms": float(np.percentile(seconds[full], 99) * 1e3),
            "load_s": load_s, "load_mb": loaded_mb - before_mb}  # fmt: skip


def top10_recall(model_dir: Path, log: Path, events: int) -> dict:
    """Of the exact path's top 10 after each of the first `events` events (scored from their whole
    histories), the share the approximate path's top 10 holds."""
    from model.playlogs.files import read_log
    from model.serving.incremental import load_serving_scorer

    exact = load_serving_scorer(model_dir, backend="eager", catalogue="exact")
    approximate = load_serving_scorer(model_dir, backend="eager", catalogue="approximate")
    histories: dict[str, list] = {}
    for event in (event for _, event in zip(range(events), read_log(log))):
        histories.setdefault(event.user_id, []).append(exact.featurize(event))
    rows = [np.stack(rows) for rows in histories.values()]
    found = []
    for start in range(0, len(rows), BATCH):
        batch = rows[start : start + BATCH]
        for mine, theirs in zip(approximate.score(batch), exact.score(batch)):
            found.append(len({i.item_id for i in mine.next_items} & {i.item_id for i in theirs.next_items}) / 10)
    return {"recall_at_10": float(np.mean(found)), "queries": len(found)}


def backtest_speed(model_dir: Path, log: Path, events: int, catalogue: str, directory: Path) -> dict:
    from model.playlogs.files import read_log, write_log
    from model.serving.scorer import Scorer
    from stream.backtest.replay import run_backtest
    from stream.backtest.sources import LogReplay

    head = directory / f"{log.stem}-head-{events}.msgpack"
    if not head.exists():
        write_log(head, (event for _, event in zip(range(events), read_log(log))))
    started = time.perf_counter()
    backtest = run_backtest(LogReplay(head), {"model": (model_dir, Scorer.load(model_dir))}, catalogue=catalogue,
                            progress=False)  # fmt: skip
    wall_s = time.perf_counter() - started
    model = backtest.systems[0]
    return {"events_per_s": events / model.replay.wall_s, "wall_s": wall_s, "judged": len(model.log)}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (train_axis, serve_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    served = any(run["serve"] for by_size in results["runs"].values() for run in by_size.values())
    for variant, by_size in results["runs"].items():
        sizes = sorted(int(size) for size in by_size)
        for softmax, style in (("full", "--"), ("sampled", "-")):
            points = [(size, by_size[str(size)]["train"][softmax].get("epoch_s")) for size in sizes
                      if softmax in by_size[str(size)]["train"]]  # fmt: skip
            points = [(size, value) for size, value in points if value is not None]
            if points:
                train_axis.plot(*zip(*points), style, marker="o", label=f"{variant} {softmax}")
        for catalogue, style in (("exact", "--"), ("approximate", "-")):
            points = [(size, by_size[str(size)]["serve"].get(catalogue, {}).get("events_per_s")) for size in sizes]
            points = [(size, value) for size, value in points if value is not None]
            if points:
                serve_axis.plot(*zip(*points), style, marker="o", label=f"{variant} {catalogue}")
        if not served:  # --train-only: the other half of an epoch of `train`
            points = [(size, by_size[str(size)]["train"]["sampled"].get("validation_s")) for size in sizes]
            serve_axis.plot(*zip(*points), "-", marker="o", label=f"{variant} sampled")
    second = ("Serving alone, batches of 256", "events/s") if served else ("Training: one validation pass", "seconds")
    for axis, title, unit in ((train_axis, "Training: one epoch", "seconds"), (serve_axis, *second)):
        axis.set_xscale("log")
        axis.set_xlabel("titles in the catalogue")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def index_cost(exact: dict, approximate: dict) -> dict:
    """What attaching the index added to loading the model: the approximate load less the exact one."""
    if "load_s" not in approximate:
        return approximate
    return {"build_s": approximate["load_s"] - exact.get("load_s", 0.0),
            "mb": approximate["load_mb"] - exact.get("load_mb", 0.0)}  # fmt: skip


def markdown(results: dict, command: str, plot_name: str) -> str:
    lines = [
        "# The item layer at catalogue scale",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}, 2 shared CPU "
        f"cores, one torch thread per process; {time.strftime('%Y-%m-%d')}  ",
        f"World: the synthetic world (seed 0, {results['users']} users, {results['days']} days) with the catalogue "
        "file, at each size; every step in a process of its own. Index: the approximate path's load less the "
        "exact path's (the model read in both), i.e. building the HNSW index and what it holds; serving and p99 "
        "on the served (sampled) model, batches of 256; peak RSS of the serving steps in the JSON.",
        "",
        "| variant | titles | events | train s/epoch full | sampled | validation s | peak RSS MB full | sampled | "
        "model MB | serve ev/s exact | approximate | p99 ms/call exact | approximate | index build s | index MB | "
        "recall@10 | backtest ev/s exact | approximate |",
        "|---" * 18 + "|",
    ]

    def cell(values: dict, key: str, digits: int = 0) -> str:
        value = values.get(key)
        if "error" in values:
            return "does not fit"
        return "-" if value is None else f"{value:,.{digits}f}"

    for variant, by_size in results["runs"].items():
        for size, run in sorted(by_size.items(), key=lambda pair: int(pair[0])):
            train, serve, backtest = run["train"], run["serve"], run["backtest"]
            full, sampled = train.get("full", {}), train.get("sampled", {})
            exact, approximate = serve.get("exact", {}), serve.get("approximate", {})
            lines.append(" | ".join([
                f"| {variant}", f"{int(size):,}", cell(sampled, "events"), cell(full, "epoch_s", 1),
                cell(sampled, "epoch_s", 1), cell(sampled, "validation_s", 1), cell(full, "peak_rss_mb"),
                cell(sampled, "peak_rss_mb"), cell(sampled, "model_mb", 1), cell(exact, "events_per_s"),
                cell(approximate, "events_per_s"), cell(exact, "p99_ms", 1), cell(approximate, "p99_ms", 1),
                cell(index_cost(exact, approximate), "build_s", 1), cell(index_cost(exact, approximate), "mb"),
                cell(run.get("recall", {}), "recall_at_10", 3), cell(backtest.get("exact", {}), "events_per_s"),
                cell(backtest.get("approximate", {}), "events_per_s"),
            ]) + " |")  # fmt: skip
    lines += ["", f"![costs against catalogue size]({plot_name})", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2000,20000,200000,1000000")
    parser.add_argument("--variants", default="V3,V0")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--full-up-to", type=int, default=200_000, help="the full softmax is tried up to this many titles")
    parser.add_argument("--exact-up-to", type=int, default=1_000_000, help="exact serving is tried up to this many")
    parser.add_argument("--serving-epochs", type=int, default=2, help="epochs of the sampled model served")
    parser.add_argument("--serve-events", type=int, default=20_000)
    parser.add_argument("--recall-events", type=int, default=5_000)
    parser.add_argument("--backtest-events", type=int, default=10_000)
    parser.add_argument("--train-only", action="store_true", help="measure training alone (no serving, backtest, recall)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep worlds and models here (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "catalogue.md")
    args = parser.parse_args()
    command = "python bench/catalogue.py " + shlex.join(sys.argv[1:])
    results = {"users": args.users, "days": args.days, "runs": {}}
    plot_name = args.out.with_suffix(".png").name
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for size in (int(size) for size in args.sizes.split(",")):
            log, catalogue = make_world(size, args.users, args.days, workdir)
            for variant in args.variants.split(","):
                run = results["runs"].setdefault(variant, {}).setdefault(str(size), {"train": {}, "serve": {}, "backtest": {}})
                model_dir = workdir / f"model-{variant}-{size}"
                if size <= args.full_up_to:
                    run["train"]["full"] = in_child(train_cost, log, catalogue, variant, "full", 1, None)
                run["train"]["sampled"] = in_child(train_cost, log, catalogue, variant, "sampled", args.serving_epochs,
                                                   None if args.train_only else model_dir)  # fmt: skip
                if not args.train_only:
                    serve_and_judge(run, model_dir, log, size, args, workdir)
                print(f"{variant} {size:,}: {json.dumps(run)}", flush=True)
                args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
                args.out.write_text(markdown(results, command, plot_name))
    plot(results, args.out.with_suffix(".png"))
    args.out.write_text(markdown(results, command, plot_name))
    print(markdown(results, command, plot_name))


def serve_and_judge(run: dict, model_dir: Path, log: Path, size: int, args, workdir: Path) -> None:
    """The served model's steps: serving and backtest (exact and approximate), and recall."""
    for mode in ("exact", "approximate"):
        if mode == "exact" and size > args.exact_up_to:
            continue
        run["serve"][mode] = in_child(serving_cost, model_dir, log, args.serve_events, mode)
        run["backtest"][mode] = in_child(backtest_speed, model_dir, log, args.backtest_events, mode, workdir)
    if size <= args.exact_up_to:
        run["recall"] = in_child(top10_recall, model_dir, log, args.recall_events)


if __name__ == "__main__":
    main()
