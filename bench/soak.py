"""A long run of the streaming scorer at a steady share of its capacity, on Apache Kafka: does
throughput hold, does latency stay flat, does memory stop growing?

    python bench/soak.py [--minutes 30] [--load 0.8] [--window 10]

1. Capacity: the input topic is loaded with `--capacity-events` events, and the dataflow of
   `intentstream run` (the bench's default V3 model, as bench/stream.py; torch threads 1) replays it
   to its end: capacity = events / the replay's wall time.
2. Soak: a fresh dataflow, and events produced at `--load` x capacity for `--minutes`: the bench
   world's streamed users, their events cycled with new event ids, each stamped with the wall-clock
   moment it is due to be sent. Latency = the moment its update is read back - that stamp, so a
   producer or flow falling behind shows as latency, not as fewer samples (every 10th update's).
3. Every `--window` seconds: updates read per second, p50/p99 latency of those updates, and the
   dataflow process's resident memory. Written to bench/results/soak.md with a plot (soak.png).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
from confluent_kafka import Producer  # noqa: E402

from bench.process_memory import resident_mb  # noqa: E402
from bench.world import BenchWorld  # noqa: E402
from schemas import decode_intent_update, encode_play_event  # noqa: E402
from stream.harness import DataflowProcess, StreamTopics  # noqa: E402
from stream.kafka.apache_broker import ApacheKafkaBroker  # noqa: E402
from stream.kafka.broker import TopicReader, client_config, produce_messages  # noqa: E402
from stream.settings import StreamSettings  # noqa: E402

FORMAT = "msgpack"
LATENCY_SAMPLE = 10  # the latency of every 10th update read


@dataclass
class Window:
    at_s: float  # since the soak began
    updates_per_s: float
    p50_ms: float
    p99_ms: float
    rss_mb: float


def settings_for(bootstrap: str, model_dir: Path, topics: StreamTopics, **changes) -> StreamSettings:
    return StreamSettings(brokers=bootstrap, model_dir=model_dir, format=FORMAT, input_topic=topics.input,
                          output_topic=topics.output, dlq_topic=topics.dlq, latest_topic=topics.latest,
                          **changes)  # fmt: skip


def capacity(bootstrap: str, model_dir: Path, events: list, count: int) -> float:
    topics = StreamTopics.named(f"soak-capacity-{uuid.uuid4().hex[:6]}-")
    topics.create(bootstrap)
    now_ms = int(time.time() * 1000)
    stamped = [replace(event, ts=now_ms - (count - n)) for n, event in enumerate(cycled(events, count))]
    produce_messages(bootstrap, topics.input, [(e.user_id.encode(), encode_play_event(e, FORMAT)) for e in stamped])
    flow = DataflowProcess(settings_for(bootstrap, model_dir, topics, stop_at_end=True)).start()
    flow.wait_ready()
    started = time.monotonic()
    counts = flow.wait_finished(timeout=1800)
    took = time.monotonic() - started
    flow.stop()
    assert counts is not None and counts.updates_out == count, counts
    return count / took


def cycled(events: list, count: int):
    """`count` events: the list over and over, each round with new event ids (a user's events stay in order)."""
    for n in range(count):
        event = events[n % len(events)]
        yield replace(event, event_id=f"{event.event_id}-r{n // len(events)}")


class SteadyProducer(threading.Thread):
    """Produces the cycled events at `rate`, each stamped with the wall-clock ms it is due."""

    def __init__(self, bootstrap: str, topic: str, events: list, rate: float, seconds: float):
        super().__init__(daemon=True)
        self.producer = Producer({**client_config(bootstrap), "linger.ms": 5})
        self.topic, self.events, self.rate, self.seconds = topic, events, rate, seconds
        self.sent = 0
        self.failures: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        start_wall, start = time.time(), time.monotonic()
        for n, event in enumerate(cycled(self.events, int(self.rate * self.seconds))):
            due = n / self.rate
            delay = start + due - time.monotonic()
            if (delay > 0 and self.halt.wait(delay)) or self.halt.is_set():
                break
            stamped = replace(event, ts=int((start_wall + due) * 1000))
            while True:
                try:
                    self.producer.produce(self.topic, encode_play_event(stamped, FORMAT), stamped.user_id.encode(),
                                          on_delivery=self._delivered)  # fmt: skip
                    break
                except BufferError:
                    self.producer.poll(0.05)
            self.producer.poll(0)
            self.sent += 1
        self.producer.flush(30)

    def _delivered(self, error, _message) -> None:
        if error is not None:
            self.failures.append(error.str())


def soak(bootstrap: str, model_dir: Path, events: list, rate: float, seconds: float, window_s: float,
         progress) -> tuple[list[Window], int, int]:  # fmt: skip
    topics = StreamTopics.named(f"soak-{uuid.uuid4().hex[:6]}-")
    topics.create(bootstrap)
    flow = DataflowProcess(settings_for(bootstrap, model_dir, topics)).start()
    flow.wait_ready()
    windows: list[Window] = []
    received = 0
    with TopicReader(bootstrap, topics.output, from_beginning=True) as updates:
        producer = SteadyProducer(bootstrap, topics.input, events, rate, seconds)
        producer.start()
        began = window_began = time.monotonic()
        latencies: list[float] = []
        in_window = 0
        drained_at = None
        while True:
            flow.check()
            records = updates.poll(timeout=0.05, max_records=5000)
            read_ms = time.time() * 1000
            for record in records[::LATENCY_SAMPLE]:  # decoding every update would take this process a core
                latencies.append(read_ms - decode_intent_update(record.value, FORMAT).ts)
            in_window += len(records)
            received += len(records)
            now = time.monotonic()
            if now - window_began >= window_s:
                p50, p99 = np.percentile(latencies, [50, 99]) if latencies else (float("nan"),) * 2
                windows.append(Window(now - began, in_window / (now - window_began), p50, p99,
                                      resident_mb(flow.pid)))  # fmt: skip
                progress(windows[-1], producer.sent)
                latencies, in_window, window_began = [], 0, now
            if not producer.is_alive():
                drained_at = drained_at or now
                if received >= producer.sent or now - drained_at > 60:
                    break
    flow.stop()
    assert not producer.failures, producer.failures[:3]
    return windows, producer.sent, received


def plot(windows: list[Window], rate: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [w.at_s / 60 for w in windows]
    figure, (throughput, latency, memory) = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    throughput.plot(minutes, [w.updates_per_s for w in windows], label="updates read /s")
    throughput.axhline(rate, color="grey", linestyle="--", label=f"offered {rate:,.0f}/s")
    throughput.set_ylabel("updates/s")
    throughput.legend(loc="lower right")
    latency.plot(minutes, [w.p99_ms for w in windows], label="p99")
    latency.plot(minutes, [w.p50_ms for w in windows], label="p50")
    latency.set_ylabel("event to update, ms")
    latency.set_yscale("log")
    latency.legend(loc="upper right")
    memory.plot(minutes, [w.rss_mb for w in windows])
    memory.set_ylabel("dataflow RSS, MB")
    memory.set_xlabel("minutes")
    figure.suptitle("Soak: the streaming scorer at a steady share of its capacity")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--load", type=float, default=0.8, help="share of the measured capacity offered")
    parser.add_argument("--window", type=float, default=10.0, help="seconds per sample")
    parser.add_argument("--capacity-events", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/soak.md")
    args = parser.parse_args()

    world = BenchWorld()
    streamed, model_dir = world.streamed, world.model(print)
    with ApacheKafkaBroker(Path(tempfile.mkdtemp(prefix="bench-soak-")) / "kafka") as broker:
        events_per_s = capacity(broker.bootstrap, model_dir, streamed, args.capacity_events)
        rate = args.load * events_per_s
        print(f"capacity {events_per_s:,.0f} events/s; soaking at {rate:,.0f}/s for {args.minutes:g} min", flush=True)

        def progress(window: Window, sent: int) -> None:
            print(f"{window.at_s / 60:5.1f} min  {window.updates_per_s:7,.0f} updates/s  p50 {window.p50_ms:7.1f} ms  "
                  f"p99 {window.p99_ms:8.1f} ms  RSS {window.rss_mb:6.0f} MB  ({sent:,} sent)", flush=True)

        windows, sent, received = soak(broker.bootstrap, model_dir, streamed, rate, args.minutes * 60, args.window,
                                       progress)  # fmt: skip
    plot(windows, rate, args.out.with_suffix(".png"))
    steady = windows[len(windows) // 10:] or windows  # past the first tenth: the cache and state warmed up
    halves = steady[: len(steady) // 2], steady[len(steady) // 2:]
    command = "python bench/soak.py " + " ".join(sys.argv[1:])
    lines = [
        "# Soak: the streaming scorer at a steady share of its capacity",
        "",
        f"`{command.strip()}` on {time.strftime('%Y-%m-%d')}; Apache Kafka 4.4 from the jars on loopback, 1 partition, "
        "the dataflow of `intentstream run` in its own process (bench/stream.py's default V3 model, torch threads 1, "
        "batch cap 256, KV cache 1 GiB), the producer and the reader in this one, all on this 2-core machine.",
        "",
        f"- capacity (replay of {args.capacity_events:,} loaded events): **{events_per_s:,.0f} events/s**; offered "
        f"{args.load:.0%} of it: {rate:,.0f} events/s for {args.minutes:g} minutes",
        f"- events sent {sent:,}, updates read {received:,} ({received - sent:+,}: output is at-least-once)",
        f"- updates/s per {args.window:g}-s window after the first tenth: median "
        f"{np.median([w.updates_per_s for w in steady]):,.0f}, min {min(w.updates_per_s for w in steady):,.0f}",
        f"- p99 event to update per window: median {np.median([w.p99_ms for w in steady]):,.1f} ms, "
        f"max {max(w.p99_ms for w in steady):,.1f} ms; p50 median {np.median([w.p50_ms for w in steady]):,.1f} ms",
        f"- dataflow RSS: {steady[0].rss_mb:,.0f} MB after the first tenth, {steady[-1].rss_mb:,.0f} MB at the end, "
        f"peak {max(w.rss_mb for w in windows):,.0f} MB; median of the first half of the steady part "
        f"{np.median([w.rss_mb for w in halves[0]]):,.0f} MB, of the second "
        f"{np.median([w.rss_mb for w in halves[1]]):,.0f} MB",
        "",
        f"![soak]({args.out.with_suffix('.png').name})",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
