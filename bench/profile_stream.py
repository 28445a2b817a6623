"""Where an event's time goes in the dataflow: `build_flow` fed from memory, under cProfile.

    python bench/profile_stream.py [--events 20000] [--users 400] [--batch-size 256] [--top 25]

The flow is the one `intentstream run` executes (stream.dataflow.build_flow) with the serving
scorer of the demo's small model (stream.settings.SMALL_MODEL, trained once and cached like the
demo's), one torch thread. Its input is a bytewax TestingSource of KafkaSourceMessage (msgpack
play events of the synthetic world's streamed users, in event-time order, 1,000 per batch like
the Kafka source's), its output a sink that only counts: no broker, so what is left is decode,
per-user state, scoring and encoding, and Bytewax between them.

The flow runs twice on fresh scorers: once plain, for events/s, and once under cProfile, for the
breakdown. Shares are of the profiled run's wall time; a function's cumulative time includes what
it calls, so shares overlap. Prints a Markdown section; `--out` also writes it to a file.
"""
from __future__ import annotations

import argparse
import cProfile
import importlib
import pstats
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, this file's directory comes first on sys.path; look in the project instead.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402
from bytewax.connectors.kafka import KafkaSourceMessage  # noqa: E402
from bytewax.outputs import DynamicSink, StatelessSinkPartition  # noqa: E402
from bytewax.testing import TestingSource, run_main  # noqa: E402

from model.serving.incremental import load_serving_scorer  # noqa: E402
from schemas import encode_play_event  # noqa: E402
from stream.dataflow import build_flow  # noqa: E402
from stream.demo import DemoOptions, demo_world, train_or_reuse  # noqa: E402
from stream.settings import StreamSettings  # noqa: E402

from bench.scorer_alone import SOURCE_BATCH  # noqa: E402


class CountingSink(DynamicSink):
    """Counts the messages that reach it, and keeps nothing."""

    def __init__(self) -> None:
        self.count = 0

    def build(self, step_id: str, worker_index: int, worker_count: int) -> "_CountingPartition":
        return _CountingPartition(self)


class _CountingPartition(StatelessSinkPartition):
    def __init__(self, sink: CountingSink) -> None:
        self.sink = sink

    def write_batch(self, items) -> None:
        self.sink.count += len(items)


def source_messages(events, fmt: str) -> list[KafkaSourceMessage]:
    return [
        KafkaSourceMessage(key=e.user_id.encode(), value=encode_play_event(e, fmt), topic="plays", partition=0, offset=i)
        for i, e in enumerate(events)
    ]


def run_flow(settings: StreamSettings, messages, profiler: cProfile.Profile | None = None) -> tuple[float, int]:
    """Wall seconds of one run of the flow on a fresh serving scorer, and the messages it wrote."""
    scorer = load_serving_scorer(settings.model_dir, settings.backend, settings.kv_cache_bytes)
    sink = CountingSink()
    flow = build_flow(settings, scorer, source=TestingSource(messages, batch_size=SOURCE_BATCH), sink=sink)
    started = time.perf_counter()
    if profiler is None:
        run_main(flow)
    else:
        profiler.runcall(run_main, flow)
    return time.perf_counter() - started, sink.count


def where(function: tuple[str, int, str]) -> str:
    """`package/module.py:line(function)`, relative to site-packages or to the project."""
    filename, line, name = function
    if filename == "~":  # a builtin
        return name
    path = Path(filename)
    for base in (*(Path(p) for p in sys.path if p.endswith("site-packages")), ROOT):
        if path.is_relative_to(base):
            path = path.relative_to(base)
            break
    return f"{path}:{line}({name})"


# The flow's steps, and the parts of them the issue is about ("of which"), as "module:qualname";
# where several are named, the times of those that exist in this version of the code add up.
STEPS = [
    ("decode (bytes -> PlayEvent, per event)", ["stream.dataflow:decode"]),
    ("remember (per-user state and features, per event)", ["stream.dataflow:RememberUser.on_item"]),
    ("of which UserState.add", ["stream.state:UserState.add"]),
    ("score (per micro-batch)", ["stream.dataflow:ScoreBatch.__call__"]),
    ("of which the model (IncrementalScorer.predict_users)", ["model.serving.incremental:IncrementalScorer.predict_users"]),
    ("of which model outputs -> update parts (to_scores, score_columns, intent_update)",
     ["model.serving.scorer:Scorer.to_scores", "model.serving.scorer:Scorer.score_columns", "stream.dataflow:intent_update"]),
    ("encode (updates -> KafkaSinkMessages)", ["stream.dataflow:UpdateMessages.__call__"]),
]


def code_key(name: str) -> tuple[str, int, str] | None:
    """The profiler's key of a function named "module:qualname", None where this code has none."""
    module, qualname = name.split(":")
    target = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part, None)
        if target is None:
            return None
    code = target.__code__
    return code.co_filename, code.co_firstlineno, code.co_name


def steps(profiler: cProfile.Profile, wall_s: float, events: int) -> list[str]:
    """The time of each of STEPS, as a share of the run and in microseconds per event (profiled)."""
    stats = pstats.Stats(profiler).stats
    per_event_us = 1e6 * wall_s / events
    lines = ["| step | cumulative % | µs per event (profiled) | calls |", "|---|---:|---:|---:|"]
    top_level = 0.0
    for label, names in STEPS:
        found = [stats[key] for key in map(code_key, names) if key in stats]
        share = sum(entry[3] for entry in found) / wall_s
        part_of_a_step = label.startswith("of which")
        if not part_of_a_step:
            top_level += share
        calls = sum(entry[1] for entry in found)
        indent = "&nbsp;&nbsp;" if part_of_a_step else ""
        lines.append(f"| {indent}{label} | {100 * share:.1f} | {share * per_event_us:.1f} | {calls:,} |")
    rest = 1 - top_level
    lines.append(f"| the rest (Bytewax, source, sink, counting) | {100 * rest:.1f} | {rest * per_event_us:.1f} | |")
    lines.append(f"| the whole run | 100.0 | {per_event_us:.1f} | |")
    return lines


def breakdown(profiler: cProfile.Profile, wall_s: float, top: int) -> list[str]:
    stats = pstats.Stats(profiler)
    rows = sorted(stats.stats.items(), key=lambda item: item[1][3], reverse=True)  # by cumulative time
    lines = ["| function | cumulative % | own % | calls |", "|---|---:|---:|---:|"]
    for function, (_primitive_calls, calls, own_s, cumulative_s, _callers) in rows[:top]:
        lines.append(f"| `{where(function)}` | {100 * cumulative_s / wall_s:.1f} | {100 * own_s / wall_s:.1f} | {calls:,} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=400, help="streamed users of the synthetic world")
    parser.add_argument("--batch-size", type=int, default=StreamSettings.batch_size, help="micro-batch cap")
    parser.add_argument("--format", default="msgpack", choices=["json", "msgpack"])
    parser.add_argument("--top", type=int, default=25, help="functions listed")
    parser.add_argument("--out", type=Path, default=None, help="also write the section to this file")
    args = parser.parse_args(argv)
    command = "python bench/profile_stream.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(1)

    # The demo's world and small model, trained once with `intentstream demo --days 60`'s options.
    world = DemoOptions(seed=0, train_users=400, stream_users=args.users, titles=400, days=60, epochs=8)
    training, streamed = demo_world(world)
    if len(streamed) < args.events:
        parser.error(f"the world has {len(streamed)} events of {args.users} users to stream; ask for at most that many")
    model_dir = train_or_reuse(world, training, lambda text: print(text, file=sys.stderr), progress=False)
    events = streamed[: args.events]
    messages = source_messages(events, args.format)
    settings = StreamSettings(brokers="unused:9092", model_dir=model_dir, format=args.format, batch_size=args.batch_size)

    plain_s, written = run_flow(settings, messages)
    profiler = cProfile.Profile()
    profiled_s, _ = run_flow(settings, messages, profiler)

    users = len({e.user_id for e in events})
    lines = [
        f"Command: `{command}`",
        "",
        f"- {len(events):,} events of {users} users, {args.format}, batch cap {args.batch_size}, model "
        f"{model_dir.name}, torch threads 1; {written:,} messages written (updates and latest)",
        f"- Without the profiler: {plain_s:.2f} s, {len(events) / plain_s:,.0f} events/s",
        f"- Under cProfile: {profiled_s:.2f} s, {len(events) / profiled_s:,.0f} events/s; shares below are of this time",
        "",
        *steps(profiler, profiled_s, len(events)),
        "",
        f"The top {args.top} functions by cumulative time:",
        "",
        *breakdown(profiler, profiled_s, args.top),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
