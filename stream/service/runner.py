"""`intentstream run` once its settings are resolved (stream.service.options): check what it needs,
then run the dataflow until it ends or is stopped.

Before it consumes anything it checks, in this order, and stops with a CommandError (exit status 1)
that says what to fix: the brokers and the input topic, the model and its runtime backend, that
the recovery directory holds no other model's state. Only then does it change anything: it
initialises an empty recovery directory and marks it with the model (no space left there: exit
status 74, stream.service.recovery), starts serving metrics (a port in use: exit status 1), and
creates missing output topics (with the input topic's partition count; the latest-update topic
compacted).
"""
from __future__ import annotations

import logging
import sys
from contextlib import ExitStack
from dataclasses import asdict
from datetime import timedelta
from typing import TYPE_CHECKING

from stream.errors import (
    EXIT_FAILED, EXIT_KAFKA_UNAVAILABLE, EXIT_OFFSET_GAP, EXIT_OK, EXIT_TERMINATED, CommandError,
)
from stream.kafka.checks import BrokerCheck, KafkaCheckError, check_brokers, create_output_topics
from stream.kafka.config import redacted
from stream.kafka.health import BrokerLost
from stream.kafka.sink import DeliveryFailed
from stream.kafka.source import OffsetGap
from stream.metrics import StreamMetrics, default_metrics, serving_metrics
from stream.service.recovery import (
    ModelFingerprint, RecoveryModelError, RecoveryVolumeFull, bind_recovery_dir, is_volume_full,
)
from stream.service.signals import cause_of, stop_on_signals
from stream.stop import Stopping
from stream.settings import ServiceSettings, StreamSettings

if TYPE_CHECKING:
    from model.serving.incremental import IncrementalScorer

log = logging.getLogger(__name__)


def describe(settings: StreamSettings) -> str:
    """The settings as one log line, Kafka secrets masked."""
    shown = asdict(settings)
    shown["kafka_config"] = redacted(settings.kafka_config)
    return ", ".join(f"{name}={value}" for name, value in shown.items())


def serve(service: ServiceSettings) -> int:
    """Check everything, then run the dataflow: 0 when its input ends, 130 on Ctrl-C, 143 on SIGTERM.
    Raises CommandError (EXIT_FAILED) for what is unusable, before consuming anything."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = service.stream
    log.info("intentstream run: %s", describe(settings))
    check = _check_kafka(settings, service.connect_timeout_s)

    import torch  # slow to import: only once the options are good

    from model.serving.backends import BackendError
    from model.serving.incremental import load_serving_scorer
    from model.errors import CacheSizeError
    from model.serving.scorer import CheckpointError

    torch.set_num_threads(service.torch_threads)
    try:
        serving = load_serving_scorer(settings.model_dir, settings.backend, settings.kv_cache_bytes, settings.new_titles,
                                      settings.catalogue)
    except (CheckpointError, BackendError, CacheSizeError) as error:
        raise CommandError(str(error), EXIT_FAILED) from None
    if settings.history is not None and settings.history < serving.history_len:
        log.warning("--history %d is shorter than the %d interactions the model attends to: updates will "
                    "differ from offline predictions", settings.history, serving.history_len)
    try:
        bind_recovery_dir(settings, ModelFingerprint.of(serving))
    except RecoveryModelError as error:
        raise CommandError(str(error), EXIT_FAILED) from None

    metrics = default_metrics()
    metrics.serving(serving.model_ref)
    with ExitStack() as cleanup:
        if service.metrics_port is not None:
            try:
                cleanup.enter_context(serving_metrics(service.metrics_port))
            except OSError as error:
                raise CommandError(f"cannot serve metrics on port {service.metrics_port}: "
                                   f"{error.strerror or error}; pick another --metrics-port "
                                   "(INTENTSTREAM_METRICS_PORT)", EXIT_FAILED) from None
            log.info("serving Prometheus metrics at http://0.0.0.0:%d/metrics", service.metrics_port)
        _create_output_topics(settings, check)
        return run_dataflow(settings, serving, metrics, service.shutdown_timeout_s)


def _check_kafka(settings: StreamSettings, timeout_s: float) -> BrokerCheck:
    output_topics = [settings.output_topic, settings.dlq_topic]
    if settings.latest_topic:
        output_topics.append(settings.latest_topic)
    try:
        return check_brokers(settings.brokers, settings.kafka_config, settings.input_topic, output_topics,
                             timeout=timeout_s)
    except KafkaCheckError as error:
        raise CommandError(str(error), EXIT_FAILED) from None


def _create_output_topics(settings: StreamSettings, check: BrokerCheck) -> None:
    try:
        create_output_topics(settings.brokers, settings.kafka_config, check,
                             compacted=[settings.latest_topic] if settings.latest_topic else [])
    except KafkaCheckError as error:
        raise CommandError(str(error), EXIT_FAILED) from None
    if check.missing_topics:
        log.info("created topic(s) %s with %d partition(s)", ", ".join(check.missing_topics),
                 check.input_partitions)


def run_dataflow(
    settings: StreamSettings, serving: "IncrementalScorer", metrics: StreamMetrics, shutdown_timeout_s: float
) -> int:
    """Run the checked settings' dataflow until it ends (0), Ctrl-C (130), SIGTERM (143), or Kafka
    is lost or refuses output (75: a supervisor restarts it, and the restart resumes from the
    recovery directory, so nothing is lost). Input deleted before it was read, with
    `on_offset_gap` fail, raises CommandError (65); no space left for a snapshot in the recovery
    directory, RecoveryVolumeFull (74)."""
    from bytewax.recovery import RecoveryConfig
    from bytewax.run import cli_main

    from stream.dataflow import StreamCounters, build_flow

    counters = StreamCounters(metrics=metrics)
    try:
        with stop_on_signals(shutdown_timeout_s) as stop:
            # The worker threads of this process share the serving scorer, and its cache.
            flow = build_flow(settings, serving, counters=counters, stop=stop)
            cli_main(
                flow,
                workers_per_process=settings.workers,
                process_id=settings.process_id,
                addresses=list(settings.addresses) or None,
                epoch_interval=timedelta(seconds=settings.snapshot_interval_s),
                recovery_config=RecoveryConfig(settings.recovery_dir) if settings.recovery_dir else None,
            )
    except Exception as error:
        kafka = cause_of(error, (BrokerLost, DeliveryFailed))
        if kafka is not None:
            log.error("stopped: %s; %s", kafka, counters.summary())
            return EXIT_KAFKA_UNAVAILABLE
        gap = cause_of(error, (OffsetGap,))
        if gap is not None:
            log.info("stopped: %s", counters.summary())
            raise CommandError(str(gap), EXIT_OFFSET_GAP) from None
        if settings.recovery_dir is not None and is_volume_full(error, settings.recovery_dir):
            log.info("stopped: %s", counters.summary())
            raise RecoveryVolumeFull(settings.recovery_dir) from None
        if cause_of(error, (Stopping,)) is None:
            raise
    if stop.is_set():
        how = "terminated" if stop.status == EXIT_TERMINATED else "interrupted"
        log.info("%s: %s; a restart with the same --recovery-dir resumes from the last snapshot", how,
                 counters.summary())
        return stop.status
    log.info("finished: %s", counters.summary())
    return EXIT_OK
