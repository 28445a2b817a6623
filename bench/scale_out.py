"""Scale-out: the stream at saturation on 2 input partitions, one Bytewax process against a cluster of
two (`intentstream run --process-id/--addresses`), through Apache Kafka, with where the CPU goes.

    python bench/scale_out.py [--brokers HOST:PORT] [--events 60000] [--users 2000] [--repeats 2]

The flow is the dataflow of `intentstream run` (stream.dataflow.build_flow, in spawned processes
as bench/stream.py runs it: stream.harness.DataflowProcess), the bench's default V3 model (trained
for one epoch on the world's other users and cached, as bench/stream.py's), torch threads 1 in
every process, batch cap 256. Without `--brokers` an Apache Kafka broker is started from the jars
in INTENTSTREAM_BROKER_JARS (stream.kafka.apache_broker), its JVM compiling with C2 as a long-running
broker does (the tests' C1-only option starts faster and costs CPU under load); the embedded Tansu
broker is a bottleneck of its own.

Each measurement loads a fresh 2-partition input topic with the same messages (the synthetic
world's streamed users, keyed by user, in event-time order), then runs the flow to the input's end
(stop_at_end) as 1 process reading both partitions, or as 2 processes reading one each; users'
events cross to the process that holds their state. events/s = updates / (the last update's broker
timestamp - the first message read by any process), so process start, cluster formation and model
load are not included (as bench/stream.py's saturation). After one unrecorded run (the broker's
JIT compiler warms up), the two kinds of run alternate, `--repeats` times each; the ratio is of the
medians.

Where the time goes: every 0.1 s the CPU time (user + system, all threads) of each flow process,
the broker and this process is read from /proc, and the machine's busy time from /proc/stat; the
cores each used over the span that events/s is measured on are reported, with what the rest of the
machine used. The flows also count their model calls and the score step's time (StreamCounters).

The machine's own parallel speed-up, measured first: a pure-Python loop in two processes at once
against one alone (2.0 where the two logical CPUs are free cores of their own); and the model's:
the serving scorer alone (bench/stream.py's row, its predict_users calls timed) on all the events
in one process, against two processes at once (started together), each on half of the users. Last,
a control: the 1-process run again with a pure-Python loop keeping the other core busy, to tell
what a busy machine costs a flow from what a cluster adds.

Same updates: the 2-process run's updates, deduplicated by (user_id, event_id), are compared with
the 1-process run's: the same events, and for each the same model, top labels and next items, and
every probability, weight and score within 1e-5 (the processes' micro-batches hold other users, and
batched arithmetic may differ in the last bits; so may the order of two next items whose scores
tie within 1e-5). The flows run with `--new-titles 0`: each process registers the titles first seen
in its own users' plays, so with an open catalogue updates differ between cluster sizes by design
(README, "Titles first seen in the stream"). Writes bench/results/scale-out.md.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import shlex
import statistics
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, this file's directory comes first on sys.path; look in the project instead.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402

from bench.compiled import compile_beside  # noqa: E402
from bench.world import BenchWorld  # noqa: E402
from schemas import IntentUpdate, decode_intent_update, encode_play_event  # noqa: E402
from stream.harness import DataflowProcess, FlowCounts, StreamTopics  # noqa: E402
from stream.kafka.apache_broker import JVM_OPTIONS, ApacheKafkaBroker  # noqa: E402
from stream.kafka.broker import free_loopback_ports, produce_messages, read_topic  # noqa: E402
from stream.settings import StreamSettings  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "scale-out.md"
FORMAT = "msgpack"
PARTITIONS = 2
SAMPLE_EVERY_S = 0.1
TOLERANCE = 1e-5
# The tests' broker options without C1-only compilation: quick to start, slower at full load.
BROKER_JVM_OPTIONS = tuple(option for option in JVM_OPTIONS if not option.startswith("-XX:TieredStopAtLevel"))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

Key = tuple[str, str]  # (user_id, event_id)


# ---------------------------------------------------------------------------------------------
# CPU time, from /proc
# ---------------------------------------------------------------------------------------------


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of every thread of `pid` so far; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14 and 15 of stat)


def machine_busy_s() -> float:
    """CPU seconds all cores spent on anything but idle and I/O wait since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle, iowait = values[3], values[4]
    return (sum(values[:8]) - idle - iowait) / CLOCK_TICKS  # user .. steal; guest time is inside user


@dataclass
class CpuSample:
    at: float  # epoch seconds
    processes: dict[str, float]  # name -> CPU seconds so far
    machine: float


class CpuSampler(threading.Thread):
    """Reads the CPU time of named processes and of the machine every SAMPLE_EVERY_S seconds."""

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(name="cpu-sampler", daemon=True)
        self.pids = pids
        self.samples: list[CpuSample] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            cpu = {name: process_cpu_s(pid) for name, pid in self.pids.items()}
            alive = {name: seconds for name, seconds in cpu.items() if seconds is not None}
            self.samples.append(CpuSample(time.time(), alive, machine_busy_s()))
            self.halt.wait(SAMPLE_EVERY_S)

    def cores_between(self, start: float, end: float) -> dict[str, float]:
        """Cores each process used between the samples nearest to `start` and `end`; "machine":
        everything, "other": everything but the named processes (other jobs, the kernel)."""
        first = min(self.samples, key=lambda s: abs(s.at - start))
        last = min(self.samples, key=lambda s: abs(s.at - end))
        span = last.at - first.at
        if span <= 0:
            return {}
        cores = {name: (last.processes[name] - first.processes[name]) / span
                 for name in last.processes if name in first.processes}  # fmt: skip
        cores["machine"] = (last.machine - first.machine) / span
        cores["other"] = max(0.0, cores["machine"] - sum(v for name, v in cores.items() if name != "machine"))
        return cores


# ---------------------------------------------------------------------------------------------
# The machine's own parallel speed-up
# ---------------------------------------------------------------------------------------------

BUSY_LOOP_STEPS = 30_000_000


def busy_loop(steps: int) -> float:
    """Seconds of a pure-Python loop of `steps` steps (one core, the interpreter's own work)."""
    started = time.perf_counter()
    total = 0
    for step in range(steps):
        total += step % 7
    return time.perf_counter() - started


def machine_speed_up() -> float:
    """How much more the same pure-Python work two processes at once get done than one alone: 2.0 on
    two free cores; less where the cores are shared (hyperthreads of one core, a busy host)."""
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(busy_loop, [BUSY_LOOP_STEPS // 10] * 2)  # both interpreters started and warm
        alone = pool.apply(busy_loop, (BUSY_LOOP_STEPS,))
        together = pool.map(busy_loop, [BUSY_LOOP_STEPS] * 2)
    return 2 * alone / max(together)


def scorer_alone(model_dir: Path, events: list, batch_size: int, start_together=None) -> tuple[int, float]:
    """(events scored, seconds in its predict_users calls) of the serving scorer alone on `events`:
    bench/stream.py's `serving scorer alone` row (histories from the stream's per-user state, batches
    of SOURCE_BATCH cut into model calls as the score step cuts them). `start_together`: a barrier
    that every process waits at, its model loaded, before scoring."""
    import torch

    torch.set_num_threads(1)
    from bench.scorer_alone import predict_seconds, score_requests

    scorer, requests = score_requests(model_dir, events, batch_size)
    if start_together is not None:
        start_together.wait()
    spent_s = predict_seconds(scorer, requests, batch_size)
    return len(requests), spent_s


def scorer_speed_up(model_dir: Path, events: list, batch_size: int) -> tuple[float, float]:
    """(events/s of the serving scorer alone on all `events` in one process, how much more two
    processes at once get done, each on half of the users)."""
    users = sorted({event.user_id for event in events})
    halves = [set(users[0::2]), set(users[1::2])]
    with multiprocessing.Manager() as manager, multiprocessing.get_context("spawn").Pool(2) as pool:
        scored, alone_s = pool.apply(scorer_alone, (model_dir, events, batch_size))
        barrier = manager.Barrier(2)
        shares = [[event for event in events if event.user_id in half] for half in halves]
        together = pool.starmap(scorer_alone, [(model_dir, share, batch_size, barrier) for share in shares])
    alone = scored / alone_s
    return alone, sum(n for n, _ in together) / max(s for _, s in together) / alone


# ---------------------------------------------------------------------------------------------
# One measurement
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    processes: int
    events_per_s: float | None
    updates: dict[Key, IntentUpdate]  # deduplicated
    copies: int  # update messages read, copies included
    counts: list[FlowCounts | None]  # per process
    cores: dict[str, float]  # see CpuSampler.cores_between
    span_s: float | None
    beside_busy_loop: bool = False  # a control: a pure-Python loop kept the other core busy



def measure(bootstrap: str, broker_pid: int | None, model_dir: Path, messages, processes: int, args,
            beside_busy_loop: bool = False) -> Run:  # fmt: skip
    topics = StreamTopics.named(f"scale-out-{uuid.uuid4().hex[:6]}-{processes}p-")
    topics.create(bootstrap, partitions=PARTITIONS)
    produce_messages(bootstrap, topics.input, messages)
    addresses = tuple(f"127.0.0.1:{port}" for port in free_loopback_ports(processes)) if processes > 1 else ()
    flows = [
        DataflowProcess(
            StreamSettings(
                brokers=bootstrap, model_dir=model_dir, format=FORMAT, input_topic=topics.input,
                output_topic=topics.output, dlq_topic=topics.dlq, latest_topic=topics.latest,
                batch_size=args.batch_size, stop_at_end=True, new_titles=0,
                process_id=process_id if addresses else None, addresses=addresses,
            ),
            torch_threads=1,
        )  # fmt: skip
        for process_id in range(processes)
    ]
    busy = multiprocessing.get_context("spawn").Process(target=busy_loop, args=(10**12,), daemon=True)
    try:
        if beside_busy_loop:
            busy.start()
        for flow in flows:
            flow.start()
        pids = {f"flow {i}": flow.pid for i, flow in enumerate(flows)}
        if beside_busy_loop:
            pids["busy loop"] = busy.pid
        pids["bench"] = os.getpid()
        if broker_pid is not None:
            pids["broker"] = broker_pid
        sampler = CpuSampler(pids)
        sampler.start()
        deadline = time.monotonic() + args.timeout
        counts = [flow.wait_finished(timeout=max(1.0, deadline - time.monotonic())) for flow in flows]
        sampler.halt.set()
        sampler.join()
    finally:
        for flow in flows:
            flow.stop()
        if busy.is_alive():
            busy.kill()
            busy.join()
    records = read_topic(bootstrap, topics.output, count=len(messages), timeout=60)
    topics.delete(bootstrap)
    updates = {}
    for record in records:
        update = decode_intent_update(record.value, FORMAT)
        updates.setdefault((update.user_id, update.event_id), update)
    first_reads = [c.first_read_at for c in counts if c is not None and c.first_read_at is not None]
    events_per_s = span_s = None
    cores: dict[str, float] = {}
    if records and first_reads and len(first_reads) == processes:
        first_read, last_update = min(first_reads), max(r.timestamp_ms for r in records) / 1000.0
        span_s = last_update - first_read
        events_per_s = len(records) / span_s if span_s > 0 else None
        cores = sampler.cores_between(first_read, last_update)
    return Run(processes, events_per_s, updates, len(records), counts, cores, span_s, beside_busy_loop)


# ---------------------------------------------------------------------------------------------
# Same updates
# ---------------------------------------------------------------------------------------------


@dataclass
class Comparison:
    compared: int
    equal: int
    max_difference: float
    missing: int  # in the reference, not in the other
    extra: int  # in the other, not in the reference
    example: str | None  # the first difference, in words


def difference(a: IntentUpdate, b: IntentUpdate) -> tuple[str | None, float]:
    """(what differs other than numbers, in words, or None; the largest difference of a number)."""
    if (a.ts, a.model) != (b.ts, b.model):
        return "event time or model", float("inf")
    if a.intents.keys() != b.intents.keys() or a.intent_weights.keys() != b.intent_weights.keys():
        return "intent tasks", float("inf")
    scores_a, scores_b = [i.score for i in a.next_items], [i.score for i in b.next_items]
    if [i.item_id for i in a.next_items] != [i.item_id for i in b.next_items] and not (
        len(scores_a) == len(scores_b) and np.allclose(scores_a, scores_b, rtol=0, atol=TOLERANCE)
    ):
        return "next items", float("inf")  # items in another order only where their scores tie within TOLERANCE
    for task, labels in a.intents.items():
        if [label.label for label in labels] != [label.label for label in b.intents[task]]:
            return f"top labels of {task}", float("inf")
    def numbers(update: IntentUpdate) -> list[float]:  # in a's order of tasks
        return [*update.intent_embedding, *(update.intent_weights[task] for task in a.intent_weights),
                *(item.score for item in update.next_items),
                *(label.p for task in a.intents for label in update.intents[task])]  # fmt: skip

    numbers_a, numbers_b = numbers(a), numbers(b)
    if len(numbers_a) != len(numbers_b):
        return "the number of scores", float("inf")
    if not numbers_a:
        return None, 0.0
    return None, float(np.max(np.abs(np.asarray(numbers_a) - np.asarray(numbers_b))))


def compare(reference: dict[Key, IntentUpdate], other: dict[Key, IntentUpdate]) -> Comparison:
    equal, largest, example = 0, 0.0, None
    shared = reference.keys() & other.keys()
    for key in sorted(shared):
        what, diff = difference(reference[key], other[key])
        largest = max(largest, diff)
        if what is None and diff <= TOLERANCE:
            equal += 1
        elif example is None:
            example = f"{key[0]}/{key[1]}: " + (what or f"a number differs by {diff:.2g}")
    return Comparison(len(shared), equal, largest, len(reference.keys() - other.keys()),
                      len(other.keys() - reference.keys()), example)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def _num(value: float | None, fmt: str = ".0f") -> str:
    return "n/a" if value is None else format(value, fmt)


def cores_cell(cores: dict[str, float], names: list[str]) -> str:
    return " | ".join(_num(cores.get(name), ".2f") for name in names)


def cpu_per_event(run: Run, flow_names: list[str]) -> str:
    """CPU microseconds per event of the flow processes together, the broker and the whole machine."""
    if not run.events_per_s or not run.cores:
        return "n/a"
    flows = sum(run.cores.get(name, 0.0) for name in flow_names)
    parts = [flows, run.cores.get("broker"), run.cores.get("machine")]
    return " / ".join("n/a" if part is None else f"{1e6 * part / run.events_per_s:.0f}" for part in parts)


def report(command: str, header: list[str], runs: list[Run], comparisons: list[Comparison]) -> str:
    one = [r for r in runs if r.processes == 1 and not r.beside_busy_loop]
    two = [r for r in runs if r.processes == 2]
    median = {n: statistics.median([r.events_per_s for r in rs if r.events_per_s] or [float("nan")])
              for n, rs in ((1, one), (2, two))}  # fmt: skip
    ratio = median[2] / median[1]
    lines = [
        "# Scale-out: one Bytewax process against a cluster of two, 2 input partitions",
        "",
        f"Command: `{command}`",
        "",
        *header,
        "",
        "| run | processes | events/s | events read per process | events per model call | score step µs per "
        "event | flow processes' cores | broker's cores | bench's cores | other processes' cores | machine's busy "
        "cores | CPU µs per event: flows / broker / machine |",
        "|---|---:|---:|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for number, run in enumerate(runs, 1):
        counts = [c for c in run.counts if c is not None]
        per_process = " / ".join(str(c.events_in) for c in counts)
        scored, calls = sum(c.updates_out for c in counts), sum(c.model_calls for c in counts)
        per_call = f"{scored / calls:.0f}" if calls else "n/a"
        step_us = f"{1e6 * sum(c.scoring_s for c in counts) / scored:.0f}" if scored else "n/a"
        flow_names = [f"flow {i}" for i in range(run.processes)]
        flow_cores = " + ".join(_num(run.cores.get(name), ".2f") for name in flow_names)
        processes = f"{run.processes} + a busy loop" if run.beside_busy_loop else str(run.processes)
        cells = [str(number), processes, _num(run.events_per_s), per_process, per_call, step_us, flow_cores,
                 cores_cell(run.cores, ["broker", "bench", "other", "machine"]), cpu_per_event(run, flow_names)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Median events/s: 1 process {median[1]:,.0f}, 2 processes {median[2]:,.0f}: **{ratio:.2f}x** (target >= 1.7x)",
        "",
        "Same updates (each 2-process run against the 1-process run before it, after dedup by "
        f"(user_id, event_id); numbers within {TOLERANCE:g}):",
        "",
    ]
    for comparison in comparisons:
        line = (f"- {comparison.equal}/{comparison.compared} updates equal, largest difference of a number "
                f"{comparison.max_difference:.2g}; {comparison.missing} missing, {comparison.extra} extra")
        if comparison.example:
            line += f"; first difference: {comparison.example}"
        lines.append(line)
    lines += [
        "",
        "How it is measured: see the docstring of bench/scale_out.py. Cores = CPU seconds (user + system,"
        " all threads) / wall seconds over the span events/s is measured on; the machine's busy cores"
        " count everything that ran, this bench's CPU sampler and other jobs included.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--brokers", default=None, help="Kafka bootstrap servers (default: start Apache Kafka "
                        "from INTENTSTREAM_BROKER_JARS)")  # fmt: skip
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: bench/stream.py's)")
    parser.add_argument("--users", type=int, default=2000, help="streamed users of the synthetic world")
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--batch-size", type=int, default=StreamSettings.batch_size)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each kind, alternating")
    parser.add_argument("--warm-up-events", type=int, default=20_000, help="a first, unrecorded run (the broker's "
                        "JIT compiler warms up)")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds a run may take")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="first compile the model beside itself where no fitting artifact is there, so that the "
                        "flows' default backend (auto) runs it (--no-compile: auto runs what it finds there, else eager)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started = time.monotonic()
    command = "python bench/scale_out.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    say = lambda text: print(text, flush=True)  # noqa: E731

    world = BenchWorld(stream_users=args.users)
    streamed = world.streamed
    if len(streamed) < args.events:
        parser.error(f"{args.users} users have {len(streamed)} events; ask for at most that many")
    model_dir = args.model or world.model(say)
    backend_line = compile_beside(model_dir, args.batch_size, say) if args.compile else "auto, not compiled by this run"
    events = streamed[: args.events]
    messages = [(event.user_id.encode(), encode_play_event(event, FORMAT)) for event in events]
    users = len({event.user_id for event in events})
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())

    say("[the machine] the same pure-Python loop alone and in two processes at once ...")
    speed_up = machine_speed_up()
    say(f"  two processes get {speed_up:.2f}x the work of one done")
    say("[serving scorer alone] one process on every event, then two at once on half of the users each ...")
    scorer_rate, scorer_ratio = scorer_speed_up(model_dir, events, args.batch_size)
    say(f"  {scorer_rate:,.0f} events/s alone; two processes at once get {scorer_ratio:.2f}x that done")
    runs, comparisons = [], []
    with ExitStack() as cleanup:
        if args.brokers is None:
            work_dir = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="bench-scale-out-"))
            broker = cleanup.enter_context(ApacheKafkaBroker(work_dir, jvm_options=BROKER_JVM_OPTIONS))
            bootstrap, broker_pid = broker.bootstrap, broker.pid
            broker_line = ("Apache Kafka 4.4 (stream.kafka.apache_broker), one broker on this machine, loopback; JVM "
                           + " ".join(BROKER_JVM_OPTIONS))
        else:
            bootstrap, broker_pid = args.brokers, None
            broker_line = f"{args.brokers} (its CPU is not sampled)"
        if args.warm_up_events:
            say(f"[warm-up, not recorded] 1 process, {args.warm_up_events} events ...")
            measure(bootstrap, broker_pid, model_dir, messages[: args.warm_up_events], 1, args)
        for repeat in range(args.repeats):
            for processes in (1, 2):
                say(f"[{processes} process(es), run {repeat + 1}] {len(messages)} events ...")
                run = measure(bootstrap, broker_pid, model_dir, messages, processes, args)
                runs.append(run)
                say(f"  {_num(run.events_per_s)} events/s over {_num(run.span_s, '.1f')} s; {run.copies} updates; "
                    f"cores: " + ", ".join(f"{name} {value:.2f}" for name, value in run.cores.items()))
                if processes == 2:
                    comparisons.append(compare(runs[-2].updates, run.updates))
                    say(f"  same updates as the 1-process run: {comparisons[-1]}")
        say("[control] 1 process, a pure-Python loop busy on the other core ...")
        runs.append(measure(bootstrap, broker_pid, model_dir, messages, 1, args, beside_busy_loop=True))
        say(f"  {_num(runs[-1].events_per_s)} events/s; cores: "
            + ", ".join(f"{name} {value:.2f}" for name, value in runs[-1].cores.items()))

    header = [
        f"- Machine: {os.cpu_count()} logical CPUs, load average {load} at the start; the broker, the flow's "
        "process(es) and this bench all on it",
        f"- Broker: {broker_line}",
        f"- Model: {model_dir.name} (IntentRec's default V3), backend {backend_line}, torch threads 1 per process, "
        f"batch cap {args.batch_size}, `--new-titles 0` (a closed catalogue: each process registers the new titles of "
        "its own users' plays, so with them updates differ between cluster sizes by design)",
        f"- Workload: the first {len(events):,} events of the synthetic world's {users:,} streamed users (seed 0), "
        f"keyed by user into {PARTITIONS} partitions, {FORMAT}; the flow writes each update and the latest topic",
    ]
    header.append(f"- The machine's own parallel speed-up: a pure-Python loop in two processes at once gets "
                  f"{speed_up:.2f}x the work of one alone done (2.00 on two free cores): the ceiling of any "
                  "2-process speed-up here")
    header.append(f"- The serving scorer alone (bench/stream.py's row: its predict_users calls only, no dataflow, no "
                  f"Kafka) on these events: {scorer_rate:,.0f} events/s in one process; two processes at once, each on "
                  f"half of the users, get {scorer_ratio:.2f}x that done")
    text = report(command, header, runs, comparisons)
    text += f"\nThe whole run took {time.monotonic() - started:.0f}s.\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    say(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
