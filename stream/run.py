"""`intentstream run`: the streaming scorer as a long-running service.

Every option can also come from an environment variable INTENTSTREAM_<OPTION> (`--batch-size` ->
INTENTSTREAM_BATCH_SIZE); the command line beats the environment, which beats the default. Kafka
client settings (security.protocol, sasl.*, ssl.*) pass through from `--kafka-config FILE` and
INTENTSTREAM_KAFKA_<SETTING> (see stream/kafka/config.py).

Before it consumes anything, `run` checks, in this order, and stops with a message that says what to
fix: the options (exit status 2), the brokers and the input topic, the model and its runtime
backend, that the recovery directory holds no other model's state (exit status 1). Only then does it
change anything: it initialises an empty recovery directory and marks it with the model, starts
serving metrics (a port in use: exit status 1), and creates missing output topics (with the input
topic's partition count; the latest-update topic compacted).

Recovery directories: Bytewax needs its SQLite partitions created before the first run (`python -m
bytewax.recovery DIR N`). A single process initialises an absent or empty directory itself, with one
partition per worker. A cluster (`--process-id`/`--addresses`) does not, because its processes would
race to create partitions: initialise the directory once before starting the cluster.
A recovery directory belongs to one model: users' histories are snapshotted as feature rows holding
vocabulary indices of the model that wrote them, which another vocabulary would silently misread. So
`run` marks the directory with the model it serves (RECOVERY_MARKER) and refuses to resume it with a
model of another vocabulary or row layout. A retrained model with the same vocabulary may resume it.

Scoring is incremental: each user's new event is scored from the rows cached for the user's earlier
ones (model.serving.incremental; `--kv-cache-mb` of memory for them, 0 to recompute every event from the
history), run by `--backend`: eager PyTorch on the CPU by default, or eager:cuda, or an artifact of
`intentstream compile` (aoti:PATH, tensorrt:PATH).

Monitoring: `--metrics-port PORT` serves Prometheus metrics at http://0.0.0.0:PORT/metrics (see
stream/metrics.py). SIGTERM (docker stop, Kubernetes) stops the run like Ctrl-C: the dataflow stops,
the counters are logged, and a restart with the same --recovery-dir resumes from the last snapshot.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import signal
import sqlite3
import sys
from contextlib import ExitStack, closing, contextmanager
from dataclasses import asdict, dataclass, fields
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, TypeVar

from stream import parsing
from stream.kafka.checks import KafkaCheckError, check_brokers, create_output_topics
from stream.kafka.config import KafkaConfigError, kafka_client, redacted
from stream.metrics import StreamMetrics, default_metrics, serving_metrics
from stream.settings import StreamSettings

if TYPE_CHECKING:
    from model.serving.incremental import IncrementalScorer
    from model.serving.scorer import Scorer

log = logging.getLogger(__name__)

ENV_PREFIX = "INTENTSTREAM_"
FORMATS = ("json", "msgpack")
DEFAULT_CONNECT_TIMEOUT_S = 10.0
# Intra-op threads: the model is small, and on a busy machine 2 threads score 2-3x slower than 1.
DEFAULT_TORCH_THREADS = 1
EXIT_BAD_OPTION = 2
EXIT_UNUSABLE = 1  # unreachable broker, missing topic, bad model
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report it
EXIT_TERMINATED = 143  # SIGTERM, as shells report it
RECOVERY_MARKER = "intentstream.json"  # in a recovery directory: the model its state belongs to

T = TypeVar("T")


class SettingsError(ValueError):
    """An option that cannot be used; the message names it and says what to fix."""


def _default(name: str):
    """StreamSettings' default for a field: the one place defaults are written down."""
    return next(f.default for f in fields(StreamSettings) if f.name == name)


def _env(dest: str) -> str:
    return ENV_PREFIX + dest.upper()


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The `run` subcommand's options. Defaults are applied by `settings_from_args`, after the
    environment, so every option here defaults to None ("not given")."""
    kafka = parser.add_argument_group("Kafka")
    _option(kafka, "--brokers", "Kafka bootstrap servers, host:port[,host:port...] (or bootstrap.servers in "
            "--kafka-config)", metavar="HOST:PORT")
    _option(kafka, "--kafka-config", "Java-style properties file of Kafka client settings (security.protocol, "
            "sasl.*, ssl.*, ...); INTENTSTREAM_KAFKA_<SETTING> variables override it", metavar="FILE")
    _option(kafka, "--input-topic", f"topic of play events (default: {_default('input_topic')})", metavar="TOPIC")
    _option(kafka, "--output-topic", f"topic of intent updates (default: {_default('output_topic')})",
            metavar="TOPIC")
    _option(kafka, "--dlq-topic", f"dead-letter topic (default: {_default('dlq_topic')})", metavar="TOPIC")
    _option(kafka, "--latest-topic", "compacted topic of each user's latest update; an empty string disables "
            f"it (default: {_default('latest_topic')})", metavar="TOPIC")
    _option(kafka, "--format", f"encoding of the input and output topics: {' or '.join(FORMATS)} (default: "
            f"{_default('format')})", metavar="FORMAT")
    _option(kafka, "--connect-timeout", "how long to wait for the brokers at start-up (default: "
            f"{DEFAULT_CONNECT_TIMEOUT_S:g}s)", metavar="DURATION")

    scoring = parser.add_argument_group("Scoring")
    _option(scoring, "--model", "model directory made by `intentstream train`", metavar="DIR")
    _option(scoring, "--batch-size", f"most users scored together (default: {_default('batch_size')})", metavar="N")
    _option(scoring, "--history", "interactions kept per user (default: what the model attends to)", metavar="N")
    _option(scoring, "--top-k", f"next items per update (default: {_default('top_k')})", metavar="K")
    _option(scoring, "--ttl", "forget users idle longer than this, in event time (default: 30d)",
            metavar="DURATION")
    _option(scoring, "--lateness", "an event older than its user's newest by more than this is a dead letter "
            "(default: 1h)", metavar="DURATION")
    _option(scoring, "--backend", "what runs the model: eager, eager:cuda, aoti:PATH or tensorrt:PATH (an "
            f"artifact of `intentstream compile`) (default: {_default('backend')})", metavar="BACKEND")
    _option(scoring, "--kv-cache-mb", "memory for cached users' rows, from which a new event is scored "
            f"incrementally; 0 recomputes every event from its history (default: {_default('kv_cache_mb')})",
            metavar="MB")
    _option(scoring, "--torch-threads", f"intra-op threads of the model (default: {DEFAULT_TORCH_THREADS})",
            metavar="N")

    runtime = parser.add_argument_group("Recovery and scale-out")
    _option(runtime, "--recovery-dir", "Bytewax recovery directory: state and input offsets are snapshotted "
            "together (default: no recovery)", metavar="DIR")
    _option(runtime, "--snapshot-interval", "how often state is snapshotted (default: 10s)", metavar="DURATION")
    _option(runtime, "--workers", f"worker threads per process (default: {_default('workers')}); prefer "
            "processes", metavar="N")
    _option(runtime, "--process-id", "this process's index in --addresses (Bytewax cluster)", metavar="I")
    _option(runtime, "--addresses", "host:port of every process of the Bytewax cluster, comma-separated",
            metavar="HOST:PORT,...")
    _option(runtime, "--stop-at-end", "stop once the input topic's current end is reached (replays, "
            "backtests)", action=argparse.BooleanOptionalAction)

    monitoring = parser.add_argument_group("Monitoring")
    _option(monitoring, "--metrics-port", "serve Prometheus metrics at http://0.0.0.0:PORT/metrics (default: "
            "off)", metavar="PORT")


def _option(group, flag: str, help: str, **kwargs) -> None:
    dest = flag[2:].replace("-", "_")
    group.add_argument(flag, dest=dest, default=None, help=f"{help} [env: {_env(dest)}]", **kwargs)


# --- resolving an option: command line, then environment, then default ---------------------------


def _given(args: argparse.Namespace, environ: Mapping[str, str], dest: str) -> tuple[object, str] | None:
    """(value, where it came from) or None when neither the command line nor the environment set it."""
    value = getattr(args, dest, None)
    if value is not None:
        return value, f"--{dest.replace('_', '-')}"
    if _env(dest) in environ:
        return environ[_env(dest)], _env(dest)
    return None


def _resolve(
    args: argparse.Namespace, environ: Mapping[str, str], dest: str, parse: Callable[[str], T], default: T
) -> T:
    given = _given(args, environ, dest)
    if given is None:
        return default
    value, source = given
    if not isinstance(value, str):  # already typed by argparse (the --stop-at-end flag)
        return value
    try:
        return parse(value)
    except ValueError as error:
        shown = f"{source} {value!r}" if source.startswith("--") else f"{source}={value!r}"
        raise SettingsError(f"{shown}: {error}") from None


def connect_timeout_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> float:
    return _resolve(args, environ, "connect_timeout", parsing.positive_duration, DEFAULT_CONNECT_TIMEOUT_S)


def metrics_port_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> int | None:
    return _resolve(args, environ, "metrics_port", parsing.port, None)


def torch_threads_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    return _resolve(args, environ, "torch_threads", parsing.positive_int, DEFAULT_TORCH_THREADS)


def settings_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> StreamSettings:
    """Resolve and validate every option; raises SettingsError naming the option and what to fix.
    Looks at the recovery directory but changes nothing."""

    def option(dest: str, parse: Callable[[str], T], field: str | None = None) -> T:
        """An option whose default is StreamSettings' default for `field` (named like the option)."""
        return _resolve(args, environ, dest, parse, _default(field or dest))

    config_file = _resolve(args, environ, "kafka_config", Path, None)
    try:
        brokers, kafka_config = kafka_client(_resolve(args, environ, "brokers", parsing.brokers, None), config_file,
                                             environ)
    except KafkaConfigError as error:
        raise SettingsError(str(error)) from None
    if brokers is None:
        raise SettingsError("no Kafka brokers: pass --brokers HOST:PORT or set INTENTSTREAM_BROKERS")

    model_dir = _resolve(args, environ, "model", Path, None)
    if model_dir is None:
        raise SettingsError("no model: pass --model DIR (a directory made by `intentstream train`) or set "
                            "INTENTSTREAM_MODEL")

    settings = StreamSettings(
        brokers=brokers,
        model_dir=model_dir,
        format=option("format", parsing.wire_format),
        input_topic=option("input_topic", parsing.topic),
        output_topic=option("output_topic", parsing.topic),
        dlq_topic=option("dlq_topic", parsing.topic),
        latest_topic=option("latest_topic", parsing.optional_topic),
        batch_size=option("batch_size", parsing.positive_int),
        history=_resolve(args, environ, "history", parsing.positive_int, None),
        ttl_s=option("ttl", parsing.positive_duration, "ttl_s"),
        lateness_s=option("lateness", parsing.non_negative_duration, "lateness_s"),
        top_k=option("top_k", parsing.positive_int),
        backend=option("backend", parsing.backend),
        kv_cache_mb=option("kv_cache_mb", parsing.non_negative_int),
        recovery_dir=_resolve(args, environ, "recovery_dir", Path, None),
        snapshot_interval_s=option("snapshot_interval", parsing.positive_duration, "snapshot_interval_s"),
        workers=option("workers", parsing.positive_int),
        process_id=_resolve(args, environ, "process_id", parsing.non_negative_int, None),
        addresses=_resolve(args, environ, "addresses", parsing.host_port_list, ()),
        kafka_config=kafka_config,
        stop_at_end=option("stop_at_end", parsing.flag),
    )
    _check_topics_differ(settings)
    _check_cluster(settings)
    if settings.recovery_dir is not None:
        _check_recovery_dir(settings)
    return settings


def _check_topics_differ(settings: StreamSettings) -> None:
    seen: dict[str, str] = {}
    for flag, topic in (
        ("--input-topic", settings.input_topic),
        ("--output-topic", settings.output_topic),
        ("--dlq-topic", settings.dlq_topic),
        ("--latest-topic", settings.latest_topic),
    ):
        if topic is None:
            continue
        if topic in seen:
            raise SettingsError(f"{seen[topic]} and {flag} are both {topic!r}: every topic must be different")
        seen[topic] = flag


def _check_cluster(settings: StreamSettings) -> None:
    if settings.process_id is None and settings.addresses:
        raise SettingsError("--addresses is set but --process-id is not: give each process its index in "
                            "--addresses (INTENTSTREAM_PROCESS_ID)")
    if settings.process_id is not None and not settings.addresses:
        raise SettingsError("--process-id needs --addresses: the host:port of every process in the cluster, "
                            "comma-separated (INTENTSTREAM_ADDRESSES)")
    if settings.process_id is not None and settings.process_id >= len(settings.addresses):
        raise SettingsError(f"--process-id {settings.process_id} is out of range: --addresses lists "
                            f"{len(settings.addresses)} process(es), so it must be 0..{len(settings.addresses) - 1}")
    if len(set(settings.addresses)) != len(settings.addresses):
        raise SettingsError("--addresses lists the same host:port twice")


# --- the recovery directory --------------------------------------------------------------------

_PARTITION_FILE = re.compile(r"part-(\d+)\.sqlite3")


def _partition_files(directory: Path) -> dict[int, Path]:
    return {
        int(match.group(1)): path
        for path in directory.iterdir()
        if (match := _PARTITION_FILE.fullmatch(path.name))
    }


def _holds_nothing(directory: Path) -> bool:
    """An existing directory with nothing in it but, perhaps, the marker of a model (no state)."""
    return all(path.name == RECOVERY_MARKER for path in directory.iterdir())


def _check_recovery_dir(settings: StreamSettings) -> None:
    directory = settings.recovery_dir
    init_hint = f"`python -m bytewax.recovery {directory} N` (N = total workers of the cluster)"
    if directory.exists() and not directory.is_dir():
        raise SettingsError(f"--recovery-dir {directory} is not a directory")
    if not directory.exists() or _holds_nothing(directory):
        if settings.process_id is not None:
            raise SettingsError(f"--recovery-dir {directory} holds no recovery partitions; a cluster does not "
                                f"create them itself: run {init_hint} once before starting the cluster")
        nearest = directory
        while not nearest.exists():
            nearest = nearest.parent
        if not os.access(nearest, os.W_OK | os.X_OK):
            raise SettingsError(f"--recovery-dir {directory} cannot be created: {nearest} is not writable")
        return  # run_command initialises it
    partitions = _partition_files(directory)
    if not partitions:
        raise SettingsError(f"--recovery-dir {directory} is not empty but holds no Bytewax recovery partitions "
                            f"(part-N.sqlite3): give an empty directory, or initialise this one with {init_hint}")
    unwritable = [path.name for path in [directory, *partitions.values()] if not os.access(path, os.W_OK)]
    if unwritable:
        raise SettingsError(f"--recovery-dir {directory}: not writable: {', '.join(unwritable)}")
    if settings.process_id is None:  # a single process must see every partition
        expected = _partition_count(partitions[min(partitions)])
        missing = sorted(set(range(expected)) - partitions.keys())
        if missing:
            raise SettingsError(f"--recovery-dir {directory} lacks recovery partition(s) "
                                f"{', '.join(f'part-{i}.sqlite3' for i in missing)} of {expected}: restore them, "
                                f"or delete the directory's part-* files to start from scratch")


def _partition_count(path: Path) -> int:
    try:
        # immutable: read without locks, so no -wal/-shm files appear next to the partition.
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?immutable=1", uri=True)) as db:
            (count,) = db.execute("SELECT part_count FROM parts").fetchone()
    except (sqlite3.Error, TypeError):
        raise SettingsError(f"{path} is not a Bytewax recovery partition") from None
    return count


def prepare_recovery_dir(settings: StreamSettings) -> None:
    """Create the recovery partitions of an absent or empty directory (one per worker)."""
    from bytewax.recovery import init_db_dir

    directory = settings.recovery_dir
    if directory is None or (directory.is_dir() and not _holds_nothing(directory)):
        return
    directory.mkdir(parents=True, exist_ok=True)
    init_db_dir(directory, settings.workers)
    log.info("initialised recovery directory %s with %d partition(s)", directory, settings.workers)


class RecoveryModelError(ValueError):
    """A recovery directory holding the state of a model this one cannot read; says what to do."""


@dataclass(frozen=True)
class ModelFingerprint:
    """What a recovery directory's per-user state depends on: the rows' layout and the vocabulary
    whose indices they hold. The model's name and version are kept to name it in messages."""

    name: str
    version: str
    vocab_sha256: str
    row_layout: str

    @classmethod
    def of(cls, scorer: "Scorer") -> "ModelFingerprint":
        vocab = json.dumps(scorer.vocab.to_json(), sort_keys=True, separators=(",", ":")).encode()
        return cls(scorer.model_ref.name, scorer.model_ref.version, hashlib.sha256(vocab).hexdigest(),
                   str(scorer.row_dtype.descr))  # fmt: skip

    def reads_state_of(self, other: "ModelFingerprint") -> bool:
        return (self.vocab_sha256, self.row_layout) == (other.vocab_sha256, other.row_layout)

    def describe(self) -> str:
        return f"model {self.name!r} version {self.version} (vocabulary sha256 {self.vocab_sha256[:12]})"

    def to_json(self) -> dict:
        return {"model": {"name": self.name, "version": self.version}, "vocab_sha256": self.vocab_sha256,
                "row_layout": self.row_layout}  # fmt: skip

    @classmethod
    def from_json(cls, raw: dict) -> "ModelFingerprint":
        return cls(raw["model"]["name"], raw["model"]["version"], raw["vocab_sha256"], raw["row_layout"])


def bind_recovery_dir(settings: StreamSettings, model: ModelFingerprint) -> None:
    """Make sure the recovery directory's state can be read by `model`, initialise it if it is new
    (see prepare_recovery_dir), and mark it with `model`. Raises RecoveryModelError, before changing
    anything, when it holds the state of a model with another vocabulary or row layout."""
    directory = settings.recovery_dir
    if directory is None:
        return
    marker = directory / RECOVERY_MARKER
    marked = _read_marker(marker) if marker.exists() else None
    # Without partitions there is no state: a marker left next to none binds nothing.
    has_state = directory.is_dir() and bool(_partition_files(directory))
    if has_state and marked is not None and not model.reads_state_of(marked):
        raise RecoveryModelError(
            f"--recovery-dir {directory} holds the state of {marked.describe()}, which --model "
            f"{settings.model_dir} ({model.describe()}) cannot read: users' histories are stored as "
            f"vocabulary indices of the model that wrote them. Use a fresh --recovery-dir with this model, "
            f"or the model that wrote it")
    if has_state and marked is not None and marked != model:
        log.info("resuming the state of %s with %s: same vocabulary and row layout", marked.describe(),
                 model.describe())
    prepare_recovery_dir(settings)
    if marked != model:
        _write_marker(marker, model)


def _read_marker(marker: Path) -> ModelFingerprint:
    try:
        return ModelFingerprint.from_json(json.loads(marker.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RecoveryModelError(f"{marker} cannot be read ({error}): it names the model whose state this "
                                 f"recovery directory holds. Restore it, or use a fresh --recovery-dir") from None


def _write_marker(marker: Path, model: ModelFingerprint) -> None:
    """Atomically, so that a process stopped meanwhile leaves the old marker or the new one."""
    partial = marker.with_name(f"{marker.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(model.to_json(), indent=2) + "\n")
    os.replace(partial, marker)


# --- the command -------------------------------------------------------------------------------


def describe(settings: StreamSettings) -> str:
    """The settings as one log line, Kafka secrets masked."""
    shown = asdict(settings)
    shown["kafka_config"] = redacted(settings.kafka_config)
    return ", ".join(f"{name}={value}" for name, value in shown.items())


def run_command(args: argparse.Namespace) -> int:
    """`intentstream run`: check everything, then run the dataflow until it ends or is stopped."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from_args(args, os.environ)
        connect_timeout = connect_timeout_from_args(args, os.environ)
        metrics_port = metrics_port_from_args(args, os.environ)
        torch_threads = torch_threads_from_args(args, os.environ)
    except SettingsError as error:
        print(f"intentstream run: {error}", file=sys.stderr)
        return EXIT_BAD_OPTION
    log.info("intentstream run: %s", describe(settings))

    output_topics = [settings.output_topic, settings.dlq_topic]
    if settings.latest_topic:
        output_topics.append(settings.latest_topic)
    try:
        check = check_brokers(settings.brokers, settings.kafka_config, settings.input_topic, output_topics,
                              timeout=connect_timeout)
    except KafkaCheckError as error:
        print(f"intentstream run: {error}", file=sys.stderr)
        return EXIT_UNUSABLE

    import torch  # slow to import: only once the options are good

    from model.serving.backends import BackendError, load_backend
    from model.serving.incremental import IncrementalScorer
    from model.serving.scorer import CheckpointError, Scorer

    torch.set_num_threads(torch_threads)
    try:
        scorer = Scorer.load(settings.model_dir)
    except CheckpointError as error:
        print(f"intentstream run: {error}", file=sys.stderr)
        return EXIT_UNUSABLE
    try:
        backend = load_backend(settings.backend, scorer.model)
    except BackendError as error:
        print(f"intentstream run: {error}", file=sys.stderr)
        return EXIT_UNUSABLE
    serving = IncrementalScorer(scorer, backend, cache_bytes=settings.kv_cache_mb << 20)
    if settings.history is not None and settings.history < scorer.history_len:
        log.warning("--history %d is shorter than the %d interactions the model attends to: updates will "
                    "differ from offline predictions", settings.history, scorer.history_len)

    try:
        bind_recovery_dir(settings, ModelFingerprint.of(scorer))
    except RecoveryModelError as error:
        print(f"intentstream run: {error}", file=sys.stderr)
        return EXIT_UNUSABLE

    metrics = default_metrics()
    metrics.serving(scorer.model_ref)
    with ExitStack() as cleanup:
        if metrics_port is not None:
            try:
                cleanup.enter_context(serving_metrics(metrics_port))
            except OSError as error:
                print(f"intentstream run: cannot serve metrics on port {metrics_port}: {error.strerror or error}; "
                      "pick another --metrics-port (INTENTSTREAM_METRICS_PORT)", file=sys.stderr)
                return EXIT_UNUSABLE
            log.info("serving Prometheus metrics at http://0.0.0.0:%d/metrics", metrics_port)
        try:
            create_output_topics(settings.brokers, settings.kafka_config, check,
                                 compacted=[settings.latest_topic] if settings.latest_topic else [])
        except KafkaCheckError as error:
            print(f"intentstream run: {error}", file=sys.stderr)
            return EXIT_UNUSABLE
        if check.missing_topics:
            log.info("created topic(s) %s with %d partition(s)", ", ".join(check.missing_topics),
                     check.input_partitions)
        return run_dataflow(settings, serving, metrics)


def run_dataflow(settings: StreamSettings, serving: "IncrementalScorer", metrics: StreamMetrics) -> int:
    """Run the checked settings' dataflow until it ends (0), Ctrl-C (130) or SIGTERM (143)."""
    from bytewax.recovery import RecoveryConfig
    from bytewax.run import cli_main

    from stream.dataflow import StreamCounters, build_flow

    counters = StreamCounters(metrics=metrics)
    # The worker threads of this process share the scorer loaded above, and its cache.
    flow = build_flow(settings, lambda _: serving, counters=counters)
    try:
        with sigterm_as_interrupt():
            cli_main(
                flow,
                workers_per_process=settings.workers,
                process_id=settings.process_id,
                addresses=list(settings.addresses) or None,
                epoch_interval=timedelta(seconds=settings.snapshot_interval_s),
                recovery_config=RecoveryConfig(settings.recovery_dir) if settings.recovery_dir else None,
            )
    except BaseException as error:
        interrupt = interrupt_behind(error)
        if interrupt is None:
            raise
        how = "terminated" if isinstance(interrupt, Terminated) else "interrupted"
        log.info("%s: %s; a restart with the same --recovery-dir resumes from the last snapshot", how,
                 counters.summary())
        return EXIT_TERMINATED if isinstance(interrupt, Terminated) else EXIT_INTERRUPTED
    log.info("finished: %s", counters.summary())
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt, so that Bytewax stops the same way."""


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM (what docker stop and Kubernetes send) raises Terminated in the main
    thread. Python runs signal handlers there; Bytewax lets them run while the dataflow goes."""

    def terminate(_signum, _frame):
        raise Terminated("SIGTERM")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupt_behind(error: BaseException | None) -> KeyboardInterrupt | None:
    """The Ctrl-C (KeyboardInterrupt) or SIGTERM (Terminated) behind `error`, if any. With one worker,
    Bytewax runs the dataflow on the main thread, where Python delivers them: it is usually raised
    inside a step's code (the Kafka source's polling) and reaches us as a BytewaxRuntimeError caused
    by it."""
    while error is not None:
        if isinstance(error, KeyboardInterrupt):
            return error
        error = error.__cause__ or error.__context__
    return None
