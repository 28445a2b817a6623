"""`intentstream run`'s settings, resolved before anything else: every option comes from the command
line, else from an environment variable INTENTSTREAM_<OPTION> (`--batch-size` ->
INTENTSTREAM_BATCH_SIZE), else from the defaults in stream.settings. Kafka client settings come
through stream.kafka.config. A value that cannot be used raises CommandError (exit status 2)
naming the option, where it came from and what to fix; so does a recovery directory that cannot
be used (stream.service.recovery). Nothing is changed here."""
from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Callable, Mapping, TypeVar

from stream import parsing
from stream.errors import CommandError
from stream.kafka.config import KafkaConfigError, kafka_client
from stream.kafka.source import OFFSET_GAP_POLICIES
from stream.service.recovery import check_recovery_dir
from stream.settings import CATALOGUES, ServiceSettings, StreamSettings

ENV_PREFIX = "INTENTSTREAM_"

T = TypeVar("T")


def env_name(dest: str) -> str:
    """The environment variable of an option: `batch_size` -> INTENTSTREAM_BATCH_SIZE."""
    return ENV_PREFIX + dest.upper()


def default_of(name: str, settings: type = StreamSettings):
    """The default of a settings field, for options and their help texts."""
    return next(f.default for f in fields(settings) if f.name == name)


def service_settings_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> ServiceSettings:
    """Every option of `intentstream run`, resolved and validated (see settings_from_args)."""

    def option(dest: str, parse: Callable[[str], T], field: str) -> T:
        return resolve_option(args, environ, dest, parse, default_of(field, ServiceSettings))

    return ServiceSettings(
        stream=settings_from_args(args, environ),
        connect_timeout_s=option("connect_timeout", parsing.positive_duration, "connect_timeout_s"),
        metrics_port=option("metrics_port", parsing.port, "metrics_port"),
        torch_threads=option("torch_threads", parsing.positive_int, "torch_threads"),
        shutdown_timeout_s=option("shutdown_timeout", parsing.positive_duration, "shutdown_timeout_s"),
    )


def settings_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> StreamSettings:
    """Resolve and validate every option; raises CommandError naming the option and what to fix.
    Looks at the recovery directory but changes nothing."""

    def option(dest: str, parse: Callable[[str], T], field: str | None = None) -> T:
        """An option whose default is StreamSettings' default for `field` (named like the option)."""
        return resolve_option(args, environ, dest, parse, default_of(field or dest))

    brokers, kafka_config = kafka_from_args(args, environ)
    model_dir = resolve_option(args, environ, "model", Path, None)
    if model_dir is None:
        raise CommandError("no model: pass --model DIR (a directory made by `intentstream train`) or set "
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
        history=resolve_option(args, environ, "history", parsing.positive_int, None),
        ttl_s=option("ttl", parsing.positive_duration, "ttl_s"),
        max_users=option("max_users", parsing.positive_int),
        lateness_s=option("lateness", parsing.non_negative_duration, "lateness_s"),
        max_clock_skew_s=option("max_clock_skew", parsing.non_negative_duration, "max_clock_skew_s"),
        max_broker_outage_s=option("max_broker_outage", parsing.positive_duration, "max_broker_outage_s"),
        on_offset_gap=option("on_offset_gap", parsing.one_of(*OFFSET_GAP_POLICIES)),
        top_k=option("top_k", parsing.positive_int),
        backend=option("backend", parsing.backend),
        kv_cache_mb=option("kv_cache_mb", parsing.non_negative_int),
        catalogue=option("catalogue", parsing.one_of(*CATALOGUES)),
        new_titles=resolve_option(args, environ, "new_titles", parsing.non_negative_int, None),
        recovery_dir=resolve_option(args, environ, "recovery_dir", Path, None),
        snapshot_interval_s=option("snapshot_interval", parsing.positive_duration, "snapshot_interval_s"),
        workers=option("workers", parsing.positive_int),
        process_id=resolve_option(args, environ, "process_id", parsing.non_negative_int, None),
        addresses=resolve_option(args, environ, "addresses", parsing.host_port_list, ()),
        kafka_config=kafka_config,
        stop_at_end=option("stop_at_end", parsing.flag),
    )
    _check_topics_differ(settings)
    _check_cluster(settings)
    if settings.max_users < settings.workers:
        raise CommandError(f"--max-users {settings.max_users} is fewer than --workers {settings.workers}: each worker "
                            "thread holds an equal share of the users; allow at least one user per worker")
    if settings.ttl_s < settings.lateness_s:
        raise CommandError(f"--ttl {parsing.format_duration(settings.ttl_s)} is shorter than --lateness "
                            f"{parsing.format_duration(settings.lateness_s)}: a late copy of a forgotten event would "
                            "pass as new; make the TTL at least the lateness")
    if settings.recovery_dir is not None:
        check_recovery_dir(settings)
    return settings


def kafka_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """The brokers and Kafka client settings (--brokers, --kafka-config, INTENTSTREAM_KAFKA_*)."""
    config_file = resolve_option(args, environ, "kafka_config", Path, None)
    try:
        brokers, kafka_config = kafka_client(resolve_option(args, environ, "brokers", parsing.brokers, None),
                                             config_file, environ)  # fmt: skip
    except KafkaConfigError as error:
        raise CommandError(str(error)) from None
    if brokers is None:
        raise CommandError("no Kafka brokers: pass --brokers HOST:PORT or set INTENTSTREAM_BROKERS")
    return brokers, kafka_config


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
            raise CommandError(f"{seen[topic]} and {flag} are both {topic!r}: every topic must be different")
        seen[topic] = flag


def _check_cluster(settings: StreamSettings) -> None:
    if settings.process_id is None and settings.addresses:
        raise CommandError("--addresses is set but --process-id is not: give each process its index in "
                            "--addresses (INTENTSTREAM_PROCESS_ID)")
    if settings.process_id is not None and not settings.addresses:
        raise CommandError("--process-id needs --addresses: the host:port of every process in the cluster, "
                            "comma-separated (INTENTSTREAM_ADDRESSES)")
    if settings.process_id is not None and settings.process_id >= len(settings.addresses):
        raise CommandError(f"--process-id {settings.process_id} is out of range: --addresses lists "
                            f"{len(settings.addresses)} process(es), so it must be 0..{len(settings.addresses) - 1}")
    if len(set(settings.addresses)) != len(settings.addresses):
        raise CommandError("--addresses lists the same host:port twice")


# --- resolving one option: command line, then environment, then default ----------------------------


def _given(args: argparse.Namespace, environ: Mapping[str, str], dest: str) -> tuple[object, str] | None:
    """(value, where it came from) or None when neither the command line nor the environment set it."""
    value = getattr(args, dest, None)
    if value is not None:
        return value, f"--{dest.replace('_', '-')}"
    if env_name(dest) in environ:
        return environ[env_name(dest)], env_name(dest)
    return None


def resolve_option(
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
        raise CommandError(f"{shown}: {error}") from None
