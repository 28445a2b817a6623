"""Would the model in a process of its own pay? The stream bench's flow at saturation with the serving
scorer in the flow's process (the product), and with the scorer in a child process that the score
step hands each model call to (pickled over a pipe), with one and with two Bytewax workers.

    python bench/scoring_process.py [--rounds 3] [--events 20000]

Why: the flow runs the model and its own Python work (decode, remember, encode) one after the other,
so the two targets of bench/results/stream.md cannot both hold (see its notes); a scoring thread in
the flow's process cannot overlap them (bench/results/scorer-beside-python.md). A scoring process
can, while a second worker thread decodes, remembers and encodes: the waiting worker leaves the GIL
to it. With one worker it only adds the hand-over (a baseline for that cost).

The child keeps its own KV cache and new-title registry; the score step's registrations travel with
each model call, and one child serves every worker in turn (a lock), so it scores what the
in-process scorer scores, in the same order. Flows (bench/stream.py's world, model, broker, batch
cap 256, torch threads 1 in every process), measured in `--rounds` interleaved
rounds, medians and ranges:

- `in process`: the dataflow of `intentstream run`, 1 worker;
- `scoring process, 1 worker`, `scoring process, 2 workers` and the same with 2 input partitions (each
  worker then reads and decodes one): the switch interval of the flow's process at 0.5 ms (at the
  default 5 ms a worker waits up to that long for the GIL after each call);
- `no model`: bench/stream.py's framework ceiling, 1 worker.

Writes bench/results/scoring-process.md. Run as `--serve MODEL_DIR` it is the child.
"""
from __future__ import annotations

import argparse
import pickle
import shlex
import statistics
import subprocess
import sys
import threading
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

RESULTS = ROOT / "bench" / "results" / "scoring-process.md"
SWITCH_INTERVAL_S = 5e-4
READY = b"R"


def serve(model_dir: str) -> None:
    """The child: load the serving scorer, say READY, then answer (plays to register, users,
    histories, unknown titles, top_k) with the score columns, one pickle each way, until stdin ends."""
    import torch

    torch.set_num_threads(1)
    from model.serving.incremental import load_serving_scorer

    scorer = load_serving_scorer(model_dir, "auto")
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    answers.write(READY)
    answers.flush()
    while True:
        try:
            plays, rows, users, histories, titles, top_k = pickle.load(requests)
        except EOFError:
            return
        scorer.new_titles.register_plays(plays, rows)
        predictions = scorer.predict_users(users, histories, titles)
        pickle.dump(scorer.score_columns(predictions, top_k=top_k, unknown_titles=titles), answers, protocol=5)
        answers.flush()


class PendingPlays:
    """Stands in for the scorer's new-title registry in the flow's process: it keeps the plays the
    score step registers until the next model call takes them to the child."""

    def __init__(self) -> None:
        self._pending: list[tuple] = []  # (play, row)
        self._lock = threading.Lock()  # worker threads register while another takes

    def register_plays(self, plays, rows) -> None:
        with self._lock:
            self._pending.extend(zip(plays, rows))

    def take(self) -> tuple[list, list]:
        with self._lock:
            taken, self._pending = self._pending, []
        return [play for play, _ in taken], [row for _, row in taken]


class ScoringProcess:
    """What build_flow asks of the serving scorer, answered by a child process (`serve`).
    `predict_users` makes the round trip and returns the score columns, which `score_columns` passes on."""

    def __init__(self, model_dir) -> None:
        from model.serving.scorer import Scorer

        local = Scorer.load(model_dir)  # the vocabulary and featurizer the remember step needs
        self.model_ref, self.config, self.history_len = local.model_ref, local.config, local.history_len
        self.row_dtype, self.featurize = local.row_dtype, local.featurize
        self.new_titles = PendingPlays()
        self.top_k = 10
        self._child = subprocess.Popen([sys.executable, __file__, "--serve", str(model_dir)],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
        if self._child.stdout.read(1) != READY:
            raise RuntimeError(f"the scoring process exited with status {self._child.wait()} before it was ready")
        self._lock = threading.Lock()

    def predict_users(self, users, histories, unknown_titles=None):
        with self._lock:  # registrations and calls reach the child in the order the workers make them
            plays, rows = self.new_titles.take()
            request = (plays, rows, list(users), [h[-self.history_len :] for h in histories], unknown_titles, self.top_k)
            pickle.dump(request, self._child.stdin, protocol=5)
            self._child.stdin.flush()
            return pickle.load(self._child.stdout)

    def score_columns(self, columns, top_k: int = 10, unknown_titles=None):
        if top_k != self.top_k:
            raise ValueError(f"the scoring process answers top {self.top_k}, not {top_k}")
        return columns


def scoring_process(model_dir) -> ScoringProcess:
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    return ScoringProcess(model_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", metavar="MODEL_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    command = "python bench/scoring_process.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    import bench.stream as stream_bench
    from bench.compiled import compile_beside
    from bench.world import BenchWorld
    from stream.harness import FETCH_WAIT_MS, outgoing_messages
    from stream.kafka.broker import EmbeddedBroker

    say = lambda text: print(text, flush=True)  # noqa: E731
    world = BenchWorld()
    streamed, model_dir = world.streamed, world.model(say)
    backend_line = compile_beside(model_dir, 256, say)
    messages = outgoing_messages(streamed[: args.events], "msgpack")
    machine_line = stream_bench.machine()
    flows = {  # name: (workers, input partitions, scorer factory)
        "in process": (1, 1, None),
        "scoring process, 1 worker": (1, 1, scoring_process),
        "scoring process, 2 workers": (2, 1, scoring_process),
        "scoring process, 2 workers, 2 partitions": (2, 2, scoring_process),
        "no model": (1, 1, stream_bench.canned_scorer),
    }
    rates = {name: [] for name in flows}
    broker = EmbeddedBroker()
    broker.start()
    try:
        for round_ in range(1, args.rounds + 1):
            for name, (workers, partitions, factory) in flows.items():
                options = argparse.Namespace(partitions=partitions, backend="auto", torch_threads=1,
                                             fetch_wait_ms=FETCH_WAIT_MS, saturation_timeout=240.0, batch_size=256)
                result = stream_bench.measure_saturation(broker.bootstrap, model_dir,
                                                         stream_bench.Flow(name, 256, factory, workers), messages,
                                                         options, uuid.uuid4().hex[:6])  # fmt: skip
                if result.updates != result.events or result.events_per_s is None:
                    raise SystemExit(f"[{name}] {result.updates}/{result.events} updates: the run is not valid")
                rates[name].append(result.events_per_s)
                say(f"round {round_} [{name}] {result.events_per_s:.0f} events/s")
    finally:
        broker.stop()

    baseline = statistics.median(rates["in process"])
    rows = [f"| {name} | {flows[name][0]} | {flows[name][1]} | {statistics.median(values):,.0f} | {min(values):,.0f}-{max(values):,.0f} | "
            f"{statistics.median(values) / baseline:.2f}x |" for name, values in rates.items()]  # fmt: skip
    lines = [
        "# The model in a process of its own: does it pay on this machine?",
        "",
        f"Command: `{command}`",
        "",
        f"- Machine: {machine_line}",
        f"- Model: {model_dir.name}; backend {backend_line}",
        f"- Workload: the first {args.events:,} events of bench/stream.py's world, pre-loaded, "
        "batch cap 256, torch threads 1; embedded broker; saturation events/s as bench/stream.py measures it",
        f"- {args.rounds} interleaved rounds; median, range, and the median against `in process`. See the "
        "docstring of bench/scoring_process.py.",
        "",
        "| flow | Bytewax workers | input partitions | events/s (median) | range | against in process |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ]
    args.out.write_text("\n".join(lines))
    say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
