"""Prometheus metrics: the stream's counters as metrics after an in-memory run, the HTTP endpoint,
and `intentstream run --metrics-port` wiring them into the default registry."""
from __future__ import annotations

import dataclasses
import socket
import urllib.request

import pytest
from bytewax.connectors.kafka import KafkaSinkMessage, KafkaSourceMessage
from bytewax.testing import TestingSink, TestingSource, run_main
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from model.serving.scorer import Scorer
from model.playlogs.synth import generate_world
from schemas import ERROR_CODES, LATE, NOT_DECODABLE, decode_intent_update, encode_play_event
from stream.kafka.broker import free_loopback_port, produce_messages
from model.serving.incremental import load_serving_scorer
from stream.dataflow import StreamCounters, build_flow
from stream.errors import EXIT_FAILED, EXIT_USAGE
from stream.metrics import StreamMetrics, serving_metrics
from stream.service.options import service_settings_from_args
from stream.settings import StreamSettings
from tests.stream.service.run_args import REQUIRED, parse, run

HOUR_MS = 3_600_000


@pytest.fixture(scope="module")
def scorer(tiny_model_dir) -> Scorer:
    return Scorer.load(tiny_model_dir)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def messages_with_every_outcome() -> list[KafkaSourceMessage]:
    """Valid events of a few users, one exact copy, one late event and one undecodable message."""
    events = generate_world(seed=2, n_users=10, n_titles=60, days=10)[:60]
    values = [(e.user_id.encode(), encode_play_event(e, "json")) for e in events]
    values.append(values[5])  # a duplicate
    newest = max(events, key=lambda e: e.ts)
    late = dataclasses.replace(newest, event_id="late-1", ts=newest.ts - 10 * HOUR_MS)
    values.append((newest.user_id.encode(), encode_play_event(late, "json")))
    values.append((b"u-x", b"{not json"))
    return [KafkaSourceMessage(key=k, value=v, topic="plays", partition=0, offset=i) for i, (k, v) in enumerate(values)]


@pytest.fixture(scope="module")
def in_memory_run(scorer, tiny_model_dir):
    """One in-memory run of the flow, its counters feeding metrics in a registry of its own."""
    registry = CollectorRegistry()
    counters = StreamCounters(metrics=StreamMetrics(registry))
    sent: list[KafkaSinkMessage] = []
    settings = StreamSettings(brokers="unused:9092", model_dir=tiny_model_dir, format="json", batch_size=8,
                              lateness_s=3600.0, top_k=3)  # fmt: skip
    messages = messages_with_every_outcome()
    flow = build_flow(settings, load_serving_scorer(scorer), source=TestingSource(messages, batch_size=20),
                      sink=TestingSink(sent), counters=counters)  # fmt: skip
    run_main(flow)
    updates = [decode_intent_update(m.value, "json") for m in sent if m.topic == settings.output_topic]
    return registry, counters, updates, len(messages)


def test_the_counters_are_prometheus_metrics(in_memory_run):
    registry, counters, updates, message_count = in_memory_run

    assert counters.events_in == message_count
    assert counters.duplicates == 1 and counters.dead_letters == {LATE: 1, NOT_DECODABLE: 1}
    assert sample(registry, "intentstream_events_in_total") == counters.events_in
    assert sample(registry, "intentstream_updates_out_total") == counters.updates_out == len(updates)
    assert sample(registry, "intentstream_duplicates_total") == 1
    assert sample(registry, "intentstream_dead_letters_total", code=LATE) == 1
    assert sample(registry, "intentstream_dead_letters_total", code=NOT_DECODABLE) == 1
    for code in set(ERROR_CODES) - {LATE, NOT_DECODABLE}:  # every code has a series from the start
        assert sample(registry, "intentstream_dead_letters_total", code=code) == 0


def test_scored_batches_and_event_to_update_lag_are_histograms(in_memory_run):
    registry, _, updates, _ = in_memory_run

    # Every update was scored in exactly one batch, of at most --batch-size users.
    batches = sample(registry, "intentstream_score_batch_size_count")
    assert sample(registry, "intentstream_score_batch_size_sum") == len(updates)
    assert len(updates) / 8 <= batches <= len(updates)
    assert sample(registry, "intentstream_score_batch_size_bucket", le="8.0") == batches
    assert sample(registry, "intentstream_score_batch_seconds_count") == batches
    assert sample(registry, "intentstream_score_batch_seconds_sum") > 0

    # Lag: scored_at - ts of each update, in seconds (synthetic events are old: all above the top bucket).
    lags = [(u.scored_at - u.ts) / 1000 for u in updates]
    assert sample(registry, "intentstream_event_to_update_seconds_count") == len(updates)
    assert sample(registry, "intentstream_event_to_update_seconds_sum") == pytest.approx(sum(lags))
    assert sample(registry, "intentstream_event_to_update_seconds_bucket", le="3600.0") == sum(lag <= 3600 for lag in lags)


def test_the_endpoint_serves_the_registry(in_memory_run):
    registry, counters, _, _ = in_memory_run
    port = free_loopback_port()
    with serving_metrics(port, registry):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()

    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert values[("intentstream_events_in_total", ())] == counters.events_in
    assert values[("intentstream_dead_letters_total", (("code", LATE),))] == 1


def test_metrics_port_option(clean_environ):
    def metrics_port(*argv: str, env: dict[str, str]) -> int | None:
        return service_settings_from_args(parse(*REQUIRED, *argv), env).metrics_port

    assert metrics_port(env={}) is None  # off by default
    assert metrics_port("--metrics-port", "9100", env={}) == 9100
    assert metrics_port(env={"INTENTSTREAM_METRICS_PORT": "9200"}) == 9200
    assert metrics_port("--metrics-port", "9100", env={"INTENTSTREAM_METRICS_PORT": "9200"}) == 9100


@pytest.mark.parametrize("value", ["0", "65536", "http"])
def test_a_bad_metrics_port_is_a_bad_option(clean_environ, capsys, value):
    assert run("--brokers", "b:1", "--model", "/m", "--metrics-port", value) == EXIT_USAGE
    assert f"--metrics-port {value!r}" in capsys.readouterr().err


def test_run_counts_into_the_default_registry(clean_environ, kafka_bootstrap, topics, tiny_model_dir):
    events = generate_world(seed=2, n_users=10, n_titles=60, days=10)[:12]
    produce_messages(kafka_bootstrap, topics.input, [(e.user_id.encode(), encode_play_event(e, "json")) for e in events])
    before = {name: REGISTRY.get_sample_value(name) or 0.0
              for name in ("intentstream_events_in_total", "intentstream_updates_out_total")}  # fmt: skip

    code = run("--brokers", kafka_bootstrap, "--model", str(tiny_model_dir), "--format", "json",
               "--input-topic", topics.input, "--output-topic", topics.output, "--dlq-topic", topics.dlq,
               "--latest-topic", topics.latest, "--stop-at-end", "--metrics-port", str(free_loopback_port()))

    assert code == 0
    assert REGISTRY.get_sample_value("intentstream_events_in_total") - before["intentstream_events_in_total"] == 12
    assert REGISTRY.get_sample_value("intentstream_updates_out_total") - before["intentstream_updates_out_total"] == 12
    model = Scorer.load(tiny_model_dir).model_ref
    assert REGISTRY.get_sample_value("intentstream_model_info", {"name": model.name, "version": model.version}) == 1


def test_a_metrics_port_in_use_stops_it_before_consuming(clean_environ, capsys, kafka_bootstrap, topics, tiny_model_dir):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = run("--brokers", kafka_bootstrap, "--model", str(tiny_model_dir), "--input-topic", topics.input,
                   "--metrics-port", str(port))

    assert code == EXIT_FAILED
    assert f"cannot serve metrics on port {port}" in capsys.readouterr().err


