"""Everything `intentstream run` needs to know, resolved and validated before any event is read."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class StreamSettings:
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
    lateness_s: float = 3_600.0  # an event older than a user's newest by more than this is a dead letter
    top_k: int = 10
    backend: str = "eager"  # who runs the model: eager | eager:cuda | aoti:PATH | tensorrt:PATH (model.serving.backends)
    kv_cache_mb: int = 1024  # memory for cached users' rows (incremental scoring); 0: recompute every event
    recovery_dir: Path | None = None
    snapshot_interval_s: float = 10.0
    workers: int = 1  # worker threads per process
    process_id: int | None = None  # Bytewax cluster: this process's index into addresses
    addresses: tuple[str, ...] = ()  # Bytewax cluster: host:port of every process
    # security.protocol, sasl.*, ssl.*, ...; kept out of repr() because it may hold secrets
    kafka_config: dict[str, str] = field(default_factory=dict, repr=False)
    stop_at_end: bool = False  # replay: stop once the input topic's current end is reached
