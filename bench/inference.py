"""Scoring throughput and batch latency: incremental inference against full recomputation, for every
available backend, batch sizes 1..1024 and attention windows L 50..400, all in one run.

    PYTHONPATH=. python bench/inference.py --threads 1    # default grid, CPU (about 6 minutes)
    PYTHONPATH=. python bench/inference.py --full          # the whole grid
    bash bench/gpu_check.sh                                # --device cuda --quick, on a GPU machine

Modes, each a call of the serving API on a micro-batch of `batch` users with one new event each:
- incremental: IncrementalScorer.predict with every user's earlier rows cached (the steady state);
- full: the same API with caching off, so every event is a forward pass over its history_len rows;
- one-at-a-time: the baseline, Scorer.predict([history]) in eager PyTorch, one event per call (with
  --device cuda: the same forward pass in eager PyTorch on the GPU).
Also, unless --processes 0: that many one-thread serving processes at once, L=100, batch 512 (how a
stream uses several cores: a Bytewax process per core). Models are freshly initialised at the
default size (trained weights do not change speed) with a MovieLens-100K-sized catalogue. Times
cover the whole call: host-side inputs, graphs, results back as numpy; not the top-k formatting of
Scorer.to_scores, timed once on its own.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.serving.backends import compile_artifact, example_rows, load_backend  # noqa: E402
from model.config import IntentRecConfig  # noqa: E402
from model.serving.incremental import IncrementalScorer  # noqa: E402
from model.serving.kv_cache import KVCache  # noqa: E402
from model.intentrec import IntentRec  # noqa: E402
from model.serving.scorer import Scorer  # noqa: E402
from model.vocab import Vocabularies, Vocabulary  # noqa: E402
from schemas import ModelRef  # noqa: E402

CATALOGUE = dict(n_items=1684, n_actions=6, n_kinds=4, n_release_buckets=6, n_devices=5, n_genres=21)
TARGET_EVENTS_PER_S = 10_000
TARGET_TIMES_BASELINE = 20
TARGET_L_SCALING = 1.5
PROCESS_WINDOW, PROCESS_BATCH = 100, 512


@dataclass(frozen=True)
class Grid:
    windows: tuple[int, ...]
    batches: tuple[int, ...]
    full_batches: tuple[int, ...]  # full recomputation is slow: fewer batch sizes
    aoti_windows: tuple[int, ...]  # AOTInductor compiles one artifact per model: only these L
    repetitions: int  # timed batches per cell (fewer once a cell has used its time budget)
    budget_s: float  # per cell


GRIDS = {
    "default": Grid((50, 100, 200, 400), (1, 16, 128, 512, 1024), (1, 16), (50, 100, 400), 12, 4.0),
    "full": Grid((50, 100, 200, 400), (1, 4, 16, 64, 128, 256, 512, 1024), (1, 4, 16, 64), (50, 100, 200, 400),
                 30, 10.0),
    "quick": Grid((100,), (1, 64, 512, 1024), (1, 64), (100,), 30, 3.0),
}


@dataclass
class Cell:
    backend: str
    window: int
    batch: int
    mode: str
    latencies_s: list[float]

    @property
    def median_s(self) -> float:
        return float(np.median(self.latencies_s))

    @property
    def p99_s(self) -> float:
        return float(np.percentile(self.latencies_s, 99))

    @property
    def events_per_s(self) -> float:
        return self.batch / self.median_s


def make_scorer(window: int) -> Scorer:
    torch.manual_seed(0)
    config = IntentRecConfig(**CATALOGUE, attention_window=window, dropout=0.0)
    vocab = Vocabularies(
        items=Vocabulary(f"i{i}" for i in range(CATALOGUE["n_items"] - 2)),
        actions=Vocabulary(f"a{i}" for i in range(CATALOGUE["n_actions"] - 2)),
        kinds=Vocabulary(["movie", "show"]),
        release=Vocabulary(f"r{i}" for i in range(CATALOGUE["n_release_buckets"] - 2)),
        devices=Vocabulary(f"d{i}" for i in range(CATALOGUE["n_devices"] - 2)),
        genres=Vocabulary(f"g{i}" for i in range(CATALOGUE["n_genres"] - 2)),
    )
    return Scorer(IntentRec(config).eval(), vocab, ModelRef("bench", "0"))


class Users:
    """`n` users with distinct random histories of `start` rows; each call of `histories(batch)`
    gives the first `batch` of them their next event."""

    def __init__(self, config: IntentRecConfig, n: int, start: int, extra: int):
        self.rows = example_rows(config, n, start + extra, seed=1)
        self.seen = np.full(n, start)
        self.ids = [f"user{u}" for u in range(n)]

    def histories(self, batch: int, advance: bool = True) -> list[np.ndarray]:
        if advance:
            self.seen[:batch] += 1
        return [self.rows[u, : self.seen[u]] for u in range(batch)]


def timed(run, grid: Grid, sync) -> list[float]:
    run()  # warm-up: allocations, kernel choices
    latencies, started = [], time.perf_counter()
    for _ in range(grid.repetitions):
        begin = time.perf_counter()
        run()
        sync()
        latencies.append(time.perf_counter() - begin)
        if time.perf_counter() - started > grid.budget_s and len(latencies) >= 3:
            break
    return latencies


def bench_backend(name: str, backend, scorer: Scorer, grid: Grid, sync, log) -> list[Cell]:
    config, window, cells = scorer.config, scorer.config.attention_window, []
    extra = (grid.repetitions + 2) * (len(grid.batches) + len(grid.full_batches)) + 2
    # The steady state: a user's cache ring is full once it has seen L-1 rows (older rows are never
    # read by a step), so L rows of history are enough to fill the caches.
    users = Users(config, max(grid.batches), window, extra)
    incremental = IncrementalScorer(scorer, backend, cache_bytes=cache_bytes_for(config, len(users.ids)))
    started = time.perf_counter()
    incremental.predict_users(users.ids, users.histories(len(users.ids), advance=False))
    log(f"  {name} L={window}: filled {len(users.ids)} caches in {time.perf_counter() - started:.1f}s")
    for batch in grid.batches:
        latencies = timed(lambda: incremental.predict_users(users.ids[:batch], users.histories(batch)), grid, sync)
        cells.append(log_cell(Cell(name, window, batch, "incremental", latencies), log))
    assert incremental.scored_from_history == len(users.ids), "a step missed its cache"

    recomputing = IncrementalScorer(scorer, backend, cache_bytes=0)
    long_users = Users(config, max(grid.full_batches), config.history_len, extra)
    for batch in grid.full_batches:
        latencies = timed(lambda: recomputing.predict_users(long_users.ids[:batch], long_users.histories(batch)), grid, sync)
        cells.append(log_cell(Cell(name, window, batch, "full", latencies), log))
    return cells


def cache_bytes_for(config, users: int) -> int:
    """A KV cache that holds exactly `users` users: on the CPU all its slots are allocated at once
    (lazily mapped, but the system still refuses an allocation far beyond memory)."""
    return users * KVCache.bytes_per_user(config)


def bench_baseline(scorer: Scorer, device: str, grid: Grid, log) -> Cell:
    users = Users(scorer.config, 1, scorer.history_len, grid.repetitions + 2)
    if device == "cpu":
        predict = scorer.predict
    else:
        on_device = IncrementalScorer(scorer, load_backend(f"eager:{device}", scorer.model), cache_bytes=0)

        def predict(histories):
            return on_device.predict_users(users.ids, histories)

    latencies = timed(lambda: predict(users.histories(1)), grid, lambda: None)
    return log_cell(Cell("eager", scorer.config.attention_window, 1, "one-at-a-time", latencies), log)


def log_cell(cell: Cell, log) -> Cell:
    log(f"  {cell.backend:>8} L={cell.window:<4} batch={cell.batch:<5} {cell.mode:<13} "
        f"{cell.events_per_s:>10,.0f} events/s  median {cell.median_s * 1e3:8.2f} ms  "
        f"p99 {cell.p99_s * 1e3:8.2f} ms  ({len(cell.latencies_s)} batches)")
    return cell


def backends_for(scorer: Scorer, device: str, grid: Grid, workdir: Path, note) -> list[tuple[str, object]]:
    window = scorer.config.attention_window
    chosen = [("eager", load_backend("eager" if device == "cpu" else "eager:cuda", scorer.model))]
    if window in grid.aoti_windows:
        out = workdir / f"aoti-{device}-{window}"
        started = time.perf_counter()
        compile_artifact(scorer.model, "aoti", out, device=device, max_batch=max(grid.batches))
        note(f"aoti, L={window}: both graphs compiled in {time.perf_counter() - started:.0f}s.")
        chosen.append(("aoti", load_backend(f"aoti:{out}", scorer.model)))
    if device.startswith("cuda"):
        try:
            out = workdir / f"tensorrt-{window}"
            started = time.perf_counter()
            compile_artifact(scorer.model, "tensorrt", out, max_batch=max(grid.batches))
            note(f"tensorrt, L={window}: both graphs compiled in {time.perf_counter() - started:.0f}s.")
            chosen.append(("tensorrt", load_backend(f"tensorrt:{out}", scorer.model)))
        except Exception as error:  # noqa: BLE001 - whatever stops TensorRT, the report says it
            note(f"tensorrt, L={window}: not measured: {error}")
    return chosen


def process_worker(window: int, batch: int, repetitions: int, start) -> tuple[int, float]:
    """One serving process with one intra-op thread: fills its caches, waits for the others, then
    scores `repetitions` incremental batches; returns (events, seconds)."""
    torch.set_num_threads(1)
    scorer = make_scorer(window)
    users = Users(scorer.config, batch, window, repetitions + 2)
    incremental = IncrementalScorer(scorer, cache_bytes=cache_bytes_for(scorer.config, batch))
    incremental.predict_users(users.ids, users.histories(batch, advance=False))
    incremental.predict_users(users.ids, users.histories(batch))
    start.wait()
    began = time.perf_counter()
    for _ in range(repetitions):
        incremental.predict_users(users.ids, users.histories(batch))
    return batch * repetitions, time.perf_counter() - began


def bench_processes(processes: int, repetitions: int, log) -> float:
    """Events/s of `processes` serving processes at once, each with its own model, cache, users."""
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(processes) as pool:
        start = manager.Barrier(processes)
        jobs = [(PROCESS_WINDOW, PROCESS_BATCH, repetitions, start)] * processes
        results = pool.starmap(process_worker, jobs)
    rate = sum(n for n, _ in results) / max(seconds for _, seconds in results)
    log(f"  {processes} processes x 1 thread, eager L={PROCESS_WINDOW} batch={PROCESS_BATCH} incremental: "
        f"{rate:,.0f} events/s together")
    return rate


def formatting_cost_us(scorer: Scorer, batch: int = 256) -> float:
    users = Users(scorer.config, batch, 8, 1)
    predictions = scorer.predict(users.histories(batch, advance=False))
    costs = []
    for _ in range(3):
        started = time.perf_counter()
        scorer.to_scores(predictions, top_k=10)
        costs.append((time.perf_counter() - started) / batch * 1e6)
    return min(costs)


@dataclass
class Run:
    command: str
    device: str
    load_before: float
    cells: list[Cell]
    baselines: dict[int, Cell]
    notes: list[str]
    together: tuple[int, float] | None = None  # (processes, events/s)
    wall_s: float = 0.0


def report(run: Run) -> str:
    gpu = f" ({torch.cuda.get_device_name()})" if run.device.startswith("cuda") else ""
    lines = [
        "# Inference benchmark",
        "",
        f"Command: `{run.command}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs visible, torch {torch.__version__} with "
        f"{torch.get_num_threads()} intra-op threads, device {run.device}{gpu}; 1-minute load average "
        f"{run.load_before:.1f} before the run, {os.getloadavg()[0]:.1f} after (the CPUs are shared)  ",
        f"Wall time of the run: {run.wall_s / 60:.1f} min",
        "",
        "Events/s = batch / median batch latency. p99 is over the timed batches of a cell (a dozen or a few",
        "dozen: close to their maximum). `× one-at-a-time` divides by the eager one-event-per-call baseline",
        "at the same L; `incremental ÷ full` compares the two modes at the same backend and batch.",
        "",
        "| backend | L | batch | mode | events/s | median ms | p99 ms | × one-at-a-time | incremental ÷ full |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    by_key = {(c.backend, c.window, c.batch, c.mode): c for c in run.cells}
    for window, baseline in sorted(run.baselines.items()):
        lines.append(row(baseline, baseline, None))
        for cell in sorted((c for c in run.cells if c.window == window), key=lambda c: (c.backend, c.mode, c.batch)):
            full = by_key.get((cell.backend, window, cell.batch, "full")) if cell.mode == "incremental" else None
            lines.append(row(cell, baseline, full))
    lines += ["", "## Against the targets (issue 5)", "", *targets(run), "", "## Notes", ""]
    lines += [f"- {note}" for note in run.notes]
    return "\n".join(lines) + "\n"


def row(cell: Cell, baseline: Cell, full: Cell | None) -> str:
    versus_full = f"{cell.events_per_s / full.events_per_s:.1f}×" if full else ""
    return (
        f"| {cell.backend} | {cell.window} | {cell.batch} | {cell.mode} | {cell.events_per_s:,.0f} | "
        f"{cell.median_s * 1e3:.2f} | {cell.p99_s * 1e3:.2f} | "
        f"{cell.events_per_s / baseline.events_per_s:.1f}× | {versus_full} |"
    )


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def targets(run: Run) -> list[str]:
    lines = []
    if run.together:
        processes, rate = run.together
        lines.append(
            f"- {processes} serving processes × 1 thread at once, L={PROCESS_WINDOW}, batch {PROCESS_BATCH}, "
            f"incremental (eager): {rate:,.0f} events/s together; target ≥ {TARGET_EVENTS_PER_S:,} on 2 cores: "
            f"{verdict(rate >= TARGET_EVENTS_PER_S)}."
        )
    incremental = [c for c in run.cells if c.mode == "incremental"]
    at_100 = [c for c in incremental if c.window == 100]
    if at_100 and 100 in run.baselines:
        best = max(at_100, key=lambda c: c.events_per_s)
        times = best.events_per_s / run.baselines[100].events_per_s
        lines.append(
            f"- L=100, incremental, one process: best {best.events_per_s:,.0f} events/s ({best.backend}, batch "
            f"{best.batch}), target ≥ {TARGET_EVENTS_PER_S:,}: {verdict(best.events_per_s >= TARGET_EVENTS_PER_S)}; "
            f"{times:.0f}× one-at-a-time eager, target ≥ {TARGET_TIMES_BASELINE}×: "
            f"{verdict(times >= TARGET_TIMES_BASELINE)}."
        )
    for backend in sorted({c.backend for c in incremental}):
        mine = {(c.window, c.batch): c for c in incremental if c.backend == backend}
        for batch in sorted(b for w, b in mine if w == 50):
            if (400, batch) in mine:
                ratio = mine[(50, batch)].events_per_s / mine[(400, batch)].events_per_s
                lines.append(
                    f"- {backend}, batch {batch}: cost per event at L=400 is {ratio:.2f}× that at L=50; "
                    f"target ≤ {TARGET_L_SCALING}×: {verdict(ratio <= TARGET_L_SCALING)}."
                )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="the whole grid (long)")
    parser.add_argument("--quick", action="store_true", help="L=100 only, a few batch sizes (the GPU check)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--windows", type=lambda text: tuple(int(w) for w in text.split(",")), default=None,
                        help="attention windows L to measure, e.g. 50,400 (default: the grid's)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--processes", type=int, default=2,
                        help=f"one-thread serving processes run at once, L={PROCESS_WINDOW} (default: 2; 0: skip)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "inference.md")
    args = parser.parse_args()
    grid = GRIDS["full" if args.full else "quick" if args.quick else "default"]
    if args.windows:
        grid = replace(grid, windows=args.windows)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA GPU is available here")
    if args.threads:
        torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    command = "PYTHONPATH=. python bench/inference.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    run = Run(command.strip(), args.device, os.getloadavg()[0], [], {}, [])
    print(run.command, flush=True)

    def note(text: str) -> None:
        print(f"  {text}", flush=True)
        run.notes.append(text)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        for window in grid.windows:
            scorer = make_scorer(window)
            print(f"L={window} (history_len {scorer.history_len})", flush=True)
            run.baselines[window] = bench_baseline(scorer, args.device, grid, print)
            for name, backend in backends_for(scorer, args.device, grid, Path(workdir), note):
                run.cells += bench_backend(name, backend, scorer, grid, sync, print)
    if args.processes and args.device == "cpu":
        run.together = (args.processes, bench_processes(args.processes, grid.repetitions, print))
    note(f"Scores formatting (Scorer.to_scores: top-10 items, top intent labels, objects) is not in the times "
         f"above: {formatting_cost_us(make_scorer(grid.windows[0])):.0f} µs per event.")
    run.wall_s = time.perf_counter() - started
    text = report(run)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
