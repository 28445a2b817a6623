"""State at scale: the stream holding 1,000, 100,000 and 1,000,000 users of a few events each, fed
from memory: events/s, resident memory per user, snapshot time and recovery-store bytes per user at
the default snapshot interval, and whether memory stays within what `--ttl` and `--kv-cache-mb`
promise.

    python bench/state_scale.py [--users 1000,100000,1000000] [--events-per-user 2] [--model default]

The flow is the one `intentstream run` executes (stream.dataflow.build_flow) with the serving scorer
and its KV cache, in a fresh spawned process per run, torch threads 1, on one Bytewax worker
(bytewax.testing.run_main). Its input is a source that makes the messages as it goes (msgpack play
events, 1,000 per batch like the Kafka source's), its output a sink that only counts: no broker.
Users are the bench world's streamed users' first events under new user and event ids, user n
taking template n mod 596; a phase sends every user's first event, then every user's second one.

Each run is a plan of phases: events of a range of users, idle waits, and measurements. A
measurement waits until the flow has drained (it reads the source again only once the rest of the
flow is done with what it was given), then reads this process's resident memory (VmRSS, and its peak
VmHWM) and the KV cache's own bytes (the slots that have held a user, in its tensors and host
arrays, and the rows its entries keep to recognise them). A run first sends 2,000 warm-up users
(model buffers, allocator arenas), so that memory per user = (resident memory - KV cache) after
the measured users - the same after the warm-up, divided by the measured users.

- held N: warm-up, N users; with a Bytewax RecoveryConfig (a fresh SQLite directory) and the
  default snapshot interval (StreamSettings.snapshot_interval_s). Snapshots: the remember step's
  `snapshot` calls, grouped into one pass per epoch (calls more than 0.5 s apart start a new one);
  the flow's pause at an epoch's close = the gap between the source's two reads around the pass
  minus the median gap between reads. Store bytes = the directory's files after the run, per user
  whose snapshot it holds (warm-up users included).
  Then the same without recovery: events/s, and the snapshots' share of the time.
  With `--no-ttl-notifications` the users ask Bytewax for no TTL notification (what scheduling
  them costs at scale; such users are never forgotten).
- KV cache bound: held 100,000 with `--kv-cache-mb` 16: the cache's bytes and users against 16 MiB.
- TTL: `--ttl` 20 s (lateness 10 s): N users of one event each, an idle wait past the TTL, then N
  other users; the states held (the remember step's users made minus forgotten) and resident memory
  after each.

Writes bench/results/state-scale.md.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import shlex
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, this file's directory comes first on sys.path; look in the project instead.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from bench.scorer_alone import SOURCE_BATCH  # noqa: E402
from bench.world import BenchWorld  # noqa: E402
from stream.settings import StreamSettings  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "state-scale.md"
FORMAT = "msgpack"
WARM_UP_USERS = 2000
DRAIN_S = 0.2  # a measurement's wait for the flow to finish what it was given
NEW_PASS_AFTER_S = 0.5  # snapshot calls further apart than this belong to different epochs
MIB = 1 << 20


# ---------------------------------------------------------------------------------------------
# A run's plan, and what it measured
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Events:
    """Every user's first event, then every user's second, ..., of users first .. first + count - 1."""

    first: int
    count: int
    per_user: int
    name: str = ""  # a phase whose speed is reported


@dataclass(frozen=True)
class Idle:
    seconds: float


@dataclass(frozen=True)
class Measure:
    label: str


@dataclass
class Reading:
    """A measurement, once the flow had drained."""

    rss: int
    peak_rss: int
    kv_bytes: int
    kv_users: int
    kv_max_users: int
    states_held: int  # remember-step users made - forgotten
    messages_written: int
    events_sent: int


@dataclass
class SnapshotPass:
    start: float  # perf_counter of the first snapshot call
    end: float  # ... and after the last one returned
    calls: int


@dataclass
class RunResult:
    readings: dict[str, Reading]
    phases: dict[str, tuple[int, float]]  # name -> (events, seconds)
    passes: list[SnapshotPass]
    reads: list[tuple[float, bool]]  # (perf_counter, handed over events) of every call of the source's next_batch
    wall_s: float
    store_bytes: int | None  # recovery directory's files
    store_rows: int | None  # rows of its snaps table
    store_payload_bytes: int | None  # their pickled snapshots
    message_us: float  # making one message, measured apart


@dataclass(frozen=True)
class RunSpec:
    model_dir: Path
    plan: tuple
    recovery: bool
    kv_cache_mb: int = StreamSettings.kv_cache_mb
    ttl_s: float = StreamSettings.ttl_s
    lateness_s: float = StreamSettings.lateness_s
    ttl_notifications: bool = True  # False: users ask Bytewax for no TTL notification (never forgotten)


# ---------------------------------------------------------------------------------------------
# The child process
# ---------------------------------------------------------------------------------------------


def resident_bytes() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


def kv_cache_bytes(cache) -> int:
    """The cache's slots that have held a user (its tensors and host arrays; on the CPU the others
    are allocated but never written, so not resident), and the rows its entries keep."""
    slots = len(cache.next)
    tensors = sum(t.element_size() * t.numel() for t in (cache.keys_values, cache.pointer_keys))
    arrays = sum(a.nbytes for a in (cache.items, cache.ts, cache.valid, cache.next))
    written = (tensors + arrays) * cache.used_slots // slots if slots else 0
    return written + sum(len(entry.rows or b"") for entry in cache.entries.values())


def run_plan(spec: RunSpec, templates: list) -> RunResult:
    """Build the flow as `intentstream run` does, feed it the plan, and measure (in a fresh process)."""
    import torch

    torch.set_num_threads(1)
    from bytewax.connectors.kafka import KafkaSourceMessage
    from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.recovery import RecoveryConfig, init_db_dir
    from bytewax.testing import run_main

    import stream.dataflow
    from model.serving.incremental import load_serving_scorer
    from schemas import encode_play_event
    from stream.dataflow import RememberUser, build_flow

    settings = StreamSettings(brokers="unused:9092", model_dir=spec.model_dir, format=FORMAT,
                              kv_cache_mb=spec.kv_cache_mb, ttl_s=spec.ttl_s, lateness_s=spec.lateness_s)  # fmt: skip
    scorer = load_serving_scorer(settings.model_dir, settings.backend, settings.kv_cache_bytes)
    # One event a millisecond, the last one a minute ago.
    start_ms = int(time.time() * 1000) - 60_000 - sum(step.count * step.per_user for step in spec.plan
                                                       if isinstance(step, Events))  # fmt: skip
    passes: list[SnapshotPass] = []
    reads: list[tuple[float, bool]] = []  # (perf_counter, handed over events) of each next_batch

    class Users:
        made = 0
        forgotten = 0

    class CountedRememberUser(RememberUser):
        """The remember step's logic, counting users made and forgotten and timing snapshots."""

        def __init__(self, shared, resume):
            super().__init__(shared, resume)
            Users.made += 1

        def on_notify(self):
            Users.forgotten += 1
            return super().on_notify()

        def notify_at(self):
            return super().notify_at() if spec.ttl_notifications else None

        def snapshot(self):
            started = time.perf_counter()
            snapshot = super().snapshot()
            ended = time.perf_counter()
            if passes and started - passes[-1].end < NEW_PASS_AFTER_S:
                passes[-1].end, passes[-1].calls = ended, passes[-1].calls + 1
            else:
                passes.append(SnapshotPass(started, ended, 1))
            return snapshot

    stream.dataflow.RememberUser = CountedRememberUser  # build_flow makes the step's logic from this name

    def message(user: int, number: int, offset: int) -> KafkaSourceMessage:
        template = templates[user % len(templates)][number]
        user_id = f"user-{user:07d}"
        event = replace(template, user_id=user_id, event_id=f"{user_id}-{number}", ts=start_ms + offset)
        return KafkaSourceMessage(key=user_id.encode(), value=encode_play_event(event, FORMAT), topic="plays",
                                  partition=0, offset=offset)  # fmt: skip

    def messages(step: Events, offset: int):
        for number in range(step.per_user):
            for user in range(step.first, step.first + step.count):
                yield message(user, number, offset)
                offset += 1

    sink_count = [0]

    class CountingSink(DynamicSink):
        def build(self, step_id, worker_index, worker_count):
            return CountingPartition()

    class CountingPartition(StatelessSinkPartition):
        def write_batch(self, items) -> None:
            sink_count[0] += len(items)

    readings: dict[str, Reading] = {}
    phases: dict[str, tuple[int, float]] = {}

    class PlanPartition(StatefulSourcePartition):
        def __init__(self) -> None:
            self.awake: datetime | None = None
            self.sent = 0
            self.batches = self._batches()

        def next_batch(self):
            read_at = time.perf_counter()
            self.awake = None
            batch = next(self.batches)
            reads.append((read_at, bool(batch)))
            return batch

        def next_awake(self):
            return self.awake

        def snapshot(self):
            return None

        def _pause(self, seconds: float):
            """Hand over nothing, and be asked again in `seconds`."""
            self.awake = datetime.now(timezone.utc) + timedelta(seconds=seconds)
            return []

        def _batches(self):
            for step in spec.plan:
                if isinstance(step, Events):
                    started, batch = time.perf_counter(), []
                    for one in messages(step, self.sent):
                        batch.append(one)
                        if len(batch) == SOURCE_BATCH:
                            yield batch
                            batch = []
                    if batch:
                        yield batch
                    self.sent += step.count * step.per_user
                    yield []  # asked again once the rest of the flow is done with the last batch
                    if step.name:
                        phases[step.name] = (step.count * step.per_user, time.perf_counter() - started)
                elif isinstance(step, Idle):
                    deadline = time.perf_counter() + step.seconds
                    while time.perf_counter() < deadline:
                        yield self._pause(min(0.5, deadline - time.perf_counter()))
                else:
                    yield self._pause(DRAIN_S)
                    rss, peak = resident_bytes()
                    cache = scorer.cache
                    readings[step.label] = Reading(rss, peak, kv_cache_bytes(cache), len(cache), cache.max_users,
                                                   Users.made - Users.forgotten, sink_count[0], self.sent)

    class PlanSource(FixedPartitionedSource):
        def list_parts(self):
            return ["plan"]

        def build_part(self, step_id, for_part, resume_state):
            return PlanPartition()

    sample = Events(0, min(20_000, len(templates) * 50), 1)
    started = time.perf_counter()
    for _ in messages(sample, 0):
        pass
    message_us = 1e6 * (time.perf_counter() - started) / sample.count

    flow = build_flow(settings, scorer, source=PlanSource(), sink=CountingSink())
    with tempfile.TemporaryDirectory(prefix="state-scale-recovery-") as directory:
        recovery = None
        if spec.recovery:
            init_db_dir(Path(directory), 1)
            recovery = RecoveryConfig(directory)
        started = time.perf_counter()
        run_main(flow, epoch_interval=timedelta(seconds=settings.snapshot_interval_s), recovery_config=recovery)
        wall_s = time.perf_counter() - started
        store_bytes = store_rows = store_payload = None
        if spec.recovery:
            import sqlite3

            store_bytes = sum(path.stat().st_size for path in Path(directory).iterdir())
            with sqlite3.connect(Path(directory) / "part-0.sqlite3") as db:
                store_rows, store_payload = db.execute("SELECT COUNT(*), SUM(LENGTH(ser_change)) FROM snaps").fetchone()
    return RunResult(readings, phases, passes, reads, wall_s, store_bytes, store_rows, store_payload, message_us)


def run_in_child(spec: RunSpec, templates: list) -> RunResult:
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as child:
        return child.submit(run_plan, spec, templates).result()


# ---------------------------------------------------------------------------------------------
# The runs
# ---------------------------------------------------------------------------------------------


@dataclass
class Held:
    users: int
    with_recovery: RunResult
    without_recovery: RunResult | None

    def memory_per_user(self, result: RunResult) -> float:
        warm, held = result.readings["warm"], result.readings["held"]
        return ((held.rss - held.kv_bytes) - (warm.rss - warm.kv_bytes)) / self.users

    def events_per_s(self, result: RunResult) -> float:
        events, seconds = result.phases["held"]
        return events / seconds


def held_plan(users: int, per_user: int) -> tuple:
    return (Events(0, WARM_UP_USERS, per_user), Measure("warm"),
            Events(WARM_UP_USERS, users, per_user, name="held"), Measure("held"))  # fmt: skip


def pauses(result: RunResult) -> list[float]:
    """The flow's pause at each epoch's snapshot pass that falls between two reads of the source
    that handed over events (not in a measurement's or an idle wait)."""
    reads = result.reads
    gaps = [b - a for (a, data), (b, _) in zip(reads, reads[1:]) if data]
    if not gaps:
        return []
    typical = statistics.median(gaps)
    found = []
    for snapshot_pass in result.passes:
        before = [(t, data) for t, data in reads if t <= snapshot_pass.start]
        after = [t for t, _ in reads if t >= snapshot_pass.end]
        if before and after and before[-1][1]:
            found.append(after[0] - before[-1][0] - typical)
    return found


@dataclass
class TtlRun:
    users: int
    ttl_s: float
    result: RunResult


@dataclass
class Report:
    command: str
    header: list[str]
    held: list[Held] = field(default_factory=list)
    kv_bound: tuple[int, int, RunResult] | None = None  # (users, MB, result)
    ttl: TtlRun | None = None


def _mb(value: float) -> str:
    return f"{value / MIB:,.1f}"


def held_row(held: Held) -> str:
    on, off = held.with_recovery, held.without_recovery
    reading = on.readings["held"]
    found = pauses(on)
    pause = f"{statistics.median(found):.2f} / {max(found):.2f}" if found else "n/a (one pass, at the end)"
    stored_users = held.users + WARM_UP_USERS  # the store keeps the warm-up users' snapshots too
    store = f"{on.store_bytes / stored_users:,.0f} ({on.store_payload_bytes / stored_users:,.0f})"
    cells = [
        f"{held.users:,}", f"{held.events_per_s(on):,.0f}", f"{held.events_per_s(off):,.0f}" if off else "n/a",
        f"{_mb(reading.rss)} ({_mb(reading.peak_rss)})", f"{_mb(reading.kv_bytes)} ({reading.kv_users:,})",
        f"{held.memory_per_user(on):,.0f} B", str(len(on.passes)),
        f"{statistics.median(p.calls for p in on.passes):,.0f}", pause, store,
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def held_details(held: Held) -> str:
    on, off = held.with_recovery, held.without_recovery
    reading = on.readings["held"]
    without = "not run without"
    if off is not None:
        without = f"{off.wall_s:.1f} s without ({100 * (on.wall_s - off.wall_s) / off.wall_s:+.1f}%)"
    calls = sum(p.calls for p in on.passes)
    in_calls_s = sum(p.end - p.start for p in on.passes)
    return (f"- {held.users:,} users: run wall {on.wall_s:.1f} s with recovery, {without}; {calls:,} snapshot calls "
            f"in {len(on.passes)} passes, {in_calls_s:.2f} s in the calls themselves; recovery store "
            f"{_mb(on.store_bytes)} MB, {on.store_rows:,} snapshot rows; making the messages {on.message_us:.1f} µs "
            f"per event (inside the events/s); {reading.messages_written:,} messages written for "
            f"{reading.events_sent:,} events (each update goes to the updates and the latest topic)")  # fmt: skip


def render(report: Report) -> str:
    lines = ["# State at scale: users held, memory, snapshots", "", f"Command: `{report.command}`", "",
             *report.header, ""]  # fmt: skip
    lines += [
        "| users held | events/s (recovery on) | events/s (recovery off) | resident MB at the end (peak) | "
        "KV cache MB (users) | memory per user, KV cache apart | epochs snapshotted | users per epoch's snapshot | "
        "pause per epoch median / max s | store bytes per user (snapshot payload) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(held_row(held) for held in report.held),
        "",
        *(held_details(held) for held in report.held),
    ]
    if report.kv_bound is not None:
        users, limit_mb, result = report.kv_bound
        reading = result.readings["held"]
        within = "within" if reading.kv_bytes <= limit_mb * MIB else "OVER"
        lines += [
            "",
            f"KV cache bound (`--kv-cache-mb {limit_mb}`, {users:,} users held after the warm-up): the cache holds "
            f"{_mb(reading.kv_bytes)} MB for {reading.kv_users:,} users (at most {reading.kv_max_users:,}): {within} "
            f"its {limit_mb} MiB; resident {_mb(reading.rss)} MB (peak {_mb(reading.peak_rss)})",
        ]
    if report.ttl is not None:
        ttl = report.ttl
        readings = ttl.result.readings
        lines += [
            "",
            f"TTL (`--ttl {ttl.ttl_s:g}s`, {ttl.users:,} users of one event, an idle wait past the TTL, then "
            f"{ttl.users:,} other users):",
            "",
            "| moment | states held | resident MB | KV cache MB |",
            "|---|---:|---:|---:|",
        ]
        for label, words in (("first", "after the first users"), ("idle", "after the idle wait"),
                             ("second", "after the other users")):  # fmt: skip
            reading = readings[label]
            lines.append(f"| {words} | {reading.states_held:,} | {_mb(reading.rss)} | {_mb(reading.kv_bytes)} |")
    lines += ["", "How it is measured: see the docstring of bench/state_scale.py."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", default="1000,100000,1000000", help="users held, comma-separated")
    parser.add_argument("--events-per-user", type=int, default=2)
    parser.add_argument("--model", choices=("default", "small"), default="default",
                        help="IntentRec's default V3 (bench/stream.py's) or the demo's small model")  # fmt: skip
    parser.add_argument("--kv-bound-users", type=int, default=100_000)
    parser.add_argument("--kv-bound-mb", type=int, default=16)
    parser.add_argument("--ttl-users", type=int, default=100_000)
    parser.add_argument("--ttl-s", type=float, default=20.0)
    parser.add_argument("--without-recovery", action=argparse.BooleanOptionalAction, default=True,
                        help="also run each size without recovery")  # fmt: skip
    parser.add_argument("--ttl-notifications", action=argparse.BooleanOptionalAction, default=True,
                        help="held runs: each user asks Bytewax for its TTL notification, as the flow does; without, "
                        "what scheduling them costs shows (users are then never forgotten)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started = time.monotonic()
    command = "python bench/state_scale.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    say = lambda text: print(text, flush=True)  # noqa: E731
    sizes = [int(n) for n in args.users.split(",")]

    world = BenchWorld(small_model=args.model == "small")
    streamed, model_dir = world.streamed, world.model(say)
    by_user: dict[str, list] = {}
    for event in streamed:
        by_user.setdefault(event.user_id, []).append(event)
    templates = [events[: args.events_per_user] for events in by_user.values() if len(events) >= args.events_per_user]

    from model.serving.kv_cache import KVCache
    from model.serving.scorer import Scorer

    scorer = Scorer.load(model_dir)

    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    which = "IntentRec's default V3" if args.model == "default" else "the demo's small model (SMALL_MODEL)"
    header = [
        f"- Machine: {os.cpu_count()} logical CPUs, load average {load} at the start",
        f"- Model: {model_dir.name} ({which}): history_len {scorer.history_len}, attention window "
        f"{scorer.config.attention_window}; KV cache {KVCache.bytes_per_user(scorer.config):,} bytes per cached user",
        f"- Users: {args.events_per_user} events each, from {len(templates)} templates; {WARM_UP_USERS:,} warm-up users "
        f"first; torch threads 1, one Bytewax worker, batch cap {StreamSettings.batch_size}, snapshot interval "
        f"{StreamSettings.snapshot_interval_s:g} s, KV cache {StreamSettings.kv_cache_mb} MB unless said; held users "
        + ("ask for their TTL notification, as in the flow" if args.ttl_notifications else
           "ask for NO TTL notification (--no-ttl-notifications)"),
    ]
    del scorer
    report = Report(command, header)
    for users in sizes:
        plan = held_plan(users, args.events_per_user)
        say(f"[held {users:,}] with recovery ...")
        notifications = args.ttl_notifications
        on = run_in_child(RunSpec(model_dir, plan, recovery=True, ttl_notifications=notifications), templates)
        off = None
        if args.without_recovery:
            say(f"[held {users:,}] without recovery ...")
            off = run_in_child(RunSpec(model_dir, plan, recovery=False, ttl_notifications=notifications), templates)
        report.held.append(Held(users, on, off))
        say(render(report))
    if args.kv_bound_users:
        say(f"[kv cache bound] {args.kv_bound_users:,} users, --kv-cache-mb {args.kv_bound_mb} ...")
        result = run_in_child(RunSpec(model_dir, held_plan(args.kv_bound_users, args.events_per_user), recovery=False,
                                      kv_cache_mb=args.kv_bound_mb), templates)  # fmt: skip
        report.kv_bound = (args.kv_bound_users, args.kv_bound_mb, result)
    if args.ttl_users:
        say(f"[ttl] {args.ttl_users:,} users, --ttl {args.ttl_s:g}s ...")
        n = args.ttl_users
        # One event per user: a user's second event would come more than the TTL after its first
        # in event time (one event a millisecond), and find a fresh state anyway.
        plan = (Events(0, n, 1), Measure("first"), Idle(args.ttl_s + 5), Measure("idle"), Events(n, n, 1),
                Measure("second"))  # fmt: skip
        result = run_in_child(RunSpec(model_dir, plan, recovery=False, ttl_s=args.ttl_s, lateness_s=args.ttl_s / 2),
                              templates)  # fmt: skip
        report.ttl = TtlRun(n, args.ttl_s, result)
    text = render(report) + f"\nThe whole run took {time.monotonic() - started:.0f}s.\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    say(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
