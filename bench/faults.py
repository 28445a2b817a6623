"""Fault campaigns against `intentstream run` as a real process on Apache Kafka: the broker killed
mid-stream, SIGTERM at random moments, input deleted by retention before it was read, and the
recovery directory's volume filling up.

    python bench/faults.py [--kill-rounds 4] [--sigterm-rounds 20] [--gap-rounds 2] [--disk-rounds 2] [--events 6000]

Broker kill (`--kill-rounds`, alternating two kinds): a run with a recovery directory (snapshots
every second) is scoring a live feed (FEED_RATE events/s) when the broker is SIGKILLed.
- "short": the broker is back after 10 s, within --max-broker-outage (60 s): the run rides it out;
- "long": the broker stays away past --max-broker-outage 5s: the run exits 75, the broker comes back,
  and a restart from the recovery directory finishes the topic.
Once the feed is done, counted: events without an update (the target is 0; waited for up to 3
minutes), how long the run took to notice (exit 75), and from the kill to the last update.

SIGTERM (`--sigterm-rounds`): a run scoring a live feed gets SIGTERM at a random moment, a quarter
of them 0.5-4 s after its start (still starting: imports, the model), the rest 4-15 s (scoring); measured: the time to exit, and
its exit status (143 expected). The default --shutdown-timeout is 15 s.

Offset gap (`--gap-rounds`): a run reads the first GAP_READ_FIRST events of a one-partition topic
whose retention keeps about GAP_RETAINED_BYTES (in segments of GAP_SEGMENT_BYTES; the broker looks
for segments to delete every 200 ms) and is stopped (SIGTERM); the rest of the events go to the
topic while it is down, and retention deletes events it never read. A restart with
`--on-offset-gap fail` must exit 65 having written nothing; one with `resume` must report exactly
the deleted offsets as lost and give every retained event its update (and none of the deleted).

Full disk (`--disk-rounds`): a run whose recovery directory is on a tmpfs of DISK_VOLUME_BYTES
scores a live feed when the tmpfs is filled to its last page: it must exit 74 with one line naming
the directory; a restart while the volume is still full must exit 74 at once, before reading
anything; once the filler is deleted, a restart must give every event its update. Mounting the
tmpfs needs root.

The model is the demo's small one (trained once and cached). Writes bench/results/faults.md.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from schemas import decode_intent_update, encode_play_event  # noqa: E402
from stream.demo import DemoOptions, demo_world, train_or_reuse  # noqa: E402
from stream.harness import StreamTopics  # noqa: E402
from stream.kafka.apache_broker import QUICK_RETENTION, ApacheKafkaBroker, retained_bytes  # noqa: E402
from stream.kafka.broker import create_topics, produce_messages, read_topic, watermarks  # noqa: E402
from stream.small_volume import SmallVolume  # noqa: E402

FORMAT = "msgpack"
PARTITIONS = 2
FEED_RATE = 300  # play events/s onto the input topic
GAP_READ_FIRST = 1000  # events the run reads before it is stopped and retention deletes what follows
GAP_SEGMENT_BYTES = 64 << 10
GAP_RETAINED_BYTES = 256 << 10  # about 1,500 of the demo's events
DISK_VOLUME_BYTES = 64 << 20


def start_run(bootstrap: str, model_dir: Path, topics: StreamTopics, log_path: Path, *options: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "stream.cli", "run", "--brokers", bootstrap, "--model", str(model_dir),
               "--format", FORMAT, "--input-topic", topics.input, "--output-topic", topics.output, "--dlq-topic",
               topics.dlq, "--latest-topic", topics.latest, *options]  # fmt: skip
    environ = {k: v for k, v in os.environ.items() if not k.startswith("INTENTSTREAM_")} | {"OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=ROOT, env=environ, stdin=subprocess.DEVNULL, stdout=log_path.open("ab"),
                            stderr=subprocess.STDOUT)  # fmt: skip


def updated_events(bootstrap: str, topic: str) -> set[tuple[str, str]]:
    return {(u.user_id, u.event_id) for u in (decode_intent_update(r.value, FORMAT) for r in read_topic(bootstrap, topic,
                                                                                                       timeout=60))}


def stamped(events: list) -> list:
    """The events moved to end now (so none is from the future), their order and gaps kept."""
    from dataclasses import replace

    shift = int(time.time() * 1000) - events[-1].ts
    return [replace(event, ts=event.ts + shift) for event in events]


class Feed(threading.Thread):
    """Play events onto a topic at a steady rate; `delivered` holds the (user, event) pairs the broker
    acknowledged (its client keeps the rest queued through an outage, and retries)."""

    def __init__(self, bootstrap: str, topic: str, events: list, rate: float):
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.events, self.rate = bootstrap, topic, events, rate
        self.halt = threading.Event()
        self.delivered: set[tuple[str, str]] = set()

    def run(self) -> None:
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5})
        for event in stamped(self.events):
            if self.halt.wait(1 / self.rate):
                break
            key = (event.user_id, event.event_id)
            producer.produce(self.topic, encode_play_event(event, FORMAT), event.user_id.encode(),
                             on_delivery=lambda error, _m, key=key: error is None and self.delivered.add(key))
            producer.poll(0)
        producer.flush(300)


def kill_round(broker: ApacheKafkaBroker, model_dir: Path, events: list, kind: str, work: Path) -> dict:
    topics = StreamTopics.named(f"faults-{kind}-{uuid.uuid4().hex[:6]}-")
    topics.create(broker.bootstrap, PARTITIONS)
    feed = Feed(broker.bootstrap, topics.input, events, rate=FEED_RATE)  # its client buffers through the outage
    recovery = ["--recovery-dir", str(work / f"recovery-{topics.input}"), "--snapshot-interval", "1s"]
    outage = ["--max-broker-outage", "60s" if kind == "short" else "5s"]
    log_path = work / f"{topics.input}.log"
    run = start_run(broker.bootstrap, model_dir, topics, log_path, *recovery, *outage)
    feed.start()
    time.sleep(random.uniform(6, 12))  # the model loaded, some events scored, more coming
    broker.kill()
    killed_at = time.monotonic()
    result = {"kind": kind, "restarts": 0}
    if kind == "short":
        time.sleep(10)
        broker.start()
    else:
        status = run.wait(600)
        result["noticed_s"] = time.monotonic() - killed_at
        assert status == 75, f"the run exited {status}, not 75; see {log_path}"
        broker.start()
        result["restarts"] = 1
        run = start_run(broker.bootstrap, model_dir, topics, log_path, *recovery, *outage)
    feed.join()
    expected = feed.delivered
    result["not_produced"] = len(events) - len(expected)
    deadline = time.monotonic() + 180
    while (missing := expected - updated_events(broker.bootstrap, topics.output)) and time.monotonic() < deadline:
        assert run.poll() is None, f"the run exited {run.returncode}; see {log_path}"
        time.sleep(2)
    result["recovered_s"] = time.monotonic() - killed_at
    run.send_signal(signal.SIGTERM)
    result["status"] = run.wait(60)
    result["without_update"] = len(missing)
    return result


def sigterm_round(broker: ApacheKafkaBroker, model_dir: Path, events: list, work: Path, after_s: float) -> dict:
    topics = StreamTopics.named(f"faults-sigterm-{uuid.uuid4().hex[:6]}-")
    topics.create(broker.bootstrap, PARTITIONS)
    feed = Feed(broker.bootstrap, topics.input, events, rate=FEED_RATE)
    feed.start()
    log_path = work / f"{topics.input}.log"
    run = start_run(broker.bootstrap, model_dir, topics, log_path, "--recovery-dir", str(work / f"r-{topics.input}"))
    time.sleep(after_s)
    run.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    try:
        status = run.wait(120)
    except subprocess.TimeoutExpired:
        run.kill()
        status = "hung"
    took = time.monotonic() - signalled
    feed.halt.set()
    feed.join()
    panicked = "panicked" in log_path.read_text(errors="replace")
    return {"after_s": after_s, "status": status, "exit_s": took, "panic": panicked}


def wait_for_retention(bootstrap: str, topic: str) -> int:
    """The oldest offset retained once retention has deleted what it will (unchanged for 2 s)."""
    seen = [watermarks(bootstrap, topic)[0]]
    while seen[-1] == 0 or len(seen) < 8 or len(set(seen[-8:])) > 1:
        assert len(seen) < 400, f"retention still kept offsets from {seen[-1]} on after 100 s"
        time.sleep(0.25)
        seen.append(watermarks(bootstrap, topic)[0])
    return seen[-1]


def last_line(log_path: Path) -> str:
    return log_path.read_text(errors="replace").strip().splitlines()[-1]


def offset_gap_round(broker: ApacheKafkaBroker, model_dir: Path, events: list, work: Path) -> dict:
    topics = StreamTopics.named(f"faults-gap-{uuid.uuid4().hex[:6]}-")
    create_topics(broker.bootstrap, [topics.input], 1, retained_bytes(GAP_SEGMENT_BYTES, GAP_RETAINED_BYTES))
    create_topics(broker.bootstrap, [topics.output, topics.dlq, topics.latest], 1)
    messages = [(e.user_id.encode(), encode_play_event(e, FORMAT)) for e in stamped(events)]  # offset i: event i
    small_batches = {"batch.size": str(GAP_SEGMENT_BYTES // 2)}  # a record batch must fit in a segment
    recovery = ["--recovery-dir", str(work / f"recovery-{topics.input}"), "--snapshot-interval", "1s"]
    log_path = work / f"{topics.input}.log"

    produce_messages(broker.bootstrap, topics.input, messages[:GAP_READ_FIRST], client=small_batches)
    run = start_run(broker.bootstrap, model_dir, topics, log_path, *recovery)
    first = {(e.user_id, e.event_id) for e in events[:GAP_READ_FIRST]}
    deadline = time.monotonic() + 180
    while not first <= updated_events(broker.bootstrap, topics.output):
        assert run.poll() is None and time.monotonic() < deadline, f"no updates of the first events; see {log_path}"
        time.sleep(1)
    time.sleep(2)  # a snapshot after the last of them
    run.send_signal(signal.SIGTERM)
    assert run.wait(60) == 143, f"see {log_path}"
    produce_messages(broker.bootstrap, topics.input, messages[GAP_READ_FIRST:], client=small_batches)
    retained_from = wait_for_retention(broker.bootstrap, topics.input)
    updates_before = len(read_topic(broker.bootstrap, topics.output, timeout=60))

    started = time.monotonic()
    failing = start_run(broker.bootstrap, model_dir, topics, log_path, *recovery, "--stop-at-end",
                        "--on-offset-gap", "fail")  # fmt: skip
    result = {"resumed_at": GAP_READ_FIRST, "retained_from": retained_from, "fail_status": failing.wait(300),
              "fail_exit_s": time.monotonic() - started}  # fmt: skip
    result["fail_line"] = last_line(log_path).startswith(f"intentstream run: partition 0 of topic {topics.input!r}: "
                                                         f"offsets {GAP_READ_FIRST}..{retained_from - 1} ")
    result["written_by_fail"] = len(read_topic(broker.bootstrap, topics.output, timeout=60)) - updates_before

    resumed = start_run(broker.bootstrap, model_dir, topics, log_path, *recovery, "--stop-at-end",
                        "--on-offset-gap", "resume")  # fmt: skip
    result["resume_status"] = resumed.wait(300)
    reported = re.findall(r"finished: events in .*?offsets lost to retention (\d+)", log_path.read_text(errors="replace"))
    result["lost_reported"] = int(reported[-1]) if reported else 0
    updated = updated_events(broker.bootstrap, topics.output)
    retained = {(e.user_id, e.event_id) for e in events[retained_from:]}
    deleted = {(e.user_id, e.event_id) for e in events[GAP_READ_FIRST:retained_from]}
    result["retained_without_update"] = len(retained - updated)
    result["deleted_with_update"] = len(deleted & updated)
    return result


def disk_full_round(broker: ApacheKafkaBroker, model_dir: Path, events: list, work: Path) -> dict:
    topics = StreamTopics.named(f"faults-disk-{uuid.uuid4().hex[:6]}-")
    topics.create(broker.bootstrap, PARTITIONS)
    log_path = work / f"{topics.input}.log"
    with SmallVolume(work / f"volume-{topics.input}", DISK_VOLUME_BYTES) as volume:
        recovery = volume.path / "recovery"
        options = ["--recovery-dir", str(recovery), "--snapshot-interval", "1s"]
        expected_line = f"intentstream run: no space left for the recovery directory {recovery.resolve()} ("
        feed = Feed(broker.bootstrap, topics.input, events, rate=FEED_RATE)
        run = start_run(broker.bootstrap, model_dir, topics, log_path, *options)
        feed.start()
        time.sleep(random.uniform(6, 12))
        volume.fill()
        filled_at = time.monotonic()
        result = {"status": run.wait(300), "noticed_s": time.monotonic() - filled_at,
                  "one_line": last_line(log_path).startswith(expected_line)}  # fmt: skip

        started = time.monotonic()
        still_full = start_run(broker.bootstrap, model_dir, topics, log_path, *options)
        result["still_full_status"] = still_full.wait(300)
        result["still_full_exit_s"] = time.monotonic() - started
        result["still_full_line"] = last_line(log_path).startswith(expected_line)

        volume.free()
        run = start_run(broker.bootstrap, model_dir, topics, log_path, *options)
        feed.join()
        deadline = time.monotonic() + 180
        while (missing := feed.delivered - updated_events(broker.bootstrap, topics.output)) and time.monotonic() < deadline:
            assert run.poll() is None, f"the run exited {run.returncode}; see {log_path}"
            time.sleep(2)
        run.send_signal(signal.SIGTERM)
        result["end_status"] = run.wait(60)
    result["not_produced"] = len(events) - len(feed.delivered)
    result["without_update"] = len(missing)
    result["tracebacks"] = log_path.read_text(errors="replace").count("Traceback")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kill-rounds", type=int, default=4)
    parser.add_argument("--sigterm-rounds", type=int, default=20)
    parser.add_argument("--gap-rounds", type=int, default=2)
    parser.add_argument("--disk-rounds", type=int, default=2)
    parser.add_argument("--events", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/faults.md")
    args = parser.parse_args()
    random.seed(args.seed)

    world = DemoOptions(seed=0, torch_threads=1)
    training, streamed = demo_world(world)
    model_dir = train_or_reuse(world, training, print, progress=False)
    events = streamed[: args.events]
    work = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    kills, terms, gaps, disks = [], [], [], []
    with ApacheKafkaBroker(work / "kafka", server_properties=QUICK_RETENTION) as broker:
        for number in range(args.kill_rounds):
            kills.append(kill_round(broker, model_dir, events, ("short", "long")[number % 2], work))
            print("kill", kills[-1], flush=True)
        for number in range(args.sigterm_rounds):
            # A quarter of the signals come while the process starts (imports, model, recovery dir).
            after_s = random.uniform(0.5, 4) if number % 4 == 0 else random.uniform(4, 15)
            terms.append(sigterm_round(broker, model_dir, events, work, after_s))
            print("sigterm", terms[-1], flush=True)
        for _ in range(args.gap_rounds):
            gaps.append(offset_gap_round(broker, model_dir, events, work))
            print("offset gap", gaps[-1], flush=True)
        for _ in range(args.disk_rounds):
            disks.append(disk_full_round(broker, model_dir, events, work))
            print("disk full", disks[-1], flush=True)

    command = "python bench/faults.py " + " ".join(sys.argv[1:])
    exits = [t["exit_s"] for t in terms]
    lines = [
        "# Fault campaigns: broker kills, SIGTERM, offset gaps and a full disk, on Apache Kafka",
        "",
        f"`{command.strip()}` on {time.strftime('%Y-%m-%d')}: `intentstream run` as a process (the demo's small "
        f"model, {PARTITIONS} partitions, {len(events):,} events of the demo world), Apache Kafka 4.4 from the jars.",
        "",
        "## Broker killed mid-stream",
        "",
        "| round | kind | exit status at the end (SIGTERM) | restarts of the run | noticed (exit 75) after, s | "
        "every update in, after the kill, s | events the feed's client could not deliver | events without an update |",
        "|---|---|---|---|---|---|---|---|",
        *[f"| {n + 1} | {k['kind']} | {k['status']} | {k['restarts']} | {k.get('noticed_s', float('nan')):.1f} | "
          f"{k['recovered_s']:.1f} | {k['not_produced']} | {k['without_update']} |" for n, k in enumerate(kills)],
        "",
        f"Events delivered to the input topic without an update, over all rounds: "
        f"**{sum(k['without_update'] for k in kills)}** of {len(events) * len(kills) - sum(k['not_produced'] for k in kills):,}.",
        "",
        "## SIGTERM at a random moment",
        "",
        f"{len(terms)} rounds, signal 0.5-15 s after the start: exit statuses "
        f"{sorted({str(t['status']) for t in terms})}; time to exit median {statistics.median(exits):.2f} s, "
        f"max {max(exits):.2f} s (bound: --shutdown-timeout 15 s); Rust panics printed: "
        f"{sum(t['panic'] for t in terms)}.",
        "",
        "| signal after start, s | exit status | time to exit, s |",
        "|---|---|---|",
        *[f"| {t['after_s']:.1f} | {t['status']} | {t['exit_s']:.2f} |" for t in sorted(terms, key=lambda t: t["after_s"])],
        "",
        "## Input deleted by retention before it was read",
        "",
        f"One partition keeping about {GAP_RETAINED_BYTES >> 10} KiB in segments of {GAP_SEGMENT_BYTES >> 10} KiB; the "
        f"run stopped after offset {GAP_READ_FIRST}, the rest of the {len(events):,} events produced meanwhile.",
        "",
        "| round | resumed at | oldest retained | `fail`: status | exit after start, s | its one line names the "
        "offsets | updates it wrote | `resume`: status | offsets lost, reported / deleted | retained events without "
        "an update | deleted events with an update |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *[f"| {n + 1} | {g['resumed_at']} | {g['retained_from']} | {g['fail_status']} | {g['fail_exit_s']:.1f} | "
          f"{'yes' if g['fail_line'] else 'NO'} | {g['written_by_fail']} | {g['resume_status']} | {g['lost_reported']} / "
          f"{g['retained_from'] - g['resumed_at']} | {g['retained_without_update']} | {g['deleted_with_update']} |"
          for n, g in enumerate(gaps)],
        "",
        "## The recovery directory's volume full",
        "",
        f"A tmpfs of {DISK_VOLUME_BYTES >> 20} MiB holding the recovery directory, filled to its last page while the run "
        f"scores a live feed ({FEED_RATE} events/s, {len(events):,} events, {PARTITIONS} partitions).",
        "",
        "| round | status | exit after the fill, s | one line naming the directory | restarted still full: status | "
        "exit after start, s | one line | after freeing: status at the end (SIGTERM) | events without an update | "
        "tracebacks |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *[f"| {n + 1} | {d['status']} | {d['noticed_s']:.1f} | {'yes' if d['one_line'] else 'NO'} | "
          f"{d['still_full_status']} | {d['still_full_exit_s']:.1f} | {'yes' if d['still_full_line'] else 'NO'} | "
          f"{d['end_status']} | {d['without_update']} of {len(events) - d['not_produced']:,} | {d['tracebacks']} |"
          for n, d in enumerate(disks)],
        "",
        "Bytewax's snapshot writer is Rust: the write that finds the volume full panics in its thread, which prints "
        "the panic and its backtrace (RUST_BACKTRACE=1 here) before the run's own last line; the status and that line "
        "are the run's.",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
