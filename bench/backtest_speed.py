"""Events/s of a backtest against the live path, on the same log and model, measured in one run.

    python bench/backtest_speed.py --model DIR LOG [--limit N]

- backtest: `stream.backtest.replay.run_backtest` on the log (the first N events): one replay through the
  dataflow with the judge in the score step; events/s = events / the replay's wall time.
- live: the dataflow of `intentstream run` (`build_flow` with its Kafka source and sink, stop at end)
  on the same events, loaded first into a topic of the embedded broker; events/s = events / the
  flow's wall time. Neither includes loading the model or, for the live path, loading the topic.

The two alternate, `--repeats` times each, and the best rate of each is kept: on a machine shared
with other work, single runs vary by tens of percent. Prints both and their ratio.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from itertools import islice
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# This file's directory (first on sys.path) holds bench/stream.py, which would hide the `stream` package.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from bytewax.run import cli_main  # noqa: E402

from model.serving.incremental import load_serving_scorer  # noqa: E402
from model.playlogs.files import read_log, write_log  # noqa: E402
from model.serving.scorer import Scorer  # noqa: E402
from schemas import encode_play_event  # noqa: E402
from stream.backtest.replay import run_backtest  # noqa: E402
from stream.backtest.sources import LogReplay  # noqa: E402
from stream.kafka.broker import EmbeddedBroker, create_topics, produce_messages  # noqa: E402
from stream.dataflow import StreamCounters, build_flow  # noqa: E402
from stream.settings import StreamSettings  # noqa: E402


def live_events_per_s(model_dir: Path, scorer: Scorer, events: list) -> float:
    with EmbeddedBroker() as broker:
        name = f"bench-{uuid.uuid4().hex[:8]}"
        settings = StreamSettings(brokers=broker.bootstrap, model_dir=model_dir, input_topic=f"{name}-plays",
                                  output_topic=f"{name}-updates", dlq_topic=f"{name}-dlq",
                                  latest_topic=f"{name}-latest", stop_at_end=True)
        create_topics(broker.bootstrap, [settings.input_topic, settings.output_topic, settings.dlq_topic,
                                         settings.latest_topic])
        produce_messages(broker.bootstrap, settings.input_topic,
                         [(e.user_id.encode(), encode_play_event(e, settings.format)) for e in events])
        counters = StreamCounters()
        # as `intentstream run` serves by default: eager, a fresh cache
        flow = build_flow(settings, load_serving_scorer(scorer), counters=counters)
        started = time.perf_counter()
        cli_main(flow, workers_per_process=1)
        wall_s = time.perf_counter() - started
    assert counters.updates_out == len(events), counters.summary()
    return len(events) / wall_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", type=Path)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=5000, help="replay the first N events of the log")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    scorer = Scorer.load(args.model)
    events = list(islice(read_log(args.log), args.limit))
    backtest_rates, live_rates = [], []
    with tempfile.TemporaryDirectory() as directory:
        log = Path(directory) / "slice.msgpack"
        write_log(log, events)
        for _ in range(args.repeats):
            backtest = run_backtest(LogReplay(log), {"model": (args.model, scorer)}, progress=False)
            backtest_rates.append(backtest.systems[0].replay.events_per_s)
            live_rates.append(live_events_per_s(args.model, scorer, events))
    backtest_rate, live_rate = max(backtest_rates), max(live_rates)
    def runs(rates: list[float]) -> str:
        return ", ".join(f"{rate:.0f}" for rate in rates)

    print(f"{len(events)} events of {args.log}, model {args.model}")
    print(f"backtest: {backtest_rate:.0f} events/s, judging included (runs: {runs(backtest_rates)})")
    print(f"live path (intentstream run's dataflow, embedded Kafka broker): {live_rate:.0f} events/s "
          f"(runs: {runs(live_rates)})")
    print(f"backtest / live: {backtest_rate / live_rate:.2f}")


if __name__ == "__main__":
    main()
