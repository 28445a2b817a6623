"""Hostile requests to the lookup service: what a real `intentstream serve` answers to bodies and
limits meant to make it hold more than it should, and what that costs it in memory.

    python bench/lookup_hostile.py [--users 10000] [--flood 32] [--chunked-mb 64]

An Apache Kafka broker from the jars (deploy/kafka/fetch.sh) gets a compacted topic of `--users`
users (bench/lookup.py's updates); `intentstream serve` (default --max-batch-get 1000) reads it.
Then, over raw sockets (no client that would fix a request up), one at a time:

- POST /users:batchGet declaring a 5 GB body (Content-Length), and sending nothing after the head;
- POST /users:batchGet with one user id of 5 MB, its length declared (the issue's reproduction);
- POST /users:batchGet streaming a chunked body of `--chunked-mb` MB (no length declared);
- POST /users:batchGet with an id of 129 characters;
- GET /users?limit=-1, 0 and 101;

then `--flood` clients at once, each streaming a chunked body of `--chunked-mb` MB. For each: the
status, the time to the answer and how much of the body was sent before it came; the 413s serve's
own metric counts (a client still sending when serve answers and closes gets a connection reset
instead of the answer); serve's peak resident memory (VmHWM) before the requests and after the flood. Replaces its own section of
bench/results/hostile.md (the part from its heading to the next "# " heading), leaving the rest.
"""
from __future__ import annotations

import argparse
import json
import re
import select
import shlex
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from bench.lookup import fill_topic, start_serve  # noqa: E402
from bench.process_memory import resident_mb  # noqa: E402
from bench.results_section import write_section  # noqa: E402
from stream.kafka.apache_broker import ApacheKafkaBroker  # noqa: E402
from stream.kafka.broker import free_loopback_port  # noqa: E402
from stream.lookup.app import batch_get_body_limit  # noqa: E402
from stream.settings import LookupSettings  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "hostile.md"
HEADING = "# Hostile requests to the lookup service"
CHUNK = 64 * 1024
ANSWER_TIMEOUT_S = 60.0


@dataclass
class Answer:
    status: int | str  # the HTTP status, or what happened instead ("no answer in 60 s", "reset")
    seconds: float  # from the first byte sent to the answer
    body_sent: int  # bytes of body sent before the answer came (or the sending stopped)
    error: str = ""  # the answer's JSON error, shortened


def ask(port: int, head: str, body: Iterable[bytes] = ()) -> Answer:
    """Send `head`, then the parts of `body` one by one, stopping as soon as an answer is there to
    read (each part gets 2 ms for one to come); then read the answer."""
    started = time.monotonic()
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT_S) as connection:
        try:
            connection.sendall(head.encode())
            for part in body:
                if select.select([connection], [], [], 0.002)[0]:
                    break
                connection.sendall(part)
                sent += len(part)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed the connection: its answer may be there to read
        try:
            reply = connection.makefile("rb").read()
        except ConnectionResetError:
            return Answer("connection reset, no answer read", time.monotonic() - started, sent)
        except TimeoutError:
            return Answer(f"no answer in {ANSWER_TIMEOUT_S:g} s", time.monotonic() - started, sent)
    seconds = time.monotonic() - started
    status_line, _, rest = reply.partition(b"\r\n")
    if not status_line:
        return Answer("closed without an answer", seconds, sent)
    payload = rest.partition(b"\r\n\r\n")[2]
    try:
        error = json.loads(payload).get("error", "")
    except ValueError:
        error = ""
    return Answer(int(status_line.split()[1]), seconds, sent, error)


def pieces(data: bytes) -> Iterator[bytes]:
    return (data[start : start + CHUNK] for start in range(0, len(data), CHUNK))


def chunked(total: int) -> Iterator[bytes]:
    """A chunked body of `total` bytes, in 64 KB chunks."""
    framed = b"%x\r\n%s\r\n" % (CHUNK, b"x" * CHUNK)
    return (framed for _ in range(total // CHUNK))


def batch_get_head(extra: str) -> str:
    return ("POST /users:batchGet HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nConnection: close\r\n"
            f"{extra}\r\n")  # fmt: skip


def hostile_requests(port: int, chunked_bytes: int) -> list[tuple[str, Answer]]:
    five_mb_id = json.dumps({"user_ids": ["u" * (5 << 20)]}).encode()
    too_long_id = json.dumps({"user_ids": ["u" * 129]}).encode()
    answers = [
        ("batchGet declaring a 5 GB body, sending none of it", ask(port, batch_get_head("Content-Length: 5000000000\r\n"))),
        ("batchGet of one 5 MB user id (length declared)",
         ask(port, batch_get_head(f"Content-Length: {len(five_mb_id)}\r\n"), pieces(five_mb_id))),
        (f"batchGet streaming {chunked_bytes >> 20} MB chunked (no length)",
         ask(port, batch_get_head("Transfer-Encoding: chunked\r\n"), chunked(chunked_bytes))),
        ("batchGet of a 129-character id",
         ask(port, batch_get_head(f"Content-Length: {len(too_long_id)}\r\n"), [too_long_id])),
    ]  # fmt: skip
    for limit in ("-1", "0", "101"):
        answers.append((f"GET /users?limit={limit}", ask(port, f"GET /users?limit={limit} HTTP/1.1\r\nHost: bench\r\n"
                                                               "Connection: close\r\n\r\n")))  # fmt: skip
    return answers


def flood(port: int, clients: int, chunked_bytes: int) -> list[Answer]:
    answers: list[Answer] = []
    head = batch_get_head("Transfer-Encoding: chunked\r\n")
    threads = [threading.Thread(target=lambda: answers.append(ask(port, head, chunked(chunked_bytes))))
               for _ in range(clients)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def answered_413(port: int) -> int:
    """How many batchGet requests serve counts as answered 413 (its own metric)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        metrics = answer.read().decode()
    found = re.search(r'intentstream_lookup_requests_total\{route="/users:batchGet",status="413"\} (\S+)', metrics)
    return int(float(found.group(1))) if found else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--flood", type=int, default=32, help="clients streaming at once")
    parser.add_argument("--chunked-mb", type=int, default=64, help="what each streaming client would send")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    command = "python bench/lookup_hostile.py " + shlex.join(sys.argv[1:])
    chunked_bytes = args.chunked_mb << 20
    body_limit = batch_get_body_limit(LookupSettings.max_batch_get)

    with tempfile.TemporaryDirectory() as tmp, ApacheKafkaBroker(Path(tmp) / "kafka") as broker:
        topic = f"latest-hostile-{time.time_ns()}"
        fill_topic(broker.bootstrap, topic, args.users, 1)
        port = free_loopback_port()
        serve, _ = start_serve(broker.bootstrap, topic, port, Path(tmp) / "serve.log")
        try:
            peak_before = resident_mb(serve.pid, "VmHWM")
            answers = hostile_requests(port, chunked_bytes)
            flooded = flood(port, args.flood, chunked_bytes)
            peak_after = resident_mb(serve.pid, "VmHWM")
            refused = answered_413(port)
            alive = serve.poll() is None
            log_text = (Path(tmp) / "serve.log").read_text(errors="replace")
        finally:
            serve.terminate()
            serve.wait(30)

    outcomes = ", ".join(f"{n} {outcome}" for outcome, n in sorted(Counter(str(a.status) for a in flooded).items()))
    lines = [
        HEADING,
        "",
        f"Command: `{command}`  ",
        f"`intentstream serve` over Apache Kafka, {args.users:,} users, the default --max-batch-get "
        f"({LookupSettings.max_batch_get}): a batchGet body may be at most {body_limit:,} bytes. "
        f"{time.strftime('%Y-%m-%d')}, 2 shared cores.",
        "",
        "| request | answer | time to it | body sent before it |",
        "|---|---|---|---|",
        *[f"| {what} | {answer.status} {answer.error[:60]} | {answer.seconds * 1000:.0f} ms | "
          f"{answer.body_sent / 2**20:.2f} MB |" for what, answer in answers],  # fmt: skip
        "",
        f"- {args.flood} clients at once, each streaming {args.chunked_mb} MB chunked: {outcomes}; slowest "
        f"{max(a.seconds for a in flooded) * 1000:.0f} ms; at most {max(a.body_sent for a in flooded) / 2**20:.2f} MB "
        f"sent by one before its answer. serve counts {refused} batchGet requests answered 413 in all, these "
        f"{args.flood} and the {sum(1 for _, a in answers if a.status == 413)} above: a client that "
        "reads no answer was reset because it was still sending when serve answered and closed the connection.",
        f"- serve's peak resident memory: {peak_before:.0f} MB before these requests, {peak_after:.0f} MB after the "
        f"flood; still serving: {'yes' if alive else 'NO'}; tracebacks in its log: {log_text.count('Traceback')}.",
        "",
    ]
    print("\n".join(lines))
    write_section(args.out, HEADING, lines)


if __name__ == "__main__":
    main()
