"""`intentstream serve` as a real process over a real broker: it rebuilds the table from the
compacted topic, follows it, keeps the newest update when partitions interleave, answers what a
running `intentstream run` just wrote, and stops before serving on bad options."""
from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka import Producer

from schemas import PlayEvent, encode_intent_update, encode_play_event
from stream.kafka.broker import create_topics, free_loopback_port, produce_messages
from tests.stream.lookup.certificates import make_certificates
from tests.stream.lookup.updates import get, post, update
from tests.stream.service.test_processes import REPO_ROOT, outputs_of, start_run, stop, tail

FORMAT = "msgpack"
STARTUP_S = 60.0


class Serve:
    """`intentstream serve` in a subprocess; `context`: the client's TLS settings, for a serve given --tls-cert."""

    def __init__(self, bootstrap: str, topic: str, log_path: Path, *options: str, fmt: str = FORMAT,
                 context: ssl.SSLContext | None = None):  # fmt: skip
        self.port = free_loopback_port()
        self.context = context
        self.url = f"{'https' if context else 'http'}://127.0.0.1:{self.port}"
        self.log_path = log_path
        command = [sys.executable, "-m", "stream.cli", "serve", "--brokers", bootstrap, "--topic", topic,
                   "--format", fmt, "--host", "127.0.0.1", "--port", str(self.port), *options]  # fmt: skip
        with open(log_path, "ab") as log_file:
            self.process = subprocess.Popen(command, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log_file,
                                            stderr=subprocess.STDOUT)  # fmt: skip

    def wait_until_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_S
        while True:
            assert self.process.poll() is None, f"serve exited ({self.process.returncode}):\n{tail(self.log_path)}"
            try:
                if get(f"{self.url}/healthz", self.context)[0] == 200:
                    return
            except OSError:
                pass  # not listening yet
            assert time.monotonic() < deadline, f"serve not ready within {STARTUP_S:g} s:\n{tail(self.log_path)}"
            time.sleep(0.1)

    def intent(self, user_id: str) -> dict | None:
        status, body = get(f"{self.url}/users/{user_id}/intent")
        assert status in (200, 404), body
        return body if status == 200 else None

    def wait_for(self, user_id: str, event_id: str, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            answer = self.intent(user_id)
            if answer is not None and answer["event_id"] == event_id:
                return answer
            assert time.monotonic() < deadline, f"{user_id} still answers {answer}:\n{tail(self.log_path)}"
            time.sleep(0.05)

    def stop(self) -> int:
        self.process.terminate()
        return self.process.wait(30)


def compacted_topic(bootstrap: str, name: str, partitions: int) -> str:
    create_topics(bootstrap, [name], partitions, config={"cleanup.policy": "compact"})
    return name


def write(bootstrap: str, topic: str, updates, partition: int | None = None, fmt: str = FORMAT) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for one in updates:
        extra = {} if partition is None else {"partition": partition}
        producer.produce(topic, encode_intent_update(one, fmt), one.user_id.encode(), **extra)
    assert producer.flush(30) == 0


@pytest.fixture
def serve_process(kafka_bootstrap, tmp_path):
    started: list[Serve] = []

    def start(topic: str, *options: str, fmt: str = FORMAT, context: ssl.SSLContext | None = None) -> Serve:
        started.append(Serve(kafka_bootstrap, topic, tmp_path / f"serve-{len(started)}.log", *options, fmt=fmt,
                             context=context))  # fmt: skip
        return started[-1]

    yield start
    for one in started:
        if one.process.poll() is None:
            one.process.kill()
            one.process.wait()


def test_serve_rebuilds_the_table_follows_the_topic_and_a_restart_rebuilds_the_same(
    kafka_bootstrap, serve_process, request
):  # fmt: skip
    topic = compacted_topic(kafka_bootstrap, f"latest-{request.node.name[:40]}-{time.time_ns()}", partitions=3)
    users = [f"user-{i:03d}" for i in range(60)]
    write(kafka_bootstrap, topic, [update(user, ts=1_000) for user in users])
    write(kafka_bootstrap, topic, [update(user, ts=2_000, label="comedy") for user in users[:30]])

    serve = serve_process(topic)
    serve.wait_until_ready()
    assert serve.intent("user-000")["intents"]["genre"][0]["label"] == "comedy"
    assert serve.intent("user-059")["ts"] == 1_000
    assert serve.intent("nobody") is None
    status, before = post(f"{serve.url}/users:batchGet", {"user_ids": users})
    assert status == 200 and len(before["updates"]) == 60 and before["missing"] == []

    write(kafka_bootstrap, topic, [update("user-059", ts=3_000, label="horror")])  # followed once ready
    assert serve.wait_for("user-059", "user-059-3000")["intents"]["genre"][0]["label"] == "horror"
    # An older update for user-000 arrives later, on another partition than its newer one: it loses.
    write(kafka_bootstrap, topic, [update("user-000", ts=1_500, label="western")], partition=0)
    write(kafka_bootstrap, topic, [update("user-000", ts=1_400, label="western")], partition=1)
    write(kafka_bootstrap, topic, [update("new-user", ts=1_000)])  # a marker: everything before it was read
    serve.wait_for("new-user", "new-user-1000")
    assert serve.intent("user-000")["intents"]["genre"][0]["label"] == "comedy"
    _, metrics = get(f"{serve.url}/metrics")
    assert "intentstream_lookup_ready 1.0" in metrics

    status, followed = post(f"{serve.url}/users:batchGet", {"user_ids": [*users, "new-user"]})
    assert serve.stop() in (0, -15, 143)
    restarted = serve_process(topic)
    restarted.wait_until_ready()
    assert post(f"{restarted.url}/users:batchGet", {"user_ids": [*users, "new-user"]}) == (status, followed)


def test_serve_answers_what_a_running_scorer_just_wrote(kafka_bootstrap, make_topics, tiny_model_dir, serve_process,
                                                        tmp_path):  # fmt: skip
    topics = make_topics(partitions=2)
    run = start_run(kafka_bootstrap, tiny_model_dir, topics.input, outputs_of(topics), tmp_path / "run.log")
    try:
        serve = serve_process(topics.latest)
        serve.wait_until_ready()
        assert serve.intent("viewer-1") is None
        now = int(time.time() * 1000)
        for n, item in enumerate(("m1", "m2", "m3")):
            event = play_event(f"viewer-1-{n}", "viewer-1", item, now + n)
            produce_messages(kafka_bootstrap, topics.input, [(b"viewer-1", encode_play_event(event, FORMAT))])
            answer = serve.wait_for("viewer-1", f"viewer-1-{n}", timeout=90)
            assert answer["ts"] == now + n and len(answer["next_items"]) == 5
    finally:
        stop(run)


def play_event(event_id: str, user_id: str, item_id: str, ts: int) -> PlayEvent:
    return PlayEvent(event_id=event_id, user_id=user_id, item_id=item_id, ts=ts, action="play", duration_s=1200.0,
                     kind="movie", genres=("drama",), release_ts=0)  # fmt: skip


def test_serve_reads_json_as_run_writes_it_and_a_tombstone_forgets_a_user(kafka_bootstrap, serve_process):
    topic = compacted_topic(kafka_bootstrap, f"latest-json-{time.time_ns()}", partitions=2)
    write(kafka_bootstrap, topic, [update("u1", ts=1_000, label="drama"), update("u2", ts=1_000)], fmt="json")
    serve = serve_process(topic, fmt="json")
    serve.wait_until_ready()
    assert serve.intent("u1") == json.loads(encode_intent_update(update("u1", ts=1_000, label="drama"), "json"))
    produce_messages(kafka_bootstrap, topic, [(b"u1", None)])  # a tombstone: the user is gone
    write(kafka_bootstrap, topic, [update("marker", ts=1_000)], fmt="json")
    serve.wait_for("marker", "marker-1000")
    deadline = time.monotonic() + 30
    while serve.intent("u1") is not None:
        assert time.monotonic() < deadline, "u1 is still answered after its tombstone"
        time.sleep(0.05)
    assert serve.intent("u2")["user_id"] == "u2"


def test_a_topic_with_more_users_than_the_cap_stops_serve_under_refuse(kafka_bootstrap, serve_process, request):
    topic = compacted_topic(kafka_bootstrap, f"latest-cap-{time.time_ns()}", partitions=1)
    write(kafka_bootstrap, topic, [update(f"u{i}", ts=1_000) for i in range(5)])
    serve = serve_process(topic, "--max-users", "3", "--on-full", "refuse")
    assert serve.process.wait(STARTUP_S) == 1
    assert "more than 3 users, the cap (--max-users); raise the cap" in serve.log_path.read_text()


def test_serve_says_when_it_runs_open_and_a_token_is_needed_but_never_logged(kafka_bootstrap, serve_process,
                                                                              tmp_path):  # fmt: skip
    topic = compacted_topic(kafka_bootstrap, f"latest-access-{time.time_ns()}", partitions=1)
    write(kafka_bootstrap, topic, [update("u1", ts=1_000)])
    open_serve = serve_process(topic)
    open_serve.wait_until_ready()
    assert f"WARNING stream.lookup.service: open: anyone who reaches 127.0.0.1:{open_serve.port} reads every user's " \
           "intent" in open_serve.log_path.read_text()  # fmt: skip

    token = "token-0123456789abcdef-serve"
    (tmp_path / "token").write_text(token)
    guarded = serve_process(topic, "--token-file", str(tmp_path / "token"))
    guarded.wait_until_ready()
    assert get(f"{guarded.url}/users/u1/intent")[0] == 401
    request = urllib.request.Request(f"{guarded.url}/users/u1/intent", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert json.loads(answer.read())["user_id"] == "u1"
    assert guarded.stop() in (0, -15, 143)
    log = guarded.log_path.read_text()
    assert "need the bearer token, and it travels over plain HTTP" in log and "open:" not in log
    assert token not in log


def test_serve_with_mtls_answers_only_clients_with_a_certificate_from_its_ca(kafka_bootstrap, serve_process,
                                                                               tmp_path):  # fmt: skip
    certificates = make_certificates(tmp_path)
    topic = compacted_topic(kafka_bootstrap, f"latest-mtls-{time.time_ns()}", partitions=1)
    write(kafka_bootstrap, topic, [update("u1", ts=1_000)])

    def client(certificate: Path | None, key: Path | None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=certificates.ca)
        if certificate is not None:
            context.load_cert_chain(certificate, key)
        return context

    serve = serve_process(topic, "--tls-cert", str(certificates.server), "--tls-key", str(certificates.server_key),
                          "--tls-client-ca", str(certificates.ca),
                          context=client(certificates.client, certificates.client_key))  # fmt: skip
    serve.wait_until_ready()
    assert get(f"{serve.url}/users/u1/intent", serve.context)[1]["user_id"] == "u1"
    for stranger in (client(None, None), client(certificates.stranger, certificates.stranger_key)):
        with pytest.raises((ssl.SSLError, ConnectionError, urllib.error.URLError)):
            get(f"{serve.url}/users/u1/intent", stranger)
    assert "access: every connection needs a client certificate signed by --tls-client-ca" in \
        serve.log_path.read_text()  # fmt: skip


def test_a_port_in_use_stops_serve_before_it_serves(kafka_bootstrap, tmp_path):
    existing = compacted_topic(kafka_bootstrap, f"latest-port-{time.time_ns()}", partitions=1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "stream.cli", "serve", "--brokers", kafka_bootstrap, "--topic",
                               existing, "--host", "127.0.0.1", "--port", str(port)], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in done.stderr, done.stderr


@pytest.mark.parametrize("options, status, message", [
    (["--port", "0"], 2, "--port '0': not a TCP port"),
    (["--on-full", "drop"], 2, "--on-full 'drop': use evict or refuse"),
    (["--topic", "no-such-latest"], 1, "topic 'no-such-latest' (--topic) does not exist"),
    (["--token-file", "/no/such/token"], 2, "cannot read the token from --token-file /no/such/token"),
    (["--tls-cert", "/no/such/cert.pem"], 2, "cannot serve HTTPS with --tls-cert /no/such/cert.pem"),
])  # fmt: skip
def test_bad_options_stop_serve_before_it_serves(kafka_bootstrap, options, status, message, tmp_path):
    existing = compacted_topic(kafka_bootstrap, f"latest-options-{time.time_ns()}", partitions=1)
    done = subprocess.run([sys.executable, "-m", "stream.cli", "serve", "--brokers", kafka_bootstrap, "--topic",
                           existing, *options], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == status and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr  # one line, no traceback
