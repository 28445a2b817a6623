"""`intentstream serve`: each user's latest intent over HTTP, read from the compacted topic `run`
writes (stream.lookup). Options are resolved with the environment and the defaults by
stream.lookup.options, so every option here defaults to None ("not given")."""
from __future__ import annotations

import argparse
import os

from schemas import FORMATS
from stream.cli.arguments import service_option
from stream.lookup.options import lookup_settings_from_args
from stream.lookup.service import serve_lookup
from stream.lookup.table import ON_FULL
from stream.parsing import format_duration
from stream.service.options import default_of
from stream.settings import LookupSettings

SERVE_HELP = "answer each user's latest intent over HTTP, from the compacted latest-update topic"


def serve_command(args: argparse.Namespace) -> int:
    return serve_lookup(lookup_settings_from_args(args, os.environ))


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    def option(flag: str, help: str, metavar: str) -> None:
        service_option(parser, flag, help, metavar=metavar)

    def default(name: str):
        return default_of(name, LookupSettings)

    option("--brokers", "Kafka bootstrap servers, host:port[,host:port...] (or bootstrap.servers in "
           "--kafka-config)", metavar="HOST:PORT")
    option("--kafka-config", "Java-style properties file of Kafka client settings; INTENTSTREAM_KAFKA_<SETTING> "
           "variables override it", metavar="FILE")
    option("--topic", f"the compacted topic of latest updates (`run --latest-topic`; default: {default('topic')})",
           metavar="TOPIC")
    option("--format", f"its encoding, as `run` writes it: {' or '.join(FORMATS)} (default: {default('format')})",
           metavar="FORMAT")
    option("--host", f"address to listen on (default: {default('host')})", metavar="HOST")
    option("--port", f"HTTP port (default: {default('port')})", metavar="PORT")
    option("--max-users", f"most users held (default: {default('max_users'):,}); see --on-full", metavar="N")
    option("--on-full", f"when the topic holds more users: {' or '.join(ON_FULL)} (forget the user updated least "
           f"recently, or stop with a message) (default: {default('on_full')})", metavar="POLICY")
    option("--page-history", f"updates per user the page draws (default: {default('page_history')}; 0: none)",
           metavar="N")
    option("--max-batch-get", f"most user ids in one POST /users:batchGet (default: {default('max_batch_get')})",
           metavar="N")
    option("--connect-timeout", "how long to wait for the brokers at start-up (default: "
           f"{format_duration(default('connect_timeout_s'))})", metavar="DURATION")
    option("--max-broker-outage", "no broker answering for longer than this stops the service with exit status "
           f"75 (default: {format_duration(default('max_broker_outage_s'))})", metavar="DURATION")
    option("--token-file", "a file holding the bearer token that requests for users' intents must carry "
           "(Authorization: Bearer TOKEN); or give the token itself in INTENTSTREAM_TOKEN (default: no token)",
           metavar="FILE")
    option("--tls-cert", "serve HTTPS with this PEM certificate chain (default: plain HTTP)", metavar="FILE")
    option("--tls-key", "the certificate's PEM key, unencrypted (default: in the --tls-cert file)", metavar="FILE")
    option("--tls-client-ca", "mTLS: only clients presenting a certificate signed by a CA in this PEM file may "
           "connect (default: any client)", metavar="FILE")
