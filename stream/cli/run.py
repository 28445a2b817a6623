"""`intentstream run`: the streaming scorer as a long-running service (stream.service). Its options
are declared here; they are resolved, with the environment and the defaults, by
stream.service.options, so every option here defaults to None ("not given")."""
from __future__ import annotations

import argparse
import os

from schemas import FORMATS
from stream.cli.arguments import service_option
from stream.parsing import format_duration
from stream.service.options import default_of, service_settings_from_args
from stream.service.runner import serve
from stream.settings import ServiceSettings

RUN_HELP = "score a Kafka topic of play events continuously"


def run_command(args: argparse.Namespace) -> int:
    return serve(service_settings_from_args(args, os.environ))


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The `run` subcommand's options. Defaults are applied by `settings_from_args`, after the
    environment, so every option here defaults to None ("not given")."""
    kafka = parser.add_argument_group("Kafka")
    service_option(kafka, "--brokers", "Kafka bootstrap servers, host:port[,host:port...] (or bootstrap.servers in "
            "--kafka-config)", metavar="HOST:PORT")
    service_option(kafka, "--kafka-config", "Java-style properties file of Kafka client settings (security.protocol, "
            "sasl.*, ssl.*, ...); INTENTSTREAM_KAFKA_<SETTING> variables override it", metavar="FILE")
    service_option(kafka, "--input-topic", f"topic of play events (default: {default_of('input_topic')})", metavar="TOPIC")
    service_option(kafka, "--output-topic", f"topic of intent updates (default: {default_of('output_topic')})",
            metavar="TOPIC")
    service_option(kafka, "--dlq-topic", f"dead-letter topic (default: {default_of('dlq_topic')})", metavar="TOPIC")
    service_option(kafka, "--latest-topic", "compacted topic of each user's latest update; an empty string disables "
            f"it (default: {default_of('latest_topic')})", metavar="TOPIC")
    service_option(kafka, "--format", f"encoding of the input and output topics: {' or '.join(FORMATS)} (default: "
            f"{default_of('format')})", metavar="FORMAT")
    service_option(kafka, "--connect-timeout", "how long to wait for the brokers at start-up (default: "
            f"{format_duration(default_of('connect_timeout_s', ServiceSettings))})", metavar="DURATION")
    service_option(kafka, "--max-broker-outage", "no broker answering for longer than this stops the process with exit "
            f"status 75, for its supervisor to restart it (default: {format_duration(default_of('max_broker_outage_s'))})",
            metavar="DURATION")
    service_option(kafka, "--on-offset-gap", "when input offsets were deleted by the broker's retention before they "
            "were read: resume (log and count them, read on from the oldest retained) or fail (exit status 65, "
            f"nothing read past them) (default: {default_of('on_offset_gap')})", metavar="POLICY")
    service_option(kafka, "--shutdown-timeout", "after SIGTERM or Ctrl-C, exit within this whatever the dataflow is doing "
            f"(default: {format_duration(default_of('shutdown_timeout_s', ServiceSettings))})", metavar="DURATION")

    scoring = parser.add_argument_group("Scoring")
    service_option(scoring, "--model", "model directory made by `intentstream train`", metavar="DIR")
    service_option(scoring, "--batch-size", f"most users scored together (default: {default_of('batch_size')})", metavar="N")
    service_option(scoring, "--history", "interactions kept per user (default: what the model attends to)", metavar="N")
    service_option(scoring, "--top-k", f"next items per update (default: {default_of('top_k')})", metavar="K")
    service_option(scoring, "--ttl", "forget users idle longer than this, in event time (default: "
            f"{format_duration(default_of('ttl_s'))})", metavar="DURATION")
    service_option(scoring, "--max-users", f"most users held by this process (default: {default_of('max_users'):,}); "
            "beyond it the least recently active user is forgotten", metavar="N")
    service_option(scoring, "--lateness", "an event older than its user's newest by more than this is a dead letter "
            f"(default: {format_duration(default_of('lateness_s'))})", metavar="DURATION")
    service_option(scoring, "--max-clock-skew", "an event further ahead of this process's clock than this is a dead "
            f"letter from_future (default: {format_duration(default_of('max_clock_skew_s'))})", metavar="DURATION")
    service_option(scoring, "--backend", "what runs the model: auto (the artifact `intentstream compile MODEL_DIR` "
            "wrote beside the model, where it fits, else eager), eager, eager:cuda, aoti:PATH or tensorrt:PATH "
            f"(default: {default_of('backend')})", metavar="BACKEND")
    service_option(scoring, "--kv-cache-mb", "memory for cached users' rows, from which a new event is scored "
            f"incrementally; 0 recomputes every event from its history (default: {default_of('kv_cache_mb')})",
            metavar="MB")
    service_option(scoring, "--catalogue", "score the whole catalogue for every event (exact), or each event's "
            "candidates retrieved from an index and rescored exactly (approximate: for catalogues too large to score "
            "whole; runs eager); auto: approximate beyond 20,000 items (default: "
            f"{default_of('catalogue')})", metavar="auto|exact|approximate")
    service_option(scoring, "--new-titles", "columns for titles first seen in the stream, ranked beside the "
            "catalogue from their kind, genres and release date; 0 keeps the catalogue closed, so that updates are "
            "the same after a restart and at any cluster size (default: the model's, 256)", metavar="N")
    service_option(scoring, "--torch-threads", "intra-op threads of the model (default: "
            f"{default_of('torch_threads', ServiceSettings)})", metavar="N")

    runtime = parser.add_argument_group("Recovery and scale-out")
    service_option(runtime, "--recovery-dir", "Bytewax recovery directory: state and input offsets are snapshotted "
            "together (default: no recovery)", metavar="DIR")
    service_option(runtime, "--snapshot-interval", "how often state is snapshotted (default: "
            f"{format_duration(default_of('snapshot_interval_s'))})", metavar="DURATION")
    service_option(runtime, "--workers", f"worker threads per process (default: {default_of('workers')}); prefer "
            "processes", metavar="N")
    service_option(runtime, "--process-id", "this process's index in --addresses (Bytewax cluster)", metavar="I")
    service_option(runtime, "--addresses", "host:port of every process of the Bytewax cluster, comma-separated",
            metavar="HOST:PORT,...")
    service_option(runtime, "--stop-at-end", "stop once the input topic's current end is reached (replays, "
            "backtests)", action=argparse.BooleanOptionalAction)

    monitoring = parser.add_argument_group("Monitoring")
    service_option(monitoring, "--metrics-port", "serve Prometheus metrics at http://0.0.0.0:PORT/metrics (default: "
            "off)", metavar="PORT")
