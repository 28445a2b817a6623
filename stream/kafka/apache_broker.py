"""A real Apache Kafka 4.x broker for tests and bench campaigns: one JVM in KRaft combined mode
(broker and controller), started from the official jars, on free loopback ports.

    with ApacheKafkaBroker(work_dir) as broker:       # work_dir: server.properties, data/, broker.log
        create_topics(broker.bootstrap, ["plays"])
        broker.restart()                              # same ports and log dirs: the data survives
        broker.kill()                                 # SIGKILL, for crash tests; start() brings it back

The jars come from `libs` (the folder of jars, or the folder holding libs/), else from the environment
variable INTENTSTREAM_BROKER_JARS (not INTENTSTREAM_KAFKA_*: those are Kafka client settings), else from deploy/kafka/fetch.sh (Maven Central, cached). Java 17 or
newer must be on PATH or in JAVA_HOME.

Unlike the embedded Tansu broker, it keeps its data on disk and enforces topic configuration
(compaction included), and it does not auto-create topics (auto.create.topics.enable=false): create
them, with their per-topic settings, first. The log cleaner looks for work every 100 ms, so a
compacted topic with small segment.ms / min.cleanable.dirty.ratio is compacted within seconds.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from stream.kafka.broker import free_loopback_ports

log = logging.getLogger(__name__)

FETCH_SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "fetch.sh"

# Start to first answer on the shared 2-core machine, format included / restart, without the class
# archive: these options 5.2 s / 3.2 s; C2 as well 6.0-6.8 s / 5.3-6.0 s; G1 and C2 (the JVM's
# defaults) 6.8-7.2 s / 4.5-5.7 s. With the archive these options take 1.8-2.7 s / 1.3-1.9 s. C1 alone
# costs peak throughput: a long soak may pass jvm_options without -XX:TieredStopAtLevel=1.
JVM_OPTIONS = ("-Xms64m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true")

# Server properties under which retention acts within a second: the broker looks for segments to
# delete every 200 ms from its start (by default every 5 minutes, the first time 30 s after start).
QUICK_RETENTION = {"log.retention.check.interval.ms": 200, "log.initial.task.delay.ms": 0}


def retained_bytes(segment_bytes: int, retention_bytes: int) -> dict[str, str]:
    """Topic configuration that keeps about `retention_bytes` per partition in segments of
    `segment_bytes`, so that old segments go while a test watches (with QUICK_RETENTION). Kafka 4
    refuses a `segment.bytes` under 1 MiB; `internal.segment.bytes` is its override for tests. A
    producer must then send record batches no larger than a segment (`batch.size`)."""
    return {"internal.segment.bytes": str(segment_bytes), "retention.bytes": str(retention_bytes)}


def _wait_until_stopped(pid: int, timeout: float = 10.0) -> None:
    """Return once every thread of `pid` is stopped. os.kill returns before SIGSTOP has acted: the
    thread picked to take it must first be scheduled, and then stops the others. On a loaded machine
    the broker's network threads went on serving requests for tens of milliseconds meanwhile."""
    tasks = Path(f"/proc/{pid}/task")
    if not tasks.is_dir():  # no procfs: allow a generous moment instead
        time.sleep(0.5)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = []
        for stat in tasks.glob("*/stat"):
            try:
                states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
            except (OSError, IndexError):  # the thread ended meanwhile
                continue
        if states and all(state in "tT" for state in states):
            return
        time.sleep(0.002)
    raise RuntimeError(f"process {pid} did not stop within {timeout:g}s of SIGSTOP")


LOG4J2_PROPERTIES = """\
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = out
"""


def find_java() -> str:
    home = os.environ.get("JAVA_HOME")
    candidate = Path(home, "bin", "java") if home else None
    java = str(candidate) if candidate and candidate.is_file() else shutil.which("java")
    if not java:
        raise RuntimeError("no `java` on PATH or in JAVA_HOME: the Apache Kafka broker needs Java 17+ "
                           "(apt-get install openjdk-17-jre-headless)")
    return java


def find_libs(libs: str | os.PathLike | None = None) -> Path:
    """The folder of the Kafka broker's jars: `libs`, else $INTENTSTREAM_BROKER_JARS, else what
    deploy/kafka/fetch.sh fetches (or finds in its cache)."""
    given = libs or os.environ.get("INTENTSTREAM_BROKER_JARS")
    if given:
        path = Path(given)
    else:
        if not FETCH_SCRIPT.is_file():
            raise RuntimeError(f"no Kafka jars: set INTENTSTREAM_BROKER_JARS ({FETCH_SCRIPT} is missing)")
        fetched = subprocess.run(["bash", str(FETCH_SCRIPT)], stdin=subprocess.DEVNULL,
                                 capture_output=True, text=True)
        if fetched.returncode != 0:
            raise RuntimeError(f"{FETCH_SCRIPT} failed with status {fetched.returncode}: "
                               f"{fetched.stderr.strip()[-2000:]}")
        path = Path(fetched.stdout.strip())
    if (path / "libs").is_dir():
        path = path / "libs"
    if not any(path.glob("kafka_2.13-*.jar")):
        raise RuntimeError(f"no Kafka broker jars (kafka_2.13-*.jar) in {path}: run deploy/kafka/fetch.sh")
    return path


def _broker_answers(bootstrap: str, timeout: float) -> bool:
    admin = AdminClient({"bootstrap.servers": bootstrap, "logger": log})
    try:
        # The broker opens its client listener only once it is registered and unfenced; the check
        # for a listed broker is belt and braces.
        return len(admin.list_topics(timeout=timeout).brokers) > 0
    except KafkaException:
        return False


class ApacheKafkaBroker:
    """An Apache Kafka broker+controller (KRaft) process whose storage lives in `work_dir`.

    `bootstrap` is "127.0.0.1:port" once started. Without `work_dir`, a temporary one that a clean
    `stop()` removes (a failed start keeps it: the error message names its log). `server_properties`
    are added to (and override) the generated ones; `jvm_options` replace JVM_OPTIONS. With
    `class_archive`, the first clean stop writes a class-data-sharing archive beside the jars that
    later starts map (see `_class_archive`)."""

    START_ATTEMPTS = 3  # a free port can be taken between probing it and the broker binding it

    def __init__(
        self,
        work_dir: str | os.PathLike | None = None,
        *,
        libs: str | os.PathLike | None = None,
        start_timeout: float = 60.0,
        server_properties: Mapping[str, object] | None = None,
        jvm_options: Sequence[str] = JVM_OPTIONS,
        class_archive: bool = True,
    ) -> None:
        self.work_dir = Path(work_dir) if work_dir else None
        self.libs = libs
        self.start_timeout = start_timeout
        self.server_properties = dict(server_properties or {})
        self.jvm_options = list(jvm_options)
        self.class_archive = class_archive
        self._archive_staging: tuple[Path, Path] | None = None  # (being written, final name)
        self.bootstrap = ""
        self.start_seconds: float | None = None  # how long the last start took, formatting included
        self._ports: tuple[int, int] | None = None  # (client, controller): kept across restarts
        self._temporary = False
        self._process: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.work_dir / "broker.log"

    @property
    def data_dir(self) -> Path:
        return self.work_dir / "data"

    def start(self) -> "ApacheKafkaBroker":
        started = time.monotonic()
        libs = find_libs(self.libs)
        java = find_java()
        if self.work_dir is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="intentstream-kafka-"))
            self._temporary = True
        self.work_dir.mkdir(parents=True, exist_ok=True)
        failure = ""
        for _ in range(1 if self._ports else self.START_ATTEMPTS):
            ports = self._ports or tuple(free_loopback_ports(2))
            self._write_config(ports)
            if not (self.data_dir / "meta.properties").exists():
                self._format(java, libs)
            with open(self.log_path, "ab") as log_file:
                self._process = subprocess.Popen(
                    self._java_command(java, libs, "kafka.Kafka", str(self.work_dir / "server.properties"),
                                       dump_classes=True),
                    stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C reaches us, and we stop the broker in order
                )
            failure = self._wait_until_ready(f"127.0.0.1:{ports[0]}")
            if not failure:
                self._ports = ports
                self.bootstrap = f"127.0.0.1:{ports[0]}"
                self.start_seconds = time.monotonic() - started
                log.info("Apache Kafka broker at %s in %.1fs, work dir %s", self.bootstrap, self.start_seconds, self.work_dir)
                return self
            exited = self._process.poll() is not None
            self._end_process(signal.SIGKILL)
            if not exited:  # a taken port makes it exit at once: a slow start is no port clash
                break
        raise RuntimeError(f"the Apache Kafka broker did not start: {failure}\n"
                           f"--- last lines of {self.log_path} ---\n{self._log_tail()}")

    def _java_command(self, java: str, libs: Path, main: str, *args: str, dump_classes: bool = False) -> list[str]:
        command = [java, *self.jvm_options, f"-Dlog4j2.configurationFile={self.work_dir / 'log4j2.properties'}"]
        archive = self._class_archive(java, libs)
        if archive and archive.exists():
            command.append(f"-XX:SharedArchiveFile={archive}")
        elif archive and dump_classes and os.access(libs, os.W_OK):
            # Written when the JVM exits cleanly; `_end_process` moves it into place.
            self._archive_staging = (archive.with_name(f"{archive.name}.{uuid.uuid4().hex}.tmp"), archive)
            command.append(f"-XX:ArchiveClassesAtExit={self._archive_staging[0]}")
        return [*command, "-cp", str(libs / "*"), main, *args]

    def _class_archive(self, java: str, libs: Path) -> Path | None:
        """The class-data-sharing archive of the broker's classes, which cuts a start by a third to a
        half. It lives among the jars (a new fetch replaces it with them), named after the JVM, since
        an archive only serves the JVM that wrote it."""
        if not self.class_archive:
            return None
        binary = Path(java).resolve()
        key = hashlib.sha256(f"{binary}:{binary.stat().st_mtime_ns}".encode()).hexdigest()[:12]
        return libs / f"classes-{key}.jsa"

    def _write_config(self, ports: tuple[int, int]) -> None:
        client, controller = ports
        properties: dict[str, object] = {
            "node.id": 1,
            "process.roles": "broker,controller",
            "listeners": f"PLAINTEXT://127.0.0.1:{client},CONTROLLER://127.0.0.1:{controller}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{client}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            # A dynamic (KIP-853) quorum of this one controller, formatted with --standalone.
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{controller}",
            "log.dirs": str(self.data_dir),
            "auto.create.topics.enable": "false",
            "num.partitions": 1,
            "offsets.topic.replication.factor": 1,
            "offsets.topic.num.partitions": 1,  # 50 by default: the first consumer group would wait for all
            "transaction.state.log.replication.factor": 1,
            "transaction.state.log.min.isr": 1,
            "transaction.state.log.num.partitions": 1,
            "share.coordinator.state.topic.replication.factor": 1,
            "share.coordinator.state.topic.min.isr": 1,
            "group.initial.rebalance.delay.ms": 0,
            # After a kill the restarted broker cannot register until the old session expires (9 s
            # by default).
            "broker.session.timeout.ms": 3000,
            "broker.heartbeat.interval.ms": 500,
            "log.cleaner.backoff.ms": 100,
            "log.cleaner.dedupe.buffer.size": 8 * 1024 * 1024,  # 128 MiB by default, a quarter of the heap
            "num.network.threads": 2,
            "num.io.threads": 2,
            **self.server_properties,
        }
        text = "".join(f"{key}={value}\n" for key, value in properties.items())
        (self.work_dir / "server.properties").write_text(text)
        (self.work_dir / "log4j2.properties").write_text(LOG4J2_PROPERTIES)

    def _format(self, java: str, libs: Path) -> None:
        # One in 64 of these ids starts with "-": given as --cluster-id=ID, never as an option of its own.
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        formatted = subprocess.run(
            self._java_command(java, libs, "kafka.tools.StorageTool", "format", "--standalone",
                               f"--cluster-id={cluster_id}", "-c", str(self.work_dir / "server.properties")),
            stdin=subprocess.DEVNULL, capture_output=True, text=True,
        )
        if formatted.returncode != 0:
            raise RuntimeError(f"formatting the Kafka storage in {self.data_dir} failed "
                               f"(status {formatted.returncode}): {(formatted.stdout + formatted.stderr).strip()[-2000:]}")

    def _wait_until_ready(self, bootstrap: str) -> str:
        """'' once the broker answers; otherwise why it did not."""
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return f"it exited with status {self._process.returncode} before answering at {bootstrap}"
            if _broker_answers(bootstrap, timeout=0.5):
                return ""
            time.sleep(0.1)
        return f"no answer at {bootstrap} within {self.start_timeout:g}s"

    def _log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as error:
            return f"(unreadable: {error})"

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (a clean shutdown: the logs are flushed and closed), SIGKILL if it takes too long."""
        crashed = self._process is not None and self._process.poll() is not None
        self._end_process(signal.SIGTERM, timeout)
        if crashed:
            log.warning("the Apache Kafka broker had exited by itself; its log: %s", self.log_path)
        elif self._temporary and self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            self.work_dir, self._ports, self._temporary = None, None, False

    def kill(self) -> None:
        """SIGKILL: a crash. The data written so far stays in the work dir; `start()` recovers it."""
        self._end_process(signal.SIGKILL)

    @property
    def pid(self) -> int:
        return self._process.pid

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """SIGSTOP while inside, SIGCONT after: a broker that holds its connections and answers nothing
        (a long GC pause, a hung disk, a partitioned host)."""
        if self._process is None or self._process.poll() is not None:
            raise RuntimeError(f"the Apache Kafka broker is not running, so it cannot be frozen; its log: {self.log_path}")
        os.kill(self.pid, signal.SIGSTOP)
        try:
            _wait_until_stopped(self.pid)
            yield
        finally:
            os.kill(self.pid, signal.SIGCONT)

    def restart(self, *, crash: bool = False) -> "ApacheKafkaBroker":
        """Stop (or, with `crash`, kill) and start again on the same ports with the same log dirs."""
        self._end_process(signal.SIGKILL if crash else signal.SIGTERM)
        return self.start()

    def _end_process(self, sig: signal.Signals, timeout: float = 30.0) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("the Apache Kafka broker did not stop within %gs; killing it", timeout)
                process.kill()
                process.wait()
        if self._archive_staging:
            (staging, archive), self._archive_staging = self._archive_staging, None
            if process is not None and process.returncode in (0, 128 + signal.SIGTERM) and staging.exists():
                os.replace(staging, archive)
            else:  # a killed JVM leaves none or half a one
                staging.unlink(missing_ok=True)

    def __enter__(self) -> "ApacheKafkaBroker":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
