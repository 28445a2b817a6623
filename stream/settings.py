"""The defaults, written down once: what a dataflow needs to know (StreamSettings), what the service
around it needs besides (ServiceSettings), the lookup service (LookupSettings), and the small model that demos and `train --small` use.
Option help texts and other commands' defaults read them from here."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


# How the catalogue is scored (model.serving.retrieval.CATALOGUES; here too, so that options parse
# without importing torch).
CATALOGUES = ("auto", "exact", "approximate")


@dataclass(frozen=True)
class StreamSettings:
    """Everything a dataflow needs to know, resolved and validated before any event is read."""

    brokers: str  # Kafka bootstrap servers, host:port[,host:port...]
    model_dir: Path
    format: str = "msgpack"  # json | msgpack, for the input and output topics
    input_topic: str = "plays"
    output_topic: str = "intent-updates"
    dlq_topic: str = "intent-dlq"
    latest_topic: str | None = "intent-latest"  # compacted: each user's latest update; None disables it
    batch_size: int = 256  # cap on users scored together
    history: int | None = None  # interactions kept per user; None: what the model's attention reaches
    ttl_s: float = 30 * 86_400.0  # users idle longer than this (event time) are forgotten
    # Users held per process; beyond it the least recently active one is forgotten (stream.held_users).
    max_users: int = 1_000_000
    lateness_s: float = 3_600.0  # an event older than a user's newest by more than this is a dead letter
    max_clock_skew_s: float = 300.0  # an event further ahead of the wall clock than this is a dead letter
    max_broker_outage_s: float = 60.0  # no broker answering for longer stops the flow (exit 75), to be restarted
    # Input offsets deleted by retention before they were read: resume (log, count, read on) | fail (exit 65)
    on_offset_gap: str = "resume"
    top_k: int = 10
    # who runs the model: auto | eager | eager:cuda | aoti:PATH | tensorrt:PATH (model.serving.backends)
    backend: str = "auto"
    kv_cache_mb: int = 1024  # memory for cached users' rows (incremental scoring); 0: recompute every event
    # The catalogue scored whole (exact), from each event's retrieved candidates (approximate), or
    # auto: approximate for catalogues too large to score whole (model.serving.retrieval)
    catalogue: str = "auto"
    # Columns for titles first seen in the stream (model.serving.new_titles); None: the model's own
    # (256 by default); 0: a closed catalogue, whose updates are the same after a restart and at any
    # cluster size (each process learns new titles from the plays it reads, and forgets them on exit).
    new_titles: int | None = None
    recovery_dir: Path | None = None
    snapshot_interval_s: float = 10.0
    workers: int = 1  # worker threads per process
    process_id: int | None = None  # Bytewax cluster: this process's index into addresses
    addresses: tuple[str, ...] = ()  # Bytewax cluster: host:port of every process
    # security.protocol, sasl.*, ssl.*, ...; kept out of repr() because it may hold secrets
    kafka_config: dict[str, str] = field(default_factory=dict, repr=False)
    stop_at_end: bool = False  # replay: stop once the input topic's current end is reached

    @property
    def kv_cache_bytes(self) -> int:
        return self.kv_cache_mb << 20


@dataclass(frozen=True)
class ServiceSettings:
    """`intentstream run`: the dataflow's settings, and what the process around it needs."""

    stream: StreamSettings
    connect_timeout_s: float = 10.0  # how long to wait for the brokers at start-up
    metrics_port: int | None = None  # serve Prometheus metrics on this port; None: no metrics endpoint
    # Intra-op threads: the model is small, and on a busy machine 2 threads score 2-3x slower than 1.
    torch_threads: int = 1
    # After SIGTERM or Ctrl-C the process ends within this, wherever it was (Kubernetes waits 30 s).
    shutdown_timeout_s: float = 15.0


@dataclass(frozen=True)
class LookupSettings:
    """`intentstream serve`: the lookup service over the latest-update topic."""

    brokers: str
    topic: str = "intent-latest"  # what `run` writes as --latest-topic
    format: str = "msgpack"  # as `run` writes it
    host: str = "0.0.0.0"
    port: int = 8080
    max_users: int = 2_000_000  # users held; see on_full
    on_full: str = "evict"  # evict (forget the least recently updated user) | refuse (stop with a message)
    page_history: int = 8  # updates per user summarised for the page; 0: none
    max_batch_get: int = 1000  # user ids per POST /users:batchGet
    connect_timeout_s: float = 10.0
    max_broker_outage_s: float = 60.0  # no broker answering for longer stops the service (exit 75)
    kafka_config: dict[str, str] = field(default_factory=dict, repr=False)
    # Access: requests for users' intents must carry this bearer token (None: no token); never logged.
    token: str | None = field(default=None, repr=False)
    tls_cert: Path | None = None  # HTTPS with this certificate chain (PEM) and tls_key
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # mTLS: every client presents a certificate this CA signed


# IntentRecConfig overrides for a model small enough to train in seconds: `intentstream train --small`
# and the demo's model.
SMALL_MODEL = dict(d_item=32, d_small=8, d_model=32, d_proj=16, n_layers_item=1, attention_window=20)
