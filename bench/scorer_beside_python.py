"""The serving scorer beside another Python thread in the same process: would a scoring thread next
to the Bytewax worker (the model running while the worker decodes, remembers and encodes other
events) overlap the two? Only if the model's calls leave the GIL to the other thread and get it
back promptly.

For each backend, the score requests of the stream bench's first `--events` events (bench/stream.py's
world and model, bench/scorer_alone.py's requests and model calls) are scored, 3 times each:

- alone;
- beside a thread that runs pure Python all the time (what decode, remember and encode are);
- beside a thread that wakes every millisecond for a few microseconds of Python (what Bytewax's
  main thread does while it polls its workers).

It reports the scorer's seconds in each case and, beside the busy thread, the share of its solo
rate the busy thread kept; with Python's default switch interval (5 ms: how long a thread that
wants the GIL waits before it asks the holder to let go) and a short one (0.1 ms). Writes
bench/results/scorer-beside-python.md.
"""
from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results" / "scorer-beside-python.md"
SHORT_SWITCH_INTERVAL_S = 1e-4


def busy(stop: threading.Event, counts: list[int]) -> None:
    n = 0
    while not stop.is_set():
        for _ in range(1000):
            n += 1
    counts.append(n)


def waking(stop: threading.Event, counts: list[int]) -> None:
    n = 0
    while not stop.wait(0.001):
        n += sum(range(100))
    counts.append(n)


def beside(thread_body, work) -> tuple[float, int]:
    """(seconds `work` took with `thread_body` running beside it, the thread's count)."""
    stop, counts = threading.Event(), []
    thread = threading.Thread(target=thread_body, args=(stop, counts))
    thread.start()
    started = time.perf_counter()
    work()
    spent_s = time.perf_counter() - started
    stop.set()
    thread.join()
    return spent_s, counts[0]


def measure(model_dir: Path, events, backend: str, trials: int, say) -> dict[str, list[float]]:
    from bench.scorer_alone import SOURCE_BATCH, score_requests
    from stream.dataflow import score_chunks

    scorer, requests = score_requests(model_dir, events, 256, backend)
    chunks = [chunk for start in range(0, len(requests), SOURCE_BATCH)
              for chunk in score_chunks(requests[start : start + SOURCE_BATCH], 256)]  # fmt: skip

    def predict_all() -> None:
        for chunk in chunks:
            scorer.predict_users([request.event.user_id for request in chunk], [request.history for request in chunk])

    predict_all()  # warm-up: graphs loaded, caches filled once
    results = {"alone": [], "beside busy": [], "busy share": [], "beside waking": []}
    for trial in range(trials):
        started = time.perf_counter()
        predict_all()
        results["alone"].append(time.perf_counter() - started)
        solo_s, solo_count = beside(busy, lambda: time.sleep(results["alone"][-1]))
        both_s, both_count = beside(busy, predict_all)
        results["beside busy"].append(both_s)
        results["busy share"].append((both_count / both_s) / (solo_count / solo_s))
        results["beside waking"].append(beside(waking, predict_all)[0])
        say(f"[{backend}, switch interval {sys.getswitchinterval() * 1000:g} ms] trial {trial + 1}: alone "
            f"{results['alone'][-1]:.2f} s, beside a busy Python thread "
            f"{both_s:.2f} s (the thread kept {results['busy share'][-1]:.0%} of its solo rate), beside a "
            f"thread waking every ms {results['beside waking'][-1]:.2f} s")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    command = "python bench/scorer_beside_python.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    import torch

    torch.set_num_threads(1)
    from bench.compiled import compile_beside
    from bench.world import BenchWorld

    say = lambda text: print(text, flush=True)  # noqa: E731
    world = BenchWorld()
    streamed, model_dir = world.streamed, world.model(say)
    say(compile_beside(model_dir, 256, say))
    events = streamed[: args.events]
    rows, default_interval = [], sys.getswitchinterval()
    for backend, interval in [(b, i) for b in ("auto", "eager") for i in (default_interval, SHORT_SWITCH_INTERVAL_S)]:
        sys.setswitchinterval(interval)
        results = measure(model_dir, events, backend, args.trials, say)
        median = {name: statistics.median(values) for name, values in results.items()}
        rows.append(f"| {backend} | {interval * 1000:g} | {median['alone']:.2f} | {median['beside busy']:.2f} "
                    f"({median['beside busy'] / median['alone']:.1f}x) | {median['busy share']:.0%} | "
                    f"{median['beside waking']:.2f} ({median['beside waking'] / median['alone']:.2f}x) |")
    lines = [
        "# The serving scorer beside another Python thread",
        "",
        f"Command: `{command}`",
        "",
        f"Score requests of the stream bench's first {args.events:,} events ({model_dir.name}, batch cap 256, torch "
        f"threads 1), medians of {args.trials} trials, seconds to score them all. See the docstring of "
        "bench/scorer_beside_python.py.",
        "",
        "| backend | switch interval ms | alone s | beside a busy Python thread s | the busy thread's share of its solo rate meanwhile "
        "| beside a thread waking every ms s |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ]
    args.out.write_text("\n".join(lines))
    say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
