"""The serving scorer alone on a stream's events, for the benches' "model alone" rows (bench/stream.py,
bench/scale_out.py): the histories come from the dataflow's own remember step (the same per-user
state and unknown-title slots), and the model calls are the score step's (batches of SOURCE_BATCH,
as the Kafka source hands them over, cut by stream.dataflow.score_chunks). Only predict_users is timed."""
from __future__ import annotations

import time
from pathlib import Path

SOURCE_BATCH = 1000  # messages per batch, as bytewax's KafkaSource reads them by default


def score_requests(model_dir: Path, events, batch_size: int, backend: str = "auto"):
    """(the serving scorer, the score requests the remember step makes of `events`)."""
    from model.serving.incremental import load_serving_scorer
    from stream.dataflow import Origin, Play, Remembering, RememberUser, ScoreRequest, StreamCounters, state_config
    from stream.settings import StreamSettings

    settings = StreamSettings(brokers="unused:9092", model_dir=model_dir, batch_size=batch_size, backend=backend)
    scorer = load_serving_scorer(model_dir, settings.backend, settings.kv_cache_bytes)
    shared = Remembering.of(state_config(settings, scorer), scorer, StreamCounters())
    users, requests = {}, []
    no_origin = Origin(None, None, None, None, None)
    for event in events:
        emitted, _ = users.setdefault(event.user_id, RememberUser(shared, None)).on_item(Play(event, no_origin))
        requests.extend(item for item in emitted if isinstance(item, ScoreRequest))
    return scorer, requests


def predict_seconds(scorer, requests, batch_size: int) -> float:
    """Seconds spent in predict_users scoring `requests` as the score step would."""
    from stream.dataflow import score_chunks

    spent_s = 0.0
    for start in range(0, len(requests), SOURCE_BATCH):
        for chunk in score_chunks(requests[start : start + SOURCE_BATCH], batch_size):
            started = time.perf_counter()
            scorer.predict_users([request.event.user_id for request in chunk], [request.history for request in chunk])
            spent_s += time.perf_counter() - started
    return spent_s
