"""The lookup service (`intentstream serve`) under load, beside the HTTP stack alone, in one run.

    python bench/lookup.py [--users 100000] [--updates-per-user 10] [--rate 2000] [--repeats 3]

1. An Apache Kafka broker from the jars (deploy/kafka/fetch.sh) gets a compacted topic of 3 partitions
   holding `--updates-per-user` intent updates for each of `--users` users (msgpack, the default
   model's shapes: Z of 32 floats, 4 tasks x 3 labels, 10 next items), as `intentstream run` writes.
2. `intentstream serve` starts on it: the time until /healthz is ready, per million updates on the
   topic, is the restart's catch-up; its resident memory then, less that of a serve holding 1,000
   users, per user held, is the memory per user.
3. wrk (Debian's package) asks GET /users/{random user}/intent over loopback, paced to `--rate`
   requests/s (20 connections, each waiting between requests), `--repeats` times: p50/p99 latency,
   median and range. Then unpaced: the most requests/s. Then POST /users:batchGet of 100 users.
4. The peer: the same uvicorn + Starlette answering a fixed update of the same size from memory
   (bench/peers/bare_http.py), unpaced: the ceiling of the HTTP stack; serve's rate is reported as a
   share of it.

Writes the table to --out (bench/results/lookup.md) with this command line.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from confluent_kafka import Producer  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench.process_memory import resident_mb  # noqa: E402
from schemas import IntentUpdate, ItemScore, LabelScore, ModelRef, encode_intent_update  # noqa: E402
from stream.kafka.apache_broker import ApacheKafkaBroker  # noqa: E402
from stream.kafka.broker import create_topics, free_loopback_port  # noqa: E402

PARTITIONS = 3
TASKS = ("action", "genre", "kind", "release")
REPORT = """
done = function(summary, latency, requests)
  io.write(string.format("RESULT {\\"requests\\": %%d, \\"seconds\\": %%f, \\"errors\\": %%d, \\"non2xx\\": %%d, "
    .. "\\"p50_ms\\": %%f, \\"p99_ms\\": %%f, \\"max_ms\\": %%f}\\n",
    summary.requests, summary.duration / 1e6, summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout, summary.errors.status, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000))
end
"""
WRK_SCRIPT = """
math.randomseed(%(seed)d)
local users = %(users)d
local pause = %(pause_ms)d
request = function()
  return wrk.format("GET", string.format("/users/user-%%07d/intent", math.random(0, users - 1)))
end
if pause > 0 then delay = function() return pause end end
""" + REPORT
BATCH_SCRIPT = """
math.randomseed(7)
request = function()
  local ids = {}
  for i = 1, 100 do ids[i] = string.format("\\"user-%%07d\\"", math.random(0, %(users)d - 1)) end
  return wrk.format("POST", "/users:batchGet", {["Content-Type"] = "application/json"},
                    "{\\"user_ids\\": [" .. table.concat(ids, ",") .. "]}")
end
""" + REPORT


def sample_update(user_id: str, n: int, rng: random.Random) -> IntentUpdate:
    ts = 1_700_000_000_000 + n * 60_000
    return IntentUpdate(
        user_id=user_id, event_id=f"{user_id}-{n}", ts=ts, model=ModelRef("intentrec-V3", "bench"), scored_at=ts + 40,
        intent_embedding=tuple(rng.uniform(-1, 1) for _ in range(32)),
        intents={task: tuple(LabelScore(f"{task}-{rng.randrange(20)}", rng.random()) for _ in range(3)) for task in TASKS},
        intent_weights=dict(zip(TASKS, softmax([rng.gauss(0, 0.6) for _ in TASKS]))),
        next_items=tuple(ItemScore(str(rng.randrange(100_000)), rng.random()) for _ in range(10)),
    )  # fmt: skip


def softmax(values: list[float]) -> list[float]:
    exps = [math.exp(value) for value in values]
    return [value / sum(exps) for value in exps]


def screenshot(url: str, path: Path) -> None:
    """The page for one user, as headless Chromium draws it (README)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,760"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        driver.get(url)
        WebDriverWait(driver, 15).until(lambda _: driver.find_elements(By.CSS_SELECTOR, "#history polyline"))
        driver.save_screenshot(str(path))
    finally:
        driver.quit()


def fill_topic(bootstrap: str, topic: str, users: int, updates_per_user: int) -> int:
    create_topics(bootstrap, [topic], PARTITIONS, config={"cleanup.policy": "compact"})
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10_000})
    rng = random.Random(0)
    count = 0
    with tqdm(total=users * updates_per_user, desc=f"writing {topic}", unit="update", file=sys.stderr) as progress:
        for n in range(updates_per_user):
            for user in range(users):
                user_id = f"user-{user:07d}"
                while True:
                    try:
                        producer.produce(topic, encode_intent_update(sample_update(user_id, n, rng), "msgpack"),
                                         user_id.encode())  # fmt: skip
                        break
                    except BufferError:
                        producer.poll(0.05)
                count += 1
                if count % 10_000 == 0:
                    producer.poll(0)
                    progress.update(10_000)
        assert producer.flush(120) == 0, "updates not delivered"
        progress.update(count - progress.n)
    return count


def start_serve(bootstrap: str, topic: str, port: int, log_path: Path) -> tuple[subprocess.Popen, float]:
    """serve in a process; (process, seconds from start until /healthz was ready)."""
    started = time.monotonic()
    command = [sys.executable, "-m", "stream.cli", "serve", "--brokers", bootstrap, "--topic", topic, "--host",
               "127.0.0.1", "--port", str(port)]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, stdout=log_path.open("ab"), stderr=subprocess.STDOUT,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    wait_ready(f"http://127.0.0.1:{port}/healthz", process, log_path)
    return process, time.monotonic() - started


def wait_ready(url: str, process: subprocess.Popen, log_path: Path, timeout: float = 900.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise SystemExit(f"{url}: the process exited ({process.returncode}); see {log_path}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} not ready within {timeout:g} s; see {log_path}")
        time.sleep(0.05)


def wrk(url: str, script: str, seconds: int, connections: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(script)
    done = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", lua.name, url],
                          capture_output=True, text=True, check=True)  # fmt: skip
    os.unlink(lua.name)
    result = json.loads(re.search(r"^RESULT (.*)$", done.stdout, re.M).group(1))
    result["rate"] = result["requests"] / result["seconds"]
    return result


def summary(runs: list[dict], key: str) -> str:
    values = [run[key] for run in runs]
    median = statistics.median(values)
    return f"{median:,.2f} [{min(values):,.2f}, {max(values):,.2f}]" if len(values) > 1 else f"{median:,.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--updates-per-user", type=int, default=10)
    parser.add_argument("--rate", type=int, default=2_000, help="paced requests/s")
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--seconds", type=int, default=20, help="per wrk run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/lookup.md")
    args = parser.parse_args()
    # Each connection waits this between requests; a request's own time comes on top, so the wait is
    # cut by 10% to offer at least --rate.
    pause_ms = max(1, int(args.connections * 1000 / args.rate * 0.9))
    work = Path(tempfile.mkdtemp(prefix="bench-lookup-"))

    with ApacheKafkaBroker(work / "kafka") as broker:
        written = fill_topic(broker.bootstrap, "latest", args.users, args.updates_per_user)
        fill_topic(broker.bootstrap, "latest-small", 1_000, 1)
        small, _ = start_serve(broker.bootstrap, "latest-small", free_loopback_port(), work / "serve-small.log")
        baseline_mb = resident_mb(small.pid)
        small.terminate(), small.wait()

        port = free_loopback_port()
        serve, catch_up_s = start_serve(broker.bootstrap, "latest", port, work / "serve.log")
        held_mb = resident_mb(serve.pid)
        url = f"http://127.0.0.1:{port}"
        asked = {"user_ids": [f"user-{user:07d}" for user in random.Random(1).sample(range(args.users), 100)]}
        with urllib.request.urlopen(urllib.request.Request(f"{url}/users:batchGet", json.dumps(asked).encode())) as answer:
            assert len(json.loads(answer.read())["updates"]) == 100, "batchGet does not answer every user asked"
        try:
            paced = [wrk(url, WRK_SCRIPT % dict(seed=i, users=args.users, pause_ms=pause_ms), args.seconds,
                         args.connections) for i in range(args.repeats)]  # fmt: skip
            unpaced = [wrk(url, WRK_SCRIPT % dict(seed=100 + i, users=args.users, pause_ms=0), args.seconds,
                           args.connections) for i in range(args.repeats)]  # fmt: skip
            batch = [wrk(url, BATCH_SCRIPT % dict(users=args.users), args.seconds, 4)]
            screenshot(f"{url}/?user=user-0000042", args.out.with_name("lookup-page.png"))
        finally:
            serve.terminate(), serve.wait()

    bare_port = free_loopback_port()
    bare = subprocess.Popen([sys.executable, str(ROOT / "bench/peers/bare_http.py"), str(bare_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{bare_port}/healthz", bare, Path("/dev/null"))
        ceiling = [wrk(f"http://127.0.0.1:{bare_port}", WRK_SCRIPT % dict(seed=200 + i, users=args.users, pause_ms=0),
                       args.seconds, args.connections) for i in range(args.repeats)]  # fmt: skip
    finally:
        bare.terminate(), bare.wait()

    for run in paced + unpaced + batch + ceiling:
        assert run["errors"] == 0 and run["non2xx"] == 0, run
    per_user_kb = (held_mb - baseline_mb) * 1024 / (args.users - 1_000)
    ratio = statistics.median(r["rate"] for r in unpaced) / statistics.median(r["rate"] for r in ceiling)
    command = "python bench/lookup.py " + " ".join(sys.argv[1:])
    lines = [
        "# Lookup service: `intentstream serve` under load",
        "",
        f"`{command.strip()}` on {time.strftime('%Y-%m-%d')}: {args.users:,} users held, {written:,} updates on a "
        f"compacted topic of {PARTITIONS} partitions (Apache Kafka 4.4 from the jars, loopback), msgpack; wrk 1 "
        f"thread, {args.connections} connections, {args.seconds} s per run, {args.repeats} runs: median "
        "[min, max]. The machine has 2 cores: wrk, the broker and serve share them.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| GET /users/{{id}}/intent paced at {args.rate:,}/s: achieved requests/s | {summary(paced, 'rate')} |",
        f"| ... p50 latency, ms | {summary(paced, 'p50_ms')} |",
        f"| ... p99 latency, ms (target <= 5) | {summary(paced, 'p99_ms')} |",
        f"| GET unpaced: requests/s | {summary(unpaced, 'rate')} |",
        f"| ... p99 latency at that rate, ms | {summary(unpaced, 'p99_ms')} |",
        f"| peer: uvicorn + Starlette answering a fixed update from memory, unpaced: requests/s | "
        f"{summary(ceiling, 'rate')} |",
        f"| serve's unpaced rate / the peer's | {ratio:.2f} |",
        f"| POST /users:batchGet of 100 users, 4 connections: requests/s (users/s) | {batch[0]['rate']:,.0f} "
        f"({batch[0]['rate'] * 100:,.0f}) |",
        f"| ... p50 / p99 latency, ms | {batch[0]['p50_ms']:.2f} / {batch[0]['p99_ms']:.2f} |",
        f"| restart: start to ready over {written:,} updates, s | {catch_up_s:.1f} |",
        f"| ... per million updates on the topic, s | {catch_up_s / (written / 1e6):.1f} |",
        f"| resident memory holding {args.users:,} users, MB (1,000 users: {baseline_mb:.0f}) | {held_mb:.0f} |",
        f"| memory per user held, KB | {per_user_kb:.2f} |",
        "",
        "The page (`GET /?user=user-0000042`), as headless Chromium drew it during the run:",
        "",
        "![the lookup page](lookup-page.png)",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
