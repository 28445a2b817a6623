"""Kafka client settings passed through to librdkafka, and the brokers they go with: what every
command that talks to Kafka (run, backtest, demo) resolves with `kafka_client`.

Settings come from a Java-style properties file (`--kafka-config FILE` or INTENTSTREAM_KAFKA_CONFIG)
and from environment variables `INTENTSTREAM_KAFKA_<SETTING>`, where the setting is lower-cased and
`_` becomes `.` (INTENTSTREAM_KAFKA_SASL_PASSWORD -> sasl.password). The environment wins over the
file. Values are never logged: use `redacted()` to show a configuration.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

from stream import parsing

ENV_PREFIX = "INTENTSTREAM_KAFKA_"
CONFIG_FILE_ENV = "INTENTSTREAM_KAFKA_CONFIG"  # the properties file's path, not a client setting

# Settings the Kafka connectors manage themselves: overriding them would silently break reading
# (end-of-partition detection for replays, offsets kept in Bytewax's recovery store, not in Kafka,
# never jumping past offsets that are no longer retained: `run --on-offset-gap` says what happens).
MANAGED_SETTINGS = frozenset({"enable.partition.eof", "enable.auto.commit", "auto.offset.reset"})

# Values shown in logs: only settings known to hold no secret, and numeric tuning settings. Every
# other value is masked, so a mistyped secret's name (sasl.passwd) is masked too.
SHOWN_SETTINGS = frozenset({
    "security.protocol", "sasl.mechanism", "sasl.mechanisms", "sasl.username", "client.id", "client.rack",
    "ssl.ca.location", "ssl.certificate.location", "ssl.endpoint.identification.algorithm", "acks",
    "compression.type", "compression.codec", "partitioner", "auto.offset.reset", "isolation.level", "debug",
    "enable.idempotence", "api.version.request", "broker.address.family",
})
TUNING_SUFFIXES = (".ms", ".bytes", ".kbytes", ".messages", ".num", ".max")
SECRET_MARKERS = ("pass", "pwd", "secret", "key", "token", "credential", "jaas", "oauthbearer")
MASK = "***"


class KafkaConfigError(ValueError):
    """A Kafka client setting that cannot be used; the message says what to fix."""


def is_secret(setting: str) -> bool:
    """Whether a setting's value must not be logged: anything not known to be harmless."""
    name = setting.lower()
    if any(marker in name for marker in SECRET_MARKERS):
        return True
    return name not in SHOWN_SETTINGS and not name.endswith(TUNING_SUFFIXES)


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


def kafka_client(brokers: str | None, config_file: Path | None, environ: Mapping[str, str]) -> tuple[str | None, dict[str, str]]:
    """What a command needs to talk to Kafka: (brokers, pass-through client settings). The settings
    are `load_kafka_config`'s; the brokers are `brokers` as given, else the settings'
    bootstrap.servers, which never stays among the settings: the brokers travel apart. None when
    neither names any. Raises KafkaConfigError."""
    settings = load_kafka_config(config_file, environ)
    config_brokers = settings.pop("bootstrap.servers", None)
    if brokers is None and config_brokers:
        try:
            brokers = parsing.brokers(config_brokers)
        except ValueError as error:
            raise KafkaConfigError(f"bootstrap.servers in the Kafka client settings: {error}") from None
    return brokers, settings
