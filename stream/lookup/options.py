"""`intentstream serve`'s settings: every option from the command line, else INTENTSTREAM_<OPTION>,
else stream.settings.LookupSettings' default, as for `run` (stream.service.options); Kafka client
settings the same way too. A value that cannot be used raises CommandError (exit status 2)."""
from __future__ import annotations

import argparse
from typing import Callable, Mapping, TypeVar

from stream import parsing
from stream.lookup.table import ON_FULL
from stream.service.options import default_of, kafka_from_args, resolve_option
from stream.settings import LookupSettings

T = TypeVar("T")


def lookup_settings_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> LookupSettings:
    def option(dest: str, parse: Callable[[str], T], field: str | None = None) -> T:
        return resolve_option(args, environ, dest, parse, default_of(field or dest, LookupSettings))

    brokers, kafka_config = kafka_from_args(args, environ)
    return LookupSettings(
        brokers=brokers,
        topic=option("topic", parsing.topic),
        format=option("format", parsing.wire_format),
        host=option("host", parsing.host),
        port=option("port", parsing.port),
        max_users=option("max_users", parsing.positive_int),
        on_full=option("on_full", parsing.one_of(*ON_FULL)),
        page_history=option("page_history", parsing.non_negative_int),
        max_batch_get=option("max_batch_get", parsing.positive_int),
        connect_timeout_s=option("connect_timeout", parsing.positive_duration, "connect_timeout_s"),
        max_broker_outage_s=option("max_broker_outage", parsing.positive_duration, "max_broker_outage_s"),
        kafka_config=kafka_config,
    )
