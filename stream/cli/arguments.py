"""Argument types shared by the `intentstream` subcommands: each names what it expected."""
from __future__ import annotations

import argparse
from datetime import datetime, timezone

from stream.parsing import parse_duration
from stream.service.options import env_name


def whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected a number >= {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    return whole_number(text, 1)


def non_negative_int(text: str) -> int:
    return whole_number(text, 0)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def decay(text: str) -> float:
    """A decay per step, in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text}")
    return value


def timestamp_ms(text: str) -> int:
    """Epoch milliseconds, or an ISO-8601 date/time (UTC unless it says otherwise)."""
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected epoch milliseconds or an ISO date like 1998-03-01, got {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


def duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def service_option(group, flag: str, help: str, **kwargs) -> None:
    """An option of a service (`run`, `serve`) that INTENTSTREAM_<OPTION> may give instead: it defaults
    to None ("not given"), and the settings resolution applies the environment and the default."""
    dest = flag[2:].replace("-", "_")
    group.add_argument(flag, dest=dest, default=None, help=f"{help} [env: {env_name(dest)}]", **kwargs)
