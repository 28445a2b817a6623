"""Shared fixtures: a real Kafka-protocol broker for the integration tests, and fresh topics per test.

The broker is, in this order (DESIGN.md §6): KAFKA_BOOTSTRAP_SERVERS if set; Apache Kafka 4.x in KRaft
mode from the official jars where Java is found (stream.kafka.apache_broker; its log dirs on disk);
a testcontainers Kafka container if a Docker engine answers; else the embedded Tansu broker
(stream.kafka.broker.EmbeddedBroker). When none starts, the tests that need it fail; they never skip.

To produce and read in tests use stream.kafka.broker.produce_messages and stream.kafka.broker.read_topic.
`tiny_model_dir` is a real, tiny IntentRec checkpoint trained once per session.
"""
from __future__ import annotations

import os
import re
import shutil
import uuid
import warnings
from pathlib import Path

import pytest

from stream.harness import StreamTopics
from stream.kafka.apache_broker import ApacheKafkaBroker
from stream.kafka.broker import BrokerUnavailable, EmbeddedBroker, delete_topics, wait_for_broker

BROKER_USED = pytest.StashKey[str]()


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:  # no docker package, no socket, no permission, engine down: all mean "no"
        return False


def _kafka_container():
    try:
        from testcontainers.community.kafka import KafkaContainer
    except ImportError:  # testcontainers before the `community` split
        from testcontainers.kafka import KafkaContainer
    return KafkaContainer()


@pytest.fixture(scope="session")
def kafka_bootstrap(request, tmp_path_factory):
    """host:port of a running Kafka-protocol broker, shared by the whole session."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        try:
            wait_for_broker(configured, timeout=30)
        except BrokerUnavailable as error:
            pytest.fail(f"KAFKA_BOOTSTRAP_SERVERS is set but unusable: {error}")
        request.config.stash[BROKER_USED] = f"KAFKA_BOOTSTRAP_SERVERS={configured}"
        yield configured
        return

    failures = []
    if shutil.which("java") or os.environ.get("JAVA_HOME"):
        broker = ApacheKafkaBroker(tmp_path_factory.mktemp("apache-kafka"))
        try:
            broker.start()
        except Exception as error:
            failures.append(f"Apache Kafka: {error}")
        else:
            request.config.stash[BROKER_USED] = f"Apache Kafka at {broker.bootstrap} (log {broker.log_path})"
            try:
                yield broker.bootstrap
            finally:
                broker.stop()
            return
    else:
        failures.append("no Java for Apache Kafka")

    if _docker_answers():
        container = _kafka_container()
        try:
            container.start()
            bootstrap = container.get_bootstrap_server()
        except Exception as error:
            failures.append(f"testcontainers Kafka: {error}")
        else:
            request.config.stash[BROKER_USED] = f"testcontainers Kafka at {bootstrap}"
            try:
                yield bootstrap
            finally:
                container.stop()
            return
    else:
        failures.append("no Docker engine answered")

    broker = EmbeddedBroker(log_path=tmp_path_factory.mktemp("kafka") / "broker.log")
    try:
        broker.start()
    except Exception as error:
        failures.append(f"embedded broker: {error}")
        pytest.fail("no Kafka broker for the integration tests: " + "; ".join(failures))
    request.config.stash[BROKER_USED] = f"embedded Tansu broker at {broker.bootstrap} (log {broker.log_path})"
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


def pytest_terminal_summary(terminalreporter, config):
    if BROKER_USED in config.stash:
        terminalreporter.write_line(f"Kafka broker used: {config.stash[BROKER_USED]}")


@pytest.fixture
def make_topics(kafka_bootstrap, request):
    """make_topics(partitions=1) -> StreamTopics: fresh, uniquely named topics; deleted after the test."""
    created: list[str] = []
    test_name = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:80]

    def make(partitions: int = 1) -> StreamTopics:
        topics = StreamTopics.named(f"{test_name}-{uuid.uuid4().hex[:8]}-")
        topics.create(kafka_bootstrap, partitions)
        created.extend(topics.names)
        return topics

    yield make
    try:
        delete_topics(kafka_bootstrap, created)
    except RuntimeError as error:  # leftovers on a shared broker are untidy, not wrong: names are unique
        warnings.warn(f"could not delete test topics: {error}")


@pytest.fixture
def topics(make_topics) -> StreamTopics:
    """Fresh input/output/dlq/latest topics with one partition each."""
    return make_topics()


TINY_MODEL = dict(d_item=16, d_small=4, d_model=16, d_proj=8, n_heads=2, n_layers_item=1, attention_window=4)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A real, tiny IntentRec checkpoint, trained for one epoch on 20 synthetic users (seconds)."""
    from model.config import TrainConfig
    from model.playlogs.files import write_log
    from model.playlogs.synth import generate_world
    from model.training.train import train_model

    directory = tmp_path_factory.mktemp("tiny-model")
    log = directory / "world.jsonl"
    write_log(log, generate_world(seed=0, n_users=20, n_titles=60, days=10))
    train_model(log, directory / "model", train_config=TrainConfig(epochs=1), model_overrides=TINY_MODEL, progress=False)
    return directory / "model"


@pytest.fixture
def clean_environ(monkeypatch):
    """run_command reads os.environ: start every test from no INTENTSTREAM_* variables."""
    import os

    for name in list(os.environ):
        if name.startswith("INTENTSTREAM_"):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tests use tiny models, which gain nothing from intra-op threads and lose much when the CPUs
    are shared (threads spin against each other)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
