"""`intentstream serve`: the lookup service. It checks the brokers and the topic and binds its port
before serving anything (a problem stops it with a one-line message, exit status 1), then follows the
topic in a thread (stream.lookup.follower) while uvicorn answers HTTP or HTTPS (stream.lookup.app).
At start it logs who may read users' intents: a warning when anyone who reaches the port may.

SIGTERM and Ctrl-C stop it as uvicorn does: requests in flight are answered, then it exits (143 or
130). Losing the brokers for longer than --max-broker-outage exits 75, for a supervisor to restart
it; a full table under --on-full refuse exits 1 with a message to raise the cap.
"""
from __future__ import annotations

import logging
import socket
import ssl
import sys

import uvicorn
from confluent_kafka import KafkaException
from prometheus_client import CollectorRegistry

from stream.errors import EXIT_FAILED, EXIT_KAFKA_UNAVAILABLE, EXIT_OK, CommandError
from stream.kafka.checks import KafkaCheckError, topic_partitions
from stream.kafka.health import BrokerHealth, BrokerLost
from stream.lookup.app import lookup_app
from stream.lookup.follower import TopicFollower
from stream.lookup.metrics import LookupMetrics
from stream.lookup.table import LatestTable, TableFull
from stream.settings import LookupSettings

log = logging.getLogger(__name__)


def serve_lookup(settings: LookupSettings) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    try:
        partitions = topic_partitions(settings.brokers, settings.kafka_config, settings.topic, "--topic",
                                      timeout=settings.connect_timeout_s)  # fmt: skip
    except KafkaCheckError as error:
        raise CommandError(str(error), EXIT_FAILED) from None
    listening = _listen(settings.host, settings.port)

    metrics = LookupMetrics(CollectorRegistry())
    health = BrokerHealth(settings.brokers, settings.kafka_config, settings.max_broker_outage_s)
    table = LatestTable(settings.max_users, settings.on_full, settings.page_history)
    follower = TopicFollower(health, settings.topic, partitions, settings.format, table, metrics)
    server = uvicorn.Server(uvicorn.Config(
        lookup_app(table, follower, metrics, settings.max_batch_get, settings.token), log_level="warning",
        access_log=False, lifespan="off", **_tls_options(settings),
    ))  # fmt: skip
    follower.on_failure = lambda: setattr(server, "should_exit", True)
    log.info("serving the latest intent of each user on %s (%d partition(s), %s) at %s://%s:%d/", settings.topic,
             len(partitions), settings.format, "https" if settings.tls_cert else "http", settings.host,
             settings.port)  # fmt: skip
    _log_access(settings)
    follower.start()
    try:
        server.run(sockets=[listening])
    finally:
        follower.stop()
        follower.join(timeout=5)
    return _exit_status(follower.failure, settings.topic)


def _tls_options(settings: LookupSettings) -> dict:
    """uvicorn's TLS options for the settings (stream.lookup.options has checked the files)."""
    if settings.tls_cert is None:
        return {}
    return {
        "ssl_certfile": settings.tls_cert,
        "ssl_keyfile": settings.tls_key,
        "ssl_ca_certs": settings.tls_client_ca,
        "ssl_cert_reqs": ssl.CERT_REQUIRED if settings.tls_client_ca else ssl.CERT_NONE,
    }


def _log_access(settings: LookupSettings) -> None:
    """One line on who may read users' intents: a warning when anyone who reaches the port may."""
    if settings.token is None and settings.tls_client_ca is None:
        log.warning("open: anyone who reaches %s:%d reads every user's intent (no token, no client certificates); "
                    "set INTENTSTREAM_TOKEN or --token-file, or --tls-client-ca (README, Operate)", settings.host,
                    settings.port)  # fmt: skip
    elif settings.token is not None and settings.tls_cert is None:
        log.warning("requests for users' intents need the bearer token, and it travels over plain HTTP: pass "
                    "--tls-cert, or terminate TLS in front of the service")  # fmt: skip
    else:
        needs = [what for what, wanted in (
            ("requests for users' intents need the bearer token", settings.token is not None),
            ("every connection needs a client certificate signed by --tls-client-ca", settings.tls_client_ca),
        ) if wanted]  # fmt: skip
        log.info("access: %s", "; ".join(needs))

def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listening = socket.socket(family, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((host.strip("[]"), port))
    except OSError as error:
        listening.close()
        raise CommandError(f"cannot listen on {host}:{port}: {error.strerror or error}; pick another --port "
                           "(INTENTSTREAM_PORT) or --host", EXIT_FAILED) from None
    listening.listen(2048)
    return listening


def _exit_status(failure: BaseException | None, topic: str) -> int:
    if failure is None:
        return EXIT_OK
    if isinstance(failure, TableFull):
        raise CommandError(str(failure), EXIT_FAILED)
    if isinstance(failure, (BrokerLost, KafkaException)):
        log.error("stopped following %s: %s; exiting for a supervisor to restart the service", topic, failure)
        return EXIT_KAFKA_UNAVAILABLE
    log.error("stopped following %s", topic, exc_info=failure)
    return EXIT_FAILED
