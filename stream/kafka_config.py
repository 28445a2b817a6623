"""Kafka client settings passed through to librdkafka, and the checks `intentstream run` makes before
it consumes anything.

Settings come from a Java-style properties file (`--kafka-config FILE` or INTENTSTREAM_KAFKA_CONFIG)
and from environment variables `INTENTSTREAM_KAFKA_<SETTING>`, where the setting is lower-cased and
`_` becomes `.` (INTENTSTREAM_KAFKA_SASL_PASSWORD -> sasl.password). The environment wins over the
file. Values are never logged: use `redacted()` to show a configuration.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from confluent_kafka import KafkaException
from confluent_kafka.admin import ClusterMetadata

from stream.broker import BrokerUnavailable, create_topics, fetch_metadata

ENV_PREFIX = "INTENTSTREAM_KAFKA_"
CONFIG_FILE_ENV = "INTENTSTREAM_KAFKA_CONFIG"  # the properties file's path, not a client setting

# Settings the Kafka connectors manage themselves: overriding them would silently break reading
# (end-of-partition detection for replays, offsets kept in Bytewax's recovery store, not in Kafka).
MANAGED_SETTINGS = frozenset({"enable.partition.eof", "enable.auto.commit"})

SECRET_MARKERS = ("password", "secret", "key", "token", "credential", "jaas", "sasl.oauthbearer.config")
MASK = "***"


class KafkaConfigError(ValueError):
    """A Kafka client setting that cannot be used; the message says what to fix."""


class KafkaCheckError(RuntimeError):
    """The brokers or the topics are not usable; the message says what to fix."""


def is_secret(setting: str) -> bool:
    return any(marker in setting.lower() for marker in SECRET_MARKERS)


def redacted(config: Mapping[str, object]) -> dict[str, object]:
    """A copy that is safe to log: values of settings that may hold secrets are masked."""
    return {name: MASK if is_secret(name) else value for name, value in config.items()}


def parse_properties(text: str, source: str = "properties") -> dict[str, str]:
    """Parse Java `.properties` text: `key=value`, `key: value` or `key value` lines, `#`/`!` comments,
    blank lines, lines continued with a trailing backslash, and the escapes \\t \\n \\r \\f \\uXXXX."""
    settings: dict[str, str] = {}
    for line_number, line in _logical_lines(text):
        key, value = _split_key_value(line)
        try:
            key, value = _unescape(key), _unescape(value)
        except ValueError as error:
            raise KafkaConfigError(f"{source}, line {line_number}: {error}") from None
        if not key:
            raise KafkaConfigError(f"{source}, line {line_number}: a setting with no name")
        settings[key] = value
    return settings


def _logical_lines(text: str):
    """(first physical line number, logical line) pairs, comments and blank lines dropped."""
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.lstrip()
        if not pending:
            if not line or line[0] in "#!":
                continue
            start = number
        # A line ending in an odd number of backslashes continues on the next one.
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2 == 1:
            pending += line[:-1]
            continue
        yield start, pending + line
        pending = ""
    if pending:
        yield start, pending


def _split_key_value(line: str) -> tuple[str, str]:
    index = 0
    while index < len(line):
        char = line[index]
        if char == "\\":
            index += 2
            continue
        if char in "=: \t\f":
            break
        index += 1
    key, rest = line[:index], line[index:]
    # The separator is optional whitespace, then at most one '=' or ':', then optional whitespace.
    rest = rest.lstrip(" \t\f")
    if rest[:1] in ("=", ":"):
        rest = rest[1:].lstrip(" \t\f")
    return key, rest


_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def _unescape(text: str) -> str:
    def replace(match: re.Match) -> str:
        escaped = match.group(1)
        if escaped.startswith("u"):
            if not re.fullmatch(r"u[0-9a-fA-F]{4}", escaped):
                raise ValueError(f"bad unicode escape \\{escaped}")
            return chr(int(escaped[1:], 16))
        return _ESCAPES.get(escaped, escaped)

    return re.sub(r"\\(u[0-9a-fA-F]{0,4}|.)", replace, text)


def settings_from_environment(environ: Mapping[str, str]) -> dict[str, str]:
    return {
        name[len(ENV_PREFIX) :].lower().replace("_", "."): value
        for name, value in environ.items()
        if name.startswith(ENV_PREFIX) and name != CONFIG_FILE_ENV and len(name) > len(ENV_PREFIX)
    }


def load_kafka_config(config_file: Path | None, environ: Mapping[str, str]) -> dict[str, str]:
    """The pass-through client settings: the properties file, overridden by INTENTSTREAM_KAFKA_*."""
    settings: dict[str, str] = {}
    if config_file is not None:
        try:
            text = Path(config_file).read_text(encoding="utf-8")
        except OSError as error:
            raise KafkaConfigError(f"cannot read Kafka properties file {config_file}: {error.strerror}") from None
        except UnicodeDecodeError:
            raise KafkaConfigError(f"Kafka properties file {config_file} is not UTF-8 text") from None
        settings.update(parse_properties(text, source=str(config_file)))
    settings.update(settings_from_environment(environ))
    managed = sorted(MANAGED_SETTINGS & settings.keys())
    if managed:
        raise KafkaConfigError(
            f"Kafka setting(s) {', '.join(managed)} are managed by intentstream; remove them from "
            f"--kafka-config / {ENV_PREFIX}*"
        )
    return settings


@dataclass(frozen=True)
class BrokerCheck:
    """What `check_brokers` found: all topics needed exist, except `missing_topics` (never the input)."""

    input_partitions: int
    missing_topics: tuple[str, ...]


def check_brokers(
    brokers: str,
    config: Mapping[str, str],
    input_topic: str,
    output_topics: Sequence[str],
    timeout: float = 10.0,
) -> BrokerCheck:
    """Connect to the brokers and look for the topics. Reads metadata only: changes nothing.

    Raises KafkaCheckError when the brokers do not answer, a client setting is rejected, or the input
    topic does not exist. Missing output topics are reported in the result; `create_output_topics`
    creates them."""
    try:
        metadata: ClusterMetadata = fetch_metadata(brokers, timeout=timeout, config=config)
    except BrokerUnavailable as error:
        raise KafkaCheckError(
            f"cannot reach Kafka at {brokers} within {timeout:g}s: {error.detail}; check --brokers / "
            f"INTENTSTREAM_BROKERS (and the security settings in --kafka-config / {ENV_PREFIX}*)"
        ) from None
    except KafkaException as error:  # a client setting librdkafka does not accept
        raise KafkaCheckError(
            f"Kafka client settings rejected: {error.args[0].str()}; check --kafka-config / {ENV_PREFIX}*"
        ) from None
    topics = metadata.topics
    if input_topic not in topics:
        raise KafkaCheckError(
            f"input topic {input_topic!r} does not exist at {brokers}; create it (e.g. `kafka-topics.sh "
            f"--bootstrap-server {brokers} --create --topic {input_topic} --partitions 12`) or pass the "
            f"right one with --input-topic / INTENTSTREAM_INPUT_TOPIC"
        )
    if topics[input_topic].error is not None:
        raise KafkaCheckError(f"input topic {input_topic!r} at {brokers}: {topics[input_topic].error.str()}")
    return BrokerCheck(
        input_partitions=len(topics[input_topic].partitions),
        missing_topics=tuple(name for name in output_topics if name not in topics),
    )


def create_output_topics(
    brokers: str,
    config: Mapping[str, str],
    check: BrokerCheck,
    compacted: Sequence[str] = (),
    timeout: float = 30.0,
) -> None:
    """Create the output topics `check_brokers` found missing, with as many partitions as the input
    topic (updates are keyed by user, like the events); those named in `compacted` get
    cleanup.policy=compact. A topic created meanwhile by someone else is left as it is."""
    for name in check.missing_topics:
        topic_config = {"cleanup.policy": "compact"} if name in compacted else {}
        try:
            create_topics(
                brokers, [name], partitions=check.input_partitions, config=topic_config,
                client=config, exist_ok=True, timeout=timeout,
            )
        except RuntimeError as error:
            raise KafkaCheckError(f"{error}; create it yourself or grant this client CreateTopics") from None
