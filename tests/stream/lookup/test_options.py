"""`intentstream serve`'s options: command line, then INTENTSTREAM_*, then LookupSettings' defaults."""
from __future__ import annotations

import pytest

from stream.cli import build_parser
from stream.errors import CommandError
from stream.lookup.options import lookup_settings_from_args
from stream.settings import LookupSettings


def settings(*argv: str, env: dict[str, str] | None = None) -> LookupSettings:
    return lookup_settings_from_args(build_parser().parse_args(["serve", *argv]), env or {})


def test_defaults_and_where_options_come_from():
    assert settings("--brokers", "k:9092") == LookupSettings(brokers="k:9092")
    chosen = settings("--brokers", "k:9092", "--port", "9000", env={
        "INTENTSTREAM_PORT": "9001", "INTENTSTREAM_MAX_USERS": "500", "INTENTSTREAM_ON_FULL": "refuse",
        "INTENTSTREAM_TOPIC": "latest", "INTENTSTREAM_FORMAT": "json", "INTENTSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL",
    })  # fmt: skip
    assert (chosen.port, chosen.max_users, chosen.on_full, chosen.topic, chosen.format) == (
        9000, 500, "refuse", "latest", "json")  # fmt: skip
    assert chosen.kafka_config == {"security.protocol": "SSL"}


@pytest.mark.parametrize("argv, expected", [
    ([], "no Kafka brokers: pass --brokers"),
    (["--brokers", "k:9092", "--max-users", "0"], "--max-users '0'"),
    (["--brokers", "k:9092", "--page-history", "-1"], "--page-history '-1'"),
    (["--brokers", "k:9092", "--host", "a b"], "--host 'a b': not a host name"),
    (["--brokers", "k:9092", "--format", "avro"], "--format 'avro': unknown format"),
])  # fmt: skip
def test_bad_options_say_what_to_fix(argv, expected):
    with pytest.raises(CommandError, match=expected.replace("(", r"\(")):
        settings(*argv)
