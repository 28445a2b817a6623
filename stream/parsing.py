"""Text to values, for options given on the command line or in the environment: each function takes
the text as given and returns the value, or raises ValueError saying what is wrong with it."""
from __future__ import annotations

import re
from typing import Callable

from schemas import FORMATS

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")


def parse_duration(text: str) -> float:
    """Seconds in '30d', '1h', '90s', '500ms', '1h30m' or a bare number of seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError("not a duration: use e.g. 30d, 1h, 90s, 500ms or 1h30m")
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)


def format_duration(seconds: float) -> str:
    """A duration as parse_duration reads it, in the largest unit that counts it whole: 30d, 1h, 10s."""
    for unit in ("d", "h", "m", "s"):
        count = seconds / _DURATION_UNITS[unit]
        if count >= 1 and count == int(count):
            return f"{int(count)}{unit}"
    return f"{seconds:g}"


def integer(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError("not a whole number") from None


def positive_int(text: str) -> int:
    return _checked(integer(text), lambda value: value >= 1, "must be at least 1")


def non_negative_int(text: str) -> int:
    return _checked(integer(text), lambda value: value >= 0, "must be 0 or more")


def positive_duration(text: str) -> float:
    return _checked(parse_duration(text), lambda value: value > 0, "must be longer than zero")


def non_negative_duration(text: str) -> float:
    return _checked(parse_duration(text), lambda value: value >= 0, "must not be negative")


def _checked(value, acceptable: Callable[[float], bool], complaint: str):
    if not acceptable(value):
        raise ValueError(complaint)
    return value


def backend(text: str) -> str:
    from model.serving.backends import check_backend_spec  # imports torch: only when the option is given

    return check_backend_spec(text.strip())


def wire_format(text: str) -> str:
    value = text.strip().lower()
    if value not in FORMATS:
        raise ValueError(f"unknown format: use {' or '.join(FORMATS)}")
    return value


def topic(text: str) -> str:
    if not _TOPIC_NAME.fullmatch(text) or text in (".", ".."):
        raise ValueError("not a Kafka topic name (1-249 of letters, digits, '.', '_', '-')")
    return text


def port(text: str) -> int:
    value = integer(text)
    if not 0 < value < 65536:
        raise ValueError("not a TCP port: use 1-65535")
    return value


def host_port(text: str) -> str:
    host, _, number = text.strip().rpartition(":")
    if not host or not number.isdigit() or not 0 < int(number) < 65536:
        raise ValueError(f"{text.strip()!r} is not host:port")
    return text.strip()


def host_port_list(text: str) -> tuple[str, ...]:
    items = [item for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError("empty list: give host:port[,host:port...]")
    return tuple(host_port(item) for item in items)


def brokers(text: str) -> str:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError("empty list: give host:port[,host:port...]")
    for item in items:  # librdkafka also accepts a protocol prefix (SSL://host:port)
        host_port(re.sub(r"^[A-Za-z_]+://", "", item))
    return ",".join(items)


def optional_topic(text: str) -> str | None:
    return topic(text) if text else None


def flag(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("not a yes/no value: use true or false")


def one_of(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"use {' or '.join(choices)}")
        return value

    return parse


def host(text: str) -> str:
    value = text.strip()
    if not value or any(character.isspace() or character in "/:[]" for character in value.strip("[]")):
        raise ValueError("not a host name or address to listen on (e.g. 0.0.0.0, 127.0.0.1, ::)")
    return value
