"""Prometheus metrics of `intentstream serve` (GET /metrics):

    intentstream_lookup_requests_total{route, status}   requests answered
    intentstream_lookup_request_seconds{route}          time to answer, inside the service (histogram)
    intentstream_lookup_users                           users held
    intentstream_lookup_lag_messages                    messages between what was read and the topic's end
    intentstream_lookup_ready                           1 once the topic has been read up to its end at start
    intentstream_lookup_updates_total                   updates read from the topic
    intentstream_lookup_invalid_total                   messages on the topic that are not intent updates
    intentstream_lookup_evictions_total                 users forgotten to stay within --max-users
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class LookupMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.requests = Counter("intentstream_lookup_requests", "Requests answered.", ["route", "status"],
                                registry=registry)  # fmt: skip
        self.request_seconds = Histogram("intentstream_lookup_request_seconds", "Time to answer a request, "
                                         "inside the service.", ["route"], buckets=LATENCY_BUCKETS,
                                         registry=registry)  # fmt: skip
        self.users = Gauge("intentstream_lookup_users", "Users held.", registry=registry)
        self.lag = Gauge("intentstream_lookup_lag_messages", "Messages between what was read and the end of "
                         "the topic.", registry=registry)  # fmt: skip
        self.ready = Gauge("intentstream_lookup_ready", "1 once the topic was read up to its end at start.",
                           registry=registry)  # fmt: skip
        self.updates = Counter("intentstream_lookup_updates", "Updates read from the topic.", registry=registry)
        self.invalid = Counter("intentstream_lookup_invalid", "Messages on the topic that are not intent "
                               "updates.", registry=registry)  # fmt: skip
        self.evictions = Counter("intentstream_lookup_evictions", "Users forgotten to stay within "
                                 "--max-users.", registry=registry)  # fmt: skip
