"""`intentstream serve`: the lookup service. It checks the brokers and the topic and binds its port
before serving anything (a problem stops it with a one-line message, exit status 1), then follows the
topic in a thread (stream.lookup.follower) while uvicorn answers HTTP (stream.lookup.app).

SIGTERM and Ctrl-C stop it as uvicorn does: requests in flight are answered, then it exits (143 or
130). Losing the brokers for longer than --max-broker-outage exits 75, for a supervisor to restart
it; a full table under --on-full refuse exits 1 with a message to raise the cap.
"""
from __future__ import annotations

import logging
import socket
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
        lookup_app(table, follower, metrics, settings.max_batch_get), log_level="warning", access_log=False,
        lifespan="off",
    ))  # fmt: skip
    follower.on_failure = lambda: setattr(server, "should_exit", True)
    log.info("serving the latest intent of each user on %s (%d partition(s), %s) at http://%s:%d/", settings.topic,
             len(partitions), settings.format, settings.host, settings.port)  # fmt: skip
    follower.start()
    try:
        server.run(sockets=[listening])
    finally:
        follower.stop()
        follower.join(timeout=5)
    return _exit_status(follower.failure, settings.topic)


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
