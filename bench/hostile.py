"""Hostile input through a real broker: every invalid message becomes one dead letter with the
reason it was made invalid for, every valid event one update, and memory stays bounded.

    python bench/hostile.py [--messages 100000] [--seed 0] [--brokers HOST:PORT]
                            [--flood-users 200000] [--flood-cap 20000]

A seeded generator mixes play events of a synthetic world (valid, some at the edges of the
contract, some exact copies) with messages broken on purpose, each labelled with the dead-letter
code it must get: bytes that are no msgpack, a msgpack that is not a map, missing fields, wrong
types, unknown enums, times out of range, negative watch times, ids too long, messages too large
(some of 900 KB, whose dead letter must still fit in a Kafka message), events from the far future
and events far later than their user's newest; and valid events with deeply nested unknown fields.
All of it goes to a fresh topic of Apache Kafka (started here from its jars, unless --brokers),
then `intentstream run --stop-at-end` reads it to its end in a child process whose resident memory
is sampled.

Then a flood of fresh user ids: `--flood-users` valid events, each of a user never seen before (an
outsider who can produce to the input topic can send that many), read twice by `intentstream run
--stop-at-end`: with `--max-users` at `--flood-cap`, and with the default cap (1,000,000, above the
flood), both with a KV cache of FLOOD_KV_CACHE_MB so that the cache, bounded on its own, is full
early in both. Resident memory is sampled as they read. Writes its section of bench/results/hostile.md
(from its heading to the next "# " heading, leaving the rest), and the memory plots hostile.png and
hostile-flood.png.
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import random
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import msgpack

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from schemas import (  # noqa: E402
    FROM_FUTURE, LATE, MAX_ID_CHARS, MAX_MESSAGE_BYTES, MISSING_FIELD, NOT_AN_OBJECT, NOT_DECODABLE, TOO_LARGE,
    TOO_LONG, TS_OUT_OF_RANGE, UNKNOWN_ENUM, VALUE_OUT_OF_RANGE, WRONG_TYPE, decode_dead_letter,
    decode_intent_update, encode_play_event,
)
from bench.process_memory import resident_mb  # noqa: E402
from bench.results_section import write_section  # noqa: E402
from stream.demo import DemoOptions, demo_world, train_or_reuse  # noqa: E402
from stream.harness import StreamTopics  # noqa: E402
from stream.kafka.apache_broker import ApacheKafkaBroker  # noqa: E402
from stream.kafka.broker import produce_messages, read_topic  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "hostile.md"
HEADING = "# Hostile input through Apache Kafka"
FLOOD_KV_CACHE_MB = 64
YEAR_2100_MS = 4_102_444_800_000 - 86_400_000
HOUR_MS = 3_600_000


def event_map(event) -> dict:
    return msgpack.unpackb(encode_play_event(event, "msgpack"))


def broken(rng: random.Random, event) -> tuple[bytes, str]:
    """One message made invalid on purpose, and the dead-letter code it must get."""
    fields = event_map(event)
    kind = rng.randrange(11)
    if kind == 0:
        return b"\xc1" + rng.randbytes(rng.randrange(1, 40)), NOT_DECODABLE
    if kind == 1:
        return msgpack.packb([fields["event_id"], fields["ts"]]), NOT_AN_OBJECT
    if kind == 2:
        del fields[rng.choice(["event_id", "user_id", "item_id", "ts", "duration_s"])]
        return msgpack.packb(fields), MISSING_FIELD
    if kind == 3:
        fields[rng.choice(["ts", "duration_s", "genres"])] = "oops"
        return msgpack.packb(fields), WRONG_TYPE
    if kind == 4:
        fields["kind"] = "podcast"
        return msgpack.packb(fields), UNKNOWN_ENUM
    if kind == 5:
        fields["ts"] = -5
        return msgpack.packb(fields), TS_OUT_OF_RANGE
    if kind == 6:
        fields["duration_s"] = -1.0
        return msgpack.packb(fields), VALUE_OUT_OF_RANGE
    if kind == 7:
        fields["item_id"] = "i" * (MAX_ID_CHARS + 1)
        return msgpack.packb(fields), TOO_LONG
    if kind == 8:
        size = 900_000 if rng.random() < 0.02 else MAX_MESSAGE_BYTES + rng.randrange(1, 5000)
        fields["padding"] = "x" * size
        return msgpack.packb(fields), TOO_LARGE
    if kind == 9:
        return encode_play_event(dataclasses.replace(event, event_id=event.event_id + "-future", ts=YEAR_2100_MS),
                                 "msgpack"), FROM_FUTURE
    return encode_play_event(dataclasses.replace(event, event_id=event.event_id + "-late", ts=event.ts - 48 * HOUR_MS),
                             "msgpack"), LATE


def nested(depth: int) -> object:
    value: object = {"leaf": 1}
    for _ in range(depth):
        value = {"more": [value]}
    return value


def hostile_messages(events, n: int, seed: int) -> tuple[list[tuple[bytes, bytes]], Counter, set[str], int]:
    """(messages, dead-letter codes expected, event ids that must get an update, copies)."""
    rng = random.Random(seed)
    messages, expected, valid, copies = [], Counter(), set(), 0
    for event in events:
        if len(messages) >= n:
            break
        key = event.user_id.encode()
        roll = rng.random()
        late = None
        if roll < 0.30:
            value, code = broken(rng, event)
            expected[code] += 1
            if code != LATE:
                messages.append((key, value))
                continue
            late = (key, value)  # sent right after the event it is two days older than
        if roll > 0.98:
            fields = event_map(event)
            fields["extra"] = nested(rng.randrange(20, 60))  # unknown fields are ignored, however deep
            value = msgpack.packb(fields)
        else:
            value = encode_play_event(event, "msgpack")
        messages.append((key, value))
        valid.add(event.event_id)
        if late is not None:
            messages.append(late)
        if rng.random() < 0.03:  # an exact copy of the event just sent, a redelivery: dropped
            messages.append((key, value))
            copies += 1
    return messages, expected, valid, copies


def plot_memory(samples: list[tuple[float, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 3.2))
    axes.plot([t for t, _ in samples], [mb for _, mb in samples])
    axes.set_xlabel("seconds since `intentstream run` started")
    axes.set_ylabel("resident memory, MB")
    axes.set_title("Hostile input: the run's memory as it reads the topic")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def fresh_id_flood(events, users: int) -> list[tuple[bytes, bytes]]:
    """`users` valid events of as many new users, in time order and ending now (none from the future)."""
    now_ms = int(time.time() * 1000)
    flood = []
    for i in range(users):
        event = dataclasses.replace(events[i % len(events)], user_id=f"flood-{i:07d}", event_id=f"flood-{i}",
                                    ts=now_ms - (users - i))  # fmt: skip
        flood.append((event.user_id.encode(), encode_play_event(event, "msgpack")))
    return flood


def run_sampled(command: list[str], log_path: Path) -> tuple[int, float, list[tuple[float, float]]]:
    """Run `intentstream run` to its end: (exit status, wall seconds, (seconds, resident MB) every half second)."""
    started = time.monotonic()
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
        samples = []
        while process.poll() is None:
            samples.append((time.monotonic() - started, resident_mb(process.pid)))
            time.sleep(0.5)
    return process.returncode, time.monotonic() - started, [(t, mb) for t, mb in samples if mb == mb]


def flood_run(bootstrap: str, model_dir: Path, flood: list, cap: int | None, work: Path) -> dict:
    """One `intentstream run --stop-at-end` over the flood, with `--max-users cap` (None: the default)."""
    topics = StreamTopics.named(f"flood-{cap or 'default'}-")
    topics.create(bootstrap, partitions=2)
    produce_messages(bootstrap, topics.input, flood)
    command = [sys.executable, "-m", "stream.cli", "run", "--brokers", bootstrap, "--model", str(model_dir),
               "--input-topic", topics.input, "--output-topic", topics.output, "--dlq-topic", topics.dlq,
               "--latest-topic", topics.latest, "--stop-at-end", "--kv-cache-mb", str(FLOOD_KV_CACHE_MB),
               *(["--max-users", str(cap)] if cap else [])]  # fmt: skip
    log_path = work / f"{topics.input}.log"
    status, wall_s, samples = run_sampled(command, log_path)
    log_text = log_path.read_text(errors="replace")
    if status != 0:
        sys.exit(f"intentstream run exited {status}:\n{log_text[-3000:]}")
    counts = re.search(r"finished: events in (\d+), updates out (\d+).*users held (\d+), evicted (\d+)", log_text)
    events_in, updates_out, held, evicted = (int(n) for n in counts.groups())
    reading = _between(samples, 0.25, 0.9)  # the model loaded, the topic being read, not yet the teardown
    return {"cap": cap, "wall_s": wall_s, "samples": samples, "events_in": events_in, "updates_out": updates_out,
            "held": held, "evicted": evicted, "first_mb": reading[0], "last_mb": reading[-1],
            "high_mb": max(reading), "tracebacks": log_text.count("Traceback")}  # fmt: skip


def cap_label(cap: int | None) -> str:
    return f"{cap:,}" if cap else "default (1,000,000)"


def plot_flood(runs: list[dict], users: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 3.2))
    for run in runs:
        axes.plot([t for t, _ in run["samples"]], [mb for _, mb in run["samples"]],
                  label=f"--max-users {cap_label(run['cap'])}")
    axes.set_xlabel("seconds since `intentstream run` started")
    axes.set_ylabel("resident memory, MB")
    axes.set_title(f"A flood of {users:,} fresh user ids: the run's memory as it reads them")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--brokers", default=None, help="Kafka bootstrap servers (default: start Apache Kafka here)")
    parser.add_argument("--flood-users", type=int, default=200_000)
    parser.add_argument("--flood-cap", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    command = "python bench/hostile.py " + shlex.join(sys.argv[1:])

    options = DemoOptions(stream_users=2000, days=60)
    training, streamed = demo_world(options)
    model_dir = train_or_reuse(options, training, lambda text: print(text, file=sys.stderr))
    streamed.sort(key=lambda e: (e.ts, e.event_id))
    messages, expected, valid, copies = hostile_messages(streamed, args.messages, args.seed)
    print(f"{len(messages)} messages: {len(valid)} valid events, {sum(expected.values())} broken, {copies} copies",
          file=sys.stderr)

    with tempfile.TemporaryDirectory() as tmp, ApacheKafkaBroker(Path(tmp) / "kafka") as broker:
        bootstrap = args.brokers or broker.bootstrap
        topics = StreamTopics.named(f"hostile-{args.seed}-")
        topics.create(bootstrap, partitions=2)
        produce_messages(bootstrap, topics.input, messages)
        run = [sys.executable, "-m", "stream.cli", "run", "--brokers", bootstrap, "--model", str(model_dir),
               "--input-topic", topics.input, "--output-topic", topics.output, "--dlq-topic", topics.dlq,
               "--latest-topic", topics.latest, "--stop-at-end", "--lateness", "1h"]  # fmt: skip
        started = time.monotonic()
        with open(Path(tmp) / "run.log", "wb") as log_file:
            process = subprocess.Popen(run, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
            peak, samples = 0.0, []
            while process.poll() is None:
                peak = max(peak, resident_mb(process.pid, "VmHWM"))
                samples.append((time.monotonic() - started, resident_mb(process.pid)))
                time.sleep(0.5)
        wall_s = time.monotonic() - started
        log_text = (Path(tmp) / "run.log").read_text(errors="replace")
        if process.returncode != 0:
            sys.exit(f"intentstream run exited {process.returncode}:\n{log_text[-3000:]}")
        letters = [decode_dead_letter(r.value) for r in read_topic(bootstrap, topics.dlq, count=sum(expected.values()))]
        updates = [decode_intent_update(r.value, "msgpack") for r in read_topic(bootstrap, topics.output, count=len(valid))]
        flood = fresh_id_flood(streamed, args.flood_users)
        floods = [flood_run(bootstrap, model_dir, flood, cap, Path(tmp)) for cap in (args.flood_cap, None)]

    got = Counter(letter.code for letter in letters)
    scored = Counter(update.event_id for update in updates)
    lines = [
        HEADING,
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}, 2 shared "
        f"cores; {time.strftime('%Y-%m-%d')}. `intentstream run --stop-at-end`, the demo's small model, 2 partitions.",
        "",
        f"- {len(messages)} messages: {len(valid)} valid events ({copies} exact copies besides), "
        f"{sum(expected.values())} broken on purpose.",
        f"- Dead letters: {sum(got.values())} of {sum(expected.values())} expected; by code, expected = got: "
        f"{'yes' if got == expected else 'NO'}.",
        "",
        "| code | expected | got |",
        "|---|---|---|",
        *[f"| {code} | {expected[code]} | {got[code]} |" for code in sorted(set(expected) | set(got))],
        "",
        f"- Updates: {len(scored)} distinct events scored of {len(valid)} valid; scored more than once: "
        f"{sum(1 for n in scored.values() if n > 1)}; an update for an event that was not valid: "
        f"{len(set(scored) - valid)}.",
        f"- Wall time {wall_s:.0f} s ({len(messages) / wall_s:.0f} messages/s, model load included); peak resident "
        f"memory of the run {peak:.0f} MB; resident memory at each half second: {args.out.with_suffix('.png').name}. "
        "From a quarter of the run to nine tenths (model loaded, topic being read) it stayed between "
        f"{min(_between(samples, 0.25, 0.9)):.0f} and {max(_between(samples, 0.25, 0.9)):.0f} MB.",
        "",
        f"![memory over time]({args.out.with_suffix('.png').name})",
        f"- Tracebacks in the run's log: {log_text.count('Traceback')}.",
        "",
        "## A flood of fresh user ids",
        "",
        f"{args.flood_users:,} valid events, each of a user never seen before, read by `intentstream run --stop-at-end "
        f"--kv-cache-mb {FLOOD_KV_CACHE_MB}` twice: with `--max-users {args.flood_cap:,}` and with the default cap "
        "(1,000,000, above the flood). Resident memory from a quarter of each run to nine tenths (the model loaded, "
        "the topic being read; the teardown after):",
        "",
        "| --max-users | events in | updates out | users held at the end | evicted | events/s | resident MB at a quarter "
        "| at nine tenths | highest | tracebacks |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *[f"| {cap_label(run['cap'])} | {run['events_in']:,} | "
          f"{run['updates_out']:,} | {run['held']:,} | {run['evicted']:,} | {run['events_in'] / run['wall_s']:,.0f} | "
          f"{run['first_mb']:.0f} | {run['last_mb']:.0f} | {run['high_mb']:.0f} | {run['tracebacks']} |"
          for run in floods],
        "",
        f"![memory during the flood]({args.out.with_name(args.out.stem + '-flood.png').name})",
        "",
    ]
    plot_memory([s for s in samples if s[1] == s[1]], args.out.with_suffix(".png"))
    plot_flood(floods, args.flood_users, args.out.with_name(args.out.stem + "-flood.png"))
    write_section(args.out, HEADING, lines)  # other benches keep their sections of the file
    print("\n".join(lines))


def _between(samples: list[tuple[float, float]], start: float, end: float) -> list[float]:
    """The real samples from `start` to `end` (shares of the run's length)."""
    real = [mb for _, mb in samples if mb == mb]
    return real[int(start * len(real)) : max(int(start * len(real)) + 1, int(end * len(real)))]


if __name__ == "__main__":
    main()
